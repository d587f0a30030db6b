//! `kitt apply --executor slurm` on a real single-host Slurm cluster (Debian's slurm-wlm and
//! munge, started privately by scripts/slurm-cluster.sh in a temp dir with its own ports): units
//! as array tasks, states from squeue, requeue after a node is set down, cancel, `--detach` with
//! a report job. Without Slurm installed these tests fail under CI=true and skip elsewhere.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{KittEnv, report, shard_records, text};
use serde_json::Value as Json;

/// A private cluster; stopped (its jobs cancelled first) on drop.
struct Cluster {
    dir: tempfile::TempDir,
    /// scripts/slurm-cluster.sh (one node: this machine) or scripts/slurm-nodes.sh (containers).
    script: &'static str,
    conf: &'static str,
}

impl Cluster {
    fn start() -> Option<Cluster> {
        Cluster::start_with("scripts/slurm-cluster.sh", "etc/slurm.conf", None)
    }

    /// Nodes `n1`…`nN` in containers on a private network, `mounts` mounted into each.
    fn nodes(n: usize, mounts: &[&Path]) -> Option<Cluster> {
        Cluster::start_with("scripts/slurm-nodes.sh", "etc/slurm-ctld.conf", Some((n, mounts)))
    }

    fn start_with(script: &'static str, conf: &'static str, nodes: Option<(usize, &[&Path])>) -> Option<Cluster> {
        let have = Command::new("sh").args(["-c", "command -v slurmctld && command -v munged"]).output();
        if !have.is_ok_and(|o| o.status.success()) {
            assert!(
                std::env::var("CI").is_err(),
                "Slurm is not installed (Debian: slurmd slurmctld slurm-client munge); CI must run these tests"
            );
            eprintln!("skipping: Slurm is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut c = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(script));
        c.arg("start").arg(dir.path());
        if let Some((count, mounts)) = nodes {
            let mounts: Vec<String> = mounts.iter().map(|m| m.display().to_string()).collect();
            c.env("KITT_SLURM_NODE_MOUNTS", mounts.join(" ")).arg(count.to_string());
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "the test cluster did not start: {}", text(&out));
        Some(Cluster { dir, script, conf })
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join(self.conf)
    }

    fn tool(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.conf());
        c
    }

    /// `kitt` of `env`, talking to this cluster, polling squeue every 200 ms.
    fn kitt(&self, env: &KittEnv) -> Command {
        let mut c = env.cmd();
        c.env("SLURM_CONF", self.conf()).env("KITT_SLURM_POLL", "200ms").env("KITT_SLURM_EXIT_READ_TIMEOUT", "5s");
        c
    }

    fn scontrol(&self, args: &[&str]) -> std::process::Output {
        self.tool("scontrol").args(args).output().unwrap()
    }

    /// The cluster's jobs now: `ID STATE`.
    fn jobs(&self) -> Vec<String> {
        let out = self.tool("squeue").args(["-h", "-r", "-o", "%i %T %j"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.tool("scancel").args(["--user", "root", "--full"]).output();
        let deadline = Instant::now() + Duration::from_secs(40);
        while !self.jobs().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(self.script))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

fn node() -> String {
    let out = Command::new("hostname").arg("-s").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A suite (`executor: slurm`) of `engines` simulator groups (a unit each), each measuring `cells`
/// throughput cells of `requests` requests, `isolation: engine`; its runs live under `shared`;
/// `slurm` adds keys to `execution.slurm`.
fn suite(env: &KittEnv, name: &str, engines: usize, cells: &str, requests: u32, itl_ms: u32, slurm: &str) -> PathBuf {
    let engines: Vec<String> = (0..engines)
        .map(|i| format!("{{name: sim{i}, template: sim, params: {{tokens_per_chunk: 2, itl_ms: {itl_ms}}}}}"))
        .collect();
    let shared = env.path().join("shared");
    let p = env.path().join("suite.yaml");
    std::fs::write(
        &p,
        format!(
            r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: {name}}}
spec:
  models: [{{name: {name}-model}}]
  engines: [{engines}]
  benchmarks:
    - name: tput
      template: throughput
      params: {{concurrency: [{cells}], requests: {requests}, input_tokens: 16, max_tokens: 6}}
  sampling: {{temperature: 0, seed: 5}}
  warmup: {{requests: 0}}
  execution:
    executor: slurm
    isolation: engine
    slurm: {{partition: gpu, time: 10m, shared_dir: {shared}{slurm}}}
"#,
            engines = engines.join(", "),
            shared = shared.display(),
        ),
    )
    .unwrap();
    p
}

/// The one run under `env`'s shared directory once it exists.
fn shared_run(env: &KittEnv) -> Option<PathBuf> {
    std::fs::read_dir(env.path().join("shared"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("plan.json").exists() && p.file_name().is_some_and(|n| n != "bin"))
}

/// Benchmark keys, each with how often it was started and finished across all attempts.
fn benchmark_counts(run: &Path) -> HashMap<String, (usize, usize)> {
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    for r in shard_records(run).iter().filter(|r| r["kind"] == "benchmark") {
        let e = counts.entry(r["key"].as_str().unwrap_or_default().to_string()).or_default();
        match r["event"].as_str() {
            Some("step_started") => e.0 += 1,
            Some("step_finished") => e.1 += 1,
            _ => {}
        }
    }
    counts
}

/// Starts `kitt apply SUITE ARGS` on `cluster` in the background, its output captured.
fn spawn_apply(cluster: &Cluster, env: &KittEnv, suite: &Path, args: &[&str]) -> std::process::Child {
    cluster.kitt(env).arg("apply").arg(suite).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// The run under `env`'s shared directory once its first cell committed and its second measures.
fn second_cell_measuring(env: &KittEnv, limit: Duration) -> PathBuf {
    let mut run = PathBuf::new();
    wait_for("a first commit and a second cell", limit, || {
        let Some(r) = shared_run(env) else { return false };
        run = r;
        let counts = benchmark_counts(&run);
        counts.values().filter(|(_, f)| *f == 1).count() == 1 && counts.values().any(|(s, f)| *s == 1 && *f == 0)
    });
    run
}

fn show(cluster: &Cluster, env: &KittEnv, run: &Path) -> Json {
    let out = cluster.kitt(env).args(["runs", "show"]).arg(run).args(["--output", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serial_slurm_measures_every_cell_like_a_local_run_and_shows_queued_running_done() {
    let Some(cluster) = Cluster::start() else { return };
    let (local, env) = (KittEnv::new(), KittEnv::new());
    // `--executor local` overrides the suite's `executor: slurm`.
    let local_suite = suite(&local, "slurmeq", 4, "1", 6, 15, "");
    let out = local.cmd().arg("apply").arg(local_suite).args(["--executor", "local"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let lock = env.path().join("node-local/kitt-host.lock");
    let suite = suite(&env, "slurmeq", 4, "1", 6, 15, &format!(", max_jobs: 2, host_lock: {}", lock.display()));
    let mut driver = cluster
        .kitt(&env)
        .arg("apply")
        .arg(&suite)
        .args(["--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    let mut reasons = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while driver.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the Slurm run did not finish in 2 minutes: {:?}", cluster.jobs());
        if let Some(run) = shared_run(&env)
            && run.join("executor.json").exists()
        {
            for u in show(&cluster, &env, &run)["units"].as_array().unwrap() {
                seen.entry(u["id"].as_str().unwrap().into()).or_default().insert(u["state"].as_str().unwrap().into());
                if let Some(r) = u["job"]["reason"].as_str() {
                    reasons.insert(r.to_string());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = driver.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = shared_run(&env).expect("the run lives under shared_dir");

    // Placed by Slurm: one array job, one task per unit, throttled to two at once.
    let executor: Json = serde_json::from_slice(&std::fs::read(run.join("executor.json")).unwrap()).unwrap();
    assert_eq!(executor["executor"], "slurm");
    let ids: Vec<&str> =
        executor["units"].as_object().unwrap().values().map(|s| s["external_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "{executor}");
    let arrays: HashSet<&str> = ids.iter().map(|i| i.split('_').next().unwrap()).collect();
    assert_eq!(arrays.len(), 1, "the units were submitted as one array job: {ids:?}");
    assert!(reasons.contains("JobArrayTaskLimit"), "max_jobs held tasks back: {reasons:?}");
    for (unit, states) in &seen {
        assert!(
            states.is_subset(&["pending", "queued", "running", "done"].map(String::from).into()),
            "{unit}: {states:?}"
        );
    }
    assert!(seen.values().any(|s| s.contains("queued")), "{seen:?}");
    assert!(seen.values().any(|s| s.contains("running")), "{seen:?}");
    let last = show(&cluster, &env, &run);
    for u in last["units"].as_array().unwrap() {
        assert_eq!(u["state"], "done", "{u}");
        assert_eq!(u["attempts"], 1, "{u}");
    }
    for (key, (started, finished)) in benchmark_counts(&run) {
        assert_eq!((started, finished), (1, 1), "cell {key} measured once");
    }
    let (a, b) = (report(&local.only_run()), report(&run));
    assert_eq!(b["cells"].as_array().unwrap().len(), 4);
    assert_eq!(common::comparable(&a, true), common::comparable(&b, true));
    let script = std::fs::read_to_string(run.join("slurm/job-0.sh")).unwrap();
    assert!(script.contains(&format!("export KITT_HOST_LOCK={}\n", lock.display())), "{script}");
    // The tasks ran kitt's copy in the shared directory, and logged there.
    assert!(
        std::fs::read_dir(env.path().join("shared/bin"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("kitt-"))
    );
    assert!(
        std::fs::read_dir(run.join("slurm"))
            .unwrap()
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "log"))
    );
}

#[test]
fn serial_slurm_requeues_a_unit_whose_node_is_set_down_and_reruns_only_uncommitted_cells() {
    let Some(cluster) = Cluster::start() else { return };
    let env = KittEnv::new();
    let suite = suite(&env, "slurmdown", 1, "1, 2, 3", 24, 25, "");
    let driver = spawn_apply(&cluster, &env, &suite, &["--executor", "slurm", "--max-attempts", "2"]);
    // The first cell committed and the second measuring: the node goes down mid-cell.
    let run = second_cell_measuring(&env, Duration::from_secs(60));
    let committed_first: Vec<String> =
        benchmark_counts(&run).into_iter().filter(|(_, (_, f))| *f == 1).map(|(k, _)| k).collect();
    let down = cluster.scontrol(&["update", &format!("nodename={}", node()), "state=down", "reason=kitt-test"]);
    assert!(down.status.success(), "{}", text(&down));
    wait_for("the requeue", Duration::from_secs(30), || cluster.jobs().iter().any(|j| j.contains("PENDING")));
    // An administrator returns the node (it may have returned already: ReturnToService=2).
    let _ = cluster.scontrol(&["update", &format!("nodename={}", node()), "state=resume"]);
    let out = driver.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let unit = std::fs::read_dir(run.join("attempts")).unwrap().flatten().next().unwrap().path();
    assert_eq!(common_attempts(&unit), 2, "the requeued task claimed a second attempt");
    let counts = benchmark_counts(&run);
    assert_eq!(counts.len(), 3);
    for key in &committed_first {
        assert_eq!(counts[key], (1, 1), "a committed cell is not measured again");
    }
    for (key, (_, finished)) in &counts {
        assert_eq!(*finished, 1, "cell {key} committed exactly once");
        assert!(run.join("steps").join(key).join(".committed").exists());
    }
    let cells = report(&run)["cells"].as_array().unwrap().clone();
    assert_eq!(cells.len(), 3);
    assert!(cells.iter().all(|c| c["status"] == "ok"), "{cells:?}");
}

fn common_attempts(unit_dir: &Path) -> usize {
    std::fs::read_dir(unit_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count()
}

#[test]
fn serial_slurm_detach_leaves_the_rest_to_a_report_job_and_cancel_stops_every_task() {
    let Some(cluster) = Cluster::start() else { return };
    let env = KittEnv::new();
    let detached = suite(&env, "slurmdetach", 2, "1", 6, 10, "");
    let out = cluster
        .kitt(&env)
        .arg("apply")
        .arg(&detached)
        .args(["--executor", "slurm", "--detach", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["detached"], true);
    assert!(v["report_job"].as_str().is_some_and(|j| !j.is_empty()), "{v}");
    let run = PathBuf::from(v["run_dir"].as_str().unwrap());
    // Nobody follows it here: the report job drives it to its report once the tasks ended.
    wait_for("the report job's report", Duration::from_secs(90), || run.join("report/result.json").exists());
    assert_eq!(report(&run)["cells"].as_array().unwrap().len(), 2);
    let log: Vec<PathBuf> = std::fs::read_dir(run.join("slurm"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("report-")))
        .collect();
    assert_eq!(log.len(), 1, "the report job wrote its log");
    let said = std::fs::read_to_string(&log[0]).unwrap();
    assert!(said.contains("driving it here"), "the report job drove the run: {said}");
    // Followed afterwards on the login node, the run tells its outcome and reaches its store.
    let store = env.path().join("results.db");
    let out = cluster.kitt(&env).args(["runs", "follow"]).arg(&run).env("KITT_STORE", &store).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out =
        cluster.kitt(&env).args(["results", "list", "--output", "json"]).env("KITT_STORE", &store).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listed: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "both cells indexed: {listed}");

    // A long run, cancelled while its tasks run: every task and simulator stops.
    let env = KittEnv::new();
    let marker = "slurmcancel";
    let long = suite(&env, marker, 2, "1", 400, 30, "");
    let out = cluster
        .kitt(&env)
        .arg("apply")
        .arg(&long)
        .args(["--executor", "slurm", "--detach", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run =
        PathBuf::from(serde_json::from_slice::<Json>(&out.stdout).unwrap()["run_dir"].as_str().unwrap().to_string());
    wait_for("both units measuring", Duration::from_secs(60), || {
        benchmark_counts(&run).values().filter(|(s, _)| *s == 1).count() == 2
    });
    let out = cluster.kitt(&env).args(["runs", "cancel"]).arg(&run).args(["--wait", "60s"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the run's jobs to leave the queue", Duration::from_secs(30), || {
        cluster.jobs().iter().all(|j| !j.contains(marker) && !j.contains(run.file_name().unwrap().to_str().unwrap()))
    });
    assert_eq!(common::sims_alive(marker), 0, "a simulator was left running");
    assert!(shard_records(&run).iter().any(|r| r["event"] == "run_interrupted"), "the tasks journaled the stop");
}

#[test]
fn serial_slurm_a_task_stopped_outside_kitt_is_submitted_again_and_runs_only_what_is_left() {
    let Some(cluster) = Cluster::start() else { return };
    let env = KittEnv::new();
    let suite = suite(&env, "slurmscancel", 1, "1, 2, 3", 24, 25, "");
    let driver = spawn_apply(&cluster, &env, &suite, &["--max-attempts", "2", "--output", "json"]);
    let run = second_cell_measuring(&env, Duration::from_secs(60));
    let executor: Json = serde_json::from_slice(&std::fs::read(run.join("executor.json")).unwrap()).unwrap();
    let job =
        executor["units"].as_object().unwrap().values().next().unwrap()["external_id"].as_str().unwrap().to_string();
    // An operator (or a preemption) cancels the task: kitt did not ask for it, so it is lost, not done.
    let out = cluster.tool("scancel").arg(&job).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = driver.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("placing it again"), "the driver said why it submitted again: {stderr}");

    let executor: Json = serde_json::from_slice(&std::fs::read(run.join("executor.json")).unwrap()).unwrap();
    let again =
        executor["units"].as_object().unwrap().values().next().unwrap()["external_id"].as_str().unwrap().to_string();
    assert_ne!(again, job, "a second array job holds the unit's second attempt");
    let unit = std::fs::read_dir(run.join("attempts")).unwrap().flatten().next().unwrap().path();
    assert_eq!(common_attempts(&unit), 2);
    for (key, counts) in benchmark_counts(&run) {
        assert_eq!(counts.1, 1, "cell {key} committed exactly once: {counts:?}");
    }
    assert!(report(&run)["cells"].as_array().unwrap().iter().all(|c| c["status"] == "ok"));
}

#[test]
fn serial_slurm_kill_9_of_slurmd_mid_cell_requeues_and_the_old_attempt_commits_nothing_more() {
    let Some(cluster) = Cluster::start() else { return };
    let env = KittEnv::new();
    let marker = "slurmdkill";
    // A short first cell, then a long one (about 36 s) that outlives Slurm's SlurmdTimeout.
    let suite = suite(&env, marker, 1, "8, 1", 300, 40, "");
    let driver = spawn_apply(&cluster, &env, &suite, &["--max-attempts", "2"]);
    let run = second_cell_measuring(&env, Duration::from_secs(60));
    let pid_file = cluster.dir.path().join("run/slurmd.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // SAFETY: killing the slurmd this test's cluster started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // The task's process lives on without its slurmd; Slurm marks the node down and requeues it.
    wait_for("the requeue after SlurmdTimeout", Duration::from_secs(45), || {
        cluster.jobs().iter().any(|j| j.contains("PENDING"))
    });
    let out = cluster.tool("slurmd").output().unwrap();
    assert!(out.status.success(), "slurmd did not restart: {}", text(&out));
    let _ = cluster.scontrol(&["update", &format!("nodename={}", node()), "state=resume"]);
    let out = driver.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let unit = std::fs::read_dir(run.join("attempts")).unwrap().flatten().next().unwrap().path();
    assert_eq!(common_attempts(&unit), 2, "the requeued task claimed a second attempt");
    for (key, counts) in benchmark_counts(&run) {
        assert_eq!(counts.1, 1, "cell {key} committed exactly once: {counts:?}");
    }
    assert!(report(&run)["cells"].as_array().unwrap().iter().all(|c| c["status"] == "ok"));
    // The returned slurmd killed the lost attempt; its simulator died with it.
    wait_for("no simulator of the run left", Duration::from_secs(30), || common::sims_alive(marker) == 0);
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file()
                && std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn serial_slurm_a_secret_is_read_on_the_node_and_is_in_no_file_of_the_run_or_of_slurm() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(cluster) = Cluster::start() else { return };
    let env = KittEnv::new();
    std::fs::write(env.path().join("keyed-sim.yaml"), common::KEYED_SIM).unwrap();
    let sentinel = "k3y-5lurm-sentinel";
    let secret = env.path().join(sentinel);
    let secrets = env.path().join("secrets");
    std::fs::write(&secrets, format!("# read on the node\nBENCH_API_KEY={}\n", secret.display())).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let shared = env.path().join("shared");
    let suite = env.suite(&format!(
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: keyed}}\nspec:\n  templates: [keyed-sim.yaml]\n  \
         models: [{{name: m}}]\n  engines: [{{name: s, template: keyed-sim, params: {{api_key: {{from_env: BENCH_API_KEY}}}}}}]\n  \
         benchmarks: [{{name: lat, template: latency, params: {{requests: 3, max_tokens: 4}}}}]\n  warmup: {{requests: 1}}\n  \
         execution:\n    executor: slurm\n    slurm: {{partition: gpu, time: 10m, shared_dir: {}, secrets_file: {}}}\n",
        shared.display(),
        secrets.display()
    ));
    // The driver has no such variable: the node reads the value from the secrets file.
    let out = cluster.kitt(&env).arg("apply").arg(&suite).env_remove("BENCH_API_KEY").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        env.path().join(format!("{sentinel}.jsonl")).exists(),
        "the secret reached the engine: it names the simulator's request log"
    );
    let run = shared_run(&env).unwrap();
    assert_eq!(report(&run)["cells"][0]["status"], "ok");
    assert_eq!(files_containing(&run, sentinel), Vec::<PathBuf>::new(), "the secret is in a file of the run");
    assert_eq!(
        files_containing(cluster.dir.path(), sentinel),
        Vec::<PathBuf>::new(),
        "the secret is in Slurm's state, spool or logs"
    );
    assert!(!text(&out).contains(sentinel));

    // A secrets file others may read is refused on the node, naming the fix.
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cluster
        .kitt(&env)
        .arg("apply")
        .arg(&suite)
        .args(["--fresh", "--max-attempts", "1"])
        .env_remove("BENCH_API_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let run = std::fs::read_dir(&shared)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("plan.json").exists() && *p != run)
        .expect("the second run");
    let logs: String = std::fs::read_dir(run.join("slurm"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(logs.contains("chmod 600"), "the task said why: {logs}");
    assert!(text(&out).contains("slurm/"), "the driver names the task's log: {}", text(&out));
}

#[test]
fn serial_slurm_an_engine_asking_two_gpus_runs_as_an_array_job_of_its_own() {
    let Some(cluster) = Cluster::start() else { return };
    let env = KittEnv::new();
    let shared = env.path().join("shared");
    let suite = env.suite(&format!(
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: shapes}}\nspec:\n  models: [{{name: shapes-model}}]\n  \
         engines:\n    - {{name: one, template: sim}}\n    - {{name: two, template: sim, params: {{ttft_ms: 5}}, slurm: {{gres: 'gpu:2'}}}}\n  \
         benchmarks: [{{name: lat, template: latency, params: {{requests: 3, max_tokens: 4}}}}]\n  warmup: {{requests: 0}}\n  \
         execution:\n    executor: slurm\n    isolation: engine\n    slurm: {{partition: gpu, gres: 'gpu:1', time: 10m, shared_dir: {}}}\n",
        shared.display()
    ));
    let out = cluster.kitt(&env).arg("apply").arg(&suite).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = shared_run(&env).unwrap();
    let executor: Json = serde_json::from_slice(&std::fs::read(run.join("executor.json")).unwrap()).unwrap();
    let arrays: HashSet<String> = executor["units"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["external_id"].as_str().unwrap().split('_').next().unwrap().to_string())
        .collect();
    assert_eq!(arrays.len(), 2, "one array job per shape: {executor}");
    let script = std::fs::read_to_string(run.join("slurm/job-1.sh")).unwrap();
    assert!(script.contains("units-1.txt"), "{script}");
    assert_eq!(report(&run)["cells"].as_array().unwrap().len(), 2);
}

/// The host each attempt of `run`'s units claimed from: unit → hosts by attempt.
fn claim_hosts(run: &Path) -> HashMap<String, Vec<String>> {
    let mut out = HashMap::new();
    for unit in std::fs::read_dir(run.join("attempts")).unwrap().flatten() {
        let mut hosts = Vec::new();
        for n in 0..10 {
            let Ok(bytes) = std::fs::read(unit.path().join(n.to_string())) else { break };
            let claim: Json = serde_json::from_slice(&bytes).unwrap();
            hosts.push(claim["host"].as_str().unwrap().to_string());
        }
        out.insert(unit.file_name().to_string_lossy().to_string(), hosts);
    }
    out
}

fn with_host_isolation(suite: &Path) {
    let text = std::fs::read_to_string(suite).unwrap().replace("isolation: engine", "isolation: host");
    std::fs::write(suite, text).unwrap();
}

#[test]
fn serial_slurm_nodes_a_killed_node_container_loses_nothing_and_the_unit_finishes_elsewhere() {
    let env = KittEnv::new();
    let Some(cluster) = Cluster::nodes(3, &[env.path()]) else { return };
    // A short first cell, then a long one (about 36 s) that outlives SlurmdTimeout; the node's
    // own host lock (its /var/lock), not one shared through the mounted directory.
    let suite = suite(&env, "slurmnodes", 1, "8, 1", 300, 40, ", host_lock: /var/lock/kitt-host.lock");
    with_host_isolation(&suite);
    let driver = spawn_apply(&cluster, &env, &suite, &["--max-attempts", "2"]);
    let run = second_cell_measuring(&env, Duration::from_secs(90));
    let first = claim_hosts(&run).into_values().next().unwrap()[0].clone();
    let nodes = std::fs::read_to_string(cluster.dir.path().join("nodes")).unwrap();
    let container = nodes.lines().find(|c| c.ends_with(&format!("-{first}"))).unwrap().to_string();
    let out = Command::new("docker").args(["kill", &container]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = driver.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let hosts = claim_hosts(&run).into_values().next().unwrap();
    assert_eq!(hosts.len(), 2, "the requeued task claimed a second attempt: {hosts:?}");
    assert_ne!(hosts[1], first, "it ran on another node");
    for (key, counts) in benchmark_counts(&run) {
        assert_eq!(counts.1, 1, "cell {key} committed exactly once: {counts:?}");
    }
    assert!(report(&run)["cells"].as_array().unwrap().iter().all(|c| c["status"] == "ok"));
}

#[test]
fn serial_slurm_nodes_units_share_a_node_under_engine_isolation_and_never_under_host() {
    let env = KittEnv::new();
    let Some(cluster) = Cluster::nodes(3, &[env.path()]) else { return };
    let nodes_of = |isolation_host: bool| -> HashSet<String> {
        let env_run = KittEnv::new();
        let suite = suite(&env, "slurmshare", 2, "1", 20, 20, ", gres: 'gpu:1', host_lock: /var/lock/kitt-host.lock");
        if isolation_host {
            with_host_isolation(&suite);
        }
        let out = cluster.kitt(&env_run).arg("apply").arg(&suite).arg("--fresh").output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let runs: Vec<PathBuf> = std::fs::read_dir(env.path().join("shared"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("report/result.json").exists())
            .collect();
        let newest = runs.into_iter().max_by_key(|p| p.file_name().unwrap().to_owned()).unwrap();
        claim_hosts(&newest).into_values().map(|h| h[0].clone()).collect()
    };
    // Two 1-GPU units fit one 2-GPU node: the GPU allocation is the boundary.
    assert_eq!(nodes_of(false).len(), 1, "both units on one node");
    // `--exclusive`: a node is the boundary.
    assert_eq!(nodes_of(true).len(), 2, "each unit on a node of its own");
}

/// Every path of `v`'s object keys (array items under `[]`), less those ending in `skip`.
fn key_paths(prefix: &str, v: &Json, skip: &[&str], out: &mut std::collections::BTreeSet<String>) {
    match v {
        Json::Object(o) => {
            for (k, x) in o {
                if skip.contains(&k.as_str()) {
                    continue;
                }
                let p = format!("{prefix}.{k}");
                out.insert(p.clone());
                key_paths(&p, x, skip, out);
            }
        }
        Json::Array(a) => a.iter().for_each(|x| key_paths(&format!("{prefix}[]"), x, skip, out)),
        _ => {}
    }
}

#[test]
fn serial_slurm_a_two_client_cell_runs_its_shards_as_steps_of_its_job_with_the_local_result_shape() {
    let Some(cluster) = Cluster::start() else { return };
    let (local, env) = (KittEnv::new(), KittEnv::new());
    let yaml = |k: &KittEnv| {
        k.suite(&format!(
            "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: slurmclients}}\nspec:\n  models: [{{name: sc-model}}]\n  \
             engines: [{{name: sim, template: sim, params: {{ttft_ms: 4, itl_ms: 1}}}}]\n  \
             benchmarks: [{{name: steady, template: rate, params: {{rate: 100, requests: 200, max_tokens: 6, input_tokens: 16}}, clients: [1, 2]}}]\n  \
             warmup: {{requests: 0}}\n  \
             execution:\n    executor: slurm\n    isolation: engine\n    slurm: {{partition: gpu, time: 10m, shared_dir: {}}}\n",
            k.path().join("shared").display()
        ))
    };
    // The plan asks Slurm for one task per shard, on the engine's node.
    let suite = yaml(&env);
    let out = env.cmd().arg("plan").arg(&suite).args(["--output", "sbatch"]).output().unwrap();
    let plan = text(&out);
    assert!(out.status.success(), "{plan}");
    assert!(plan.contains("--ntasks=2") && plan.contains("--nodes=1"), "{plan}");
    assert!(plan.contains("export KITT_SLURM_CLIENT_TASKS=2"), "{plan}");

    let out = local.cmd().arg("apply").arg(yaml(&local)).args(["--executor", "local"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = cluster.kitt(&env).arg("apply").arg(&suite).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = shared_run(&env).unwrap();
    let (a, b) = (report(&local.only_run()), report(&run));
    let cell = |r: &Json, n: u64| -> Json {
        r["cells"].as_array().unwrap().iter().find(|c| c["cell"]["swept"]["clients"] == n).unwrap().clone()
    };
    // The shards were steps of the unit's one job, on this node, each reporting its step.
    let clients = &cell(&b, 2)["metrics"]["clients"];
    assert_eq!((clients["count"].clone(), clients["complete"].clone()), (2.into(), true.into()), "{clients}");
    let steps: Vec<(String, String)> = clients["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["status"], "ok", "{s}");
            assert_eq!(s["host"], node(), "{s}");
            assert!(s.get("core").is_none(), "Slurm, not kitt, binds a step: {s}");
            let step = s["slurm_step"].as_str().unwrap_or_else(|| panic!("not a Slurm step: {s}"));
            let (job, step) = step.split_once('.').unwrap();
            (job.to_string(), step.to_string())
        })
        .collect();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].0, steps[1].0, "both shards are steps of one job: {steps:?}");
    assert_ne!(steps[0].1, steps[1].1, "each shard is a step of its own: {steps:?}");
    eprintln!("shards through srun: {}", clients["shards"]);
    let shown = cluster.kitt(&env).args(["runs", "show"]).arg(&run).output().unwrap();
    let shown = text(&shown);
    assert!(shown.contains(&format!("Slurm step {}.{}", steps[0].0, steps[0].1)), "{shown}");
    // The same result as a local run's: the same cells, counts and metric names, and the same
    // metric tree for the two-client cell down to every shard's fields (but where it ran).
    assert_eq!(common::comparable(&a, false), common::comparable(&b, false));
    let paths = |r: &Json| {
        let mut out = std::collections::BTreeSet::new();
        key_paths("", &cell(r, 2)["metrics"], &["core", "slurm_step"], &mut out);
        out
    };
    assert_eq!(paths(&a), paths(&b));
    // And the union of its shards' requests is the one-client schedule.
    let schedule = |run: &Path, c: &Json| -> Vec<(u64, u64, u64)> {
        let key = c["provenance"]["key"].as_str().unwrap();
        let text = std::fs::read_to_string(run.join("steps").join(key).join("requests.jsonl")).unwrap();
        let mut v: Vec<(u64, u64, u64)> = text
            .lines()
            .map(|l| serde_json::from_str::<Json>(l).unwrap())
            .map(|r| {
                (r["index"].as_u64().unwrap(), r["scheduled_ns"].as_u64().unwrap(), r["input_tokens"].as_u64().unwrap())
            })
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(schedule(&run, &cell(&b, 1)), schedule(&run, &cell(&b, 2)));
    assert_eq!(schedule(&run, &cell(&b, 2)).len(), 200);
}

#[test]
fn serial_slurm_nodes_a_two_client_cell_sends_to_an_endpoint_from_two_nodes() {
    let env = KittEnv::new();
    let Some(cluster) = Cluster::nodes(2, &[env.path()]) else { return };
    // The nodes reach this machine at their network's gateway: slurmctld's address.
    let conf = std::fs::read_to_string(cluster.conf()).unwrap();
    let gateway = conf
        .lines()
        .find_map(|l| l.strip_prefix("SlurmctldHost=")?.split_once('(')?.1.strip_suffix(')').map(String::from))
        .unwrap_or_else(|| panic!("no SlurmctldHost address in {conf}"));
    // On every interface: the node containers reach it at their network's gateway.
    let port = common::start_sim(&["--host", "0.0.0.0", "--port", "0", "--ttft-ms", "4", "--itl-ms", "1"]);
    let suite = env.suite(&format!(
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: slurmspread}}\nspec:\n  \
         models: [{{name: spread-model, served_name: auto}}]\n  \
         engines: [{{name: gateway, template: vllm, endpoint: {{url: 'http://{gateway}:{port}'}}}}]\n  \
         benchmarks: [{{name: steady, template: rate, params: {{rate: 100, requests: 200, max_tokens: 6, input_tokens: 16}}, clients: 2}}]\n  \
         warmup: {{requests: 0}}\n  \
         execution:\n    executor: slurm\n    isolation: engine\n    \
         slurm: {{partition: gpu, time: 10m, shared_dir: {}, host_lock: /var/lock/kitt-host.lock, extra: ['--ntasks-per-node=1']}}\n",
        env.path().join("shared").display()
    ));
    let out = cluster.kitt(&env).arg("apply").arg(&suite).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = shared_run(&env).unwrap();
    let script = std::fs::read_to_string(run.join("slurm/job-0.sh")).unwrap();
    assert!(script.contains("export KITT_SLURM_CLIENT_TASKS=2"), "{script}");
    let r = report(&run);
    let cell = &r["cells"].as_array().unwrap()[0];
    assert_eq!(cell["status"], "ok", "{cell}");
    assert_eq!(cell["metrics"]["requests"], 200, "{}", cell["metrics"]);
    let shards = cell["metrics"]["clients"]["shards"].as_array().unwrap().clone();
    // One task per node: the shards sent from two hosts, as steps of one job, each measured
    // against the coordinator's clock across srun's relay (the nodes share this kernel's clock).
    eprintln!("shards on two nodes: {shards:?}");
    let hosts: HashSet<&str> = shards.iter().map(|s| s["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, HashSet::from(["n1", "n2"]), "{shards:?}");
    let jobs: HashSet<&str> =
        shards.iter().map(|s| s["slurm_step"].as_str().unwrap().split('.').next().unwrap()).collect();
    assert_eq!(jobs.len(), 1, "{shards:?}");
    for s in &shards {
        assert_eq!(s["status"], "ok", "{s}");
        assert_eq!(s["requests"], 100, "{s}");
        let offset = s["clock_offset_ms"].as_f64().unwrap();
        assert!(offset.abs() < 5.0, "one kernel's clock, measured {offset} ms apart: {s}");
    }
}
