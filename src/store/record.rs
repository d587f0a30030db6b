//! One cell result as the store keeps it: the cell's identity, its metrics, what was observed
//! while it ran (engine facts, the machine) and where its run directory is.
//!
//! A `Record` is made from a `RunReport` (a finished run, or a run directory read back) or from
//! a store row; compare and aggregation read records and never care which.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value as Json;
use sha2::{Digest as _, Sha256};

use crate::report::{CellIdentity, CellStatus, RunReport};

/// One cell result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// The store's id; absent for a record read straight from a run directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub run_id: String,
    pub suite: String,
    pub cell: CellIdentity,
    /// The benchmark step's key: unique in its run, but it changes with an image, so it is never
    /// used to match cells across runs.
    pub key: String,
    pub status: CellStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub metrics: Json,
    /// Observed facts (`engine.version`, `engine.image`, `engine.image_digest`, `machine`, …).
    pub facts: BTreeMap<String, String>,
    /// The machine's identity string and hash (`kitt fingerprint`).
    pub fingerprint: Option<String>,
    pub fingerprint_hash: Option<String>,
    pub started_unix_ns: u64,
    pub finished_unix_ns: u64,
    pub run_dir: PathBuf,
}

impl Record {
    pub fn fact(&self, name: &str) -> Option<&str> {
        self.facts.get(name).map(String::as_str)
    }

    /// A metric by JSON pointer into `metrics`.
    pub fn metric(&self, pointer: &str) -> Option<f64> {
        self.metrics.pointer(pointer).and_then(Json::as_f64)
    }

    /// `engine model benchmark k=v …` for tables.
    pub fn label(&self) -> String {
        label(&self.cell.engine, &self.cell.model, &self.cell.benchmark, &self.cell.swept)
    }
}

/// `engine model benchmark k=v …`: a cell as tables show it (the swept params only).
pub fn label(engine: &str, model: &str, benchmark: &str, swept: &BTreeMap<String, Json>) -> String {
    let mut s = format!("{engine} {model} {benchmark}");
    for (k, v) in swept {
        s.push_str(&format!(" {k}={}", crate::template::scalar_text(v)));
    }
    s
}

/// Run-level facts: one row of the `runs` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunEntry {
    pub run_id: String,
    pub suite: String,
    pub suite_file: String,
    pub kitt_version: String,
    pub fingerprint: Option<String>,
    pub fingerprint_hash: Option<String>,
    /// `kitt fingerprint`'s JSON of the machine, when the report had it.
    pub hardware: Option<Json>,
    pub facts: BTreeMap<String, String>,
    /// When the run started (the run directory's creation, else its first cell).
    pub started_unix_ns: u64,
    pub run_dir: PathBuf,
}

/// The records and run entry of a report whose run directory is `run_dir`.
///
/// `created_unix_ns` is the run's creation time when known (run.json); otherwise the earliest
/// cell start stands for it.
pub fn from_report(report: &RunReport, run_dir: &Path, created_unix_ns: Option<u64>) -> (RunEntry, Vec<Record>) {
    let (fingerprint, fingerprint_hash) = match &report.hardware {
        Some(fp) => (Some(fp.identity.clone()), Some(fp.hash.clone())),
        None => (report.facts.get("machine").cloned(), report.facts.get("machine.hash").cloned()),
    };
    let records: Vec<Record> = report
        .cells
        .iter()
        .map(|c| {
            let facts = if c.provenance.facts.is_empty() { report.facts.clone() } else { c.provenance.facts.clone() };
            Record {
                id: None,
                run_id: report.run_id.clone(),
                suite: report.suite.clone(),
                cell: c.cell.clone(),
                key: if c.provenance.key.is_empty() { identity_key(&c.cell) } else { c.provenance.key.clone() },
                status: c.status,
                error: c.error.clone(),
                metrics: c.metrics.clone(),
                fingerprint: fingerprint.clone().or_else(|| facts.get("machine").cloned()),
                fingerprint_hash: fingerprint_hash.clone().or_else(|| facts.get("machine.hash").cloned()),
                facts,
                started_unix_ns: c.provenance.started_unix_ns,
                finished_unix_ns: c.provenance.finished_unix_ns,
                run_dir: run_dir.to_path_buf(),
            }
        })
        .collect();
    let first_start = records.iter().map(|r| r.started_unix_ns).filter(|t| *t > 0).min();
    let run = RunEntry {
        run_id: report.run_id.clone(),
        suite: report.suite.clone(),
        suite_file: report.suite_file.clone(),
        kitt_version: report.kitt_version.clone(),
        fingerprint,
        fingerprint_hash,
        hardware: report.hardware.as_ref().and_then(|h| serde_json::to_value(h).ok()),
        facts: report.facts.clone(),
        started_unix_ns: created_unix_ns.or(first_start).unwrap_or(0),
        run_dir: run_dir.to_path_buf(),
    };
    (run, records)
}

/// A stand-in key for a cell that never got a step key (it did not run): its identity's hash.
fn identity_key(cell: &CellIdentity) -> String {
    let json = serde_json::to_vec(cell).unwrap_or_default();
    let digest = Sha256::digest(&json);
    format!("cell-{}", digest.iter().take(16).map(|b| format!("{b:02x}")).collect::<String>())
}
