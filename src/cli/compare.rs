//! `kitt compare A B`: find each side's results (store or run directory), compare, render, and
//! gate on `--fail-if`.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::{EXIT_FAILED, print_json};
use crate::compare::items::Items;
use crate::compare::threshold::Threshold;
use crate::compare::{self, Identity, Side, render};
use crate::store::{self, Record, Store};

/// Exit code when a `--fail-if` threshold fails.
pub const EXIT_THRESHOLD: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum CompareOutput {
    #[default]
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The baseline: a run id, a result id, or a run directory.
    pub a: String,
    /// The candidate: a run id, a result id, or a run directory.
    pub b: String,
    /// Exit 3 when B crosses this against A, e.g. "ttft.p99 > +5%" (repeatable; see docs/results.md).
    #[arg(long = "fail-if", value_name = "EXPR")]
    pub fail_if: Vec<String>,
    /// The results store: a SQLite file or a postgres:// URL (default: $KITT_STORE, else
    /// $XDG_DATA_HOME/kitt/results.db).
    #[arg(long, value_name = "PATH|URL")]
    pub store: Option<PathBuf>,
    /// Where runs live, for run ids not in the store (default: $KITT_RUNS_DIR, else ./.kitt/runs).
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub output: CompareOutput,
}

/// Reads a run directory's results.
fn from_dir(dir: &Path) -> Result<Vec<Record>, String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let (report, created) = store::read_run_dir(&dir).map_err(|e| e.to_string())?;
    Ok(store::from_report(&report, &dir, created).1)
}

/// What `spec` names: a run directory, a result id (its repetitions), or a run id (the store
/// first, then the runs directory).
pub(crate) fn resolve(spec: &str, store: Option<&Store>, runs_root: &Path) -> Result<(String, Vec<Record>), String> {
    let path = Path::new(spec);
    if path.is_dir() {
        let records = from_dir(path)?;
        let run = records.first().map_or(String::new(), |r| r.run_id.clone());
        return Ok((format!("{spec} (run {run})"), records));
    }
    let store_err = |e: store::StoreError| format!("results store: {e}");
    if let (Ok(id), Some(store)) = (spec.parse::<i64>(), store) {
        let record = store
            .record(id)
            .map_err(store_err)?
            .ok_or_else(|| format!("no result {id} in {} (see `kitt results list`)", store.location()))?;
        let key = Identity::of(&record.cell).key();
        let reps: Vec<Record> = store
            .run_records(&record.run_id)
            .map_err(store_err)?
            .into_iter()
            .filter(|r| Identity::of(&r.cell).key() == key)
            .collect();
        return Ok((format!("result {id} (run {}, {})", record.run_id, record.label()), reps));
    }
    if let Some(store) = store {
        let records = store.run_records(spec).map_err(store_err)?;
        if !records.is_empty() {
            return Ok((format!("run {spec} (suite {})", records[0].suite), records));
        }
    }
    let dir = runs_root.join(spec);
    if dir.is_dir() {
        let records = from_dir(&dir)?;
        let suite = records.first().map_or(String::new(), |r| r.suite.clone());
        return Ok((format!("run {spec} (suite {suite}, from {})", dir.display()), records));
    }
    Err(format!(
        "`{spec}` is not a run directory, a result id or a run id in the store ({}) or under {}",
        store.map_or("none".to_string(), |s| s.location().to_string()),
        runs_root.display()
    ))
}

pub fn compare(args: &CompareArgs) -> i32 {
    let mut thresholds = Vec::new();
    for t in &args.fail_if {
        match Threshold::parse(t) {
            Ok(t) => thresholds.push(t),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILED;
            }
        }
    }
    let store = match store::location(args.store.as_deref()).map(|p| Store::open_existing(&p).map_err(|e| (p, e))) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(s))) => Some(s),
        Some(Err((p, e))) => {
            eprintln!("error: results store {p}: {e}");
            return EXIT_FAILED;
        }
    };
    let root = crate::run::dir::runs_root(args.runs_dir.as_deref());
    let mut sides = Vec::new();
    for spec in [&args.a, &args.b] {
        match resolve(spec, store.as_ref(), &root) {
            Ok(s) => sides.push(s),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILED;
            }
        }
    }
    let items = [Items::read(&sides[0].1), Items::read(&sides[1].1)];
    let a = Side { label: sides[0].0.clone(), records: &sides[0].1, items: &items[0] };
    let b = Side { label: sides[1].0.clone(), records: &sides[1].1, items: &items[1] };
    let comparison = match compare::compare(&a, &b, &thresholds) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    match args.output {
        CompareOutput::Text => print!("{}", render::text(&comparison)),
        CompareOutput::Markdown => print!("{}", render::markdown(&comparison)),
        CompareOutput::Json => print_json(&comparison),
    }
    if comparison.failed { EXIT_THRESHOLD } else { 0 }
}
