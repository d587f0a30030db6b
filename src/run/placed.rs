//! `kitt apply --executor processes`: the driver's half of a run whose units run elsewhere.
//!
//! The driver has created the run (plan.json, its `run_started` record) like a local run; here
//! it places every unit with something left to measure on an executor, waits for them all, and
//! then runs only the report step itself, over what the units committed. It starts no engine
//! and measures nothing, so it holds no host lease: each `kitt work` takes it as it measures.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::journal::{self, Event, Journal};
use super::steps::RunExecutor;
use super::{commit, reusable_keys, scheduler};
use crate::cancel::Cancel;
use crate::exec::{self, UnitExecutor, UnitState};
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

#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    plan: &Plan,
    run_dir: &Path,
    units: &mut dyn UnitExecutor,
    place: exec::PlaceOptions,
    exec: Arc<RunExecutor>,
    reusable: &HashSet<String>,
    mut opts: scheduler::Options,
    j: Arc<Mutex<Journal>>,
    cancel: &Cancel,
) -> Placed {
    let todo = units_to_place(plan, reusable, &opts.kept_failed);
    let mut unit_errors = Vec::new();
    let mut leases = exec::leases::LeaseWatches::new(run_dir, super::lease::LeaseConfig::from_env().lease);
    let placed = exec::place(plan, &todo, units, &mut leases, place, cancel).await;
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
