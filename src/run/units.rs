//! Where each unit of a run stands, read from the run directory alone (plan.json, the claims under
//! `attempts/`, the journal shards, the commits and `executor.json`), so any process on any host
//! that sees the directory can tell: `kitt runs show`, `kitt runs cancel`, a server.

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;
use serde_json::Value as Json;

use super::journal::{self, Event, Record};
use super::work::Claim;
use super::{commit, pidfile};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UnitStatus {
    pub id: String,
    pub kind: String,
    /// `pending`, `running`, `done`, `failed`, `cancelled`, `lost` (its process ended without a
    /// finish record), or `running?` (held on another machine: only its lease can tell).
    pub state: String,
    /// Why it failed, or how it was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its executor's name for the newest submission (a process identity, a job id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Measured cells committed, of its cells.
    pub cells_done: usize,
    pub cells: usize,
    /// Its batch job as the scheduler sees it now (Slurm), when the scheduler still lists it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobState>,
}

/// A unit's batch job as its scheduler lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobState {
    /// The scheduler's id (Slurm: `ARRAYJOB_TASK`).
    pub id: String,
    /// The scheduler's state (`PENDING`, `RUNNING`, …).
    pub state: String,
    /// Why it waits (`Resources`, `BeginTime` after a requeue, …), or `None`.
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The attempt numbers claimed under `dir`, in order.
pub fn attempt_numbers(dir: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    v.sort_unstable();
    v
}

/// Every unit of the run at `run_dir` (whose plan.json is `plan`), given its merged journal.
pub fn statuses(run_dir: &Path, plan: &Json, records: &[Record]) -> Vec<UnitStatus> {
    let finished: HashSet<&str> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::StepFinished { key, .. } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    let recorded = crate::exec::state::ExecutorState::load(run_dir).ok().flatten();
    let steps = plan["steps"].as_array().cloned().unwrap_or_default();
    let units = plan["units"].as_array().cloned().unwrap_or_default();
    units
        .iter()
        .map(|u| {
            let id = u["id"].as_str().unwrap_or_default().to_string();
            let cell_keys: Vec<&str> = u["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| steps.get(i.as_u64()? as usize))
                .filter(|s| s["kind"] == "benchmark")
                .filter_map(|s| s["key"].as_str())
                .collect();
            let committed =
                |k: &&&str| finished.contains(**k) || run_dir.join("steps").join(**k).join(commit::COMMITTED).exists();
            let cells_done = cell_keys.iter().filter(committed).count();
            let dir = run_dir.join("attempts").join(&id);
            let numbers = attempt_numbers(&dir);
            let newest = numbers.last().copied();
            let claim: Option<Claim> = newest
                .and_then(|n| std::fs::read(dir.join(n.to_string())).ok())
                .and_then(|b| serde_json::from_slice(&b).ok());
            let ending = newest.and_then(|n| {
                let shard = journal::read(&journal::shard_path(run_dir, &id, n)).ok()?;
                shard.records.iter().rev().find_map(|r| match &r.event {
                    e @ (Event::RunFinished { .. } | Event::RunInterrupted { .. } | Event::RunStopped { .. }) => {
                        Some(e.clone())
                    }
                    _ => None,
                })
            });
            let (state, detail) = match (&ending, &claim) {
                _ if !cell_keys.is_empty() && cells_done == cell_keys.len() => ("done", None),
                (Some(Event::RunFinished { ok: true, .. }), _) => ("done", None),
                (Some(Event::RunFinished { failed_cells, .. }), _) => {
                    ("failed", Some(format!("{failed_cells} cell(s) failed")))
                }
                (Some(Event::RunInterrupted { .. }), _) => ("cancelled", None),
                (Some(Event::RunStopped { reason }), _) => ("failed", Some(reason.clone())),
                (_, Some(c)) if pidfile::foreign(&c.owner) => ("running?", Some("held on another machine".into())),
                (_, Some(c)) if pidfile::still_running(&c.owner) => ("running", None),
                (_, Some(c)) => ("lost", Some(format!("pid {} ended without a finish record", c.owner.pid))),
                (_, None) => ("pending", None),
            };
            UnitStatus {
                kind: u["kind"].as_str().unwrap_or_default().to_string(),
                state: state.to_string(),
                detail,
                attempts: numbers.len() as u32,
                host: claim.as_ref().map(|c| c.host.clone()),
                pid: claim.as_ref().map(|c| c.owner.pid),
                external_id: recorded.as_ref().and_then(|r| r.units.get(&id)).map(|s| s.external_id.clone()),
                cells_done,
                cells: cell_keys.len(),
                job: None,
                id,
            }
        })
        .collect()
}
