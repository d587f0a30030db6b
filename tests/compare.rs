//! `kitt compare` on synthetic repetitions with known differences: the real binary, run
//! directories and the store, verdicts, `--fail-if` exit codes, and matching by identity.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value as Json, json};

/// One cell of a synthetic run: benchmark instance, swept concurrency, per-run TTFT p99 (ms).
struct Cell<'a> {
    benchmark: &'a str,
    concurrency: u64,
    ttft_p99: &'a [f64],
}

fn cell<'a>(benchmark: &'a str, concurrency: u64, ttft_p99: &'a [f64]) -> Cell<'a> {
    Cell { benchmark, concurrency, ttft_p99 }
}

/// Writes a run directory under `root`. Every key metric follows the TTFT p99 `v`: p50 is
/// 0.9 v, throughput 1000 / v. Keys are salted per run, as a new image would change them.
fn run(root: &Path, run_id: &str, engine: &str, image: &str, cells: &[Cell]) -> PathBuf {
    let mut out = Vec::new();
    for c in cells {
        for (i, v) in c.ttft_p99.iter().enumerate() {
            let metrics = if v.is_nan() {
                json!({"requests": 8, "errors": 8, "error_rate": 1.0, "request_throughput": 0.0})
            } else {
                json!({
                    "requests": 8, "errors": 0, "error_rate": 0.0,
                    "request_throughput": 1000.0 / v, "output_token_throughput": 64_000.0 / v,
                    "ttft_ms": {"p50": 0.9 * v, "p99": v}, "itl_ms": {"p50": 4.0}, "tpot_ms": {"p50": 2.0},
                    "e2e_ms": {"p50": 100.0 + v, "p99": 120.0 + v},
                })
            };
            out.push(json!({
                "schema": "kitt.result/v1",
                "cell": {
                    "model": "tiny", "engine": engine, "engine_template": "sim", "benchmark": c.benchmark,
                    "template": "throughput", "params": {"concurrency": c.concurrency, "requests": 8},
                    "swept": {"concurrency": c.concurrency}, "run_index": i, "sampling": {},
                },
                "status": if v.is_nan() { "failed" } else { "ok" },
                "metrics": metrics,
                "provenance": {
                    "run_id": run_id, "key": format!("{run_id}-{}-{}-{i}", c.benchmark, c.concurrency),
                    "attempt": 0, "reused": false,
                    "started_unix_ns": 1_790_000_000_000_000_000u64, "finished_unix_ns": 1_790_000_001_000_000_000u64,
                    "facts": {"engine.version": "kitt-sim 0.1.0", "engine.image": image, "machine": "nogpu_test",
                              "machine.hash": "0123456789abcdef", "kitt.version": "0.1.0", "metrics.schema": "1"},
                    "prompts_exact": true,
                },
            }));
        }
    }
    let report = json!({
        "schema": "kitt.report/v1", "run_id": run_id, "suite": "cmp", "suite_file": "cmp.yaml",
        "kitt_version": "0.1.0", "facts": {}, "cells": out, "failed_cells": 0,
    });
    let dir = root.join(run_id);
    std::fs::create_dir_all(dir.join("report")).unwrap();
    std::fs::write(dir.join("report/result.json"), serde_json::to_vec(&report).unwrap()).unwrap();
    dir
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env { dir: tempfile::tempdir().unwrap() }
    }

    fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }

    fn run(&self, run_id: &str, cells: &[Cell]) -> PathBuf {
        run(&self.runs(), run_id, "sim", "kitt/sim:1", cells)
    }

    fn kitt(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_kitt"))
            .env("KITT_STORE", self.dir.path().join("results.db"))
            .env("KITT_RUNS_DIR", self.runs())
            .env("NO_COLOR", "1")
            .args(args)
            .output()
            .unwrap()
    }

    fn compare(&self, a: &Path, b: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["compare", a.to_str().unwrap(), b.to_str().unwrap()];
        args.extend(extra);
        self.kitt(&args)
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn json_of(out: &Output) -> Json {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(out), String::from_utf8_lossy(&out.stderr)))
}

fn metric<'a>(pair: &'a Json, name: &str) -> &'a Json {
    pair["metrics"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap()
}

#[test]
fn a_real_ten_percent_shift_is_significant_and_fails_the_gate() {
    let env = Env::new();
    let a = env.run("a", &[cell("tput", 1, &[100.0, 101.2, 99.1])]);
    let b = env.run("b", &[cell("tput", 1, &[110.3, 109.4, 111.0])]);
    let c = json_of(&env.compare(&a, &b, &["--output", "json"]));
    let ttft = metric(&c["pairs"][0], "ttft.p99");
    assert_eq!(ttft["verdict"], "worse", "{ttft}");
    assert!(ttft["welch"]["p"].as_f64().unwrap() < 0.01, "{ttft}");
    assert!((ttft["delta_pct"].as_f64().unwrap() - 10.0).abs() < 0.5, "{ttft}");
    assert_eq!(metric(&c["pairs"][0], "request_throughput")["verdict"], "worse");
    assert_eq!(metric(&c["pairs"][0], "itl.p50")["verdict"], "not_significant", "identical values");
    assert_eq!(c["single_run"], false);

    let out = env.compare(&a, &b, &["--fail-if", "ttft.p99 > +5%", "--fail-if", "request_throughput < -5%"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("FAIL  ttft.p99 > +5%") && t.contains("crossed and significant"), "{t}");
    assert!(t.contains("FAIL  request_throughput < -5%"), "{t}");
    assert!(t.contains("FAILED: 2 threshold check(s) failed"), "{t}");
    // Not crossed: passes although significant.
    let out = env.compare(&a, &b, &["--fail-if", "ttft.p99 > +15%", "--fail-if", "ttft.p99 > +20"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("not crossed"));
    // The same shift as an absolute threshold (ms).
    assert_eq!(env.compare(&a, &b, &["--fail-if", "ttft.p99 > 5"]).status.code(), Some(3));
    // B better than A: lower latency is a significant improvement and passes.
    let c = json_of(&env.compare(&b, &a, &["--output", "json", "--fail-if", "ttft.p99 > +5%"]));
    assert_eq!(metric(&c["pairs"][0], "ttft.p99")["verdict"], "better");
    assert_eq!(c["failed"], false);
}

#[test]
fn pure_noise_is_not_significant_and_does_not_fail_the_gate() {
    let env = Env::new();
    let a = env.run("a", &[cell("tput", 1, &[100.0, 103.1, 97.2])]);
    let b = env.run("b", &[cell("tput", 1, &[101.9, 98.4, 102.6])]);
    let out = env.compare(&a, &b, &["--output", "json", "--fail-if", "ttft.p99 > +0.5%"]);
    assert_eq!(out.status.code(), Some(0));
    let c = json_of(&out);
    let ttft = metric(&c["pairs"][0], "ttft.p99");
    assert_eq!(ttft["verdict"], "not_significant", "{ttft}");
    assert!(ttft["welch"]["p"].as_f64().unwrap() > 0.5, "{ttft}");
    let t = &c["thresholds"][0];
    assert_eq!(
        (t["crossed"].as_bool(), t["failed"].as_bool(), t["basis"].as_str()),
        (Some(true), Some(false), Some("welch"))
    );
    let out = env.compare(&a, &b, &["--fail-if", "ttft.p99 > +0.5%"]);
    assert!(text(&out).contains("crossed but not significant"), "{}", text(&out));
    assert!(text(&out).contains("thresholds passed"));
}

#[test]
fn single_runs_give_no_verdict_and_gate_on_the_point_estimate() {
    let env = Env::new();
    let a = env.run("a", &[cell("tput", 1, &[100.0])]);
    let b = env.run("b", &[cell("tput", 1, &[110.0])]);
    let out = env.compare(&a, &b, &["--fail-if", "ttft.p99 > +5%"]);
    assert_eq!(out.status.code(), Some(3));
    let t = text(&out);
    assert!(t.contains("no verdict (1 run)"), "{t}");
    assert!(t.contains("crossed on the point estimate (single run)"), "{t}");
    assert!(t.contains("no significance verdict is possible"), "{t}");
    assert_eq!(env.compare(&a, &b, &["--fail-if", "ttft.p99 > +20%"]).status.code(), Some(0));
    let c = json_of(&env.compare(&a, &b, &["--output", "json"]));
    assert_eq!(metric(&c["pairs"][0], "ttft.p99")["verdict"], "no_verdict");
    assert_eq!(metric(&c["pairs"][0], "ttft.p99")["welch"], Json::Null);
    assert_eq!(c["single_run"], true);
    // One run against three is still no test.
    let b3 = env.run("b3", &[cell("tput", 1, &[110.0, 111.0, 109.0])]);
    let c = json_of(&env.compare(&a, &b3, &["--output", "json"]));
    assert_eq!(metric(&c["pairs"][0], "ttft.p99")["verdict"], "no_verdict");
}

#[test]
fn cells_match_by_identity_across_different_keys_and_facts_show_side_by_side() {
    let env = Env::new();
    let a = env.run("a", &[cell("tput", 1, &[100.0, 101.0]), cell("tput", 4, &[200.0, 202.0])]);
    // B: another image (so other keys), cells in another order, one cell more.
    let b = run(
        &env.runs(),
        "b",
        "sim",
        "kitt/sim:2",
        &[cell("latency", 1, &[50.0, 51.0]), cell("tput", 4, &[200.5, 201.5]), cell("tput", 1, &[100.5, 100.4])],
    );
    let c = json_of(&env.compare(&a, &b, &["--output", "json"]));
    let labels: Vec<&str> = c["pairs"].as_array().unwrap().iter().map(|p| p["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["sim tiny tput concurrency=1", "sim tiny tput concurrency=4"]);
    assert_eq!(metric(&c["pairs"][1], "ttft.p99")["a"]["mean"], 201.0);
    assert_eq!(metric(&c["pairs"][1], "ttft.p99")["b"]["mean"], 201.0);
    assert_eq!(c["only_b"], json!(["sim tiny latency concurrency=1"]));
    assert_eq!(c["only_a"], json!([]));
    let image = c["facts"].as_array().unwrap().iter().find(|f| f["fact"] == "engine.image (sim)").unwrap();
    assert_eq!(
        image,
        &json!({"fact": "engine.image (sim)", "a": ["kitt/sim:1"], "b": ["kitt/sim:2"], "differs": true})
    );
    let version = c["facts"].as_array().unwrap().iter().find(|f| f["fact"] == "engine.version (sim)").unwrap();
    assert_eq!(version["differs"], false);
    let t = text(&env.compare(&a, &b, &[]));
    assert!(
        t.lines().any(|l| l.starts_with("engine.image (sim)") && l.contains("kitt/sim:2") && l.ends_with("DIFFERS")),
        "{t}"
    );
    assert!(t.contains("only in B: sim tiny latency concurrency=1"), "{t}");

    // One cell a side with different identities (two engines): paired, both identities shown.
    let x = run(&env.runs(), "x", "llama", "llama:1", &[cell("tput", 1, &[90.0, 91.0])]);
    let y = env.run("y", &[cell("tput", 1, &[100.0, 101.0])]);
    let c = json_of(&env.compare(&x, &y, &["--output", "json"]));
    assert_eq!(c["pairs"][0]["label"], "llama tiny tput concurrency=1 vs sim tiny tput concurrency=1");
    assert_eq!(c["pairs"][0]["b_identity"]["engine"], "sim");
}

#[test]
fn a_cell_that_lost_its_metric_in_b_fails_the_gate() {
    let env = Env::new();
    let a = env.run("a", &[cell("tput", 1, &[100.0, 101.0])]);
    let b = env.run("b", &[cell("tput", 1, &[f64::NAN, f64::NAN])]);
    let out = env.compare(&a, &b, &["--fail-if", "ttft.p99 > +5%"]);
    assert_eq!(out.status.code(), Some(3));
    let t = text(&out);
    assert!(t.contains("B has no value where A has one") && t.contains("failed cells: A 0, B 2"), "{t}");
    // The other way round is not judged.
    assert_eq!(env.compare(&b, &a, &["--fail-if", "ttft.p99 > +5%"]).status.code(), Some(0));
    // error_rate went from 0 to 1 in both runs: significant and crossed.
    assert_eq!(env.compare(&a, &b, &["--fail-if", "error_rate > 0.05"]).status.code(), Some(3));
}

#[test]
fn errors_exit_1_and_say_why() {
    let env = Env::new();
    let a = env.run("a", &[cell("tput", 1, &[100.0, 101.0]), cell("tput", 2, &[100.0])]);
    let b = env.run("b", &[cell("other", 1, &[100.0, 101.0]), cell("other", 2, &[100.0])]);
    let out = env.compare(&a, &a, &["--fail-if", "ttft.p99 >> 5%"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid --fail-if") && err.contains("  ttft.p99 >> 5%\n            ^"), "{err}");
    let out = env.compare(&a, &a, &["--fail-if", "ttft.p999 > 5%"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no result on either side has metric `ttft.p999`"));
    let out = env.compare(&a, &b, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cell is on both sides"));
    let out = env.kitt(&["compare", "no-such-run", "a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`no-such-run` is not a run directory"));
}

#[test]
fn run_ids_and_result_ids_resolve_through_the_store_and_the_runs_dir() {
    let env = Env::new();
    let a = env.run("run-a", &[cell("tput", 1, &[100.0, 101.0, 99.5]), cell("tput", 4, &[300.0, 301.0, 299.0])]);
    env.run("run-b", &[cell("tput", 1, &[120.0, 121.0, 119.5]), cell("tput", 4, &[300.5, 300.0, 299.5])]);
    // Only A is in the store; B is found in the runs directory.
    assert!(env.kitt(&["results", "import", a.to_str().unwrap()]).status.success());
    let out = env.kitt(&["compare", "run-a", "run-b", "--output", "markdown", "--fail-if", "ttft.p99 > +10%"]);
    assert_eq!(out.status.code(), Some(3));
    let md = text(&out);
    assert!(md.starts_with("## kitt compare"), "{md}");
    assert!(md.contains("| metric | A | B | delta | delta % | verdict |"), "{md}");
    assert!(md.contains("| FAIL | ttft.p99 > +10% | sim tiny tput concurrency=1 |"), "{md}");
    assert!(md.contains("| pass | ttft.p99 > +10% | sim tiny tput concurrency=4 |"), "{md}");

    // A result id stands for its cell's repetitions: one pair, three runs a side.
    let list = json_of(&env.kitt(&["results", "list", "--output", "json"]));
    let c4 = list.as_array().unwrap().iter().find(|r| r["cell"]["swept"]["concurrency"] == 4).unwrap();
    let id = c4["id"].as_i64().unwrap().to_string();
    let c = json_of(&env.kitt(&["compare", &id, "run-b", "--output", "json"]));
    assert_eq!(c["pairs"].as_array().unwrap().len(), 1);
    assert_eq!(c["pairs"][0]["runs"], json!([3, 3]));
    assert_eq!(metric(&c["pairs"][0], "ttft.p99")["verdict"], "not_significant");
    assert!(c["a"]["label"].as_str().unwrap().starts_with(&format!("result {id} (run run-a")));
}

/// Writes a run directory of one eval cell, one result per entry of `runs`; each run lists its
/// items' outcomes (`Some(true)` right, `Some(false)` wrong, `None` an error). With `items`,
/// each result's items.jsonl is written in its step directory, as the eval step does.
fn eval_run(root: &Path, run_id: &str, runs: &[Vec<Option<bool>>], items: bool) -> PathBuf {
    let dir = root.join(run_id);
    let mut cells = Vec::new();
    for (i, outcomes) in runs.iter().enumerate() {
        let key = format!("{run_id}-qa-{i}");
        let correct = outcomes.iter().filter(|o| **o == Some(true)).count();
        let errors = outcomes.iter().filter(|o| o.is_none()).count();
        let answered = outcomes.len() - errors;
        let accuracy = correct as f64 / answered as f64;
        cells.push(json!({
            "schema": "kitt.result/v1",
            "cell": {
                "model": "tiny", "engine": "sim", "engine_template": "sim", "benchmark": "qa",
                "template": "qa", "params": {"concurrency": 8}, "swept": {}, "run_index": i, "sampling": {},
            },
            "status": "ok",
            "metrics": {
                "requests": outcomes.len(), "ok": answered, "errors": errors,
                "error_rate": errors as f64 / outcomes.len() as f64, "accuracy": accuracy,
                "eval": {"accuracy": accuracy, "stderr": 0.03, "unparseable_share": 0.0, "counts": {
                    "total": outcomes.len(), "scored": outcomes.len(), "answered": answered, "correct": correct,
                    "incorrect": answered - correct, "unparseable": 0, "errors": errors, "skipped": 0,
                }},
            },
            "provenance": {
                "run_id": run_id, "key": key, "attempt": 0, "reused": false,
                "started_unix_ns": 1_790_000_000_000_000_000u64, "finished_unix_ns": 1_790_000_001_000_000_000u64,
                "facts": {"engine.version": "kitt-sim 0.1.0", "machine": "nogpu_test", "kitt.version": "0.1.0",
                          "metrics.schema": "1"},
                "prompts_exact": false,
            },
        }));
        if items {
            let lines: String = outcomes
                .iter()
                .enumerate()
                .map(|(n, o)| {
                    let verdict = match o {
                        Some(true) => "correct",
                        Some(false) => "incorrect",
                        None => "error",
                    };
                    format!("{}\n", json!({"id": format!("q{n}"), "expected": "A", "verdict": verdict}))
                })
                .collect();
            std::fs::create_dir_all(dir.join("steps").join(&key)).unwrap();
            std::fs::write(dir.join("steps").join(&key).join("items.jsonl"), lines).unwrap();
        }
    }
    let report = json!({
        "schema": "kitt.report/v1", "run_id": run_id, "suite": "qa", "suite_file": "qa.yaml",
        "kitt_version": "0.1.0", "facts": {}, "cells": cells, "failed_cells": 0,
    });
    std::fs::create_dir_all(dir.join("report")).unwrap();
    std::fs::write(dir.join("report/result.json"), serde_json::to_vec(&report).unwrap()).unwrap();
    dir
}

/// 200 items: A gets the first 140 right. B fixes `fixed` of A's wrong items and breaks
/// `broken` of A's right ones.
fn answers(fixed: usize, broken: usize) -> [Vec<Option<bool>>; 2] {
    let a: Vec<Option<bool>> = (0..200).map(|i| Some(i < 140)).collect();
    let b = (0..200).map(|i| Some(if i < 140 { i >= broken } else { i < 140 + fixed })).collect();
    [a, b]
}

#[test]
fn an_accuracy_gain_is_better_on_paired_items_and_the_gate_goes_the_right_way() {
    let env = Env::new();
    let [a_items, b_items] = answers(24, 4);
    let a = eval_run(&env.runs(), "a", &[a_items], true);
    let b = eval_run(&env.runs(), "b", &[b_items], true);
    let c = json_of(&env.compare(&a, &b, &["--output", "json"]));
    let acc = metric(&c["pairs"][0], "accuracy");
    // 70 % → 80 %: McNemar on 4 against 24 discordant items, one run a side.
    assert_eq!(acc["test"], "mcnemar", "{acc}");
    assert_eq!(acc["proportion"]["discordant"], json!([4, 24]), "{acc}");
    assert_eq!(acc["proportion"]["items"], 200, "{acc}");
    assert_eq!(acc["verdict"], "better", "{acc}");
    assert!(acc["p_adjusted"].as_f64().unwrap() < 0.01, "{acc}");
    assert_eq!(acc["better"], "higher");
    // The other way round it is worse, and a gate on a drop fails; on the gain it passes.
    assert_eq!(env.compare(&a, &b, &["--fail-if", "accuracy < -2%"]).status.code(), Some(0));
    let out = env.compare(&b, &a, &["--fail-if", "accuracy < -2%"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("FAIL  accuracy < -2%") && t.contains("crossed and significant (McNemar p="), "{t}");
    assert!(t.contains("accuracy") && t.contains("worse (McNemar p="), "{t}");
    assert_eq!(env.compare(&b, &a, &["--fail-if", "accuracy < -0.05"]).status.code(), Some(3));
    let c = json_of(&env.compare(&b, &a, &["--output", "json", "--fail-if", "accuracy < -2%"]));
    assert_eq!(metric(&c["pairs"][0], "accuracy")["verdict"], "worse");
    assert_eq!(c["thresholds"][0]["basis"], "mcnemar");

    // A drop of 3 items out of 200 (1.5 points) crosses -1 % but is within the noise of the
    // items: it passes, where the point estimate of one run would have failed it.
    let [x, y] = answers(0, 3);
    let x = eval_run(&env.runs(), "x", &[x], true);
    let y = eval_run(&env.runs(), "y", &[y], true);
    let out = env.compare(&x, &y, &["--fail-if", "accuracy < -1%"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("crossed but not significant (McNemar p=0.2500)"), "{}", text(&out));
}

#[test]
fn items_that_errored_are_not_paired_and_missing_items_fall_back_to_counts() {
    let env = Env::new();
    let [a_items, mut b_items] = answers(24, 4);
    // Ten of A's wrong items failed in B: not answers, so not in the pairs.
    for o in &mut b_items[180..190] {
        *o = None;
    }
    let a = eval_run(&env.runs(), "a", std::slice::from_ref(&a_items), true);
    let b = eval_run(&env.runs(), "b", std::slice::from_ref(&b_items), true);
    let c = json_of(&env.compare(&a, &b, &["--output", "json"]));
    let acc = metric(&c["pairs"][0], "accuracy");
    assert_eq!((acc["test"].as_str(), acc["proportion"]["items"].as_u64()), (Some("mcnemar"), Some(190)), "{acc}");
    assert_eq!(acc["proportion"]["discordant"], json!([4, 24]), "{acc}");
    assert_eq!(metric(&c["pairs"][0], "error_rate")["better"], "lower");

    // Without items files (a result imported without its steps): the two-proportion test on the
    // counts, answered items only (160 of 190 against 140 of 200).
    let a = eval_run(&env.runs(), "a2", &[a_items], false);
    let b = eval_run(&env.runs(), "b2", &[b_items], false);
    let c = json_of(&env.compare(&a, &b, &["--output", "json"]));
    let acc = metric(&c["pairs"][0], "accuracy");
    assert_eq!(acc["test"], "two_proportion", "{acc}");
    let (pa, pb) = (140.0 / 200.0, 160.0 / 190.0);
    let pooled: f64 = 300.0 / 390.0;
    let z = (pb - pa) / (pooled * (1.0 - pooled) * (1.0 / 200.0 + 1.0 / 190.0)).sqrt();
    assert!((acc["proportion"]["statistic"].as_f64().unwrap() - z).abs() < 1e-9, "{acc}");
    assert_eq!(acc["verdict"], "better", "{acc}");
}

#[test]
fn repeated_eval_runs_are_tested_over_items_as_strata() {
    let env = Env::new();
    let [a_items, b_items] = answers(24, 4);
    let a = eval_run(&env.runs(), "a", &[a_items.clone(), a_items.clone(), a_items], true);
    let b = eval_run(&env.runs(), "b", &[b_items.clone(), b_items.clone(), b_items], true);
    let c = json_of(&env.compare(&a, &b, &["--output", "json"]));
    let acc = metric(&c["pairs"][0], "accuracy");
    assert_eq!(acc["test"], "cmh", "{acc}");
    assert_eq!(acc["verdict"], "better", "{acc}");
    // Identical runs have no spread: Welch would call any change certain; CMH weighs the items.
    // 28 discordant items, three runs each: Σ(b − E) = 3·(24 − 4)/2, Σ Var = 28 · 9·3·3/(36·5).
    let want = (30.0f64).powi(2) / (28.0 * 81.0 / 180.0);
    assert!((acc["proportion"]["statistic"].as_f64().unwrap() - want).abs() < 1e-9, "{acc}");
}

/// Runs a 40-item yes/no eval with `kitt apply` on the simulator, which answers "yes" to the
/// first `right` items and "no" to the rest (every target is "yes"); returns the run directory.
fn apply_eval(root: &Path, name: &str, right: usize) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    let data: String =
        (0..40).map(|i| format!("{}\n", json!({"q": format!("item-{i:03}"), "answer": "yes"}))).collect();
    std::fs::write(dir.join("qa.jsonl"), data).unwrap();
    let key: String = (0..40)
        .map(|i| {
            format!(
                "{}\n",
                json!({"match": format!("item-{i:03} END"), "answer": if i < right { "yes" } else { "no" }})
            )
        })
        .collect();
    std::fs::write(dir.join("key.jsonl"), key).unwrap();
    std::fs::write(
        dir.join("templates/qa.yaml"),
        r#"apiVersion: kitt/v1
kind: Benchmark
metadata: {name: qa, description: yes or no}
spec:
  mechanism: eval
  eval:
    dataset: {source: ./qa.jsonl}
    fields: {target: answer}
    prompt: {template: "Question {{q}} END\nAnswer:"}
    generation: {max_tokens: 3, temperature: 0, stop: ["\n"]}
    answer: {extract: {regex: "(yes|no)"}, compare: text_nocase}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("suite.yaml"),
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: qa}
spec:
  models: [{name: m}]
  engines: [{name: sim, template: sim, params: {answers: key.jsonl}}]
  benchmarks: [{name: qa, template: qa}]
  sampling: {temperature: 0}
  warmup: {requests: 0}
  templates: [./templates/]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kitt"))
        .arg("apply")
        .arg(dir.join("suite.yaml"))
        .env("KITT_RUNS_DIR", dir.join("runs"))
        .env("KITT_HOST_LOCK", dir.join("host.lock"))
        .env("KITT_STORE", "off")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    std::fs::read_dir(dir.join("runs")).unwrap().next().unwrap().unwrap().path()
}

#[test]
fn a_real_eval_is_compared_on_its_items_and_every_metric_it_writes_has_a_direction() {
    let env = Env::new();
    let a = apply_eval(env.dir.path(), "a", 30);
    let b = apply_eval(env.dir.path(), "b", 40);
    let report: Json = serde_json::from_slice(&std::fs::read(a.join("report/result.json")).unwrap()).unwrap();
    let metrics = &report["cells"][0]["metrics"];
    assert_eq!(metrics["accuracy"], 0.75, "{metrics}");
    let fields = kitt::compare::metric::numeric_fields(metrics);
    assert!(fields.iter().any(|f| f == "eval.counts.correct"), "{fields:?}");
    for f in &fields {
        assert!(kitt::compare::metric::direction(f).is_some(), "`{f}` has no direction: add it to compare/metric.rs");
    }

    // The items the simulator got right in B only: 10, none the other way (2 / 2¹⁰).
    let c = json_of(&env.compare(&a, &b, &["--output", "json", "--fail-if", "accuracy < -2%"]));
    let acc = metric(&c["pairs"][0], "accuracy");
    assert_eq!((acc["test"].as_str(), acc["verdict"].as_str()), (Some("mcnemar"), Some("better")), "{acc}");
    assert_eq!(acc["proportion"]["discordant"], json!([0, 10]), "{acc}");
    assert!((acc["p"].as_f64().unwrap() - 2.0 / 1024.0).abs() < 1e-12, "{acc}");
    assert_eq!(c["failed"], false);
    let out = env.compare(&b, &a, &["--fail-if", "accuracy < -2%"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}
