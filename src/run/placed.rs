//! `kitt apply --executor processes`: the driver's half of a run whose units run elsewhere.
//!
//! The driver has created the run (plan.json, its `run_started` record) like a local run; here
//! it places every unit with something left to measure on an executor, waits for them all, and
//! then runs only the report step itself, over what the units committed. It starts no engine
//! and measures nothing, so it holds no host lease: each `kitt work` takes it as it measures.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::journal::{self, Event, Journal};
use super::steps::RunExecutor;
use super::{commit, reusable_keys, scheduler};
use crate::cancel::Cancel;
use crate::exec::state::{ExecutorState, Submitted};
use crate::exec::{self, ExecError, UnitExecutor, UnitState};
use crate::plan::{Plan, StepKind};

/// What the placed units did, and the report step's outcome (none when interrupted).
pub(super) struct Placed {
    pub outcome: scheduler::Outcome,
    /// Why units failed, one line each.
    pub unit_errors: Vec<String>,
}

/// The units with a measured step that is neither reused nor kept failed.
fn units_to_place(plan: &Plan, reusable: &HashSet<String>, kept_failed: &HashSet<String>) -> Vec<usize> {
    (0..plan.units.len())
        .filter(|u| {
            plan.units[*u].steps.iter().map(|s| &plan.steps[*s]).any(|s| {
                matches!(s.kind, StepKind::Benchmark | StepKind::Collect)
                    && !reusable.contains(&s.key)
                    && !kept_failed.contains(&s.key)
            })
        })
        .collect()
}

/// An executor whose every submission is recorded in the run's `executor.json` before it is
/// watched, so that a later driver can adopt it.
struct Recording<'a> {
    inner: &'a mut dyn UnitExecutor,
    state: ExecutorState,
    run_dir: &'a Path,
    /// Submitted units the executor has no external id for yet (it submits them in a batch
    /// later, such as Slurm's array job), with their attempt: recorded once it has.
    unrecorded: HashMap<String, u32>,
}

impl Recording<'_> {
    /// The attempt a submission made now will claim: the one after the newest (this driver is
    /// the only one placing the run's units while it holds the run lock). Read before submitting,
    /// as the unit may claim it at once.
    fn next_attempt(&self, unit: &str) -> u32 {
        let dir = self.run_dir.join("attempts").join(unit);
        super::lease::file::newest(&dir).map_or(0, |n| n + 1)
    }

    fn record(&mut self, unit: &str, attempt: u32) {
        let Some(external_id) = self.inner.external_id(unit) else {
            self.unrecorded.insert(unit.to_string(), attempt);
            return;
        };
        self.unrecorded.remove(unit);
        self.state
            .units
            .insert(unit.to_string(), Submitted { attempt, external_id, submitted_unix_ns: journal::unix_ns() });
        if let Err(e) = self.state.save(self.run_dir) {
            tracing::warn!("{e}; a later driver cannot adopt unit {unit}");
        }
    }
}

impl UnitExecutor for Recording<'_> {
    fn submit(&mut self, unit: &str) -> Result<(), ExecError> {
        let attempt = self.next_attempt(unit);
        self.inner.submit(unit)?;
        self.record(unit, attempt);
        Ok(())
    }

    fn submit_gang(&mut self, units: &[&str]) -> Result<(), ExecError> {
        let attempts: Vec<u32> = units.iter().map(|u| self.next_attempt(u)).collect();
        self.inner.submit_gang(units)?;
        for (u, a) in units.iter().zip(attempts) {
            self.record(u, a);
        }
        Ok(())
    }

    fn state(&mut self, unit: &str) -> UnitState {
        let state = self.inner.state(unit);
        if let Some(attempt) = self.unrecorded.get(unit).copied() {
            self.record(unit, attempt);
        }
        state
    }

    fn cancel(&mut self, unit: &str) {
        self.inner.cancel(unit)
    }

    fn abandon(&mut self, unit: &str, kill: bool) {
        self.inner.abandon(unit, kill)
    }

    fn external_id(&self, unit: &str) -> Option<String> {
        self.inner.external_id(unit)
    }

    fn adopt(&mut self, unit: &str, attempt: u32, external_id: &str) {
        self.inner.adopt(unit, attempt, external_id)
    }
}

/// Adopts the units of `todo` that an earlier driver submitted and that still run: they are
/// watched, not placed again (a second attempt would be refused while their claim is live).
fn adopt(plan: &Plan, todo: &[usize], recorded: &ExecutorState, units: &mut dyn UnitExecutor) -> Vec<(usize, u32)> {
    let mut adopted = Vec::new();
    for u in todo {
        let id = &plan.units[*u].id;
        let Some(sub) = recorded.units.get(id) else { continue };
        units.adopt(id, sub.attempt, &sub.external_id);
        match units.state(id) {
            UnitState::Running => {
                tracing::info!("unit {id}: attempt {} still runs; adopted", sub.attempt);
                adopted.push((*u, sub.attempt));
            }
            // Ended while no driver watched: what it committed counts, the rest is placed again.
            state => tracing::info!("unit {id}: attempt {} ended while undriven ({state:?})", sub.attempt),
        }
    }
    adopted
}

/// `kitt apply --detach` on Slurm: submits every unit with something left to measure as one
/// array job (adopting those an earlier submission left queued or running), and a report job that
/// runs after all of them and drives what is left (`kitt runs follow`). The report job's id and
/// how many units were submitted.
pub(super) fn submit_detached(
    plan: &Plan,
    run_dir: &Path,
    slurm: &mut crate::exec::slurm::Slurm,
    recorded: ExecutorState,
    reusable: &HashSet<String>,
    kept_failed: &HashSet<String>,
) -> Result<(String, usize), ExecError> {
    let todo = units_to_place(plan, reusable, kept_failed);
    let adopted: HashSet<usize> = adopt(plan, &todo, &recorded, slurm).into_iter().map(|(u, _)| u).collect();
    let submit: Vec<&str> = todo.iter().filter(|u| !adopted.contains(u)).map(|u| plan.units[*u].id.as_str()).collect();
    let mut units = Recording { inner: slurm, state: recorded, run_dir, unrecorded: HashMap::new() };
    if !submit.is_empty() {
        units.submit_gang(&submit)?;
    }
    let job = slurm.submit_report_job()?;
    slurm.detach();
    Ok((job, submit.len()))
}

/// Places the units with something left to measure, adopting those an earlier driver left
/// running (`recorded`), and runs the report over what they committed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    plan: &Plan,
    run_dir: &Path,
    units: &mut dyn UnitExecutor,
    leases: &mut dyn exec::Leases,
    recorded: ExecutorState,
    place: exec::PlaceOptions,
    exec: Arc<RunExecutor>,
    reusable: &HashSet<String>,
    mut opts: scheduler::Options,
    j: Arc<Mutex<Journal>>,
    cancel: &Cancel,
) -> Placed {
    let todo = units_to_place(plan, reusable, &opts.kept_failed);
    let mut unit_errors = Vec::new();
    let adopted = adopt(plan, &todo, &recorded, units);
    let mut units = Recording { inner: units, state: recorded, run_dir, unrecorded: HashMap::new() };
    let placed = exec::place(plan, &todo, &adopted, &mut units, leases, place, cancel).await;
    let interrupted = match placed {
        Ok(p) => {
            for (unit, state) in &p.ended {
                if let UnitState::Failed(why) = state {
                    unit_errors.push(format!("unit {unit}: {why}"));
                }
            }
            p.interrupted
        }
        Err(e) => {
            unit_errors.push(e.to_string());
            cancel.is_cancelled()
        }
    };
    let empty = |interrupted| scheduler::Outcome {
        states: Vec::new(),
        failed_cells: 0,
        interrupted,
        errors: Vec::new(),
        aborted: None,
    };
    if interrupted {
        return Placed { outcome: empty(true), unit_errors };
    }
    // What the units committed, journaled or not.
    let mut finished: HashSet<String> = match journal::read_run(run_dir) {
        Ok(records) => records
            .iter()
            .filter_map(|r| match &r.event {
                Event::StepFinished { key, kind: StepKind::Benchmark | StepKind::Collect, .. } => Some(key.clone()),
                _ => None,
            })
            .collect(),
        Err(e) => {
            unit_errors.push(e.to_string());
            return Placed { outcome: empty(false), unit_errors };
        }
    };
    finished.extend(commit::committed_keys(plan, run_dir));
    let now_reusable = reusable_keys(plan, &finished);
    let unmeasured = todo
        .iter()
        .flat_map(|u| plan.units[*u].steps.iter().map(|s| &plan.steps[*s]))
        .filter(|s| s.kind == StepKind::Benchmark && !now_reusable.contains(&s.key))
        .count();
    opts.only = Some(plan.steps.iter().filter(|s| s.kind == StepKind::Report).map(|s| s.id).collect());
    let mut outcome = scheduler::run(plan, exec, &now_reusable, &opts, j, cancel).await;
    outcome.failed_cells += unmeasured;
    Placed { outcome, unit_errors }
}
