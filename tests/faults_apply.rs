//! `kitt apply` against an engine that fails on purpose (`kitt sim --fault`, docs/faults.md): every
//! run ends on its own, every sent request is one line of `requests.jsonl` with the right error
//! kind, ok + errors = sent, the cell's status follows `max_error_rate`, and no engine is left.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

mod common;
use common::{KittEnv, sims_alive, text};

/// A [`KittEnv`] whose runs' sim logs every request it reads.
struct Env(KittEnv);

impl Env {
    fn new() -> Env {
        Env(KittEnv::new())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn apply(&self, suite: &str) -> Output {
        self.apply_with(suite, &[])
    }

    fn apply_with(&self, suite: &str, extra: &[&str]) -> Output {
        let file = self.0.suite(suite);
        self.0
            .cmd()
            .arg("apply")
            .arg(&file)
            .args(extra)
            .env("KITT_SIM_REQUEST_LOG", self.path().join("sim-requests.jsonl"))
            .output()
            .unwrap()
    }

    fn run(&self) -> PathBuf {
        self.0.only_run()
    }

    /// The one cell's result and its request records.
    fn cell(&self) -> (Json, Vec<Json>) {
        let report = common::report(&self.run());
        let cells = report["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 1, "{report}");
        let cell = cells[0].clone();
        let key = cell["provenance"]["key"].as_str().unwrap();
        let lines = std::fs::read_to_string(self.run().join("steps").join(key).join("requests.jsonl")).unwrap();
        (cell, lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
    }

    /// Generation requests the sim read, in order.
    fn sim_generations(&self) -> Vec<Json> {
        std::fs::read_to_string(self.path().join("sim-requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Json>(l).unwrap())
            .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/completions")))
            .collect()
    }
}

/// A suite of one latency cell of `requests` on the sim with `faults`, `model` naming it (and
/// its sim process), `execution` and `params` added.
fn suite(model: &str, faults: &str, requests: u32, execution: &str, params: &str) -> String {
    format!(
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: faults}}
spec:
  models: [{{name: {model}}}]
  engines:
    - name: sim
      template: sim
      params: {{faults: [{faults}], fault_delay_ms: 2000{params}}}
  benchmarks:
    - name: lat
      template: latency
      params: {{requests: {requests}, input_tokens: 8, max_tokens: 6}}
  warmup: {{requests: 0}}
  execution: {{{execution}}}
  reporters: [json]
"#
    )
}

fn errors_of(records: &[Json]) -> Vec<(u64, String)> {
    records.iter().filter_map(|r| r["error"].as_str().map(|e| (r["index"].as_u64().unwrap(), e.to_string()))).collect()
}

/// A stream that stalls on 1 request in 5 ends at its `between_events` deadline; the others and
/// the cell's result are kept, within seconds of the healthy duration, and the stalled requests
/// sit in the latencies as lower bounds.
#[test]
fn serial_a_stall_on_one_in_five_ends_at_the_deadline_and_the_cell_keeps_its_result() {
    let env = Env::new();
    let started = Instant::now();
    let out = env.apply(&suite(
        "stall-model",
        "\"stall:0.2\"",
        20,
        "request_timeout: {between_events: 1s}, max_error_rate: 0.25",
        "",
    ));
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert!(took < Duration::from_secs(20), "4 stalls of 1 s took {took:?}");
    let (cell, records) = env.cell();
    assert_eq!(cell["status"], "ok");
    assert_eq!(records.len(), 20);
    let errors = errors_of(&records);
    assert_eq!(errors, [4, 9, 14, 19].map(|i| (i, "timeout".to_string())), "{records:?}");
    for r in records.iter().filter(|r| r["error"] == "timeout") {
        assert_eq!(r["deadline"], "between_events", "{r}");
        assert_eq!(r["content_events"], 1, "the event before the stall is kept: {r}");
        let cut_ms = (r["end_ns"].as_u64().unwrap() - r["sent_ns"].as_u64().unwrap()) / 1_000_000;
        assert!((1000..3000).contains(&cut_ms), "cut after {cut_ms} ms: {r}");
    }
    let m = &cell["metrics"];
    assert_eq!((m["requests"].as_u64(), m["ok"].as_u64(), m["errors"].as_u64()), (Some(20), Some(16), Some(4)));
    assert_eq!(m["errors_by_kind"]["timeout"], 4);
    let e2e = &m["e2e_ms"];
    assert_eq!(e2e["count"], 20);
    assert_eq!(e2e["censored"]["count"], 4);
    assert_eq!(e2e["censored"]["lower_bounds"], serde_json::json!(["p90", "p95", "p99", "p99_9"]));
    assert!(e2e["p90"].as_f64().unwrap() >= 1000.0 && e2e["p50"].as_f64().unwrap() < 500.0, "{e2e}");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("4 request(s) timed out"), "{summary}");
    assert_eq!(sims_alive("stall-model"), 0);
    // Every request went out once: no resend of a stalled one.
    assert_eq!(env.sim_generations().len(), 20);
}

/// Each fault that breaks an answer: exactly the faulted requests fail, with the right kind, the
/// others succeed, nothing is resent, and the error budget decides the cell's status.
#[test]
fn each_fault_is_recorded_with_its_kind_and_the_budget_decides_the_status() {
    let cases = [
        ("cut", "stream", ""),
        ("reset", "connection_reset", ""),
        ("reset_head", "connection_reset", ""),
        ("bad_json", "decode", ""),
        ("http_500", "http_500", ""),
        ("http_429", "http_429", ""),
        ("slow_first_token", "timeout", "request_timeout: {first_token: 500ms}, "),
    ];
    for (fault, kind, timeout) in cases {
        let env = Env::new();
        let model = format!("{}-model", fault.replace('_', "-"));
        let out =
            env.apply(&suite(&model, &format!("\"{fault}:0.2\""), 10, &format!("{timeout}max_error_rate: 0.25"), ""));
        assert!(out.status.success(), "{fault}: {}", text(&out));
        let (cell, records) = env.cell();
        assert_eq!(cell["status"], "ok", "{fault}");
        assert_eq!(records.len(), 10, "{fault}");
        assert_eq!(errors_of(&records), [(4, kind.to_string()), (9, kind.to_string())], "{fault}: {records:?}");
        let m = &cell["metrics"];
        assert_eq!(m["ok"].as_u64().unwrap() + m["errors"].as_u64().unwrap(), 10, "{fault}");
        if fault == "slow_first_token" {
            assert!(records.iter().filter(|r| r["error"] == "timeout").all(|r| r["deadline"] == "first_token"));
        }
        // The engine saw each request once: a request it had seen is never resent.
        let seen = env.sim_generations();
        assert_eq!(seen.len(), 10, "{fault}: {seen:?}");
        assert!(records.iter().all(|r| r.get("connection_retries").is_none()), "{fault}: {records:?}");
        assert_eq!(sims_alive(&model), 0, "{fault}");
    }

    // Beyond the budget, the cell fails and the run exits 1, its records kept.
    let env = Env::new();
    let out = env.apply(&suite("budget-model", "\"http_500:0.5\"", 10, "max_error_rate: 0.25", ""));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (cell, records) = env.cell();
    assert_eq!(cell["status"], "failed");
    assert!(cell["error"].as_str().unwrap().contains("error rate 50.0 %"), "{cell}");
    assert_eq!(errors_of(&records).len(), 5);
}

/// An engine that crashes mid-cell: the step fails, `retries: 1` restarts the engine (which serves
/// on: the crash is recorded in its state file), and the cell finishes.
#[test]
fn serial_a_crash_with_a_retry_and_a_restart_finishes_the_cell() {
    let env = Env::new();
    let engine = r#"apiVersion: kitt/v1
kind: Engine
metadata: {name: restarting-sim}
spec:
  base: sim
  restart_on_retry: true
"#;
    std::fs::write(env.path().join("engine.yaml"), engine).unwrap();
    let suite = suite("crash-model", "\"crash::5\"", 10, "retries: 1", ", fault_state: sim.state")
        .replace("template: sim", "template: restarting-sim")
        .replace("  reporters: [json]", "  reporters: [json]\n  templates: [engine.yaml]");
    let out = env.apply(&suite);
    assert!(out.status.success(), "{}", text(&out));
    assert!(env.path().join("sim.state").exists(), "the sim crashed once");
    let (cell, records) = env.cell();
    assert_eq!((cell["status"].as_str(), cell["provenance"]["attempt"].as_u64()), (Some("ok"), Some(1)));
    assert_eq!(errors_of(&records), []);
    assert_eq!(records.len(), 10);
    // The first attempt reached the crash on its sixth request.
    let journal = std::fs::read_to_string(env.run().join("journal.jsonl")).unwrap();
    assert!(journal.contains("\"attempt\":1"), "{journal}");
    assert_eq!(sims_alive("crash-model"), 0);
}

/// The benchmark's own warmup runs before the window: the engine's counters over the window see
/// exactly the measured requests.
#[test]
fn warmup_requests_stay_out_of_the_engine_metrics_window() {
    let env = Env::new();
    let templates = r#"apiVersion: kitt/v1
kind: Engine
metadata: {name: counted-sim}
spec:
  base: sim
  metrics: {path: /metrics}
"#;
    std::fs::write(env.path().join("engine.yaml"), templates).unwrap();
    let templates = r#"apiVersion: kitt/v1
kind: Benchmark
metadata: {name: warmed}
spec:
  mechanism: load
  params: {}
  load:
    profile: {concurrency: 4}
    requests: 10
    warmup: {requests: 50}
    prompt: {synthetic: {input_tokens: 8}}
"#;
    std::fs::write(env.path().join("bench.yaml"), templates).unwrap();
    let suite = r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: warmed}
spec:
  models: [{name: warm-model}]
  engines: [{name: sim, template: counted-sim}]
  benchmarks: [{name: w, template: warmed}]
  sampling: {max_tokens: 4}
  warmup: {requests: 0}
  templates: [engine.yaml, bench.yaml]
  reporters: [json]
"#;
    let out = env.apply(suite);
    assert!(out.status.success(), "{}", text(&out));
    let (cell, _) = env.cell();
    assert_eq!(cell["metrics"]["warmup_requests"], 50);
    let counters = &cell["engine_metrics"]["counters"];
    let done = counters
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.starts_with("vllm:request_success_total"))
        .map(|(_, v)| v.as_f64().unwrap());
    assert_eq!(done, Some(10.0), "{counters}");
    assert_eq!(env.sim_generations().len(), 60);
}

/// Coordinated omission: under a constant 20 req/s with one request in flight at most, an engine
/// that pauses 2 s once holds up the requests due meanwhile. From the schedule, their TTFT shows
/// it; from the send it would not; the client is flagged as not keeping the schedule.
#[test]
fn serial_a_pause_under_a_constant_rate_shows_in_latency_from_the_schedule() {
    let env = Env::new();
    let bench = r#"apiVersion: kitt/v1
kind: Benchmark
metadata: {name: steady}
spec:
  mechanism: load
  params: {}
  load:
    profile: {constant: 20}
    requests: 40
    max_concurrency: 1
    prompt: {synthetic: {input_tokens: 8}}
"#;
    std::fs::write(env.path().join("steady.yaml"), bench).unwrap();
    // With seed 999, a rate of 1/1000 past request 5 picks request 5 alone.
    let suite = r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: steady}
spec:
  models: [{name: pause-model}]
  engines:
    - name: sim
      template: sim
      params: {faults: ["slow_first_token:1/1000:5"], fault_delay_ms: 2000, seed: 999}
  benchmarks: [{name: s, template: steady}]
  sampling: {max_tokens: 2}
  warmup: {requests: 0}
  templates: [steady.yaml]
  reporters: [json]
"#;
    let out = env.apply(suite);
    assert!(out.status.success(), "{}", text(&out));
    let (cell, records) = env.cell();
    assert_eq!(errors_of(&records), []);
    let faulted: Vec<Json> = env.sim_generations().into_iter().filter(|r| r.get("fault").is_some()).collect();
    assert_eq!(faulted.len(), 1, "{faulted:?}");
    let m = &cell["metrics"];
    let from_schedule = m["from_schedule"]["ttft_ms"]["p99"].as_f64().unwrap();
    let from_send = m["ttft_ms"]["p90"].as_f64().unwrap();
    assert!(from_schedule >= 1500.0, "{}", m["from_schedule"]);
    assert!(from_send < 500.0, "{}", m["ttft_ms"]);
    assert_eq!(m["arrivals"]["client_limited"], true, "{}", m["arrivals"]);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("could not keep the schedule"), "{summary}");
}

/// A cell cut by `step_timeout` fails as `truncated`: the run ends on its own, the requests that
/// finished are kept apart for diagnosis, the journal says `truncated`, the summary warns, and a
/// resume runs the cell again rather than reusing it.
#[test]
fn serial_a_cell_cut_by_step_timeout_is_truncated_and_never_reused() {
    let env = Env::new();
    let suite = suite("slow-model", "", 400, "step_timeout: 2s", ", itl_ms: 20").replace("\"\"", "");
    let started = Instant::now();
    let out = env.apply(&suite);
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = env.run();
    let report = common::report(&run);
    let cell = &report["cells"][0];
    assert_eq!(cell["status"], "failed");
    assert!(cell["error"].as_str().unwrap().starts_with("truncated: `step_timeout` (2s) passed"), "{cell}");
    assert_eq!(cell["metrics"]["truncated"], true);
    let key = cell["provenance"]["key"].as_str().unwrap();
    let step = run.join("steps").join(key);
    assert!(!step.join("requests.jsonl").exists(), "partial records are not the cell's records");
    let kept = std::fs::read_to_string(step.join("requests.truncated.jsonl")).unwrap();
    let lines: Vec<Json> = kept.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!lines.is_empty() && lines.len() < 400, "{}", lines.len());
    assert_eq!(cell["metrics"]["requests"].as_u64().unwrap(), lines.len() as u64);
    // The one request in flight at the cutoff was cut there, not counted as the engine's timeout.
    assert!(lines.iter().filter(|r| r["error"].is_string()).all(|r| r["error"] == "cancelled"), "{lines:?}");
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap();
    assert!(journal.contains("\"status\":\"truncated\""), "{journal}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("cut short by `step_timeout`"), "{}", text(&out));
    // A resume of that run runs the cell again.
    let id = run.file_name().unwrap().to_str().unwrap().to_string();
    let again = env.apply_with(&suite, &["--resume", &id, "--rerun-failed"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap();
    let benchmark_starts =
        journal.lines().filter(|l| l.contains("\"step_started\"") && l.contains("\"kind\":\"benchmark\"")).count();
    assert_eq!(benchmark_starts, 2, "{journal}");
    assert_eq!(sims_alive("slow-model"), 0);
}

/// Faults of the calls around the measured ones only slow a run down: a health check held or
/// answered 503 while the engine "loads" delays the start, a slow tokenize delays prompt building,
/// and no measured request fails.
#[test]
fn serial_slow_health_loading_and_slow_tokenize_only_slow_the_run_down() {
    for (fault, waits_in) in [("slow_health", "start"), ("loading", "start"), ("slow_tokenize:1/4", "benchmark")] {
        let env = Env::new();
        let model = format!("{}-model", fault.split(':').next().unwrap().replace('_', "-"));
        let suite = suite(&model, &format!("\"{fault}\""), 4, "max_error_rate: 0", "")
            .replace("fault_delay_ms: 2000", "fault_delay_ms: 600");
        let out = env.apply(&suite);
        assert!(out.status.success(), "{fault}: {}", text(&out));
        let (cell, records) = env.cell();
        assert_eq!((cell["status"].as_str(), records.len(), errors_of(&records).len()), (Some("ok"), 4, 0), "{fault}");
        // The step that makes those calls took at least the delay.
        let journal: Vec<Json> = std::fs::read_to_string(env.run().join("journal.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let at = |event: &str| {
            journal.iter().find(|r| r["event"] == event && r["kind"] == waits_in).unwrap()["unix_ns"].as_u64().unwrap()
        };
        let took_ms = (at("step_finished") - at("step_started")) / 1_000_000;
        assert!(took_ms >= 600, "{fault}: the {waits_in} step took {took_ms} ms");
        assert_eq!(sims_alive(&model), 0, "{fault}");
    }
}
