//! What the Docker test binaries share: whether Docker answers (a failure under CI when it does
//! not), images of kitt's simulators packed locally, a private runs directory per test, and
//! queries scoped to one run's containers (label `kitt.run`), so that tests and other runs on
//! the same daemon do not disturb each other.
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

pub fn skip(msg: &str) -> bool {
    if ci() {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    true
}

/// Whether Docker answers (a failure under CI when it does not).
pub fn docker_missing() -> bool {
    let ok = Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output();
    match ok {
        Ok(o) if o.status.success() => false,
        Ok(o) => skip(&format!("Docker is not usable: {}", String::from_utf8_lossy(&o.stderr))),
        Err(e) => skip(&format!("no docker CLI: {e}")),
    }
}

pub fn docker(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().unwrap();
    assert!(o.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Containers (running or not) of one run.
pub fn containers_of(run_id: &str) -> Vec<String> {
    docker(&["ps", "--all", "--filter", &format!("label=kitt.run={run_id}"), "--format", "{{.Names}}"])
        .lines()
        .map(String::from)
        .collect()
}

/// kitt packed into an image whose entrypoint mimics `engine`'s command line.
pub fn sim_image(engine: &str) -> String {
    let tag = format!("kitt-local/sim-{engine}:test");
    let mut c = Command::new(root().join("scripts/pack-image.sh"));
    c.arg(&tag).arg(env!("CARGO_BIN_EXE_kitt"));
    if engine == "ollama" {
        c.args(["--cmd", "serve"]);
    }
    c.args(["--", "sim", "--mimic", engine, "--"]);
    let o = c.output().unwrap();
    assert!(o.status.success(), "pack-image.sh: {}", String::from_utf8_lossy(&o.stderr));
    tag
}

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn runs(&self) -> PathBuf {
        self.path().join("runs")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kitt"));
        c.env("KITT_RUNS_DIR", self.runs())
            .env("KITT_STORE", "off")
            .env("KITT_HOST_LOCK", self.path().join("host.lock"))
            .env_remove("KITT_TEST_KILL_AFTER_RECORD")
            .env_remove("KITT_TEST_KILL_IN_BENCHMARK")
            .env("NO_COLOR", "1");
        c
    }

    pub fn suite(&self, yaml: &str) -> PathBuf {
        let p = self.path().join("suite.yaml");
        std::fs::write(&p, yaml).unwrap();
        std::fs::create_dir_all(self.path().join("models")).unwrap();
        std::fs::write(self.path().join("models/weights.bin"), b"not a real model").unwrap();
        p
    }

    pub fn only_run(&self) -> PathBuf {
        let runs: Vec<PathBuf> = std::fs::read_dir(self.runs()).unwrap().map(|e| e.unwrap().path()).collect();
        let runs: Vec<PathBuf> = runs.into_iter().filter(|p| p.is_dir()).collect();
        assert_eq!(runs.len(), 1, "{runs:?}");
        runs[0].clone()
    }
}

pub fn run_id(run: &Path) -> String {
    run.file_name().unwrap().to_string_lossy().to_string()
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn report(run: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(run.join("report/result.json")).unwrap()).unwrap()
}

pub fn journal(run: &Path) -> Vec<Json> {
    std::fs::read_to_string(run.join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn wait_for_step(runs: &Path, kind: &str, timeout: Duration) -> PathBuf {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(run) =
            std::fs::read_dir(runs).ok().and_then(|mut d| d.next()).and_then(|e| e.ok()).map(|e| e.path())
            && journal(&run).iter().any(|r| r["event"] == "step_started" && r["kind"] == kind)
        {
            return run;
        }
        assert!(Instant::now() < deadline, "no {kind} step started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A suite of one container engine of `template` on `image`.
pub fn suite(template: &str, image: &str, engine_extra: &str, requests: u32) -> String {
    format!(
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: docker-{template}}}
spec:
  models: [{{name: tiny-model, path: models/weights.bin}}]
  engines:
    - name: e
      template: {template}
      image: {image}
      pull: never
{engine_extra}
  benchmarks:
    - name: tput
      template: throughput
      params: {{concurrency: 2, requests: {requests}, input_tokens: 16, max_tokens: 8}}
  sampling: {{temperature: 0, seed: 1}}
  warmup: {{requests: 1}}
  reporters: [json]
"#
    )
}

/// Removes the containers of these runs however the test ends.
pub struct RunsRemoved(pub Vec<String>);

impl Drop for RunsRemoved {
    fn drop(&mut self) {
        for run in &self.0 {
            for name in containers_of(run) {
                let _ = Command::new("docker").args(["rm", "--force", &name]).output();
            }
        }
    }
}

/// `kitt` with `KITT_MACHINE_ID` set plays another machine on this Docker daemon.
pub fn as_machine(env: &Env, machine: &str) -> Command {
    let mut c = env.cmd();
    c.env("KITT_MACHINE_ID", machine);
    c
}

pub fn json_of(o: &Output) -> Json {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// Sibling mode: packs this kitt into the local image `kitt-local/kitt:test` and returns the
/// `docker run` arguments (up to the image, with the image last) that run it with the daemon's
/// socket and CLI mounted, `dir` mounted at its own path as the working, runs and lock directory,
/// host networking and no store; `None` (a skip, said) where there is no socket or CLI.
pub fn kitt_in_container(dir: &Path) -> Option<Vec<String>> {
    let socket = Path::new("/var/run/docker.sock");
    let cli = Command::new("sh").args(["-c", "command -v docker"]).output().unwrap();
    let cli = String::from_utf8_lossy(&cli.stdout).trim().to_string();
    if (!socket.exists() || cli.is_empty()) && skip("sibling mode needs /var/run/docker.sock and the docker CLI") {
        return None;
    }
    let kitt_image = "kitt-local/kitt:test";
    let o = Command::new(root().join("scripts/pack-image.sh"))
        .arg(kitt_image)
        .arg(env!("CARGO_BIN_EXE_kitt"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = std::fs::canonicalize(dir).unwrap().to_string_lossy().to_string();
    let args = [
        "--network".to_string(),
        "host".into(),
        "-v".into(),
        "/var/run/docker.sock:/var/run/docker.sock".into(),
        "-v".into(),
        format!("{cli}:/usr/local/bin/docker:ro"),
        "-v".into(),
        format!("{d}:{d}"),
        "-w".into(),
        d.clone(),
        "-e".into(),
        format!("KITT_RUNS_DIR={d}/runs"),
        "-e".into(),
        format!("KITT_HOST_LOCK={d}/host.lock"),
        "-e".into(),
        "KITT_STORE=off".into(),
        "-e".into(),
        "NO_COLOR=1".into(),
        kitt_image.into(),
    ];
    Some(args.to_vec())
}
