//! The steps of a real run, one file per step kind (the DESIGN step table, row by row):
//! `pull`, `start`, `connect`, `setup`, `warmup`, `benchmark` (load) and `eval`, `collect`,
//! `stop`, `report`. This module holds what they share — the running engines, the run's facts,
//! the step directory — and `RunExecutor`, the `Executor` the scheduler drives: it dispatches a
//! step to the function of its kind and owns nothing of ordering or policy.
//!
//! Every resource a step creates has an owner: engine processes live in `engines` until their
//! stop step (or `shutdown`, on every other path) ends them, and an `EngineProcess` dropped
//! unstopped kills its process group.

mod benchmark;
mod collect;
mod connect;
mod eval;
mod health;
mod measure;
mod pull;
mod report;
mod setup;
mod start;
mod stop;
mod warmup;

use health::{Watch, wait_healthy};
use measure::{Measurement, prompt_seed};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value as Json, json};

use super::facts::{ModelStat, model_fingerprint};
use super::journal::{Facts, unix_ns};
use super::scheduler::{Executor, StepError, StepFuture};
use crate::bench::tokenizer::Tokenizer;
use crate::bench::{load, metrics};
use crate::cancel::Cancel;
use crate::collect::{EngineTarget, Sampler};
use crate::docker::{Container, RunSpec};
use crate::engine::client::{EngineClient, TlsOptions};
use crate::engine::native::{EngineProcess, free_port};
use crate::manifest::load::{LoadSpec, Profile, PromptSpec};
use crate::manifest::secret::SecretOr;
use crate::manifest::suite::{Network, PullPolicy};
use crate::plan::{EngineGroup, Mode, Plan, StepKind};
use crate::report::{CellIdentity, CellResult, CellStatus, Provenance, RESULT_SCHEMA, RunReport};
use crate::template::{bind_late, scalar_text};

/// A started engine.
struct Engine {
    process: Option<EngineProcess>,
    container: Option<Container>,
    client: EngineClient,
    facts: Facts,
    /// The served model name learned from an endpoint (`served_name: auto`).
    served: Option<String>,
    /// What the resource sampler reads for this engine.
    target: EngineTarget,
}

/// Live progress, read by the display.
#[derive(Default)]
pub struct Progress {
    /// Requests completed in the running measuring step.
    pub requests: Arc<AtomicU64>,
    /// Requests that failed in the running measuring step.
    pub errors: Arc<AtomicU64>,
    /// Requests the running measuring step will send (0 when bounded by time).
    pub requests_total: AtomicU64,
    /// Label of the running measuring step.
    pub label: Mutex<String>,
    pub steps_done: AtomicU64,
    /// What the run is: new, or resumed with how many steps reused (shown beside the steps).
    pub note: Mutex<String>,
}

pub struct RunExecutor {
    pub plan: Plan,
    pub run_id: String,
    pub run_dir: PathBuf,
    pub kitt_exe: String,
    /// Run-level observed facts.
    pub facts: Facts,
    /// Engine facts recorded by earlier attempts of this run, by group id.
    pub previous_engine_facts: HashMap<String, Facts>,
    pub accept_drift: bool,
    /// Run-level facts that changed since earlier attempts, accepted with `--accept-drift`: every
    /// cell this attempt measures carries them.
    pub run_drift: Vec<String>,
    /// Model fingerprints recorded by earlier attempts of this run, by group id (the fast path).
    pub previous_models: HashMap<String, ModelStat>,
    /// Hash whole model files (`--verify-models`) instead of their edges.
    pub verify_models: bool,
    /// Collect keys finished by earlier attempts (their results are marked reused).
    pub reused: HashSet<String>,
    pub progress: Arc<Progress>,
    /// A `kitt work` attempt's private directory and tag: step outputs are written under it
    /// (measured ones are committed from there), and its engines' pid files carry the tag, so
    /// attempts racing one unit never write each other's files.
    pub private: Option<(PathBuf, String)>,
    /// Running engines by unit: each unit (an engine group, or one cell) starts its own.
    engines: tokio::sync::Mutex<HashMap<usize, Engine>>,
    /// The unit of each step.
    unit_of: Vec<Option<usize>>,
    /// Containers started so far (names are `kitt-<run id>-<group>-<n>`).
    containers_started: AtomicU64,
    /// Local tokenizers loaded so far, by file.
    local_tokenizers: Mutex<HashMap<PathBuf, Tokenizer>>,
    drift: Mutex<HashMap<usize, Vec<String>>>,
}

/// Where a step runs: what to run (its engine group) and which running engine it uses (its
/// unit's: each unit starts its own).
#[derive(Debug, Clone, Copy)]
struct At {
    group: usize,
    unit: usize,
}

fn err(e: impl std::fmt::Display) -> StepError {
    StepError::new(e.to_string())
}

impl RunExecutor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: Plan,
        run_id: String,
        run_dir: PathBuf,
        facts: Facts,
        previous_engine_facts: HashMap<String, Facts>,
        accept_drift: bool,
        reused: HashSet<String>,
        progress: Arc<Progress>,
    ) -> RunExecutor {
        let kitt_exe =
            std::env::current_exe().map(|p| p.to_string_lossy().to_string()).unwrap_or_else(|_| "kitt".into());
        let unit_of = plan.unit_of_steps();
        RunExecutor {
            plan,
            run_id,
            run_dir,
            kitt_exe,
            facts,
            previous_engine_facts,
            accept_drift,
            run_drift: Vec::new(),
            previous_models: HashMap::new(),
            verify_models: false,
            reused,
            progress,
            private: None,
            engines: tokio::sync::Mutex::new(HashMap::new()),
            unit_of,
            containers_started: AtomicU64::new(0),
            local_tokenizers: Mutex::new(HashMap::new()),
            drift: Mutex::new(HashMap::new()),
        }
    }

    fn step_dir(&self, key: &str) -> Result<PathBuf, StepError> {
        let d = match &self.private {
            Some((dir, _)) => dir.join(key),
            None => self.run_dir.join("steps").join(key),
        };
        std::fs::create_dir_all(&d).map_err(|e| err(format!("cannot create {}: {e}", d.display())))?;
        Ok(d)
    }

    fn write(&self, path: PathBuf, value: &impl serde::Serialize) -> Result<(), StepError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(err)?;
        crate::run::dir::write_atomic(&path, &bytes).map_err(|e| err(format!("cannot write {}: {e}", path.display())))
    }

    fn late(&self, port: u16) -> Vec<(&'static str, Json)> {
        vec![("port", json!(port)), ("run.id", json!(self.run_id)), ("kitt.exe", json!(self.kitt_exe))]
    }

    fn secret(name: &str, v: &SecretOr, late: &[(&str, Json)]) -> Result<String, StepError> {
        match v {
            SecretOr::Plain(s) => Ok(scalar_text(&bind_late(&json!(s), late))),
            SecretOr::FromEnv { from_env, prefix } => match crate::secrets::lookup(from_env) {
                Ok(Some(value)) => Ok(format!("{}{value}", prefix.as_deref().unwrap_or(""))),
                Ok(None) => Err(err(format!(
                    "`{name}` reads the secret `{from_env}`, which is not set in {}",
                    crate::secrets::looked_in()
                ))),
                Err(e) => Err(err(e)),
            },
        }
    }

    /// What the server reports about itself: its version (an observed fact).
    async fn observe(&self, g: &EngineGroup, client: &EngineClient) -> Facts {
        let mut facts = Facts::new();
        if let Some(probe) = &g.version {
            match client.get_json(&probe.path).await {
                Ok(v) => {
                    let version = v.pointer(&probe.pointer).map(scalar_text).unwrap_or_default();
                    facts.insert("engine.version".into(), version);
                }
                Err(e) => tracing::warn!("engine `{}`: cannot read its version: {e}", g.id),
            }
        }
        facts
    }

    /// The fingerprint of the group's model file (none when the model has no path), off the
    /// async threads: hashing reads up to 2 MiB per file, or whole files with `--verify-models`.
    async fn model_stat(&self, gi: usize) -> Result<Option<ModelStat>, StepError> {
        let g = &self.plan.groups[gi];
        let Some(path) = &g.model.path else { return Ok(None) };
        let path = self.plan.suite.dir.join(path);
        let previous = self.previous_models.get(&g.id).cloned();
        let verify = self.verify_models;
        // A sidecar's models lie in the pod's models volume, which kitt's container need not mount.
        let endpoint = g.mode.connects();
        let p = path.clone();
        let taken = tokio::task::spawn_blocking(move || model_fingerprint(&p, previous.as_ref(), verify))
            .await
            .map_err(|e| err(format!("fingerprinting {} failed: {e}", path.display())))?;
        match taken {
            Ok(stat) => Ok(Some(stat)),
            // An endpoint's model lives on its server: a path kitt cannot read is no error.
            Err(_) if endpoint => Ok(None),
            Err(e) => Err(err(format!(
                "model `{}`: cannot read {} to fingerprint it: {e}; check `path:` (relative to the suite file)",
                g.model.name,
                path.display()
            ))),
        }
    }

    fn add_model_fact(facts: &mut Facts, model: Option<&ModelStat>) {
        if let Some(m) = model {
            facts.insert("model.fingerprint".into(), m.fingerprint.clone());
        }
    }

    /// Compares the facts just observed with what earlier attempts of this run recorded.
    fn check_drift(&self, gi: usize, facts: &Facts) -> Result<(), StepError> {
        let g = &self.plan.groups[gi];
        let Some(previous) = self.previous_engine_facts.get(&g.id) else { return Ok(()) };
        let changed: Vec<String> = previous
            .iter()
            .filter(|(k, v)| facts.get(*k).is_some_and(|now| now != *v))
            .map(|(k, v)| format!("{k} of engine `{}` was `{v}`, now `{}`", g.id, facts[k]))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        if !self.accept_drift {
            return Err(StepError::abort(format!(
                "drift: {}; resuming would mix results from different engines. Rerun with --accept-drift to continue (the cells are marked), or --fresh to start over",
                changed.join("; ")
            )));
        }
        if let Ok(mut d) = self.drift.lock() {
            d.insert(gi, changed);
        }
        Ok(())
    }

    /// Where `step` runs: its engine group and its unit.
    fn at(&self, step: usize) -> Result<At, StepError> {
        let s = &self.plan.steps[step];
        match (s.group, self.unit_of[step]) {
            (Some(group), Some(unit)) => Ok(At { group, unit }),
            _ => Err(err(format!("{} step without an engine group", s.kind.name()))),
        }
    }

    /// The name of the pid file of a unit's engine process: its group's key for a group unit
    /// (one engine per group), its start step's key for a cell unit.
    fn pid_key(&self, at: At) -> String {
        let start =
            self.plan.units[at.unit].steps.iter().map(|s| &self.plan.steps[*s]).find(|s| s.kind == StepKind::Start);
        let key = match (self.plan.units[at.unit].kind, start) {
            (crate::plan::UnitKind::Group, _) | (_, None) => self.plan.groups[at.group].key.clone(),
            (_, Some(s)) => s.key.clone(),
        };
        match &self.private {
            Some((_, tag)) => format!("{key}.{tag}"),
            None => key,
        }
    }

    async fn client(&self, at: At) -> Result<EngineClient, StepError> {
        Ok(self.engine_handle(at).await?.0)
    }

    /// The client of a running engine and the model name it serves, when learned at run time.
    async fn engine_handle(&self, at: At) -> Result<(EngineClient, Option<String>), StepError> {
        let engines = self.engines.lock().await;
        engines
            .get(&at.unit)
            .map(|e| (e.client.clone(), e.served.clone()))
            .ok_or_else(|| err(format!("engine `{}` is not running", self.plan.groups[at.group].id)))
    }

    async fn served_name(&self, at: At) -> Option<String> {
        self.engines.lock().await.get(&at.unit).and_then(|e| e.served.clone())
    }
}

impl Executor for RunExecutor {
    fn run(self: Arc<Self>, step: usize, attempt: u32, cancel: Cancel) -> StepFuture {
        Box::pin(async move {
            let s = &self.plan.steps[step];
            let group = s.group;
            let g = || group.ok_or_else(|| err("step without an engine group"));
            let at = || self.at(step);
            panic_if_asked(s.kind, &self.plan.step_label(s), attempt);
            let result = match s.kind {
                StepKind::Pull => self.pull(g()?).await,
                StepKind::Start => self.start(at()?, &s.key, &cancel).await,
                StepKind::Connect => self.connect(at()?, &cancel).await,
                StepKind::Setup => self.setup(at()?).await,
                StepKind::Warmup => self.warmup(at()?, &cancel).await,
                StepKind::Benchmark => self.benchmark(step, attempt, &cancel).await,
                StepKind::Collect => self.collect(step).await,
                StepKind::Stop => self.stop(at()?, &cancel).await,
                StepKind::Report => self.write_reports(),
            };
            if result.is_ok() {
                self.progress.steps_done.fetch_add(1, Ordering::Relaxed);
            }
            result
        })
    }

    fn restart(self: Arc<Self>, step: usize, cancel: Cancel) -> StepFuture {
        Box::pin(async move {
            let at = self.at(step)?;
            // kitt did not start an endpoint and cannot restart it: the retry simply runs again.
            if self.plan.groups[at.group].mode.connects() {
                return Ok(Json::Null);
            }
            self.stop(at, &cancel).await?;
            // The start of the step's own unit: with `granularity: cell` each cell has one.
            let key = self.plan.units[at.unit]
                .steps
                .iter()
                .map(|s| &self.plan.steps[*s])
                .find(|s| s.kind == StepKind::Start)
                .map(|s| s.key.clone())
                .unwrap_or_default();
            self.start(at, &key, &cancel).await?;
            self.warmup(at, &cancel).await
        })
    }
}

/// Test hook: `KITT_TEST_PANIC_STEP=<kind>[:<label part>][@<attempt>]` makes the steps of that
/// kind (whose label contains the part, on that attempt) panic, so tests can prove that a
/// panicking step is journaled as failed. Never set it outside tests.
fn panic_if_asked(kind: StepKind, label: &str, attempt: u32) {
    let Ok(spec) = std::env::var("KITT_TEST_PANIC_STEP") else { return };
    let (spec, on_attempt) = match spec.rsplit_once('@') {
        Some((s, a)) => (s.to_string(), a.parse::<u32>().ok()),
        None => (spec, None),
    };
    let (k, part) = spec.split_once(':').unwrap_or((spec.as_str(), ""));
    if k == kind.name() && label.contains(part) && on_attempt.is_none_or(|a| a == attempt) {
        panic!("KITT_TEST_PANIC_STEP: {} `{label}` panics (attempt {attempt})", kind.name());
    }
}
