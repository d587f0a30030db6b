//! The executor's state in the run directory (`executor.json`): which executor places the run's
//! units and, for each unit it submitted, the attempt and what names the submission outside the
//! driver (a process identity, a batch job id). Any later driver (`kitt runs follow`, a resumed
//! `kitt apply`, `kitt runs cancel`) reads it to adopt units that still run instead of placing
//! them twice, so the driver may exit (`--detach`) or die without losing its units.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ExecutorKind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutorState {
    pub executor: ExecutorKind,
    pub workers: usize,
    pub max_attempts: u32,
    /// Units by id: their latest submission.
    #[serde(default)]
    pub units: BTreeMap<String, Submitted>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    /// The attempt the submission claims (`attempts/<unit>/<n>`).
    pub attempt: u32,
    /// [`super::UnitExecutor::external_id`] of the submission.
    pub external_id: String,
    pub submitted_unix_ns: u64,
}

pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join("executor.json")
}

impl ExecutorState {
    pub fn new(executor: ExecutorKind, workers: usize, max_attempts: u32) -> ExecutorState {
        ExecutorState { executor, workers, max_attempts, units: BTreeMap::new() }
    }

    /// The run's executor state; none for a run placed only in process (`local`).
    pub fn load(run_dir: &Path) -> Result<Option<ExecutorState>, String> {
        let p = path(run_dir);
        match std::fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                format!("{} is damaged ({e}); remove it to place every unfinished unit again", p.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", p.display())),
        }
    }

    /// Written whole and atomically (a reader never sees half of it).
    pub fn save(&self, run_dir: &Path) -> Result<(), String> {
        let p = path(run_dir);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        crate::run::dir::write_atomic(&p, &bytes).map_err(|e| format!("cannot write {}: {e}", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ExecutorState::load(dir.path()).unwrap(), None);
        let mut s = ExecutorState::new(ExecutorKind::Processes, 2, 3);
        s.units.insert("g0".into(), Submitted { attempt: 1, external_id: r#"{"pid":7}"#.into(), submitted_unix_ns: 5 });
        s.save(dir.path()).unwrap();
        assert_eq!(ExecutorState::load(dir.path()).unwrap(), Some(s));
        std::fs::write(path(dir.path()), b"{").unwrap();
        let e = ExecutorState::load(dir.path()).unwrap_err();
        assert!(e.contains("executor.json is damaged") && e.contains("remove it"), "{e}");
    }
}
