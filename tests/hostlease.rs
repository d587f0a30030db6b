//! The host lease across users: two kitt processes of two unprivileged users, with nothing
//! prepared by root, share the machine-wide lease, and a planted symlink is refused.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value as Json;

fn text(o: &Output) -> String {
    format!("status {:?}\nstderr:\n{}", o.status, String::from_utf8_lossy(&o.stderr))
}

fn suite(name: &str, model: &str) -> String {
    format!(
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: {name}}}
spec:
  models: [{{name: {model}}}]
  engines: [{{name: sim, template: sim, params: {{itl_ms: 2}}}}]
  benchmarks:
    - {{name: lat, template: latency, params: {{requests: 6, max_tokens: 6}}}}
    - {{name: tput, template: throughput, params: {{concurrency: [2], requests: 8, input_tokens: 8, max_tokens: 6}}}}
  warmup: {{requests: 1}}
  reporters: [json]
"#
    )
}

fn journal(run: &Path) -> Vec<Json> {
    std::fs::read_to_string(run.join("journal.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The span of `run` from its engine's start being journaled to its stop being journaled.
fn engine_window(run: &Path) -> (u64, u64) {
    let j = journal(run);
    let at = |event: &str, kind: &str| {
        j.iter().find(|r| r["event"] == event && r["kind"] == kind).map(|r| r["unix_ns"].as_u64().unwrap())
    };
    (at("step_started", "start").expect("start"), at("step_finished", "stop").expect("stop"))
}

#[test]
fn serial_two_users_share_one_host_lease_and_never_load_or_measure_at_once() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipping: switching users needs root and setpriv");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // The test's own scratch space is open to both users; the lease directory is not prepared.
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // A copy of kitt both users can run (the build's own may sit in a home directory only root
    // enters, as CI's target directory does).
    let kitt = d.path().join("kitt");
    std::fs::copy(env!("CARGO_BIN_EXE_kitt"), &kitt).unwrap();
    std::fs::set_permissions(&kitt, std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = 20_000 + std::process::id() % 20_000;
    let users = [base, base + 1];
    let children: Vec<(u32, PathBuf, std::process::Child)> = users
        .iter()
        .map(|uid| {
            let home = d.path().join(format!("u{uid}"));
            std::fs::create_dir(&home).unwrap();
            std::os::unix::fs::chown(&home, Some(*uid), Some(*uid)).unwrap();
            let s = home.join("s.yaml");
            std::fs::write(&s, suite(&format!("u{uid}"), &format!("lease{uid}"))).unwrap();
            let child = Command::new("/usr/bin/setpriv")
                .args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()])
                .arg(&kitt)
                .arg("apply")
                .arg(&s)
                .env_remove("KITT_HOST_LOCK")
                .env_remove("XDG_RUNTIME_DIR")
                .env("HOME", &home)
                .env("KITT_RUNS_DIR", home.join("runs"))
                .env("KITT_STORE", "off")
                .env("NO_COLOR", "1")
                .current_dir(&home)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (*uid, home, child)
        })
        .collect();
    let mut windows = Vec::new();
    for (uid, home, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "user {uid}: {}", text(&out));
        let run = std::fs::read_dir(home.join("runs")).unwrap().next().unwrap().unwrap().path();
        windows.push(engine_window(&run));
    }
    windows.sort();
    assert!(windows[0].1 <= windows[1].0, "one user's engine ran while the other's was up: {windows:?}");
    let dir = std::fs::symlink_metadata("/tmp/kitt-host").unwrap();
    assert!(dir.is_dir() && dir.mode() & 0o1777 == 0o1777, "mode {:o}", dir.mode());
    let lock = std::fs::symlink_metadata("/tmp/kitt-host/host.lock").unwrap();
    assert!(lock.is_file() && lock.mode() & 0o777 == 0o666, "mode {:o}", lock.mode());
    assert_eq!(lock.len(), 0, "the lock file is never written");
}

#[test]
fn a_symlink_planted_at_the_host_lock_fails_the_run_and_leaves_its_target_alone() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("precious");
    std::fs::write(&target, "keep me").unwrap();
    let lock = d.path().join("host.lock");
    std::os::unix::fs::symlink(&target, &lock).unwrap();
    let s = d.path().join("s.yaml");
    std::fs::write(&s, suite("planted", "planted")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kitt"))
        .arg("apply")
        .arg(&s)
        .env("KITT_HOST_LOCK", &lock)
        .env("KITT_RUNS_DIR", d.path().join("runs"))
        .env("KITT_STORE", "off")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
}
