//! The results store: every cell result of every finished run, and the settings, in one
//! database: a SQLite file, or a PostgreSQL database a team shares.
//!
//! Owns the database — its location, its schema and migrations (`schema`), and the only SQL in
//! kitt. It never runs anything and never writes into run directories: a run directory stays the
//! source of truth, and the store is an index over many of them that can always be rebuilt
//! (`kitt results import`). Decisions that shaped it: one row per cell result keyed by (run id,
//! step key), so indexing a run again updates its rows instead of adding rows; every write in
//! one transaction that excludes the writers it could race with, so several kitt processes
//! indexing at once wait for each other instead of failing or losing rows; JSON columns for
//! params and metrics, since the metric set grows with the benchmarks; the store's logic written
//! once against one small interface (`backend`) that SQLite and PostgreSQL implement, so the two
//! cannot drift apart.

mod backend;
mod export;
mod postgres;
mod record;
mod schema;
mod settings;
mod sqlite;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value as Json;

use backend::{Backend, Row, Tx, Value};
pub use export::Exported;
pub use record::{Record, RunEntry, from_report, label};
pub use schema::VERSION;
pub use settings::{SettingChange, StoredSetting};

use crate::report::{CellIdentity, CellStatus, RunReport};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] ::postgres::Error),
    #[error("not a PostgreSQL connection URL ({0}): expected postgres://USER@HOST:PORT/DATABASE")]
    Dsn(String),
    #[error(
        "the store is at schema version {found}, this kitt knows versions up to {supported}: use a newer kitt, or point --store or KITT_STORE at another store"
    )]
    Newer { found: u32, supported: u32 },
    #[error("upgrading the store to schema version {to} failed, nothing was changed: {reason}")]
    Migration { to: u32, reason: String },
    #[error(
        "the store is at schema version {found} and this kitt reads version {supported}: a read-only store is never upgraded; open it once with a writable kitt of this version (`kitt results list --store …`), or use a kitt of its version"
    )]
    ReadOnlyVersion { found: u32, supported: u32 },
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
    #[error("the store answered a row whose column {column} is not {expected}: is it a kitt store?")]
    Column { column: usize, expected: &'static str },
}

/// Which database a store is in: a SQLite file, or a PostgreSQL database (a
/// `postgres://` or `postgresql://` URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Location {
    /// A URL starting `postgres://` or `postgresql://` is a PostgreSQL database; anything else
    /// is a file path.
    pub fn parse(text: &Path) -> Location {
        match text.to_str() {
            Some(t) if t.starts_with("postgres://") || t.starts_with("postgresql://") => {
                Location::Postgres(t.to_string())
            }
            _ => Location::Sqlite(text.to_path_buf()),
        }
    }
}

impl std::fmt::Display for Location {
    /// The path, or the URL with its password (if any) left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(url) => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
                let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
                let (authority, tail) = rest.split_at(authority_end);
                match authority.rsplit_once('@') {
                    Some((user, host)) if user.contains(':') => {
                        let user = user.split(':').next().unwrap_or_default();
                        write!(f, "{scheme}://{user}:***@{host}{tail}")
                    }
                    _ => write!(f, "{url}"),
                }
            }
        }
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Location {
        Location::parse(p)
    }
}

impl From<&PathBuf> for Location {
    fn from(p: &PathBuf) -> Location {
        Location::parse(p)
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Location {
        Location::parse(&p)
    }
}

impl From<&str> for Location {
    fn from(s: &str) -> Location {
        Location::parse(Path::new(s))
    }
}

impl From<&String> for Location {
    fn from(s: &String) -> Location {
        Location::parse(Path::new(s))
    }
}

impl From<&Location> for Location {
    fn from(l: &Location) -> Location {
        l.clone()
    }
}

/// Where the store is: `--store`, else `$KITT_STORE`, else `$XDG_DATA_HOME/kitt/results.db`, else
/// `~/.local/share/kitt/results.db`. `None` when it is turned off (`off`).
pub fn location(flag: Option<&Path>) -> Option<Location> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let path = flag.map(Path::to_path_buf).or_else(|| env("KITT_STORE")).unwrap_or_else(|| {
        // The XDG spec ignores a relative XDG_DATA_HOME.
        let data = env("XDG_DATA_HOME")
            .filter(|p| p.is_absolute())
            .or_else(|| env("HOME").map(|h| h.join(".local/share")))
            .unwrap_or_else(|| PathBuf::from(".kitt"));
        data.join("kitt").join("results.db")
    });
    (path.as_os_str() != "off").then(|| Location::parse(&path))
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
    /// A benchmark instance name or a benchmark template.
    pub benchmark: Option<String>,
    /// Runs that started before this instant.
    pub until_unix_ns: Option<u64>,
    /// Failed results only.
    pub failed_only: bool,
    /// Newest first (the largest id first); `after_id` then means a smaller id.
    pub newest_first: bool,
    /// Only records past this id in the listing's order (keyset pagination: the last id of the
    /// previous page).
    pub after_id: Option<i64>,
    /// At most this many records.
    pub limit: Option<u32>,
}

/// An open store.
pub struct Store {
    /// Behind a lock so that reads can take `&self`, as they do on one SQLite connection.
    db: Mutex<Box<dyn Backend>>,
    location: Location,
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

/// `INSERT … ON CONFLICT (unique) DO UPDATE` over `columns` (both databases speak it).
fn upsert_sql(table: &str, columns: &[&str], unique: &str) -> String {
    let placeholders = vec!["?"; columns.len()];
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
        Value::text(&r.run_id),
        Value::text(&r.key),
        Value::text(&r.suite),
        Value::text(&r.cell.model),
        Value::text(&r.cell.engine),
        Value::text(&r.cell.engine_template),
        Value::text(&r.cell.benchmark),
        Value::text(&r.cell.template),
        Value::json(&r.cell.params),
        Value::json(&r.cell.swept),
        Value::json(&r.cell.sampling),
        Value::Int(i64::from(r.cell.run_index)),
        Value::text(status_text(r.status)),
        Value::opt_text(r.error.as_deref()),
        Value::json(&r.metrics),
        Value::json(&r.facts),
        Value::opt_text(r.fact("engine.image")),
        Value::opt_text(r.fact("engine.image_id")),
        Value::opt_text(r.fact("engine.image_digest")),
        Value::opt_text(r.fact("engine.version")),
        Value::opt_text(r.fingerprint.as_deref()),
        Value::opt_text(r.fingerprint_hash.as_deref()),
        Value::u64(r.started_unix_ns),
        Value::u64(r.finished_unix_ns),
        Value::text(r.run_dir.to_string_lossy()),
    ]
}

fn run_values(run: &RunEntry) -> Vec<Value> {
    vec![
        Value::text(&run.run_id),
        Value::text(&run.suite),
        Value::text(&run.suite_file),
        Value::text(&run.kitt_version),
        Value::opt_text(run.fingerprint.as_deref()),
        Value::opt_text(run.fingerprint_hash.as_deref()),
        run.hardware.as_ref().map_or(Value::Null, Value::json),
        Value::json(&run.facts),
        Value::u64(run.started_unix_ns),
        Value::u64(now_ns()),
        Value::text(run.run_dir.to_string_lossy()),
    ]
}

/// The values a listing's filters can take (`Store::facets`), each sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Facets {
    pub suites: Vec<String>,
    pub engines: Vec<String>,
    pub models: Vec<String>,
    pub benchmarks: Vec<String>,
}

/// The columns `record_from_row` reads, in its order.
/// A model's results in the store (`Store::models`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelResults {
    pub model: String,
    pub results: u64,
    /// The engine instances it has results on.
    pub engines: Vec<String>,
    /// When its latest result's cell finished.
    pub last_unix_ns: u64,
}

const SELECT: &str = "SELECT r.id, r.run_id, r.cell_key, r.suite, r.model, r.engine, r.engine_template, r.benchmark,
    r.benchmark_template, r.params, r.swept, r.sampling, r.run_index, r.status, r.error, r.metrics, r.facts,
    r.fingerprint, r.fingerprint_hash, r.started_unix_ns, r.finished_unix_ns, r.run_dir
    FROM results r LEFT JOIN runs u ON u.run_id = r.run_id";
/// The ids of `SELECT`'s rows, for a filtered page (`filtered`).
const SELECT_IDS: &str = "SELECT r.id FROM results r LEFT JOIN runs u ON u.run_id = r.run_id";

/// The statement and values that select the records passing `filter`, in the order they were
/// indexed.
fn filtered(filter: &Filter) -> (String, Vec<Value>) {
    let mut clauses: Vec<&str> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(s) = &filter.suite {
        clauses.push("r.suite = ?");
        values.push(Value::text(s));
    }
    if let Some(e) = &filter.engine {
        clauses.push("(r.engine = ? OR r.engine_template = ?)");
        values.extend([Value::text(e), Value::text(e)]);
    }
    if let Some(m) = &filter.model {
        clauses.push("r.model = ?");
        values.push(Value::text(m));
    }
    if let Some(f) = &filter.fingerprint {
        clauses.push("(r.fingerprint_hash LIKE ? ESCAPE '\\' OR r.fingerprint LIKE ? ESCAPE '\\')");
        let escaped = f.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        values.extend([Value::Text(format!("{escaped}%")), Value::Text(format!("%{escaped}%"))]);
    }
    if let Some(since) = filter.since_unix_ns {
        clauses.push("COALESCE(NULLIF(u.started_unix_ns, 0), r.started_unix_ns) >= ?");
        values.push(Value::u64(since));
    }
    if let Some(run) = &filter.run_id {
        clauses.push("r.run_id = ?");
        values.push(Value::text(run));
    }
    if let Some(b) = &filter.benchmark {
        clauses.push("(r.benchmark = ? OR r.benchmark_template = ?)");
        values.extend([Value::text(b), Value::text(b)]);
    }
    if let Some(until) = filter.until_unix_ns {
        clauses.push("COALESCE(NULLIF(u.started_unix_ns, 0), r.started_unix_ns) < ?");
        values.push(Value::u64(until));
    }
    if filter.failed_only {
        clauses.push("r.status = 'failed'");
    }
    if let Some(after) = filter.after_id {
        clauses.push(if filter.newest_first { "r.id < ?" } else { "r.id > ?" });
        values.push(Value::Int(after));
    }
    let order = if filter.newest_first { " ORDER BY r.id DESC" } else { " ORDER BY r.id" };
    let mut sql = SELECT.to_string();
    match (clauses.is_empty(), filter.limit) {
        (true, _) => sql.push_str(order),
        // A page of filtered rows: its ids first, then the rows. Where an index serves the
        // filter (the model's), sorting the matches whole rows at a time would sort their
        // metrics too: 30 ms for a page of 2,500 matches in 10,000 rows, 4 ms by id.
        (false, Some(_)) => {
            sql.push_str(&format!(
                " WHERE r.id IN ({SELECT_IDS} WHERE {}{order} LIMIT ?){order}",
                clauses.join(" AND ")
            ));
        }
        (false, None) => {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
            sql.push_str(order);
        }
    }
    if let Some(limit) = filter.limit {
        if clauses.is_empty() {
            sql.push_str(" LIMIT ?");
        }
        values.push(Value::Int(i64::from(limit)));
    }
    (sql, values)
}

/// One record row as JSON, exactly as `Record` serializes (`record_from_row`, then serde), with
/// the stored JSON texts copied, not parsed into values; the record's id.
fn write_record_json(row: &Row, out: &mut Vec<u8>) -> Result<i64, StoreError> {
    use serde::de::IgnoredAny;
    let id = row.int(0)?;
    let corrupt = |what: &str, e: &dyn std::fmt::Display| StoreError::Corrupt { id, what: format!("{what}: {e}") };
    // Stored JSON: checked (without building it) and copied.
    let raw = |out: &mut Vec<u8>, i: usize, what: &str, object: bool| -> Result<(), StoreError> {
        let text = row.str(i)?.trim();
        if object && !text.starts_with('{') {
            return Err(corrupt(what, &"not an object"));
        }
        serde_json::from_str::<IgnoredAny>(text).map_err(|e| corrupt(what, &e))?;
        out.extend_from_slice(text.as_bytes());
        Ok(())
    };
    let text = |out: &mut Vec<u8>, v: &str| serde_json::to_writer(out, v).map_err(|e| corrupt("text", &e));
    let opt_text = |out: &mut Vec<u8>, i: usize| -> Result<(), StoreError> {
        match row.opt_text(i)? {
            Some(v) => text(out, &v),
            None => {
                out.extend_from_slice(b"null");
                Ok(())
            }
        }
    };
    let status = match row.str(13)? {
        "ok" => "ok",
        "failed" => "failed",
        other => return Err(StoreError::Corrupt { id, what: format!("status `{other}`") }),
    };
    let run_index = row.int(12)?.clamp(0, i64::from(u32::MAX));
    out.extend_from_slice(format!("{{\"id\":{id},\"run_id\":").as_bytes());
    text(out, row.str(1)?)?;
    out.extend_from_slice(b",\"suite\":");
    text(out, row.str(3)?)?;
    out.extend_from_slice(b",\"cell\":{\"model\":");
    text(out, row.str(4)?)?;
    out.extend_from_slice(b",\"engine\":");
    text(out, row.str(5)?)?;
    out.extend_from_slice(b",\"engine_template\":");
    text(out, row.str(6)?)?;
    out.extend_from_slice(b",\"benchmark\":");
    text(out, row.str(7)?)?;
    out.extend_from_slice(b",\"template\":");
    text(out, row.str(8)?)?;
    out.extend_from_slice(b",\"params\":");
    raw(out, 9, "params", true)?;
    out.extend_from_slice(b",\"swept\":");
    raw(out, 10, "swept", true)?;
    out.extend_from_slice(format!(",\"run_index\":{run_index},\"sampling\":").as_bytes());
    raw(out, 11, "sampling", true)?;
    out.extend_from_slice(b"},\"key\":");
    text(out, row.str(2)?)?;
    out.extend_from_slice(format!(",\"status\":\"{status}\"").as_bytes());
    if let Some(error) = row.opt_text(14)? {
        out.extend_from_slice(b",\"error\":");
        text(out, &error)?;
    }
    out.extend_from_slice(b",\"metrics\":");
    raw(out, 15, "metrics", false)?;
    out.extend_from_slice(b",\"facts\":");
    raw(out, 16, "facts", true)?;
    out.extend_from_slice(b",\"fingerprint\":");
    opt_text(out, 17)?;
    out.extend_from_slice(b",\"fingerprint_hash\":");
    opt_text(out, 18)?;
    out.extend_from_slice(
        format!(",\"started_unix_ns\":{},\"finished_unix_ns\":{},\"run_dir\":", row.u64(19)?, row.u64(20)?).as_bytes(),
    );
    text(out, row.str(21)?)?;
    out.push(b'}');
    Ok(id)
}

fn record_from_row(row: &Row) -> Result<Record, StoreError> {
    let id = row.int(0)?;
    let json = |i: usize, what: &str| -> Result<Json, StoreError> {
        serde_json::from_str(&row.text(i)?).map_err(|e| StoreError::Corrupt { id, what: format!("{what}: {e}") })
    };
    let map = |v: Json, what: &str| -> Result<BTreeMap<String, Json>, StoreError> {
        serde_json::from_value(v).map_err(|e| StoreError::Corrupt { id, what: format!("{what}: {e}") })
    };
    let status = match row.text(13)?.as_str() {
        "ok" => CellStatus::Ok,
        "failed" => CellStatus::Failed,
        other => return Err(StoreError::Corrupt { id, what: format!("status `{other}`") }),
    };
    let facts: BTreeMap<String, String> = serde_json::from_value(json(16, "facts")?)
        .map_err(|e| StoreError::Corrupt { id, what: format!("facts: {e}") })?;
    Ok(Record {
        id: Some(id),
        run_id: row.text(1)?,
        key: row.text(2)?,
        suite: row.text(3)?,
        cell: CellIdentity {
            model: row.text(4)?,
            engine: row.text(5)?,
            engine_template: row.text(6)?,
            benchmark: row.text(7)?,
            template: row.text(8)?,
            params: map(json(9, "params")?, "params")?,
            swept: map(json(10, "swept")?, "swept")?,
            run_index: row.int(12)?.clamp(0, i64::from(u32::MAX)) as u32,
            sampling: map(json(11, "sampling")?, "sampling")?,
        },
        status,
        error: row.opt_text(14)?,
        metrics: json(15, "metrics")?,
        facts,
        fingerprint: row.opt_text(17)?,
        fingerprint_hash: row.opt_text(18)?,
        started_unix_ns: row.u64(19)?,
        finished_unix_ns: row.u64(20)?,
        run_dir: PathBuf::from(row.text(21)?),
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

/// Writes one run's entry and exactly `records` as its rows (updating those it had, removing
/// those it no longer has), inside the caller's transaction.
fn put_run(tx: &mut dyn Tx, run: &RunEntry, records: &[Record]) -> Result<Indexed, StoreError> {
    // Two writers of the same run take turns (SQLite's write lock does this for every write).
    tx.lock(&run.run_id)?;
    let existing: HashMap<String, i64> = tx
        .query("SELECT cell_key, id FROM results WHERE run_id = ?", &[Value::text(&run.run_id)])?
        .iter()
        .map(|r| Ok((r.text(0)?, r.int(1)?)))
        .collect::<Result<_, StoreError>>()?;
    tx.execute(&upsert_sql("runs", RUN_COLUMNS, "run_id"), &run_values(run))?;
    let mut done = Indexed { run_id: run.run_id.clone(), cells: records.len(), inserted: 0, updated: 0, removed: 0 };
    let insert = upsert_sql("results", RESULT_COLUMNS, "run_id, cell_key");
    for r in records {
        tx.execute(&insert, &result_values(r))?;
        if existing.contains_key(&r.key) {
            done.updated += 1;
        } else {
            done.inserted += 1;
        }
    }
    let kept: HashSet<&str> = records.iter().map(|r| r.key.as_str()).collect();
    for (key, id) in &existing {
        if !kept.contains(key.as_str()) {
            tx.execute("DELETE FROM results WHERE id = ?", &[Value::Int(*id)])?;
            done.removed += 1;
        }
    }
    Ok(done)
}

impl Store {
    /// Opens the store at `location` — creating it (and a SQLite file's directory) if needed —
    /// and upgrades an older one.
    pub fn open(location: impl Into<Location>) -> Result<Store, StoreError> {
        let location = location.into();
        let db: Box<dyn Backend> = match &location {
            Location::Sqlite(path) => Box::new(sqlite::Sqlite::open(path)?),
            Location::Postgres(dsn) => Box::new(postgres::Postgres::open(dsn)?),
        };
        Ok(Store { db: Mutex::new(db), location })
    }

    /// Opens the store if it exists (readers never create one): a SQLite file that exists, a
    /// PostgreSQL database that has a store.
    pub fn open_existing(location: impl Into<Location>) -> Result<Option<Store>, StoreError> {
        let location = location.into();
        match &location {
            Location::Sqlite(path) if !path.exists() => Ok(None),
            Location::Sqlite(_) => Store::open(location).map(Some),
            Location::Postgres(dsn) => Ok(postgres::Postgres::open_existing(dsn)?
                .map(|p| Store { db: Mutex::new(Box::new(p) as Box<dyn Backend>), location })),
        }
    }

    /// Opens an existing store for reading only: nothing is created, migrated or written. A
    /// SQLite file whose directory this process cannot write is opened `immutable` (no lock or
    /// WAL files are needed); a PostgreSQL store is opened as usual and left unwritten by the
    /// caller. A store at another schema version than this kitt's is refused.
    pub fn open_read_only(location: impl Into<Location>) -> Result<Option<Store>, StoreError> {
        let location = location.into();
        let store = match &location {
            Location::Sqlite(path) if !path.exists() => return Ok(None),
            Location::Sqlite(path) => {
                Store { db: Mutex::new(Box::new(sqlite::Sqlite::open_read_only(path)?)), location }
            }
            Location::Postgres(_) => match Store::open_existing(location)? {
                Some(s) => s,
                None => return Ok(None),
            },
        };
        let found = store.version()?;
        if found != VERSION {
            return Err(StoreError::ReadOnlyVersion { found, supported: VERSION });
        }
        Ok(Some(store))
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Box<dyn Backend>> {
        // A panic while holding the lock leaves the connection as usable as before it.
        self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn select(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.db().query(sql, params)
    }

    /// Runs `work` in one write transaction and returns what it returned.
    fn write<T: Send>(
        &mut self,
        mut work: impl FnMut(&mut dyn Tx) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        let mut out = None;
        self.db().write(&mut |tx| {
            out = Some(work(tx)?);
            Ok(())
        })?;
        // A backend answers Ok only after `work` ran to Ok, so `out` is set; never reached.
        out.ok_or(StoreError::Column { column: 0, expected: "a committed write" })
    }

    /// The schema version of the open store.
    pub fn version(&self) -> Result<u32, StoreError> {
        self.db().version()
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
        self.write(|tx| put_run(tx, &run, &records))
    }

    /// Indexes the run directory `dir` (its `report/result.json`).
    pub fn import_dir(&mut self, dir: &Path) -> Result<Indexed, StoreError> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let (report, created) = read_run_dir(&dir)?;
        self.index(&report, &dir, created)
    }

    /// The records that pass `filter`, in the order they were indexed.
    pub fn records(&self, filter: &Filter) -> Result<Vec<Record>, StoreError> {
        let (sql, values) = filtered(filter);
        self.query(&sql, &values)
    }

    /// The records that pass `filter` as the JSON array `records` would serialize to (the same
    /// fields, in the same order), written straight from the stored JSON text instead of through
    /// values (the API's hot route: a page is mostly metrics text). Each stored JSON text is
    /// checked to be JSON of the right shape, so a damaged row is an error here too. Returns how
    /// many records were written and the last one's id.
    pub fn records_json(&self, filter: &Filter, out: &mut Vec<u8>) -> Result<(usize, Option<i64>), StoreError> {
        let (sql, values) = filtered(filter);
        let rows = self.select(&sql, &values)?;
        out.push(b'[');
        let mut last = None;
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            last = Some(write_record_json(row, out)?);
        }
        out.push(b']');
        Ok((rows.len(), last))
    }

    fn query(&self, sql: &str, values: &[Value]) -> Result<Vec<Record>, StoreError> {
        self.select(sql, values)?.iter().map(record_from_row).collect()
    }

    /// One record by id.
    pub fn record(&self, id: i64) -> Result<Option<Record>, StoreError> {
        Ok(self.query(&format!("{SELECT} WHERE r.id = ?"), &[Value::Int(id)])?.into_iter().next())
    }

    /// Every record of the run `run_id`.
    pub fn run_records(&self, run_id: &str) -> Result<Vec<Record>, StoreError> {
        self.records(&Filter { run_id: Some(run_id.to_string()), ..Filter::default() })
    }

    /// The run-level entry of `run_id`.
    pub fn run(&self, run_id: &str) -> Result<Option<RunEntry>, StoreError> {
        let sql = format!("SELECT {} FROM runs WHERE run_id = ?", RUN_COLUMNS.join(", "));
        let Some(r) = self.select(&sql, &[Value::text(run_id)])?.into_iter().next() else {
            return Ok(None);
        };
        Ok(Some(RunEntry {
            run_id: r.text(0)?,
            suite: r.text(1)?,
            suite_file: r.text(2)?,
            kitt_version: r.text(3)?,
            fingerprint: r.opt_text(4)?,
            fingerprint_hash: r.opt_text(5)?,
            hardware: r.opt_text(6)?.and_then(|h| serde_json::from_str(&h).ok()),
            facts: serde_json::from_str(&r.text(7)?).unwrap_or_default(),
            started_unix_ns: r.u64(8)?,
            run_dir: PathBuf::from(r.text(10)?),
        }))
    }

    /// The largest result id (0 in an empty store): what a follower compares to see new rows,
    /// which `Filter::after_id` then lists.
    pub fn last_result_id(&self) -> Result<i64, StoreError> {
        self.select("SELECT COALESCE(MAX(id), 0) FROM results", &[])?.first().map_or(Ok(0), |r| r.int(0))
    }

    /// The id of the latest settings change (0 when none was made).
    pub fn last_setting_change(&self) -> Result<i64, StoreError> {
        self.select("SELECT COALESCE(MAX(id), 0) FROM settings_history", &[])?.first().map_or(Ok(0), |r| r.int(0))
    }

    /// Each model with results: how many, on which engines, and when the latest finished, by
    /// model name.
    pub fn models(&self) -> Result<Vec<ModelResults>, StoreError> {
        let mut out: Vec<ModelResults> = self
            .select("SELECT model, COUNT(*), MAX(finished_unix_ns) FROM results GROUP BY model ORDER BY model", &[])?
            .iter()
            .map(|r| {
                Ok(ModelResults { model: r.text(0)?, results: r.u64(1)?, last_unix_ns: r.u64(2)?, engines: Vec::new() })
            })
            .collect::<Result<_, StoreError>>()?;
        for r in self.select("SELECT DISTINCT model, engine FROM results ORDER BY model, engine", &[])? {
            let (model, engine) = (r.text(0)?, r.text(1)?);
            if let Ok(i) = out.binary_search_by(|m| m.model.as_str().cmp(&model)) {
                out[i].engines.push(engine);
            }
        }
        Ok(out)
    }

    /// How many results the store holds.
    pub fn count(&self) -> Result<u64, StoreError> {
        self.select("SELECT COUNT(*) FROM results", &[])?.first().map_or(Ok(0), |r| r.u64(0))
    }

    /// How many results failed.
    pub fn failed_count(&self) -> Result<u64, StoreError> {
        self.select("SELECT COUNT(*) FROM results WHERE status = 'failed'", &[])?.first().map_or(Ok(0), |r| r.u64(0))
    }

    /// The values each filter of a listing can take: suites, engines, models, benchmarks.
    pub fn facets(&self) -> Result<Facets, StoreError> {
        let column = |c: &str| -> Result<Vec<String>, StoreError> {
            self.select(&format!("SELECT DISTINCT {c} FROM results ORDER BY {c}"), &[])?
                .iter()
                .map(|r| r.text(0))
                .collect()
        };
        Ok(Facets {
            suites: column("suite")?,
            engines: column("engine")?,
            models: column("model")?,
            benchmarks: column("benchmark")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_json_is_exactly_what_records_serialize_to() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path().join("s.db")).unwrap();
        let record = |key: &str, error: Option<&str>, fingerprint: Option<&str>| Record {
            id: None,
            run_id: "r1".into(),
            suite: "su\"ite".into(),
            cell: CellIdentity {
                model: "m <b>".into(),
                engine: "sim".into(),
                engine_template: "sim".into(),
                benchmark: "tput".into(),
                template: "throughput".into(),
                params: BTreeMap::from([("concurrency".into(), serde_json::json!(4))]),
                swept: BTreeMap::new(),
                run_index: 2,
                sampling: BTreeMap::from([("temperature".into(), serde_json::json!(0.5))]),
            },
            key: key.into(),
            status: if error.is_some() { CellStatus::Failed } else { CellStatus::Ok },
            error: error.map(String::from),
            metrics: serde_json::json!({"ttft_ms": {"p50": 1.25, "p99": 1e-7}, "requests": 3, "note": "a\u{e9}\n"}),
            facts: BTreeMap::from([("engine.version".into(), "1 \"x\"".into())]),
            fingerprint: fingerprint.map(String::from),
            fingerprint_hash: fingerprint.map(|f| format!("{f}-hash")),
            started_unix_ns: 1,
            finished_unix_ns: u64::MAX / 4,
            run_dir: PathBuf::from("/runs/r 1"),
        };
        let records = [record("k1", None, Some("box")), record("k2", Some("budget: 3 errors"), None)];
        let run = RunEntry {
            run_id: "r1".into(),
            suite: "s".into(),
            suite_file: "s.yaml".into(),
            kitt_version: "0".into(),
            fingerprint: None,
            fingerprint_hash: None,
            hardware: None,
            facts: BTreeMap::new(),
            started_unix_ns: 1,
            run_dir: PathBuf::from("/runs/r 1"),
        };
        store.write(|tx| put_run(tx, &run, &records)).unwrap();
        for filter in [Filter::default(), Filter { limit: Some(1), ..Filter::default() }] {
            let mut out = Vec::new();
            let (count, last) = store.records_json(&filter, &mut out).unwrap();
            let expected = store.records(&filter).unwrap();
            assert_eq!((count, last), (expected.len(), expected.last().and_then(|r| r.id)));
            let written: Json = serde_json::from_slice(&out).unwrap();
            assert_eq!(written, serde_json::to_value(&expected).unwrap());
        }
    }

    #[test]
    fn upsert_updates_every_column_but_the_unique_ones() {
        let sql = upsert_sql("t", &["a", "b", "c"], "a, b");
        assert_eq!(sql, "INSERT INTO t (a, b, c) VALUES (?, ?, ?) ON CONFLICT (a, b) DO UPDATE SET c = excluded.c");
    }

    #[test]
    fn off_turns_the_store_off_and_a_url_is_postgres() {
        assert_eq!(location(Some(Path::new("off"))), None);
        assert_eq!(location(Some(Path::new("/x/r.db"))), Some(Location::Sqlite(PathBuf::from("/x/r.db"))));
        for url in ["postgres://kitt@db/results", "postgresql://kitt@%2Frun%2Fpg:5433/results"] {
            assert_eq!(location(Some(Path::new(url))), Some(Location::Postgres(url.into())));
        }
    }

    #[test]
    fn a_read_only_store_reads_what_is_there_makes_no_files_and_is_never_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Store::open_read_only(dir.path().join("none.db")).unwrap().is_none(), "readers never create one");
        let path = dir.path().join("r.db");
        Store::open(&path).unwrap().change_setting("engine.health_timeout", Some("\"5m\""), "test").unwrap();
        let files = || {
            let mut f: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            f.sort();
            f
        };
        let before = files();
        for immutable in [true, false] {
            let db = sqlite::Sqlite::open_read_only_as(&path, immutable).unwrap();
            let mut store = Store { db: Mutex::new(Box::new(db)), location: Location::Sqlite(path.clone()) };
            assert_eq!(store.version().unwrap(), VERSION);
            assert_eq!(store.settings().unwrap().len(), 1);
            assert!(store.change_setting("engine.health_timeout", None, "test").is_err(), "it takes no write");
            if immutable {
                assert_eq!(files(), before, "an immutable open makes no -shm or -wal file");
            }
        }
        let old = dir.path().join("old.db");
        rusqlite::Connection::open(&old).unwrap().pragma_update(None, "user_version", 1).unwrap();
        assert!(matches!(Store::open_read_only(&old), Err(StoreError::ReadOnlyVersion { found: 1, .. })));
    }

    #[test]
    fn a_password_is_never_shown() {
        let shown = Location::from("postgres://kitt:secret@db:5432/results?sslmode=disable").to_string();
        assert_eq!(shown, "postgres://kitt:***@db:5432/results?sslmode=disable");
        let plain = "postgresql://kitt@%2Frun%2Fpg/results";
        assert_eq!(Location::from(plain).to_string(), plain);
    }
}
