//! Copying one store into another (`kitt results export --to`): SQLite to PostgreSQL when a team
//! moves to a shared database, or one file to another.
//!
//! Idempotent by construction: a run is written as `kitt results import` writes it (its rows
//! keyed by run id and step key, so copying it again updates them instead of adding any),
//! settings are keyed by name, and a history entry by (key, time, actor), so a second copy adds
//! nothing and leaves the same row counts. Each run is one transaction in the target: a copy
//! cut short leaves whole runs, and running it again completes it.

use super::settings::{history_insert, put_setting};
use super::{Filter, RunEntry, Store, StoreError};

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Exported {
    pub runs: usize,
    pub results: usize,
    /// Results the target did not have before.
    pub inserted: usize,
    /// Results it had, written again.
    pub updated: usize,
    pub settings: usize,
    /// History entries the target did not have before.
    pub history_inserted: usize,
}

impl Store {
    /// Every run id in the store, with or without a `runs` row (a store upgraded from version 1
    /// has both; this keeps no row behind if one lacks it).
    fn run_ids(&self) -> Result<Vec<String>, StoreError> {
        self.select("SELECT run_id FROM runs UNION SELECT DISTINCT run_id FROM results ORDER BY 1", &[])?
            .iter()
            .map(|r| r.text(0))
            .collect()
    }

    /// Copies every run, result, setting and setting change of this store into `target`.
    pub fn export_to(&self, target: &mut Store) -> Result<Exported, StoreError> {
        let mut done = Exported::default();
        for run_id in self.run_ids()? {
            let records = self.records(&Filter { run_id: Some(run_id.clone()), ..Filter::default() })?;
            let run = match self.run(&run_id)? {
                Some(run) => run,
                None => {
                    let Some(first) = records.first() else { continue };
                    RunEntry {
                        run_id: run_id.clone(),
                        suite: first.suite.clone(),
                        suite_file: String::new(),
                        kitt_version: String::new(),
                        fingerprint: first.fingerprint.clone(),
                        fingerprint_hash: first.fingerprint_hash.clone(),
                        hardware: None,
                        facts: Default::default(),
                        started_unix_ns: first.started_unix_ns,
                        run_dir: first.run_dir.clone(),
                    }
                }
            };
            let indexed = target.write(|tx| super::put_run(tx, &run, &records))?;
            done.runs += 1;
            done.results += indexed.cells;
            done.inserted += indexed.inserted;
            done.updated += indexed.updated;
        }
        let settings = self.settings()?;
        let history = self.settings_history(None)?;
        let (n, fresh) = target.write(|tx| {
            for (key, s) in &settings {
                put_setting(tx, key, s)?;
            }
            let mut fresh = 0;
            for c in &history {
                fresh += history_insert(tx, c)? as usize;
            }
            Ok((settings.len(), fresh))
        })?;
        done.settings = n;
        done.history_inserted = fresh;
        Ok(done)
    }

    /// Row counts of every table (results, runs, settings, settings_history), to compare stores.
    pub fn row_counts(&self) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let mut out = Vec::new();
        for table in ["results", "runs", "settings", "settings_history"] {
            let n = self.select(&format!("SELECT COUNT(*) FROM {table}"), &[])?.first().map_or(Ok(0), |r| r.u64(0))?;
            out.push((table, n));
        }
        Ok(out)
    }
}
