//! The route table of `/api/v1`: each route's method, path, scope, whether it writes, and its
//! parameters. The router (`serve::router`) and the OpenAPI document (`openapi`) are both built
//! from it, so they cannot disagree; handlers live in `api`, `events` and `bundle`.

use std::sync::Arc;

use axum::http::Method;
use axum::routing::{MethodRouter, delete, get, post, put};

use super::App;
use super::tokens::Scope;
use super::{agents, api, relays};

/// A query parameter or a JSON body's field, for the OpenAPI document.
pub struct Param {
    pub name: &'static str,
    /// Its JSON Schema: a bare type (`string`) or a whole schema (`{"type": …}`), as precise as
    /// the handler is strict, so a request the document allows is never refused for its shape.
    pub schema: &'static str,
    pub doc: &'static str,
    pub required: bool,
}

/// One route: what the router serves and the OpenAPI document describes.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    /// The scope a token needs; `None`: open to anyone.
    pub scope: Option<Scope>,
    /// Whether it changes anything (refused with `--read-only`).
    pub writes: bool,
    pub summary: &'static str,
    pub query: &'static [Param],
    /// The JSON body's fields, for the document.
    pub body: &'static [Param],
    pub handler: fn() -> MethodRouter<Arc<App>>,
}

const fn p(name: &'static str, schema: &'static str, doc: &'static str) -> Param {
    Param { name, schema, doc, required: false }
}

/// A parameter or field that must be given.
const fn r(name: &'static str, schema: &'static str, doc: &'static str) -> Param {
    Param { name, schema, doc, required: true }
}

/// A run id, a shard or a token name: what `api::valid_id` takes.
const ID: &str = r#"{"type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"}"#;
const RESULT_ID: &str = r#"{"type": "integer", "minimum": 1, "maximum": 9223372036854775807}"#;
const SEQ: &str = r#"{"type": "integer", "minimum": 0, "maximum": 9223372036854775807}"#;
const FILE_LIMIT: &str = r#"{"type": "integer", "minimum": 1, "maximum": 1048576}"#;
const LIMIT: &str = r#"{"type": "integer", "minimum": 1, "maximum": 1000}"#;
/// What `since` takes over the API: a date, a UTC time, or a whole number of seconds, minutes,
/// hours, days or weeks ago (the CLI's `--since` takes more of humantime's forms).
macro_rules! since_pattern {
    () => {
        "^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])(T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z)?$|^[1-9][0-9]{0,5}[smhdw]$"
    };
}
pub const SINCE_PATTERN: &str = since_pattern!();
const SINCE: &str = concat!(r#"{"type": "string", "pattern": ""#, since_pattern!(), r#""}"#);
const SUITE_TEXT: &str = r#"{"type": "string", "maxLength": 1048576}"#;
const TOKEN_NAME: &str = r#"{"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}"#;
const SCOPE: &str = r#"{"type": "string", "enum": ["read", "run", "admin", "agent"]}"#;
const FILES: &str = r#"{"type": "object", "additionalProperties": {"type": "string"}}"#;

/// The schema of a route's `{id}`: a result id is a positive integer, anything else an id.
pub fn id_schema(path: &str) -> &'static str {
    if path.starts_with("/api/v1/results/") { RESULT_ID } else { ID }
}

const RESULT_FILTERS: &[Param] = &[
    p("suite", "string", "Only this suite's results."),
    p("engine", "string", "An engine instance name or an engine template."),
    p("model", "string", "Only this model's results."),
    p("fingerprint", "string", "A fingerprint hash or its prefix, or a part of the identity string."),
    p("benchmark", "string", "A benchmark instance name or a benchmark template."),
    p("since", SINCE, "Runs started since: a date, an RFC 3339 time, or a duration ago (7d)."),
    p("until", SINCE, "Runs started before: a date, an RFC 3339 time, or a duration ago (7d)."),
    p("run", ID, "Only this run's results."),
    p("after", SEQ, "Keyset pagination: the `next` of the previous page (results with a larger id)."),
    p("limit", LIMIT, "Page size, 1 to 1000 (default 100)."),
];

/// Every `/api/v1` route. Paths use axum's `{name}` captures, which OpenAPI spells the same.
pub static ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/api/v1/health",
        scope: None,
        writes: false,
        summary: "Whether the server answers (no token needed).",
        query: &[],
        body: &[],
        handler: || get(api::health),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/version",
        scope: Some(Scope::Read),
        writes: false,
        summary: "kitt's version, the store's schema version, and whether the server is read-only.",
        query: &[],
        body: &[],
        handler: || get(api::version),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/openapi.json",
        scope: Some(Scope::Read),
        writes: false,
        summary: "This document.",
        query: &[],
        body: &[],
        handler: || get(api::openapi),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/results",
        scope: Some(Scope::Read),
        writes: false,
        summary: "Results in the store, in the order they were indexed (`kitt results list`), one page at a time.",
        query: RESULT_FILTERS,
        body: &[],
        handler: || get(api::results),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/results/{id}",
        scope: Some(Scope::Read),
        writes: false,
        summary: "One result with its cell's repetitions aggregated (`kitt results show ID`).",
        query: &[],
        body: &[],
        handler: || get(api::result),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/compare",
        scope: Some(Scope::Read),
        writes: false,
        summary: "Compare two runs or results (`kitt compare A B --output json`).",
        query: &[
            r("a", ID, "The baseline: a run id or a result id."),
            r("b", ID, "The candidate: a run id or a result id."),
        ],
        body: &[],
        handler: || get(api::compare),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/runs",
        scope: Some(Scope::Read),
        writes: false,
        summary: "Every run in the runs directory, oldest first (`kitt runs list`).",
        query: &[],
        body: &[],
        handler: || get(api::runs),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/runs",
        scope: Some(Scope::Run),
        writes: true,
        summary: "Start a run of a suite under one of the server's suite directories (`kitt apply SUITE --detach`).",
        query: &[],
        body: &[
            r("suite", "string", "The suite file, relative to a --suites-dir."),
            p("fresh", "boolean", "Start a new run even if the suite has an unfinished one."),
        ],
        handler: || post(api::start_run),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/bundles",
        scope: Some(Scope::Run),
        writes: true,
        summary: "Run an uploaded suite and its templates (`kitt apply SUITE --server URL`); needs --allow-suite-upload.",
        query: &[],
        body: &[
            r("suite", "string", "The suite's name among the files."),
            r("files", FILES, "File names (relative paths) to their text, at most 1 MiB in all."),
            r("digest", "string", "SHA-256 (hex) of the JSON of the file map, names sorted."),
            p("fresh", "boolean", "Start a new run even if the suite has an unfinished one."),
        ],
        handler: || post(super::bundle::upload),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/runs/{id}",
        scope: Some(Scope::Read),
        writes: false,
        summary: "One run: its status, units and steps (`kitt runs show RUN --output json`).",
        query: &[],
        body: &[],
        handler: || get(api::run),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/runs/{id}/journal",
        scope: Some(Scope::Read),
        writes: false,
        summary: "One journal shard's records after a sequence number.",
        query: &[
            p("shard", ID, "`journal` (the driver's, the default) or a unit attempt's shard, `UNIT.ATTEMPT`."),
            p("after", SEQ, "Only records with a larger `seq`."),
        ],
        body: &[],
        handler: || get(api::journal),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/runs/{id}/steps/{key}/{file}",
        scope: Some(Scope::Read),
        writes: false,
        summary: "A file a step wrote (engine.log, requests.jsonl, samples.csv, result.json…), as text, a chunk at a time.",
        query: &[
            p("offset", SEQ, "Where to start, in bytes."),
            p("limit", FILE_LIMIT, "At most this many bytes, 1 to 1 MiB (the default)."),
        ],
        body: &[],
        handler: || get(api::step_file),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/runs/{id}/cancel",
        scope: Some(Scope::Run),
        writes: true,
        summary: "Stop a run and its units (`kitt runs cancel RUN`); resume it later.",
        query: &[],
        body: &[],
        handler: || post(api::cancel),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/runs/{id}/resume",
        scope: Some(Scope::Run),
        writes: true,
        summary: "Resume an unfinished run (`kitt apply SUITE --resume RUN --detach`).",
        query: &[],
        body: &[],
        handler: || post(api::resume),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/validate",
        scope: Some(Scope::Read),
        writes: false,
        summary: "Validate a suite given as YAML text (`kitt validate`); nothing runs.",
        query: &[],
        body: &[r("suite", SUITE_TEXT, "The suite's YAML text (at most 1 MiB).")],
        handler: || post(api::validate),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/plan",
        scope: Some(Scope::Read),
        writes: false,
        summary: "The plan of a suite given as YAML text (`kitt plan --output json`); nothing runs.",
        query: &[],
        body: &[r("suite", SUITE_TEXT, "The suite's YAML text (at most 1 MiB).")],
        handler: || post(api::plan),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/engines",
        scope: Some(Scope::Read),
        writes: false,
        summary: "The built-in engine templates (`kitt engines list`).",
        query: &[],
        body: &[],
        handler: || get(api::engines),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/models",
        scope: Some(Scope::Read),
        writes: false,
        summary: "Models with results in the store and models the suites under --suites-dir name (local file: format, size).",
        query: &[],
        body: &[],
        handler: || get(api::models),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/devon/status",
        scope: Some(Scope::Read),
        writes: false,
        summary: "Whether DEVON (--devon-url) answers, and its version (from its /openapi.json).",
        query: &[],
        body: &[],
        handler: || get(super::pages::devon_status),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/settings",
        scope: Some(Scope::Read),
        writes: false,
        summary: "Every setting in force and where it comes from (`kitt settings list`).",
        query: &[],
        body: &[],
        handler: || get(api::settings),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/fingerprint",
        scope: Some(Scope::Read),
        writes: false,
        summary: "The server machine's fingerprint (`kitt fingerprint --output json`).",
        query: &[],
        body: &[],
        handler: || get(api::fingerprint),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/tokens",
        scope: Some(Scope::Admin),
        writes: false,
        summary: "Every token (never the token itself): name, scope, last use, revocation.",
        query: &[],
        body: &[],
        handler: || get(api::tokens),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/tokens",
        scope: Some(Scope::Admin),
        writes: true,
        summary: "Make a token; the answer holds it, once.",
        query: &[],
        body: &[r("name", TOKEN_NAME, "Its name."), r("scope", SCOPE, "What it may do.")],
        handler: || post(api::token_create),
    },
    Route {
        method: Method::DELETE,
        path: "/api/v1/tokens/{id}",
        scope: Some(Scope::Admin),
        writes: true,
        summary: "Revoke a token by id or name.",
        query: &[],
        body: &[],
        handler: || delete(api::token_revoke),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/events",
        scope: Some(Scope::Read),
        writes: false,
        summary: "Server-sent events from the runs' journals; `Last-Event-ID` resumes a run's stream exactly.",
        query: &[p("run", ID, "Only this run's events (replayable with Last-Event-ID).")],
        body: &[],
        handler: || get(super::events::stream),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/agents",
        scope: Some(Scope::Read),
        writes: false,
        summary: "The agents: labels, fingerprint, GPUs, version, last heartbeat, units held, state.",
        query: &[],
        body: &[],
        handler: || get(agents::list),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/agents/{id}/drain",
        scope: Some(Scope::Admin),
        writes: true,
        summary: "Drain an agent: it takes no new unit; what it runs finishes.",
        query: &[],
        body: &[],
        handler: || post(agents::drain),
    },
    Route {
        method: Method::DELETE,
        path: "/api/v1/agents/{id}",
        scope: Some(Scope::Admin),
        writes: true,
        summary: "Remove an agent: the units it holds are placed again.",
        query: &[],
        body: &[],
        handler: || delete(agents::remove),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/agents/{id}/exec",
        scope: Some(Scope::Admin),
        writes: true,
        summary: "Run a command on an agent (check-docker, engines-status, engines-setup, cleanup-storage): it goes out with the agent's next heartbeat; the answer is its output.",
        query: &[],
        body: &[
            r(
                "command",
                r#"{"type": "string", "enum": ["check-docker", "engines-status", "engines-setup", "cleanup-storage"]}"#,
                "The command.",
            ),
            p("arg", ID, "engines-setup's engine."),
        ],
        handler: || post(agents::exec),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/agent/exec/{id}",
        scope: Some(Scope::Agent),
        writes: true,
        summary: "An agent's answer to a command it was sent.",
        query: &[],
        body: &[r("ok", "boolean", "Whether it went well."), r("output", "string", "What it printed.")],
        handler: || post(agents::exec_done),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/agent/install.sh",
        scope: None,
        writes: false,
        summary: "A shell script that installs kitt from this server and makes the host an agent; it holds no secret (the token is asked for).",
        query: &[],
        body: &[],
        handler: || get(agents::install_script),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/agent/build",
        scope: Some(Scope::Agent),
        writes: false,
        summary: "This server's kitt for the agent's target and glibc, its SHA-256 in x-kitt-sha256 (kitt agent update); a host it cannot run on is refused.",
        query: &[
            r(
                "target",
                r#"{"type": "string", "pattern": "^[a-z0-9_]+-[a-z]+-[a-z]+$"}"#,
                "The host's target: x86_64-linux-gnu, aarch64-linux-gnu, …",
            ),
            p(
                "glibc",
                r#"{"type": "string", "pattern": "^[0-9]{1,3}\\.[0-9]{1,3}$"}"#,
                "The host's glibc, major.minor.",
            ),
        ],
        body: &[],
        handler: || get(agents::build),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/agent/register",
        scope: Some(Scope::Agent),
        writes: true,
        summary: "An agent registers (agent tokens only): versions, fingerprint, GPUs; answers its intervals.",
        query: &[],
        body: &[
            r(
                "protocol",
                r#"{"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 4294967295}, "minItems": 2, "maxItems": 2}"#,
                "Agent protocol [major, minor].",
            ),
            r("kitt_version", "string", "The agent's kitt version."),
            r("build", "string", "The agent's kitt build."),
            r("target", "string", "The agent's target triple."),
            r("hostname", "string", "The agent's host name."),
            r("fingerprint", "string", "The host's fingerprint hash."),
            r("fingerprint_identity", "string", "The host's fingerprint identity."),
            p("gpus", r#"{"type": "array"}"#, "GPUs by UUID."),
            r("slots", r#"{"type": "integer", "minimum": 0, "maximum": 4294967295}"#, "Units it runs at once."),
            r("docker", "boolean", "Whether Docker answers there."),
        ],
        handler: || post(agents::register),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/agent/heartbeat",
        scope: Some(Scope::Agent),
        writes: true,
        summary: "An agent's heartbeat: renews the leases of the units it holds; answers stops and drain.",
        query: &[],
        body: &[
            r("units", r#"{"type": "array"}"#, "The attempts it holds: run, unit, attempt."),
            p("gpus", r#"{"type": "array"}"#, "GPUs: memory and holder."),
            p("disk_free_bytes", r#"{"type": "integer", "minimum": 0}"#, "Free disk."),
        ],
        handler: || post(agents::heartbeat),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/agent/claim",
        scope: Some(Scope::Agent),
        writes: true,
        summary: "An agent with a free slot waits up to 25 s for a unit it matches: the unit, or 204.",
        query: &[],
        body: &[
            r("wait_ms", r#"{"type": "integer", "minimum": 0}"#, "How long to wait, at most 25000."),
            r("gpus_free", r#"{"type": "integer", "minimum": 0, "maximum": 4294967295}"#, "Free GPUs."),
            p("running", r#"{"type": "integer", "minimum": 0, "maximum": 4294967295}"#, "Units it runs now."),
            p("exclusive", "boolean", "It runs a unit under `isolation: host`."),
        ],
        handler: || post(agents::claim),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/agent/events",
        scope: Some(Scope::Agent),
        writes: true,
        summary: "Journal records and log lines of held attempts (NDJSON, numbered; resends are dropped).",
        query: &[],
        body: &[],
        handler: || post(agents::events),
    },
    Route {
        method: Method::PUT,
        path: "/api/v1/agent/steps/{key}",
        scope: Some(Scope::Agent),
        writes: true,
        summary: "A finished step (tar.zst): 201 committed, 200 an identical re-upload, 409 a stale attempt or another's commit.",
        query: &[
            r("run", ID, "The run."),
            r("unit", ID, "The unit."),
            r("attempt", r#"{"type": "integer", "minimum": 0, "maximum": 4294967295}"#, "The attempt."),
            r("sha256", r#"{"type": "string", "pattern": "^[0-9a-f]{64}$"}"#, "SHA-256 of the body."),
        ],
        body: &[],
        handler: || put(agents::step).layer(axum::extract::DefaultBodyLimit::disable()),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/agent/relays",
        scope: Some(Scope::Agent),
        writes: true,
        summary: "The agent of a held attempt asks for one of its cell's client shards to run on another agent: the relay's id.",
        query: &[],
        body: &[
            r("run", ID, "The run."),
            r("unit", ID, "The unit."),
            r("attempt", r#"{"type": "integer", "minimum": 0, "maximum": 4294967295}"#, "The attempt."),
            r(
                "gang",
                r#"{"type": "string", "pattern": "^[0-9a-f]{8,64}$"}"#,
                "One try of one cell: its shards go to distinct agents.",
            ),
            r("shard", r#"{"type": "integer", "minimum": 0, "maximum": 4294967295}"#, "The shard, from 0."),
            r("of", r#"{"type": "integer", "minimum": 2, "maximum": 4294967295}"#, "The cell's shards."),
            p(
                "select",
                r#"{"type": "object", "additionalProperties": {"type": "string"}}"#,
                "Labels the agent that takes it must have (execution.agents.clients_select).",
            ),
        ],
        handler: || post(relays::open),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/agent/relays/{id}/send",
        scope: Some(Scope::Agent),
        writes: true,
        summary: "Protocol lines for the other side of a relay (to: shard from its coordinator's agent, to: coordinator from the shard's), and the end of this side's stream.",
        query: &[],
        body: &[
            r("to", r#"{"type": "string", "enum": ["shard", "coordinator"]}"#, "Which side the lines are for."),
            r("seq", SEQ, "The number of the first line in this side's stream (a resent line is not added twice)."),
            p("lines", r#"{"type": "array", "items": {"type": "string"}}"#, "Lines, in order."),
            p("close", "string", "This side's stream ends (empty: cleanly; else why)."),
        ],
        handler: || post(relays::send).layer(axum::extract::DefaultBodyLimit::max(relays::MAX_SEND_BYTES)),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/agent/relays/{id}/recv",
        scope: Some(Scope::Agent),
        writes: false,
        summary: "A relay's lines for this side from number `from` on (those before it are dropped), waiting up to 5 s for one; `closed` once the other side ended.",
        query: &[],
        body: &[
            r("to", r#"{"type": "string", "enum": ["shard", "coordinator"]}"#, "This side."),
            r("from", SEQ, "The first line wanted."),
            r(
                "wait_ms",
                r#"{"type": "integer", "minimum": 0, "maximum": 9223372036854775807}"#,
                "How long to wait for a line (at most 5000).",
            ),
        ],
        handler: || post(relays::recv),
    },
    Route {
        method: Method::PUT,
        path: "/api/v1/agent/relays/{id}/spool",
        scope: Some(Scope::Agent),
        writes: true,
        summary: "A finished shard's records (its spool), uploaded by the agent that ran it before its `done` line.",
        query: &[r("sha256", r#"{"type": "string", "pattern": "^[0-9a-f]{64}$"}"#, "SHA-256 of the body.")],
        body: &[],
        handler: || put(relays::put_spool).layer(axum::extract::DefaultBodyLimit::disable()),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/agent/relays/{id}/spool",
        scope: Some(Scope::Agent),
        writes: false,
        summary: "A finished shard's spool, for its coordinator's agent (its SHA-256 in x-kitt-sha256).",
        query: &[],
        body: &[],
        handler: || get(relays::get_spool),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/agent/finish",
        scope: Some(Scope::Agent),
        writes: true,
        summary: "How a held attempt ended.",
        query: &[],
        body: &[
            r("run", ID, "The run."),
            r("unit", ID, "The unit."),
            r("attempt", r#"{"type": "integer", "minimum": 0, "maximum": 4294967295}"#, "The attempt."),
            r(
                "outcome",
                r#"{"type": "string", "enum": ["succeeded", "failed", "cancelled", "lost"]}"#,
                "How it ended.",
            ),
            p("reason", "string", "Why, in words."),
        ],
        handler: || post(agents::finish),
    },
];
