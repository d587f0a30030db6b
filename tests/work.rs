//! `kitt work` end to end: the real binary running one unit of a run `kitt apply` created, with
//! the real simulator. Runs are created by killing `kitt apply` right after its first journal
//! record (the journal hook), and racing attempts are ordered by files, never by sleeps.

mod common;
use common::{report, text};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kitt"));
        c.env("KITT_RUNS_DIR", self.path().join("runs"))
            .env("KITT_STORE", "off")
            .env("KITT_HOST_LOCK", self.path().join("host.lock"))
            .env("KITT_SIM_REQUEST_LOG", self.path().join("requests.jsonl"))
            .env_remove("KITT_TEST_KILL_AFTER_RECORD")
            .env_remove("KITT_TEST_SKIP_CLAIM")
            .env_remove("KITT_TEST_WORK_GATE")
            .env_remove("KITT_TEST_LEASE_RENEW_MS")
            .env_remove("KITT_TEST_LEASE_MS")
            .env_remove("KITT_TEST_BUILD_ID")
            .env("NO_COLOR", "1");
        c
    }

    fn suite(&self, requests: u32) -> PathBuf {
        let p = self.path().join("suite.yaml");
        std::fs::write(
            &p,
            format!(
                r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: work}}
spec:
  models: [{{name: work-model}}]
  engines: [{{name: sim, template: sim}}]
  benchmarks:
    - name: tput
      template: throughput
      params: {{concurrency: [1, 2], requests: {requests}, input_tokens: 16, max_tokens: 6}}
  sampling: {{temperature: 0, seed: 5}}
  warmup: {{requests: 0}}
"#
            ),
        )
        .unwrap();
        p
    }

    /// A run that `kitt apply` created and left unfinished: killed right after its first record.
    fn created_run(&self, suite: &Path, build: &str) -> PathBuf {
        let out = self
            .cmd()
            .arg("apply")
            .arg(suite)
            .env("KITT_TEST_KILL_AFTER_RECORD", "0")
            .env("KITT_TEST_BUILD_ID", build)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", text(&out));
        let runs: Vec<PathBuf> =
            std::fs::read_dir(self.path().join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(runs.len(), 1, "{runs:?}");
        runs[0].clone()
    }

    fn work(&self, run: &Path, unit: &str, build: &str) -> Command {
        let mut c = self.cmd();
        c.args(["work", "--run-dir"]).arg(run).args(["--unit", unit]).env("KITT_TEST_BUILD_ID", build);
        c
    }

    fn sim_requests(&self) -> usize {
        std::fs::read_to_string(self.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("/v1/completions") || l.contains("/v1/chat/completions"))
            .count()
    }
}

fn plan(run: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(run.join("plan.json")).unwrap()).unwrap()
}

fn units(run: &Path) -> Vec<String> {
    plan(run)["units"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap().to_string()).collect()
}

/// The keys of the measured steps (benchmark, collect) of the run's plan.
fn measured_keys(run: &Path) -> Vec<String> {
    plan(run)["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "benchmark" || s["kind"] == "collect")
        .map(|s| s["key"].as_str().unwrap().to_string())
        .collect()
}

fn records(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn work_commits_a_unit_and_apply_reuses_it_on_resume() {
    let env = Env::new();
    let suite = env.suite(4);
    let run = env.created_run(&suite, "b1");
    let units = units(&run);
    assert_eq!(units.len(), 1);
    let out = env.work(&run, &units[0], "b1").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let shard = run.join(format!("journal/{}.0.jsonl", units[0]));
    let finished: Vec<Json> = records(&shard).into_iter().filter(|r| r["event"] == "step_finished").collect();
    for key in measured_keys(&run) {
        assert!(run.join("steps").join(&key).join(".committed").exists(), "{key} committed");
        assert!(finished.iter().any(|r| r["key"] == key.as_str()), "{key} journaled in the shard");
    }
    assert!(!std::fs::read_to_string(run.join("journal.jsonl")).unwrap().contains("step_finished"));
    let measured = env.sim_requests();
    assert_eq!(measured, 8, "two cells of four requests");

    let out = env.cmd().arg("apply").arg(&suite).env("KITT_TEST_BUILD_ID", "b1").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(env.sim_requests(), measured, "nothing measured again");
    let cells = report(&run)["cells"].as_array().unwrap().clone();
    assert_eq!(cells.len(), 2);
    for c in &cells {
        assert_eq!(c["status"], "ok", "{c}");
        assert_eq!(c["provenance"]["reused"], true, "{c}");
        assert_eq!(c["metrics"]["requests"], 4);
    }
}

#[test]
fn a_live_claim_is_refused_naming_its_holder_and_a_dead_one_is_taken_over() {
    let env = Env::new();
    let suite = env.suite(2);
    let run = env.created_run(&suite, "b1");
    let unit = units(&run).remove(0);
    let attempts = run.join("attempts").join(&unit);
    std::fs::create_dir_all(&attempts).unwrap();
    // This test process holds attempt 0: a live holder.
    let owner = kitt::run::pidfile::owner_of(std::process::id()).unwrap();
    let mut claim = serde_json::to_value(&owner).unwrap();
    claim["host"] = "test-host".into();
    claim["started_unix_ns"] = 0.into();
    std::fs::write(attempts.join("0"), serde_json::to_vec(&claim).unwrap()).unwrap();
    let out = env.work(&run, &unit, "b1").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("claimed by attempt 0"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", std::process::id())) && stderr.contains("test-host"), "{stderr}");
    assert!(!run.join("journal").exists(), "a refused attempt journals nothing");

    // The same pid with another start time is a process that is gone: its claim is stale.
    claim["start_time"] = (owner.start_time + 1).into();
    std::fs::write(attempts.join("0"), serde_json::to_vec(&claim).unwrap()).unwrap();
    let out = env.work(&run, &unit, "b1").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(attempts.join("1").exists() && run.join(format!("journal/{unit}.1.jsonl")).exists());
}

#[test]
fn racing_attempts_commit_each_key_once_and_journal_the_duplicates() {
    let env = Env::new();
    let suite = env.suite(3);
    let run = env.created_run(&suite, "b1");
    let unit = units(&run).remove(0);
    let gate = env.path().join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let spawn = || {
        env.work(&run, &unit, "b1")
            .env("KITT_TEST_SKIP_CLAIM", "1")
            .env("KITT_TEST_WORK_GATE", &gate)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    // Both have read the run's state (nothing finished) before either runs a step.
    wait_for(&gate.join("ready.0"));
    wait_for(&gate.join("ready.1"));
    std::fs::write(gate.join("go"), b"").unwrap();
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let keys = measured_keys(&run);
    let mut duplicates: BTreeMap<String, usize> = BTreeMap::new();
    for attempt in 0..2 {
        for r in records(&run.join(format!("journal/{unit}.{attempt}.jsonl"))) {
            if r["event"] == "duplicate" {
                *duplicates.entry(r["key"].as_str().unwrap().to_string()).or_default() += 1;
            }
        }
    }
    for key in &keys {
        assert_eq!(duplicates.get(key), Some(&1), "{key}: one commit, one duplicate ({duplicates:?})");
        let dir = run.join("steps").join(key);
        assert!(dir.join(".committed").exists(), "{key}");
    }
    // Exactly one result per collect key, and no other step output under steps/ than commits
    // and the lifecycle's.
    let results: Vec<PathBuf> = walk(&run.join("steps")).into_iter().filter(|p| p.ends_with("result.json")).collect();
    assert_eq!(results.len(), keys.len() / 2, "{results:?}");

    let out = env.cmd().arg("apply").arg(&suite).env("KITT_TEST_BUILD_ID", "b1").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let raced = report(&run);

    let single = Env::new();
    let s = single.suite(3);
    let out = single.cmd().arg("apply").arg(&s).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run1: PathBuf = std::fs::read_dir(single.path().join("runs")).unwrap().next().unwrap().unwrap().path();
    assert_eq!(common::comparable(&raced, false), common::comparable(&report(&run1), false));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn a_changed_plan_or_another_build_is_refused_naming_both() {
    let env = Env::new();
    let suite = env.suite(2);
    let run = env.created_run(&suite, "build-one");
    let unit = units(&run).remove(0);
    let out = env.work(&run, &unit, "build-two").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("+build-one") && stderr.contains("+build-two"), "{stderr}");

    let written = kitt::run::work::plan_digest(&std::fs::read(run.join("plan.json")).unwrap());
    env.suite(5);
    let out = env.work(&run, &unit, "build-one").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plan changed") && stderr.contains(&written), "{stderr}");
    assert!(!run.join("steps").read_dir().unwrap().any(|e| e.unwrap().path().join(".committed").exists()));
    assert!(!run.join("attempts").exists(), "refused before claiming");
}

#[test]
fn an_attempt_that_lost_its_claim_commits_nothing_and_exits_3() {
    let env = Env::new();
    let suite = env.suite(2);
    let run = env.created_run(&suite, "b1");
    let unit = units(&run).remove(0);
    let gate = env.path().join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let child = env
        .work(&run, &unit, "b1")
        .env("KITT_TEST_WORK_GATE", &gate)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&gate.join("ready.0"));
    // Another holder takes the unit over (as a driver requeueing it would) before the first commit.
    let owner = kitt::run::pidfile::owner_of(std::process::id()).unwrap();
    let mut claim = serde_json::to_value(&owner).unwrap();
    claim["host"] = "new-holder".into();
    claim["started_unix_ns"] = 1.into();
    std::fs::write(run.join("attempts").join(&unit).join("0"), serde_json::to_vec(&claim).unwrap()).unwrap();
    std::fs::write(gate.join("go"), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    for key in measured_keys(&run) {
        assert!(!run.join("steps").join(&key).exists(), "{key} must not be committed");
    }
    let shard = records(&run.join(format!("journal/{unit}.0.jsonl")));
    assert!(shard.iter().any(|r| r["event"] == "run_stopped"), "{shard:?}");
    assert!(shard.iter().any(|r| r["event"] == "step_finished" && r["kind"] == "stop"), "its engine was stopped");
}

/// The epoch a committed step directory names.
fn committed_epoch(run: &Path, key: &str) -> Json {
    let marker = std::fs::read(run.join("steps").join(key).join(".committed")).unwrap();
    serde_json::from_slice::<Json>(&marker).unwrap()["epoch"].clone()
}

#[test]
fn a_stopped_attempt_is_superseded_once_its_lease_expires_and_commits_nothing_when_resumed() {
    use kitt::run::lease::{RealClock, file};
    let env = Env::new();
    let suite = env.suite(2);
    let run = env.created_run(&suite, "b1");
    let unit = units(&run).remove(0);
    let attempts = run.join("attempts").join(&unit);
    let gate = env.path().join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let lease = Duration::from_millis(1000);
    let leased = |mut c: Command| {
        c.env("KITT_TEST_LEASE_RENEW_MS", "50").env("KITT_TEST_LEASE_MS", lease.as_millis().to_string());
        c
    };
    let child = leased(env.work(&run, &unit, "b1"))
        .env("KITT_TEST_WORK_GATE", &gate)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    wait_for(&gate.join("ready.0"));
    // While it renews, the driver never judges it expired, and another attempt is refused.
    let mut watch = file::Watch::new(&attempts, 0, lease, RealClock::default());
    let until = Instant::now() + lease * 3 / 2;
    while Instant::now() < until {
        assert!(!watch.poll(), "a renewing attempt was judged expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = leased(env.work(&run, &unit, "b1")).output().unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    // Stopped, it renews no more: the driver judges it expired on its own clock and marks it.
    // SAFETY: signalling the child this test spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !watch.poll() {
        assert!(Instant::now() < deadline, "a stopped attempt never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    file::mark_expired(&attempts, 0).unwrap();
    // The next attempt claims the unit although the stopped process still exists, and commits.
    let second = leased(env.work(&run, &unit, "b1")).output().unwrap();
    assert!(second.status.success(), "{}", text(&second));
    let keys = measured_keys(&run);
    for key in &keys {
        assert_eq!(committed_epoch(&run, key), 1, "{key}");
    }
    let requests = env.sim_requests();
    // Resumed, the first attempt finds it was superseded, before its gate opens (it never does):
    // it stops at once, starting no engine and committing nothing.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the resumed attempt never stopped: {}", text(&child.wait_with_output().unwrap()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    for key in &keys {
        assert_eq!(committed_epoch(&run, key), 1, "{key}: the second attempt's commit stands");
    }
    let shard = records(&run.join(format!("journal/{unit}.0.jsonl")));
    let stopped = shard.iter().find(|r| r["event"] == "run_stopped").expect("a run_stopped record");
    assert!(stopped["reason"].as_str().unwrap().contains("attempt 1 superseded it"), "{stopped}");
    let finished = |kind: &str| shard.iter().filter(|r| r["event"] == "step_finished" && r["kind"] == kind).count();
    assert_eq!((finished("start"), finished("benchmark")), (0, 0), "it started nothing: {shard:?}");
    assert!(!shard.iter().any(|r| r["event"] == "duplicate"), "it never reached a commit: {shard:?}");
    assert_eq!(env.sim_requests(), requests, "it sent no request");
}

/// Runs `unit`'s attempt 0 with `hook` (it dies like `kill -9`), then attempt 1 and a resuming
/// `kitt apply`; returns the run and its report.
fn killed_then_finished(env: &Env, hook: (&str, &str)) -> (PathBuf, Json) {
    let suite = env.suite(3);
    let run = env.created_run(&suite, "b1");
    let unit = units(&run).remove(0);
    let out = env.work(&run, &unit, "b1").env(hook.0, hook.1).output().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "{hook:?}: attempt 0 died by the hook: {}",
        text(&out)
    );
    let out = env.work(&run, &unit, "b1").output().unwrap();
    assert!(out.status.success(), "{hook:?}: {}", text(&out));
    let out = env.cmd().arg("apply").arg(&suite).env("KITT_TEST_BUILD_ID", "b1").output().unwrap();
    assert!(out.status.success(), "{hook:?}: {}", text(&out));
    // Each measured key committed once, by exactly one attempt, and journaled finished once.
    let shards: Vec<Json> = (0..2)
        .map(|n| run.join(format!("journal/{unit}.{n}.jsonl")))
        .filter(|p| p.exists())
        .flat_map(|p| records(&p))
        .collect();
    for key in measured_keys(&run) {
        assert!(run.join("steps").join(&key).join(".committed").exists(), "{hook:?}: {key} committed");
        let finished = shards.iter().filter(|r| r["event"] == "step_finished" && r["key"] == key.as_str()).count();
        assert!(finished <= 1, "{hook:?}: {key} finished {finished} times");
    }
    assert!(!shards.iter().any(|r| r["event"] == "duplicate"), "{hook:?}: nothing raced");
    let report = report(&run);
    (run, report)
}

/// kill -9 of a `kitt work` right after each record its shard gets, one run per record: the next
/// attempt redoes only what was not committed, and the report equals an unkilled run's.
#[test]
fn a_kitt_work_killed_after_any_record_is_finished_by_the_next_attempt_with_nothing_counted_twice() {
    let reference = Env::new();
    let suite = reference.suite(3);
    let run = reference.created_run(&suite, "b1");
    let unit = units(&run).remove(0);
    let out = reference.work(&run, &unit, "b1").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let total = records(&run.join(format!("journal/{unit}.0.jsonl"))).len();
    assert!(total >= 8, "a unit's shard has its steps' records: {total}");
    let out = reference.cmd().arg("apply").arg(&suite).env("KITT_TEST_BUILD_ID", "b1").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let expected = common::comparable(&report(&run), true);
    // The last record is the attempt's end: killed after it, the attempt already finished.
    for n in 0..total - 1 {
        let env = Env::new();
        let (run, report) = killed_then_finished(&env, ("KITT_TEST_WORK_KILL_AFTER_RECORD", &n.to_string()));
        assert_eq!(common::comparable(&report, true), expected, "killed after record {n}");
        let attempt0 = records(&run.join(format!("journal/{unit}.0.jsonl")));
        assert_eq!(attempt0.len(), n + 1, "attempt 0 died right after record {n}");
        for c in report["cells"].as_array().unwrap() {
            assert_eq!(c["metrics"]["requests"], 3, "killed after record {n}: {c}");
        }
    }
}

/// kill -9 at the commit's three points (output complete; marker written, not renamed;
/// renamed, not journaled): a commit is whole or absent, and the next attempt finishes the rest.
#[test]
fn a_kitt_work_killed_around_a_commit_leaves_it_whole_or_absent() {
    for point in ["before", "mid", "after"] {
        let env = Env::new();
        let (run, report) = killed_then_finished(&env, ("KITT_TEST_WORK_KILL_AT_COMMIT", point));
        let unit = units(&run).remove(0);
        let attempt1 = records(&run.join(format!("journal/{unit}.1.jsonl")));
        let redone = attempt1.iter().filter(|r| r["event"] == "step_finished" && r["kind"] == "benchmark").count();
        // Committed before the kill (`after`): attempt 1 reuses it and measures only the other cell.
        assert_eq!(redone, if point == "after" { 1 } else { 2 }, "{point}: {attempt1:?}");
        for c in report["cells"].as_array().unwrap() {
            assert_eq!(c["status"], "ok", "{point}: {c}");
            assert_eq!(c["metrics"]["requests"], 3, "{point}: {c}");
        }
    }
}
