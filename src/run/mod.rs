//! Running a plan: the run directory, the journal, locks and the scheduler.
//!
//! Owns the filesystem layout of runs and the order in which steps execute; what a step does
//! lives in `steps` (one file per step kind), which calls into `engine` and `bench`.

pub mod commit;
pub mod dir;
pub mod facts;
pub mod hostlock;
pub mod journal;
pub mod lease;
pub mod live;
pub mod pidfile;
mod placed;
pub mod runlock;
pub mod scheduler;
pub mod steps;
pub mod units;
pub mod work;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::cancel::Cancel;
use crate::plan::{Plan, StepKind};
use crate::report::RunReport;
use dir::{LockError, RunDir, RunMeta, RunStatus};
use journal::{Event, Facts, Journal, JournalError};

pub struct ApplyOptions {
    pub runs_dir: Option<PathBuf>,
    /// Start a new run even if an unfinished one exists.
    pub fresh: bool,
    /// Resume this run id.
    pub resume: Option<String>,
    pub accept_drift: bool,
    /// Run the cells that failed in earlier attempts of the resumed run again.
    pub rerun_failed: bool,
    /// Hash whole model files instead of their first and last MiB.
    pub verify_models: bool,
    /// Where the units run: this process (`local`) or child `kitt work` processes.
    pub executor: crate::exec::ExecutorKind,
    /// At most this many units at once (`processes`).
    pub workers: usize,
    /// At most this many attempts of one unit (`processes`: a lost attempt is placed again).
    pub max_attempts: u32,
    /// Prepare the run and return without placing its units: the caller hands it to a detached
    /// driver (`kitt runs follow`).
    pub detach: bool,
    /// Driving a run that `kitt runs cancel` may have asked to stop (`kitt runs follow`): the
    /// request stands. A plain `kitt apply` withdraws it (the user resumes the run).
    pub keep_cancel_request: bool,
}

/// The file `kitt runs cancel` creates to ask a run's driver, wherever it runs, to stop.
pub fn cancel_request_path(run_dir: &Path) -> PathBuf {
    run_dir.join("cancel.requested")
}

/// Cancels `cancel` once `kitt runs cancel` asked the run at `run_dir` to stop.
fn watch_cancel_request(run_dir: &Path, cancel: Cancel) -> tokio::task::JoinHandle<()> {
    let path = cancel_request_path(run_dir);
    tokio::spawn(async move {
        while !cancel.is_cancelled() {
            if path.exists() {
                tracing::warn!("cancel requested ({}): no new steps; stopping engines", path.display());
                cancel.cancel();
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("no run `{0}` under {1}")]
    NoSuchRun(String, PathBuf),
    #[error("drift since this run started: {}. Resuming would mix results; rerun with --accept-drift to continue (cells are marked) or --fresh to start over", .0.join("; "))]
    Drift(Vec<String>),
    #[error("run {run} belongs to suite {theirs}, not to this one; resume it with that suite file, or use --fresh")]
    OtherSuite { run: String, theirs: String },
    #[error(
        "run {run} has nothing left to run but {count} failed cell(s): {cells}. `kitt apply --rerun-failed {suite}` runs them again; `--fresh` starts a new run"
    )]
    OnlyFailed { run: String, count: usize, cells: String, suite: String },
    #[error("run {run} stopped: {reason}")]
    Stopped { run: String, reason: String },
    #[error("{0}")]
    Io(String),
}

pub struct ApplyOutcome {
    pub run_id: String,
    pub run_dir: PathBuf,
    pub resumed: bool,
    pub reused_steps: usize,
    pub failed_cells: usize,
    pub interrupted: bool,
    pub errors: Vec<String>,
    pub report: Option<RunReport>,
    /// Prepared for a detached driver, nothing run (`ApplyOptions::detach`).
    pub detached: bool,
    /// With `--detach` on Slurm: the job that drives the rest of the run after its units.
    pub report_job: Option<String>,
}

/// The run-level observed facts of this process.
pub fn observed_facts() -> Facts {
    let mut f = Facts::new();
    f.insert("kitt.version".into(), env!("CARGO_PKG_VERSION").into());
    // The build, not the version string: a rebuilt kitt may measure differently.
    f.insert("kitt.build".into(), facts::build_id());
    f.insert("metrics.schema".into(), crate::report::METRICS_SCHEMA_VERSION.to_string());
    // The machine by its stable hardware facts: a resume on other hardware is drift.
    let fp = fingerprint();
    f.insert("machine".into(), fp.identity().to_string());
    f.insert("machine.hash".into(), fp.hash().to_string());
    f
}

/// This machine's fingerprint, read once per process.
pub fn fingerprint() -> &'static crate::fingerprint::Fingerprint {
    static FP: std::sync::OnceLock<crate::fingerprint::Fingerprint> = std::sync::OnceLock::new();
    FP.get_or_init(crate::fingerprint::Fingerprint::detect)
}

/// The steps of `plan` that a resume reuses, given the keys an earlier attempt finished: cell
/// steps only (engine lifecycle steps re-run with their engine), and a collect only together
/// with its benchmark.
pub fn reusable_keys(plan: &Plan, finished: &HashSet<String>) -> HashSet<String> {
    plan.steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Benchmark | StepKind::Collect) && finished.contains(&s.key))
        .filter(|s| s.kind != StepKind::Collect || s.deps.iter().all(|d| finished.contains(&plan.steps[*d].key)))
        .map(|s| s.key.clone())
        .collect()
}

/// The cell steps of `plan` that failed in earlier attempts (by the last word on each key) and
/// stay failed: none with `rerun_failed`. A failed benchmark keeps its collect with it.
fn kept_failed_keys(
    plan: &Plan,
    reusable: &HashSet<String>,
    last_word: &HashMap<String, bool>,
    rerun_failed: bool,
) -> HashSet<String> {
    if rerun_failed {
        return HashSet::new();
    }
    let failed = |key: &str| last_word.get(key) == Some(&false);
    let mut kept = HashSet::new();
    for s in plan.steps.iter().filter(|s| s.kind == StepKind::Collect && !reusable.contains(&s.key)) {
        let bench = s.deps.iter().map(|d| &plan.steps[*d]).find(|d| d.kind == StepKind::Benchmark);
        let bench_failed = bench.is_some_and(|b| !reusable.contains(&b.key) && failed(&b.key));
        if bench_failed || failed(&s.key) {
            kept.insert(s.key.clone());
            if let Some(b) = bench.filter(|b| !reusable.contains(&b.key)) {
                kept.insert(b.key.clone());
            }
        }
    }
    kept
}

/// What `kitt apply` would reuse now: the latest unfinished run of this suite and its reusable
/// steps (for `kitt plan`).
pub fn pending_resume(plan: &Plan, runs_dir: Option<&Path>) -> Option<(String, HashSet<String>)> {
    let root = dir::runs_root(runs_dir);
    let info = dir::list(&root).into_iter().rev().find(|r| r.meta.identity == plan.suite.identity)?;
    if !matches!(info.status, RunStatus::Unfinished | RunStatus::Running | RunStatus::Failed) {
        return None;
    }
    let records = journal::read_run(&info.path).ok()?;
    let finished: HashSet<String> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::StepFinished { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect();
    Some((info.meta.id, reusable_keys(plan, &finished)))
}

/// Chooses the run to drive: `--resume`, else the latest unfinished run of this suite, else new.
fn select_run(plan: &Plan, root: &Path, opts: &ApplyOptions) -> Result<(RunDir, bool), ApplyError> {
    if let Some(id) = &opts.resume {
        let info = dir::info(&root.join(id)).ok_or_else(|| ApplyError::NoSuchRun(id.clone(), root.to_path_buf()))?;
        if info.meta.identity != plan.suite.identity {
            return Err(ApplyError::OtherSuite {
                run: id.clone(),
                theirs: format!("`{}` ({})", info.meta.suite, info.meta.file.display()),
            });
        }
        return Ok((RunDir::open(&info)?, true));
    }
    if !opts.fresh {
        let latest = dir::list(root).into_iter().rev().find(|r| r.meta.identity == plan.suite.identity);
        if let Some(info) = latest {
            match info.status {
                RunStatus::Unfinished => return Ok((RunDir::open(&info)?, true)),
                // Fails fast with the holder's name, as two kitt processes must never share a run.
                RunStatus::Running => return Ok((RunDir::open(&info)?, true)),
                // Failed cells stay failed unless `--rerun-failed`; changed cells run.
                RunStatus::Failed => return Ok((RunDir::open(&info)?, true)),
                RunStatus::Succeeded => {}
            }
        }
    }
    let meta = RunMeta {
        id: dir::new_run_id(),
        identity: plan.suite.identity.clone(),
        suite: plan.suite.name.clone(),
        file: plan.suite.file.clone(),
        created_unix_ns: journal::unix_ns(),
    };
    Ok((RunDir::create(root, &meta)?, false))
}

/// Runs (or resumes) `plan` to the end or until `cancel`.
pub async fn apply(
    plan: Plan,
    opts: &ApplyOptions,
    cancel: &Cancel,
    progress: Arc<steps::Progress>,
) -> Result<ApplyOutcome, ApplyError> {
    let root = dir::runs_root(opts.runs_dir.as_deref());
    for what in pidfile::sweep(&root, None) {
        tracing::warn!("stopped {what}");
    }
    // Only this runs directory's containers: other projects' are left to their own kitt or `kitt gc`.
    let scope = crate::docker::Scope::RunsDir(root.clone());
    let swept = tokio::task::spawn_blocking(move || crate::docker::sweep(&scope, false)).await.unwrap_or_default();
    for c in &swept.removed {
        tracing::warn!("removed container {} ({})", c.name, c.reason);
    }
    if !swept.foreign.is_empty() {
        tracing::warn!(
            "left {} container(s) of this runs directory owned by kitt on another machine; `kitt gc --foreign` lists and removes them",
            swept.foreign.len()
        );
    }
    let (mut run, resumed) = select_run(&plan, &root, opts)?;
    let contents = journal::read(&run.journal_path())?;
    // What every attempt recorded, `kitt work` shards included: their commits are finished keys.
    let records = journal::read_run(&run.path)?;
    let facts = observed_facts();
    // Facts and finished keys from earlier attempts of this run.
    let mut finished: HashSet<String> = HashSet::new();
    let mut engine_facts: HashMap<String, Facts> = HashMap::new();
    let mut previous_models: HashMap<String, facts::ModelStat> = HashMap::new();
    // The last word on each cell step: finished (true) or failed (false).
    let mut last_word: HashMap<String, bool> = HashMap::new();
    let mut previous_run_facts: Option<Facts> = None;
    let mut attempt = 0;
    let start_keys: HashMap<&str, &str> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Start | StepKind::Connect))
        .filter_map(|s| s.group.map(|g| (s.key.as_str(), plan.groups[g].id.as_str())))
        .collect();
    for r in &records {
        match &r.event {
            Event::RunStarted { facts, .. } => {
                attempt += 1;
                previous_run_facts = Some(facts.clone());
            }
            Event::StepFinished { key, kind, outputs, .. } => {
                if matches!(kind, StepKind::Benchmark | StepKind::Collect) {
                    finished.insert(key.clone());
                    last_word.insert(key.clone(), true);
                }
                if let Some(group) = start_keys.get(key.as_str()) {
                    if let Some(f) = outputs.get("facts").and_then(|f| serde_json::from_value::<Facts>(f.clone()).ok())
                    {
                        engine_facts.insert(group.to_string(), f);
                    }
                    if let Some(m) = outputs.get("model").and_then(|m| serde_json::from_value(m.clone()).ok()) {
                        previous_models.insert(group.to_string(), m);
                    }
                }
            }
            Event::StepFailed { key, kind: StepKind::Benchmark | StepKind::Collect, will_retry: false, .. } => {
                last_word.insert(key.clone(), false);
            }
            // Skipped because something it needed failed (not because the policy stopped the run).
            Event::StepSkipped { key, kind, reason, .. }
                if matches!(kind, StepKind::Benchmark | StepKind::Collect)
                    && reason != scheduler::STOPPED_BY_POLICY =>
            {
                last_word.insert(key.clone(), false);
            }
            _ => {}
        }
    }
    // A `kitt work` killed between its commit and its journal record still committed.
    finished.extend(commit::committed_keys(&plan, &run.path));
    let reusable = reusable_keys(&plan, &finished);
    let kept_failed = kept_failed_keys(&plan, &reusable, &last_word, opts.rerun_failed);
    let pending_cells = plan
        .steps
        .iter()
        .filter(|s| s.kind == StepKind::Benchmark && !reusable.contains(&s.key) && !kept_failed.contains(&s.key))
        .count();
    if resumed && pending_cells == 0 && !kept_failed.is_empty() {
        let failed: Vec<String> = plan
            .steps
            .iter()
            .filter(|s| s.kind == StepKind::Benchmark && kept_failed.contains(&s.key))
            .map(|s| format!("`{}`", plan.step_label(s)))
            .collect();
        let shown = failed.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        return Err(ApplyError::OnlyFailed {
            run: run.id.clone(),
            count: failed.len(),
            cells: if failed.len() > 3 { format!("{shown}, …") } else { shown },
            suite: plan.suite.file.display().to_string(),
        });
    }
    let mut run_drift = Vec::new();
    if let Some(prev) = &previous_run_facts {
        run_drift = prev
            .iter()
            .filter(|(k, v)| facts.get(*k).is_some_and(|now| now != *v))
            .map(|(k, v)| format!("{k} was `{v}`, now `{}`", facts[k]))
            .collect();
        if !run_drift.is_empty() && !opts.accept_drift {
            return Err(ApplyError::Drift(run_drift));
        }
    }
    let plan_json = serde_json::to_vec_pretty(&plan).map_err(|e| ApplyError::Io(e.to_string()))?;
    dir::write_atomic(&run.plan_path(), &plan_json)
        .map_err(|e| ApplyError::Io(format!("cannot write {}: {e}", run.plan_path().display())))?;
    if !opts.keep_cancel_request {
        let _ = std::fs::remove_file(cancel_request_path(&run.path));
    }
    // The executor's record: what an earlier driver submitted stays, to be adopted.
    let recorded = match opts.executor {
        crate::exec::ExecutorKind::Local => None,
        kind => {
            let mut state = crate::exec::state::ExecutorState::load(&run.path)
                .map_err(ApplyError::Io)?
                .filter(|s| s.executor == kind)
                .unwrap_or_else(|| crate::exec::state::ExecutorState::new(kind, opts.workers, opts.max_attempts));
            state.workers = opts.workers;
            state.max_attempts = opts.max_attempts;
            state.save(&run.path).map_err(ApplyError::Io)?;
            Some(state)
        }
    };
    let mut report_job = None;
    if opts.detach && opts.executor == crate::exec::ExecutorKind::Slurm {
        let mut slurm =
            crate::exec::slurm::Slurm::for_run(&plan, &run.id, &run.path).map_err(|e| ApplyError::Io(e.to_string()))?;
        let recorded = recorded
            .clone()
            .unwrap_or_else(|| crate::exec::state::ExecutorState::new(opts.executor, opts.workers, opts.max_attempts));
        let (job, submitted) = placed::submit_detached(&plan, &run.path, &mut slurm, recorded, &reusable, &kept_failed)
            .map_err(|e| ApplyError::Io(e.to_string()))?;
        tracing::info!("submitted {submitted} unit(s); report job {job}");
        report_job = Some(job);
    }
    if opts.detach {
        run.release();
        return Ok(ApplyOutcome {
            report_job,
            run_id: run.id.clone(),
            run_dir: run.path.clone(),
            resumed,
            reused_steps: plan.steps.iter().filter(|s| reusable.contains(&s.key)).count(),
            failed_cells: 0,
            interrupted: false,
            errors: Vec::new(),
            report: None,
            detached: true,
        });
    }
    let cancel_watch = watch_cancel_request(&run.path, cancel.clone());
    let mut j = Journal::open(&run.journal_path(), &contents)?;
    j.append(Event::RunStarted {
        attempt,
        kitt_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        facts: facts.clone(),
        accept_drift: opts.accept_drift,
    })?;
    let j = Arc::new(Mutex::new(j));

    let sched_opts = scheduler::Options {
        max_parallel: plan.execution.max_parallel as usize,
        retries: plan.execution.retries,
        step_timeout: plan.execution.step_timeout.0,
        on_failure: plan.execution.on_failure,
        isolation: plan.execution.isolation,
        host_lock: hostlock::default_path(),
        holder: format!("{} (run {})", dir::holder_description(), run.id),
        kept_failed,
        only: None,
    };
    let reused_collects: HashSet<String> = reusable.clone();
    let mut exec = steps::RunExecutor::new(
        plan.clone(),
        run.id.clone(),
        run.path.clone(),
        facts,
        engine_facts,
        opts.accept_drift,
        reused_collects,
        progress,
    );
    exec.run_drift = run_drift;
    exec.previous_models = previous_models;
    exec.verify_models = opts.verify_models;
    let exec = Arc::new(exec);
    let reused_steps = plan.steps.iter().filter(|s| reusable.contains(&s.key)).count();
    exec.progress.steps_done.store(reused_steps as u64, std::sync::atomic::Ordering::Relaxed);
    if let Ok(mut note) = exec.progress.note.lock() {
        *note = if resumed {
            format!("resumed {}: {reused_steps} reused, {} pending", run.id, plan.steps.len() - reused_steps)
        } else {
            format!("run {}", run.id)
        };
    }
    let span = tracing::info_span!("run", id = %run.id, suite = %plan.suite.name, resumed);
    let mut unit_errors = Vec::new();
    let outcome = match opts.executor {
        crate::exec::ExecutorKind::Local => {
            tracing::Instrument::instrument(
                scheduler::run(&plan, exec.clone(), &reusable, &sched_opts, j.clone(), cancel),
                span,
            )
            .await
        }
        kind => {
            // An expired attempt gets a lease's length to stop its engine itself.
            let grace = lease::LeaseConfig::from_env().lease;
            let recorded = recorded.unwrap_or_else(|| {
                crate::exec::state::ExecutorState::new(opts.executor, opts.workers, opts.max_attempts)
            });
            let mut place = crate::exec::PlaceOptions {
                workers: opts.workers,
                max_attempts: opts.max_attempts,
                grace,
                independent: false,
            };
            let (mut units, mut leases): (Box<dyn crate::exec::UnitExecutor>, Box<dyn crate::exec::Leases>) =
                if kind == crate::exec::ExecutorKind::Agents {
                    // Agents take what they can; each runs its units apart from any other agent's.
                    let wanted = crate::exec::agents::Wanted::of(&plan);
                    place.workers = usize::MAX;
                    place.independent = true;
                    place.max_attempts = plan.execution.agents.as_ref().map_or(opts.max_attempts, |a| a.max_attempts);
                    let lease = wanted.lease;
                    let agents =
                        crate::exec::agents::Agents::for_run(&run.id, &run.path, wanted).map_err(ApplyError::Io)?;
                    (Box::new(agents), Box::new(crate::exec::agents::AgentLeases::new(&run.path, lease)))
                } else if kind == crate::exec::ExecutorKind::Slurm {
                    // Slurm throttles (`%max_jobs`) and judges liveness; each unit has a node's
                    // share (or, under `isolation: host`, a node) of its own.
                    place.workers = usize::MAX;
                    place.independent = true;
                    let slurm = crate::exec::slurm::Slurm::for_run(&plan, &run.id, &run.path)
                        .map_err(|e| ApplyError::Io(e.to_string()))?;
                    (Box::new(slurm), Box::new(crate::exec::leases::NoLeases))
                } else {
                    let program = std::env::current_exe()
                        .map_err(|e| ApplyError::Io(format!("cannot find this kitt binary to run its units: {e}")))?;
                    (
                        Box::new(crate::exec::processes::Processes::new(program, run.path.clone())),
                        Box::new(crate::exec::leases::LeaseWatches::new(&run.path, grace)),
                    )
                };
            let placed = tracing::Instrument::instrument(
                placed::run(
                    &plan,
                    &run.path,
                    units.as_mut(),
                    leases.as_mut(),
                    recorded,
                    place,
                    exec.clone(),
                    &reusable,
                    sched_opts,
                    j.clone(),
                    cancel,
                ),
                span,
            )
            .await;
            drop(units);
            unit_errors = placed.unit_errors;
            placed.outcome
        }
    };
    cancel_watch.abort();
    exec.shutdown(cancel.is_urgent()).await;
    let event = outcome.ending(None);
    if let Ok(mut j) = j.lock() {
        j.append(event)?;
    }
    if let Some(reason) = outcome.aborted {
        return Err(ApplyError::Stopped { run: run.id.clone(), reason });
    }
    let report = (!outcome.interrupted).then(|| exec.report());
    let errors = outcome
        .errors
        .iter()
        .map(|(id, e)| format!("{} `{}`: {e}", plan.steps[*id].kind.name(), plan.step_label(&plan.steps[*id])))
        .chain(unit_errors)
        .collect();
    run.release();
    Ok(ApplyOutcome {
        run_id: run.id.clone(),
        run_dir: run.path.clone(),
        resumed,
        reused_steps,
        failed_cells: outcome.failed_cells,
        interrupted: outcome.interrupted,
        errors,
        report,
        detached: false,
        report_job: None,
    })
}
