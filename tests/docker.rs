//! Container engines through the real Docker engine: a real llama.cpp server in a locally built
//! image, the vllm/tgi/ollama templates (with their real container arguments) against kitt's
//! simulators packed into images, failures while waiting for health, and cleanup on every
//! ending — success, SIGINT, SIGTERM, kill -9 followed by the next kitt command.
//!
//! Each test looks only at its own run's containers (label `kitt.run`), so tests and other runs
//! on the same Docker do not disturb each other. Under CI (`CI=true`) a missing Docker or a
//! missing llama.cpp image is a failure; elsewhere the tests say what is missing and pass.

mod common;
mod docker_support;
use common::test_data;
use docker_support::*;

use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

const LLAMA_IMAGE: &str = "kitt-local/llama.cpp:server-cpu";

/// Whether the local llama.cpp image is missing (a failure under CI).
fn llama_image_missing() -> bool {
    let present = Command::new("docker").args(["image", "inspect", LLAMA_IMAGE]).output().unwrap();
    !present.status.success()
        && skip("the llama.cpp image is not built: run `kitt engines setup llama_cpp --local-build`")
}

#[test]
fn serial_docker_llama_cpp_example_runs_end_to_end_in_a_container() {
    if docker_missing() || llama_image_missing() {
        return;
    }
    let env = Env::new();
    let out = env.cmd().arg("apply").arg(root().join("examples/llama-cpp-cpu.yaml")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = env.only_run();
    let r = report(&run);
    assert_eq!(r["failed_cells"], 0);
    let cells = r["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 3);
    for c in cells {
        assert_eq!(c["status"], "ok", "{c}");
        assert!(c["metrics"]["output_tokens"]["total"].as_u64().unwrap() > 0, "{c}");
        let facts = &c["provenance"]["facts"];
        assert_eq!(facts["engine.image"], LLAMA_IMAGE, "{facts}");
        assert!(facts["engine.image_id"].as_str().unwrap().starts_with("sha256:"), "{facts}");
        // The container's own memory and CPU (its cgroup), sampled during the window.
        let res = &c["resources"];
        assert!(res["engine_mem_mib"]["peak"].as_f64().unwrap() > 1.0, "{res}");
        assert!(res["samples"].as_u64().unwrap() >= 2, "{res}");
        // llama.cpp's --metrics counters over the window agree with kitt's own count.
        let predicted = c["engine_metrics"]["counters"]["llamacpp:tokens_predicted_total"].as_f64().unwrap();
        assert_eq!(predicted as u64, c["metrics"]["output_tokens"]["total"].as_u64().unwrap(), "{c}");
    }
    // The container's logs were saved, and the container is gone.
    let logs: Vec<PathBuf> = std::fs::read_dir(run.join("steps"))
        .unwrap()
        .map(|e| e.unwrap().path().join("engine.log"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(logs.len(), 1);
    assert!(std::fs::read_to_string(&logs[0]).unwrap().contains("llama"), "the server's own output is kept");
    assert!(containers_of(&run_id(&run)).is_empty());
}

#[test]
fn serial_docker_vllm_tgi_and_ollama_templates_run_their_real_arguments_against_simulators() {
    if docker_missing() {
        return;
    }
    for template in ["vllm", "tgi", "ollama"] {
        let image = sim_image(template);
        let env = Env::new();
        // TGI and Ollama have no `ignore_eos`: the simulator, like them, may stop early unless told not to.
        let s = env.suite(&suite(template, &image, "      env: {KITT_SIM_IGNORE_EOS: \"true\"}", 10));
        let out = env.cmd().arg("apply").arg(&s).output().unwrap();
        assert!(out.status.success(), "{template}: {}", text(&out));
        let run = env.only_run();
        let r = report(&run);
        let c = &r["cells"][0];
        assert_eq!(c["status"], "ok", "{template}: {c}");
        assert_eq!(c["metrics"]["requests"], 10, "{template}");
        assert_eq!(c["metrics"]["output_tokens"]["total"], 80, "{template}: every request gave max_tokens");
        assert!(c["provenance"]["facts"]["engine.version"].as_str().is_some_and(|v| !v.is_empty()), "{template}: {c}");
        if template == "vllm" {
            // The simulator's Prometheus counters are exact: the window's delta is the cell's.
            let counters = &c["engine_metrics"]["counters"];
            let generated = r#"vllm:generation_tokens_total{model_name="tiny-model",engine="0"}"#;
            assert_eq!(counters[generated], 80.0, "{counters}");
            assert_eq!(
                counters[r#"vllm:request_success_total{model_name="tiny-model",engine="0",finished_reason="length"}"#],
                10.0,
                "{counters}"
            );
        }
        assert!(containers_of(&run_id(&run)).is_empty(), "{template}");
    }
}

#[test]
fn serial_docker_a_container_that_exits_while_starting_fails_at_once_with_its_logs() {
    if docker_missing() {
        return;
    }
    let image = sim_image("vllm");
    let env = Env::new();
    let extra = r#"      container: {extra_args: ["--entrypoint", "/usr/local/bin/kitt"], args: ["no-such-command"]}"#;
    let s = env.suite(&suite("vllm", &image, extra, 4));
    let started = Instant::now();
    let out = env.cmd().arg("apply").arg(&s).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exited with exit code 2") && err.contains("before it was healthy"), "{err}");
    assert!(err.contains("no-such-command"), "the container's last log lines are shown: {err}");
    assert!(started.elapsed() < Duration::from_secs(120), "not a health timeout (vllm waits 600 s)");
    let run = env.only_run();
    let cell_error = report(&run)["cells"][0]["error"].as_str().unwrap().to_string();
    assert!(cell_error.starts_with("start of engine `e/tiny-model` failed:"), "the cell says why: {cell_error}");
    assert!(containers_of(&run_id(&run)).is_empty());
}

#[test]
fn serial_docker_a_health_timeout_says_what_was_polled_and_answered() {
    if docker_missing() {
        return;
    }
    let image = sim_image("vllm");
    let env = Env::new();
    // A healthy simulator, but on another port than the one kitt polls.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let template = format!(
        r#"apiVersion: kitt/v1
kind: Engine
metadata: {{name: slow_vllm}}
spec:
  base: vllm
  health: {{path: /health, timeout: 3s, initial_interval: 100ms, max_interval: 500ms}}
  container:
    extra_args: ["--entrypoint", "/usr/local/bin/kitt"]
    args: ["sim", "--host", "127.0.0.1", "--port", "{other}"]
    unused_params: {{gpu_memory_utilization: "a simulator", max_model_len: "a simulator",
                    tensor_parallel_size: "a simulator", dtype: "a simulator"}}
"#
    );
    std::fs::write(env.path().join("slow.yaml"), template).unwrap();
    let s = suite("slow_vllm", &image, "", 4).replace("spec:\n", "spec:\n  templates: [slow.yaml]\n");
    let s = env.suite(&s);
    let out = env.cmd().arg("apply").arg(&s).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("was not healthy after 3s") && err.contains("/health, last answer:"), "{err}");
    assert!(containers_of(&run_id(&env.only_run())).is_empty());
}

#[test]
fn serial_docker_sigint_sigterm_and_kill_leave_no_container_behind() {
    if docker_missing() {
        return;
    }
    let image = sim_image("vllm");
    let slow = "      env: {KITT_SIM_ITL_MS: \"20\"}";
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let env = Env::new();
        let s = env.suite(&suite("vllm", &image, slow, 200));
        let child = env.cmd().arg("apply").arg(&s).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let run = wait_for_step(&env.runs(), "benchmark", Duration::from_secs(60));
        assert_eq!(containers_of(&run_id(&run)).len(), 1, "the engine runs during the benchmark");
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "signal {signal}: {}", text(&out));
        assert!(containers_of(&run_id(&run)).is_empty(), "signal {signal}: the container was removed");
    }
    // kill -9 in the middle of the benchmark: the container outlives kitt, and the next kitt
    // command (gc here, apply below) removes it, saving its logs into the run.
    for next in ["gc", "apply"] {
        let env = Env::new();
        let s = env.suite(&suite("vllm", &image, slow, 200));
        let out = env.cmd().arg("apply").arg(&s).env("KITT_TEST_KILL_IN_BENCHMARK", "5").output().unwrap();
        assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
        let run = env.only_run();
        let left = containers_of(&run_id(&run));
        assert_eq!(left.len(), 1, "SIGKILL cannot be caught: the container is left");
        // A gc of another runs directory (another project, another test) leaves it alone.
        let other = tempfile::tempdir().unwrap();
        let out = env.cmd().arg("gc").arg("--runs-dir").arg(other.path()).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to clean up"), "{}", text(&out));
        assert_eq!(containers_of(&run_id(&run)), left, "out of that gc's scope");
        let out = if next == "gc" {
            env.cmd().arg("gc").output().unwrap()
        } else {
            env.cmd().arg("apply").arg(&s).env_remove("KITT_TEST_KILL_IN_BENCHMARK").output().unwrap()
        };
        assert!(out.status.success(), "{next}: {}", text(&out));
        assert!(containers_of(&run_id(&run)).is_empty(), "{next} removed {left:?}");
        // The orphan's logs were saved into its start step before it was removed.
        let logs: String = std::fs::read_dir(run.join("steps"))
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("engine.log")).ok())
            .collect();
        assert!(logs.contains("\"mimic\":\"vllm\""), "{next}: {logs}");
        if next == "gc" {
            assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("removed container {}", left[0])));
        }
    }
}

#[test]
fn serial_docker_a_secret_reaches_the_container_and_no_file_of_the_run() {
    if docker_missing() {
        return;
    }
    let image = sim_image("vllm");
    let env = Env::new();
    let secret = "kitt-secret-5c0ffee-value";
    let extra = "      env: {HF_TOKEN: {from_env: KITT_TEST_TOKEN}, KITT_SIM_ITL_MS: \"5\"}";
    let s = env.suite(&suite("vllm", &image, extra, 60));
    let child = env
        .cmd()
        .arg("apply")
        .arg(&s)
        .env("KITT_TEST_TOKEN", secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = wait_for_step(&env.runs(), "benchmark", Duration::from_secs(60));
    let name = containers_of(&run_id(&run)).pop().unwrap();
    let container_env = docker(&["container", "inspect", "--format", "{{json .Config.Env}}", &name]);
    assert!(container_env.contains(&format!("HF_TOKEN={secret}")), "{container_env}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(secret)
            && !String::from_utf8_lossy(&out.stderr).contains(secret)
    );
    let mut files = 0;
    let mut stack = vec![run.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
            if e.is_dir() {
                stack.push(e);
            } else {
                files += 1;
                let bytes = std::fs::read(&e).unwrap();
                assert!(!String::from_utf8_lossy(&bytes).contains(secret), "the secret is in {}", e.display());
            }
        }
    }
    assert!(files > 5, "{files} files checked");
}

#[test]
fn serial_docker_bridge_network_publishes_the_port_on_loopback_only() {
    if docker_missing() {
        return;
    }
    let image = sim_image("vllm");
    let env = Env::new();
    let s = env.suite(&suite("vllm", &image, "      container: {network: bridge}", 20));
    let child = env.cmd().arg("apply").arg(&s).env("KITT_SIM_ITL_MS", "1").output().unwrap();
    assert!(child.status.success(), "{}", text(&child));
    let run = env.only_run();
    let start = journal(&run)
        .into_iter()
        .find(|r| r["event"] == "step_finished" && r["kind"] == "start")
        .expect("a finished start step");
    let port = start["outputs"]["port"].as_u64().unwrap();
    assert!(port > 0);
    // The engine was told to listen on 0.0.0.0 inside the container (the template's
    // {{bind_host}}), and was reached through the port published on the host's loopback.
    let plan: Json = serde_json::from_slice(&std::fs::read(run.join("plan.json")).unwrap()).unwrap();
    let mode = &plan["groups"][0]["mode"]["container"];
    assert_eq!(mode["network"], "bridge", "{mode}");
    let args: Vec<&str> = mode["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.windows(2).any(|w| w == ["--host", "0.0.0.0"]), "{args:?}");
    assert_eq!(report(&run)["cells"][0]["status"], "ok");
    assert!(containers_of(&run_id(&run)).is_empty());
}

#[test]
fn serial_docker_engines_setup_local_build_reuses_the_cached_build_and_image() {
    if docker_missing() {
        return;
    }
    let cache = std::env::var("HOME").map(|h| PathBuf::from(h).join(".cache/kitt/llama.cpp")).unwrap();
    let built =
        std::fs::read_dir(&cache).into_iter().flatten().flatten().any(|v| v.path().join("bin/llama-server").exists());
    if !built && skip("llama.cpp is not built: run `scripts/llama-cpp.sh --link .kitt/llama.cpp`") {
        return;
    }
    let links = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kitt"))
        .args(["engines", "setup", "llama_cpp", "--local-build", "--link"])
        .arg(links.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(60), "a cached build is not rebuilt");
    assert!(links.path().join("bin/llama-server").exists() && links.path().join("models/tiny.gguf").exists());
    assert!(String::from_utf8_lossy(&out.stdout).contains(LLAMA_IMAGE));
    let check = Command::new(env!("CARGO_BIN_EXE_kitt")).args(["engines", "check", "llama_cpp"]).output().unwrap();
    // The template's own image is the upstream one, which is not here; the example names ours.
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    let vllm_only =
        Command::new(env!("CARGO_BIN_EXE_kitt")).args(["engines", "setup", "vllm", "--local-build"]).output().unwrap();
    assert!(String::from_utf8_lossy(&vllm_only.stderr).contains("builds llama_cpp only"), "{}", text(&vllm_only));
}

#[test]
fn serial_docker_a_retry_restarts_a_killed_container_first() {
    if docker_missing() {
        return;
    }
    let image = sim_image("vllm");
    let env = Env::new();
    let yaml = suite("vllm", &image, "      env: {KITT_SIM_ITL_MS: \"10\"}", 60)
        .replace("spec:\n", "spec:\n  execution: {retries: 1, max_error_rate: 0.0}\n");
    let s = env.suite(&yaml);
    let child = env.cmd().arg("apply").arg(&s).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let run = wait_for_step(&env.runs(), "benchmark", Duration::from_secs(60));
    let first = containers_of(&run_id(&run)).pop().unwrap();
    // The engine dies in the middle of the measurement.
    docker(&["kill", &first]);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let j = journal(&run);
    let attempts: Vec<u64> = j
        .iter()
        .filter(|r| r["event"] == "step_started" && r["kind"] == "benchmark")
        .map(|r| r["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [0, 1], "the benchmark failed once and was retried");
    let r = report(&run);
    assert_eq!(r["cells"][0]["status"], "ok");
    assert_eq!(r["cells"][0]["provenance"]["attempt"], 1);
    assert_eq!(r["cells"][0]["metrics"]["requests"], 60, "the retry measured from zero on a fresh container");
    assert!(containers_of(&run_id(&run)).is_empty());
}

#[test]
fn serial_docker_the_evals_example_scores_every_item_in_the_llama_cpp_container() {
    if docker_missing() || llama_image_missing() {
        return;
    }
    // The example reads its datasets from .kitt/datasets (its comment says how to provide them).
    let Some(data) = test_data() else { return };
    let link = root().join(".kitt/datasets");
    if !link.exists() {
        std::fs::create_dir_all(root().join(".kitt")).unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(std::fs::canonicalize(&data).unwrap(), &link).unwrap();
    }
    let env = Env::new();
    let out = env.cmd().arg("apply").arg(root().join("examples/evals.yaml")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = env.only_run();
    let r = report(&run);
    let expected = [("mmlu", 20), ("gsm8k", 5), ("truthfulqa", 20)];
    for (c, (name, n)) in r["cells"].as_array().unwrap().iter().zip(expected) {
        assert_eq!(c["cell"]["benchmark"], name);
        assert_eq!(c["status"], "ok", "{c}");
        let e = &c["metrics"]["eval"];
        assert_eq!(e["counts"]["scored"], n, "{name}: {e}");
        let acc = e["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("EVAL llama mmlu #0: accuracy"), "{}", text(&out));
    assert!(run.join("report/report.md").exists());
    assert!(containers_of(&run_id(&run)).is_empty());
}

/// An eval on the llama.cpp container killed with SIGKILL mid-eval: the next `kitt apply` removes
/// the orphaned container, starts a fresh one, and resumes from the checkpoint to the score of an
/// uninterrupted run.
#[test]
fn serial_docker_an_eval_killed_mid_way_resumes_in_a_fresh_container_to_the_same_score() {
    if docker_missing() || llama_image_missing() {
        return;
    }
    let Some(data) = test_data() else { return };
    let yaml = format!(
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: eval-resume}}
spec:
  models: [{{name: tiny, path: "{}"}}]
  engines:
    - {{name: llama, template: llama_cpp, image: {LLAMA_IMAGE}, pull: never, params: {{ctx_size: 4096, parallel: 4}}, container: {{gpus: none}}}}
  benchmarks:
    - name: mmlu
      template: mmlu
      params: {{source: "{}/mmlu/data/{{split}}/{{group}}_{{split}}.csv", subjects: [astronomy], k: 1, sample_size: 40, max_tokens: 2}}
  sampling: {{temperature: 0, seed: 1}}
  warmup: {{requests: 1}}
"#,
        root().join(".kitt/llama.cpp/models/tiny.gguf").display(),
        data.display()
    );
    let whole = Env::new();
    let s = whole.suite(&yaml);
    let out = whole.cmd().arg("apply").arg(&s).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let accuracy = report(&whole.only_run())["cells"][0]["metrics"]["eval"]["accuracy"].as_f64().unwrap();

    let env = Env::new();
    let s = env.suite(&yaml);
    let out = env.cmd().arg("apply").arg(&s).env("KITT_TEST_KILL_IN_BENCHMARK", "20").output().unwrap();
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    let run = env.only_run();
    assert_eq!(containers_of(&run_id(&run)).len(), 1, "SIGKILL leaves the container");
    let out = env.cmd().arg("apply").arg(&s).env("RUST_LOG", "kitt=info").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("eval resumes from its checkpoint"), "{err}");
    let r = report(&run);
    assert_eq!(r["cells"][0]["metrics"]["eval"]["counts"]["scored"], 40);
    assert_eq!(r["cells"][0]["metrics"]["eval"]["accuracy"].as_f64().unwrap(), accuracy, "the same score");
    assert!(containers_of(&run_id(&run)).is_empty(), "the orphan was swept and the new one removed");
}

/// Sibling containers: kitt itself in a container with the daemon's socket (and the docker CLI)
/// mounted starts its engine as a sibling on the host, with host paths, and removes it.
#[test]
fn serial_docker_kitt_in_a_container_runs_engines_as_siblings() {
    if docker_missing() {
        return;
    }
    let image = sim_image("vllm");
    let env = Env::new();
    let Some(kitt) = kitt_in_container(env.path()) else { return };
    let s = env.suite(&suite("vllm", &image, "      env: {KITT_SIM_IGNORE_EOS: \"true\"}", 10));
    let out = Command::new("docker").args(["run", "--rm"]).args(&kitt).arg("apply").arg(&s).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = env.only_run();
    let r = report(&run);
    assert_eq!(r["cells"][0]["status"], "ok", "{r}");
    assert_eq!(r["cells"][0]["metrics"]["requests"], 10);
    assert!(containers_of(&run_id(&run)).is_empty(), "the sibling engine was removed");
}
