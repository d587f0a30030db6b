//! `kitt apply` end to end: the real binary, the real simulator as a child process, real
//! signals and real `kill -9` (through the journal hook, never timed sleeps).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
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

    fn runs(&self) -> PathBuf {
        self.path().join("runs")
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kitt"));
        c.env("KITT_RUNS_DIR", self.runs())
            .env("KITT_STORE", "off")
            .env("KITT_HOST_LOCK", self.path().join("host.lock"))
            .env("KITT_SIM_REQUEST_LOG", self.path().join("requests.jsonl"))
            .env_remove("KITT_TEST_KILL_AFTER_RECORD")
            .env_remove("KITT_TEST_KILL_IN_BENCHMARK")
            .env_remove("KITT_SIM_VERSION")
            .env("NO_COLOR", "1");
        c
    }

    fn suite(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, yaml).unwrap();
        p
    }

    fn apply(&self, suite: &Path, extra: &[&str]) -> Output {
        self.cmd().arg("apply").arg(suite).args(extra).output().unwrap()
    }

    fn run_dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> =
            std::fs::read_dir(self.runs()).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
        v.sort();
        v
    }

    fn only_run(&self) -> PathBuf {
        let runs = self.run_dirs();
        assert_eq!(runs.len(), 1, "expected one run, found {runs:?}");
        runs[0].clone()
    }

    fn sim_requests(&self) -> Vec<Json> {
        std::fs::read_to_string(self.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn journal(run: &Path) -> Vec<Json> {
    std::fs::read_to_string(run.join("journal.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn report(run: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(run.join("report/result.json")).unwrap()).unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Simulator processes whose command line mentions `marker` (each test uses its own model name).
fn sims_alive(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(" sim ") && cmdline.contains(marker) {
            // A zombie is already dead; only count live processes.
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            if !stat.contains(") Z ") {
                out.push(pid);
            }
        }
    }
    out
}

fn small_suite(model: &str, extra_engine: &str, bench_requests: u32) -> String {
    format!(
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: small}}
spec:
  models: [{{name: {model}}}]
  engines:
    - name: sim
      template: sim
      params: {{tokens_per_chunk: 2{extra_engine}}}
  benchmarks:
    - name: tput
      template: throughput
      params: {{concurrency: [1, 3], requests: {bench_requests}, input_tokens: 16, max_tokens: 8}}
    - name: lat
      template: latency
      params: {{requests: 5, max_tokens: 6}}
  sampling: {{temperature: 0, seed: 3}}
  warmup: {{requests: 2}}
  reporters: [json, csv]
"#
    )
}

/// What must be equal between two runs' reports apart from timings (DESIGN decision 7).
fn comparable(report: &Json) -> Vec<Json> {
    report["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let m = &c["metrics"];
            let names: Vec<&String> = m.as_object().map(|o| o.keys().collect()).unwrap_or_default();
            serde_json::json!({
                "cell": c["cell"], "status": c["status"], "metric_names": names,
                "requests": m["requests"], "errors": m["errors"], "output_tokens": m["output_tokens"]["total"],
                "input_tokens": m["input_tokens"]["total"],
            })
        })
        .collect()
}

#[test]
fn quickstart_runs_end_to_end_and_every_sampling_value_reaches_the_sim() {
    let env = Env::new();
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.yaml");
    let out = env.apply(&quickstart, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("tput concurrency=4 #0") && stdout.contains("latency #0"), "{stdout}");
    let run = env.only_run();
    for f in ["run.json", "plan.json", "journal.jsonl", "report/result.json", "report/report.md"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    assert!(!run.join("run.lease").exists(), "the run lock is let go at the end");
    // The markdown reporter (a template over the result model) has a row per cell.
    let md = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    assert!(md.contains("| sim | tiny | concurrency=4 | 0 | ok | 32/32 |"), "{md}");
    assert!(md.contains("## latency (latency)"), "{md}");
    let r = report(&run);
    let cells = r["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 3);
    for c in cells {
        assert_eq!(c["status"], "ok");
        let m = &c["metrics"];
        let requests = m["requests"].as_u64().unwrap();
        let max_tokens = c["cell"]["sampling"]["max_tokens"].as_u64().unwrap();
        assert_eq!(
            m["output_tokens"]["total"].as_u64().unwrap(),
            requests * max_tokens,
            "ignore_eos makes every request generate max_tokens"
        );
        assert_eq!(
            m["input_tokens"]["total"].as_u64().unwrap(),
            requests * c["cell"]["params"]["input_tokens"].as_u64().unwrap()
        );
    }
    // What the suite says reached the engine: sampling (temperature 0, top_p 0.9, seed 7),
    // per-benchmark max_tokens overrides (64, 32), ignore_eos, the served model name.
    let sent: Vec<Json> =
        env.sim_requests().into_iter().filter(|r| r["path"] == "/v1/completions").map(|r| r["body"].clone()).collect();
    assert_eq!(sent.len(), 2 + 32 + 32 + 10, "warmup + two tput cells + latency");
    for b in &sent {
        assert_eq!(b["temperature"], 0.0);
        assert_eq!(b["top_p"], 0.9);
        assert_eq!(b["seed"], 7);
        assert_eq!(b["ignore_eos"], true);
        assert_eq!(b["model"], "tiny");
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert!(b.get("top_k").is_none(), "unset sampling values are left out: {b}");
    }
    let by_max: Vec<u64> = sent.iter().map(|b| b["max_tokens"].as_u64().unwrap()).collect();
    assert_eq!(by_max.iter().filter(|m| **m == 16).count(), 2, "warmup");
    assert_eq!(by_max.iter().filter(|m| **m == 64).count(), 64, "tput override");
    assert_eq!(by_max.iter().filter(|m| **m == 32).count(), 10, "latency override");
    // Engine params reached the simulator's command line.
    let plan: Json = serde_json::from_slice(&std::fs::read(run.join("plan.json")).unwrap()).unwrap();
    let argv = plan["groups"][0]["mode"]["native"]["argv"].as_array().unwrap();
    let pos = argv.iter().position(|a| a == "--ttft-ms").unwrap();
    assert_eq!(argv[pos + 1], "20");
}

#[test]
fn benchmark_params_override_suite_sampling_and_every_value_arrives() {
    let env = Env::new();
    let suite = env.suite(
        "s.yaml",
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: overrides}
spec:
  models: [{name: over, served_name: served-over}]
  engines: [{name: sim, template: sim}]
  benchmarks:
    - name: b
      template: latency
      params: {requests: 3, max_tokens: 12, temperature: 0.7, top_k: 9, stop: ["~~~", "END"]}
  sampling: {temperature: 0.3, top_p: 0.8, top_k: 20, min_p: 0.05, seed: 11, presence_penalty: 0.1,
             frequency_penalty: 0.2, repetition_penalty: 1.05, max_tokens: 99}
  warmup: {requests: 0}
"#,
    );
    let out = env.apply(&suite, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let sent: Vec<Json> =
        env.sim_requests().into_iter().filter(|r| r["path"] == "/v1/completions").map(|r| r["body"].clone()).collect();
    assert_eq!(sent.len(), 3);
    for b in sent {
        assert_eq!(b["model"], "served-over");
        assert_eq!(b["temperature"], 0.7, "benchmark param beats suite sampling");
        assert_eq!(b["top_k"], 9);
        assert_eq!(b["max_tokens"], 12);
        assert_eq!(b["stop"], serde_json::json!(["~~~", "END"]));
        assert_eq!(b["top_p"], 0.8, "suite sampling reaches the body");
        assert_eq!(b["min_p"], 0.05);
        assert_eq!(b["seed"], 11);
        assert_eq!(b["presence_penalty"], 0.1);
        assert_eq!(b["frequency_penalty"], 0.2);
        assert_eq!(b["repetition_penalty"], 1.05);
    }
}

#[test]
fn output_tokens_fall_back_to_the_tokenizer_exactly_and_agree_with_usage() {
    for (usage, source) in [("false", "tokenizer"), ("true", "usage")] {
        let env = Env::new();
        let yaml = small_suite("fallback", &format!(", tokens_per_chunk: 4, usage: {usage}"), 6)
            .replace("tokens_per_chunk: 2, ", "");
        let suite = env.suite("s.yaml", &yaml);
        let out = env.apply(&suite, &[]);
        assert!(out.status.success(), "{}", text(&out));
        let r = report(&env.only_run());
        for c in r["cells"].as_array().unwrap() {
            let t = &c["metrics"]["output_tokens"];
            let requests = c["metrics"]["requests"].as_u64().unwrap();
            let max_tokens = c["cell"]["sampling"]["max_tokens"].as_u64().unwrap();
            assert_eq!(t["source"], source, "{t}");
            assert_eq!(t["total"].as_u64().unwrap(), requests * max_tokens, "exact with 4 tokens per chunk: {t}");
            if usage == "true" {
                assert_eq!(c["metrics"]["usage_agrees"], true);
                assert!(t["usage_total"].is_u64());
            } else {
                assert!(t["usage_total"].is_null());
            }
        }
    }
}

fn finished_benchmarks(run: &Path) -> Vec<String> {
    journal(run)
        .iter()
        .filter(|r| r["event"] == "step_finished" && r["kind"] == "benchmark")
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn kill_after_any_journal_record_then_resume_gives_the_uninterrupted_result() {
    let reference = {
        let env = Env::new();
        let out = env.apply(&env.suite("s.yaml", &small_suite("kill-ref", "", 12)), &[]);
        assert!(out.status.success(), "{}", text(&out));
        comparable(&report(&env.only_run()))
    };
    for n in [1, 4, 7, 10, 13, 17] {
        let env = Env::new();
        let marker = format!("kill{n}x");
        let suite = env.suite("s.yaml", &small_suite(&marker, "", 12));
        let out =
            env.cmd().arg("apply").arg(&suite).env("KITT_TEST_KILL_AFTER_RECORD", n.to_string()).output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(9), "record {n}: {}", text(&out));
        // PR_SET_PDEATHSIG: the simulator dies with kitt.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sims_alive(&marker).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(sims_alive(&marker).is_empty(), "record {n}: a simulator survived kill -9");
        let out = env.apply(&suite, &[]);
        assert!(out.status.success(), "record {n}: {}", text(&out));
        let run = env.only_run();
        let finished = finished_benchmarks(&run);
        let mut unique = finished.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(finished.len(), unique.len(), "record {n}: a cell finished twice");
        assert_eq!(unique.len(), 3, "record {n}");
        let r = report(&run);
        assert_eq!(
            comparable(&r),
            reference
                .iter()
                .cloned()
                .map(|mut c| {
                    c["cell"]["model"] = marker.clone().into();
                    c
                })
                .collect::<Vec<_>>(),
            "record {n}"
        );
        assert!(sims_alive(&marker).is_empty());
    }
}

#[test]
fn kill_in_the_middle_of_a_benchmark_reruns_that_cell_from_zero() {
    let env = Env::new();
    let suite = env.suite("s.yaml", &small_suite("midcell", ", itl_ms: 1", 60));
    let out = env.cmd().arg("apply").arg(&suite).env("KITT_TEST_KILL_IN_BENCHMARK", "10").output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    let run = env.only_run();
    let started = journal(&run).iter().filter(|r| r["event"] == "step_started" && r["kind"] == "benchmark").count();
    assert_eq!(started, 1);
    assert!(finished_benchmarks(&run).is_empty(), "killed inside the first cell");
    let out = env.apply(&suite, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let r = report(&run);
    let first = &r["cells"][0]["metrics"];
    assert_eq!(first["requests"], 60, "the interrupted cell's partial data is not reported");
    assert_eq!(r["cells"][0]["provenance"]["reused"], false);
}

fn wait_for(run_root: &Path, what: &str, timeout: Duration) -> PathBuf {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(run) =
            std::fs::read_dir(run_root).ok().and_then(|mut d| d.next()).and_then(|e| e.ok()).map(|e| e.path())
            && run.join("journal.jsonl").exists()
            && journal(&run).iter().any(|r| r["event"] == "step_started" && r["kind"] == what)
        {
            return run;
        }
        assert!(Instant::now() < deadline, "no {what} step started");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigint_and_sigterm_exit_130_clean_up_and_leave_a_resumable_run() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let env = Env::new();
        let marker = format!("sig{signal}x");
        let suite = env.suite("s.yaml", &small_suite(&marker, ", itl_ms: 20", 40));
        let child = env.cmd().arg("apply").arg(&suite).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let run = wait_for(&env.runs(), "benchmark", Duration::from_secs(30));
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "signal {signal}: {}", text(&out));
        assert!(sims_alive(&marker).is_empty(), "the simulator was not stopped");
        assert!(journal(&run).iter().any(|r| r["event"] == "run_interrupted"));
        let out = env.apply(&suite, &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("resumed run"), "{}", text(&out));
        assert_eq!(env.run_dirs().len(), 1);
    }
}

#[test]
fn a_second_kitt_on_the_same_run_exits_naming_the_holder() {
    let env = Env::new();
    let suite = env.suite("s.yaml", &small_suite("locked", ", itl_ms: 10", 40));
    let mut first = env.cmd().arg("apply").arg(&suite).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let run = wait_for(&env.runs(), "benchmark", Duration::from_secs(30));
    let second = env.apply(&suite, &[]);
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another kitt") && err.contains(&format!("pid {}", first.id())), "{err}");
    unsafe { libc::kill(first.id() as i32, libc::SIGINT) };
    first.wait().unwrap();
    let starts = journal(&run).iter().filter(|r| r["event"] == "run_started").count();
    assert_eq!(starts, 1, "the second kitt wrote nothing");
}

#[test]
fn a_changed_engine_version_stops_the_resume_unless_drift_is_accepted() {
    let env = Env::new();
    let suite = env.suite("s.yaml", &small_suite("drift", "", 8));
    // Kill right after the first benchmark finished (start, warmup and one cell are journaled).
    let records = {
        let probe = Env::new();
        let out = probe.apply(&probe.suite("s.yaml", &small_suite("drift", "", 8)), &[]);
        assert!(out.status.success());
        let j = journal(&probe.only_run());
        j.iter().position(|r| r["event"] == "step_finished" && r["kind"] == "collect").unwrap()
    };
    let out = env
        .cmd()
        .arg("apply")
        .arg(&suite)
        .env("KITT_SIM_VERSION", "sim 1.0")
        .env("KITT_TEST_KILL_AFTER_RECORD", records.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = env.cmd().arg("apply").arg(&suite).env("KITT_SIM_VERSION", "sim 2.0").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("drift") && err.contains("sim 1.0") && err.contains("sim 2.0") && err.contains("--accept-drift"),
        "{err}"
    );
    let out =
        env.cmd().arg("apply").arg(&suite).arg("--accept-drift").env("KITT_SIM_VERSION", "sim 2.0").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r = report(&env.only_run());
    let cells = r["cells"].as_array().unwrap();
    let marked = cells.iter().filter(|c| c["provenance"]["drift"].as_array().is_some_and(|d| !d.is_empty())).count();
    let reused = cells.iter().filter(|c| c["provenance"]["reused"] == true).count();
    assert_eq!(reused, 1);
    assert_eq!(marked, 2, "the cells measured after the drift are marked");
}

#[test]
fn a_cell_over_its_error_budget_fails_the_run_and_the_rest_still_runs() {
    let env = Env::new();
    let suite = env.suite(
        "s.yaml",
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: budget}
spec:
  models: [{name: budget}]
  engines:
    - {name: flaky, template: sim, params: {error_rate: 0.5, seed: 1}}
    - {name: good, template: sim}
  benchmarks:
    - {name: lat, template: latency, params: {requests: 20, max_tokens: 4}}
  warmup: {requests: 0}
  execution: {on_failure: continue, max_error_rate: 0.05}
"#,
    );
    let out = env.apply(&suite, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let r = report(&env.only_run());
    let status: Vec<(String, String)> = r["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["cell"]["engine"].as_str().unwrap().into(), c["status"].as_str().unwrap().into()))
        .collect();
    assert_eq!(status, vec![("flaky".into(), "failed".into()), ("good".into(), "ok".into())]);
    let flaky = &r["cells"][0];
    assert!(flaky["error"].as_str().unwrap().contains("above the budget"), "{flaky}");
    assert!(flaky["metrics"]["errors"].as_u64().unwrap() > 1);
}

#[test]
fn two_kitt_processes_never_overlap_their_measuring_windows() {
    let env = Env::new();
    let a = env.suite("a.yaml", &small_suite("hosta", ", itl_ms: 2", 10).replace("name: small", "name: a"));
    let b = env.suite("b.yaml", &small_suite("hostb", ", itl_ms: 2", 10).replace("name: small", "name: b"));
    let spawn = |s: &Path| env.cmd().arg("apply").arg(s).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let (pa, pb) = (spawn(&a), spawn(&b));
    let (oa, ob) = (pa.wait_with_output().unwrap(), pb.wait_with_output().unwrap());
    assert!(oa.status.success() && ob.status.success(), "{}\n{}", text(&oa), text(&ob));
    let mut windows = Vec::new();
    for run in env.run_dirs() {
        let j = journal(&run);
        for r in
            j.iter().filter(|r| r["event"] == "step_started" && (r["kind"] == "benchmark" || r["kind"] == "warmup"))
        {
            let end = j
                .iter()
                .find(|e| {
                    e["event"] == "step_finished" && e["key"] == r["key"] && e["seq"].as_u64() > r["seq"].as_u64()
                })
                .unwrap();
            windows.push((r["unix_ns"].as_u64().unwrap(), end["unix_ns"].as_u64().unwrap(), run.clone()));
        }
    }
    windows.sort();
    assert_eq!(windows.len(), 2 * (1 + 3));
    for w in windows.windows(2) {
        assert!(w[0].1 <= w[1].0, "measuring windows overlap: {w:?}");
    }
}

#[test]
fn kitt_run_builds_a_suite_from_flags_and_prints_it() {
    let env = Env::new();
    let out = env.cmd().args(["run", "-m", "flagmodel", "-e", "sim", "-s", "quick", "--print-suite"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("name: flagmodel") && yaml.contains("template: sim"), "{yaml}");
    // What it prints is a suite that validates and runs as it is.
    let printed = env.suite("printed.yaml", &yaml);
    let v = env.cmd().arg("validate").arg(&printed).output().unwrap();
    assert!(v.status.success(), "{}", text(&v));
    let out = env
        .cmd()
        .args(["run", "-m", "flagmodel", "-e", "sim", "-s", "quick"])
        .current_dir(env.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("throughput"));
}

#[test]
fn kitt_run_resolves_a_suite_files_paths_against_its_directory() {
    let env = Env::new();
    let dir = env.path().join("elsewhere");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("chat.yaml"),
        "apiVersion: kitt/v1\nkind: Benchmark\nmetadata: {name: beside_the_suite}\nspec:\n  mechanism: load\n  params:\n    max_tokens: {type: integer, default: 2, minimum: 1}\n  load: {api: chat, profile: synchronous, requests: 1, prompt: {synthetic: {input_tokens: 8}}, ignore_eos: true}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("mine.yaml"),
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {name: mine}\nspec:\n  models: [{name: replaced}]\n  engines: [{name: replaced, template: sim}]\n  benchmarks: [{name: chat, template: beside_the_suite}]\n  templates: [./chat.yaml]\n",
    )
    .unwrap();
    // Run from the parent directory: `./chat.yaml` is the suite file's, not the working directory's.
    let out = env
        .cmd()
        .args(["run", "-m", "flagmodel", "-e", "sim", "-s", "elsewhere/mine.yaml"])
        .current_dir(env.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r = report(&env.only_run());
    assert_eq!(r["cells"][0]["cell"]["benchmark"], "chat", "{r}");
    assert_eq!(r["cells"][0]["status"], "ok", "{r}");
}

#[test]
fn plan_json_marks_the_steps_a_resume_reuses_as_the_text_does() {
    let env = Env::new();
    let suite = env.suite("s.yaml", &small_suite("planjson", "", 6));
    let plan = |output: &str| env.cmd().args(["plan", "--output", output]).arg(&suite).output().unwrap();
    let fresh: Json = serde_json::from_slice(&plan("json").stdout).unwrap();
    assert!(fresh.get("resume").is_none() && fresh["steps"][0].get("state").is_none(), "nothing to resume yet");
    let out = env.cmd().arg("apply").arg(&suite).env("KITT_TEST_KILL_AFTER_RECORD", "8").output().unwrap();
    assert!(!out.status.success());
    let id = env.only_run().file_name().unwrap().to_string_lossy().to_string();
    let json: Json = serde_json::from_slice(&plan("json").stdout).unwrap();
    let steps = json["steps"].as_array().unwrap();
    let reused: Vec<&str> =
        steps.iter().filter(|s| s["state"] == "reused").map(|s| s["key"].as_str().unwrap()).collect();
    assert!(steps.iter().all(|s| s["state"] == "reused" || s["state"] == "pending"), "{json}");
    assert!(!reused.is_empty() && reused.len() < steps.len(), "{reused:?}");
    assert_eq!(json["resume"]["run"], id.as_str());
    assert_eq!(json["resume"]["reused"], reused.len());
    assert_eq!(json["resume"]["pending"], steps.len() - reused.len());
    // The text marks the same count.
    let text = String::from_utf8(plan("text").stdout).unwrap();
    let line = format!(
        "resume: {} step(s) reused from the unfinished run, {} pending",
        reused.len(),
        steps.len() - reused.len()
    );
    assert!(text.contains(&line), "{text}");
}

#[test]
fn serial_the_open_loop_example_keeps_its_schedule() {
    let env = Env::new();
    let out = env.apply(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rate.yaml"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let r = report(&env.only_run());
    for c in r["cells"].as_array().unwrap() {
        let a = &c["metrics"]["arrivals"];
        let rate = c["cell"]["params"]["rate"].as_f64().unwrap();
        assert_eq!(a["scheduled"], 60);
        assert!((a["offered_rate"].as_f64().unwrap() - rate).abs() < 1e-6, "{a}");
        // Wide slack: shared machines; the tight numbers come from `cargo bench`.
        assert!((a["delivered_rate"].as_f64().unwrap() / rate - 1.0).abs() < 0.2, "{a}");
        assert!(a["schedule_lag_ms"]["p50"].is_number() && a["client_queue_ms"]["p50"].is_number());
        assert_eq!(c["metrics"]["ok"], 60);
    }
}

#[test]
fn resume_refuses_a_run_of_another_suite() {
    let env = Env::new();
    let a = env.suite("a.yaml", &small_suite("suitea", "", 4).replace("name: small", "name: a"));
    let b = env.suite("b.yaml", &small_suite("suiteb", "", 4).replace("name: small", "name: b"));
    assert!(env.apply(&a, &[]).status.success());
    let run = env.only_run();
    let id = run.file_name().unwrap().to_string_lossy().to_string();
    let out = env.apply(&b, &["--resume", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to suite `a`"), "{}", text(&out));
}

#[test]
fn no_two_cells_send_the_same_prompt() {
    let env = Env::new();
    let out = env.apply(&env.suite("s.yaml", &small_suite("prompts", "", 8)), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let prompts: Vec<String> = env
        .sim_requests()
        .into_iter()
        .filter(|r| r["path"] == "/v1/completions")
        .map(|r| r["body"]["prompt"].as_str().unwrap().to_string())
        .collect();
    let mut unique = prompts.clone();
    unique.sort();
    unique.dedup();
    // Warmup and every cell: a prefix cache never sees a prompt twice.
    assert_eq!(unique.len(), prompts.len(), "{} prompts, {} distinct", prompts.len(), unique.len());
}

#[test]
fn runs_list_and_show_say_what_ran_and_what_is_left() {
    let env = Env::new();
    let suite = env.suite("s.yaml", &small_suite("listing", "", 6));
    // An interrupted run first (killed after its first cell), then the same suite to the end.
    let out = env.cmd().arg("apply").arg(&suite).env("KITT_TEST_KILL_AFTER_RECORD", "8").output().unwrap();
    assert!(!out.status.success());
    let run = env.only_run();
    let id = run.file_name().unwrap().to_string_lossy().to_string();
    let show = |id: &str| -> Json {
        let out = env.cmd().args(["runs", "show", id, "--output", "json"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let list: Json =
        serde_json::from_slice(&env.cmd().args(["runs", "list", "--output", "json"]).output().unwrap().stdout).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["status"], "unfinished");
    let before = show(&id);
    let states: Vec<&str> = before["steps"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert!(states.contains(&"done") && states.contains(&"pending"), "{states:?}");
    assert!(env.apply(&suite, &[]).status.success());
    let list: Json =
        serde_json::from_slice(&env.cmd().args(["runs", "list", "--output", "json"]).output().unwrap().stdout).unwrap();
    assert_eq!(list[0]["status"], "succeeded");
    let after = show(&id);
    assert!(after["steps"].as_array().unwrap().iter().all(|s| s["state"] == "done"), "{after}");
    // Text output names the run and its suite.
    let text_out = env.cmd().args(["runs", "show", &id]).output().unwrap();
    assert!(String::from_utf8_lossy(&text_out.stdout).contains(&format!("run {id} of suite `small`")));
}

#[test]
fn with_cell_granularity_each_cell_runs_on_a_freshly_started_engine() {
    let env = Env::new();
    let suite = env.suite(
        "s.yaml",
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: cellwise}
spec:
  models: [{name: cellwise}]
  engines: [{name: sim, template: sim}]
  benchmarks:
    - {name: tput, template: throughput, params: {concurrency: [1, 2], requests: 4, max_tokens: 4}}
  warmup: {requests: 1}
  execution: {granularity: cell}
"#,
    );
    let out = env.apply(&suite, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let run = env.only_run();
    let finished: Vec<Json> = journal(&run).into_iter().filter(|r| r["event"] == "step_finished").collect();
    let kinds: Vec<&str> = finished.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    // Each cell: its own engine started, warmed up, measured and stopped before the next starts.
    let one = ["start", "warmup", "benchmark", "collect", "stop"];
    assert_eq!(kinds, [&one[..], &one[..], &["report"]].concat());
    let pids: Vec<u64> =
        finished.iter().filter(|r| r["kind"] == "start").map(|r| r["outputs"]["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    assert_ne!(pids[0], pids[1], "the second cell ran on the first cell's engine");
    let r = report(&run);
    let cells = r["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    for c in cells {
        assert_eq!(c["status"], "ok", "{c}");
        assert_eq!(c["provenance"]["granularity"], "cell", "{c}");
    }
    assert!(sims_alive("cellwise").is_empty(), "an engine outlived the run");
}

#[test]
fn without_flock_a_run_is_locked_refused_killed_and_resumed() {
    let env = Env::new();
    // `isolation: engine`: the host lease is the one flock kitt keeps (on the local /tmp).
    let yaml = small_suite("noflock", ", itl_ms: 10", 40)
        .replace("  sampling:", "  execution: {isolation: engine}\n  sampling:");
    let suite = env.suite("s.yaml", &yaml);
    let mut first = env
        .cmd()
        .arg("apply")
        .arg(&suite)
        .env("KITT_TEST_NO_FLOCK", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = wait_for(&env.runs(), "benchmark", Duration::from_secs(30));
    let second = env.cmd().arg("apply").arg(&suite).env("KITT_TEST_NO_FLOCK", "1").output().unwrap();
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another kitt") && err.contains(&format!("pid {}", first.id())), "{err}");
    // kill -9 leaves the lease behind; the next kitt takes it over from its dead holder.
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    first.wait().unwrap();
    assert!(run.join("run.lease").exists());
    let out = env.cmd().arg("apply").arg(&suite).env("KITT_TEST_NO_FLOCK", "1").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(env.run_dirs().len(), 1, "the killed run was resumed");
    assert_eq!(finished_benchmarks(&run).len(), 3);
    assert!(!run.join("run.lease").exists(), "let go at the end");
}
