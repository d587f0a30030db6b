//! The results store: every cell result of every finished run, in one SQLite file.
//!
//! Owns the database file — its location, its schema and migrations (`schema`), and the only
//! SQL in kitt. It never runs anything and never writes into run directories: a run directory
//! stays the source of truth, and the store is an index over many of them that can always be
//! rebuilt (`kitt results import`). Decisions that shaped it: one row per cell result keyed by
//! (run id, step key), so indexing a run again updates its rows instead of adding rows;
//! WAL and a busy timeout with every write in an IMMEDIATE transaction, so several kitt
//! processes indexing at once wait for each other instead of failing or losing rows; JSON
//! columns for params and metrics, since the metric set grows with the benchmarks.

mod record;
mod schema;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension as _, Row, TransactionBehavior};
use serde_json::Value as Json;

pub use record::{Record, RunEntry, from_report, label};
pub use schema::VERSION;

use crate::report::{CellIdentity, CellStatus, RunReport};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "the store is at schema version {found}, this kitt knows versions up to {supported}: use a newer kitt, or point --store or KITT_STORE at another file"
    )]
    Newer { found: u32, supported: u32 },
    #[error("upgrading the store to schema version {to} failed, nothing was changed: {source}")]
    Migration { to: u32, source: rusqlite::Error },
    #[error("cannot create {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(
        "{0} has no report/result.json: it is not a run directory, or its run has not finished (`kitt apply` the suite again to finish it)"
    )]
    NoReport(PathBuf),
    #[error("{0} is not a kitt result model: {1}")]
    BadReport(PathBuf, serde_json::Error),
    #[error("result {id} in the store is damaged ({what}); re-import its run directory")]
    Corrupt { id: i64, what: String },
}

/// How long a writer waits for another one before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether SQLite said another connection holds the lock.
fn busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

/// Where the store is: `--store`, else `$KITT_STORE`, else `$XDG_DATA_HOME/kitt/results.db`, else
/// `~/.local/share/kitt/results.db`. `None` when it is turned off (`off`).
pub fn location(flag: Option<&Path>) -> Option<PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let path = flag.map(Path::to_path_buf).or_else(|| env("KITT_STORE")).unwrap_or_else(|| {
        // The XDG spec ignores a relative XDG_DATA_HOME.
        let data = env("XDG_DATA_HOME")
            .filter(|p| p.is_absolute())
            .or_else(|| env("HOME").map(|h| h.join(".local/share")))
            .unwrap_or_else(|| PathBuf::from(".kitt"));
        data.join("kitt").join("results.db")
    });
    (path.as_os_str() != "off").then_some(path)
}

/// What indexing one run did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Indexed {
    pub run_id: String,
    pub cells: usize,
    pub inserted: usize,
    pub updated: usize,
    /// Rows of cells the run no longer has (a resume with an edited suite).
    pub removed: usize,
}

/// Which records to list; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub suite: Option<String>,
    /// An engine instance name or an engine template.
    pub engine: Option<String>,
    pub model: Option<String>,
    /// A fingerprint hash (or its prefix), or a part of the identity string.
    pub fingerprint: Option<String>,
    /// Runs that started at or after this instant.
    pub since_unix_ns: Option<u64>,
    pub run_id: Option<String>,
}

/// An open store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

const RESULT_COLUMNS: &[&str] = &[
    "run_id",
    "cell_key",
    "suite",
    "model",
    "engine",
    "engine_template",
    "benchmark",
    "benchmark_template",
    "params",
    "swept",
    "sampling",
    "run_index",
    "status",
    "error",
    "metrics",
    "facts",
    "engine_image",
    "engine_image_id",
    "engine_image_digest",
    "engine_version",
    "fingerprint",
    "fingerprint_hash",
    "started_unix_ns",
    "finished_unix_ns",
    "run_dir",
];

const RUN_COLUMNS: &[&str] = &[
    "run_id",
    "suite",
    "suite_file",
    "kitt_version",
    "fingerprint",
    "fingerprint_hash",
    "hardware",
    "facts",
    "started_unix_ns",
    "indexed_unix_ns",
    "run_dir",
];

/// `INSERT … ON CONFLICT (unique) DO UPDATE` over `columns`.
fn upsert_sql(table: &str, columns: &[&str], unique: &str) -> String {
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    let unique_cols: Vec<&str> = unique.split(',').map(str::trim).collect();
    let set: Vec<String> =
        columns.iter().filter(|c| !unique_cols.contains(c)).map(|c| format!("{c} = excluded.{c}")).collect();
    format!(
        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({unique}) DO UPDATE SET {}",
        columns.join(", "),
        placeholders.join(", "),
        set.join(", ")
    )
}

fn json_text(v: &impl serde::Serialize) -> Value {
    Value::Text(serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
}

fn opt_text(v: Option<&str>) -> Value {
    v.map_or(Value::Null, |s| Value::Text(s.to_string()))
}

fn ns(v: u64) -> Value {
    Value::Integer(i64::try_from(v).unwrap_or(i64::MAX))
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn status_text(s: CellStatus) -> &'static str {
    match s {
        CellStatus::Ok => "ok",
        CellStatus::Failed => "failed",
    }
}

fn result_values(r: &Record) -> Vec<Value> {
    vec![
        Value::Text(r.run_id.clone()),
        Value::Text(r.key.clone()),
        Value::Text(r.suite.clone()),
        Value::Text(r.cell.model.clone()),
        Value::Text(r.cell.engine.clone()),
        Value::Text(r.cell.engine_template.clone()),
        Value::Text(r.cell.benchmark.clone()),
        Value::Text(r.cell.template.clone()),
        json_text(&r.cell.params),
        json_text(&r.cell.swept),
        json_text(&r.cell.sampling),
        Value::Integer(i64::from(r.cell.run_index)),
        Value::Text(status_text(r.status).into()),
        opt_text(r.error.as_deref()),
        json_text(&r.metrics),
        json_text(&r.facts),
        opt_text(r.fact("engine.image")),
        opt_text(r.fact("engine.image_id")),
        opt_text(r.fact("engine.image_digest")),
        opt_text(r.fact("engine.version")),
        opt_text(r.fingerprint.as_deref()),
        opt_text(r.fingerprint_hash.as_deref()),
        ns(r.started_unix_ns),
        ns(r.finished_unix_ns),
        Value::Text(r.run_dir.to_string_lossy().into_owned()),
    ]
}

/// The columns `record_from_row` reads, in its order.
const SELECT: &str = "SELECT r.id, r.run_id, r.cell_key, r.suite, r.model, r.engine, r.engine_template, r.benchmark,
    r.benchmark_template, r.params, r.swept, r.sampling, r.run_index, r.status, r.error, r.metrics, r.facts,
    r.fingerprint, r.fingerprint_hash, r.started_unix_ns, r.finished_unix_ns, r.run_dir
    FROM results r LEFT JOIN runs u ON u.run_id = r.run_id";

fn record_from_row(row: &Row) -> Result<Record, StoreError> {
    let id: i64 = row.get(0)?;
    let json = |i: usize, what: &str| -> Result<Json, StoreError> {
        let text: String = row.get(i)?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt { id, what: format!("{what}: {e}") })
    };
    let map = |v: Json, what: &str| -> Result<BTreeMap<String, Json>, StoreError> {
        serde_json::from_value(v).map_err(|e| StoreError::Corrupt { id, what: format!("{what}: {e}") })
    };
    let status: String = row.get(13)?;
    let status = match status.as_str() {
        "ok" => CellStatus::Ok,
        "failed" => CellStatus::Failed,
        other => return Err(StoreError::Corrupt { id, what: format!("status `{other}`") }),
    };
    let facts: BTreeMap<String, String> = serde_json::from_value(json(16, "facts")?)
        .map_err(|e| StoreError::Corrupt { id, what: format!("facts: {e}") })?;
    let u64_at = |i: usize| -> Result<u64, StoreError> { Ok(row.get::<_, i64>(i)?.max(0) as u64) };
    Ok(Record {
        id: Some(id),
        run_id: row.get(1)?,
        key: row.get(2)?,
        suite: row.get(3)?,
        cell: CellIdentity {
            model: row.get(4)?,
            engine: row.get(5)?,
            engine_template: row.get(6)?,
            benchmark: row.get(7)?,
            template: row.get(8)?,
            params: map(json(9, "params")?, "params")?,
            swept: map(json(10, "swept")?, "swept")?,
            run_index: row.get::<_, i64>(12)?.clamp(0, i64::from(u32::MAX)) as u32,
            sampling: map(json(11, "sampling")?, "sampling")?,
        },
        status,
        error: row.get(14)?,
        metrics: json(15, "metrics")?,
        facts,
        fingerprint: row.get(17)?,
        fingerprint_hash: row.get(18)?,
        started_unix_ns: u64_at(19)?,
        finished_unix_ns: u64_at(20)?,
        run_dir: PathBuf::from(row.get::<_, String>(21)?),
    })
}

/// The report file of the run directory `dir` (the layout is run/dir.rs's).
fn report_path(dir: &Path) -> PathBuf {
    dir.join("report").join("result.json")
}

/// Reads a run directory's report and when the run was created.
pub fn read_run_dir(dir: &Path) -> Result<(RunReport, Option<u64>), StoreError> {
    let path = report_path(dir);
    let bytes = std::fs::read(&path).map_err(|_| StoreError::NoReport(dir.to_path_buf()))?;
    let report: RunReport = serde_json::from_slice(&bytes).map_err(|e| StoreError::BadReport(path, e))?;
    let created = crate::run::dir::info(dir).map(|i| i.meta.created_unix_ns);
    Ok((report, created))
}

impl Store {
    /// Opens the store at `path`, creating it (and its directory) if needed and upgrading an
    /// older one.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.to_path_buf(), e))?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Switching a new file to WAL while another process does the same can answer "locked"
        // at once, without the busy handler (SQLite takes that lock without waiting): retry
        // within the busy timeout.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(5);
        loop {
            let setup = (|| -> Result<(), StoreError> {
                // WAL lets readers go on while one process writes; set before anything else touches it.
                conn.pragma_update_and_check(None, "journal_mode", "wal", |_| Ok(()))?;
                conn.pragma_update(None, "synchronous", "normal")?;
                schema::migrate(&mut conn)
            })();
            match setup {
                Err(StoreError::Sqlite(e)) if busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
                Ok(()) => break,
            }
        }
        Ok(Store { conn, path: path.to_path_buf() })
    }

    /// Opens the store if its file exists (readers never create one).
    pub fn open_existing(path: &Path) -> Result<Option<Store>, StoreError> {
        if path.exists() { Store::open(path).map(Some) } else { Ok(None) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open store.
    pub fn version(&self) -> Result<u32, StoreError> {
        Ok(self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Indexes a finished run: its rows are inserted, or updated when the run was indexed
    /// before, and rows of cells it no longer has are removed — all in one transaction.
    pub fn index(
        &mut self,
        report: &RunReport,
        run_dir: &Path,
        created_unix_ns: Option<u64>,
    ) -> Result<Indexed, StoreError> {
        let (run, records) = from_report(report, run_dir, created_unix_ns);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: HashMap<String, i64> = {
            let mut q = tx.prepare("SELECT cell_key, id FROM results WHERE run_id = ?1")?;
            q.query_map([&run.run_id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
        };
        let run_values = vec![
            Value::Text(run.run_id.clone()),
            Value::Text(run.suite.clone()),
            Value::Text(run.suite_file.clone()),
            Value::Text(run.kitt_version.clone()),
            opt_text(run.fingerprint.as_deref()),
            opt_text(run.fingerprint_hash.as_deref()),
            run.hardware.as_ref().map_or(Value::Null, json_text),
            json_text(&run.facts),
            ns(run.started_unix_ns),
            ns(now_ns()),
            Value::Text(run.run_dir.to_string_lossy().into_owned()),
        ];
        tx.execute(&upsert_sql("runs", RUN_COLUMNS, "run_id"), rusqlite::params_from_iter(run_values))?;
        let mut done =
            Indexed { run_id: run.run_id.clone(), cells: records.len(), inserted: 0, updated: 0, removed: 0 };
        {
            let mut insert = tx.prepare(&upsert_sql("results", RESULT_COLUMNS, "run_id, cell_key"))?;
            for r in &records {
                insert.execute(rusqlite::params_from_iter(result_values(r)))?;
                if existing.contains_key(&r.key) {
                    done.updated += 1;
                } else {
                    done.inserted += 1;
                }
            }
            let kept: HashSet<&str> = records.iter().map(|r| r.key.as_str()).collect();
            let mut delete = tx.prepare("DELETE FROM results WHERE id = ?1")?;
            for (key, id) in &existing {
                if !kept.contains(key.as_str()) {
                    delete.execute([id])?;
                    done.removed += 1;
                }
            }
        }
        tx.commit()?;
        Ok(done)
    }

    /// Indexes the run directory `dir` (its `report/result.json`).
    pub fn import_dir(&mut self, dir: &Path) -> Result<Indexed, StoreError> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let (report, created) = read_run_dir(&dir)?;
        self.index(&report, &dir, created)
    }

    /// The records that pass `filter`, in the order they were indexed.
    pub fn records(&self, filter: &Filter) -> Result<Vec<Record>, StoreError> {
        let mut clauses: Vec<&str> = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        let text = |s: &String| Value::Text(s.clone());
        if let Some(s) = &filter.suite {
            clauses.push("r.suite = ?");
            values.push(text(s));
        }
        if let Some(e) = &filter.engine {
            clauses.push("(r.engine = ? OR r.engine_template = ?)");
            values.extend([text(e), text(e)]);
        }
        if let Some(m) = &filter.model {
            clauses.push("r.model = ?");
            values.push(text(m));
        }
        if let Some(f) = &filter.fingerprint {
            clauses.push("(r.fingerprint_hash LIKE ? ESCAPE '\\' OR r.fingerprint LIKE ? ESCAPE '\\')");
            let escaped = f.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            values.extend([Value::Text(format!("{escaped}%")), Value::Text(format!("%{escaped}%"))]);
        }
        if let Some(since) = filter.since_unix_ns {
            clauses.push("COALESCE(NULLIF(u.started_unix_ns, 0), r.started_unix_ns) >= ?");
            values.push(ns(since));
        }
        if let Some(run) = &filter.run_id {
            clauses.push("r.run_id = ?");
            values.push(text(run));
        }
        let mut sql = SELECT.to_string();
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        sql.push_str(" ORDER BY r.id");
        self.query(&sql, values)
    }

    fn query(&self, sql: &str, values: Vec<Value>) -> Result<Vec<Record>, StoreError> {
        let mut q = self.conn.prepare(sql)?;
        let mut rows = q.query(rusqlite::params_from_iter(values))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(record_from_row(row)?);
        }
        Ok(out)
    }

    /// One record by id.
    pub fn record(&self, id: i64) -> Result<Option<Record>, StoreError> {
        Ok(self.query(&format!("{SELECT} WHERE r.id = ?"), vec![Value::Integer(id)])?.into_iter().next())
    }

    /// Every record of the run `run_id`.
    pub fn run_records(&self, run_id: &str) -> Result<Vec<Record>, StoreError> {
        self.records(&Filter { run_id: Some(run_id.to_string()), ..Filter::default() })
    }

    /// The run-level entry of `run_id`.
    pub fn run(&self, run_id: &str) -> Result<Option<RunEntry>, StoreError> {
        let sql = format!("SELECT {} FROM runs WHERE run_id = ?1", RUN_COLUMNS.join(", "));
        let row = self
            .conn
            .query_row(&sql, [run_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, String>(10)?,
                ))
            })
            .optional()?;
        Ok(row.map(
            |(run_id, suite, suite_file, kitt_version, fingerprint, fingerprint_hash, hw, facts, started, dir)| {
                RunEntry {
                    run_id,
                    suite,
                    suite_file,
                    kitt_version,
                    fingerprint,
                    fingerprint_hash,
                    hardware: hw.and_then(|h| serde_json::from_str(&h).ok()),
                    facts: serde_json::from_str(&facts).unwrap_or_default(),
                    started_unix_ns: started.max(0) as u64,
                    run_dir: PathBuf::from(dir),
                }
            },
        ))
    }

    /// How many results the store holds.
    pub fn count(&self) -> Result<u64, StoreError> {
        Ok(self.conn.query_row("SELECT COUNT(*) FROM results", [], |r| r.get::<_, i64>(0))?.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_updates_every_column_but_the_unique_ones() {
        let sql = upsert_sql("t", &["a", "b", "c"], "a, b");
        assert_eq!(sql, "INSERT INTO t (a, b, c) VALUES (?1, ?2, ?3) ON CONFLICT (a, b) DO UPDATE SET c = excluded.c");
    }

    #[test]
    fn off_turns_the_store_off() {
        assert_eq!(location(Some(Path::new("off"))), None);
        assert_eq!(location(Some(Path::new("/x/r.db"))), Some(PathBuf::from("/x/r.db")));
    }
}
