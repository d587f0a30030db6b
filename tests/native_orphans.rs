//! Native engines that fork workers, as vLLM does: a kitt killed during a slow start, a kitt whose
//! terminal hangs up, and a foreign server on the engine's port. Kills follow observed events (a
//! file the engine writes, a journal record), never timed sleeps.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn kitt(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kitt"));
    c.env("KITT_RUNS_DIR", dir.join("runs"))
        .env("KITT_STORE", "off")
        .env("KITT_HOST_LOCK", dir.join("host.lock"))
        .env_remove("KITT_TEST_KILL_AFTER_RECORD")
        .env("NO_COLOR", "1");
    c
}

/// A suite whose engine is a wrapper script: it forks a long-lived worker (recording its pid in
/// worker.pid beside the suite), then becomes the simulator with `faults`.
fn wrapped_suite(dir: &Path, faults: &str, itl_ms: u32) -> PathBuf {
    let command = format!(
        r#"["sh", "-c", 'sleep 300 & echo $! > worker.pid; exec "$0" sim --api openai --host 127.0.0.1 --port {{{{port}}}} --model {{{{model.served_name}}}} --itl-ms {itl_ms} --fault={faults} --fault-delay=60000', "{{{{kitt.exe}}}}"]"#
    );
    let yaml = format!(
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: wrapped}}
spec:
  models: [{{name: wrapped}}]
  engines:
    - name: wrapped
      template: sim
      native: {{command: {command}}}
  benchmarks:
    - {{name: lat, template: latency, params: {{requests: 40, max_tokens: 8}}}}
  warmup: {{requests: 0}}
"#
    );
    let p = dir.join("s.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

/// Whether `pid` is a live process (a zombie has exited already).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn gone_soon(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    !alive(pid)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn worker(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("worker.pid")).ok()?.trim().parse().ok()
}

fn pid_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(runs) = std::fs::read_dir(dir.join("runs")) else { return Vec::new() };
    runs.filter_map(|r| r.ok())
        .filter_map(|r| std::fs::read_dir(r.path().join("pids")).ok())
        .flat_map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()))
        .collect()
}

fn journal(dir: &Path) -> Vec<Json> {
    let Some(run) = std::fs::read_dir(dir.join("runs")).ok().and_then(|mut d| d.next()).and_then(|e| e.ok()) else {
        return Vec::new();
    };
    std::fs::read_to_string(run.path().join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn spawn(mut c: Command) -> Child {
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

#[test]
fn kill_9_during_a_slow_start_leaves_a_tree_that_gc_stops() {
    let d = tempfile::tempdir().unwrap();
    let suite = wrapped_suite(d.path(), "slow_health", 0);
    let mut cmd = kitt(d.path());
    cmd.arg("apply").arg(&suite);
    let mut child = spawn(cmd);
    // The engine is up and answering its health check slowly; kitt must have recorded it already.
    wait_until("the engine's worker and kitt's pid file", || {
        worker(d.path()).is_some() && !pid_files(d.path()).is_empty()
    });
    assert!(!journal(d.path()).iter().any(|r| r["event"] == "step_finished" && r["kind"] == "start"));
    child.kill().unwrap();
    child.wait().unwrap();
    let worker = worker(d.path()).unwrap();
    assert!(alive(worker), "the worker outlives kill -9 of kitt (the parent-death signal is not inherited)");
    let out = kitt(d.path()).arg("gc").arg("--runs-dir").arg(d.path().join("runs")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped engine process"), "{}", text(&out));
    assert!(gone_soon(worker), "kitt gc stopped the whole engine tree");
    assert!(pid_files(d.path()).is_empty());
}

#[test]
fn sighup_stops_the_engine_tree_and_leaves_a_resumable_run() {
    let d = tempfile::tempdir().unwrap();
    let suite = wrapped_suite(d.path(), "", 20);
    let mut cmd = kitt(d.path());
    cmd.arg("apply").arg(&suite);
    let child = spawn(cmd);
    wait_until("the benchmark to start", || {
        journal(d.path()).iter().any(|r| r["event"] == "step_started" && r["kind"] == "benchmark")
    });
    let worker = worker(d.path()).unwrap();
    // SAFETY: signalling the kitt process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(journal(d.path()).iter().any(|r| r["event"] == "run_interrupted"), "{}", text(&out));
    assert!(gone_soon(worker), "the engine's worker was stopped with the engine");
    assert!(pid_files(d.path()).is_empty(), "nothing left to sweep");
}

#[test]
fn a_foreign_server_on_the_engines_port_fails_the_start_naming_it() {
    let d = tempfile::tempdir().unwrap();
    // An engine that never listens: it only says which port kitt gave it.
    let suite = d.path().join("s.yaml");
    std::fs::write(
        &suite,
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: foreign}
spec:
  models: [{name: foreign}]
  engines:
    - name: mute
      template: sim
      native: {command: ["sh", "-c", "echo {{port}} > port.txt; exec sleep 60"]}
  benchmarks:
    - {name: lat, template: latency, params: {requests: 4, max_tokens: 4}}
  warmup: {requests: 0}
"#,
    )
    .unwrap();
    let mut cmd = kitt(d.path());
    cmd.arg("apply").arg(&suite);
    let child = spawn(cmd);
    let port_file = d.path().join("port.txt");
    wait_until("the engine's port", || std::fs::read_to_string(&port_file).is_ok_and(|p| p.ends_with('\n')));
    let port = std::fs::read_to_string(&port_file).unwrap().trim().to_string();
    // Another server takes the port before the engine binds it.
    let mut foreign = Command::new(env!("CARGO_BIN_EXE_kitt"))
        .args(["sim", "--api", "openai", "--host", "127.0.0.1", "--port", &port, "--model", "foreign"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = foreign.kill();
    let _ = foreign.wait();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not from the engine kitt started") && err.contains(&format!("pid {}", foreign.id())),
        "{err}"
    );
}
