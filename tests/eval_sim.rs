//! Evals through `kitt apply` against the simulator with an answer key (`kitt sim --answers`):
//! the score is known before the run, so it is asserted exactly. Failed generations
//! (`--error-rate`, drawn from each request's hash) are errors, not wrong answers, and a resume
//! against a working engine asks exactly those items again.

mod common;
use common::test_data;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::Parser;
use serde_json::Value as Json;

fn apply(dir: &Path, suite: &str) -> Json {
    let path = dir.join("suite.yaml");
    std::fs::write(&path, suite).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kitt"))
        .arg("apply")
        .arg(&path)
        .env("KITT_RUNS_DIR", dir.join("runs"))
        .env("KITT_HOST_LOCK", dir.join("host.lock"))
        .env("KITT_STORE", "off")
        .env_remove("KITT_TEST_KILL_IN_BENCHMARK")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let run = std::fs::read_dir(dir.join("runs")).unwrap().next().unwrap().unwrap().path();
    serde_json::from_slice(&std::fs::read(run.join("report/result.json")).unwrap()).unwrap()
}

fn items(dir: &Path) -> Vec<Json> {
    let run = std::fs::read_dir(dir.join("runs")).unwrap().next().unwrap().unwrap().path();
    std::fs::read_dir(run.join("steps"))
        .unwrap()
        .flatten()
        .filter_map(|s| std::fs::read_to_string(s.path().join("items.jsonl")).ok())
        .flat_map(|t| t.lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<Json>>())
        .collect()
}

fn suite(benchmark: &str, params: &str) -> String {
    format!(
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: eval-sim}}
spec:
  models: [{{name: m}}]
  engines: [{{name: sim, template: sim, params: {{answers: key.jsonl}}}}]
  benchmarks: [{{name: e, template: {benchmark}, params: {params}}}]
  sampling: {{temperature: 0}}
  warmup: {{requests: 0}}
"#
    )
}

#[test]
fn mmlu_scores_exactly_the_share_the_answer_key_gets_right() {
    let Some(data) = test_data() else { return };
    let d = tempfile::tempdir().unwrap();
    // Every fourth question answered right, the rest with the next letter: exactly 25 of 100.
    let csv = data.join("mmlu/data/test/abstract_algebra_test.csv");
    let mut rows = csv::ReaderBuilder::new().has_headers(false).from_path(&csv).unwrap();
    let mut key = String::new();
    let mut n = 0;
    for (i, row) in rows.records().enumerate() {
        let row = row.unwrap();
        let right = row[5].trim().to_string();
        let wrong = ((right.as_bytes()[0] - b'A' + 1) % 4 + b'A') as char;
        let answer = if i % 4 == 0 { right } else { wrong.to_string() };
        key.push_str(&serde_json::json!({"match": row[0].trim(), "answer": answer}).to_string());
        key.push('\n');
        n += 1;
    }
    assert_eq!(n, 100);
    std::fs::write(d.path().join("key.jsonl"), key).unwrap();
    let source = format!("{}/mmlu/data/{{split}}/{{group}}_{{split}}.csv", data.display());
    let r = apply(d.path(), &suite("mmlu", &format!(r#"{{source: "{source}", subjects: [abstract_algebra], k: 0}}"#)));
    let e = &r["cells"][0]["metrics"]["eval"];
    assert_eq!(e["counts"]["scored"], 100, "{e}");
    assert_eq!(e["counts"]["correct"], 25, "{e}");
    assert_eq!(e["accuracy"], 0.25);
    assert_eq!(e["unparseable_share"], 0.0);
    // With shots the item's own question still decides (the latest match in the prompt).
    let d2 = tempfile::tempdir().unwrap();
    std::fs::copy(d.path().join("key.jsonl"), d2.path().join("key.jsonl")).unwrap();
    let r = apply(d2.path(), &suite("mmlu", &format!(r#"{{source: "{source}", subjects: [abstract_algebra], k: 5}}"#)));
    assert_eq!(r["cells"][0]["metrics"]["eval"]["counts"]["correct"], 25);
}

#[test]
fn truthfulqa_answering_always_a_scores_the_share_of_a_after_the_shuffle() {
    let Some(data) = test_data() else { return };
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("key.jsonl"), "{\"match\": \"\", \"answer\": \"A\"}\n").unwrap();
    let source = data.join("truthfulqa/TruthfulQA.csv");
    let r = apply(d.path(), &suite("truthfulqa", &format!(r#"{{source: "{}", sample_size: 200}}"#, source.display())));
    let e = &r["cells"][0]["metrics"]["eval"];
    let items = items(d.path());
    assert_eq!(items.len(), 200);
    let a = items.iter().filter(|i| i["expected"] == "A").count();
    assert_eq!(e["counts"]["correct"].as_u64().unwrap() as usize, a, "{e}");
    // Unshuffled, the correct answer would always be A; shuffled, "always A" is near chance.
    assert!(a < 100, "the options are shuffled: {a} of 200 have A correct");
}

// ---------------------------------------------------------------- failed generations

#[derive(Parser)]
struct SimCli {
    #[command(flatten)]
    sim: kitt::engine::sim::SimArgs,
}

/// A simulator served by this test process (an endpoint engine to kitt), so that a test can
/// stop it and serve another one, configured differently, on the same port: the suite, and so
/// every step key, stays the same.
struct Sim {
    url: String,
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sim {
    fn start(port: u16, flags: &[String]) -> Sim {
        let port_arg = port.to_string();
        let argv = ["sim", "--port", port_arg.as_str()].into_iter().map(String::from).chain(flags.iter().cloned());
        let args = SimCli::parse_from(argv).sim;
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = kitt::engine::sim::bind(&args).await.unwrap();
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                kitt::engine::sim::serve_on(listener, args, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let port = rx.recv().unwrap();
        Sim { url: format!("http://127.0.0.1:{port}"), port, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The simulator's flags: the answer key, an error rate and a request log.
fn sim_flags(key: &Path, error_rate: f64, log: &Path) -> Vec<String> {
    [
        "--answers",
        &key.to_string_lossy(),
        "--error-rate",
        &error_rate.to_string(),
        "--request-log",
        &log.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// MMLU abstract algebra (100 questions, 0-shot) on an endpoint; `execution` is the suite's.
fn endpoint_suite(dir: &Path, url: &str, source: &str, execution: &str) -> PathBuf {
    let path = dir.join("suite.yaml");
    std::fs::write(
        &path,
        format!(
            r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: eval-errors}}
spec:
  models: [{{name: m, served_name: auto}}]
  engines: [{{name: sim, template: vllm, endpoint: {{url: "{url}"}}}}]
  benchmarks: [{{name: e, template: mmlu, params: {{source: "{source}", subjects: [abstract_algebra], k: 0}}}}]
  sampling: {{temperature: 0}}
  warmup: {{requests: 0}}
  execution: {execution}
  reporters: [json, markdown]
"#
        ),
    )
    .unwrap();
    path
}

fn kitt(runs: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kitt"));
    c.env("KITT_RUNS_DIR", runs)
        .env("KITT_HOST_LOCK", runs.with_extension("lock"))
        .env("KITT_STORE", "off")
        .env_remove("KITT_SIM_REQUEST_LOG")
        .env_remove("KITT_TEST_KILL_IN_BENCHMARK")
        .env_remove("KITT_TEST_KILL_AFTER_RECORD");
    c
}

fn text(o: &Output) -> String {
    format!("{:?}\n{}\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The only run under `runs`.
fn the_run(runs: &Path) -> PathBuf {
    let mut all: Vec<PathBuf> =
        std::fs::read_dir(runs).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    assert_eq!(all.len(), 1, "{all:?}");
    all.pop().unwrap()
}

/// The eval cell's benchmark record (written whether the step passed its error budget or not).
fn benchmark_record(run: &Path) -> Json {
    std::fs::read_dir(run.join("steps"))
        .unwrap()
        .flatten()
        .find_map(|s| std::fs::read(s.path().join("benchmark.json")).ok())
        .map(|b| serde_json::from_slice(&b).unwrap())
        .expect("a benchmark.json")
}

fn items_of(run: &Path) -> Vec<Json> {
    std::fs::read_dir(run.join("steps"))
        .unwrap()
        .flatten()
        .find_map(|s| std::fs::read_to_string(s.path().join("items.jsonl")).ok())
        .expect("an items.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The prompts of the completion requests a simulator logged.
fn logged_prompts(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap())
        .filter(|l| l["path"] == "/v1/completions")
        .map(|l| l["body"]["prompt"].as_str().unwrap().to_string())
        .collect()
}

/// A key that answers half of the questions (every fourth right, the others wrong): the other
/// half get the simulator's own words, which no extractor reads, and only they can fail (a keyed
/// answer never does).
fn half_key(data: &Path, dir: &Path) -> PathBuf {
    let csv = data.join("mmlu/data/test/abstract_algebra_test.csv");
    let mut rows = csv::ReaderBuilder::new().has_headers(false).from_path(&csv).unwrap();
    let mut key = String::new();
    for (i, row) in rows.records().enumerate().filter(|(i, _)| i % 2 == 0) {
        let row = row.unwrap();
        let right = row[5].trim().to_string();
        let wrong = ((right.as_bytes()[0] - b'A' + 1) % 4 + b'A') as char;
        let answer = if i % 4 == 0 { right } else { wrong.to_string() };
        key.push_str(&serde_json::json!({"match": row[0].trim(), "answer": answer}).to_string());
        key.push('\n');
    }
    let path = dir.join("key.jsonl");
    std::fs::write(&path, key).unwrap();
    path
}

#[test]
fn failed_generations_are_errors_and_a_resume_asks_exactly_them_again() {
    let Some(data) = test_data() else { return };
    let d = tempfile::tempdir().unwrap();
    let key = half_key(&data, d.path());
    let source = format!("{}/mmlu/data/{{split}}/{{group}}_{{split}}.csv", data.display());
    let (failing_log, working_log) = (d.path().join("failing.jsonl"), d.path().join("working.jsonl"));

    // The engine fails about a quarter of the generations: over the budget (5 %), the step fails.
    let failing = Sim::start(0, &sim_flags(&key, 0.5, &failing_log));
    let port = failing.port;
    let runs = d.path().join("runs");
    let suite = endpoint_suite(d.path(), &failing.url, &source, "{max_error_rate: 0.05}");
    let out = kitt(&runs).arg("apply").arg(&suite).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("eval generations failed"), "{}", text(&out));
    drop(failing);
    assert_eq!(logged_prompts(&failing_log).len(), 100);

    let run = the_run(&runs);
    let items = items_of(&run);
    assert_eq!(items.len(), 100);
    let failed: Vec<&Json> = items.iter().filter(|i| i["verdict"] == "error").collect();
    let errors = failed.len();
    assert!((5..=45).contains(&errors), "about a quarter fail: {errors}");
    for i in &failed {
        // A failure is marked as one and has no verdict on correctness.
        assert_eq!(i["error"], "http_500", "{i}");
        assert!(i.get("correct").is_none() && i.get("raw").is_none(), "{i}");
    }
    for i in items.iter().filter(|i| i["verdict"] != "error") {
        assert_eq!(i["correct"], i["verdict"] == "correct", "{i}");
        assert!(i.get("error").is_none(), "{i}");
    }
    // Accuracy is over the answered items; the failures are counted apart.
    let e = &benchmark_record(&run)["metrics"]["eval"];
    let correct = items.iter().filter(|i| i["correct"] == true).count();
    assert_eq!(e["counts"]["errors"], errors, "{e}");
    assert_eq!(e["counts"]["scored"], 100 - errors, "{e}");
    assert_eq!(e["counts"]["correct"], correct, "{e}");
    assert_eq!(correct, 25, "keyed questions never fail, and every fourth is answered right");
    assert_eq!(e["accuracy"].as_f64().unwrap(), 25.0 / (100 - errors) as f64, "{e}");
    assert_eq!(e["error_share"].as_f64().unwrap(), errors as f64 / 100.0, "{e}");

    // The engine works again, on the same port: rerunning the failed cell asks exactly the failed items.
    let working = Sim::start(port, &sim_flags(&key, 0.0, &working_log));
    let id = run.file_name().unwrap().to_string_lossy().to_string();
    let out = kitt(&runs).arg("apply").arg("--resume").arg(&id).arg("--rerun-failed").arg(&suite).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let asked: BTreeSet<String> = logged_prompts(&working_log).into_iter().collect();
    let failed_prompts: BTreeSet<String> = failed.iter().map(|i| i["prompt"].as_str().unwrap().to_string()).collect();
    assert_eq!(logged_prompts(&working_log).len(), errors);
    assert_eq!(asked, failed_prompts);
    let resumed = &benchmark_record(&run)["metrics"]["eval"];
    assert_eq!(resumed["counts"]["errors"], 0, "{resumed}");

    // The same score as a clean run against the working engine.
    let clean_runs = d.path().join("clean");
    let out = kitt(&clean_runs).arg("apply").arg(&suite).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let clean = &benchmark_record(&the_run(&clean_runs))["metrics"]["eval"];
    for field in ["accuracy", "stderr", "counts", "error_share", "unparseable_share", "groups", "fingerprint"] {
        assert_eq!(resumed[field], clean[field], "{field}");
    }
    assert_eq!(items_of(&run), items_of(&the_run(&clean_runs)));
    drop(working);
}

#[test]
fn a_step_retry_asks_the_failed_items_again() {
    let Some(data) = test_data() else { return };
    let d = tempfile::tempdir().unwrap();
    half_key(&data, d.path());
    let source = format!("{}/mmlu/data/{{split}}/{{group}}_{{split}}.csv", data.display());
    let log = d.path().join("log.jsonl");
    // kitt's own sim engine (no restart before a retry). Failures drawn from each request's hash
    // come back on the retry, so the step fails twice.
    std::fs::write(
        d.path().join("suite.yaml"),
        suite("mmlu", &format!(r#"{{source: "{source}", subjects: [abstract_algebra], k: 0}}"#))
            .replace("answers: key.jsonl", "answers: key.jsonl, error_rate: 0.5")
            + "  execution: {retries: 1}\n",
    )
    .unwrap();
    let runs = d.path().join("runs");
    let out =
        kitt(&runs).arg("apply").arg(d.path().join("suite.yaml")).env("KITT_SIM_REQUEST_LOG", &log).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("retrying"), "{}", text(&out));
    let items = items_of(&the_run(&runs));
    let errors = items.iter().filter(|i| i["verdict"] == "error").count();
    assert!(errors > 0);
    // The first attempt asks all 100; the retry only the failed ones, not the answers it has.
    assert_eq!(logged_prompts(&log).len(), 100 + errors, "{}", text(&out));
}

#[test]
fn the_summary_shows_accuracy_over_answered_items_and_the_error_share_apart() {
    let Some(data) = test_data() else { return };
    let d = tempfile::tempdir().unwrap();
    let key = half_key(&data, d.path());
    let source = format!("{}/mmlu/data/{{split}}/{{group}}_{{split}}.csv", data.display());
    let sim = Sim::start(0, &sim_flags(&key, 0.5, &d.path().join("log.jsonl")));
    // A budget the failures stay under: the cell stands, with its errors counted.
    let suite = endpoint_suite(d.path(), &sim.url, &source, "{max_error_rate: 0.9}");
    let runs = d.path().join("runs");
    let out = kitt(&runs).arg("apply").arg(&suite).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = the_run(&runs);
    let r: Json = serde_json::from_slice(&std::fs::read(run.join("report/result.json")).unwrap()).unwrap();
    let e = &r["cells"][0]["metrics"]["eval"];
    let errors = e["counts"]["errors"].as_u64().unwrap();
    assert!(errors > 0, "{e}");
    let answered = 100 - errors;
    assert_eq!(e["counts"]["scored"], answered);
    let accuracy = 25.0 / answered as f64;
    assert_eq!(e["accuracy"].as_f64().unwrap(), accuracy);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = format!(
        "accuracy {:.1} % ± {:.1} % over {answered} answered items (macro {:.1} %), unparseable {:.1} %, errors {errors} ({:.1} % of items sent)",
        accuracy * 100.0,
        e["stderr"].as_f64().unwrap() * 100.0,
        accuracy * 100.0,
        e["unparseable_share"].as_f64().unwrap() * 100.0,
        errors as f64,
    );
    assert!(stdout.contains(&line), "{line}\n{stdout}");
    let md = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    assert!(md.contains(&format!("| 25/{answered} | {errors} ({:.1} %) |", errors as f64)), "{md}");
    drop(sim);
}

/// An engine that crashes mid-eval: the step fails, a retry restarts it (it serves on: the crash is
/// recorded in its state file) and asks only the items that failed; the score is a clean run's.
#[test]
fn an_eval_under_a_crash_finishes_on_a_retry_with_the_clean_runs_score() {
    let Some(data) = test_data() else { return };
    let source = format!("{}/mmlu/data/{{split}}/{{group}}_{{split}}.csv", data.display());
    let params = format!(r#"{{source: "{source}", subjects: [abstract_algebra], k: 0}}"#);
    let clean_dir = tempfile::tempdir().unwrap();
    half_key(&data, clean_dir.path());
    let clean = apply(clean_dir.path(), &suite("mmlu", &params));

    let d = tempfile::tempdir().unwrap();
    half_key(&data, d.path());
    std::fs::write(
        d.path().join("restarting.yaml"),
        "apiVersion: kitt/v1\nkind: Engine\nmetadata: {name: restarting-sim}\nspec:\n  base: sim\n  restart_on_retry: true\n",
    )
    .unwrap();
    let crashing = suite("mmlu", &params).replace(
        "template: sim, params: {answers: key.jsonl}",
        "template: restarting-sim, params: {answers: key.jsonl, faults: [\"crash::30\"], fault_state: sim.state}",
    ) + "  execution: {retries: 1}\n  templates: [restarting.yaml]\n";
    let log = d.path().join("log.jsonl");
    std::fs::write(d.path().join("suite.yaml"), &crashing).unwrap();
    let runs = d.path().join("runs");
    let out =
        kitt(&runs).arg("apply").arg(d.path().join("suite.yaml")).env("KITT_SIM_REQUEST_LOG", &log).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(d.path().join("sim.state").exists(), "the engine crashed once");
    let report: Json =
        serde_json::from_slice(&std::fs::read(the_run(&runs).join("report/result.json")).unwrap()).unwrap();
    let (got, want) = (&report["cells"][0]["metrics"]["eval"], &clean["cells"][0]["metrics"]["eval"]);
    assert_eq!(report["cells"][0]["provenance"]["attempt"], 1);
    assert_eq!(got["counts"], want["counts"], "{got}\n{want}");
    assert_eq!(got["accuracy"], want["accuracy"]);
    // The retry asked only what the crash left unanswered.
    let asked = logged_prompts(&log).len();
    assert!(asked > 100 && asked < 200, "{asked} prompts for 100 items");
}
