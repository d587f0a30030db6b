//! The results store: round trips, the migration from a version-1 store, idempotent import,
//! concurrent writers (threads and processes), the `kitt results` commands, and `kitt apply`
//! indexing its run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kitt::report::RunReport;
use kitt::store::{self, Filter, Store, StoreError};
use serde_json::{Value as Json, json};

/// A synthetic run report: `cells` cells × `runs` repetitions, ttft p50 from `ttft`.
fn report(run_id: &str, suite: &str, engine: &str, cells: usize, runs: u32, ttft: f64) -> Json {
    let mut out = Vec::new();
    for c in 0..cells {
        for i in 0..runs {
            out.push(json!({
                "schema": "kitt.result/v1",
                "cell": {
                    "model": "tiny", "engine": engine, "engine_template": "sim", "benchmark": "tput",
                    "template": "throughput", "params": {"concurrency": c + 1, "requests": 8},
                    "swept": {"concurrency": c + 1}, "run_index": i, "sampling": {"temperature": 0.0},
                },
                "status": "ok",
                "metrics": {
                    "requests": 8, "errors": 0, "error_rate": 0.0, "request_throughput": 10.0 + c as f64,
                    "output_token_throughput": 400.0, "ttft_ms": {"p50": ttft + i as f64, "p99": ttft * 1.5},
                },
                "provenance": {
                    "run_id": run_id, "key": format!("{run_id}-key-{c}-{i}"), "attempt": 0, "reused": false,
                    "started_unix_ns": 1_790_000_000_000_000_000u64 + (c as u64 * 10 + i as u64) * 1_000_000_000,
                    "finished_unix_ns": 1_790_000_000_500_000_000u64 + (c as u64 * 10 + i as u64) * 1_000_000_000,
                    "facts": {"engine.version": "kitt-sim 0.1.0", "engine.image": "kitt/sim:1",
                              "engine.image_digest": "sha256:abc", "machine": "nogpu_test", "machine.hash": "0123456789abcdef",
                              "kitt.version": "0.1.0", "metrics.schema": "1"},
                    "prompts_exact": true,
                },
            }));
        }
    }
    json!({
        "schema": "kitt.report/v1", "run_id": run_id, "suite": suite, "suite_file": "suite.yaml",
        "kitt_version": "0.1.0",
        "facts": {"kitt.version": "0.1.0", "machine": "nogpu_test", "machine.hash": "0123456789abcdef"},
        "cells": out, "failed_cells": 0,
    })
}

/// Writes a run directory holding `report` (and its run.json, created at `created_unix_ns`).
fn run_dir(root: &Path, report: &Json, created_unix_ns: u64) -> PathBuf {
    let id = report["run_id"].as_str().unwrap();
    let dir = root.join(id);
    std::fs::create_dir_all(dir.join("report")).unwrap();
    std::fs::write(dir.join("report/result.json"), serde_json::to_vec_pretty(report).unwrap()).unwrap();
    let meta = json!({"id": id, "identity": "suite", "suite": report["suite"], "file": "suite.yaml",
                      "created_unix_ns": created_unix_ns});
    std::fs::write(dir.join("run.json"), meta.to_string()).unwrap();
    dir
}

fn kitt(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kitt"));
    c.env("KITT_STORE", store).env("NO_COLOR", "1");
    c
}

fn stdout_json(out: &Output) -> Json {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_report_round_trips_through_the_store() {
    let d = tempfile::tempdir().unwrap();
    let r = report("run-a", "s", "sim", 2, 3, 20.0);
    let dir = run_dir(d.path(), &r, 1_789_000_000_000_000_000);
    let mut store = Store::open(&d.path().join("nested/dir/results.db")).unwrap();
    assert_eq!(store.version().unwrap(), store::VERSION);
    let done = store.import_dir(&dir).unwrap();
    assert_eq!((done.cells, done.inserted, done.updated, done.removed), (6, 6, 0, 0));

    let parsed: RunReport = serde_json::from_value(r).unwrap();
    let (run, expected) = store::from_report(&parsed, &dir.canonicalize().unwrap(), Some(1_789_000_000_000_000_000));
    let got = store.run_records("run-a").unwrap();
    assert_eq!(got.len(), 6);
    for (g, e) in got.iter().zip(&expected) {
        assert!(g.id.is_some());
        assert_eq!(store::Record { id: None, ..g.clone() }, *e);
    }
    assert_eq!(got[0].fact("engine.image_digest"), Some("sha256:abc"));
    assert_eq!(got[0].fingerprint_hash.as_deref(), Some("0123456789abcdef"));
    assert_eq!(store.run("run-a").unwrap().unwrap(), run);
    assert_eq!(store.record(got[3].id.unwrap()).unwrap().as_ref(), Some(&got[3]));
    assert_eq!(store.record(999).unwrap(), None);
}

/// Version 1 exactly as it shipped, written by hand: the test must not borrow the code's SQL.
const V1: &str = "CREATE TABLE results (
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, cell_key TEXT NOT NULL, suite TEXT NOT NULL,
    model TEXT NOT NULL, engine TEXT NOT NULL, engine_template TEXT NOT NULL, benchmark TEXT NOT NULL,
    benchmark_template TEXT NOT NULL, params TEXT NOT NULL, run_index INTEGER NOT NULL,
    status TEXT NOT NULL, metrics TEXT NOT NULL, started_unix_ns INTEGER NOT NULL,
    finished_unix_ns INTEGER NOT NULL, run_dir TEXT NOT NULL, UNIQUE (run_id, cell_key));
    INSERT INTO results (run_id, cell_key, suite, model, engine, engine_template, benchmark,
        benchmark_template, params, run_index, status, metrics, started_unix_ns, finished_unix_ns, run_dir)
    VALUES ('old-run', 'k1', 'old', 'tiny', 'sim', 'sim', 'tput', 'throughput', '{\"requests\":8}', 0, 'ok',
        '{\"ttft_ms\":{\"p50\":21.5}}', 1700000000000000000, 1700000001000000000, '/gone/old-run'),
        ('old-run', 'k2', 'old', 'tiny', 'sim', 'sim', 'tput', 'throughput', '{\"requests\":8}', 1, 'failed',
        '{}', 1700000002000000000, 1700000003000000000, '/gone/old-run');
    PRAGMA user_version = 1;";

#[test]
fn a_version_1_store_is_upgraded_in_place() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("results.db");
    rusqlite::Connection::open(&path).unwrap().execute_batch(V1).unwrap();

    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.version().unwrap(), 2);
    let rows = store.run_records("old-run").unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].metric("/ttft_ms/p50"), Some(21.5));
    assert_eq!(rows[1].status, kitt::report::CellStatus::Failed);
    assert!(rows[0].facts.is_empty() && rows[0].cell.swept.is_empty() && rows[0].cell.sampling.is_empty());
    // The runs table was backfilled from the old rows.
    let run = store.run("old-run").unwrap().unwrap();
    assert_eq!((run.suite.as_str(), run.started_unix_ns), ("old", 1_700_000_000_000_000_000));
    // Filters that need version-2 columns work on old rows too.
    let since = Filter { since_unix_ns: Some(1_600_000_000_000_000_000), ..Filter::default() };
    assert_eq!(store.records(&since).unwrap().len(), 2);

    // Re-indexing the same run now fills the facts without adding rows.
    let mut r = report("old-run", "old", "sim", 1, 2, 21.5);
    for (i, c) in r["cells"].as_array_mut().unwrap().iter_mut().enumerate() {
        c["provenance"]["key"] = json!(format!("k{}", i + 1));
    }
    let dir = run_dir(d.path(), &r, 1_700_000_000_000_000_000);
    let done = store.import_dir(&dir).unwrap();
    assert_eq!((done.inserted, done.updated), (0, 2));
    assert_eq!(store.count().unwrap(), 2);
    assert_eq!(store.run_records("old-run").unwrap()[0].fact("engine.version"), Some("kitt-sim 0.1.0"));
    drop(store);
    // Opening an up-to-date store again changes nothing.
    assert_eq!(Store::open(&path).unwrap().version().unwrap(), 2);
}

#[test]
fn a_failed_migration_leaves_the_store_as_it_was_and_a_newer_store_is_refused() {
    let d = tempfile::tempdir().unwrap();
    // A version-1 store that already has a `runs` table: migration 2 fails half way.
    let path = d.path().join("clash.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(V1).unwrap();
    conn.execute_batch("CREATE TABLE runs (x INTEGER)").unwrap();
    drop(conn);
    match Store::open(&path) {
        Err(StoreError::Migration { to: 2, .. }) => {}
        other => panic!("expected a failed migration to 2, got {:?}", other.err()),
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, 1);
    let columns: i64 = conn.query_row("SELECT COUNT(*) FROM pragma_table_info('results')", [], |r| r.get(0)).unwrap();
    assert_eq!(columns, 16, "the ALTER TABLEs before the failure were rolled back");

    let newer = d.path().join("newer.db");
    rusqlite::Connection::open(&newer).unwrap().execute_batch("PRAGMA user_version = 99").unwrap();
    let e = Store::open(&newer).err().expect("a newer store is refused");
    assert!(matches!(e, StoreError::Newer { found: 99, supported: 2 }), "{e}");
    assert!(e.to_string().contains("use a newer kitt"), "{e}");
}

#[test]
fn importing_a_run_twice_adds_no_rows_and_a_shrunk_run_loses_its_stale_rows() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("results.db");
    let dir = run_dir(d.path(), &report("run-x", "s", "sim", 3, 2, 20.0), 1);
    let first = kitt(&db).args(["results", "import"]).arg(&dir).output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("6 result(s): 6 new, 0 updated, 0 removed"));
    let ids = |out: &Output| -> Vec<i64> {
        stdout_json(out).as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect()
    };
    let before = ids(&kitt(&db).args(["results", "list", "--output", "json"]).output().unwrap());
    let second = kitt(&db).args(["results", "import"]).arg(&dir).output().unwrap();
    assert!(String::from_utf8_lossy(&second.stdout).contains("6 result(s): 0 new, 6 updated, 0 removed"));
    let after = ids(&kitt(&db).args(["results", "list", "--output", "json"]).output().unwrap());
    assert_eq!(before, after, "same rows, same ids");

    // The run resumed with an edited suite: one cell fewer.
    run_dir(d.path(), &report("run-x", "s", "sim", 2, 2, 20.0), 1);
    let third = kitt(&db).args(["results", "import", "--output", "json"]).arg(&dir).output().unwrap();
    assert_eq!(stdout_json(&third)["runs"][0]["indexed"]["removed"], 2);
    assert_eq!(Store::open(&db).unwrap().count().unwrap(), 4);

    // A directory that is not a run is an error naming it; the others still import.
    let not_run = d.path().join("nothing");
    std::fs::create_dir_all(&not_run).unwrap();
    let out = kitt(&db).args(["results", "import"]).arg(&not_run).arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no report/result.json"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("run-x"));
}

#[test]
fn concurrent_threads_lose_no_rows() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("results.db");
    let reports: Vec<RunReport> = (0..8)
        .map(|t| serde_json::from_value(report(&format!("thread-{t}"), "s", "sim", 10, 5, 20.0)).unwrap())
        .collect();
    std::thread::scope(|s| {
        for r in &reports {
            let db = db.clone();
            s.spawn(move || {
                // Each writer opens its own connection, as separate processes would.
                let mut store = Store::open(&db).unwrap();
                for _ in 0..3 {
                    store.index(r, Path::new("/runs"), None).unwrap();
                }
            });
        }
    });
    assert_eq!(Store::open(&db).unwrap().count().unwrap(), 8 * 50);
}

#[test]
fn concurrent_processes_lose_no_rows() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("results.db");
    let dirs: Vec<PathBuf> = (0..6)
        .map(|p| run_dir(&d.path().join("runs"), &report(&format!("proc-{p}"), "s", "sim", 20, 5, 20.0), 1))
        .collect();
    // Every process starts on a missing store, so creation and migration race too.
    let children: Vec<_> = dirs
        .iter()
        .map(|dir| {
            kitt(&db)
                .args(["results", "import", "--output", "json"])
                .arg(dir)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(Store::open(&db).unwrap().count().unwrap(), 6 * 100);
}

#[test]
fn list_filters_show_and_export() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("results.db");
    let day = 86_400_000_000_000u64;
    let old = run_dir(d.path(), &report("run-old", "alpha", "sim", 1, 2, 20.0), 1_700_000_000_000_000_000);
    let new = run_dir(d.path(), &report("run-new", "beta", "llama", 2, 3, 30.0), 1_700_000_000_000_000_000 + 30 * day);
    let out = kitt(&db).args(["results", "import"]).arg(&old).arg(&new).output().unwrap();
    assert!(out.status.success());

    let count = |args: &[&str]| -> usize {
        let mut c = kitt(&db);
        c.args(["results", "list", "--output", "json"]).args(args);
        stdout_json(&c.output().unwrap()).as_array().unwrap().len()
    };
    assert_eq!(count(&[]), 8);
    assert_eq!(count(&["--suite", "alpha"]), 2);
    assert_eq!(count(&["--engine", "llama"]), 6);
    assert_eq!(count(&["--engine", "sim"]), 8, "the template matches too");
    assert_eq!(count(&["--model", "tiny", "--suite", "beta"]), 6);
    assert_eq!(count(&["--model", "big"]), 0);
    assert_eq!(count(&["--fingerprint", "01234567"]), 8);
    assert_eq!(count(&["--fingerprint", "nogpu"]), 8);
    assert_eq!(count(&["--fingerprint", "fedcba"]), 0);
    // 2023-11-14 is the old run's day; the new one is 30 days later.
    assert_eq!(count(&["--since", "2023-11-20"]), 6);
    assert_eq!(count(&["--since", "2023-11-14T00:00:00Z"]), 8);
    assert_eq!(count(&["--since", "1h"]), 0);
    let bad = kitt(&db).args(["results", "list", "--since", "yesterday-ish"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected a date"));

    let text = kitt(&db).args(["results", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.lines().next().unwrap().starts_with("id  run"), "{text}");
    assert!(text.contains("llama tiny tput concurrency=2"), "{text}");

    // show by run id: one aggregate per cell, over its repetitions.
    let shown = stdout_json(&kitt(&db).args(["results", "show", "run-new", "--output", "json"]).output().unwrap());
    let aggs = shown["aggregates"].as_array().unwrap();
    assert_eq!(aggs.len(), 2);
    assert_eq!(aggs[0]["runs"], 3);
    let ttft = aggs[0]["metrics"].as_array().unwrap().iter().find(|m| m["name"] == "ttft.p50").unwrap();
    assert_eq!(
        (ttft["mean"].as_f64(), ttft["min"].as_f64(), ttft["max"].as_f64()),
        (Some(31.0), Some(30.0), Some(32.0))
    );
    assert_eq!(ttft["stddev"].as_f64(), Some(1.0));
    let ci = ttft["ci95"].as_array().unwrap();
    let half = 4.302652729749462 / 3f64.sqrt();
    assert!((ci[0].as_f64().unwrap() - (31.0 - half)).abs() < 1e-6, "{ci:?}");
    // show by result id: the result and its repetitions.
    let id = aggs[1]["result_ids"][0].as_i64().unwrap();
    let one = stdout_json(&kitt(&db).args(["results", "show", &id.to_string(), "--output", "json"]).output().unwrap());
    assert_eq!(one["result"]["cell"]["params"]["concurrency"], 2);
    assert_eq!(one["repetitions"]["result_ids"].as_array().unwrap().len(), 3);
    let text = kitt(&db).args(["results", "show", &id.to_string()]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("engine.image_digest") && text.contains("95% CI"), "{text}");
    let missing = kitt(&db).args(["results", "show", "nope"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no run `nope`"));

    let csv = kitt(&db).args(["results", "export", "--format", "csv", "--suite", "beta"]).output().unwrap();
    let csv = String::from_utf8(csv.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 7);
    assert!(lines[0].starts_with("id,run_id,suite,model,engine,") && lines[0].contains(",ttft.p50,"), "{}", lines[0]);
    assert!(
        lines[1].contains(",\"{\"\"concurrency\"\":1,\"\"requests\"\":8}\","),
        "params are one quoted field: {}",
        lines[1]
    );
    let json = stdout_json(&kitt(&db).args(["results", "export", "--format", "json"]).output().unwrap());
    assert_eq!(json.as_array().unwrap().len(), 8);
    assert_eq!(json[0]["metrics"]["ttft_ms"]["p50"], 20.0);
}

#[test]
fn reading_commands_never_create_a_store() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("none/results.db");
    let out = kitt(&db).args(["results", "list", "--output", "json"]).output().unwrap();
    assert_eq!(stdout_json(&out), json!([]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no results store at"));
    assert!(!db.exists());
    // --store wins over KITT_STORE.
    let other = d.path().join("other.db");
    let dir = run_dir(d.path(), &report("r", "s", "sim", 1, 1, 20.0), 1);
    let out = kitt(&db).args(["results", "import", "--store"]).arg(&other).arg(&dir).output().unwrap();
    assert!(out.status.success());
    assert!(other.exists() && !db.exists());
}

const SUITE: &str = "apiVersion: kitt/v1
kind: Suite
metadata: {name: store-apply}
spec:
  models: [{name: tiny}]
  engines: [{name: sim, template: sim, params: {ttft_ms: 1, itl_ms: 1}}]
  benchmarks: [{name: lat, template: latency, params: {requests: 3, max_tokens: 4, input_tokens: 8}}]
  runs: 2
";

#[test]
fn apply_indexes_its_run_and_a_broken_store_is_only_a_warning() {
    let d = tempfile::tempdir().unwrap();
    let suite = d.path().join("suite.yaml");
    std::fs::write(&suite, SUITE).unwrap();
    let apply = |store: &Path, runs: &str| {
        kitt(store)
            .env("KITT_RUNS_DIR", d.path().join(runs))
            .env("KITT_HOST_LOCK", d.path().join("host.lock"))
            .args(["apply", "--output", "json"])
            .arg(&suite)
            .output()
            .unwrap()
    };
    let db = d.path().join("results.db");
    let out = apply(&db, "runs");
    let json = stdout_json(&out);
    assert_eq!(json["store"]["indexed"]["cells"], 2, "{json}");
    let store = Store::open(&db).unwrap();
    let rows = store.run_records(json["run_id"].as_str().unwrap()).unwrap();
    assert_eq!(rows.iter().map(|r| r.cell.run_index).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(rows[0].fact("engine.version").map(|v| v.starts_with("kitt-sim")), Some(true));
    assert!(rows[0].fingerprint_hash.is_some() && rows[0].metric("/ttft_ms/p50").is_some());
    assert_eq!(rows[0].run_dir, PathBuf::from(json["run_dir"].as_str().unwrap()).canonicalize().unwrap());

    // A store that cannot be created: the run still succeeds, with a warning saying how to index it.
    let blocker = d.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let out = apply(&blocker.join("results.db"), "runs2");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: the run is complete but the results store") && err.contains("kitt results import"),
        "{err}"
    );
    let json: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["store"]["error"].is_string(), "{json}");
    assert!(Path::new(json["run_dir"].as_str().unwrap()).join("report/result.json").exists());

    // KITT_STORE=off: no store at all.
    let out = apply(Path::new("off"), "runs3");
    assert_eq!(stdout_json(&out)["store"], Json::Null);
}
