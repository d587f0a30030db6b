//! The agent protocol: the JSON bodies of `/api/v1/agent/*`, shared by `kitt serve` and `kitt
//! agent`. Agents only ever connect out (pull): they register, heartbeat, long-poll for a unit,
//! stream its journal and logs, upload each committed step, and say how the unit ended.
//!
//! The protocol has a major and a minor number: a server refuses an agent of another major
//! ("run `kitt agent update`"); a minor adds optional fields only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const PROTOCOL_MAJOR: u32 = 1;
pub const PROTOCOL_MINOR: u32 = 1;

/// The longest a claim waits for a unit before answering 204.
pub const CLAIM_WAIT_MAX_MS: u64 = 25_000;

/// `POST /api/v1/agent/register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub protocol: [u32; 2],
    pub kitt_version: String,
    /// The agent's build ([`crate::run::facts::build_id`]).
    pub build: String,
    /// `x86_64-linux-gnu`, `aarch64-linux-gnu`, …
    pub target: String,
    pub hostname: String,
    /// The host's fingerprint hash and identity string.
    pub fingerprint: String,
    pub fingerprint_identity: String,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    /// How many units it runs at once.
    pub slots: u32,
    pub docker: bool,
}

/// One GPU as an agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    pub uuid: String,
    pub name: String,
    pub memory_total_mib: u64,
    #[serde(default)]
    pub memory_used_mib: u64,
    /// The unit (`run/unit`) holding it, when kitt holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registered {
    /// The agent's name (its token's).
    pub agent: String,
    pub labels: BTreeMap<String, String>,
    pub heartbeat_ms: u64,
    pub claim_wait_ms: u64,
    /// Units the server still counts as this agent's (after a restart of either side).
    pub held: Vec<Held>,
}

/// A unit's attempt, as the agent holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Held {
    pub run: String,
    pub unit: String,
    pub attempt: u32,
}

/// `POST /api/v1/agent/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub units: Vec<Held>,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    #[serde(default)]
    pub disk_free_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Beat {
    /// Units whose leases this beat renewed.
    pub renewed: Vec<Held>,
    /// Units to stop now, and why (cancelled, expired, removed, superseded).
    pub stop: Vec<(Held, String)>,
    /// The agent is drained: it takes no new unit.
    pub drain: bool,
    /// Commands for the agent to run and answer (`kitt agents exec`).
    #[serde(default)]
    pub exec: Vec<Exec>,
}

/// What `kitt agents exec` asks an agent to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    pub id: String,
    pub command: ExecCommand,
    /// `engines-setup`'s engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ExecCommand {
    /// Whether Docker answers there, and its version.
    CheckDocker,
    /// `kitt engines check` of every engine template there.
    EnginesStatus,
    /// `kitt engines setup ENGINE` there.
    EnginesSetup,
    /// Removes what its spool holds of units it no longer runs.
    CleanupStorage,
}

/// `POST /api/v1/agent/exec/{id}`: how a command went.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecResult {
    pub ok: bool,
    pub output: String,
}

/// `POST /api/v1/agent/claim`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// How long to wait for a unit, at most [`CLAIM_WAIT_MAX_MS`].
    pub wait_ms: u64,
    /// GPUs the agent has free for a new unit.
    pub gpus_free: u32,
    /// Units it runs now.
    #[serde(default)]
    pub running: u32,
    /// It runs a unit under `isolation: host`, which takes the whole host.
    #[serde(default)]
    pub exclusive: bool,
    /// It takes client shards of other agents' cells too (protocol 1.1): the answer may be a
    /// [`RelayClaim`] instead of a unit.
    #[serde(default)]
    pub relays: bool,
}

/// A claimed unit: what `kitt work` needs to run it on the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claimed {
    pub run: String,
    pub unit: String,
    pub attempt: u32,
    pub lease_ms: u64,
    pub heartbeat_ms: u64,
    /// How long the claim waited on the server before it took the unit: the lease starts then,
    /// so the agent counts its fence from when it sent the claim plus this.
    #[serde(default)]
    pub waited_ms: u64,
    /// The run's `run.json` and `plan.json`, as the server has them.
    pub run_json: String,
    pub plan_json: String,
    /// Measured keys of the unit already committed on the server: the attempt skips them.
    pub committed: Vec<String>,
    /// The results of those of them that a step still to run reads (a committed benchmark's
    /// `benchmark.json`, which its collect reads when an earlier attempt was lost between the
    /// two commits), by key.
    #[serde(default)]
    pub committed_results: BTreeMap<String, String>,
    /// GPUs the unit takes (`execution.agents.gpus`).
    pub gpus: u32,
    /// The run's `isolation: host`: the unit takes the whole agent.
    #[serde(default)]
    pub host_isolation: bool,
    /// The suite's file name, and the suite and its suite-local templates by relative path:
    /// the agent compiles the suite itself and checks its plan's keys against the server's.
    pub suite: String,
    pub files: BTreeMap<String, String>,
}

/// A claim's answer when it gives the agent a client shard instead of a unit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayClaim {
    pub relay: RelayTask,
}

/// One client shard of a cell whose coordinator runs on another agent: the agent runs `kitt
/// client-shard` and relays its pipe through the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayTask {
    pub id: String,
    pub run: String,
    pub unit: String,
    pub shard: u32,
    pub of: u32,
    /// The agent whose unit the cell is.
    pub coordinator: String,
}

/// `POST /api/v1/agent/relays`: a coordinator's agent asks for one of its cell's shards to be
/// placed on another agent. Shards of one `gang` (one cell's try) go to distinct agents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayOpen {
    pub run: String,
    pub unit: String,
    pub attempt: u32,
    pub gang: String,
    pub shard: u32,
    pub of: u32,
    /// Labels the agent that takes it must have.
    #[serde(default)]
    pub select: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayOpened {
    pub id: String,
}

/// Which way a relay's lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Coordinator → shard.
    Shard,
    /// Shard → coordinator.
    Coordinator,
}

/// `POST /api/v1/agent/relays/{id}/send`: lines for the other side, and, with `close`, the end
/// of this side's stream (empty: a clean end; otherwise why it ended).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySend {
    pub to: Side,
    /// The number of the first of `lines` in this side's stream: a batch sent again after a
    /// lost answer adds only the lines the server does not have.
    pub seq: u64,
    #[serde(default)]
    pub lines: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<String>,
}

/// `POST /api/v1/agent/relays/{id}/recv`: the lines for this side from number `from` on,
/// waiting up to `wait_ms` for one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayRecv {
    pub to: Side,
    pub from: u64,
    pub wait_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayLines {
    pub lines: Vec<String>,
    /// The number of the line after the last one given.
    pub next: u64,
    /// Every line was given and the other side ended its stream: empty when it ended cleanly,
    /// else why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<String>,
}

/// The longest a relay's `recv` waits.
pub const RELAY_WAIT_MAX_MS: u64 = 5_000;

/// One line of `POST /api/v1/agent/events` (NDJSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLine {
    pub run: String,
    pub unit: String,
    pub attempt: u32,
    /// `journal` (a record of the attempt's shard) or `log` (a line of its output).
    pub kind: EventKind,
    /// The line's number in its stream, from 0: a resent line is dropped.
    pub seq: u64,
    pub line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Journal,
    Log,
}

/// The answer to an events batch: per stream, the next sequence number the server expects.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsAccepted {
    pub accepted: u64,
    pub dropped: u64,
    pub next: Vec<(Held, EventKind, u64)>,
}

/// `POST /api/v1/agent/finish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finish {
    pub run: String,
    pub unit: String,
    pub attempt: u32,
    pub outcome: Outcome,
    #[serde(default)]
    pub reason: String,
}

/// How an attempt on an agent ended (the executor's unit states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Lost,
}

/// A name the agent protocol takes for agents: `[a-z0-9-]{1,63}`.
pub fn valid_agent_name(name: &str) -> bool {
    (1..=63).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A step key or a sha256: lowercase hex only, of a length in `len`.
pub fn valid_hex(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
