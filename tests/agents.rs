//! Remote GPU agents end to end: a real `kitt serve` on loopback, real `kitt agent` processes
//! (each with its own config, token and spool), real `kitt work` children running real `kitt
//! sim` engines, a real kill -9 and a cut network (the test hook), over the agent API.
//!
//! Leases and heartbeats are seconds here (`KITT_AGENT_HEARTBEAT_MS`, `execution.agents.lease`),
//! so a lost agent is noticed within a test's patience.

mod agents_support;
mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agents_support::{HEARTBEAT_MS, commits, finished, records, suite, wait_for};
use common::{KittEnv, comparable, report, sims_alive, text};
use serde_json::{Value as Json, json};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: an agent stops its units' engines.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Place {
    env: KittEnv,
    server: Option<Proc>,
    port: u16,
    admin: String,
}

impl Place {
    fn kitt(&self) -> Command {
        let mut c = self.env.cmd();
        c.env("KITT_TOKENS", self.env.path().join("tokens.json"))
            .env("KITT_AGENT_HEARTBEAT_MS", HEARTBEAT_MS.to_string())
            .env("HOME", self.env.path().join("home"))
            .env_remove("KITT_TEST_AGENT_PARTITION")
            .env_remove("KITT_AGENT_CONFIG");
        c
    }

    fn new() -> Place {
        let env = KittEnv::new();
        std::fs::create_dir_all(env.path().join("suites")).unwrap();
        std::fs::create_dir_all(env.path().join("home")).unwrap();
        let mut p = Place { env, server: None, port: 0, admin: String::new() };
        p.start_server(0);
        p
    }

    /// Starts `kitt serve` on `port` (0: a free one).
    fn start_server(&mut self, port: u16) {
        let mut cmd = self.kitt();
        cmd.args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--suites-dir"]).arg(self.env.path().join("suites"));
        cmd.args(["--token-file"]).arg(self.env.path().join("admin.tok")).arg("--allow-suite-upload");
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(port) = line.split("listening on ").nth(1).and_then(|u| u.rsplit(':').next()) {
                    let _ = tx.send(port.trim().parse::<u16>().unwrap_or(0));
                }
            }
        });
        self.port = rx.recv_timeout(Duration::from_secs(20)).expect("kitt serve did not start");
        self.server = Some(Proc(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.admin.is_empty() && Instant::now() < deadline {
            self.admin =
                std::fs::read_to_string(self.env.path().join("admin.tok")).unwrap_or_default().trim().to_string();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A token made with `kitt serve token create`.
    fn token(&self, name: &str, scope: &str, labels: &str) -> String {
        let out = self
            .kitt()
            .args([
                "serve", "token", "create", "--name", name, "--scope", scope, "--labels", labels, "--output", "json",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<Json>(&out.stdout).unwrap()["token"].as_str().unwrap().to_string()
    }

    fn config(&self, name: &str) -> PathBuf {
        self.env.path().join(format!("{name}.json"))
    }

    fn state(&self, name: &str) -> PathBuf {
        self.env.path().join(format!("state-{name}"))
    }

    /// `kitt agent init` for agent `name` (its token on stdin).
    fn init_agent(&self, name: &str, labels: &str) -> String {
        self.init_agent_with(name, labels, &[])
    }

    fn init_agent_with(&self, name: &str, labels: &str, extra: &[&str]) -> String {
        let token = self.token(name, "agent", labels);
        let mut c = self.kitt();
        c.args(["agent", "--config"]).arg(self.config(name)).args(["init", "--server", &self.url()]).args(extra);
        c.args(["--token-file", "-", "--allow-native", "--state-dir"]).arg(self.state(name));
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(format!("{token}\n").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        token
    }

    fn start_agent(&self, name: &str, partition: Option<&Path>) -> Proc {
        self.start_agent_with(name, partition, &[])
    }

    fn start_agent_with(&self, name: &str, partition: Option<&Path>, vars: &[(&str, &str)]) -> Proc {
        let mut c = self.kitt();
        c.envs(vars.iter().copied());
        c.args(["agent", "--config"]).arg(self.config(name)).arg("start");
        if let Some(p) = partition {
            c.env("KITT_TEST_AGENT_PARTITION", p);
        }
        c.stdout(Stdio::null()).stderr(std::fs::File::create(self.env.path().join(format!("{name}.log"))).unwrap());
        Proc(c.spawn().unwrap())
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.env.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Starts `yaml` over the API (it is placed on agents); the run's directory.
    fn start_run(&self, yaml: &str) -> PathBuf {
        std::fs::write(self.env.path().join("suites").join("s.yaml"), yaml).unwrap();
        let a = request(
            self.port,
            "POST",
            "/api/v1/runs",
            Some(&self.admin),
            &json!({"suite": "s.yaml"}).to_string().into_bytes(),
        );
        assert_eq!(a.0, 201, "{}", String::from_utf8_lossy(&a.1));
        PathBuf::from(serde_json::from_slice::<Json>(&a.1).unwrap()["run_dir"].as_str().unwrap())
    }

    fn agents(&self) -> Json {
        let out = self
            .kitt()
            .args(["agents", "list", "--output", "json", "--server", &self.url()])
            .env("KITT_SERVER_TOKEN", &self.admin)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// One HTTP/1.1 request (Connection: close): status and body.
fn request(port: u16, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
            rest = &rest[nl + 2 + n + 2..];
        }
        body = out;
    }
    (status, body)
}

/// Files under `dir` holding `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())) {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn serial_agents_run_a_suite_cell_for_cell_as_a_local_run_does() {
    let place = Place::new();
    let tok_a = place.init_agent("gpu-a", "gpu=h100,rack=r1");
    let tok_b = place.init_agent("gpu-b", "gpu=h100");
    let tok_c = place.init_agent("gpu-c", "gpu=a100");
    let _a = place.start_agent("gpu-a", None);
    let _b = place.start_agent("gpu-b", None);
    let _c = place.start_agent("gpu-c", None);
    // The shipped example: three cells on H100 agents.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let yaml = std::fs::read_to_string(root.join("examples/agents.yaml")).unwrap();
    let run = place.start_run(&yaml);
    wait_for(120, "the run to finish", || finished(&run));
    let placed = report(&run);
    assert!(placed["cells"].as_array().unwrap().iter().all(|c| c["status"] == "ok"), "{placed}");

    // The same suite run locally: the same cells, statuses, counts.
    let local = KittEnv::new();
    let path = local.suite(&yaml);
    let out = local.cmd().args(["apply"]).arg(&path).args(["--executor", "local", "-q"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(comparable(&placed, false), comparable(&report(&local.only_run()), false));

    // Each measured key committed once, by an agent whose labels match; none by gpu-c.
    let commits = commits(&run);
    assert_eq!(commits.len(), 6, "3 benchmarks and 3 collects: {commits:?}");
    for (key, marker) in &commits {
        let agent = marker["agent"].as_str().unwrap_or_default();
        assert!(agent == "gpu-a" || agent == "gpu-b", "step {key} committed by {marker}");
    }
    let recs = records(&run);
    assert_eq!(recs.len(), 3, "one attempt per unit: {recs:?}");
    assert!(recs.values().all(|r| r["outcome"] == "succeeded" && r["agent"] != "gpu-c"), "{recs:?}");
    // Every attempt's journal shard reached the server.
    for (unit, attempt) in recs.keys() {
        let shard = run.join("journal").join(format!("{unit}.{attempt}.jsonl"));
        let text = std::fs::read_to_string(&shard).unwrap();
        assert!(text.contains("\"run_finished\""), "{}: {text}", shard.display());
    }
    // `kitt runs show` names the agent of each unit.
    let out = place.kitt().args(["runs", "show"]).arg(&run).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("gpu-a@") || shown.contains("gpu-b@"), "{shown}");

    let list = place.agents();
    let names: BTreeSet<&str> =
        list["agents"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["gpu-a", "gpu-b", "gpu-c"]));
    let a = list["agents"].as_array().unwrap().iter().find(|a| a["name"] == "gpu-a").unwrap();
    assert_eq!(a["labels"], json!({"gpu": "h100", "rack": "r1"}));
    assert_eq!(a["online"], true);

    // The tokens are nowhere a user or another process could read them.
    for tok in [&tok_a, &tok_b, &tok_c] {
        assert!(files_holding(&place.env.runs(), tok).is_empty(), "a token in the runs directory");
        for name in ["gpu-a", "gpu-b", "gpu-c"] {
            assert!(files_holding(&place.state(name), tok).is_empty(), "a token in an agent's spool");
            assert!(!place.log(name).contains(tok.as_str()), "a token in an agent's log");
        }
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            assert!(!cmdline.windows(tok.len()).any(|w| w == tok.as_bytes()), "a token on a command line");
        }
    }
    let kept = std::fs::read_to_string(place.env.path().join("tokens.json")).unwrap();
    assert!(!kept.contains(tok_a.as_str()), "tokens are kept hashed");
}

#[test]
fn serial_a_killed_agent_s_unit_resumes_on_another_within_lease_plus_a_heartbeat() {
    let place = Place::new();
    place.init_agent("gpu-a", "gpu=h100");
    place.init_agent("gpu-b", "gpu=h100");
    let mut a = place.start_agent("gpu-a", None);
    // One long cell: 600 requests of 16 tokens at 1 ms each, one at a time.
    let run = place.start_run(&suite("agents-kill", "1", 600, "gpu: h100", "3s"));
    wait_for(60, "gpu-a to be measuring", || {
        records(&run).values().any(|r| r["agent"] == "gpu-a")
            && common::shard_records(&run).iter().any(|r| r["event"] == "step_started" && r["kind"] == "benchmark")
    });
    let _b = place.start_agent("gpu-b", None);
    wait_for(20, "gpu-b to register", || {
        place.agents()["agents"].as_array().unwrap().iter().any(|x| x["name"] == "gpu-b")
    });
    std::thread::sleep(Duration::from_millis(300));
    a.0.kill().unwrap();
    let killed = Instant::now();
    let _ = a.0.wait();
    wait_for(30, "the unit to be placed on gpu-b", || records(&run).values().any(|r| r["agent"] == "gpu-b"));
    let moved = killed.elapsed();
    // Lease 3 s plus one heartbeat, with room for a loaded machine.
    assert!(moved < Duration::from_millis(3000 + HEARTBEAT_MS + 4000), "placed again after {moved:?}");
    wait_for(120, "the run to finish", || finished(&run));
    assert!(report(&run)["cells"].as_array().unwrap().iter().all(|c| c["status"] == "ok"));
    let recs = records(&run);
    let first = recs.iter().find(|(_, r)| r["agent"] == "gpu-a").map(|(k, r)| (k.1, r.clone())).unwrap();
    assert_eq!(first.0, 0);
    let second = recs.iter().find(|(_, r)| r["agent"] == "gpu-b").map(|(k, r)| (k.1, r.clone())).unwrap();
    assert_eq!(second.0, 1, "the next attempt: {recs:?}");
    assert_eq!(second.1["outcome"], "succeeded");
    // The lost attempt is journaled as expired; each key committed once, by the new attempt.
    let unit = recs.keys().next().unwrap().0.clone();
    assert!(run.join("attempts").join(&unit).join("0.expired").exists(), "attempt 0 marked expired");
    let commits = commits(&run);
    assert_eq!(commits.len(), 2, "{commits:?}");
    assert!(commits.values().all(|m| m["attempt"] == 1 && m["agent"] == "gpu-b"), "{commits:?}");
    wait_for(20, "no sim left", || sims_alive("agents-kill") == 0);
}

#[test]
fn serial_a_cut_off_agent_fences_itself_before_its_unit_is_placed_again() {
    let place = Place::new();
    place.init_agent("gpu-a", "gpu=h100");
    place.init_agent("gpu-b", "gpu=h100");
    let cut = place.env.path().join("cut");
    let _a = place.start_agent("gpu-a", Some(&cut));
    let run = place.start_run(&suite("agents-cut", "1", 600, "gpu: h100", "3s"));
    wait_for(60, "gpu-a to be measuring", || {
        common::shard_records(&run).iter().any(|r| r["event"] == "step_started" && r["kind"] == "benchmark")
    });
    let _b = place.start_agent("gpu-b", None);
    std::fs::write(&cut, b"").unwrap();
    let cut_at = Instant::now();
    // gpu-a stops its engine before the server gives the unit to gpu-b.
    let mut fenced_at = None;
    wait_for(30, "the unit to be placed on gpu-b", || {
        if fenced_at.is_none() && place.log("gpu-a").contains("fencing") {
            fenced_at = Some(cut_at.elapsed());
        }
        records(&run).values().any(|r| r["agent"] == "gpu-b")
    });
    let placed_at = cut_at.elapsed();
    let fenced_at = fenced_at.unwrap_or_else(|| panic!("gpu-a did not fence: {}", place.log("gpu-a")));
    assert!(fenced_at < placed_at, "fenced at {fenced_at:?}, but placed again at {placed_at:?}");
    // The network comes back after expiry: what gpu-a would still send is refused, and it sends nothing.
    std::fs::remove_file(&cut).unwrap();
    wait_for(120, "the run to finish", || finished(&run));
    let commits = commits(&run);
    assert_eq!(
        commits.len(),
        2,
        "{commits:?}\n{:?}\ngpu-a: {}\ngpu-b: {}\ndriver: {}",
        records(&run),
        place.log("gpu-a"),
        place.log("gpu-b"),
        std::fs::read_to_string(run.join("driver.log")).unwrap_or_default()
    );
    assert!(commits.values().all(|m| m["agent"] == "gpu-b"), "nothing of the fenced attempt: {commits:?}");
    let recs = records(&run);
    assert!(
        recs.values().any(|r| r["agent"] == "gpu-a" && r["outcome"] == "lost")
            || recs.values().any(|r| r["agent"] == "gpu-a" && r["outcome"] == "running"),
        "{recs:?}"
    );
    wait_for(20, "no sim left", || sims_alive("agents-cut") == 0);
}

#[test]
fn serial_runs_cancel_stops_an_agent_s_unit_within_a_heartbeat() {
    let place = Place::new();
    place.init_agent("gpu-a", "gpu=h100");
    let _a = place.start_agent("gpu-a", None);
    let run = place.start_run(&suite("agents-cancel", "1", 5000, "gpu: h100", "5s"));
    wait_for(60, "gpu-a to be measuring", || {
        common::shard_records(&run).iter().any(|r| r["event"] == "step_started" && r["kind"] == "benchmark")
    });
    let id = run.file_name().unwrap().to_string_lossy().to_string();
    let began = Instant::now();
    let a = request(place.port, "POST", &format!("/api/v1/runs/{id}/cancel"), Some(&place.admin), b"{}");
    assert!(a.0 < 300, "{}", String::from_utf8_lossy(&a.1));
    wait_for(30, "the attempt to end cancelled", || records(&run).values().any(|r| r["outcome"] == "cancelled"));
    let took = began.elapsed();
    assert!(took < Duration::from_secs(10), "cancelled after {took:?}");
    wait_for(20, "no sim left", || sims_alive("agents-cancel") == 0);
}

#[test]
fn serial_the_agent_routes_refuse_whom_and_what_they_must() {
    let place = Place::new();
    let a = place.token("gpu-a", "agent", "gpu=h100");
    let b = place.token("gpu-b", "agent", "gpu=h100");
    let read = place.token("reader", "read", "");
    let revoked = place.token("gone", "agent", "");
    let out = place.kitt().args(["serve", "token", "revoke", "gone"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let reg = json!({
        "protocol": [1, 0], "kitt_version": "0.1.0", "build": "x", "target": "x86_64-linux-gnu", "hostname": "h",
        "fingerprint": "f", "fingerprint_identity": "i", "gpus": [], "slots": 1, "docker": false,
    });
    let routes: [(&str, &str); 11] = [
        ("POST", "/api/v1/agent/relays"),
        ("POST", "/api/v1/agent/relays/0123abcd/send"),
        ("POST", "/api/v1/agent/relays/0123abcd/recv"),
        ("PUT", "/api/v1/agent/relays/0123abcd/spool?sha256=00"),
        ("GET", "/api/v1/agent/relays/0123abcd/spool"),
        ("POST", "/api/v1/agent/register"),
        ("POST", "/api/v1/agent/heartbeat"),
        ("POST", "/api/v1/agent/claim"),
        ("POST", "/api/v1/agent/events"),
        ("POST", "/api/v1/agent/finish"),
        ("PUT", "/api/v1/agent/steps/0123456789abcdef?run=r&unit=u&attempt=0&sha256=00"),
    ];
    for (method, path) in routes {
        let body = reg.to_string().into_bytes();
        assert_eq!(request(place.port, method, path, None, &body).0, 401, "{method} {path} without a token");
        assert_eq!(request(place.port, method, path, Some("kitt_wrong"), &body).0, 401, "{method} {path} wrong token");
        assert_eq!(request(place.port, method, path, Some(&revoked), &body).0, 401, "{method} {path} revoked");
        assert_eq!(request(place.port, method, path, Some(&read), &body).0, 403, "{method} {path} read token");
        let (s, body) = request(place.port, method, path, Some(&place.admin), &body);
        assert_eq!(s, 403, "{method} {path} admin token: {}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("`agent` token"), "{}", String::from_utf8_lossy(&body));
    }
    // Another protocol major is refused with what to do; bad JSON is a 400.
    let mut old = reg.clone();
    old["protocol"] = json!([2, 0]);
    let (s, body) = request(place.port, "POST", "/api/v1/agent/register", Some(&a), old.to_string().as_bytes());
    assert_eq!(s, 409);
    assert!(String::from_utf8_lossy(&body).contains("kitt agent update"));
    assert_eq!(request(place.port, "POST", "/api/v1/agent/register", Some(&a), b"{\"protocol\": [1").0, 400);
    // Registered agents claim a real unit; another agent cannot act for it.
    for t in [&a, &b] {
        assert_eq!(request(place.port, "POST", "/api/v1/agent/register", Some(t), reg.to_string().as_bytes()).0, 200);
    }
    let run = place.start_run(&suite("agents-routes", "1", 4, "gpu: h100", "30s"));
    let (s, body) =
        request(place.port, "POST", "/api/v1/agent/claim", Some(&a), br#"{"wait_ms": 20000, "gpus_free": 0}"#);
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let c: Json = serde_json::from_slice(&body).unwrap();
    let (run_id, unit, attempt) =
        (c["run"].as_str().unwrap(), c["unit"].as_str().unwrap(), c["attempt"].as_u64().unwrap());
    assert_eq!(run.file_name().unwrap().to_string_lossy(), run_id);
    assert!(c["files"].as_object().unwrap().contains_key("s.yaml"), "the suite travels with the unit");
    let line = |seq: u64| {
        json!({"run": run_id, "unit": unit, "attempt": attempt, "kind": "log", "seq": seq, "line": "hello"}).to_string()
    };
    let (s, body) = request(place.port, "POST", "/api/v1/agent/events", Some(&b), line(0).as_bytes());
    assert_eq!(s, 409, "another agent's attempt: {}", String::from_utf8_lossy(&body));
    let (s, body) = request(
        place.port,
        "POST",
        "/api/v1/agent/events",
        Some(&a),
        format!("{}\n{}\n{}", line(0), line(1), line(0)).as_bytes(),
    );
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let v: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!((v["accepted"].as_u64(), v["dropped"].as_u64()), (Some(2), Some(1)), "a resent line is dropped: {v}");
    let big = format!("{}\n", line(2)).repeat((2 << 20) / line(2).len());
    assert_eq!(
        request(place.port, "POST", "/api/v1/agent/events", Some(&a), big.as_bytes()).0,
        413,
        "a batch over 1 MiB"
    );
    let bad = json!({"run": "../x", "unit": unit, "attempt": attempt, "kind": "log", "seq": 2, "line": "x"});
    assert_eq!(request(place.port, "POST", "/api/v1/agent/events", Some(&a), bad.to_string().as_bytes()).0, 400);
    let q = |key: &str, sha: &str| {
        format!("/api/v1/agent/steps/{key}?run={run_id}&unit={unit}&attempt={attempt}&sha256={sha}")
    };
    let zero = "0".repeat(64);
    assert_eq!(request(place.port, "PUT", &q("..%2F..%2Fetc", &zero), Some(&a), b"x").0, 400, "a key is hex");
    let (s, body) = request(place.port, "PUT", &q("0123456789abcdef", &zero), Some(&a), b"x");
    assert_eq!(s, 400, "a wrong sha256: {}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("sha256 mismatch"));
    let sha_x = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";
    let (s, body) = request(place.port, "PUT", &q("0123456789abcdef", sha_x), Some(&b), b"x");
    assert_eq!(s, 409, "another agent's upload: {}", String::from_utf8_lossy(&body));
    let (s, body) = request(place.port, "PUT", &q("0123456789abcdef", sha_x), Some(&a), b"x");
    assert_eq!(s, 400, "not a step of the unit: {}", String::from_utf8_lossy(&body));
    // A real step of the unit: cut mid-body it leaves nothing; whole it commits once.
    let plan: Json = serde_json::from_str(c["plan_json"].as_str().unwrap()).unwrap();
    let u = plan["units"].as_array().unwrap().iter().find(|u| u["id"] == unit).unwrap();
    let key = u["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &plan["steps"][i.as_u64().unwrap() as usize])
        .find(|s| s["kind"] == "collect")
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let step = place.env.path().join("step");
    std::fs::create_dir_all(&step).unwrap();
    std::fs::write(step.join("samples.json"), b"[]").unwrap();
    let archive = place.env.path().join("step.tar.zst");
    let sha = kitt::serve::agents::pack(&step, &archive).unwrap();
    let bytes = std::fs::read(&archive).unwrap();
    {
        let mut s = TcpStream::connect(("127.0.0.1", place.port)).unwrap();
        write!(
            s,
            "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {a}\r\nContent-Length: {}\r\n\r\n",
            q(&key, &sha),
            bytes.len() + 1000
        )
        .unwrap();
        s.write_all(&bytes[..bytes.len() / 2]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(!run.join("steps").join(&key).exists(), "a cut upload commits nothing");
    let upload_dir = run.join("attempts").join(unit).join(format!("{attempt}.agent"));
    let left: Vec<_> = std::fs::read_dir(&upload_dir).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "a cut upload leaves nothing: {left:?}");
    let (s, body) = request(place.port, "PUT", &q(&key, &sha), Some(&a), &bytes);
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(request(place.port, "PUT", &q(&key, &sha), Some(&a), &bytes).0, 200, "an identical re-upload");
    assert_eq!(std::fs::read(run.join("steps").join(&key).join("samples.json")).unwrap(), b"[]");
    // A relay for a client shard: only the attempt's agent opens one, and each side is one
    // agent's: its coordinator's (sends to the shard, reads what comes back, fetches the spool)
    // and its taker's (the other way round).
    let open = |shard: u32| {
        json!({"run": run_id, "unit": unit, "attempt": attempt, "gang": "0123abcd", "shard": shard, "of": 2})
            .to_string()
    };
    let relays = "/api/v1/agent/relays";
    assert_eq!(request(place.port, "POST", relays, Some(&b), open(1).as_bytes()).0, 409, "another's attempt");
    assert_eq!(request(place.port, "POST", relays, Some(&a), open(2).as_bytes()).0, 400, "shard 2 of 2");
    let (s, body) = request(place.port, "POST", relays, Some(&a), open(1).as_bytes());
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let id = serde_json::from_slice::<Json>(&body).unwrap()["id"].as_str().unwrap().to_string();
    let relay = |agent: &str, what: &str, body: Json| {
        let (s, b) =
            request(place.port, "POST", &format!("{relays}/{id}/{what}"), Some(agent), body.to_string().as_bytes());
        (s, serde_json::from_slice::<Json>(&b).unwrap_or(Json::Null))
    };
    assert_eq!(relay(&b, "send", json!({"to": "shard", "seq": 0, "lines": ["x"]})).0, 403, "b is not its coordinator");
    assert_eq!(relay(&b, "recv", json!({"to": "shard", "from": 0, "wait_ms": 0})).0, 403, "b has not taken it");
    assert_eq!(relay(&a, "send", json!({"to": "shard", "seq": 0, "lines": [r#"{"msg":"ping","t0":1}"#]})).0, 200);
    let (s, body) = request(
        place.port,
        "POST",
        "/api/v1/agent/claim",
        Some(&b),
        br#"{"wait_ms": 20000, "gpus_free": 0, "relays": true}"#,
    );
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let task: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (task["relay"]["id"].as_str(), task["relay"]["shard"].as_u64(), task["relay"]["coordinator"].as_str()),
        (Some(id.as_str()), Some(1), Some("gpu-a")),
        "{task}"
    );
    let (s, got) = relay(&b, "recv", json!({"to": "shard", "from": 0, "wait_ms": 1000}));
    assert_eq!((s, got["lines"].clone(), got["next"].as_u64()), (200, json!([r#"{"msg":"ping","t0":1}"#]), Some(1)));
    assert_eq!(relay(&a, "recv", json!({"to": "shard", "from": 1, "wait_ms": 0})).0, 403, "a is not its shard");
    assert_eq!(
        relay(&b, "send", json!({"to": "coordinator", "seq": 0, "lines": ["a\nb"]})).0,
        400,
        "one line is one line"
    );
    assert_eq!(relay(&b, "send", json!({"to": "coordinator", "seq": 0, "lines": ["pong"], "close": ""})).0, 200);
    // A batch sent again (its answer lost) adds nothing; a gap is refused.
    assert_eq!(relay(&b, "send", json!({"to": "coordinator", "seq": 0, "lines": ["pong"]})).0, 200);
    assert_eq!(relay(&b, "send", json!({"to": "coordinator", "seq": 5, "lines": ["late"]})).0, 409);
    let (s, got) = relay(&a, "recv", json!({"to": "coordinator", "from": 0, "wait_ms": 1000}));
    assert_eq!((s, got["lines"].clone()), (200, json!(["pong"])), "{got}");
    let (s, got) = relay(&a, "recv", json!({"to": "coordinator", "from": 1, "wait_ms": 1000}));
    assert_eq!((s, got["closed"].as_str()), (200, Some("")), "the shard's side ended: {got}");
    let spool = format!("{relays}/{id}/spool");
    assert_eq!(request(place.port, "GET", &spool, Some(&b), b"").0, 403, "the spool is the coordinator's to fetch");
    assert_eq!(request(place.port, "GET", &spool, Some(&a), b"").0, 404, "none was uploaded");
    let put = format!("{spool}?sha256={sha_x}");
    assert_eq!(request(place.port, "PUT", &put, Some(&a), b"x").0, 403, "the spool is the taker's to upload");
    let unknown = format!("{relays}/{}/recv", "f".repeat(32));
    let recv = json!({"to": "coordinator", "from": 0, "wait_ms": 0}).to_string();
    assert_eq!(request(place.port, "POST", &unknown, Some(&a), recv.as_bytes()).0, 404, "an unknown relay");
    let finish = json!({"run": run_id, "unit": unit, "attempt": attempt, "outcome": "failed", "reason": "a test"});
    assert_eq!(request(place.port, "POST", "/api/v1/agent/finish", Some(&b), finish.to_string().as_bytes()).0, 409);
    assert_eq!(request(place.port, "POST", "/api/v1/agent/finish", Some(&a), finish.to_string().as_bytes()).0, 200);
    let (s, body) = request(place.port, "POST", "/api/v1/agent/events", Some(&a), line(2).as_bytes());
    assert_eq!(s, 409, "an ended attempt sends nothing more: {}", String::from_utf8_lossy(&body));
    wait_for(60, "the run to end", || {
        std::fs::read_to_string(run.join("journal.jsonl")).unwrap_or_default().contains("\"run_finished\"")
    });
    // Drain and remove are admin's; the list is read's.
    assert_eq!(request(place.port, "POST", "/api/v1/agents/gpu-b/drain", Some(&read), b"").0, 403);
    assert_eq!(request(place.port, "POST", "/api/v1/agents/gpu-b/drain", Some(&place.admin), b"").0, 200);
    let (s, _) = request(place.port, "POST", "/api/v1/agent/claim", Some(&b), br#"{"wait_ms": 100, "gpus_free": 0}"#);
    assert_eq!(s, 204, "a drained agent gets no unit");
    assert_eq!(request(place.port, "DELETE", "/api/v1/agents/gpu-b", Some(&place.admin), b"").0, 200);
    assert_eq!(request(place.port, "DELETE", "/api/v1/agents/gpu-b", Some(&place.admin), b"").0, 404);
    assert_eq!(request(place.port, "GET", "/api/v1/agents", Some(&read), b"").0, 200);
}

#[test]
fn agent_init_refuses_plain_http_off_loopback_and_start_refuses_an_open_config() {
    let place = Place::new();
    let mut c = place.kitt();
    c.args(["agent", "--config"]).arg(place.config("x")).args([
        "init",
        "--server",
        "http://10.1.2.3:8080",
        "--token-file",
        "-",
    ]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"kitt_x\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("plain HTTP only on loopback"), "{}", text(&out));
    assert!(!place.config("x").exists());
    place.init_agent("gpu-a", "");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(place.config("gpu-a"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = place.kitt().args(["agent", "--config"]).arg(place.config("gpu-a")).arg("start").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"), "{}", text(&out));
}

#[test]
fn the_agent_service_unit_is_hardened_and_systemd_verifies_it() {
    let place = Place::new();
    place.init_agent("gpu-a", "");
    let out = place
        .kitt()
        .args(["agent", "--config"])
        .arg(place.config("gpu-a"))
        .args(["service", "install", "--print"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let unit = String::from_utf8(out.stdout).unwrap();
    for line in ["Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "agent start --config"] {
        assert!(unit.contains(line), "{line} in {unit}");
    }
    let path = place.env.path().join("kitt-agent.service");
    std::fs::write(&path, &unit).unwrap();
    let verify = Command::new("systemd-analyze").args(["verify"]).arg(&path).output();
    match verify {
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            // Outside a booted systemd it may not reach the manager; what it says of the file counts.
            let about_file: Vec<&str> = err.lines().filter(|l| l.contains("kitt-agent.service")).collect();
            assert!(about_file.is_empty(), "systemd-analyze verify: {err}");
        }
        Err(e) => assert!(std::env::var("CI").is_err(), "systemd-analyze is missing in CI: {e}"),
    }
}

#[test]
fn serial_a_server_killed_mid_cell_and_started_again_loses_nothing() {
    let mut place = Place::new();
    place.init_agent("gpu-a", "gpu=h100");
    place.init_agent("gpu-b", "gpu=h100");
    let _a = place.start_agent("gpu-a", None);
    let _b = place.start_agent("gpu-b", None);
    let run = place.start_run(&suite("agents-server-kill", "1, 2", 400, "gpu: h100", "8s"));
    wait_for(60, "a cell measuring", || {
        common::shard_records(&run).iter().any(|r| r["event"] == "step_started" && r["kind"] == "benchmark")
    });
    let mut server = place.server.take().unwrap();
    server.0.kill().unwrap();
    let _ = server.0.wait();
    std::mem::forget(server);
    std::thread::sleep(Duration::from_millis(1000));
    let port = place.port;
    place.start_server(port);
    wait_for(120, "the run to finish", || finished(&run));
    assert!(report(&run)["cells"].as_array().unwrap().iter().all(|c| c["status"] == "ok"), "{}", report(&run));
    // The agents held on (a restart shorter than their fence): one attempt per unit, each key once.
    let recs = records(&run);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert!(recs.values().all(|r| r["outcome"] == "succeeded"), "{recs:?}");
    assert_eq!(commits(&run).len(), 4);
    for (unit, attempt) in recs.keys() {
        let shard = std::fs::read_to_string(run.join("journal").join(format!("{unit}.{attempt}.jsonl"))).unwrap();
        let seqs: Vec<u64> =
            shard.lines().map(|l| serde_json::from_str::<Json>(l).unwrap()["seq"].as_u64().unwrap()).collect();
        let first = seqs[0];
        assert_eq!(
            seqs,
            (first..first + seqs.len() as u64).collect::<Vec<_>>(),
            "the shard has every record once, in order"
        );
    }
}

#[test]
fn serial_an_agent_killed_holding_unuploaded_steps_uploads_them_when_it_starts_again() {
    let place = Place::new();
    place.init_agent("gpu-a", "gpu=h100");
    let cut = place.env.path().join("cut");
    // A lease longer than the agent is away: its attempt still holds the unit when it returns.
    let run = place.start_run(&suite("agents-restart", "1", 40, "gpu: h100", "60s"));
    let mut a = place.start_agent("gpu-a", Some(&cut));
    wait_for(60, "gpu-a to be measuring", || {
        common::shard_records(&run).iter().any(|r| r["event"] == "step_started" && r["kind"] == "benchmark")
    });
    std::fs::write(&cut, b"").unwrap();
    // The cell ends and commits in the agent's copy; nothing reaches the server.
    let committed_here = |state: &Path| {
        files_holding(state, "\"kind\":\"benchmark\"").iter().any(|p| p.to_string_lossy().contains("/journal/"))
            && std::fs::read_dir(state.join("runs")).into_iter().flatten().flatten().any(|r| {
                std::fs::read_dir(r.path().join("steps"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|s| {
                        std::fs::read(s.path().join(".committed"))
                            .is_ok_and(|m| !m.starts_with(b"committed on the server"))
                    })
                    .count()
                    >= 1
            })
    };
    wait_for(60, "a step committed in gpu-a's copy", || committed_here(&place.state("gpu-a")));
    assert!(commits(&run).is_empty(), "nothing reached the server while cut off");
    a.0.kill().unwrap();
    let _ = a.0.wait();
    std::mem::forget(a);
    std::fs::remove_file(&cut).unwrap();
    let _a = place.start_agent("gpu-a", None);
    wait_for(120, "the run to finish", || finished(&run));
    // What the run's journals and attempt records say, should it not be whole.
    let story = || {
        let steps: Vec<String> = common::shard_records(&run)
            .iter()
            .filter(|r| r["event"].as_str().is_some_and(|e| e.starts_with("step_") || e.starts_with("unit_")))
            .map(|r| format!("{} {} {}", r["event"], r["kind"], r["error"]))
            .collect();
        format!("attempts {:?}\ncommits {:?}\nsteps {steps:#?}", records(&run), commits(&run))
    };
    assert!(
        report(&run)["cells"].as_array().unwrap().iter().all(|c| c["status"] == "ok"),
        "{}\n{}",
        report(&run),
        story()
    );
    let c = commits(&run);
    assert_eq!(c.len(), 2, "{}", story());
    assert!(c.values().any(|m| m["attempt"] == 0), "the restarted agent uploaded attempt 0's commit: {c:?}");
    let recs = records(&run);
    assert!(recs.iter().any(|((_, n), r)| *n == 0 && r["outcome"] == "lost"), "{recs:?}");
}

#[test]
fn serial_a_unit_lost_between_its_benchmark_and_collect_commits_collects_on_its_next_attempt() {
    let place = Place::new();
    place.init_agent("gpu-a", "gpu=h100");
    let run = place.start_run(&suite("agents-between", "1", 20, "gpu: h100", "30s"));
    // Attempt 0's `kitt work` dies like kill -9 right after its benchmark commits, before the
    // collect: the next attempt, on the agent's fresh copy, collects from the server's result.
    let _a = place.start_agent_with("gpu-a", None, &[("KITT_TEST_WORK_KILL_AT_COMMIT", "after")]);
    wait_for(120, "the run to finish", || finished(&run));
    let r = report(&run);
    assert!(r["cells"].as_array().unwrap().iter().all(|c| c["status"] == "ok"), "{r}");
    let attempts: Vec<u64> = commits(&run).values().map(|m| m["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts.len(), 2, "{:?}", commits(&run));
    assert!(
        attempts.contains(&0) && attempts.contains(&1),
        "the benchmark by attempt 0, the collect by 1: {attempts:?}"
    );
    let recs = records(&run);
    assert!(recs.iter().any(|((_, n), r)| *n == 0 && r["outcome"] == "lost"), "{recs:?}");
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

#[test]
fn serial_agent_update_swaps_in_the_servers_build_and_install_sh_installs_one() {
    let place = Place::new();
    let token = place.init_agent("gpu-a", "");
    // An agent's older kitt: this one with a byte more (it still runs).
    let bin = place.env.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let old = bin.join("kitt");
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_kitt")).unwrap();
    bytes.push(0);
    std::fs::write(&old, &bytes).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    let update = |extra: &[&str]| {
        let mut c = Command::new(&old);
        c.args(["agent", "--config"]).arg(place.config("gpu-a")).arg("update").args(extra);
        c.env("HOME", place.env.path().join("home")).output().unwrap()
    };
    let out = update(&["--check"]);
    assert_eq!(out.status.code(), Some(3), "an update is there: {}", text(&out));
    let out = update(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sha256(&old), sha256(Path::new(env!("CARGO_BIN_EXE_kitt"))), "swapped in the server's build");
    let out = update(&[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("up to date"), "{}", text(&out));
    // A host the server's build cannot run on is refused with what to do, never sent a binary.
    let (s, body) = request(place.port, "GET", "/api/v1/agent/build?target=aarch64-linux-gnu", Some(&token), b"");
    assert_eq!(s, 409);
    assert!(
        String::from_utf8_lossy(&body).contains("aarch64-linux-gnu host cannot run it"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (s, body) =
        request(place.port, "GET", "/api/v1/agent/build?target=x86_64-linux-gnu&glibc=2.17", Some(&token), b"");
    assert_eq!(s, 409);
    assert!(String::from_utf8_lossy(&body).contains("needs glibc"), "{}", String::from_utf8_lossy(&body));
    // The one-line installer: served without a token, holding none; it asks for one.
    let (s, script) = request(place.port, "GET", "/api/v1/agent/install.sh", None, b"");
    assert_eq!(s, 200);
    let script = String::from_utf8(script).unwrap();
    assert!(!script.contains(&place.admin) && !script.contains(&token), "no secret in the installer");
    let inst = place.env.path().join("inst");
    std::fs::write(place.env.path().join("install.sh"), &script).unwrap();
    let agent2 = place.token("gpu-b", "agent", "");
    std::fs::write(place.env.path().join("tok-b"), &agent2).unwrap();
    let out = Command::new("sh")
        .arg(place.env.path().join("install.sh"))
        .env("HOME", place.env.path().join("home"))
        .env("KITT_INSTALL_DIR", &inst)
        .env("KITT_AGENT_TOKEN_FILE", place.env.path().join("tok-b"))
        .env("KITT_AGENT_CONFIG", place.config("gpu-b"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sha256(&inst.join("kitt")), sha256(Path::new(env!("CARGO_BIN_EXE_kitt"))));
    let mode = std::fs::metadata(place.config("gpu-b")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let cfg: Json = serde_json::from_slice(&std::fs::read(place.config("gpu-b")).unwrap()).unwrap();
    assert_eq!(cfg["server"], place.url());
    // `token create --install-script`: a 0600 script that feeds the token to that installer.
    let out = place
        .kitt()
        .args([
            "serve",
            "token",
            "create",
            "--name",
            "gpu-c",
            "--scope",
            "agent",
            "--server",
            &place.url(),
            "--install-script",
        ])
        .arg(place.env.path().join("gpu-c.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mode = std::fs::metadata(place.env.path().join("gpu-c.sh")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn serial_an_address_that_tries_many_tokens_is_refused_before_any_is_checked() {
    let place = Place::new();
    let good = place.token("gpu-a", "agent", "");
    let mut statuses = Vec::new();
    for i in 0..105 {
        let wrong = format!("kitt_{i:064x}");
        statuses.push(request(place.port, "POST", "/api/v1/agent/heartbeat", Some(&wrong), b"{}").0);
    }
    assert!(statuses[..100].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[100..].iter().all(|s| *s == 429), "{statuses:?}");
    // Not even a good token is checked from there now (its answer would tell it is good).
    let (s, body) = request(place.port, "POST", "/api/v1/agent/heartbeat", Some(&good), b"{\"units\": []}");
    assert_eq!(s, 429, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("wait a minute"));
}

#[test]
fn serial_agents_exec_runs_a_command_on_the_agent_with_its_next_heartbeat() {
    let place = Place::new();
    place.init_agent("gpu-a", "");
    let _a = place.start_agent("gpu-a", None);
    wait_for(20, "gpu-a to register", || !place.agents()["agents"].as_array().unwrap().is_empty());
    let exec = |args: &[&str]| {
        place
            .kitt()
            .args(["agents", "exec"])
            .args(args)
            .args(["--server", &place.url()])
            .env("KITT_SERVER_TOKEN", &place.admin)
            .output()
            .unwrap()
    };
    let out = exec(&["gpu-a", "cleanup-storage"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 0 run"), "{}", text(&out));
    let out = exec(&["gpu-a", "check-docker"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("Docker"), "{}", text(&out));
    let out = exec(&["gpu-a", "engines-status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("llama_cpp:"), "{}", text(&out));
    let out = exec(&["nobody", "check-docker"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no agent"), "{}", text(&out));
    let out = exec(&["gpu-a", "engines-setup"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("needs the engine"),
        "{}",
        text(&out)
    );
}

#[test]
fn serial_units_on_one_agent_get_disjoint_gpus_and_host_isolation_takes_the_whole_agent() {
    let place = Place::new();
    place.init_agent_with("gpu-a", "gpu=h100", &["--slots", "2"]);
    let _a = place.start_agent_with("gpu-a", None, &[("KITT_TEST_AGENT_GPUS", "2")]);
    // Two cells of one GPU each, engines apart: both at once, each on a GPU of its own.
    let yaml = suite("agents-gpus", "1, 2", 1500, "gpu: h100", "10s").replace("lease: 10s", "lease: 10s, gpus: 1");
    let run = place.start_run(&yaml);
    let mut seen = BTreeSet::new();
    wait_for(60, "two units holding a GPU each", || {
        let list = place.agents();
        let gpus = list["agents"][0]["gpus"].as_array().cloned().unwrap_or_default();
        let holders: Vec<&str> = gpus.iter().filter_map(|g| g["holder"].as_str()).collect();
        if holders.len() == 2 {
            seen.extend(holders.iter().map(|h| h.to_string()));
        }
        holders.len() == 2 && holders[0] != holders[1]
    });
    assert_eq!(seen.len(), 2, "{seen:?}");
    wait_for(120, "the run to finish", || finished(&run));
    // Under `isolation: host`, one unit at a time on the agent, though it has two slots.
    let yaml = suite("agents-host", "1, 2", 100, "gpu: h100", "10s").replace("isolation: engine", "isolation: host");
    let run = place.start_run(&yaml);
    wait_for(120, "the run to finish", || finished(&run));
    let mut spans: Vec<(u64, u64)> = records(&run)
        .values()
        .map(|r| (r["claimed_unix_ns"].as_u64().unwrap(), r["ended_unix_ns"].as_u64().unwrap()))
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 2);
    assert!(spans[0].1 <= spans[1].0, "the second unit was claimed while the first ran: {spans:?}");
}

#[test]
fn serial_apply_with_server_follows_the_run_on_the_agents_and_ctrl_c_cancels_it() {
    let place = Place::new();
    place.init_agent("gpu-a", "gpu=h100");
    let _a = place.start_agent("gpu-a", None);
    let apply = |yaml: &str| {
        let dir = place.env.path().join(format!("client-{}", yaml.len()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s.yaml"), yaml).unwrap();
        let mut c = place.kitt();
        c.args(["apply"]).arg(dir.join("s.yaml")).args(["--server", &place.url()]);
        c.env("KITT_SERVER_TOKEN", &place.admin).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    };
    // Followed to the end: each step as it ends, the exit code the run's.
    let out = apply(&suite("agents-follow", "1", 8, "gpu: h100", "10s")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("following it") && said.contains("benchmark done"), "{said}");
    // Ctrl-C cancels the run on the server, and its unit on the agent.
    let mut child = apply(&suite("agents-interrupt", "1", 20000, "gpu: h100", "10s")).spawn().unwrap();
    let runs = place.env.runs();
    wait_for(60, "the cell measuring", || {
        std::fs::read_dir(&runs).into_iter().flatten().flatten().any(|r| {
            std::fs::read_to_string(r.path().join("run.json")).is_ok_and(|m| m.contains("agents-interrupt"))
                && common::shard_records(&r.path())
                    .iter()
                    .any(|x| x["event"] == "step_started" && x["kind"] == "benchmark")
        })
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let began = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "apply --server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    wait_for(20, "no sim left", || sims_alive("agents-interrupt") == 0);
}

#[test]
fn the_agents_executor_without_a_server_over_the_runs_directory_says_how_to_start_one() {
    let env = KittEnv::new();
    let path = env.suite(&suite("agents-no-server", "1", 4, "gpu: h100", "5s"));
    let out = env.cmd().args(["apply"]).arg(&path).args(["-q"]).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("through a `kitt serve` over this runs directory") && err.contains("--server URL"), "{err}");
    assert_eq!(sims_alive("agents-no-server"), 0);
}

/// A real engine on an agent: `llama-server` started natively by the agent's `kitt work`, one
/// cell from one client and one from two client shards (processes of the agent's host). Both
/// cells are measured against the real server, the sharded one has the result shape a local run
/// gives it, and no `llama-server` outlives the run.
#[test]
fn serial_an_agent_runs_real_llama_cpp_with_a_cell_from_two_client_shards() {
    let Some((server, model)) = common::llama_cpp_build() else { return };
    let place = Place::new();
    place.init_agent("gpu-a", "gpu=h100");
    let _a = place.start_agent("gpu-a", None);
    let alias = format!("agent-llama-{}", std::process::id());
    let yaml = format!(
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: agents-llama}}
spec:
  models: [{{name: {alias}, path: {model}}}]
  engines:
    - name: llama
      template: llama_cpp
      params: {{binary: {server}, ctx_size: 2048, parallel: 4}}
      native: {{}}
  benchmarks:
    - name: tput
      template: throughput
      params: {{concurrency: 4, requests: 16, input_tokens: 32, max_tokens: 8}}
      clients: [1, 2]
  sampling: {{temperature: 0, seed: 1}}
  warmup: {{requests: 1}}
  execution:
    executor: agents
    granularity: group
    agents: {{select: {{gpu: h100}}, lease: 20s}}
"#,
        model = model.display(),
        server = server.display()
    );
    let run = place.start_run(&yaml);
    wait_for(240, "the run to finish", || finished(&run));
    let r = report(&run);
    let cells = r["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2, "{r}");
    for c in cells {
        assert_eq!(c["status"], "ok", "{c}");
        let m = &c["metrics"];
        assert_eq!(m["requests"], 16, "{m}");
        assert_eq!(m["errors"], 0, "{m}");
        // Measured against llama.cpp itself: its own prompt times came back with every answer.
        assert_eq!(m["ttft_minus_server_prompt_ms"]["count"], 16, "{m}");
        assert!(m["ttft_minus_server_prompt_ms"]["min"].as_f64().unwrap() >= 0.0, "{m}");
        assert!(!c["provenance"]["facts"]["engine.version"].as_str().unwrap_or("").is_empty(), "{c}");
    }
    let sharded = cells.iter().find(|c| c["cell"]["swept"]["clients"] == 2).expect("the two-client cell");
    let clients = &sharded["metrics"]["clients"];
    assert_eq!(clients["count"], 2, "{clients}");
    assert_eq!(clients["completed"], 2, "{clients}");
    assert_eq!(clients["complete"], true, "{clients}");
    let shards = clients["shards"].as_array().unwrap();
    assert_eq!(shards.iter().map(|s| s["requests"].as_u64().unwrap()).sum::<u64>(), 16, "{clients}");
    for s in shards {
        assert_eq!(s["status"], "ok", "{s}");
        // Processes of the agent's host, on one clock: offsets far below a millisecond.
        assert!(s["clock_offset_ms"].as_f64().unwrap().abs() < 1.0, "{s}");
    }
    let one = cells.iter().find(|c| c["cell"]["swept"]["clients"] == 1).unwrap();
    assert!(one["metrics"].get("clients").is_none(), "{one}");
    // One unit, one attempt, on gpu-a; its steps committed by it.
    let recs = records(&run);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert!(recs.values().all(|r| r["outcome"] == "succeeded" && r["agent"] == "gpu-a"), "{recs:?}");
    assert!(commits(&run).values().all(|m| m["agent"] == "gpu-a"));
    // The engine stopped with its unit.
    wait_for(20, "llama-server to stop", || common::llama_servers(&alias) == 0);
}

/// A suite whose one cell sends `requests` to the `kitt sim` on `port` (an endpoint: kitt
/// starts nothing) at 100/s from two clients on `role=load` agents, its unit placed on a
/// `gpu=h100` agent.
fn endpoint_suite(port: u16, name: &str, requests: u32) -> String {
    format!(
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: {name}}}
spec:
  models: [{{name: relayed, served_name: auto}}]
  engines: [{{name: gateway, template: vllm, endpoint: {{url: "http://127.0.0.1:{port}"}}}}]
  benchmarks:
    - name: steady
      template: rate
      params: {{rate: 100, requests: {requests}, max_tokens: 6, input_tokens: 16}}
      clients: 2
  warmup: {{requests: 0}}
  execution:
    executor: agents
    agents: {{select: {{gpu: h100}}, clients_select: {{role: load}}, lease: 20s}}
"#
    )
}

const RELAY_AGENTS: [&str; 4] = ["gpu-a", "load-b", "load-c", "spare-d"];

/// The agents' and the server's relay files (spools) still on disk.
fn relay_files(place: &Place) -> Vec<PathBuf> {
    let mut dirs = vec![place.env.runs().join(".agents").join("relays")];
    dirs.extend(RELAY_AGENTS.map(|a| place.state(a).join("relays")));
    dirs.iter().filter_map(|d| std::fs::read_dir(d).ok()).flatten().flatten().map(|e| e.path()).collect()
}

/// A server, a `gpu=h100` agent, two `role=load` agents, and a `role=spare` one (no shard of the
/// suite above may go there), all with the test hooks `hooks`; a `kitt sim` endpoint.
fn relay_place(hooks: &[(&str, &str)]) -> (Place, [Proc; 4], u16) {
    let place = Place::new();
    for (name, labels) in RELAY_AGENTS.iter().zip(["gpu=h100", "role=load", "role=load", "role=spare"]) {
        place.init_agent(name, labels);
    }
    let agents = RELAY_AGENTS.map(|a| place.start_agent_with(a, None, hooks));
    let port = common::start_sim(&["--port", "0", "--ttft-ms", "4", "--itl-ms", "1"]);
    (place, agents, port)
}

#[test]
fn serial_a_cell_against_an_endpoint_sends_from_client_shards_on_other_agents() {
    // Shard 1's clock runs 5 s ahead, wherever it runs (the test hook, read by `kitt
    // client-shard`): the coordinator measures that across the relay and corrects its start.
    let (place, _agents, port) = relay_place(&[("KITT_TEST_CLOCK_SKEW_MS", "1:5000")]);
    let run = place.start_run(&endpoint_suite(port, "relayed", 200));
    wait_for(120, "the run to finish", || finished(&run));
    let r = report(&run);
    let cell = &r["cells"].as_array().unwrap()[0];
    assert_eq!(cell["status"], "ok", "{cell}");
    let m = &cell["metrics"];
    assert_eq!(m["requests"], 200, "{m}");
    assert_eq!(m["errors"], 0, "{m}");
    let clients = &m["clients"];
    assert_eq!((clients["count"].as_u64(), clients["complete"].as_bool()), (Some(2), Some(true)), "{clients}");
    let shards = clients["shards"].as_array().unwrap();
    eprintln!("shards on two agents: {shards:?}");
    // One shard on each load agent (`clients_select`), none on the spare one, none on the
    // unit's own (its one slot runs the unit).
    let agents: BTreeSet<&str> =
        shards.iter().map(|s| s["agent"].as_str().unwrap().split('@').next().unwrap()).collect();
    assert_eq!(agents, BTreeSet::from(["load-b", "load-c"]), "{shards:?}");
    let start = clients["start_unix_ns"].as_i64().unwrap();
    for s in shards {
        assert_eq!(s["status"], "ok", "{s}");
        assert_eq!(s["requests"], 100, "{s}");
        // Measured end to end over the relay: the error is at most half the round trip.
        let (offset, rtt) = (s["clock_offset_ms"].as_f64().unwrap(), s["clock_rtt_ms"].as_f64().unwrap());
        let want = if s["shard"] == 1 { 5000.0 } else { 0.0 };
        assert!((offset - want).abs() <= (rtt / 2.0).max(1.0), "offset {offset} ms, rtt {rtt} ms: {s}");
        // The start announced to it is the coordinator's, on its own clock.
        let announced = s["announced_start_ns"].as_i64().unwrap();
        assert_eq!(announced - start, (offset * 1e6).round() as i64, "{s}");
    }
    // `kitt runs show` says where each shard ran.
    let out = place.kitt().args(["runs", "show"]).arg(&run).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains(", agent load-b@") && shown.contains(", agent load-c@"), "{shown}");
    // The unit ran on gpu-a, once.
    let recs = records(&run);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert!(recs.values().all(|r| r["outcome"] == "succeeded" && r["agent"] == "gpu-a"), "{recs:?}");
    // The shards' spools, moved through the server, are gone from every host.
    wait_for(30, "the relays' spools to go", || relay_files(&place).is_empty());
}

#[test]
fn serial_a_shard_killed_on_another_agent_fails_its_cell_and_names_it() {
    // Shard 1 is killed (SIGKILL) once it has 20 answers, on whichever agent runs it.
    let (place, _agents, port) = relay_place(&[("KITT_TEST_SHARD_KILL_AFTER", "1:20")]);
    let run = place.start_run(&endpoint_suite(port, "relaykill", 200));
    wait_for(120, "the run to finish", || finished(&run));
    let r = report(&run);
    let cell = &r["cells"].as_array().unwrap()[0];
    assert_eq!(cell["status"], "failed", "{cell}");
    // The run says why: its unit's attempt failed with the coordinator's words.
    let out = place.kitt().args(["runs", "show"]).arg(&run).output().unwrap();
    let why = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{why}");
    assert!(why.contains("client shard 1 of 2 failed during the window"), "{why}");
    assert!(why.contains("signal 9") && why.contains("on load-"), "{why}");
    wait_for(30, "the relays' spools to go", || relay_files(&place).is_empty());
}

#[test]
fn serial_an_agent_killed_while_its_shard_sends_fails_the_cell_within_seconds_and_names_it() {
    let (place, mut agents, port) = relay_place(&[]);
    // Six seconds of sending: time to kill an agent mid-window.
    let run = place.start_run(&endpoint_suite(port, "relaydeath", 600));
    let mut victim = None;
    wait_for(60, "a shard to spool on a load agent", || {
        victim = (1..=2).find(|&i| {
            std::fs::read_dir(place.state(RELAY_AGENTS[i]).join("relays"))
                .is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".spool")))
        });
        victim.is_some()
    });
    let i = victim.unwrap();
    // The agents list says which agent runs which shard of whose cell.
    let list = place.agents();
    let shards_of = |name: &str| {
        list["agents"].as_array().unwrap().iter().find(|a| a["name"] == name).unwrap()["client_shards"].clone()
    };
    let runs = shards_of(RELAY_AGENTS[i]);
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!((runs[0]["of"].as_u64(), runs[0]["coordinator"].as_str()), (Some(2), Some("gpu-a")), "{list}");
    assert_eq!(shards_of("spare-d"), json!([]), "{list}");
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    agents[i].0.kill().unwrap();
    let _ = agents[i].0.wait();
    wait_for(60, "the run to finish", || finished(&run));
    // The server ends the shard's stream once its agent has been silent for 1.5 heartbeats
    // (at least 5 s): the cell fails long before its 6 s window and the unit's lease would say.
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(20), "{took:?}");
    let r = report(&run);
    let cell = &r["cells"].as_array().unwrap()[0];
    assert_eq!(cell["status"], "failed", "{cell}");
    let out = place.kitt().args(["runs", "show"]).arg(&run).output().unwrap();
    let why = String::from_utf8_lossy(&out.stdout).into_owned();
    let name = RELAY_AGENTS[i];
    assert!(why.contains("failed during the window") && why.contains(&format!("agent {name}@")), "{why}");
    assert!(why.contains("stopped answering"), "{why}");
    // No shard outlives its agent.
    wait_for(20, "the killed agent's shard to go", || {
        !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("client-shard") && cmd.contains(&place.state(name).to_string_lossy().into_owned())
        })
    });
}
