//! `kitt engines check` for native binaries, and `kitt gc` for engines a killed kitt left behind.

use std::os::unix::process::CommandExt as _;
use std::process::Command;

fn kitt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kitt"))
}

#[test]
fn engines_check_finds_native_binaries_or_says_what_to_do() {
    let ok = kitt().args(["engines", "check", "sim", "--native"]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let missing = kitt()
        .args([
            "engines",
            "check",
            "llama_cpp",
            "--native",
            "--binary",
            "/nonexistent/llama-server",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["detail"].as_str().unwrap().contains("params: {binary:"), "{v}");
    let on_path = kitt().args(["engines", "check", "llama_cpp", "--native", "--binary", "sh"]).output().unwrap();
    assert!(on_path.status.success(), "a name on PATH is found");
    let unknown = kitt().args(["engines", "check", "lama_cpp"]).output().unwrap();
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("did you mean `llama_cpp`?"));
}

#[test]
fn gc_stops_an_engine_left_by_a_dead_run_and_nothing_else() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("20260101-000000-dead");
    std::fs::create_dir_all(&run).unwrap();
    let mut orphan = Command::new("sleep").arg("60").process_group(0).spawn().unwrap();
    kitt::run::pidfile::write(&run, "groupkey", orphan.id());
    let mut bystander = Command::new("sleep").arg("60").process_group(0).spawn().unwrap();
    let out = kitt().arg("gc").arg("--runs-dir").arg(d.path()).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("stopped engine process {}", orphan.id())));
    assert!(orphan.wait().is_ok(), "the orphan was stopped");
    assert!(bystander.try_wait().unwrap().is_none(), "a process nobody recorded is never touched");
    let _ = bystander.kill();
    let _ = bystander.wait();
    let again = kitt().arg("gc").arg("--runs-dir").arg(d.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to clean up"));
}

#[test]
fn engines_check_asks_docker_about_a_container_image() {
    let out = kitt().args(["engines", "check", "vllm", "--output", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["what"], "image `vllm/vllm-openai:latest`");
    let detail = v["detail"].as_str().unwrap();
    // No registry is reachable here, so the image is never present; Docker itself must answer in CI.
    if std::env::var("CI").is_ok_and(|c| c == "true") {
        assert_eq!(detail, "not present locally", "{v}");
    } else {
        assert!(detail == "not present locally" || detail.starts_with("Docker is not usable"), "{v}");
    }
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_docker_daemon_that_never_answers_is_given_up_on() {
    // A "daemon" that accepts connections and says nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let out = kitt()
        .args(["engines", "check", "vllm", "--output", "json"])
        .env("DOCKER_HOST", format!("tcp://127.0.0.1:{port}"))
        .env("KITT_DOCKER_TIMEOUT", "1")
        .output()
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.starts_with("Docker is not usable") && detail.contains("no answer within 1s"), "{detail}");
    drop(silent);
}
