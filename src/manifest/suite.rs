//! The `Suite` kind: what to test (models × engines × benchmarks) and how to run it.
//!
//! Engine and benchmark `params` stay raw nodes here: their types come from the template the
//! instance names, which the catalog knows and the validator checks (a free-form map would let
//! typos through, the defect DESIGN.md calls out).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use super::decode::{Cx, Decode, Dur, Fields, Spanned};
use super::diag::Diagnostic;
use super::secret::SecretOr;
use super::yaml::Node;
use crate::string_enum;

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SuiteSpec {
    /// The models to test. Each becomes a column of the matrix.
    pub models: Vec<Model>,
    /// Engine instances: a template plus parameters and a way to run it.
    pub engines: Vec<EngineInstance>,
    /// Benchmark instances: a template plus parameters; list values sweep.
    pub benchmarks: Vec<BenchmarkInstance>,
    /// Suite-wide sampling defaults; a benchmark's params override them.
    #[serde(default)]
    pub sampling: Sampling,
    /// Repetitions of every cell (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub runs: u32,
    #[serde(default)]
    pub matrix: Matrix,
    #[serde(default)]
    pub execution: Execution,
    #[serde(default)]
    pub warmup: Warmup,
    /// Reporter names (built-in: json, csv, markdown, html).
    #[serde(default)]
    pub reporters: Vec<Spanned<String>>,
    /// Suite-local template files or directories, relative to the suite file.
    #[serde(default)]
    pub templates: Vec<Spanned<String>>,
}

fn one() -> u32 {
    1
}

impl Decode for SuiteSpec {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let models = f.req(cx, "models");
        let engines = f.req(cx, "engines");
        let benchmarks = f.req(cx, "benchmarks");
        let sampling = f.opt(cx, "sampling").unwrap_or_default();
        let runs: Option<Spanned<u32>> = f.opt(cx, "runs");
        if let Some(r) = runs.as_ref().filter(|r| r.value == 0) {
            cx.error(
                super::diag::Diagnostic::new(r.pos, "`runs` must be at least 1")
                    .help("`runs` is how many times every cell is measured; leave it out for 1"),
            );
        }
        let runs = runs.map_or(1, |r| r.value);
        let matrix = f.opt(cx, "matrix").unwrap_or_default();
        let execution = f.opt(cx, "execution").unwrap_or_default();
        let warmup = f.opt(cx, "warmup").unwrap_or_default();
        let reporters = f.opt(cx, "reporters").unwrap_or_default();
        let templates = f.opt(cx, "templates").unwrap_or_default();
        f.finish(cx);
        Some(SuiteSpec {
            models: models?,
            engines: engines?,
            benchmarks: benchmarks?,
            sampling,
            runs,
            matrix,
            execution,
            warmup,
            reporters,
            templates,
        })
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Identity of the model in keys and reports.
    pub name: Spanned<String>,
    /// A model file or directory on the host, relative to the suite file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Spanned<String>>,
    /// The model name sent in API requests (default: `name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_name: Option<Spanned<String>>,
    /// A local Hugging Face `tokenizer.json` (relative to the suite file) that sizes prompts and
    /// counts answers instead of the engine's tokenize call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<Spanned<String>>,
}

impl Decode for Model {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "model")?;
        let name: Option<Spanned<String>> = f.req(cx, "name");
        if let Some(n) = &name {
            f = Fields::open(node, cx, &format!("model `{}`", n.value))?;
            f.node("name");
        }
        let path = f.opt(cx, "path");
        let served_name = f.opt(cx, "served_name");
        let tokenizer = f.opt(cx, "tokenizer");
        f.finish(cx);
        Some(Model { name: name?, path, served_name, tokenizer })
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineInstance {
    /// Instance name, unique in the suite.
    pub name: Spanned<String>,
    /// A built-in or suite-local Engine template.
    pub template: Spanned<String>,
    /// Values for the template's declared params; a list sweeps a scalar param.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub params: Option<Node>,
    /// Replaces the template's image reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Spanned<String>>,
    /// Image pull policy (default: the template's, else if-not-present).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull: Option<Spanned<PullPolicy>>,
    /// Extra environment for the engine (container or host process).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Spanned<SecretOr>>,
    /// Run as a container (the default when the template has a container section).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerOverride>,
    /// Run as a host process instead of a container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeOverride>,
    /// Do not start anything: talk to a server that is already running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// The suite's `sampling` for this engine only: a key set here replaces the suite's value,
    /// `null` unsets it (for an API that has no slot for it). A benchmark's params still win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub sampling: Option<Node>,
    /// What this engine's units ask Slurm for instead of `execution.slurm`'s `gres`,
    /// `constraint` and `time` (a multi-GPU engine: `{gres: "gpu:4"}`); placement only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<super::slurm::SlurmShape>")]
    pub slurm: Option<Spanned<super::slurm::SlurmShape>>,
}

#[derive(Debug, Clone, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ContainerOverride {
    /// Replaces the template's container arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<super::template_kind::Arg>>,
    /// GPUs for the container: auto | all | none | device=0,1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Spanned<String>>,
    /// Extra `docker run` arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<Spanned<String>>,
    /// host (default) or bridge with the port published on 127.0.0.1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Size of /dev/shm (e.g. `8g`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<String>,
}

impl Decode for ContainerOverride {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let args = f.opt(cx, "args");
        let gpus = f.opt(cx, "gpus");
        let extra_args = f.opt(cx, "extra_args").unwrap_or_default();
        let network = f.opt(cx, "network");
        let shm_size = f.opt(cx, "shm_size");
        f.finish(cx);
        Some(ContainerOverride { args, gpus, extra_args, network, shm_size })
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NativeOverride {
    /// Replaces the template's native command (argv; never run through a shell).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<super::template_kind::Arg>>,
    /// Working directory, relative to the suite file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<Spanned<String>>,
}

impl Decode for NativeOverride {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let command = f.opt(cx, "command");
        let cwd = f.opt(cx, "cwd");
        f.finish(cx);
        Some(NativeOverride { command, cwd })
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Base URL of the running server (http or https).
    pub url: Spanned<String>,
    /// Extra request headers; secret values must be `{from_env: NAME}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Spanned<SecretOr>>,
    /// A CA bundle (PEM) to trust, relative to the suite file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<Spanned<String>>,
    /// Skip TLS verification (reported loudly).
    #[serde(default)]
    pub insecure: bool,
    /// Skip the health check before the first benchmark.
    #[serde(default)]
    pub skip_health: bool,
}

impl Decode for Endpoint {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let url = f.req(cx, "url");
        let headers = f.opt(cx, "headers").unwrap_or_default();
        let ca_file = f.opt(cx, "ca_file");
        let insecure = f.opt(cx, "insecure").unwrap_or(false);
        let skip_health = f.opt(cx, "skip_health").unwrap_or(false);
        f.finish(cx);
        Some(Endpoint { url: url?, headers, ca_file, insecure, skip_health })
    }
}

impl Decode for EngineInstance {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "engine")?;
        let name: Option<Spanned<String>> = f.req(cx, "name");
        if let Some(n) = &name {
            f = Fields::open(node, cx, &format!("engine `{}`", n.value))?;
            f.node("name");
        }
        let template = f.req(cx, "template");
        let params: Option<Node> = f.opt(cx, "params");
        if let Some(p) = &params
            && !matches!(p.value, super::yaml::Value::Map(_))
        {
            cx.mismatch(p, "a mapping", &format!("`params` in {}", f.what()));
        }
        let image = f.opt(cx, "image");
        let pull = f.opt(cx, "pull");
        let env = f.opt(cx, "env").unwrap_or_default();
        let container = f.opt(cx, "container");
        let native = f.opt(cx, "native");
        let endpoint = f.opt(cx, "endpoint");
        let slurm = f.opt(cx, "slurm");
        let sampling: Option<Node> = f.node("sampling").cloned();
        if let Some(s) = &sampling
            && !matches!(s.value, super::yaml::Value::Map(_))
        {
            cx.mismatch(s, "a mapping", &format!("`sampling` in {}", f.what()));
        }
        f.finish(cx);
        Some(EngineInstance {
            name: name?,
            template: template?,
            params,
            image,
            pull,
            env,
            container,
            native,
            endpoint,
            sampling,
            slurm,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    IfNotPresent,
    Always,
    Never,
}
string_enum!(PullPolicy { "if-not-present" => PullPolicy::IfNotPresent, "always" => PullPolicy::Always, "never" => PullPolicy::Never });

/// How a container engine is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The container shares the host's network; the engine listens on 127.0.0.1:{{port}}.
    #[default]
    Host,
    /// Docker's bridge network; the engine listens on 0.0.0.0:{{port}} inside, published on
    /// 127.0.0.1:{{port}} of the host.
    Bridge,
}
string_enum!(Network { "host" => Network::Host, "bridge" => Network::Bridge });

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkInstance {
    /// Instance name, unique in the suite.
    pub name: Spanned<String>,
    /// A built-in or suite-local Benchmark template.
    pub template: Spanned<String>,
    /// Values for the template's declared params and sampling keys; a list sweeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub params: Option<Node>,
    /// Client processes that send each cell's load together (default 1): the arrival schedule is
    /// dealt to them round-robin, they start on one clock-corrected instant, and the cell's
    /// metrics come from the union of their request records. A list makes it a matrix axis.
    /// Load benchmarks with a `concurrency`, `constant` or `poisson` profile only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Spanned<ClientCounts>>,
    /// The fewest clients that must finish for a cell to complete (default: all of them). A cell
    /// that completes with fewer says so in its result (`clients.complete: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub clients_min: Option<Spanned<u32>>,
}

/// The most client processes one cell may have.
pub const MAX_CLIENTS: u32 = 256;

/// `clients`: one count, or a list (a matrix axis).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ClientCounts {
    One(u32),
    Many(Vec<u32>),
}

impl ClientCounts {
    /// Every count, in the order written.
    pub fn values(&self) -> Vec<u32> {
        match self {
            ClientCounts::One(n) => vec![*n],
            ClientCounts::Many(v) => v.clone(),
        }
    }
}

impl JsonSchema for ClientCounts {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ClientCounts".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A number of client processes (1 to 256), or a list of them (a matrix axis).",
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_CLIENTS},
                {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": MAX_CLIENTS}, "minItems": 1}
            ]
        })
    }
}

impl Decode for ClientCounts {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let one = |n: &Node, cx: &mut Cx| -> Option<u32> {
            match n.value {
                super::yaml::Value::Int(i) if (1..=i64::from(MAX_CLIENTS)).contains(&i) => Some(i as u32),
                super::yaml::Value::Int(i) => {
                    cx.error(
                        Diagnostic::new(n.pos, format!("{what}: {i} is not a number of clients (1 to {MAX_CLIENTS})"))
                            .help("write how many client processes send the load, e.g. `clients: 4`"),
                    );
                    None
                }
                _ => {
                    cx.mismatch(n, "a whole number of clients or a list of them", what);
                    None
                }
            }
        };
        match &node.value {
            super::yaml::Value::Seq(items) if items.is_empty() => {
                cx.error(
                    Diagnostic::new(node.pos, format!("{what}: an empty list"))
                        .help("give at least one number of clients, e.g. `clients: [1, 4]`"),
                );
                None
            }
            super::yaml::Value::Seq(items) => {
                let values: Vec<Option<u32>> = items.iter().map(|i| one(i, cx)).collect();
                values.into_iter().collect::<Option<Vec<u32>>>().map(ClientCounts::Many)
            }
            _ => one(node, cx).map(ClientCounts::One),
        }
    }
}

impl Decode for BenchmarkInstance {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "benchmark")?;
        let name: Option<Spanned<String>> = f.req(cx, "name");
        if let Some(n) = &name {
            f = Fields::open(node, cx, &format!("benchmark `{}`", n.value))?;
            f.node("name");
        }
        let template = f.req(cx, "template");
        let params: Option<Node> = f.opt(cx, "params");
        if let Some(p) = &params
            && !matches!(p.value, super::yaml::Value::Map(_))
        {
            cx.mismatch(p, "a mapping", &format!("`params` in {}", f.what()));
        }
        let what = f.what().to_string();
        let clients: Option<Spanned<ClientCounts>> =
            f.node("clients").and_then(|n| Spanned::decode(n, cx, &format!("`clients` of {what}")));
        let clients_min: Option<Spanned<u32>> = f.opt(cx, "clients_min");
        f.finish(cx);
        if let Some(min) = &clients_min {
            // The count it must not exceed: the smallest `clients` of 2 or more (a cell of one
            // client has nothing to complete without).
            let fewest = clients.as_ref().and_then(|c| c.value.values().into_iter().filter(|n| *n >= 2).min());
            match fewest {
                None => cx.error(
                    Diagnostic::new(min.pos, format!("`clients_min` of {what} needs `clients` of 2 or more"))
                        .help("set `clients: N` (client processes) first, or remove `clients_min`"),
                ),
                Some(fewest) if min.value == 0 || min.value > fewest => cx.error(
                    Diagnostic::new(
                        min.pos,
                        format!("`clients_min` of {what}: {} is not between 1 and `clients` ({fewest})", min.value),
                    )
                    .help("the fewest clients that must finish; at most as many as are started"),
                ),
                Some(_) => {}
            }
        }
        Some(BenchmarkInstance { name: name?, template: template?, params, clients, clients_min })
    }
}

/// Sampling values sent with every request. Unset values are left out of request bodies.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    /// Where each set key was written (for errors about a value no request can carry).
    #[serde(skip)]
    #[schemars(skip)]
    pub spans: BTreeMap<String, super::diag::Pos>,
}

/// The sampling keys and their param types; benchmark params may set any of them.
pub const SAMPLING_KEYS: &[(&str, super::template_kind::ParamType)] = {
    use super::template_kind::ParamType::*;
    &[
        ("temperature", Number),
        ("top_p", Number),
        ("top_k", Integer),
        ("min_p", Number),
        ("max_tokens", Integer),
        ("seed", Integer),
        ("presence_penalty", Number),
        ("frequency_penalty", Number),
        ("repetition_penalty", Number),
        ("stop", List),
    ]
};

impl Sampling {
    /// The set values as JSON, keyed by sampling key.
    pub fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        }
    }
}

impl Decode for Sampling {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, &format!("`sampling` ({what})"))?;
        let s = Sampling {
            temperature: f.opt(cx, "temperature"),
            top_p: f.opt(cx, "top_p"),
            top_k: f.opt(cx, "top_k"),
            min_p: f.opt(cx, "min_p"),
            max_tokens: f.opt(cx, "max_tokens"),
            seed: f.opt(cx, "seed"),
            presence_penalty: f.opt(cx, "presence_penalty"),
            frequency_penalty: f.opt(cx, "frequency_penalty"),
            repetition_penalty: f.opt(cx, "repetition_penalty"),
            stop: f.opt(cx, "stop"),
            spans: SAMPLING_KEYS.iter().filter_map(|(k, _)| f.key_pos(k).map(|p| ((*k).to_string(), p))).collect(),
        };
        f.finish(cx);
        Some(s)
    }
}

#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    /// Cells to leave out; each entry matches cells on every field it sets.
    #[serde(default)]
    pub exclude: Vec<Exclude>,
}

impl Decode for Matrix {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "`matrix`")?;
        let exclude = f.opt(cx, "exclude").unwrap_or_default();
        f.finish(cx);
        Some(Matrix { exclude })
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Exclude {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub benchmark: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub params: BTreeMap<String, Spanned<Node>>,
    #[serde(skip)]
    pub pos: super::diag::Pos,
}

impl Decode for Exclude {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "a matrix exclude")?;
        let e = Exclude {
            model: f.opt(cx, "model"),
            engine: f.opt(cx, "engine"),
            benchmark: f.opt(cx, "benchmark"),
            params: f.opt(cx, "params").unwrap_or_default(),
            pos: node.pos,
        };
        f.finish(cx);
        Some(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Measuring steps hold a machine-wide lock shared by every kitt process.
    #[default]
    Host,
    /// Measuring steps are exclusive per engine only.
    Engine,
    /// No leases.
    None,
}
string_enum!(Isolation { "host" => Isolation::Host, "engine" => Isolation::Engine, "none" => Isolation::None });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Run the remaining cells; the run still exits 1.
    #[default]
    Continue,
    /// Stop starting new steps after the first failed cell.
    Stop,
}
/// What one unit of the plan is (`execution.granularity`): the thing an executor places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// An engine group: its lifecycle (pull … stop) and all its cells, on one engine.
    #[default]
    Group,
    /// One cell, on an engine started, warmed up and stopped for it alone.
    Cell,
}
string_enum!(Granularity { "group" => Granularity::Group, "cell" => Granularity::Cell });

string_enum!(OnFailure { "continue" => OnFailure::Continue, "stop" => OnFailure::Stop });

string_enum!(crate::exec::ExecutorKind {
    "local" => crate::exec::ExecutorKind::Local,
    "processes" => crate::exec::ExecutorKind::Processes,
    "slurm" => crate::exec::ExecutorKind::Slurm,
    "agents" => crate::exec::ExecutorKind::Agents,
});

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Execution {
    #[serde(default)]
    pub isolation: Isolation,
    /// Most steps running at once (leases still apply).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub max_parallel: u32,
    /// Re-runs of a failed step.
    #[serde(default)]
    pub retries: u32,
    /// Longest a step may run before it fails (default 30m).
    #[serde(default = "default_step_timeout")]
    #[schemars(with = "Dur")]
    pub step_timeout: Dur,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// A cell whose share of failed requests exceeds this fails (default 0.05).
    #[serde(default = "default_max_error_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: f64,
    /// How often GPU, host and engine resources are sampled during a benchmark (default 200ms).
    #[serde(default = "default_sample_interval")]
    #[schemars(with = "Dur")]
    pub sample_interval: Dur,
    /// Deadlines of every measured and eval request (defaults: first_token 60s, between_events
    /// 30s, total 20m); a benchmark's `load.request_timeout` overrides them for its cells.
    #[serde(default)]
    pub request_timeout: super::load::RequestTimeout,
    /// How the plan is cut into units: one engine group with its cells (default), or one cell
    /// on an engine started for it alone (which changes what is measured: every result records it).
    #[serde(default)]
    pub granularity: Granularity,
    /// Where `kitt apply` runs the units (default `local`; `kitt apply --executor` overrides it).
    /// Placement only: it never enters a step's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::exec::ExecutorKind>")]
    pub executor: Option<super::decode::Spanned<crate::exec::ExecutorKind>>,
    /// What the run's Slurm array jobs ask for (`kitt plan SUITE --output sbatch`); placement
    /// only, it never enters a step's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<super::slurm::Slurm>,
    /// What the run's Kubernetes Indexed Jobs ask for (`kitt plan SUITE --output k8s`). Unlike
    /// `slurm`, it changes how engines run: each is a sidecar container of the pod, which kitt
    /// connects to on localhost instead of starting it (engine mode `sidecar`, keys of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<super::kubernetes::Kubernetes>,
    /// Which `kitt agent` hosts take the run's units under `executor: agents` (labels,
    /// fingerprint, GPUs, lease); placement only, it never enters a step's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<super::agents::AgentsBlock>,
}

fn default_sample_interval() -> Dur {
    Execution::default().sample_interval
}

fn default_step_timeout() -> Dur {
    Execution::default().step_timeout
}

fn default_max_error_rate() -> f64 {
    Execution::default().max_error_rate
}

fn default_warmup_requests() -> u32 {
    Warmup::default().requests
}

impl Default for Execution {
    fn default() -> Self {
        Execution {
            isolation: Isolation::Host,
            max_parallel: 1,
            retries: 0,
            step_timeout: Dur(std::time::Duration::from_secs(30 * 60)),
            on_failure: OnFailure::Continue,
            max_error_rate: 0.05,
            sample_interval: Dur(std::time::Duration::from_millis(200)),
            request_timeout: super::load::RequestTimeout::default(),
            granularity: Granularity::Group,
            executor: None,
            slurm: None,
            kubernetes: None,
            agents: None,
        }
    }
}

impl Decode for Execution {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let d = Execution::default();
        let mut f = Fields::open(node, cx, "`execution`")?;
        let max_parallel: Option<Spanned<u32>> = f.opt(cx, "max_parallel");
        let max_error_rate: Option<Spanned<f64>> = f.opt(cx, "max_error_rate");
        let e = Execution {
            isolation: f.opt(cx, "isolation").unwrap_or(d.isolation),
            max_parallel: max_parallel.as_ref().map_or(d.max_parallel, |m| m.value),
            retries: f.opt(cx, "retries").unwrap_or(d.retries),
            step_timeout: f.opt(cx, "step_timeout").unwrap_or(d.step_timeout),
            on_failure: f.opt(cx, "on_failure").unwrap_or(d.on_failure),
            max_error_rate: max_error_rate.as_ref().map_or(d.max_error_rate, |m| m.value),
            sample_interval: f.opt(cx, "sample_interval").unwrap_or(d.sample_interval),
            request_timeout: f.opt(cx, "request_timeout").unwrap_or(d.request_timeout),
            granularity: f.opt(cx, "granularity").unwrap_or(d.granularity),
            executor: f.opt(cx, "executor"),
            slurm: f.opt(cx, "slurm"),
            kubernetes: f.opt(cx, "kubernetes"),
            agents: f.opt(cx, "agents"),
        };
        let both = f.key_pos("slurm").and(f.key_pos("kubernetes"));
        f.finish(cx);
        if let Some(x) = e.executor.as_ref().filter(|x| x.value == crate::exec::ExecutorKind::Slurm)
            && e.slurm.is_none()
        {
            cx.error(
                super::diag::Diagnostic::new(x.pos, "`executor: slurm` needs an `execution.slurm` block")
                    .help("add `slurm: {partition: …, time: 2h, shared_dir: /shared/kitt-runs}` under `execution` (docs/executors.md)"),
            );
        }
        if let Some(pos) = both {
            // Kubernetes runs engines as sidecars, which changes the plan; Slurm runs them itself.
            cx.error(
                super::diag::Diagnostic::new(pos, "`execution.kubernetes` and `execution.slurm` exclude each other")
                    .help("keep one: engines run as sidecars on Kubernetes and as kitt starts them on Slurm, so the two plans differ"),
            );
        }
        if let Some(m) = max_parallel.filter(|m| m.value == 0) {
            cx.error(super::diag::Diagnostic::new(m.pos, "`max_parallel` must be at least 1"));
        }
        if let Some(r) = max_error_rate.filter(|r| !(0.0..=1.0).contains(&r.value)) {
            cx.error(
                super::diag::Diagnostic::new(r.pos, "`max_error_rate` must be between 0 and 1")
                    .help("write a share: 0.05 means 5 %"),
            );
        }
        Some(e)
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    /// Untimed requests sent to each engine after it starts (0 disables warmup; default 5).
    #[serde(default = "default_warmup_requests")]
    pub requests: u32,
}

impl Default for Warmup {
    fn default() -> Self {
        Warmup { requests: 5 }
    }
}

impl Decode for Warmup {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "`warmup`")?;
        let requests = f.opt(cx, "requests").unwrap_or(Warmup::default().requests);
        f.finish(cx);
        Some(Warmup { requests })
    }
}
