//! The scheduler: runs the steps of a plan as their dependencies finish.
//!
//! It owns ordering and policy — `max_parallel`, engine and host leases, per-step timeouts,
//! retries, the failure policy, cancellation and reuse of finished steps — and journals every
//! transition; *what* a step does is the `Executor`'s business, so the scheduler can be tested
//! and benchmarked over no-op steps. Readiness is tracked with dependency counters, so a step
//! costs O(its edges), not a scan of the plan.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::task::JoinSet;

use super::hostlock::{HostLease, LeaseHold, MeasuringHold};
use super::journal::{Event, Journal};
use crate::cancel::Cancel;
use crate::manifest::suite::{Isolation, OnFailure};
use crate::plan::{Plan, StepKind};

pub type StepFuture = Pin<Box<dyn Future<Output = Result<Json, StepError>> + Send>>;

/// A failed step attempt.
#[derive(Debug, Clone)]
pub struct StepError {
    pub message: String,
    /// Interrupted by cancellation (not a failure of the step itself).
    pub cancelled: bool,
    /// The run must stop here and stay resumable (observed facts drifted).
    pub abort: bool,
    /// How it failed, where it says more than "failed": `truncated` (cut by `step_timeout`).
    pub status: Option<&'static str>,
}

impl StepError {
    pub fn new(message: impl Into<String>) -> StepError {
        StepError { message: message.into(), cancelled: false, abort: false, status: None }
    }

    pub fn cancelled() -> StepError {
        StepError { message: "interrupted".into(), cancelled: true, abort: false, status: None }
    }

    /// A benchmark cut by its `step_timeout`: failed, its partial records kept apart.
    pub fn truncated(message: impl Into<String>) -> StepError {
        StepError { message: message.into(), cancelled: false, abort: false, status: Some("truncated") }
    }

    /// Stops the whole run, leaving it unfinished (and so resumable).
    pub fn abort(message: impl Into<String>) -> StepError {
        StepError { message: message.into(), cancelled: false, abort: true, status: None }
    }
}

/// What a step does; implemented by the real runner and by test doubles.
pub trait Executor: Send + Sync + 'static {
    /// Runs one attempt of `step`.
    fn run(self: Arc<Self>, step: usize, attempt: u32, cancel: Cancel) -> StepFuture;
    /// Restarts the engine `step` measures on before a retry of it (templates with
    /// `restart_on_retry`).
    fn restart(self: Arc<Self>, step: usize, cancel: Cancel) -> StepFuture;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Running,
    Done,
    /// Finished in an earlier attempt of this run; not run again.
    Reused,
    Failed,
    Skipped,
}

impl State {
    fn terminal(self) -> bool {
        !matches!(self, State::Pending | State::Running)
    }
}

pub struct Options {
    pub max_parallel: usize,
    pub retries: u32,
    pub step_timeout: Duration,
    pub on_failure: OnFailure,
    pub isolation: Isolation,
    /// Path of the machine-wide lock (`isolation: host`).
    pub host_lock: PathBuf,
    /// Written into the host lock while this run holds it.
    pub holder: String,
    /// Cell keys (benchmark and collect) that failed in an earlier attempt of this run and are
    /// not run again (`--rerun-failed` empties it): they stay failed.
    pub kept_failed: HashSet<String>,
    /// Run only these steps (one unit, for `kitt work`); every other step is left alone, neither
    /// run nor journaled. `None` runs the whole plan.
    pub only: Option<HashSet<usize>>,
}

/// Why a step was skipped when `on_failure: stop` stopped the run.
pub(crate) const STOPPED_BY_POLICY: &str = "on_failure: stop after a failed step";

/// The message of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

pub struct Outcome {
    pub states: Vec<State>,
    pub failed_cells: usize,
    pub interrupted: bool,
    pub errors: Vec<(usize, String)>,
    /// Why the run stopped early and stays resumable (a step asked to abort).
    pub aborted: Option<String>,
}

impl Outcome {
    /// The journal record that ends a run (or one attempt's shard): stopped, with `stopped` or
    /// the abort's reason; interrupted; or finished, ok when no cell or step failed.
    pub fn ending(&self, stopped: Option<String>) -> Event {
        if let Some(reason) = stopped.or_else(|| self.aborted.clone()) {
            Event::RunStopped { reason }
        } else if self.interrupted {
            Event::RunInterrupted { signal: "SIGINT/SIGTERM".into() }
        } else {
            Event::RunFinished { ok: self.failed_cells == 0 && self.errors.is_empty(), failed_cells: self.failed_cells }
        }
    }
}

type Shared = Arc<Mutex<Journal>>;

fn journal(j: &Shared, event: Event) {
    // A journal write error leaves the run unresumable; say so loudly but keep cleaning up.
    match j.lock() {
        Ok(mut j) => {
            if let Err(e) = j.append(event) {
                tracing::error!("{e}");
            }
        }
        Err(_) => tracing::error!("journal lock poisoned"),
    }
}

/// Runs `plan` to the end (or until cancelled). `reused` holds the keys finished earlier.
pub async fn run<E: Executor>(
    plan: &Plan,
    exec: Arc<E>,
    reused: &HashSet<String>,
    opts: &Options,
    j: Shared,
    cancel: &Cancel,
) -> Outcome {
    let n = plan.steps.len();
    let mut state = vec![State::Pending; n];
    let mut remaining: Vec<usize> = plan.steps.iter().map(|s| s.deps.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for s in &plan.steps {
        for d in &s.deps {
            dependents[*d].push(s.id);
        }
    }
    // Reuse: finished cells stay finished; engines with nothing left to run are not started.
    for s in &plan.steps {
        if matches!(s.kind, StepKind::Benchmark | StepKind::Collect) && reused.contains(&s.key) {
            state[s.id] = State::Reused;
        } else if matches!(s.kind, StepKind::Benchmark | StepKind::Collect) && opts.kept_failed.contains(&s.key) {
            state[s.id] = State::Failed;
        }
    }
    // Skipped because there was nothing to do (as opposed to because something failed).
    let mut harmless = vec![false; n];
    if let Some(only) = &opts.only {
        for id in (0..n).filter(|id| !only.contains(id)) {
            state[id] = State::Skipped;
            harmless[id] = true;
        }
    }
    // Engines are per unit (an engine group, or one cell with `granularity: cell`): a unit's
    // lifecycle runs only while one of its cells is still to run.
    let unit_of = plan.unit_of_steps();
    let mut needed = vec![false; plan.units.len()];
    for s in &plan.steps {
        if let (Some(u), true) = (unit_of[s.id], matches!(s.kind, StepKind::Benchmark | StepKind::Collect)) {
            needed[u] |= !state[s.id].terminal();
        }
    }
    for s in &plan.steps {
        let lifecycle = matches!(
            s.kind,
            StepKind::Pull | StepKind::Start | StepKind::Connect | StepKind::Setup | StepKind::Warmup | StepKind::Stop
        );
        if let (Some(u), true) = (unit_of[s.id], lifecycle)
            && !needed[u]
        {
            state[s.id] = State::Skipped;
            harmless[s.id] = true;
        }
    }
    let mut ready: BTreeSet<usize> = BTreeSet::new();
    let settle = |id: usize, remaining: &mut Vec<usize>, ready: &mut BTreeSet<usize>, state: &Vec<State>| {
        for &d in &dependents[id] {
            remaining[d] -= 1;
            if remaining[d] == 0 && state[d] == State::Pending {
                ready.insert(d);
            }
        }
    };
    for id in 0..n {
        if state[id].terminal() {
            settle(id, &mut remaining, &mut ready, &state);
        }
    }
    for id in 0..n {
        if state[id] == State::Pending && remaining[id] == 0 {
            ready.insert(id);
        }
    }

    let mut engine_busy = vec![false; plan.units.len()];
    let mut attempts = vec![0u32; n];
    let mut stop_new_cells = false;
    // Skipped because `on_failure: stop` stopped the run (not because something failed).
    let mut by_policy = vec![false; n];
    let mut errors = Vec::new();
    let mut tasks: JoinSet<(usize, u32, Result<Json, StepError>, Held)> = JoinSet::new();
    // With host isolation a unit holds the host lease from its engine's start to its stop, so no
    // kitt loads a model while another measures; measuring steps take it too (endpoint groups
    // have no start). Holds are released only after the step's end is journaled, so journal
    // windows never overlap across kitt processes.
    let lease = HostLease::new(opts.host_lock.clone(), opts.holder.clone());
    let mut group_holds: Vec<Option<LeaseHold>> = (0..plan.units.len()).map(|_| None).collect();
    let mut running = 0usize;
    let mut abandoned = false;
    let mut aborted: Option<String> = None;

    loop {
        // On cancel: nothing new starts except engine stops; pending steps are abandoned (they
        // stay un-journaled, so a resume runs them).
        if cancel.is_cancelled() && !abandoned {
            abandoned = true;
            for id in 0..n {
                if state[id] == State::Pending && plan.steps[id].kind != StepKind::Stop {
                    state[id] = State::Skipped;
                    ready.remove(&id);
                    settle(id, &mut remaining, &mut ready, &state);
                }
            }
        }
        // Start what can start.
        let candidates: Vec<usize> = ready.iter().copied().collect();
        let mut progressed = false;
        for id in candidates {
            if running >= opts.max_parallel {
                break;
            }
            let step = &plan.steps[id];
            // Cleanup (stop) never blocks what follows it; anything else must have succeeded.
            let deps_ok = step.deps.iter().all(|d| {
                matches!(state[*d], State::Done | State::Reused)
                    || harmless[*d]
                    || plan.steps[*d].kind == StepKind::Stop
            });
            let skip_reason = match step.kind {
                StepKind::Stop => {
                    // Cleanup: stop exactly the engines that started.
                    let started =
                        step.deps.iter().any(|d| plan.steps[*d].kind == StepKind::Start && state[*d] == State::Done);
                    (!started).then(|| "its engine did not start".to_string())
                }
                StepKind::Report => cancel.is_cancelled().then(|| "interrupted".to_string()),
                _ if cancel.is_cancelled() => Some("interrupted".to_string()),
                _ if !deps_ok => {
                    let failed = step
                        .deps
                        .iter()
                        .find(|d| {
                            matches!(state[**d], State::Failed | State::Skipped) && !harmless[**d] && !by_policy[**d]
                        })
                        .copied();
                    Some(match failed {
                        Some(d) => format!(
                            "{} `{}` did not succeed",
                            plan.steps[d].kind.name(),
                            plan.step_label(&plan.steps[d])
                        ),
                        // Only skipped by the policy: skipped by it too, not failed.
                        None if step.deps.iter().any(|d| by_policy[*d]) => STOPPED_BY_POLICY.to_string(),
                        None => "a dependency did not succeed".to_string(),
                    })
                }
                // After what it needs failed (a failed cell), before the policy (a skipped one).
                _ if stop_new_cells => Some(STOPPED_BY_POLICY.to_string()),
                _ => None,
            };
            if let Some(reason) = skip_reason {
                ready.remove(&id);
                by_policy[id] = reason == STOPPED_BY_POLICY;
                let cell_step = matches!(step.kind, StepKind::Benchmark | StepKind::Collect);
                // A cell that cannot run because something failed is a failed cell.
                state[id] = if cell_step && !cancel.is_cancelled() && reason != STOPPED_BY_POLICY {
                    State::Failed
                } else {
                    State::Skipped
                };
                if !(cancel.is_cancelled() && step.kind != StepKind::Stop) {
                    journal(&j, Event::StepSkipped { step: id, key: step.key.clone(), kind: step.kind, reason });
                }
                settle(id, &mut remaining, &mut ready, &state);
                progressed = true;
                continue;
            }
            let measures = step.kind.measures();
            let group = step.group;
            if measures
                && step.lease.engine
                && let Some(u) = unit_of[id]
            {
                if engine_busy[u] {
                    continue;
                }
                engine_busy[u] = true;
            }
            ready.remove(&id);
            state[id] = State::Running;
            running += 1;
            let attempt = attempts[id];
            let exec = exec.clone();
            let c = cancel.clone();
            let jj = j.clone();
            let key = step.key.clone();
            let kind = step.kind;
            let label = plan.step_label(step);
            let host = (measures && step.lease.host && opts.isolation == Isolation::Host).then(|| lease.clone());
            let group_lease =
                (step.kind == StepKind::Start && opts.isolation == Isolation::Host).then(|| lease.clone());
            let timeout = opts.step_timeout;
            let restart = attempt > 0 && measures && group.is_some_and(|g| plan.groups[g].restart_on_retry);
            let span = tracing::info_span!("step", kind = kind.name(), key = %key, label = %label, attempt);
            let body = async move {
                if restart && let Err(e) = exec.clone().restart(id, c.clone()).await {
                    return (
                        id,
                        attempt,
                        Err(StepError::new(format!("restarting the engine before the retry failed: {}", e.message))),
                        Held::default(),
                    );
                }
                // The host lease is taken before the step is journaled as started.
                let mut held = Held::default();
                if let Some(lease) = host {
                    match lease.measure(&c).await {
                        Ok(h) => held.measuring = Some(h),
                        Err(e) => return (id, attempt, Err(e), held),
                    }
                }
                if let Some(lease) = group_lease {
                    match lease.hold(&c).await {
                        Ok(h) => held.group = Some(h),
                        Err(e) => return (id, attempt, Err(e), held),
                    }
                }
                journal(&jj, Event::StepStarted { step: id, key, kind, attempt, label });
                let fut = exec.run(id, attempt, c.clone());
                let result = tokio::select! {
                    r = tokio::time::timeout(timeout, fut) => match r {
                        Ok(r) => r,
                        Err(_) => Err(StepError::new(format!("timed out after {}", humantime::format_duration(timeout)))),
                    },
                    // Cleanup steps (stop) finish even when cancelled; measuring steps stop at once.
                    _ = c.cancelled(), if kind != StepKind::Stop => Err(StepError::cancelled()),
                };
                tracing::debug!(ok = result.is_ok(), "step ended");
                (id, attempt, result, held)
            };
            // A panicking step is a failed step like any other: journaled with its message, so
            // the run ends failed and stays resumable (never "running" forever). What it held is
            // released as it unwinds.
            let caught = async move {
                use futures_util::FutureExt as _;
                match std::panic::AssertUnwindSafe(body).catch_unwind().await {
                    Ok(r) => r,
                    Err(payload) => (
                        id,
                        attempt,
                        Err(StepError::new(format!("panicked: {}", panic_message(&*payload)))),
                        Held::default(),
                    ),
                }
            };
            tasks.spawn(tracing::Instrument::instrument(caught, span));
        }

        if running == 0 {
            if ready.is_empty() {
                break;
            }
            if progressed {
                continue;
            }
            // Only lease-blocked steps remain ready and nothing runs: impossible by construction
            // (leases are released when steps end), but never spin.
            if !cancel.is_cancelled() {
                tracing::error!("scheduler stalled with {} ready steps", ready.len());
            }
            break;
        }

        let joined = tokio::select! {
            r = tasks.join_next() => r,
            _ = cancel.cancelled(), if !abandoned => continue,
        };
        let Some(joined) = joined else { continue };
        running -= 1;
        let (id, attempt, result, held) = match joined {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("a step task panicked: {e}");
                continue;
            }
        };
        let step = &plan.steps[id];
        if step.kind.measures()
            && step.lease.engine
            && let Some(u) = unit_of[id]
        {
            engine_busy[u] = false;
        }
        match result {
            Ok(outputs) => {
                state[id] = State::Done;
                journal(&j, Event::StepFinished { step: id, key: step.key.clone(), kind: step.kind, attempt, outputs });
                if let (Some(u), Some(hold)) = (unit_of[id], held.group) {
                    group_holds[u] = Some(hold); // kept until the unit's stop is journaled
                }
                settle(id, &mut remaining, &mut ready, &state);
            }
            Err(e) if e.abort => {
                // Nothing of this step is journaled as failed: the run stays resumable.
                state[id] = State::Skipped;
                aborted.get_or_insert(e.message);
                cancel.cancel();
                settle(id, &mut remaining, &mut ready, &state);
            }
            Err(e) if e.cancelled => {
                // Not journaled as failed: an interrupted step simply has not finished.
                state[id] = State::Skipped;
                settle(id, &mut remaining, &mut ready, &state);
            }
            Err(e) => {
                let retryable = !matches!(step.kind, StepKind::Stop | StepKind::Report);
                let will_retry = retryable && attempt < opts.retries && !cancel.is_cancelled();
                journal(
                    &j,
                    Event::StepFailed {
                        step: id,
                        key: step.key.clone(),
                        kind: step.kind,
                        attempt,
                        error: e.message.clone(),
                        will_retry,
                        status: e.status.map(String::from),
                    },
                );
                if will_retry {
                    tracing::warn!(
                        "{} `{}` failed (attempt {}), retrying: {}",
                        step.kind.name(),
                        plan.step_label(step),
                        attempt + 1,
                        e.message
                    );
                    attempts[id] += 1;
                    state[id] = State::Pending;
                    ready.insert(id);
                } else {
                    state[id] = State::Failed;
                    errors.push((id, e.message));
                    // Every failing step counts (start, warmup, setup, a cell…), not only cells.
                    if opts.on_failure == OnFailure::Stop {
                        stop_new_cells = true;
                    }
                    settle(id, &mut remaining, &mut ready, &state);
                }
            }
        }
        if step.kind == StepKind::Stop
            && let Some(u) = unit_of[id]
        {
            group_holds[u] = None; // however the stop ended, the engine is no longer ours to keep
        }
    }
    let failed_cells =
        plan.steps.iter().filter(|s| s.kind == StepKind::Benchmark && state[s.id] == State::Failed).count();
    let interrupted = cancel.is_cancelled() && aborted.is_none();
    Outcome { states: state, failed_cells, interrupted, errors, aborted }
}

/// The lease holds a step's task hands back, dropped once its end is journaled.
#[derive(Default)]
struct Held {
    measuring: Option<MeasuringHold>,
    group: Option<LeaseHold>,
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
