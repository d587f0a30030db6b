//! Resume and drift, end to end: what changed between a `kill -9` and the resume (an upgraded
//! endpoint, a rebuilt kitt, a model file replaced at its path) stops the resume, and
//! `--accept-drift` marks exactly the cells measured after the change. Also the failure policy:
//! a panicking step, `on_failure: stop` after a failed start, and `--rerun-failed`.
//!
//! Kills go through the journal hook (`KITT_TEST_KILL_AFTER_RECORD`), never timed sleeps.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

mod common;
use common::{KittEnv as Env, journal, report, text};

/// The journal record after which the first cell is complete (its collect finished), found by a
/// whole run of `yaml` in a scratch directory with `env` set.
fn first_cell_done(yaml: &str, env: &[(&str, &str)]) -> usize {
    let probe = Env::new();
    let suite = probe.suite(yaml);
    let out = probe.cmd().arg("apply").arg(&suite).envs(env.iter().copied()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let j = journal(&probe.only_run());
    j.iter().position(|r| r["event"] == "step_finished" && r["kind"] == "collect").unwrap()
}

/// Runs `yaml` with `env` and kills kitt (`kill -9`, the journal hook) once its first cell is done.
fn kill_after_first_cell(env: &Env, yaml: &str, vars: &[(&str, &str)]) -> PathBuf {
    let record = first_cell_done(yaml, vars);
    let suite = env.suite(yaml);
    let out = env
        .cmd()
        .arg("apply")
        .arg(&suite)
        .envs(vars.iter().copied())
        .env("KITT_TEST_KILL_AFTER_RECORD", record.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the hook killed kitt: {}", text(&out));
    suite
}

/// Cells of the run's report: (reused, drift notes).
fn cells(run: &Path) -> Vec<(bool, Vec<String>)> {
    report(run)["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let drift = c["provenance"]["drift"]
                .as_array()
                .map(|d| d.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            (c["provenance"]["reused"] == true, drift)
        })
        .collect()
}

/// The resumed cell keeps its measurement unmarked; every cell measured after the change is
/// marked with it.
fn assert_marked_after_the_change(run: &Path, what: &str) {
    let cells = cells(run);
    assert_eq!(cells.iter().filter(|(reused, _)| *reused).count(), 1, "{cells:?}");
    for (reused, drift) in &cells {
        if *reused {
            assert!(drift.is_empty(), "a cell measured before the change is not marked: {cells:?}");
        } else {
            assert!(drift.iter().any(|d| d.contains(what)), "{cells:?}");
        }
    }
}

fn sim_suite(model_path: &str) -> String {
    format!(
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: drift}}
spec:
  models: [{{name: drifty{model_path}}}]
  engines: [{{name: sim, template: sim}}]
  benchmarks:
    - {{name: lat, template: latency, params: {{requests: 3, max_tokens: [4, 5, 6]}}}}
  warmup: {{requests: 1}}
"#
    )
}

#[test]
fn a_rebuilt_kitt_stops_the_resume_and_accept_drift_marks_the_cells_measured_after() {
    let env = Env::new();
    let yaml = sim_suite("");
    let suite = kill_after_first_cell(&env, &yaml, &[("KITT_TEST_BUILD_ID", "build-a")]);
    let out = env.cmd().arg("apply").arg(&suite).env("KITT_TEST_BUILD_ID", "build-b").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kitt.build") && err.contains("build-a") && err.contains("build-b"), "{err}");
    assert!(err.contains("--accept-drift"), "{err}");
    let out =
        env.cmd().arg("apply").arg(&suite).arg("--accept-drift").env("KITT_TEST_BUILD_ID", "build-b").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_marked_after_the_change(&env.only_run(), "kitt.build");
    assert!(String::from_utf8_lossy(&out.stdout).contains("(drift)"), "the summary shows it: {}", text(&out));
}

#[test]
fn the_same_build_resumes_without_drift() {
    let env = Env::new();
    let yaml = sim_suite("");
    let suite = kill_after_first_cell(&env, &yaml, &[("KITT_TEST_BUILD_ID", "build-a")]);
    let out = env.cmd().arg("apply").arg(&suite).env("KITT_TEST_BUILD_ID", "build-a").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(cells(&env.only_run()).iter().all(|(_, d)| d.is_empty()));
}

#[test]
fn a_model_file_replaced_at_the_same_path_stops_the_resume() {
    let env = Env::new();
    let model = env.path().join("m.gguf");
    std::fs::write(&model, vec![1u8; 4096]).unwrap();
    let yaml = sim_suite(", path: ./m.gguf");
    // The probe runs in its own directory: give it a model file too.
    let record = {
        let probe = Env::new();
        std::fs::write(probe.path().join("m.gguf"), vec![1u8; 4096]).unwrap();
        let out = probe.cmd().arg("apply").arg(probe.suite(&yaml)).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        journal(&probe.only_run()).iter().position(|r| r["event"] == "step_finished" && r["kind"] == "collect").unwrap()
    };
    let suite = env.suite(&yaml);
    let out =
        env.cmd().arg("apply").arg(&suite).env("KITT_TEST_KILL_AFTER_RECORD", record.to_string()).output().unwrap();
    assert!(!out.status.success());
    // Same size, other bytes, a later mtime: another model at the same path.
    std::fs::write(&model, vec![2u8; 4096]).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(10);
    std::fs::File::options().write(true).open(&model).unwrap().set_modified(later).unwrap();
    let out = env.cmd().arg("apply").arg(&suite).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model.fingerprint") && err.contains("drift"), "{err}");
    let out = env.cmd().arg("apply").arg(&suite).arg("--accept-drift").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_marked_after_the_change(&env.only_run(), "model.fingerprint");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `kitt sim` on `port` reporting `version` and serving `model`, once it accepts connections.
fn sim(port: u16, version: &str, model: &str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kitt"))
        .args(["sim", "--port", &port.to_string(), "--server-version", version, "--model", model])
        .env_remove("KITT_SIM_REQUEST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "kitt sim did not listen");
        assert!(child.try_wait().unwrap().is_none(), "kitt sim exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn endpoint_suite(port: u16, retries: u32) -> String {
    format!(
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: remote}}
spec:
  models: [{{name: remote-model, served_name: auto}}]
  engines:
    - {{name: prod, template: vllm, endpoint: {{url: "http://127.0.0.1:{port}"}}}}
  benchmarks:
    - {{name: lat, template: latency, params: {{requests: 3, max_tokens: [4, 5, 6], input_tokens: 8}}}}
  warmup: {{requests: 1}}
  execution: {{retries: {retries}}}
"#
    )
}

#[test]
fn an_endpoint_upgraded_between_kill_and_resume_stops_it_and_accept_drift_marks_its_cells() {
    let env = Env::new();
    let port = free_port();
    let mut server = sim(port, "vllm 0.6.0", "served-a");
    let yaml = endpoint_suite(port, 0);
    let suite = kill_after_first_cell(&env, &yaml, &[]);
    server.kill().unwrap();
    server.wait().unwrap();
    // The same address now answers with another server version and another model.
    let mut server = sim(port, "vllm 0.7.1", "served-b");
    let out = env.cmd().arg("apply").arg(&suite).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("drift") && err.contains("vllm 0.6.0") && err.contains("vllm 0.7.1"), "{err}");
    assert!(err.contains("engine.served_model") && err.contains("served-b"), "{err}");
    let out = env.cmd().arg("apply").arg(&suite).arg("--accept-drift").output().unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_marked_after_the_change(&env.only_run(), "engine.version");
}

#[test]
fn a_retry_on_an_endpoint_with_restart_on_retry_just_runs_again() {
    let env = Env::new();
    let port = free_port();
    let mut server = sim(port, "vllm 0.6.0", "served-a");
    let suite = env.suite(&endpoint_suite(port, 1));
    // The first attempt of one cell fails (a panic, the test hook); its retry must run.
    let out =
        env.cmd().arg("apply").arg(&suite).env("KITT_TEST_PANIC_STEP", "benchmark:max_tokens=5@0").output().unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let j = journal(&env.only_run());
    let failed: Vec<&Json> = j.iter().filter(|r| r["event"] == "step_failed").collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["will_retry"], true);
    assert!(failed[0]["error"].as_str().unwrap().contains("panicked"), "{failed:?}");
}

#[test]
fn a_panicking_step_fails_the_run_which_resumes_only_with_rerun_failed() {
    let env = Env::new();
    let suite = env.suite(&sim_suite(""));
    let out =
        env.cmd().arg("apply").arg(&suite).env("KITT_TEST_PANIC_STEP", "benchmark:max_tokens=5").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = env.only_run();
    let j = journal(&run);
    let failed: Vec<&Json> = j.iter().filter(|r| r["event"] == "step_failed").collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["kind"], "benchmark");
    assert!(failed[0]["error"].as_str().unwrap().contains("KITT_TEST_PANIC_STEP"), "{failed:?}");
    assert_eq!(j.last().unwrap()["event"], "run_finished");
    assert_eq!(j.last().unwrap()["ok"], false);
    let started = |j: &[Json]| j.iter().filter(|r| r["event"] == "step_started").count();
    // A plain apply: nothing left but the failed cell, so it says so and runs nothing.
    let (before, records) = (started(&j), j.len());
    let out = env.cmd().arg("apply").arg(&suite).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 failed cell") && err.contains("--rerun-failed"), "{err}");
    assert_eq!((started(&journal(&run)), journal(&run).len()), (before, records), "nothing was written");
    // --rerun-failed runs exactly that cell, in the same run.
    let out = env.cmd().arg("apply").arg(&suite).arg("--rerun-failed").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(env.only_run(), run);
    let j = journal(&run);
    let rerun: Vec<&Json> =
        j[records..].iter().filter(|r| r["event"] == "step_started" && r["kind"] == "benchmark").collect();
    assert_eq!(rerun.len(), 1, "{rerun:?}");
    assert!(rerun[0]["label"].as_str().unwrap().contains("max_tokens=5"), "{rerun:?}");
    assert_eq!(cells(&run).iter().filter(|(reused, _)| *reused).count(), 2);
}

#[test]
fn on_failure_stop_after_a_failed_start_skips_the_remaining_cells() {
    let env = Env::new();
    let suite = env.suite(
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: stop}
spec:
  models: [{name: stopper}]
  engines:
    - {name: broken, template: sim, native: {command: ["/bin/false", "--port", "{{port}}"]}}
    - {name: good, template: sim}
  benchmarks: [{name: lat, template: latency, params: {requests: 2, max_tokens: 4}}]
  warmup: {requests: 0}
  execution: {on_failure: stop}
"#,
    );
    let out = env.cmd().arg("apply").arg(&suite).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let j = journal(&env.only_run());
    let failed_start = j.iter().any(|r| r["event"] == "step_failed" && r["kind"] == "start");
    assert!(failed_start, "{j:?}");
    let started: Vec<&Json> = j
        .iter()
        .filter(|r| r["event"] == "step_started")
        .filter(|r| r["kind"] == "benchmark" || r["label"].as_str().unwrap().contains("good"))
        .collect();
    assert!(started.is_empty(), "nothing ran after the failed start: {started:?}");
    let stopped = j
        .iter()
        .filter(|r| r["event"] == "step_skipped" && r["kind"] == "benchmark")
        .map(|r| r["reason"].as_str().unwrap())
        .collect::<Vec<_>>();
    assert!(stopped.contains(&"on_failure: stop after a failed step"), "{stopped:?}");
}
