//! A real llama.cpp server (llama-server, built by scripts/llama-cpp.sh) run natively by kitt.
//!
//! These tests need the build: `scripts/llama-cpp.sh --link .kitt/llama.cpp` (CI runs it; the
//! build is cached outside the repository). Under CI (`CI=true`) a missing build is a failure;
//! elsewhere the tests say what is missing and pass without running.

mod common;
use common::test_data;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kitt(runs: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kitt"));
    c.env("KITT_RUNS_DIR", runs)
        .env("KITT_STORE", "off")
        .env("KITT_HOST_LOCK", runs.join("host.lock"))
        .env_remove("KITT_TEST_KILL_IN_BENCHMARK");
    c
}

fn report(runs: &Path) -> Json {
    let run = std::fs::read_dir(runs).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.is_dir()).unwrap();
    serde_json::from_slice(&std::fs::read(run.join("report/result.json")).unwrap()).unwrap()
}

/// Every request of every cell: client TTFT ≥ llama.cpp's `timings.prompt_ms`, and the gap (the
/// network, HTTP and the server's queue) far below llama.cpp's 5 s keep-alive: a connection the
/// client left idle must never hold one of the server's few HTTP threads while a measured
/// request waits for it (a slack of 1 s: the machines are shared).
fn check_each_request_against_server_timings(runs: &Path) {
    let run = std::fs::read_dir(runs).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.is_dir()).unwrap();
    let mut checked = 0;
    for step in std::fs::read_dir(run.join("steps")).unwrap().filter_map(|e| e.ok()) {
        let Ok(lines) = std::fs::read_to_string(step.path().join("requests.jsonl")) else { continue };
        for line in lines.lines() {
            let r: Json = serde_json::from_str(line).unwrap();
            let ttft_ns = r["first_content_ns"].as_u64().unwrap() - r["sent_ns"].as_u64().unwrap();
            let server_ns = r["server_prompt_ms"].as_f64().unwrap() * 1e6;
            assert!(
                ttft_ns as f64 >= server_ns,
                "request {}: TTFT {ttft_ns} ns < server prompt {server_ns} ns",
                r["index"]
            );
            assert!(
                ttft_ns as f64 - server_ns < 1e9,
                "request {}: TTFT {ttft_ns} ns is a second beyond the server prompt {server_ns} ns",
                r["index"]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 16 + 16 + 8);
}

#[test]
fn serial_the_llama_cpp_example_runs_on_a_real_server() {
    let Some(_) = common::llama_cpp_build() else { return };
    let runs = tempfile::tempdir().unwrap();
    let out = kitt(runs.path()).arg("apply").arg(root().join("examples/llama-cpp-native.yaml")).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let r = report(runs.path());
    check_each_request_against_server_timings(runs.path());
    let cells = r["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 3);
    for c in cells {
        assert_eq!(c["status"], "ok", "{c}");
        let m = &c["metrics"];
        let requests = m["requests"].as_u64().unwrap();
        let max_tokens = c["cell"]["sampling"]["max_tokens"].as_u64().unwrap();
        // ignore_eos reached llama.cpp: every request generated exactly max_tokens, by its usage.
        assert_eq!(m["output_tokens"]["source"], "usage", "{m}");
        assert_eq!(m["output_tokens"]["usage_total"].as_u64().unwrap(), requests * max_tokens, "{m}");
        // Random weights generate token sequences that do not survive detokenize → tokenize, so the
        // re-tokenized count differs from usage (a real property, reported, not hidden); events
        // can be fewer than tokens when a token ends mid-character.
        assert!(m["output_tokens"]["counted_total"].as_u64().is_some());
        assert!(m["output_tokens"]["events_total"].as_u64().unwrap() <= requests * max_tokens);
        // Prompts were sized exactly with llama.cpp's /tokenize.
        assert_eq!(c["provenance"]["prompts_exact"], true);
        assert_eq!(m["errors"], 0);
        // The prompts have exactly input_tokens by the tokenizer; llama.cpp's usage adds its BOS.
        let n = c["cell"]["params"]["input_tokens"].as_u64().unwrap();
        assert_eq!(m["input_tokens"]["counted_total"].as_u64().unwrap(), requests * n, "{m}");
        assert_eq!(m["input_tokens"]["usage_total"].as_u64().unwrap(), requests * (n + 1), "{m}");
        assert!(m["ttft_ms"]["p50"].as_f64().unwrap() > 0.0);
        // The client's TTFT includes the server's own prompt time: never below it.
        let gap = &m["ttft_minus_server_prompt_ms"];
        assert_eq!(gap["count"].as_u64().unwrap(), requests, "{m}");
        assert!(gap["min"].as_f64().unwrap() >= 0.0, "client TTFT below the server's prompt time: {gap}");
        assert!(
            !c["provenance"]["facts"]["engine.version"].as_str().unwrap_or("").is_empty(),
            "llama.cpp reported its build"
        );
    }
}

#[test]
fn serial_kill_9_mid_benchmark_leaves_no_llama_server_and_the_rerun_finishes() {
    let Some((server, model)) = common::llama_cpp_build() else { return };
    let d = tempfile::tempdir().unwrap();
    let alias = format!("killed-{}", std::process::id());
    let suite = d.path().join("s.yaml");
    std::fs::write(
        &suite,
        format!(
            r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: llama-kill}}
spec:
  models: [{{name: tiny, path: "{}", served_name: "{alias}"}}]
  engines: [{{name: llama, template: llama_cpp, params: {{binary: "{}", ctx_size: 2048, parallel: 2}}, native: {{}}}}]
  benchmarks: [{{name: tput, template: throughput, params: {{concurrency: 2, requests: 40, input_tokens: 16, max_tokens: 16}}}}]
  warmup: {{requests: 1}}
"#,
            model.display(),
            server.display()
        ),
    )
    .unwrap();
    let runs = d.path().join("runs");
    let out = kitt(&runs).arg("apply").arg(&suite).env("KITT_TEST_KILL_IN_BENCHMARK", "5").output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::llama_servers(&alias) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(common::llama_servers(&alias), 0, "llama-server outlived kill -9 of kitt");
    let out = kitt(&runs).arg("apply").arg(&suite).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report(&runs)["cells"][0]["metrics"]["requests"], 40);
    assert_eq!(common::llama_servers(&alias), 0);
    // The killed attempt's scratch files are gone and the rerun's records are whole.
    let run = std::fs::read_dir(&runs).unwrap().flatten().map(|e| e.path()).find(|p| p.is_dir()).unwrap();
    let mut records = 0;
    for step in std::fs::read_dir(run.join("steps")).unwrap().flatten() {
        for f in std::fs::read_dir(step.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            assert!(!name.starts_with(".kitt-spool-") && !name.ends_with(".partial"), "left behind: {name}");
            if name == "requests.jsonl" {
                records += std::fs::read_to_string(f.path()).unwrap().lines().count();
            }
        }
    }
    assert_eq!(records, 40);
}

/// An MMLU eval on the real server (random weights: the score is near chance, the pipeline is
/// real), killed in the middle and resumed from its checkpoint to the uninterrupted score.
#[test]
fn serial_an_mmlu_eval_on_llama_cpp_resumes_mid_eval_to_the_same_score() {
    let Some((server, model)) = common::llama_cpp_build() else { return };
    let Some(data) = test_data() else { return };
    let d = tempfile::tempdir().unwrap();
    let suite = d.path().join("s.yaml");
    std::fs::write(
        &suite,
        format!(
            r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: llama-mmlu}}
spec:
  models: [{{name: tiny, path: "{}"}}]
  engines: [{{name: llama, template: llama_cpp, params: {{binary: "{}", ctx_size: 4096, parallel: 4}}, native: {{}}}}]
  benchmarks:
    - name: mmlu
      template: mmlu
      params:
        source: "{}/mmlu/data/{{split}}/{{group}}_{{split}}.csv"
        subjects: [abstract_algebra, astronomy]
        k: 2
        sample_size: 40
        max_tokens: 2
  sampling: {{temperature: 0, seed: 1}}
  warmup: {{requests: 1}}
"#,
            model.display(),
            server.display(),
            data.display()
        ),
    )
    .unwrap();
    let whole = tempfile::tempdir().unwrap();
    let out = kitt(whole.path()).arg("apply").arg(&suite).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let r = report(whole.path());
    let cell = &r["cells"][0];
    assert_eq!(cell["status"], "ok", "{cell}");
    let eval = &cell["metrics"]["eval"];
    assert_eq!(eval["counts"]["total"], 40, "{eval}");
    assert_eq!(eval["counts"]["scored"], 40);
    assert_eq!(eval["groups"].as_object().unwrap().len(), 2, "per-subject accuracy: {eval}");
    let accuracy = eval["accuracy"].as_f64().unwrap();
    let items = std::fs::read_dir(
        std::fs::read_dir(whole.path()).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path().join("steps"),
    )
    .unwrap()
    .flatten()
    .filter_map(|e| std::fs::read_to_string(e.path().join("items.jsonl")).ok())
    .next()
    .expect("items.jsonl");
    assert_eq!(items.lines().count(), 40, "every item's prompt, answer and verdict");

    // Killed after 20 answers, then resumed: the checkpoint carries the answers given.
    let killed = tempfile::tempdir().unwrap();
    let out = kitt(killed.path()).arg("apply").arg(&suite).env("KITT_TEST_KILL_IN_BENCHMARK", "20").output().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(out.status.signal(), Some(9), "{}", String::from_utf8_lossy(&out.stderr));
    let checkpoints: Vec<PathBuf> = std::fs::read_dir(killed.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .flat_map(|run| std::fs::read_dir(run.path().join("steps")).unwrap().flatten())
        .map(|s| s.path().join("eval-checkpoint.json"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(checkpoints.len(), 1, "the eval checkpointed before the kill");
    let out = kitt(killed.path()).arg("apply").arg(&suite).env("RUST_LOG", "kitt=info").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("eval resumes from its checkpoint"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed = report(killed.path());
    assert_eq!(resumed["cells"][0]["metrics"]["eval"]["accuracy"].as_f64().unwrap(), accuracy, "the same score");
}

/// The thread count llama-server logged at startup (`llama threadpool init, n_threads = N`), from
/// the engine log of the one run under `runs`.
fn logged_threads(runs: &Path) -> Vec<u64> {
    fn logs(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                logs(&path, out);
            } else if path.file_name().is_some_and(|n| n == "engine.log") {
                out.push(path);
            }
        }
    }
    let mut found = Vec::new();
    logs(runs, &mut found);
    assert!(!found.is_empty(), "no engine.log under {}", runs.display());
    found
        .iter()
        .flat_map(|log| {
            let text = std::fs::read_to_string(log).unwrap();
            text.lines()
                .filter_map(|l| l.split_once("threadpool init, n_threads = ").map(|(_, n)| n.trim().parse().unwrap()))
                .collect::<Vec<u64>>()
        })
        .collect()
}

#[test]
fn serial_threads_1_reaches_llama_server_and_unset_lets_it_choose() {
    let Some((server, model)) = common::llama_cpp_build() else { return };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [Some(1), None] {
        let d = tempfile::tempdir().unwrap();
        let suite = d.path().join("s.yaml");
        let param = threads.map_or(String::new(), |t| format!(", threads: {t}"));
        std::fs::write(
            &suite,
            format!(
                "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: llama-threads}}\nspec:\n  models: [{{name: tiny, path: \"{}\"}}]\n  engines: [{{name: llama, template: llama_cpp, params: {{binary: \"{}\", ctx_size: 512, parallel: 1{param}}}, native: {{}}}}]\n  benchmarks: [{{name: latency, template: latency, params: {{requests: 1, input_tokens: 8, max_tokens: 2}}}}]\n",
                model.display(),
                server.display()
            ),
        )
        .unwrap();
        let runs = tempfile::tempdir().unwrap();
        let out = kitt(runs.path()).arg("apply").arg(&suite).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let logged = logged_threads(runs.path());
        assert!(!logged.is_empty(), "llama-server logged no thread count");
        match threads {
            Some(t) => assert!(logged.iter().all(|n| *n == t), "threads: {t}, llama-server used {logged:?}"),
            // Unset, llama.cpp picks by the cores it finds: more than one where there are.
            None if cores >= 2 => assert!(logged.iter().all(|n| *n > 1), "{cores} cores, llama-server used {logged:?}"),
            None => {}
        }
    }
}
