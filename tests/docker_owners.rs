//! Who owns a container, through the real Docker engine: a failed start leaves no container
//! and keeps Docker's words; two machines sharing one daemon (two kitts told apart by
//! `KITT_MACHINE_ID`) never sweep each other's engines unless `kitt gc --foreign` is asked; a
//! containerised kitt's engines are swept once its container is gone. Every sweep here is scoped
//! to the test's own runs (`--run`, `--runs-dir`).

mod docker_support;
use docker_support::*;

use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A `docker run` that creates its container but cannot start it (an entrypoint that does not
/// exist) leaves no container, and the step directory keeps what Docker said.
#[test]
fn serial_docker_a_container_that_cannot_start_is_removed_with_its_error_saved() {
    if docker_missing() {
        return;
    }
    let image = sim_image("vllm");
    let env = Env::new();
    let extra = r#"      container: {extra_args: ["--entrypoint", "/no/such/entrypoint"]}"#;
    let s = env.suite(&suite("vllm", &image, extra, 4));
    let out = env.cmd().arg("apply").arg(&s).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/entrypoint"), "Docker's own words are shown: {err}");
    let run = env.only_run();
    assert!(containers_of(&run_id(&run)).is_empty(), "the created container was removed");
    let start = journal(&run)
        .into_iter()
        .find(|r| r["event"] == "step_failed" && r["kind"] == "start")
        .unwrap_or_else(|| panic!("a failed start step: {:?}", journal(&run)));
    let log = run.join("steps").join(start["key"].as_str().unwrap()).join("engine.log");
    let log = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert!(log.contains("`docker run` of kitt-") && log.contains("/no/such/entrypoint"), "{log}");
}

/// Two machines share one Docker daemon (two kitts told apart by `KITT_MACHINE_ID`): neither's
/// sweep removes the other's containers — not the live one, and not the one whose kitt died,
/// since a pid that is dead here says nothing about another machine — until `--foreign` is
/// asked, which lists them and removes them. A sweep scoped to another runs directory touches
/// neither.
#[test]
fn serial_docker_two_machines_on_one_daemon_never_sweep_each_others_engines() {
    if docker_missing() {
        return;
    }
    let image = sim_image("vllm");
    let (ma, mb) = (format!("test-machine-a-{}", std::process::id()), format!("test-machine-b-{}", std::process::id()));
    // Machine B's kitt is killed mid-benchmark: its engine is left running.
    let b = Env::new();
    let sb = b.suite(&suite("vllm", &image, "      env: {KITT_SIM_ITL_MS: \"20\"}", 200));
    let out = as_machine(&b, &mb).arg("apply").arg(&sb).env("KITT_TEST_KILL_IN_BENCHMARK", "5").output().unwrap();
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    let b_run = run_id(&b.only_run());
    let mut cleanup = RunsRemoved(vec![b_run.clone()]);
    let b_left = containers_of(&b_run);
    assert_eq!(b_left.len(), 1);
    // Machine A's kitt is alive and measuring.
    let a = Env::new();
    let sa = a.suite(&suite("vllm", &image, "      env: {KITT_SIM_ITL_MS: \"20\"}", 200));
    let a_child =
        as_machine(&a, &ma).arg("apply").arg(&sa).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let a_run = run_id(&wait_for_step(&a.runs(), "benchmark", Duration::from_secs(60)));
    cleanup.0.push(a_run.clone());
    let a_live = containers_of(&a_run);
    assert_eq!(a_live.len(), 1);

    // A's sweep of B's run: listed as foreign, left.
    let out = as_machine(&a, &ma).args(["gc", "--run", &b_run]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("left 1 container(s) owned by kitt on another machine") && err.contains(&b_left[0]), "{err}");
    assert_eq!(containers_of(&b_run), b_left, "machine A cannot judge machine B's kitt");
    let out = as_machine(&a, &ma).args(["gc", "--run", &b_run, "--output", "json"]).output().unwrap();
    let v = json_of(&out);
    assert_eq!(v["containers"]["removed"], serde_json::json!([]), "{v}");
    assert_eq!(v["containers"]["foreign"][0]["name"], b_left[0].as_str(), "{v}");
    assert_eq!(v["containers"]["foreign"][0]["machine"], mb.as_str(), "{v}");
    // B's sweep of A's run: A's live engine is untouched.
    let out = as_machine(&b, &mb).args(["gc", "--run", &a_run]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(containers_of(&a_run), a_live, "machine B never removes machine A's live engine");
    // A sweep scoped to another runs directory reaches neither, even with --foreign.
    let elsewhere = Env::new();
    let out = as_machine(&elsewhere, &ma).args(["gc", "--foreign"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to clean up"), "{}", text(&out));
    assert_eq!((containers_of(&b_run), containers_of(&a_run)), (b_left.clone(), a_live.clone()));

    // Asked to, A lists B's container and removes it; A's own engine stays until A is done.
    let out = as_machine(&a, &ma).args(["gc", "--run", &b_run, "--foreign"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    let listed = said.find(&format!("foreign container {} of run {b_run}", b_left[0]));
    let removed = said.find(&format!("removed container {}", b_left[0]));
    assert!(listed.is_some() && removed.is_some() && listed < removed, "listed, then removed: {said}");
    assert!(said.contains(&mb), "{said}");
    assert!(containers_of(&b_run).is_empty());
    assert_eq!(containers_of(&a_run), a_live);
    let out = a_child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(containers_of(&a_run).is_empty());
}

/// Sibling mode: a containerised kitt records its own container in its engines' owner label. While
/// that container runs, the host's sweep leaves the engine alone; once it is stopped, the host's
/// sweep removes the engine and saves its logs (a pid in another namespace could not tell).
#[test]
fn serial_docker_a_dead_containerised_kitts_engine_is_swept_from_the_host() {
    if docker_missing() {
        return;
    }
    let image = sim_image("vllm");
    let env = Env::new();
    let Some(kitt) = kitt_in_container(env.path()) else { return };
    let s = env.suite(&suite("vllm", &image, "      env: {KITT_SIM_ITL_MS: \"20\"}", 400));
    /// Removes kitt's container however the test ends.
    struct Removed(String);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "--force", &self.0]).output();
        }
    }
    let kitt_name = format!("kitt-test-sibling-{}", std::process::id());
    let _removed = Removed(kitt_name.clone());
    let _ = Command::new("docker").args(["rm", "--force", &kitt_name]).output();
    let mut args: Vec<String> = ["run", "--detach", "--name", &kitt_name].map(String::from).to_vec();
    args.extend(kitt);
    args.extend(["apply".to_string(), s.to_string_lossy().to_string()]);
    docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let run = wait_for_step(&env.runs(), "benchmark", Duration::from_secs(60));
    let engine = containers_of(&run_id(&run));
    assert_eq!(engine.len(), 1);
    let owner = docker(&["container", "inspect", "--format", "{{index .Config.Labels \"kitt.owner\"}}", &engine[0]]);
    let kitt_id = docker(&["container", "inspect", "--format", "{{.Id}}", &kitt_name]);
    assert!(owner.contains(&kitt_id), "the owner label names kitt's container: {owner}");
    // The containerised kitt is alive: the host's sweep leaves its engine.
    let out = env.cmd().args(["gc", "--run", &run_id(&run), "--output", "json"]).output().unwrap();
    let v = json_of(&out);
    assert_eq!(v["containers"]["removed"], serde_json::json!([]), "{v}");
    assert_eq!(v["containers"]["foreign"], serde_json::json!([]), "judged by its container, not foreign: {v}");
    assert_eq!(containers_of(&run_id(&run)), engine);
    // kitt's container dies (SIGKILL): its engine is an orphan the host removes.
    docker(&["kill", &kitt_name]);
    let out = env.cmd().args(["gc", "--run", &run_id(&run)]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("removed container {}", engine[0])) && said.contains("has stopped"), "{said}");
    assert!(containers_of(&run_id(&run)).is_empty());
    let logs: String = std::fs::read_dir(run.join("steps"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("engine.log")).ok())
        .collect();
    assert!(logs.contains("\"mimic\":\"vllm\""), "the orphan's logs were saved: {logs}");
}

/// A `docker run` the CLI gives up on (no answer within `KITT_DOCKER_TIMEOUT`) may still have
/// started its container: kitt saves what it wrote and removes it. A `docker` on PATH that runs
/// the real one and then dawdles plays the slow daemon.
#[test]
fn serial_docker_a_docker_run_that_times_out_leaves_no_container() {
    if docker_missing() {
        return;
    }
    let image = sim_image("vllm");
    let env = Env::new();
    let real = Command::new("sh").args(["-c", "command -v docker"]).output().unwrap();
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    let bin = env.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("docker");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = run ]; then \"{real}\" \"$@\"; sleep 6; exit 0; fi\nexec \"{real}\" \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let s = env.suite(&suite("vllm", &image, "", 4));
    let out = env.cmd().arg("apply").arg(&s).env("PATH", path).env("KITT_DOCKER_TIMEOUT", "3").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer within"), "{}", text(&out));
    let run = env.only_run();
    assert!(containers_of(&run_id(&run)).is_empty(), "the container the daemon did start was removed");
    let logs: String = std::fs::read_dir(run.join("steps"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("engine.log")).ok())
        .collect();
    assert!(logs.contains("\"mimic\":\"vllm\""), "what the engine wrote is kept: {logs}");
    assert!(logs.contains("no answer within"), "and why it was removed: {logs}");
}
