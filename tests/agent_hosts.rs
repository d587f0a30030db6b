//! Agents on hosts of their own: a `kitt serve` and three `kitt agent`s, each in a container
//! packed here (`scripts/pack-image.sh`: kitt and its glibc libraries, no registry) on a private
//! `--internal` Docker network, the agents trusting only the server's self-signed CA by its
//! SHA-256. A run is placed on them; one agent is killed with `docker kill`, another cut off with
//! `docker network disconnect`; each run completes with every key committed once. Nothing of a
//! test is left after it: containers and network are removed.

mod agents_support;
mod common;
mod docker_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agents_support::{HEARTBEAT_MS, commits, finished, records, suite, wait_for};
use docker_support::{docker, docker_missing, root};
use serde_json::Value as Json;

/// The containers and network of one test, removed when it ends.
struct Fleet {
    dir: tempfile::TempDir,
    tag: String,
    net: String,
    server: String,
    agents: Vec<String>,
    fingerprint: String,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let mut all = self.agents.clone();
        all.push(self.server.clone());
        let _ = Command::new("docker").args(["rm", "-f"]).args(&all).output();
        let _ = Command::new("docker").args(["network", "rm", &self.net]).output();
        // Files the containers wrote as root go with the temporary directory.
    }
}

impl Fleet {
    fn srv(&self) -> PathBuf {
        self.dir.path().join("srv")
    }

    fn host_kitt(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kitt"));
        c.env("KITT_TOKENS", self.srv().join("tokens.json")).env("KITT_STORE", "off").env("HOME", self.dir.path());
        c
    }

    fn start(n_agents: usize) -> Fleet {
        let tag = "kitt-local/kitt-agent-test:latest".to_string();
        let o = Command::new(root().join("scripts/pack-image.sh"))
            .arg(&tag)
            .arg(env!("CARGO_BIN_EXE_kitt"))
            .output()
            .unwrap();
        assert!(o.status.success(), "pack-image.sh: {}", String::from_utf8_lossy(&o.stderr));
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().file_name().unwrap().to_string_lossy().to_lowercase().replace(['.', '_'], "");
        let net = format!("kitt-agents-{id}");
        docker(&["network", "create", "--internal", &net]);
        let server = format!("kitt-central-{id}");
        let mut fleet = Fleet { dir, tag, net, server, agents: Vec::new(), fingerprint: String::new() };
        for d in ["srv/suites", "srv/runs"] {
            std::fs::create_dir_all(fleet.dir.path().join(d)).unwrap();
        }
        let srv = format!("{}:/srv", fleet.srv().display());
        let heartbeat = format!("KITT_AGENT_HEARTBEAT_MS={HEARTBEAT_MS}");
        docker(&[
            "run",
            "-d",
            "--name",
            &fleet.server,
            "--hostname",
            "central",
            "--network",
            &fleet.net,
            "--network-alias",
            "central",
            "-v",
            &srv,
            "-e",
            &heartbeat,
            "-e",
            "KITT_TOKENS=/srv/tokens.json",
            "-e",
            "KITT_STORE=off",
            &fleet.tag,
            "serve",
            "--bind",
            "0.0.0.0:8443",
            "--tls-self-signed",
            "--tls-dir",
            "/srv/tls",
            "--runs-dir",
            "/srv/runs",
            "--suites-dir",
            "/srv/suites",
            "--token-file",
            "/srv/admin.tok",
        ]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while fleet.fingerprint.is_empty() {
            assert!(Instant::now() < deadline, "the server did not start: {}", logs(&fleet.server));
            fleet.fingerprint = logs(&fleet.server)
                .lines()
                .find_map(|l| l.split("to trust: SHA-256 ").nth(1).map(|f| f.trim().to_string()))
                .unwrap_or_default();
            std::thread::sleep(Duration::from_millis(50));
        }
        for i in 0..n_agents {
            fleet.add_agent(&format!("gpu-{i}"));
        }
        fleet
    }

    fn add_agent(&mut self, name: &str) {
        let pin = self.fingerprint.clone();
        self.add_agent_pinned(name, &pin);
    }

    fn add_agent_pinned(&mut self, name: &str, pin: &str) {
        let out = self
            .host_kitt()
            .args([
                "serve", "token", "create", "--name", name, "--scope", "agent", "--labels", "gpu=h100", "--output",
                "json",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::text(&out));
        let token = serde_json::from_slice::<Json>(&out.stdout).unwrap()["token"].as_str().unwrap().to_string();
        let cfg = self.dir.path().join(name);
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(cfg.join("tok"), &token).unwrap();
        // Written here with the agent's own command: the paths are the container's.
        let o = self
            .host_kitt()
            .args(["agent", "--config"])
            .arg(cfg.join("agent.json"))
            .args(["init", "--server", "https://central:8443", "--ca-sha256", pin, "--token-file"])
            .arg(cfg.join("tok"))
            .args(["--allow-native", "--state-dir", "/state"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", common::text(&o));
        std::fs::remove_file(cfg.join("tok")).unwrap();
        let container = format!("{}-{name}", self.server.replace("central", "agent"));
        let mount = format!("{}:/cfg", cfg.display());
        docker(&[
            "run",
            "-d",
            "--name",
            &container,
            "--hostname",
            name,
            "--network",
            &self.net,
            "-v",
            &mount,
            &self.tag,
            "agent",
            "--config",
            "/cfg/agent.json",
            "start",
        ]);
        self.agents.push(container);
    }

    /// Starts `yaml` as the server would (its driver runs in the server's container).
    fn start_run(&self, yaml: &str) -> PathBuf {
        std::fs::write(self.srv().join("suites/s.yaml"), yaml).unwrap();
        let out = docker(&[
            "exec",
            &self.server,
            "kitt",
            "apply",
            "/srv/suites/s.yaml",
            "--executor",
            "agents",
            "--detach",
            "--runs-dir",
            "/srv/runs",
            "--output",
            "json",
            "-q",
        ]);
        let v: Json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        self.srv().join("runs").join(v["run_id"].as_str().unwrap())
    }

    fn container_of(&self, agent: &str) -> String {
        self.agents.iter().find(|c| c.ends_with(&format!("-{agent}"))).unwrap().clone()
    }
}

fn logs(container: &str) -> String {
    let o = Command::new("docker").args(["logs", container]).output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The agent holding the run's unit now, once one does.
fn holder(run: &Path) -> String {
    let mut who = String::new();
    wait_for(60, "an agent measuring", || {
        let measuring =
            common::shard_records(run).iter().any(|r| r["event"] == "step_started" && r["kind"] == "benchmark");
        if let Some(r) = records(run).values().find(|r| r["outcome"] == "running") {
            who = r["agent"].as_str().unwrap_or_default().to_string();
        }
        measuring && !who.is_empty()
    });
    who
}

#[test]
fn serial_docker_three_agents_on_their_own_hosts_run_a_suite_and_survive_a_kill_and_a_cut() {
    if docker_missing() {
        return;
    }
    let mut fleet = Fleet::start(3);
    // An agent pinned to another CA never talks to this server.
    let first = if fleet.fingerprint.starts_with('0') { "1" } else { "0" };
    let wrong = format!("{first}{}", &fleet.fingerprint[1..]);
    fleet.add_agent_pinned("gpu-wrong", &wrong);

    // 1. Three cells on three agents, over TLS pinned to the server's CA: as a local run.
    let yaml = suite("hosts-e2e", "1, 2, 3", 16, "gpu: h100", "3s");
    let run = fleet.start_run(&yaml);
    wait_for(120, "the run to finish", || finished(&run));
    let placed = common::report(&run);
    let local = common::KittEnv::new();
    let path = local.suite(&yaml);
    let out = local.cmd().args(["apply"]).arg(&path).args(["--executor", "local", "-q"]).output().unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(common::comparable(&placed, false), common::comparable(&common::report(&local.only_run()), false));
    assert_eq!(commits(&run).len(), 6);
    let wrong = logs(&fleet.container_of("gpu-wrong"));
    assert!(wrong.contains("pinned SHA-256"), "the wrong pin is why: {wrong}");
    assert!(records(&run).values().all(|r| r["agent"] != "gpu-wrong"));
    let hosts: std::collections::BTreeSet<String> =
        records(&run).values().map(|r| r["hostname"].as_str().unwrap().to_string()).collect();
    assert!(hosts.iter().all(|h| h.starts_with("gpu-")), "each attempt names its agent's host: {hosts:?}");

    // 2. `docker kill` of the agent measuring: the unit resumes on another within lease + a heartbeat.
    let run = fleet.start_run(&suite("hosts-kill", "1", 600, "gpu: h100", "3s"));
    let victim = holder(&run);
    docker(&["kill", &fleet.container_of(&victim)]);
    let killed = Instant::now();
    wait_for(30, "the unit on another agent", || {
        records(&run).values().any(|r| r["agent"] != victim.as_str() && r["outcome"] == "running")
    });
    let moved = killed.elapsed();
    assert!(moved < Duration::from_millis(3000 + HEARTBEAT_MS + 4000), "placed again after {moved:?}");
    wait_for(120, "the run to finish", || finished(&run));
    let c = commits(&run);
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(c.values().all(|m| m["agent"] != victim.as_str()), "{c:?}");
    assert!(common::report(&run)["cells"].as_array().unwrap().iter().all(|c| c["status"] == "ok"));

    // 3. `docker network disconnect` of the agent measuring: it fences (its engine stops) before
    //    the unit is placed again; reconnected after, nothing of it is committed.
    let run = fleet.start_run(&suite("hosts-cut", "1", 600, "gpu: h100", "3s"));
    let cut = holder(&run);
    let container = fleet.container_of(&cut);
    docker(&["network", "disconnect", &fleet.net, &container]);
    let cut_at = Instant::now();
    let mut fenced = None;
    wait_for(30, "the unit on another agent", || {
        if fenced.is_none() && logs(&container).contains("fencing") {
            fenced = Some(cut_at.elapsed());
        }
        records(&run).values().any(|r| r["agent"] != cut.as_str() && r["outcome"] == "running")
    });
    let placed_at = cut_at.elapsed();
    let fenced = fenced.unwrap_or_else(|| panic!("{cut} did not fence: {}", logs(&container)));
    assert!(fenced < placed_at, "fenced at {fenced:?}, placed again at {placed_at:?}");
    docker(&["network", "connect", &fleet.net, &container]);
    wait_for(120, "the run to finish", || finished(&run));
    let c = commits(&run);
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(c.values().all(|m| m["agent"] != cut.as_str()), "nothing of the fenced attempt: {c:?}");
    let name = fleet.server.clone();
    drop(fleet);
    let left =
        docker(&["ps", "-a", "--filter", &format!("name={}", name.replace("central", "")), "--format", "{{.Names}}"]);
    assert!(left.is_empty(), "containers left: {left}");
}
