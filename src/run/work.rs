//! `kitt work`: runs one unit of an existing run directory, the same code whatever places it (a
//! shell, a process pool, a Slurm node, an agent).
//!
//! Results commit exactly once whatever runs them: an attempt first claims the unit (an
//! exclusively created `attempts/<unit>/<n>` naming its holder), journals only into its own shard
//! `journal/<unit>.<n>.jsonl`, writes every step's output under a private directory, and commits a
//! finished measured step with one atomic exclusive operation (`commit`). When two attempts race
//! one key, one commit stands and the other is journaled as a `duplicate` and discarded.
//! Lifecycle steps are services: every attempt that needs the engine runs its own.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::journal::{self, Event, Journal, JournalError};
use super::lease::{self, file::Renewer};
use super::pidfile::{self, Owner};
use super::scheduler::{self, Executor, StepError, StepFuture};
use super::steps::{Progress, RunExecutor};
use super::{commit, dir, facts, hostlock, observed_facts, reusable_keys};
use crate::cancel::Cancel;
use crate::plan::{Plan, StepKind};

/// Test hook: with `KITT_TEST_SKIP_CLAIM=1` a live claim is not refused and a higher attempt
/// does not fence a lower one, so tests can make two attempts race one key's commit. Never set it
/// outside tests.
pub const SKIP_CLAIM_ENV: &str = "KITT_TEST_SKIP_CLAIM";
/// Test hook: `KITT_TEST_WORK_GATE=DIR` makes an attempt, once it has read the run's state,
/// create `DIR/ready.<attempt>` and wait for `DIR/go`, so tests order racing attempts by files.
/// Never set it outside tests.
pub const GATE_ENV: &str = "KITT_TEST_WORK_GATE";
/// Test hook: `KITT_TEST_WORK_KILL_AFTER_RECORD=N` makes the first attempt (attempt 0) of a unit
/// die like `kill -9` right after record N of its journal shard; later attempts run on, so tests
/// can see a unit lost and placed again. Never set it outside tests.
pub const WORK_KILL_ENV: &str = "KITT_TEST_WORK_KILL_AFTER_RECORD";
/// Test hook: `KITT_TEST_WORK_KILL_AT_COMMIT=before|mid|after` makes attempt 0 die like `kill -9`
/// at its first commit of a measured step: `before` once the step's output is complete and the
/// commit not begun, `mid` with the commit marker written into the private directory but not yet
/// renamed onto `steps/<key>/`, `after` once committed but before its journal record. Never set it
/// outside tests.
pub const WORK_KILL_AT_COMMIT_ENV: &str = "KITT_TEST_WORK_KILL_AT_COMMIT";

/// Dies like `kill -9` if [`WORK_KILL_AT_COMMIT_ENV`] names `point` and this is attempt 0.
pub(crate) fn kill_at_commit(epoch: u32, point: &str) {
    if epoch == 0 && std::env::var(WORK_KILL_AT_COMMIT_ENV).is_ok_and(|v| v == point) {
        // SAFETY: raising SIGKILL on ourselves (test hook).
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0} is not a run directory (no run.json); create the run with `kitt apply` first")]
    NotARun(PathBuf),
    #[error("run {run} has no unit `{unit}`; its units are: {known} (`kitt plan SUITE --units` lists them)")]
    NoSuchUnit { run: String, unit: String, known: String },
    #[error(
        "the plan changed: the run's plan.json has digest {run}, but its suite {suite} now compiles to {ours}; resume it with `kitt apply` (which rewrites the plan) before running its units"
    )]
    PlanMismatch { run: String, ours: String, suite: String },
    #[error(
        "this kitt is build {ours}, but run {run} was started by build {theirs}; run `kitt work` with the same kitt binary as the run, or resume with `kitt apply --accept-drift`"
    )]
    BuildMismatch { run: String, theirs: String, ours: String },
    #[error(
        "unit {unit} is claimed by attempt {attempt} ({holder}); wait for it to end or stop it (a dead holder's claim is taken over)"
    )]
    Claimed { unit: String, attempt: u32, holder: String },
    #[error("{0}")]
    Io(String),
}

/// Who holds an attempt: written into `attempts/<unit>/<n>` when it is claimed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub host: String,
    pub started_unix_ns: u64,
    #[serde(flatten)]
    pub owner: Owner,
    /// The Slurm job this attempt runs in (`SLURM_JOB_ID`), when it runs under Slurm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job: Option<String>,
    /// How often Slurm had requeued that job when this attempt started (`SLURM_RESTART_COUNT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_restart: Option<u32>,
}

impl Claim {
    fn mine() -> Result<Claim, WorkError> {
        let owner = pidfile::owner_of(std::process::id())
            .ok_or_else(|| WorkError::Io("cannot read this process's start time from /proc".into()))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        let slurm_job = std::env::var("SLURM_JOB_ID").ok().filter(|j| !j.is_empty());
        let slurm_restart = slurm_job
            .as_ref()
            .map(|_| std::env::var("SLURM_RESTART_COUNT").ok().and_then(|n| n.parse().ok()).unwrap_or(0));
        Ok(Claim { host, started_unix_ns: journal::unix_ns(), owner, slurm_job, slurm_restart })
    }

    /// Whether `self` is an earlier run of the Slurm job `me` runs in: Slurm requeued that job
    /// (its node failed or was set down), so that run holds nothing, even where its process still
    /// exists on a lost node (its slurmd kills it when it returns; it can commit nothing more
    /// once `me` claimed a higher attempt).
    fn requeued_by(&self, me: &Claim) -> bool {
        matches!(
            (&self.slurm_job, self.slurm_restart, &me.slurm_job, me.slurm_restart),
            (Some(a), Some(n), Some(b), Some(m)) if a == b && n < m
        )
    }

    fn describe(&self) -> String {
        let started = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(self.started_unix_ns);
        format!("host {}, pid {}, started {}", self.host, self.owner.pid, humantime::format_rfc3339_seconds(started))
    }

    /// Whether the holder still runs (a claim from another machine cannot be judged here: live).
    fn live(&self) -> bool {
        pidfile::foreign(&self.owner) || pidfile::still_running(&self.owner)
    }
}

/// What one `kitt work` attempt did.
pub struct WorkOutcome {
    pub run_id: String,
    pub unit: String,
    pub attempt: u32,
    pub committed: usize,
    pub duplicates: usize,
    pub failed_cells: usize,
    pub errors: Vec<String>,
    pub interrupted: bool,
    /// Its claim was taken from it: it stopped and committed nothing more.
    pub lost_claim: bool,
}

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> WorkError {
    WorkError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// sha256 of a plan as `kitt apply` writes it into plan.json.
pub fn plan_digest(bytes: &[u8]) -> String {
    let h = Sha256::digest(bytes);
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_claim(path: &Path) -> Option<Claim> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// With no driver to judge leases (a Kubernetes retry pod), waits out an earlier attempt that
/// another machine holds: if its lease file does not move for a whole lease, that attempt is
/// silent (its pod is gone), so it is marked expired, as a driver would, and the claim that
/// follows may take the unit. A lease that moves means a live holder: the claim refuses as
/// usual. Safe for the same reason as a driver's judgement: a silent holder that wakes up is
/// fenced by the higher attempt and commits nothing.
pub async fn take_over_silent(run_dir: &Path, unit: &str, cancel: &Cancel) -> Result<(), WorkError> {
    let dir = run_dir.join("attempts").join(unit);
    let holder = super::units::attempt_numbers(&dir)
        .into_iter()
        .rev()
        .filter(|n| !lease::file::marked_expired(&dir, *n))
        .find_map(|n| read_claim(&dir.join(n.to_string())).filter(Claim::live).map(|c| (n, c)));
    // A holder on this machine is judged by its process, in `claim`.
    let Some((n, c)) = holder.filter(|(_, c)| pidfile::foreign(&c.owner)) else { return Ok(()) };
    let counter = || {
        std::fs::read(lease::file::lease_path(&dir, n))
            .ok()
            .and_then(|b| serde_json::from_slice::<lease::file::LeaseFile>(&b).ok())
            .map(|l| l.counter)
    };
    let config = lease::LeaseConfig::from_env();
    let first = counter();
    let began = tokio::time::Instant::now();
    tracing::info!(
        "unit {unit}: attempt {n} is held by {}; waiting up to {:?} for its lease to move",
        c.describe(),
        config.lease
    );
    while began.elapsed() < config.lease {
        tokio::select! {
            _ = tokio::time::sleep(config.renew.min(std::time::Duration::from_secs(1))) => {}
            _ = cancel.cancelled() => return Ok(()),
        }
        if counter() != first {
            return Ok(());
        }
    }
    tracing::warn!(
        "unit {unit}: attempt {n} ({}) renewed nothing for {:?}: marking it expired",
        c.describe(),
        config.lease
    );
    lease::file::mark_expired(&dir, n).map_err(|e| io("mark expired", &dir, e))
}

/// Claims `unit`: creates the next `attempts/<unit>/<n>` exclusively, refusing while an earlier
/// attempt's holder is live (unless the test hook says otherwise).
fn claim(run_dir: &Path, unit: &str, me: &Claim) -> Result<u32, WorkError> {
    let dir = run_dir.join("attempts").join(unit);
    std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
    let skip = std::env::var(SKIP_CLAIM_ENV).is_ok_and(|v| v == "1");
    let bytes = serde_json::to_vec(me).map_err(|e| WorkError::Io(e.to_string()))?;
    let held_before = |below: Option<u32>| -> Option<(u32, Claim)> {
        super::units::attempt_numbers(&dir)
            .into_iter()
            .rev()
            .filter(|n| below.is_none_or(|b| *n < b))
            // An attempt a driver judged expired holds nothing, even while its process exists.
            .filter(|n| !lease::file::marked_expired(&dir, *n))
            .find_map(|n| {
                read_claim(&dir.join(n.to_string())).filter(|c| c.live() && !c.requeued_by(me)).map(|c| (n, c))
            })
    };
    loop {
        if !skip && let Some((attempt, c)) = held_before(None) {
            return Err(WorkError::Claimed { unit: unit.into(), attempt, holder: c.describe() });
        }
        let n = super::units::attempt_numbers(&dir).last().map_or(0, |n| n + 1);
        let path = dir.join(n.to_string());
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                use std::io::Write as _;
                f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(|e| io("write", &path, e))?;
                // Two claims may have passed the check at once: the earliest live one holds.
                if !skip && let Some((attempt, c)) = held_before(Some(n)) {
                    let _ = std::fs::remove_file(&path);
                    return Err(WorkError::Claimed { unit: unit.into(), attempt, holder: c.describe() });
                }
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("create", &path, e)),
        }
    }
}

/// The build that started the run: the first `kitt.build` its journal records.
fn run_build(run_dir: &Path) -> Result<Option<String>, WorkError> {
    Ok(journal::read(&run_dir.join("journal.jsonl"))?.records.iter().find_map(|r| match &r.event {
        Event::RunStarted { facts, .. } => facts.get("kitt.build").cloned(),
        _ => None,
    }))
}

/// The run at `run_dir` on a `kitt agent`: its suite (a copy beside the run, so its paths are
/// this host's) compiled here must give the units and keys of the run's plan.json (the server's),
/// unit for unit; the plan itself may differ in where the suite lies.
pub fn open_agent_copy(run_dir: &Path) -> Result<(dir::RunMeta, Plan), WorkError> {
    let meta: dir::RunMeta = std::fs::read(run_dir.join("run.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| WorkError::NotARun(run_dir.to_path_buf()))?;
    let theirs = crate::exec::agents::PlanLite::read(run_dir).map_err(WorkError::Io)?;
    let plan = crate::plan::compile::compile_file(&meta.file).map_err(|diags| {
        let first = diags.first().map(|d| d.message.clone()).unwrap_or_default();
        WorkError::Io(format!("the run's suite {} does not compile here: {first}", meta.file.display()))
    })?;
    let keys = |units: Vec<(&str, Vec<&str>)>| {
        units.into_iter().map(|(u, k)| format!("{u}:{}", k.join(","))).collect::<Vec<_>>()
    };
    let ours = keys(
        plan.units
            .iter()
            .map(|u| (u.id.as_str(), u.steps.iter().map(|s| plan.steps[*s].key.as_str()).collect()))
            .collect(),
    );
    let server = keys(
        theirs
            .units
            .iter()
            .map(|u| {
                (u.id.as_str(), u.steps.iter().filter_map(|s| theirs.steps.get(*s)).map(|s| s.key.as_str()).collect())
            })
            .collect(),
    );
    if ours != server {
        return Err(WorkError::Io(
            "the suite compiled on this host gives other step keys than the run's plan on the server: a model or template resolves differently here (model paths are this host's: give absolute paths that exist on every agent), or this kitt differs from the server's (`kitt agent update`)"
        .to_string()));
    }
    Ok((meta, plan))
}

/// Checks the run at `run_dir` against this kitt and returns its plan: the suite it was created
/// from must compile to its plan.json exactly, and this kitt must be the build that started it.
pub fn open_run(run_dir: &Path) -> Result<(dir::RunMeta, Plan), WorkError> {
    let meta: dir::RunMeta = std::fs::read(run_dir.join("run.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| WorkError::NotARun(run_dir.to_path_buf()))?;
    let plan_path = run_dir.join("plan.json");
    let written = std::fs::read(&plan_path).map_err(|e| io("read", &plan_path, e))?;
    let plan = crate::plan::compile::compile_file(&meta.file).map_err(|diags| {
        let first = diags.first().map(|d| d.message.clone()).unwrap_or_default();
        WorkError::Io(format!("the run's suite {} no longer compiles: {first}", meta.file.display()))
    })?;
    let ours = serde_json::to_vec_pretty(&plan).map_err(|e| WorkError::Io(e.to_string()))?;
    let (run, ours) = (plan_digest(&written), plan_digest(&ours));
    if run != ours {
        return Err(WorkError::PlanMismatch { run, ours, suite: meta.file.display().to_string() });
    }
    if let Some(theirs) = run_build(run_dir)?
        && theirs != facts::build_id()
    {
        return Err(WorkError::BuildMismatch { run: meta.id.clone(), theirs, ours: facts::build_id() });
    }
    Ok((meta, plan))
}

/// Before a unit starts on a machine: engines and containers of this runs directory whose kitt
/// died here (a lost attempt that Slurm's slurmd killed without cleanup, a SIGKILLed driver) are
/// stopped, and a container unit on a machine whose Docker does not answer fails at once.
async fn sweep_dead_owners(run_dir: &Path, g: &crate::plan::EngineGroup) -> Result<(), WorkError> {
    let Some(root) = run_dir.parent().map(Path::to_path_buf) else { return Ok(()) };
    for what in pidfile::sweep(&root, None) {
        tracing::warn!("stopped {what}");
    }
    if !matches!(g.mode, crate::plan::Mode::Container { .. }) {
        return Ok(());
    }
    let swept = tokio::task::spawn_blocking(move || {
        crate::docker::server_version()?;
        Ok::<_, crate::docker::DockerError>(crate::docker::sweep(&crate::docker::Scope::RunsDir(root), false))
    })
    .await
    .map_err(|e| WorkError::Io(e.to_string()))?
    .map_err(|e| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        WorkError::Io(format!(
            "engine `{}` runs in a container, but Docker does not answer on {}: {e}",
            g.id,
            host.trim()
        ))
    })?;
    for c in &swept.removed {
        tracing::warn!("removed container {} ({})", c.name, c.reason);
    }
    Ok(())
}

/// Runs the uncommitted steps of `unit` in the run at `run_dir`.
pub async fn work(
    run_dir: &Path,
    unit: &str,
    cancel: &Cancel,
    progress: Arc<Progress>,
) -> Result<WorkOutcome, WorkError> {
    work_with(run_dir, unit, false, cancel, progress).await
}

/// [`work`], first taking over a silent earlier attempt with `take_over` ([`take_over_silent`]).
pub async fn work_with(
    run_dir: &Path,
    unit: &str,
    take_over: bool,
    cancel: &Cancel,
    progress: Arc<Progress>,
) -> Result<WorkOutcome, WorkError> {
    work_opts(run_dir, unit, take_over, false, cancel, progress).await
}

/// [`work_with`]; `agent_copy`: the run is an agent's copy, checked by its keys ([`open_agent_copy`]).
pub async fn work_opts(
    run_dir: &Path,
    unit: &str,
    take_over: bool,
    agent_copy: bool,
    cancel: &Cancel,
    progress: Arc<Progress>,
) -> Result<WorkOutcome, WorkError> {
    let (meta, plan) = if agent_copy { open_agent_copy(run_dir)? } else { open_run(run_dir)? };
    let Some(ui) = plan.units.iter().position(|u| u.id == unit) else {
        let known = plan.units.iter().map(|u| u.id.as_str()).collect::<Vec<_>>().join(", ");
        return Err(WorkError::NoSuchUnit { run: meta.id, unit: unit.into(), known });
    };
    if take_over {
        take_over_silent(run_dir, unit, cancel).await?;
    }
    // Secrets are read here, on the machine that runs the unit (never carried by a batch system):
    // one that is missing fails the unit before it claims anything.
    let g = &plan.groups[plan.units[ui].group];
    for (param, var) in &g.secrets {
        match crate::secrets::lookup(var) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(WorkError::Io(format!(
                    "engine `{}`: secret param `{param}` reads `{var}`, which is not set in {}",
                    g.id,
                    crate::secrets::looked_in()
                )));
            }
            Err(e) => return Err(WorkError::Io(e)),
        }
    }
    sweep_dead_owners(run_dir, g).await?;
    let me = Claim::mine()?;
    let attempt = claim(run_dir, unit, &me)?;
    let claim_path = run_dir.join("attempts").join(unit).join(attempt.to_string());
    // A renewal that finds the attempt fenced stops it at once: no step starts, its engine is
    // stopped (and a commit would be refused anyway).
    let fenced = Arc::new(Mutex::new(None::<String>));
    let renewer = Renewer::start(
        &run_dir.join("attempts").join(unit),
        attempt,
        lease::LeaseConfig::from_env(),
        Arc::new(lease::RealClock::default()),
        on_fenced(fenced.clone(), cancel.clone()),
    )
    .map_err(|e| io("start renewing the lease of", &claim_path, e))?;

    // What is finished: every attempt's journal, and every commit (journaled or not).
    let records = journal::read_run(run_dir)?;
    let mut finished: HashSet<String> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::StepFinished { key, kind: StepKind::Benchmark | StepKind::Collect, .. } => Some(key.clone()),
            _ => None,
        })
        .collect();
    finished.extend(commit::committed_keys(&plan, run_dir));
    let reusable = reusable_keys(&plan, &finished);
    wait_at_gate(attempt, cancel).await;

    let shards = journal::shards_dir(run_dir);
    std::fs::create_dir_all(&shards).map_err(|e| io("create", &shards, e))?;
    let shard_path = journal::shard_path(run_dir, unit, attempt);
    let mut shard = Journal::open(&shard_path, &journal::read(&shard_path)?)?;
    if attempt == 0
        && let Some(n) = std::env::var(WORK_KILL_ENV).ok().and_then(|v| v.parse().ok())
    {
        shard.kill_after(Some(n));
    }
    let facts = observed_facts();
    shard.append(Event::RunStarted {
        attempt,
        kitt_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        facts: facts.clone(),
        accept_drift: false,
    })?;
    let shard = Arc::new(Mutex::new(shard));

    let private = run_dir.join("attempts").join(unit).join(format!("{attempt}.out"));
    let mut exec = RunExecutor::new(
        plan.clone(),
        meta.id.clone(),
        run_dir.to_path_buf(),
        facts,
        HashMap::new(),
        false,
        reusable.clone(),
        progress,
    );
    exec.private = Some((private.clone(), format!("{unit}.{attempt}")));
    let inner = Arc::new(exec);
    let committer = Arc::new(Committer {
        inner: inner.clone(),
        run_dir: run_dir.to_path_buf(),
        private,
        claim_path,
        me: me.clone(),
        renewer,
        epoch: attempt,
        shard: shard.clone(),
        lost: AtomicBool::new(false),
        committed: AtomicUsize::new(0),
        duplicates: AtomicUsize::new(0),
    });
    let opts = scheduler::Options {
        max_parallel: plan.execution.max_parallel as usize,
        retries: plan.execution.retries,
        step_timeout: plan.execution.step_timeout.0,
        on_failure: plan.execution.on_failure,
        isolation: plan.execution.isolation,
        host_lock: hostlock::default_path(),
        holder: format!("{} (run {}, unit {unit}, attempt {attempt})", dir::holder_description(), meta.id),
        kept_failed: HashSet::new(),
        only: Some(plan.units[ui].steps.iter().copied().collect()),
    };
    let outcome = scheduler::run(&plan, committer.clone(), &reusable, &opts, shard.clone(), cancel).await;
    inner.shutdown(cancel.is_urgent()).await;
    let fence = fenced.lock().ok().and_then(|f| f.clone());
    let lost_claim = committer.lost.load(Ordering::SeqCst) || fence.is_some();
    let stopped = lost_claim.then(|| outcome.aborted.clone().or(fence).unwrap_or_default());
    let event = outcome.ending(stopped);
    if let Ok(mut j) = shard.lock() {
        j.append(event)?;
    }
    let mut errors: Vec<String> = outcome
        .errors
        .iter()
        .map(|(id, e)| format!("{} `{}`: {e}", plan.steps[*id].kind.name(), plan.step_label(&plan.steps[*id])))
        .collect();
    if let Some(reason) = outcome.aborted.filter(|_| !lost_claim) {
        errors.push(reason);
    }
    Ok(WorkOutcome {
        run_id: meta.id,
        unit: unit.into(),
        attempt,
        committed: committer.committed.load(Ordering::SeqCst),
        duplicates: committer.duplicates.load(Ordering::SeqCst),
        failed_cells: outcome.failed_cells,
        errors,
        interrupted: outcome.interrupted && !lost_claim,
        lost_claim,
    })
}

/// What a renewal that finds the attempt fenced does: records why and cancels the attempt.
fn on_fenced(fenced: Arc<Mutex<Option<String>>>, cancel: Cancel) -> Box<dyn Fn(lease::file::Fenced) + Send> {
    let skip = std::env::var(SKIP_CLAIM_ENV).is_ok_and(|v| v == "1");
    Box::new(move |f| {
        // (The claim-race test hook lets a lower attempt run on beside a higher one.)
        if skip && matches!(f, lease::file::Fenced::Superseded(_)) {
            return;
        }
        tracing::warn!("{f}: stopping; this attempt commits nothing more");
        if let Ok(mut slot) = fenced.lock() {
            *slot = Some(format!("{f}; committed nothing more"));
        }
        cancel.cancel();
    })
}

/// The test gate (`KITT_TEST_WORK_GATE`): announce readiness, wait for the go file (or a cancel).
async fn wait_at_gate(attempt: u32, cancel: &Cancel) {
    let Ok(gate) = std::env::var(GATE_ENV) else { return };
    let gate = PathBuf::from(gate);
    let _ = std::fs::write(gate.join(format!("ready.{attempt}")), b"");
    while !gate.join("go").exists() && !cancel.is_cancelled() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The executor of a `kitt work` attempt: runs steps with the real executor, then commits each
/// finished measured step from the attempt's private directory.
struct Committer {
    inner: Arc<RunExecutor>,
    run_dir: PathBuf,
    private: PathBuf,
    claim_path: PathBuf,
    me: Claim,
    /// Renews this attempt's lease while it runs, and fences its commits.
    renewer: Renewer,
    /// The attempt number: every commit carries it in its `.committed` marker.
    epoch: u32,
    shard: Arc<Mutex<Journal>>,
    lost: AtomicBool,
    committed: AtomicUsize,
    duplicates: AtomicUsize,
}

impl Committer {
    fn commit(&self, step: usize, attempt: u32) -> Result<serde_json::Value, StepError> {
        let s = &self.inner.plan.steps[step];
        // Fencing: an attempt whose claim was taken from it commits nothing.
        if read_claim(&self.claim_path).as_ref() != Some(&self.me) {
            self.lost.store(true, Ordering::SeqCst);
            return Err(StepError::abort(format!(
                "lost its claim ({} no longer names this process); committed nothing more",
                self.claim_path.display()
            )));
        }
        // Fencing by epoch: a superseded attempt, or one whose lease lapsed, commits nothing.
        // (The claim-race test hook lets a lower attempt pass a higher one, as two attempts that
        // passed this check at once would; the exclusive rename then keeps one commit.)
        let skip = std::env::var(SKIP_CLAIM_ENV).is_ok_and(|v| v == "1");
        if let Err(why) = self.renewer.check().or_else(|f| match f {
            lease::file::Fenced::Superseded(_) if skip => Ok(()),
            f => Err(f),
        }) {
            self.lost.store(true, Ordering::SeqCst);
            return Err(StepError::abort(format!("{why}; committed nothing more")));
        }
        let from = self.private.join(&s.key);
        let to = self.run_dir.join("steps").join(&s.key);
        let marker =
            serde_json::to_vec(&json!({"epoch": self.epoch, "claim": self.me, "attempt_file": self.claim_path}))
                .map_err(|e| StepError::new(e.to_string()))?;
        kill_at_commit(self.epoch, "before");
        let won = commit::commit_dir_hooked(&from, &to, &marker, &|| kill_at_commit(self.epoch, "mid"))
            .map_err(|e| StepError::new(format!("cannot commit {} as {}: {e}", from.display(), to.display())))?;
        if won {
            kill_at_commit(self.epoch, "after");
            self.committed.fetch_add(1, Ordering::SeqCst);
            return Ok(json!({"committed": true}));
        }
        self.duplicates.fetch_add(1, Ordering::SeqCst);
        let _ = std::fs::remove_dir_all(&from);
        if let Ok(mut j) = self.shard.lock()
            && let Err(e) = j.append(Event::Duplicate { step, key: s.key.clone(), kind: s.kind, attempt })
        {
            tracing::error!("{e}");
        }
        Ok(json!({"duplicate": true}))
    }
}

impl Executor for Committer {
    fn run(self: Arc<Self>, step: usize, attempt: u32, cancel: Cancel) -> StepFuture {
        Box::pin(async move {
            let mut out = self.inner.clone().run(step, attempt, cancel).await?;
            if !matches!(self.inner.plan.steps[step].kind, StepKind::Benchmark | StepKind::Collect) {
                return Ok(out);
            }
            let committed = self.commit(step, attempt)?;
            if let (Some(o), Some(c)) = (out.as_object_mut(), committed.as_object()) {
                o.extend(c.clone());
                return Ok(out);
            }
            Ok(committed)
        })
    }

    fn restart(self: Arc<Self>, step: usize, cancel: Cancel) -> StepFuture {
        self.inner.clone().restart(step, cancel)
    }
}
