//! `kitt results`: the results store from the command line (list, show, export, import), and
//! the indexing `kitt apply` does when a run finishes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value as Json, json};

use super::{EXIT_FAILED, Output, print_json};
use crate::compare::{self, metric::KEY_METRICS, render};
use crate::report::{CellStatus, RunReport};
use crate::store::{self, Filter, Location, Record, Store};

#[derive(Debug, Args)]
pub struct StoreArg {
    /// The results store: a SQLite file, or a postgres:// URL (default: $KITT_STORE, else
    /// $XDG_DATA_HOME/kitt/results.db, else ~/.local/share/kitt/results.db).
    #[arg(long, value_name = "PATH|URL")]
    pub store: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    #[arg(long)]
    pub suite: Option<String>,
    /// An engine instance name or an engine template.
    #[arg(long)]
    pub engine: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    /// A fingerprint hash or its prefix, or a part of the identity string (`kitt fingerprint`).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Runs started since: a date (2026-11-01), an RFC 3339 time, or a duration ago (7d, 12h).
    #[arg(long, value_name = "DATE", value_parser = parse_since)]
    pub since: Option<u64>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            suite: self.suite.clone(),
            engine: self.engine.clone(),
            model: self.model.clone(),
            fingerprint: self.fingerprint.clone(),
            since_unix_ns: self.since,
            ..Filter::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ExportFormat {
    #[default]
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum ResultsCommand {
    /// Results in the store, in the order they were indexed.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// One result (by id) or one run (by run id), with repetitions aggregated.
    Show {
        /// A result id (`kitt results list`) or a run id.
        id: String,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Results (all, or those the filters select) as JSON or CSV on stdout; or, with --to, every
    /// row of the store (runs, results, settings and their history) copied into another store.
    Export {
        #[arg(long, value_enum, default_value_t)]
        format: ExportFormat,
        /// Copy the whole store into this one (a SQLite file or a postgres:// URL; created if
        /// needed). Idempotent: copying again adds no rows.
        #[arg(long, value_name = "PATH|URL", conflicts_with_all = ["format", "suite", "engine", "model", "fingerprint", "since"])]
        to: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Index run directories into the store; importing a run again updates its rows.
    Import {
        #[arg(required = true, value_name = "RUN_DIR")]
        run_dirs: Vec<PathBuf>,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

/// `--since`: a date, an RFC 3339 time (UTC unless it says otherwise), or a duration ago.
pub fn parse_since(s: &str) -> Result<u64, String> {
    let to_ns = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let time = if s.len() == 10 { format!("{s}T00:00:00Z") } else { s.to_string() };
    if let Ok(t) = humantime::parse_rfc3339_weak(&time) {
        return Ok(to_ns(t));
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return SystemTime::now()
            .checked_sub(d)
            .map(to_ns)
            .ok_or_else(|| format!("{s} ago is before any time kitt knows"));
    }
    Err("expected a date (2026-11-01), a time (2026-11-01T12:00:00Z) or a duration ago (7d, 12h)".into())
}

fn time_text(ns: u64) -> String {
    if ns == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

fn store_path(flag: Option<&Path>) -> Result<Location, i32> {
    store::location(flag).ok_or_else(|| {
        eprintln!("error: the results store is turned off (KITT_STORE=off); give --store PATH|URL");
        EXIT_FAILED
    })
}

/// Opens the store for reading: `None` (after saying so) when it does not exist yet.
fn open_existing(flag: Option<&Path>) -> Result<Option<Store>, i32> {
    let path = store_path(flag)?;
    match Store::open_existing(&path) {
        Ok(Some(s)) => Ok(Some(s)),
        Ok(None) => {
            eprintln!(
                "no results store at {path} yet: `kitt apply` creates it, `kitt results import RUN_DIR` fills it"
            );
            Ok(None)
        }
        Err(e) => {
            eprintln!("error: results store {path}: {e}");
            Err(EXIT_FAILED)
        }
    }
}

pub fn run(command: ResultsCommand) -> i32 {
    let result = match command {
        ResultsCommand::List { filter, store, output } => list(&filter, store.store.as_deref(), output),
        ResultsCommand::Show { id, store, output } => show(&id, store.store.as_deref(), output),
        ResultsCommand::Export { to: Some(to), store, output, .. } => copy(store.store.as_deref(), &to, output),
        ResultsCommand::Export { format, filter, store, .. } => export(format, &filter, store.store.as_deref()),
        ResultsCommand::Import { run_dirs, store, output } => import(&run_dirs, store.store.as_deref(), output),
    };
    result.unwrap_or_else(|code| code)
}

fn fail(store: &Store, e: store::StoreError) -> i32 {
    eprintln!("error: results store {}: {e}", store.location());
    EXIT_FAILED
}

fn status_text(s: CellStatus) -> &'static str {
    match s {
        CellStatus::Ok => "ok",
        CellStatus::Failed => "failed",
    }
}

fn metric_text(r: &Record, pointer: &str) -> String {
    r.metric(pointer).map_or("-".into(), render::num)
}

fn list(filter: &FilterArgs, flag: Option<&Path>, output: Output) -> Result<i32, i32> {
    let records = match open_existing(flag)? {
        Some(store) => store.records(&filter.filter()).map_err(|e| fail(&store, e))?,
        None => Vec::new(),
    };
    match output {
        Output::Json => print_json(&records),
        Output::Text => {
            let mut rows = vec![
                ["id", "run", "suite", "cell", "run#", "status", "req/s", "TTFT p50 ms", "machine", "started"]
                    .map(String::from)
                    .to_vec(),
            ];
            for r in &records {
                rows.push(vec![
                    r.id.map_or("-".into(), |i| i.to_string()),
                    r.run_id.clone(),
                    r.suite.clone(),
                    r.label(),
                    r.cell.run_index.to_string(),
                    status_text(r.status).into(),
                    metric_text(r, "/request_throughput"),
                    metric_text(r, "/ttft_ms/p50"),
                    r.fingerprint_hash.clone().unwrap_or_else(|| "-".into()),
                    time_text(r.started_unix_ns),
                ]);
            }
            print!("{}", columns(&rows));
        }
    }
    Ok(0)
}

fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The repetitions of `record` in its run (itself included), from the store.
fn repetitions(store: &Store, record: &Record) -> Result<Vec<Record>, store::StoreError> {
    let key = compare::Identity::of(&record.cell).key();
    Ok(store.run_records(&record.run_id)?.into_iter().filter(|r| compare::Identity::of(&r.cell).key() == key).collect())
}

fn show(id: &str, flag: Option<&Path>, output: Output) -> Result<i32, i32> {
    let Some(store) = open_existing(flag)? else {
        return Err(EXIT_FAILED);
    };
    if let Ok(n) = id.parse::<i64>() {
        let Some(record) = store.record(n).map_err(|e| fail(&store, e))? else {
            eprintln!("error: no result {n} in {} (see `kitt results list`)", store.location());
            return Err(EXIT_FAILED);
        };
        let reps = repetitions(&store, &record).map_err(|e| fail(&store, e))?;
        let groups = compare::group(&reps);
        let aggregate = groups.first().map(compare::aggregate);
        match output {
            Output::Json => print_json(&json!({"result": record, "repetitions": aggregate})),
            Output::Text => {
                print!("{}", record_text(&record));
                if let Some(a) = &aggregate {
                    println!("\nrepetitions of this cell in run {}:", record.run_id);
                    print!("{}", render::aggregate_text(a, "  "));
                }
            }
        }
        return Ok(0);
    }
    let records = store.run_records(id).map_err(|e| fail(&store, e))?;
    if records.is_empty() {
        eprintln!("error: no run `{id}` in {} (see `kitt results list`)", store.location());
        return Err(EXIT_FAILED);
    }
    let run = store.run(id).map_err(|e| fail(&store, e))?;
    let aggregates: Vec<compare::Aggregate> = compare::group(&records).iter().map(compare::aggregate).collect();
    match output {
        Output::Json => print_json(&json!({"run": run, "aggregates": aggregates})),
        Output::Text => {
            let first = &records[0];
            println!("run {} of suite `{}`: {} result(s)", id, first.suite, records.len());
            println!("  machine  {}", first.fingerprint.as_deref().unwrap_or("-"));
            println!("  started  {}", time_text(run.as_ref().map_or(first.started_unix_ns, |r| r.started_unix_ns)));
            println!("  dir      {}", first.run_dir.display());
            for a in &aggregates {
                println!();
                print!("{}", render::aggregate_text(a, ""));
            }
        }
    }
    Ok(0)
}

fn record_text(r: &Record) -> String {
    let mut out = format!(
        "result {} of run {} (suite `{}`): {}\n",
        r.id.unwrap_or_default(),
        r.run_id,
        r.suite,
        status_text(r.status)
    );
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<25}{v}\n"));
    line("model", r.cell.model.clone());
    line("engine", format!("{} (template {})", r.cell.engine, r.cell.engine_template));
    line("benchmark", format!("{} (template {})", r.cell.benchmark, r.cell.template));
    let params: Vec<String> =
        r.cell.params.iter().map(|(k, v)| format!("{k}={}", crate::template::scalar_text(v))).collect();
    line("params", params.join(" "));
    line("run index", r.cell.run_index.to_string());
    if let Some(e) = &r.error {
        line("error", e.clone());
    }
    for (k, v) in &r.facts {
        line(k, v.clone());
    }
    line(
        "fingerprint",
        format!("{} ({})", r.fingerprint.as_deref().unwrap_or("-"), r.fingerprint_hash.as_deref().unwrap_or("-")),
    );
    line("started", time_text(r.started_unix_ns));
    line("finished", time_text(r.finished_unix_ns));
    line("run dir", r.run_dir.display().to_string());
    for k in KEY_METRICS {
        line(k.name, format!("{} {}", metric_text(r, k.pointer), k.unit).trim_end().to_string());
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// One line per result: identity, facts, the machine, and the key metrics, unformatted.
fn csv(records: &[Record]) -> String {
    let mut header: Vec<String> = [
        "id",
        "run_id",
        "suite",
        "model",
        "engine",
        "engine_template",
        "benchmark",
        "benchmark_template",
        "params",
        "run_index",
        "status",
        "engine_version",
        "engine_image",
        "engine_image_digest",
        "fingerprint",
        "fingerprint_hash",
        "started",
        "run_dir",
    ]
    .map(String::from)
    .to_vec();
    header.extend(KEY_METRICS.iter().map(|k| k.name.to_string()));
    let mut out = header.join(",");
    out.push('\n');
    for r in records {
        let mut fields = vec![
            r.id.map_or(String::new(), |i| i.to_string()),
            r.run_id.clone(),
            r.suite.clone(),
            r.cell.model.clone(),
            r.cell.engine.clone(),
            r.cell.engine_template.clone(),
            r.cell.benchmark.clone(),
            r.cell.template.clone(),
            serde_json::to_string(&r.cell.params).unwrap_or_default(),
            r.cell.run_index.to_string(),
            status_text(r.status).into(),
            r.fact("engine.version").unwrap_or_default().into(),
            r.fact("engine.image").unwrap_or_default().into(),
            r.fact("engine.image_digest").unwrap_or_default().into(),
            r.fingerprint.clone().unwrap_or_default(),
            r.fingerprint_hash.clone().unwrap_or_default(),
            if r.started_unix_ns == 0 { String::new() } else { time_text(r.started_unix_ns) },
            r.run_dir.display().to_string(),
        ];
        fields.extend(KEY_METRICS.iter().map(|k| r.metric(k.pointer).map_or(String::new(), |v| v.to_string())));
        out.push_str(&fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

fn export(format: ExportFormat, filter: &FilterArgs, flag: Option<&Path>) -> Result<i32, i32> {
    let records = match open_existing(flag)? {
        Some(store) => store.records(&filter.filter()).map_err(|e| fail(&store, e))?,
        None => Vec::new(),
    };
    match format {
        ExportFormat::Json => print_json(&records),
        ExportFormat::Csv => print!("{}", csv(&records)),
    }
    Ok(0)
}

fn import(dirs: &[PathBuf], flag: Option<&Path>, output: Output) -> Result<i32, i32> {
    let path = store_path(flag)?;
    let mut store = Store::open(&path).map_err(|e| {
        eprintln!("error: results store {path}: {e}");
        EXIT_FAILED
    })?;
    let started = Instant::now();
    let mut done = Vec::new();
    let mut failed = 0;
    for dir in dirs {
        match store.import_dir(dir) {
            Ok(i) => {
                if output == Output::Text {
                    println!(
                        "{}: run {}, {} result(s): {} new, {} updated, {} removed",
                        dir.display(),
                        i.run_id,
                        i.cells,
                        i.inserted,
                        i.updated,
                        i.removed
                    );
                }
                done.push(json!({"dir": dir, "indexed": i}));
            }
            Err(e) => {
                eprintln!("error: {e}");
                done.push(json!({"dir": dir, "error": e.to_string()}));
                failed += 1;
            }
        }
    }
    let rows: usize = done.iter().filter_map(|d| d["indexed"]["cells"].as_u64()).sum::<u64>() as usize;
    let elapsed = started.elapsed();
    match output {
        Output::Json => print_json(&json!({"store": store.location().to_string(), "runs": done})),
        Output::Text => eprintln!(
            "{rows} result(s) from {} run(s) indexed into {} in {} ms",
            dirs.len() - failed,
            store.location(),
            elapsed.as_millis()
        ),
    }
    Ok(if failed > 0 { EXIT_FAILED } else { 0 })
}

/// Indexes a finished run into the store (`kitt apply`). A failure is a warning: the run
/// directory is intact and `kitt results import` can index it later.
pub fn index_finished(flag: Option<&Path>, report: &RunReport, run_dir: &Path, quiet: bool) -> Json {
    let Some(path) = store::location(flag) else {
        return Json::Null;
    };
    let created = crate::run::dir::info(run_dir).map(|i| i.meta.created_unix_ns);
    let dir = run_dir.canonicalize().unwrap_or_else(|_| run_dir.to_path_buf());
    match Store::open(&path).and_then(|mut s| s.index(report, &dir, created)) {
        Ok(i) => {
            if !quiet {
                eprintln!("indexed {} result(s) into {path}", i.cells);
            }
            json!({"path": path.to_string(), "indexed": i})
        }
        Err(e) => {
            eprintln!(
                "warning: the run is complete but the results store {path} could not index it: {e}; \
                 `kitt results import {}` indexes it later",
                dir.display()
            );
            json!({"path": path.to_string(), "error": e.to_string()})
        }
    }
}

/// `kitt results export --to`: copies the whole store into another one.
fn copy(flag: Option<&Path>, to: &Path, output: Output) -> Result<i32, i32> {
    let Some(source) = open_existing(flag)? else {
        return Err(EXIT_FAILED);
    };
    let target_location = Location::parse(to);
    if &target_location == source.location() {
        eprintln!("error: --to names the store being exported ({target_location})");
        return Err(EXIT_FAILED);
    }
    let mut target = Store::open(&target_location).map_err(|e| {
        eprintln!("error: results store {target_location}: {e}");
        EXIT_FAILED
    })?;
    let started = Instant::now();
    let done = source.export_to(&mut target).map_err(|e| {
        eprintln!("error: copying {} into {target_location}: {e}", source.location());
        EXIT_FAILED
    })?;
    let elapsed = started.elapsed();
    let counts = |s: &Store| -> Result<Json, i32> {
        let c = s.row_counts().map_err(|e| fail(s, e))?;
        Ok(c.into_iter().map(|(t, n)| (t.to_string(), Json::from(n))).collect::<serde_json::Map<_, _>>().into())
    };
    let (from_rows, to_rows) = (counts(&source)?, counts(&target)?);
    match output {
        Output::Json => print_json(&json!({
            "from": source.location().to_string(), "to": target_location.to_string(), "copied": done,
            "rows": {"from": from_rows, "to": to_rows}, "elapsed_ms": elapsed.as_millis() as u64,
        })),
        Output::Text => println!(
            "{} run(s), {} result(s) ({} new, {} already there), {} setting(s), {} new history entr(ies) copied from {} into {target_location} in {} ms",
            done.runs,
            done.results,
            done.inserted,
            done.updated,
            done.settings,
            done.history_inserted,
            source.location(),
            elapsed.as_millis()
        ),
    }
    Ok(0)
}
