//! The plan: the compiled, executable value of a suite.
//!
//! A `Plan` is plain data — engine groups, cells and a DAG of steps with static content keys —
//! that can be printed, diffed, hashed and tested without running anything. The executor
//! consumes exactly this value; `plan.json` is its serialization (secrets are `{from_env}`
//! references, never values, because the compiler never reads the environment).
//!
//! Keys (DESIGN "Keys are static"): sha256 of canonical JSON (sorted keys) with a key-format
//! version. Engine lifecycle steps are keyed by their engine group alone; a benchmark step by its
//! cell and its group; `report` by the reporters only, since it always re-runs.

pub mod compile;
pub mod k8s;
pub mod layout;
pub mod render;
pub mod sbatch;
pub mod unit;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::manifest::decode::Dur;
use crate::manifest::load::LoadSpec;
use crate::manifest::secret::SecretOr;
use crate::manifest::suite::{Execution, Network, PullPolicy};
use crate::manifest::template_kind::{Probe, StreamFormat, UsagePointers};

pub use compile::compile;
pub use unit::{Unit, UnitKind};

/// Version of the key derivation; bump it and every key changes.
pub const KEY_FORMAT: u32 = 2;
/// Version of the plan's JSON shape.
pub const PLAN_FORMAT: u32 = 1;

/// A step's content key: hex sha256 of its canonical inputs.
pub type StepKey = String;

/// sha256 over the canonical JSON of `value`, versioned. Canonical because maps are sorted
/// (serde_json's `Value` and `BTreeMap`) and struct fields serialize in declaration order; the
/// JSON is streamed into the hasher, never built as a string.
pub fn key_of(value: &impl Serialize) -> StepKey {
    struct HashWriter(Sha256);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = HashWriter(Sha256::new());
    h.0.update(format!("kitt-key-v{KEY_FORMAT}\n").as_bytes());
    // Serializing plain data into a writer that cannot fail cannot fail.
    let _ = serde_json::to_writer(&mut h, value);
    let digest = h.0.finalize();
    let mut out = String::with_capacity(32);
    for b in digest.iter().take(16) {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub format: u32,
    pub suite: SuiteRef,
    pub execution: Execution,
    pub groups: Vec<EngineGroup>,
    pub cells: Vec<Cell>,
    pub steps: Vec<Step>,
    /// The steps cut into what an executor places (every step but the report is in one).
    pub units: Vec<Unit>,
    pub reporters: Vec<ReporterRef>,
    /// Every template the suite uses and the file it came from.
    pub templates: Vec<TemplateRef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SuiteRef {
    pub name: String,
    /// The suite file as given on the command line.
    pub file: PathBuf,
    /// The directory relative model paths and templates resolve against (absolute).
    pub dir: PathBuf,
    /// Canonical path of the suite file + metadata.name, hashed: which runs belong to it.
    pub identity: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TemplateRef {
    pub kind: String,
    pub name: String,
    pub origin: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReporterRef {
    pub name: String,
    pub format: crate::manifest::template_kind::ReportFormat,
    pub output: String,
    /// The handlebars text of a templated reporter (not in plan.json: it is data, not a decision).
    #[serde(skip)]
    pub template: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelRef {
    pub name: String,
    /// As written, relative to the suite file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub served_name: String,
    /// A local tokenizer.json, as written (relative to the suite file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
}

/// One engine instance serving one model: the unit of engine lifecycle.
#[derive(Debug, Clone, Serialize)]
pub struct EngineGroup {
    /// `engine/model`.
    pub id: String,
    /// The engine instance name (with its swept params, e.g. `llama[ctx_size=4096]`).
    pub engine: String,
    pub template: String,
    pub model: ModelRef,
    /// The template's params; a secret one reads `secret:<param>`.
    pub params: BTreeMap<String, Json>,
    /// Each secret param's environment variable (a name, never a value): bound when the engine
    /// starts, where the rendered mode holds its `{{from_env.NAME}}` placeholder.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    pub mode: Mode,
    pub health: Health,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<Probe>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<HttpRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenize: Option<HttpRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenize_pointer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_path: Option<String>,
    pub restart_on_retry: bool,
    /// What its units ask Slurm for instead of `execution.slurm`'s values (placement only: not
    /// in `key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm: Option<crate::manifest::slurm::SlurmShape>,
    /// The group's identity key; every step of the group hashes it.
    pub key: StepKey,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Container {
        image: String,
        pull: PullPolicy,
        args: Vec<String>,
        env: BTreeMap<String, SecretOr>,
        mounts: Vec<MountRef>,
        gpus: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        shm_size: Option<String>,
        extra_args: Vec<String>,
        network: Network,
    },
    Native {
        argv: Vec<String>,
        env: BTreeMap<String, SecretOr>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
    },
    /// A container beside kitt's in one pod (a Kubernetes native sidecar) that kitt does not
    /// start, stop or pull: it connects to it on `127.0.0.1:{port}` (`execution.kubernetes`).
    /// Its args keep `{{port}}` as a placeholder, bound to `port` where the pod is written, so
    /// the port stays out of keys as it does for a container kitt starts.
    Sidecar {
        image: String,
        pull: PullPolicy,
        /// The container's command when it is not the image's entrypoint (kitt's own simulator
        /// runs from the kitt image).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        command: Vec<String>,
        args: Vec<String>,
        env: BTreeMap<String, SecretOr>,
        mounts: Vec<MountRef>,
        /// `nvidia.com/gpu` the container asks for.
        gpus: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        shm_size: Option<String>,
        /// Where it listens in the pod (placement: left out of the group's key).
        port: u16,
    },
    Endpoint {
        url: String,
        headers: BTreeMap<String, SecretOr>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ca_file: Option<String>,
        insecure: bool,
        skip_health: bool,
    },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Container { .. } => "container",
            Mode::Native { .. } => "native",
            Mode::Sidecar { .. } => "sidecar",
            Mode::Endpoint { .. } => "endpoint",
        }
    }

    /// An engine kitt does not start (an endpoint or a sidecar): its lifecycle is one connect.
    pub fn connects(&self) -> bool {
        matches!(self, Mode::Endpoint { .. } | Mode::Sidecar { .. })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MountRef {
    pub source: String,
    pub target: String,
    pub readonly: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub path: String,
    pub timeout: Dur,
    pub initial_interval: Dur,
    pub max_interval: Dur,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Json>,
}

/// A rendered engine call: the body still holds the per-request placeholders
/// `{{prompt}}` / `{{messages}}`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RequestTemplate {
    pub method: String,
    pub path: String,
    pub body: Json,
    pub stream: StreamFormat,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsagePointers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_prompt_ms: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Warmup {
    pub requests: u32,
    pub input_tokens: u32,
    /// Which call `request` is: completion (`{{prompt}}`) or chat (`{{messages}}`).
    pub api: crate::manifest::load::ApiKind,
    pub request: RequestTemplate,
}

/// One point of the matrix: model × engine instance × benchmark × params × run index.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub group: usize,
    pub model: String,
    pub engine: String,
    pub benchmark: String,
    pub template: String,
    /// Every param of the benchmark after precedence (instance > suite sampling > default).
    pub params: BTreeMap<String, Json>,
    /// The params whose value came from a sweep (what tells sibling cells apart).
    pub swept: BTreeMap<String, Json>,
    pub run_index: u32,
    /// The effective sampling values sent with each request.
    pub sampling: BTreeMap<String, Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<std::sync::Arc<RequestTemplate>>,
    /// The eval of an `eval` benchmark, rendered for this cell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<crate::eval::EvalSpec>,
    /// Client processes that send the load together (absent: one, this process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients: Option<CellClients>,
}

/// A cell's load from several client processes (`benchmarks[].clients` of 2 or more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CellClients {
    pub count: u32,
    /// `clients_min`: the fewest that must finish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
}

impl CellClients {
    /// Shard `k`'s share as text: which request indices it sends and, for a closed loop, how
    /// many of the workers it runs.
    pub fn share(&self, k: u32, load: Option<&crate::manifest::load::LoadSpec>) -> String {
        use crate::manifest::load::Profile;
        let n = self.count;
        let indices = format!("requests {k}, {}, {}, …", k + n, k + 2 * n);
        let split = |total: u32| if k >= total { 0 } else { (total - k).div_ceil(n) };
        match load.map(|l| (&l.profile, l.max_concurrency)) {
            Some((Profile::Concurrency(c), _)) => format!("{indices}; {} of {c} workers", split(*c)),
            Some((Profile::Constant(_) | Profile::Poisson { .. }, max)) => {
                let max = max.unwrap_or(crate::bench::load::DEFAULT_MAX_CONCURRENCY);
                format!("{indices} at their scheduled times; up to {} of {max} in flight", split(max))
            }
            _ => indices,
        }
    }
}

impl Cell {
    /// `tput concurrency=4 run=1`: a short human label.
    pub fn label(&self) -> String {
        let mut s = self.benchmark.clone();
        for (k, v) in &self.swept {
            s.push_str(&format!(" {k}={}", crate::template::scalar_text(v)));
        }
        // A single `clients` count is no axis, but where the load came from is worth reading.
        if let Some(c) = self.clients.filter(|_| !self.swept.contains_key("clients")) {
            s.push_str(&format!(" clients={}", c.count));
        }
        s.push_str(&format!(" run={}", self.run_index));
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Pull,
    Start,
    /// An endpoint engine (one kitt does not start): health check and observed facts.
    Connect,
    Setup,
    Warmup,
    Benchmark,
    Collect,
    Stop,
    Report,
}

impl StepKind {
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Pull => "pull",
            StepKind::Start => "start",
            StepKind::Connect => "connect",
            StepKind::Setup => "setup",
            StepKind::Warmup => "warmup",
            StepKind::Benchmark => "benchmark",
            StepKind::Collect => "collect",
            StepKind::Stop => "stop",
            StepKind::Report => "report",
        }
    }

    /// Steps that measure: they hold the engine (and, with host isolation, the machine).
    pub fn measures(self) -> bool {
        matches!(self, StepKind::Warmup | StepKind::Benchmark)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub id: usize,
    pub kind: StepKind,
    pub key: StepKey,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell: Option<usize>,
    pub deps: Vec<usize>,
    /// A service lives while a dependent still has to run (engine starts).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub service: bool,
    pub lease: Lease,
}

/// What a step holds exclusively while it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// Its engine group (no other measuring step on the same engine).
    pub engine: bool,
    /// The machine (a lock shared by every kitt process on the host).
    pub host: bool,
}

impl Plan {
    pub fn step_label(&self, step: &Step) -> String {
        match (step.cell, step.group) {
            (Some(c), _) => self.cells[c].label(),
            (None, Some(g)) => self.groups[g].id.clone(),
            _ => self.reporters.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "),
        }
    }

    /// The unit of each step (`None` for the report).
    pub fn unit_of_steps(&self) -> Vec<Option<usize>> {
        let mut of = vec![None; self.steps.len()];
        for (ui, u) in self.units.iter().enumerate() {
            for s in &u.steps {
                of[*s] = Some(ui);
            }
        }
        of
    }

    /// The petgraph form of the step DAG (ids are node indices).
    pub fn graph(&self) -> petgraph::graph::DiGraph<usize, ()> {
        let mut g = petgraph::graph::DiGraph::with_capacity(self.steps.len(), self.steps.len() * 2);
        let nodes: Vec<_> = self.steps.iter().map(|s| g.add_node(s.id)).collect();
        for s in &self.steps {
            for d in &s.deps {
                g.add_edge(nodes[*d], nodes[s.id], ());
            }
        }
        g
    }
}
