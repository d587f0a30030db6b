//! Executors: where the units of a run are placed.
//!
//! A run directory is the one truth (`run/`); an executor only starts `kitt work` for units,
//! watches them end and stops them. It never reads or writes results: every unit commits its
//! own measured steps, and the driver reads the commits afterwards. So an executor can die and a
//! resume (any executor) finds what its units committed.
//!
//! `local` is the in-process scheduler `kitt apply` always had (no `UnitExecutor`: one process
//! runs the whole plan, engines and all). `processes` runs each unit as a child `kitt work`,
//! at most `--workers` at once. `executor` and `workers` are placement, never part of a step's
//! key: the same suite measured either way reuses the same steps.
//!
//! A placed unit whose attempt is lost (its process died, or its lease expired because it was
//! stopped or hung) is placed again as a new attempt, up to `max_attempts`: the new attempt runs
//! only what no earlier one committed.

pub mod agents;
pub mod leases;
pub mod processes;
pub mod slurm;
pub mod state;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::cancel::Cancel;
use crate::plan::Plan;

/// How `kitt apply` runs the units of a plan (`execution.executor`, or `--executor`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// This process runs every step (the scheduler, in process).
    #[default]
    Local,
    /// Each unit is a child `kitt work` process, at most `--workers` at once.
    Processes,
    /// Each unit is a task of a Slurm array job (`execution.slurm`), on whatever node Slurm
    /// gives it; the run lives under `execution.slurm.shared_dir`.
    Slurm,
    /// Each unit is pulled by a `kitt agent` host from the `kitt serve` over the runs directory
    /// (`execution.agents` says which agents may take it).
    Agents,
}

/// The state of a submitted unit, as its executor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitState {
    Running,
    /// Ended with everything committed.
    Succeeded,
    /// Ended with a failure (`kitt work`'s exit code and what it means).
    Failed(String),
    /// Ended because it was cancelled.
    Cancelled,
    /// Ended without finishing or failing a step: its process died, or was stopped because its
    /// lease expired. Placed again while attempts are left.
    Lost(String),
}

impl UnitState {
    pub fn ended(&self) -> bool {
        !matches!(self, UnitState::Running)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start unit {unit}: {reason}")]
    Submit { unit: String, reason: String },
}

/// Places units of one run and watches them. Implementations own what they started: dropping
/// one stops every unit still running.
pub trait UnitExecutor {
    /// Starts one unit.
    fn submit(&mut self, unit: &str) -> Result<(), ExecError>;
    /// Starts all of `units` or none: if one cannot start, those already started are cancelled
    /// and waited for before the error returns.
    fn submit_gang(&mut self, units: &[&str]) -> Result<(), ExecError>;
    /// The state of a submitted unit now (never blocks).
    fn state(&mut self, unit: &str) -> UnitState;
    /// Asks a submitted unit to stop (it stops its engine); asked again, to stop now.
    fn cancel(&mut self, unit: &str);
    /// Stops a unit whose attempt expired: asks it to stop (`kill: false`), or kills it and all
    /// its process group (`kill: true`, for one that did not stop, e.g. a stopped process). It
    /// then ends [`UnitState::Lost`].
    fn abandon(&mut self, unit: &str, kill: bool);
    /// What names the unit's submission outside this process (a process's identity, a batch
    /// job's id), persisted in the run directory so that another driver can adopt it.
    fn external_id(&self, unit: &str) -> Option<String>;
    /// Watches a unit that an earlier driver submitted as `external_id` (from
    /// [`UnitExecutor::external_id`]) as if this executor had submitted it; its `state`, `cancel`
    /// and `abandon` then work as for its own.
    fn adopt(&mut self, unit: &str, attempt: u32, external_id: &str);
}

/// Watches the leases of placed units' attempts.
pub trait Leases {
    /// `unit` was placed (again): watch its new attempt.
    fn placed(&mut self, unit: &str);
    /// `unit`'s running attempt `attempt` was placed by an earlier driver: watch it.
    fn adopted(&mut self, unit: &str, attempt: u32);
    /// Whether the unit's running attempt expired (and if so marks it expired, so that its
    /// claim no longer holds the unit).
    fn expired(&mut self, unit: &str) -> bool;
}

/// How units are placed.
#[derive(Debug, Clone, Copy)]
pub struct PlaceOptions {
    /// At most this many units at once.
    pub workers: usize,
    /// At most this many attempts of one unit (placed again while its attempts are lost).
    pub max_attempts: u32,
    /// How long an expired attempt is given to stop before its process group is killed.
    pub grace: Duration,
    /// Units never wait for one another: each gets a machine of its own (a Slurm node with
    /// `--exclusive` under `isolation: host`), so the order `isolation: host` puts between
    /// units on one host does not hold between them.
    pub independent: bool,
}

/// How the placed units ended.
pub struct Placed {
    /// Unit id and how it ended, in the order they ended.
    pub ended: Vec<(String, UnitState)>,
    pub interrupted: bool,
}

/// The units each unit waits for: those holding a step one of its steps depends on.
fn unit_deps(plan: &Plan) -> Vec<HashSet<usize>> {
    let unit_of = plan.unit_of_steps();
    plan.units
        .iter()
        .enumerate()
        .map(|(ui, u)| {
            u.steps
                .iter()
                .flat_map(|s| plan.steps[*s].deps.iter())
                .filter_map(|d| unit_of[*d])
                .filter(|d| *d != ui)
                .collect()
        })
        .collect()
}

/// Places the units `todo` (indices into `plan.units`) on `exec`, at most `workers` at once and
/// each only after the units it depends on ended, until all ended or `cancel`: then every
/// running unit is cancelled (again when `cancel` turns urgent) and waited for. A unit whose
/// lease expires is abandoned; a lost unit is placed again while it has attempts left.
///
/// `adopted` are units an earlier driver placed that still run, with their attempt number: they
/// were adopted by `exec` already and count as running (and as `attempt + 1` attempts made).
#[allow(clippy::too_many_arguments)]
pub async fn place(
    plan: &Plan,
    todo: &[usize],
    adopted: &[(usize, u32)],
    exec: &mut dyn UnitExecutor,
    leases: &mut dyn Leases,
    opts: PlaceOptions,
    cancel: &Cancel,
) -> Result<Placed, ExecError> {
    let workers = opts.workers;
    let deps = if opts.independent { vec![HashSet::new(); plan.units.len()] } else { unit_deps(plan) };
    let mut pending: BTreeSet<usize> = todo.iter().copied().collect();
    let mut running: Vec<usize> = Vec::new();
    let mut attempts: HashMap<usize, u32> = HashMap::new();
    for (u, attempt) in adopted {
        pending.remove(u);
        running.push(*u);
        attempts.insert(*u, attempt + 1);
        leases.adopted(&plan.units[*u].id, *attempt);
    }
    let mut done: HashSet<usize> =
        (0..plan.units.len()).filter(|u| !pending.contains(u) && !running.contains(u)).collect();
    let mut ended = Vec::new();
    let mut cancelled_level = 0;
    // Units abandoned for an expired lease: when, and whether they were killed yet.
    let mut abandoned: HashMap<usize, (Instant, bool)> = HashMap::new();
    let tick = Duration::from_millis(20);
    while !running.is_empty() || (!pending.is_empty() && !cancel.is_cancelled()) {
        let level = if cancel.is_urgent() { 2 } else { u8::from(cancel.is_cancelled()) };
        if level > cancelled_level {
            cancelled_level = level;
            for u in &running {
                exec.cancel(&plan.units[*u].id);
            }
        }
        if !cancel.is_cancelled() {
            let ready: Vec<usize> =
                pending.iter().copied().filter(|u| deps[*u].iter().all(|d| done.contains(d))).collect();
            for u in ready.into_iter().take(workers.max(1).saturating_sub(running.len())) {
                pending.remove(&u);
                *attempts.entry(u).or_default() += 1;
                leases.placed(&plan.units[u].id);
                if let Err(e) = exec.submit(&plan.units[u].id) {
                    // What runs is stopped before the error is returned: nothing is left behind.
                    for r in &running {
                        exec.cancel(&plan.units[*r].id);
                    }
                    while running.iter().any(|r| !exec.state(&plan.units[*r].id).ended()) {
                        tokio::time::sleep(tick).await;
                    }
                    return Err(e);
                }
                running.push(u);
            }
        }
        if running.is_empty() {
            // Nothing runs and nothing became ready: what is left waits on nothing that can end.
            break;
        }
        let mut still = Vec::new();
        for u in running.drain(..) {
            let id = &plan.units[u].id;
            match exec.state(id) {
                UnitState::Running => {
                    match abandoned.get_mut(&u) {
                        // Watched while cancelling too: a stopped child would never end on SIGTERM.
                        None if leases.expired(id) => {
                            tracing::warn!("unit {id}: its attempt's lease expired; stopping it");
                            exec.abandon(id, false);
                            abandoned.insert(u, (Instant::now(), false));
                        }
                        Some((since, killed)) if !*killed && since.elapsed() >= opts.grace => {
                            tracing::warn!("unit {id}: its expired attempt did not stop; killing it");
                            exec.abandon(id, true);
                            *killed = true;
                        }
                        _ => {}
                    }
                    still.push(u);
                }
                state => {
                    let was_abandoned = abandoned.remove(&u).is_some();
                    let lost = match &state {
                        UnitState::Lost(why) => Some(why.clone()),
                        UnitState::Succeeded => None,
                        _ if was_abandoned => Some("its lease expired".to_string()),
                        _ => None,
                    };
                    let n = attempts.get(&u).copied().unwrap_or(0);
                    match lost {
                        Some(_) if cancel.is_cancelled() => {
                            done.insert(u);
                            ended.push((id.clone(), UnitState::Cancelled));
                        }
                        Some(why) if n < opts.max_attempts.max(1) => {
                            tracing::warn!(
                                "unit {id}: lost ({why}); placing it again ({} of {})",
                                n + 1,
                                opts.max_attempts
                            );
                            pending.insert(u);
                        }
                        Some(why) => {
                            done.insert(u);
                            let why = format!("{why}; gave up after {n} attempt(s) (--max-attempts)");
                            ended.push((id.clone(), UnitState::Failed(why)));
                        }
                        None => {
                            done.insert(u);
                            ended.push((id.clone(), state));
                        }
                    }
                }
            }
        }
        running = still;
        if !running.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = cancel.cancelled(), if cancelled_level == 0 => {}
            }
        }
    }
    Ok(Placed { ended, interrupted: cancel.is_cancelled() })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Units that run for `polls` state queries, then succeed; cancelled ones end cancelled.
    #[derive(Default)]
    struct Counted {
        polls: u32,
        left: HashMap<String, u32>,
        submitted: Vec<String>,
        cancelled: Vec<String>,
        most_at_once: usize,
        /// Cancelled at this many submits (a Ctrl-C while units run).
        cancel_at: Option<(usize, Cancel)>,
        /// Each of these units' attempts is lost this many times before one runs.
        lose: HashMap<String, u32>,
        /// Abandoned units, and whether with a kill.
        abandoned: Vec<(String, bool)>,
        abandon_log: Vec<(String, bool)>,
        /// Stopped units (SIGSTOP): a cancel does not end them, only a kill.
        stopped: HashSet<String>,
    }

    /// Leases that never expire, or expire once per unit in `expire_once` (after `polls` polls).
    #[derive(Default)]
    struct Watched {
        expire_once: HashSet<String>,
        polls: u32,
        placed: Vec<String>,
    }

    impl Leases for Watched {
        fn placed(&mut self, unit: &str) {
            self.placed.push(unit.into());
        }

        fn adopted(&mut self, unit: &str, attempt: u32) {
            self.placed.push(format!("{unit}@{attempt}"));
        }

        fn expired(&mut self, unit: &str) -> bool {
            if self.expire_once.contains(unit) && self.polls > 0 {
                self.polls -= 1;
                return false;
            }
            self.expire_once.remove(unit)
        }
    }

    fn opts(workers: usize) -> PlaceOptions {
        PlaceOptions { workers, max_attempts: 3, grace: Duration::ZERO, independent: false }
    }

    impl UnitExecutor for Counted {
        fn submit(&mut self, unit: &str) -> Result<(), ExecError> {
            self.left.insert(unit.into(), self.polls);
            self.submitted.push(unit.into());
            let running = self.left.values().filter(|n| **n > 0).count();
            self.most_at_once = self.most_at_once.max(running);
            if let Some((n, c)) = &self.cancel_at
                && self.submitted.len() == *n
            {
                c.cancel();
            }
            Ok(())
        }

        fn submit_gang(&mut self, units: &[&str]) -> Result<(), ExecError> {
            units.iter().try_for_each(|u| self.submit(u))
        }

        fn state(&mut self, unit: &str) -> UnitState {
            if self.cancelled.iter().any(|c| c == unit) {
                return UnitState::Cancelled;
            }
            if self.abandoned.iter().any(|(u, kill)| u == unit && *kill) && self.left.get(unit) != Some(&0) {
                self.left.insert(unit.into(), 0);
                self.abandoned.retain(|(u, _)| u != unit);
                return UnitState::Lost("killed".into());
            }
            if let Some(n) = self.lose.get_mut(unit)
                && *n > 0
            {
                *n -= 1;
                return UnitState::Lost("died".into());
            }
            match self.left.get_mut(unit) {
                Some(0) => UnitState::Succeeded,
                Some(n) => {
                    *n -= 1;
                    UnitState::Running
                }
                None => UnitState::Failed("never submitted".into()),
            }
        }

        fn cancel(&mut self, unit: &str) {
            if !self.stopped.contains(unit) {
                self.cancelled.push(unit.into());
            }
        }

        /// An abandoned unit keeps running (it is stopped) until it is killed.
        fn abandon(&mut self, unit: &str, kill: bool) {
            self.abandoned.push((unit.into(), kill));
            self.abandon_log.push((unit.into(), kill));
            if kill {
                self.left.insert(unit.into(), 1);
            }
        }

        fn external_id(&self, unit: &str) -> Option<String> {
            self.left.contains_key(unit).then(|| format!("fake:{unit}"))
        }

        fn adopt(&mut self, unit: &str, _attempt: u32, external_id: &str) {
            assert_eq!(external_id, format!("fake:{unit}"));
            self.left.insert(unit.into(), self.polls);
        }
    }

    fn plan(cells: &str, isolation: &str) -> Plan {
        let dir = tempfile::tempdir().unwrap();
        let suite = dir.path().join("s.yaml");
        let yaml = format!(
            "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: s}}\nspec:\n  models: [{{name: m}}]\n  engines: [{{name: a, template: sim}}]\n  benchmarks: [{{name: t, template: throughput, params: {{concurrency: [{cells}]}}}}]\n  execution: {{granularity: cell, isolation: {isolation}}}\n"
        );
        std::fs::write(&suite, yaml).unwrap();
        crate::plan::compile::compile_file(&suite).unwrap()
    }

    #[tokio::test]
    async fn every_unit_is_placed_once_and_never_more_than_workers_at_once() {
        let plan = plan("1, 2, 3, 4, 5", "engine");
        assert_eq!(plan.units.len(), 5);
        let mut exec = Counted { polls: 3, ..Default::default() };
        let all: Vec<usize> = (0..5).collect();
        let placed =
            place(&plan, &all, &[], &mut exec, &mut Watched::default(), opts(2), &Cancel::default()).await.unwrap();
        assert!(!placed.interrupted);
        let mut submitted = exec.submitted.clone();
        submitted.sort();
        let mut ids: Vec<String> = plan.units.iter().map(|u| u.id.clone()).collect();
        ids.sort();
        assert_eq!(submitted, ids, "each unit once");
        assert_eq!(exec.most_at_once, 2);
        assert_eq!(placed.ended.len(), 5);
        assert!(placed.ended.iter().all(|(_, s)| *s == UnitState::Succeeded));
    }

    #[tokio::test]
    async fn adopted_units_are_watched_not_placed_again_and_their_dependents_wait_for_them() {
        let plan = plan("1, 2, 3", "host");
        let mut exec = Counted { polls: 2, ..Default::default() };
        let first = plan.units[0].id.clone();
        exec.adopt(&first, 4, &format!("fake:{first}"));
        let mut leases = Watched::default();
        let placed =
            place(&plan, &[1, 2], &[(0, 4)], &mut exec, &mut leases, opts(3), &Cancel::default()).await.unwrap();
        assert_eq!(leases.placed[0], format!("{first}@4"), "the adopted attempt is the one watched");
        assert!(!exec.submitted.contains(&first), "an adopted unit is not placed again");
        let order: Vec<&str> = placed.ended.iter().map(|(u, _)| u.as_str()).collect();
        let ids: Vec<&str> = plan.units.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(order, ids, "the next unit waited for the adopted one to end");
        assert!(placed.ended.iter().all(|(_, s)| *s == UnitState::Succeeded));
    }

    #[tokio::test]
    async fn with_host_isolation_units_wait_for_the_one_before() {
        let plan = plan("1, 2, 3", "host");
        let mut exec = Counted { polls: 2, ..Default::default() };
        let placed = place(&plan, &[0, 1, 2], &[], &mut exec, &mut Watched::default(), opts(3), &Cancel::default())
            .await
            .unwrap();
        assert_eq!(exec.most_at_once, 1, "each unit's start depends on the previous unit's stop");
        let order: Vec<&str> = placed.ended.iter().map(|(u, _)| u.as_str()).collect();
        let ids: Vec<&str> = plan.units.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(order, ids);
    }

    #[tokio::test]
    async fn a_cancel_stops_the_running_units_and_places_no_more() {
        let plan = plan("1, 2, 3, 4", "engine");
        let cancel = Cancel::default();
        let mut exec = Counted { polls: u32::MAX, cancel_at: Some((2, cancel.clone())), ..Default::default() };
        let all: Vec<usize> = (0..4).collect();
        let placed = place(&plan, &all, &[], &mut exec, &mut Watched::default(), opts(2), &cancel).await.unwrap();
        assert!(placed.interrupted);
        assert_eq!(exec.submitted.len(), 2, "nothing placed after the cancel");
        assert_eq!(exec.cancelled, exec.submitted, "each running unit cancelled once");
        assert!(placed.ended.iter().all(|(_, s)| *s == UnitState::Cancelled));
    }

    #[tokio::test]
    async fn a_lost_unit_is_placed_again_until_max_attempts() {
        let plan = plan("1, 2", "engine");
        let (a, b) = (plan.units[0].id.clone(), plan.units[1].id.clone());
        let mut exec = Counted { polls: 2, ..Default::default() };
        exec.lose.insert(a.clone(), 2);
        exec.lose.insert(b.clone(), 3);
        let mut leases = Watched::default();
        let placed = place(&plan, &[0, 1], &[], &mut exec, &mut leases, opts(2), &Cancel::default()).await.unwrap();
        assert!(!placed.interrupted);
        assert_eq!(exec.submitted.iter().filter(|u| **u == a).count(), 3, "lost twice, placed a third time");
        assert_eq!(exec.submitted.iter().filter(|u| **u == b).count(), 3, "no fourth attempt");
        assert_eq!(leases.placed.len(), 6, "every attempt's lease is watched");
        let state = |u: &str| placed.ended.iter().find(|(id, _)| id == u).map(|(_, s)| s.clone());
        assert_eq!(state(&a), Some(UnitState::Succeeded));
        match state(&b) {
            Some(UnitState::Failed(why)) => assert!(why.contains("gave up after 3 attempt(s)"), "{why}"),
            other => panic!("unit {b} should fail after 3 lost attempts: {other:?}"),
        }
        assert_eq!(placed.ended.len(), 2, "each unit ends once");
    }

    #[tokio::test]
    async fn an_expired_unit_is_stopped_killed_and_placed_again() {
        let plan = plan("1, 2", "engine");
        let a = plan.units[0].id.clone();
        let mut exec = Counted { polls: 50, ..Default::default() };
        let mut leases = Watched { expire_once: [a.clone()].into(), ..Default::default() };
        let placed = place(&plan, &[0, 1], &[], &mut exec, &mut leases, opts(2), &Cancel::default()).await.unwrap();
        assert_eq!(exec.abandon_log, vec![(a.clone(), false), (a.clone(), true)], "asked to stop, then killed");
        assert_eq!(exec.submitted.iter().filter(|u| **u == a).count(), 2, "placed again after its lease expired");
        assert!(placed.ended.iter().all(|(_, s)| *s == UnitState::Succeeded), "{:?}", placed.ended);
        assert_eq!(placed.ended.len(), 2);
    }

    #[tokio::test]
    async fn a_cancel_still_kills_a_stopped_unit_whose_lease_expired_and_places_none_again() {
        let plan = plan("1, 2", "engine");
        let (a, b) = (plan.units[0].id.clone(), plan.units[1].id.clone());
        let cancel = Cancel::default();
        let mut exec = Counted {
            polls: u32::MAX,
            cancel_at: Some((2, cancel.clone())),
            stopped: [a.clone()].into(),
            ..Default::default()
        };
        // Expires only after the cancel was seen.
        let mut leases = Watched { expire_once: [a.clone()].into(), polls: 3, ..Default::default() };
        let placing = place(&plan, &[0, 1], &[], &mut exec, &mut leases, opts(2), &cancel);
        let placed = tokio::time::timeout(Duration::from_secs(10), placing)
            .await
            .expect("a stopped unit must not keep the placement waiting")
            .unwrap();
        assert!(placed.interrupted);
        assert!(exec.abandon_log.contains(&(a.clone(), true)), "the stopped unit was killed");
        assert_eq!(exec.submitted, vec![a.clone(), b.clone()], "nothing placed again after the cancel");
        assert!(placed.ended.iter().all(|(_, s)| *s == UnitState::Cancelled), "{:?}", placed.ended);
    }
}
