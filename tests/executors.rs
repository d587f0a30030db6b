//! `kitt apply --executor processes` end to end: the real binary placing each unit on a child
//! `kitt work`, the real simulator, and a real SIGTERM ordered by the journal (never by sleeps).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{KittEnv, report, shard_records, text};
use serde_json::Value as Json;

/// Two cells, each a unit of its own (`granularity: cell`) with its own simulator, measured at
/// once (`isolation: engine`; with `host` each unit's start waits for the previous one's stop).
fn suite(env: &KittEnv, model: &str, requests: u32, itl_ms: u32) -> PathBuf {
    let p = env.path().join("suite.yaml");
    std::fs::write(
        &p,
        format!(
            r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: executors}}
spec:
  models: [{{name: {model}}}]
  engines: [{{name: sim, template: sim, params: {{tokens_per_chunk: 2, itl_ms: {itl_ms}}}}}]
  benchmarks:
    - name: tput
      template: throughput
      params: {{concurrency: [1, 2], requests: {requests}, input_tokens: 16, max_tokens: 6}}
  sampling: {{temperature: 0, seed: 5}}
  warmup: {{requests: 0}}
  execution: {{granularity: cell, isolation: engine}}
"#
        ),
    )
    .unwrap();
    p
}

fn only_run(env: &KittEnv) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(env.runs()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

/// How many benchmark steps the units of `run` have started.
fn measuring(run: &Path) -> usize {
    shard_records(run)
        .iter()
        .filter(|r| r["event"] == "step_started" && r["kind"] == "benchmark")
        .map(|r| r["key"].to_string())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// The (one) run of `env` once `ready` holds of it, polled; fails with `never` after a minute.
fn run_once(env: &KittEnv, ready: impl Fn(&Path) -> bool, never: &str) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs: Vec<PathBuf> =
            std::fs::read_dir(env.runs()).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        if let Some(run) = runs.first()
            && ready(run)
        {
            return run.clone();
        }
        assert!(Instant::now() < deadline, "{never}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Live processes whose command line has every one of `words`.
fn alive_with(words: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmdline =
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if words.iter().all(|w| cmdline.contains(w)) && !stat.contains(") Z ") {
            out.push(cmdline);
        }
    }
    out
}

#[test]
fn processes_measure_every_cell_once_and_report_like_a_local_run() {
    let (local, placed) = (KittEnv::new(), KittEnv::new());
    let log = |env: &KittEnv| env.path().join("requests.jsonl");
    let out = local
        .cmd()
        .arg("apply")
        .arg(suite(&local, "exec-eq", 4, 0))
        .env("KITT_SIM_REQUEST_LOG", log(&local))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = placed
        .cmd()
        .arg("apply")
        .arg(suite(&placed, "exec-eq", 4, 0))
        .args(["--executor", "processes", "--workers", "2"])
        .env("KITT_SIM_REQUEST_LOG", log(&placed))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = only_run(&placed);
    let plan: Json = serde_json::from_slice(&std::fs::read(run.join("plan.json")).unwrap()).unwrap();
    let units: Vec<&str> = plan["units"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(units.len(), 2, "one unit per cell");
    for u in &units {
        assert!(run.join(format!("journal/{u}.0.jsonl")).exists(), "unit {u} ran as one `kitt work` attempt");
    }
    for s in plan["steps"].as_array().unwrap().iter().filter(|s| s["kind"] == "benchmark" || s["kind"] == "collect") {
        assert!(run.join("steps").join(s["key"].as_str().unwrap()).join(".committed").exists(), "{s}");
    }
    let measured = |env: &KittEnv| {
        std::fs::read_to_string(log(env)).unwrap_or_default().lines().filter(|l| l.contains("completions")).count()
    };
    assert_eq!(measured(&placed), 8, "two cells of four requests, each measured once");
    assert_eq!(measured(&local), measured(&placed));
    let (a, b) = (report(&only_run(&local)), report(&run));
    assert_eq!(b["cells"].as_array().unwrap().len(), 2, "one result per cell");
    assert_eq!(common::comparable(&a, true), common::comparable(&b, true));
    assert!(String::from_utf8_lossy(&out.stdout).contains("tput"), "the summary is printed: {}", text(&out));
}

#[test]
fn sigterm_stops_every_unit_and_local_apply_resumes_the_run() {
    let env = KittEnv::new();
    let marker = "execsigterm";
    let suite = suite(&env, marker, 40, 20);
    let driver = env
        .cmd()
        .arg("apply")
        .arg(&suite)
        .args(["--executor", "processes", "--workers", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both units measuring at once: two children, two simulators to stop.
    let run = run_once(&env, |run| measuring(run) == 2, "the two units never measured at once");
    // SAFETY: signalling the kitt process this test started.
    unsafe { libc::kill(driver.id() as i32, libc::SIGTERM) };
    let out = driver.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(alive_with(&[" sim ", marker]).is_empty(), "a simulator was left running");
    let run_arg = run.to_string_lossy().to_string();
    assert!(alive_with(&[" work ", &run_arg]).is_empty(), "a `kitt work` was left running");
    assert!(shard_records(&run).iter().any(|r| r["event"] == "run_interrupted"), "the units journaled the stop");
    let journal = std::fs::read_to_string(run.join("journal.jsonl")).unwrap();
    assert!(journal.contains("run_interrupted"), "{journal}");

    let id = run.file_name().unwrap().to_string_lossy().to_string();
    let out = env.cmd().arg("apply").arg(&suite).args(["--resume", &id]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let cells = report(&run)["cells"].as_array().unwrap().clone();
    assert_eq!(cells.len(), 2);
    for c in &cells {
        assert_eq!(c["status"], "ok", "{c}");
        assert_eq!(c["metrics"]["requests"], 40, "{c}");
    }
}

/// The committed steps of `run`: each key at most once (a second commit would be a duplicate).
fn assert_each_measured_step_committed_once(run: &Path) {
    let plan: Json = serde_json::from_slice(&std::fs::read(run.join("plan.json")).unwrap()).unwrap();
    for s in plan["steps"].as_array().unwrap().iter().filter(|s| s["kind"] == "benchmark" || s["kind"] == "collect") {
        let dir = run.join("steps").join(s["key"].as_str().unwrap());
        assert!(dir.join(".committed").exists(), "{s} was committed");
    }
    let results: Vec<Json> =
        shard_records(run).into_iter().filter(|r| r["event"] == "step_finished" && r["kind"] == "benchmark").collect();
    let keys: std::collections::HashSet<String> = results.iter().map(|r| r["key"].to_string()).collect();
    assert_eq!(keys.len(), results.len(), "no benchmark finished twice: {results:?}");
}

/// Attempts of a unit that its `kitt work` journaled (`journal/<unit>.<n>.jsonl`).
fn attempt_shards(run: &Path, unit: &str) -> usize {
    (0..10).filter(|n| run.join(format!("journal/{unit}.{n}.jsonl")).exists()).count()
}

fn units(run: &Path) -> Vec<String> {
    let plan: Json = serde_json::from_slice(&std::fs::read(run.join("plan.json")).unwrap()).unwrap();
    plan["units"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap().to_string()).collect()
}

/// A `kitt work` stopped (SIGSTOP) mid-benchmark stops renewing its lease; the driver judges it
/// expired, kills it, and places the unit again: the new attempt measures the cell and the run
/// finishes with every cell once.
#[test]
fn serial_a_stopped_kitt_work_is_requeued_and_its_new_attempt_finishes_the_run() {
    let env = KittEnv::new();
    let marker = "execstopped";
    let suite = suite(&env, marker, 30, 20);
    let driver = env
        .cmd()
        .arg("apply")
        .arg(&suite)
        .args(["--executor", "processes", "--workers", "2", "--max-attempts", "3"])
        .env("KITT_TEST_LEASE_RENEW_MS", "100")
        .env("KITT_TEST_LEASE_MS", "1000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // The first unit whose attempt 0 journaled the start of its benchmark.
    let (run, unit) = loop {
        let runs: Vec<PathBuf> =
            std::fs::read_dir(env.runs()).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        if let Some(run) = runs.first()
            && run.join("plan.json").exists()
            && let Some(unit) = units(run).into_iter().find(|u| {
                std::fs::read_to_string(run.join(format!("journal/{u}.0.jsonl")))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Json>(l).ok())
                    .any(|r| r["event"] == "step_started" && r["kind"] == "benchmark")
            })
        {
            break (run.clone(), unit);
        }
        assert!(Instant::now() < deadline, "no unit started measuring");
        std::thread::sleep(Duration::from_millis(10));
    };
    let claim: Json = serde_json::from_slice(&std::fs::read(run.join(format!("attempts/{unit}/0"))).unwrap()).unwrap();
    let pid = claim["pid"].as_i64().unwrap() as i32;
    // SAFETY: signalling the `kitt work` this test's kitt started (named by its claim).
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let out = driver.wait_with_output().unwrap();
    let stopped_alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    if stopped_alive {
        // SAFETY: as above; let it go rather than leave it stopped.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    assert!(out.status.success(), "{}", text(&out));
    assert!(!stopped_alive, "the stopped `kitt work` (pid {pid}) was not killed");
    assert!(run.join(format!("attempts/{unit}/0.expired")).exists(), "attempt 0 was marked expired");
    assert!(attempt_shards(&run, &unit) >= 2, "unit {unit} was placed again");
    assert!(alive_with(&[" sim ", marker]).is_empty(), "a simulator was left running");
    let run_arg = run.to_string_lossy().to_string();
    assert!(alive_with(&[" work ", &run_arg]).is_empty(), "a `kitt work` was left running");
    assert_each_measured_step_committed_once(&run);
    let cells = report(&run)["cells"].as_array().unwrap().clone();
    assert_eq!(cells.len(), 2, "one result per cell");
    for c in &cells {
        assert_eq!(c["status"], "ok", "{c}");
        assert_eq!(c["metrics"]["requests"], 30, "{c}");
    }
}

/// A `kitt work` killed (`kill -9`) after its N-th journal record, for N across its steps: the
/// driver places the unit again, the run finishes, and its report equals a local run's.
#[test]
fn serial_a_killed_kitt_work_is_requeued_and_the_report_equals_a_local_run() {
    let local = KittEnv::new();
    let out = local.cmd().arg("apply").arg(suite(&local, "execkilled", 4, 0)).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let expected = common::comparable(&report(&only_run(&local)), true);
    // A unit's shard: run_started, then started/finished of start (1, 2), benchmark (3, 4),
    // collect (5, 6) and stop (7, 8): killed as its engine starts, mid-benchmark, right after
    // the benchmark committed (the new attempt must not measure it again), after collect.
    for n in [1, 3, 4, 6] {
        let env = KittEnv::new();
        let out = env
            .cmd()
            .arg("apply")
            .arg(suite(&env, "execkilled", 4, 0))
            .args(["--executor", "processes", "--workers", "2"])
            .env("KITT_TEST_WORK_KILL_AFTER_RECORD", n.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "killed after record {n}: {}", text(&out));
        let run = only_run(&env);
        for u in units(&run) {
            let first = std::fs::read_to_string(run.join(format!("journal/{u}.0.jsonl"))).unwrap();
            assert_eq!(first.lines().count(), n + 1, "attempt 0 of {u} died after record {n}: {first}");
            assert_eq!(attempt_shards(&run, &u), 2, "unit {u} was placed once more");
        }
        assert_each_measured_step_committed_once(&run);
        assert_eq!(common::comparable(&report(&run), true), expected, "killed after record {n}");
        assert!(alive_with(&[" sim ", "execkilled"]).is_empty(), "a simulator was left running");
    }
}

/// A unit lost on each of its `--max-attempts` attempts fails its cells: the run exits 1 and says
/// why.
#[test]
fn a_unit_lost_on_every_attempt_fails_its_cells() {
    let env = KittEnv::new();
    let out = env
        .cmd()
        .arg("apply")
        .arg(suite(&env, "execexhausted", 4, 0))
        .args(["--executor", "processes", "--workers", "2", "--max-attempts", "1"])
        .env("KITT_TEST_WORK_KILL_AFTER_RECORD", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gave up after 1 attempt(s)"), "{}", text(&out));
    let run = only_run(&env);
    for u in units(&run) {
        assert_eq!(attempt_shards(&run, &u), 1, "no attempt beyond --max-attempts");
    }
    let cells = report(&run)["cells"].as_array().unwrap().clone();
    assert_eq!(cells.len(), 2);
    assert!(cells.iter().all(|c| c["status"] != "ok"), "{cells:?}");
    assert!(alive_with(&[" sim ", "execexhausted"]).is_empty(), "a simulator was left running");
}

/// `apply --detach` as `--output json` prints: the run's id.
fn detach(env: &KittEnv, suite: &Path) -> String {
    let out = env
        .cmd()
        .arg("apply")
        .arg(suite)
        .args(["--executor", "processes", "--workers", "2", "--detach", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(v["detached"], true, "{v}");
    assert!(v["driver_pid"].as_u64().is_some(), "{v}");
    v["run_id"].as_str().unwrap().to_string()
}

/// `kitt runs show RUN --output json`.
fn show(env: &KittEnv, id: &str) -> Json {
    let out = env.cmd().args(["runs", "show", id, "--output", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `apply --detach` returns at once; the detached driver finishes the run; `runs follow` from
/// another process waits for it and prints its outcome; `runs show` lists every unit done.
#[test]
fn a_detached_run_is_finished_by_its_driver_and_followed_from_another_process() {
    let env = KittEnv::new();
    let marker = "execdetach";
    let suite = suite(&env, marker, 20, 5);
    let id = detach(&env, &suite);
    let run = env.runs().join(&id);
    let out = env.cmd().args(["runs", "follow", &id, "--output", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let cells = report(&run)["cells"].as_array().unwrap().clone();
    assert_eq!(cells.len(), 2);
    assert!(cells.iter().all(|c| c["status"] == "ok" && c["metrics"]["requests"] == 20), "{cells:?}");
    assert_each_measured_step_committed_once(&run);
    let shown = show(&env, &id);
    assert_eq!(shown["executor"], "processes", "{shown}");
    let units = shown["units"].as_array().unwrap();
    assert_eq!(units.len(), 2, "{shown}");
    for u in units {
        assert_eq!(u["state"], "done", "{u}");
        assert_eq!(u["cells_done"], u["cells"], "{u}");
        assert!(u["attempts"].as_u64().unwrap() >= 1, "{u}");
    }
    assert!(alive_with(&[" sim ", marker]).is_empty(), "a simulator was left running");
    assert!(alive_with(&[" runs ", " follow ", &id]).is_empty(), "the detached driver was left running");
}

/// `runs cancel` stops a detached run's driver and every unit, and waits for them; `apply
/// --resume` then finishes it and withdraws the request.
#[test]
fn runs_cancel_stops_a_detached_run_everywhere_and_apply_resumes_it() {
    let env = KittEnv::new();
    let marker = "execcancel";
    let suite = suite(&env, marker, 40, 20);
    let id = detach(&env, &suite);
    let run = env.runs().join(&id);
    run_once(&env, |run| measuring(run) == 2, "the two units never measured at once");
    let out = env.cmd().args(["runs", "cancel", &id, "--output", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["driver_running"], false, "{v}");
    assert!(v["units"].as_array().unwrap().iter().all(|u| u["state"] != "running"), "{v}");
    assert!(alive_with(&[" sim ", marker]).is_empty(), "a simulator was left running");
    let run_arg = run.to_string_lossy().to_string();
    assert!(alive_with(&[" work ", &run_arg]).is_empty(), "a `kitt work` was left running");
    assert!(alive_with(&[" runs ", " follow ", &id]).is_empty(), "the detached driver was left running");
    assert_eq!(show(&env, &id)["cancel_requested"], true);

    let out = env.cmd().arg("apply").arg(&suite).args(["--resume", &id]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let cells = report(&run)["cells"].as_array().unwrap().clone();
    assert!(cells.iter().all(|c| c["status"] == "ok" && c["metrics"]["requests"] == 40), "{cells:?}");
    assert!(!run.join("cancel.requested").exists(), "a resumed run withdrew the request");
}

/// kill -9 of the driver mid-run and of each unit's first `kitt work` (at its journal record N,
/// the hook): `kitt runs follow` adopts what still runs (and leaves its engines alone), places
/// the lost units again, and the run ends with every cell measured once and no engine left.
#[test]
fn serial_a_killed_driver_and_killed_workers_are_taken_over_by_follow() {
    for record in [3, 6] {
        let env = KittEnv::new();
        let marker = format!("execdriverkill{record}");
        let suite = suite(&env, &marker, 20, 10);
        let log = std::fs::File::create(env.path().join("driver.err")).unwrap();
        let mut driver = env
            .cmd()
            .arg("apply")
            .arg(&suite)
            .args(["--executor", "processes", "--workers", "2"])
            .env("KITT_TEST_WORK_KILL_AFTER_RECORD", record.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // Ordered by the units' journals: once a benchmark started, the driver dies.
        let run = run_once(&env, |run| measuring(run) > 0, "no unit ever measured");
        driver.kill().unwrap();
        driver.wait().unwrap();
        let id = run.file_name().unwrap().to_string_lossy().to_string();
        let out = env.cmd().args(["runs", "follow", &id]).output().unwrap();
        assert!(out.status.success(), "record {record}: {}", text(&out));
        let cells = report(&run)["cells"].as_array().unwrap().clone();
        assert_eq!(cells.len(), 2);
        assert!(cells.iter().all(|c| c["status"] == "ok" && c["metrics"]["requests"] == 20), "{cells:?}");
        assert_each_measured_step_committed_once(&run);
        assert!(alive_with(&[" sim ", &marker]).is_empty(), "record {record}: a simulator was left running");
        let run_arg = run.to_string_lossy().to_string();
        assert!(alive_with(&[" work ", &run_arg]).is_empty(), "record {record}: a `kitt work` was left running");
    }
}

#[test]
fn a_container_unit_on_a_machine_whose_docker_does_not_answer_fails_at_once_naming_it() {
    let env = KittEnv::new();
    let suite = env.suite(
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {name: nodocker}\nspec:\n  models: [{name: m, path: model}]\n  \
         engines: [{name: c, template: vllm, image: kitt-local/none:1, pull: never, container: {gpus: none}}]\n  \
         benchmarks: [{name: lat, template: latency, params: {requests: 2}}]\n",
    );
    std::fs::create_dir_all(env.path().join("model")).unwrap();
    let started = Instant::now();
    let out = env
        .cmd()
        .arg("apply")
        .arg(&suite)
        .args(["--executor", "processes", "--max-attempts", "1"])
        .env("DOCKER_HOST", format!("unix://{}", env.path().join("no-docker.sock").display()))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let run = only_run(&env);
    let unit = units(&run).pop().unwrap();
    assert_eq!(attempt_shards(&run, &unit), 0, "it failed before claiming an attempt");
    assert!(started.elapsed() < Duration::from_secs(60), "it failed at once");
    assert!(text(&out).contains("runs in a container, but Docker does not answer on"), "{}", text(&out));
}
