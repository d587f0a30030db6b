//! `kitt serve` end to end: the real binary on a free port, real HTTP (a raw HTTP/1.1 client, so
//! malformed requests can be sent as they are), real sim runs started over the API, real SSE,
//! real TLS with a client that trusts only the CA the server printed, a real SIGTERM.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{KittEnv, text};
use serde_json::{Value as Json, json};

/// A quick sim suite: two cells, each its own unit, so a run writes several journal shards.
const SUITE: &str = r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: served}
spec:
  models: [{name: served-model}]
  engines: [{name: sim, template: sim, params: {tokens_per_chunk: 2, itl_ms: 1}}]
  benchmarks:
    - name: tput
      template: throughput
      params: {concurrency: [1, 2], requests: 4, input_tokens: 16, max_tokens: 6}
  sampling: {temperature: 0, seed: 5}
  warmup: {requests: 0}
  execution: {granularity: cell, isolation: engine}
"#;

struct Server {
    child: Child,
    port: u16,
    admin: String,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tokens_path(env: &KittEnv) -> PathBuf {
    env.path().join("cfg").join("tokens.json")
}

fn suites_dir(env: &KittEnv) -> PathBuf {
    let d = env.path().join("suites");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn store_path(env: &KittEnv) -> PathBuf {
    env.path().join("results.db")
}

/// `kitt` for this place: its runs, store, tokens and host lock.
fn kitt(env: &KittEnv) -> Command {
    let mut c = env.cmd();
    c.env("KITT_STORE", store_path(env)).env("KITT_TOKENS", tokens_path(env)).env_remove("KITT_WEB_TOKEN");
    c
}

/// Starts `kitt serve` on a free port and waits until it listens.
fn serve(env: &KittEnv, extra: &[&str]) -> Server {
    let mut cmd = kitt(env);
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--suites-dir"]).arg(suites_dir(env)).args(extra);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let keep = lines.clone();
    std::thread::spawn(move || {
        // The port from the first line; ready once the last line of the banner (`tokens:`) is in.
        let mut port = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(p) = line.split("listening on ").nth(1).and_then(|u| u.rsplit(':').next()) {
                port = p.trim().parse::<u16>().ok();
            }
            let last = line.starts_with("  tokens: ");
            keep.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
            if let (true, Some(p)) = (last, port) {
                let _ = tx.send(p);
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("kitt serve did not start: {:?}", lines.lock().unwrap())
    });
    let admin = std::fs::read_to_string(tokens_path(env).with_file_name("web-token")).unwrap().trim().to_string();
    Server { child, port, admin, stderr: lines }
}

/// A token of `scope` made with `kitt serve token create`.
fn token(env: &KittEnv, name: &str, scope: &str) -> String {
    let out = kitt(env)
        .args(["serve", "token", "create", "--name", name, "--scope", scope, "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_string()
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = body.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = usize::from_str_radix(std::str::from_utf8(&body[..nl]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[nl + 2..nl + 2 + size]);
        body = &body[nl + 2 + size + 2..];
    }
}

fn parse_answer(raw: &[u8]) -> Answer {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| {
        panic!("no HTTP answer: {:?}", String::from_utf8_lossy(raw));
    });
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let body =
        if headers.get("transfer-encoding").is_some_and(|t| t == "chunked") { dechunk(rest) } else { rest.to_vec() };
    Answer { status, headers, body }
}

/// Sends `raw` as it is and reads the answer (the server closes: `Connection: close`). An event
/// stream is read up to its headers only.
fn send_raw(port: u16, raw: &[u8]) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("reading the answer: {e} after {:?}", String::from_utf8_lossy(&buf)),
        }
        let text = String::from_utf8_lossy(&buf);
        if text.contains("\r\n\r\n") && text.to_ascii_lowercase().contains("content-type: text/event-stream") {
            break;
        }
    }
    parse_answer(&buf)
}

fn request(port: u16, method: &str, path: &str, token: Option<&str>, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(t) = token {
        raw.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    send_raw(port, &bytes)
}

fn get(port: u16, path: &str, token: &str) -> Answer {
    request(port, "GET", path, Some(token), &[], b"")
}

fn post_json(port: u16, path: &str, token: &str, body: &Json) -> Answer {
    request(port, "POST", path, Some(token), &[("Content-Type", "application/json")], body.to_string().as_bytes())
}

/// The routes of the checked-in OpenAPI document: (method, path).
fn documented_routes() -> Vec<(String, String, Json)> {
    let doc: Json = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            out.push((method.to_ascii_uppercase(), path.clone(), op.clone()));
        }
    }
    out
}

#[test]
fn the_checked_in_openapi_document_is_fresh() {
    let env = KittEnv::new();
    let out = kitt(&env).args(["serve", "openapi"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let now: Json = serde_json::from_slice(&out.stdout).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let checked_in: Json = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(
        now == checked_in,
        "docs/openapi.json is stale: regenerate it with `cargo run -- serve openapi > docs/openapi.json`"
    );
    assert_eq!(now["openapi"], "3.1.0");
}

#[test]
fn tokens_are_shown_once_listed_without_the_secret_and_revoked() {
    let env = KittEnv::new();
    let t = token(&env, "ci", "run");
    assert!(t.starts_with("kitt_") && t.len() == 69);
    let kept = std::fs::read_to_string(tokens_path(&env)).unwrap();
    assert!(!kept.contains(&t[5..]));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(tokens_path(&env)).unwrap().permissions().mode() & 0o777, 0o600);
    let list = kitt(&env).args(["serve", "token", "list", "--output", "json"]).output().unwrap();
    let list: Json = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["name"], "ci");
    assert_eq!(list[0]["scope"], "run");
    assert!(!String::from_utf8_lossy(&serde_json::to_vec(&list).unwrap()).contains(&t[5..]));
    let out = kitt(&env).args(["serve", "token", "revoke", "ci"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = kitt(&env).args(["serve", "token", "revoke", "ci"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = kitt(&env).args(["serve", "token", "create", "--name", "a b"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[test]
fn a_network_bind_without_tls_is_refused_and_a_token_on_argv_does_not_exist() {
    let env = KittEnv::new();
    let out = kitt(&env).args(["serve", "--bind", "0.0.0.0:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-self-signed"), "{}", text(&out));
    let out = kitt(&env).args(["serve", "--token", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = kitt(&env).env("KITT_WEB_TOKEN", "short").args(["serve", "--bind", "127.0.0.1:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too weak"), "{}", text(&out));
}

/// A path of the document with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{id}", "nope")
}

#[test]
fn serial_every_route_answers_each_kind_of_caller_as_its_scope_says() {
    let env = KittEnv::new();
    let tokens: BTreeMap<&str, String> =
        [("read", "read"), ("run", "run"), ("admin", "admin"), ("agent", "agent"), ("revoked", "run")]
            .into_iter()
            .map(|(name, scope)| (name, token(&env, name, scope)))
            .collect();
    assert!(kitt(&env).args(["serve", "token", "revoke", "revoked"]).status().unwrap().success());
    let rank = |s: &str| ["read", "run", "admin"].iter().position(|x| *x == s);
    for read_only in [false, true] {
        let server = serve(&env, if read_only { &["--read-only"] } else { &[] });
        let mut checked = 0;
        for (method, path, op) in documented_routes() {
            let url = concrete(&path);
            let needed = op["x-kitt-scope"].as_str();
            let writes = op["x-kitt-writes"].as_bool().unwrap();
            let callers: Vec<(&str, Option<String>)> = vec![
                ("none", None),
                ("wrong", Some("kitt_0000000000000000000000000000000000000000000000000000000000000000".into())),
                ("read", Some(tokens["read"].clone())),
                ("run", Some(tokens["run"].clone())),
                ("admin", Some(tokens["admin"].clone())),
                ("server admin", Some(server.admin.clone())),
                ("agent", Some(tokens["agent"].clone())),
                ("revoked", Some(tokens["revoked"].clone())),
            ];
            for (who, t) in callers {
                let a = request(server.port, &method, &url, t.as_deref(), &[], b"");
                let scope = match who {
                    "server admin" => "admin",
                    w => w,
                };
                let expected: Option<u16> = match needed {
                    None => None,
                    Some(_) if matches!(who, "none" | "wrong" | "revoked") => Some(401),
                    // The agent routes take agent tokens only (tests/agents.rs checks what they answer).
                    Some("agent") if who == "agent" => (writes && read_only).then_some(403),
                    Some(n) => match (rank(scope), rank(n)) {
                        (Some(have), Some(need)) if have >= need => (writes && read_only).then_some(403),
                        _ => Some(403),
                    },
                };
                match expected {
                    Some(code) => assert_eq!(a.status, code, "{who} {method} {url} (read-only {read_only}): {a:?}"),
                    None => assert!(
                        ![401, 403, 404, 405].contains(&a.status) || (a.status == 404 && url.contains("nope")),
                        "{who} {method} {url} (read-only {read_only}): {a:?}"
                    ),
                }
                if a.status >= 400 {
                    assert_eq!(a.headers["content-type"], "application/problem+json", "{who} {method} {url}");
                }
                if a.status == 401 {
                    assert!(a.headers.contains_key("www-authenticate"));
                }
                if a.status == 403
                    && read_only
                    && writes
                    && expected == Some(403)
                    && scope == "admin"
                    && needed != Some("agent")
                {
                    assert!(String::from_utf8_lossy(&a.body).contains("read-only"), "{a:?}");
                }
                checked += 1;
            }
        }
        assert!(checked >= 20 * 8, "{checked}");
        // The answers never carry a token.
        for line in server.stderr.lock().unwrap().iter() {
            for t in tokens.values() {
                assert!(!line.contains(t.as_str()), "a token in the server's output: {line}");
            }
        }
    }
}

#[test]
fn serial_the_login_cookie_reads_and_writes_only_from_the_servers_own_origin() {
    let env = KittEnv::new();
    let server = serve(&env, &[]);
    let p = server.port;
    let bad = request(p, "GET", "/login?token=kitt_nope", None, &[], b"");
    assert_eq!(bad.status, 401);
    let login = request(p, "GET", &format!("/login?token={}", server.admin), None, &[], b"");
    assert_eq!(login.status, 303, "{login:?}");
    let cookie = &login.headers["set-cookie"];
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let read = request(p, "GET", "/api/v1/runs", None, &[("Cookie", &pair)], b"");
    assert_eq!(read.status, 200, "{read:?}");
    let body = json!({"suite": SUITE}).to_string();
    let ct = ("Content-Type", "application/json");
    let foreign = request(
        p,
        "POST",
        "/api/v1/validate",
        None,
        &[("Cookie", &pair), ct, ("Origin", "https://evil.example")],
        body.as_bytes(),
    );
    assert_eq!(foreign.status, 403, "{foreign:?}");
    let none = request(p, "POST", "/api/v1/validate", None, &[("Cookie", &pair), ct], body.as_bytes());
    assert_eq!(none.status, 403, "{none:?}");
    let own = format!("http://127.0.0.1:{p}");
    let same =
        request(p, "POST", "/api/v1/validate", None, &[("Cookie", &pair), ct, ("Origin", &own)], body.as_bytes());
    assert_eq!(same.status, 200, "{same:?}");
    assert_eq!(same.json()["ok"], true, "{same:?}");
    // A bearer token needs no Origin (it is not sent by a browser on its own).
    let bearer = post_json(p, "/api/v1/validate", &server.admin, &json!({"suite": SUITE}));
    assert_eq!(bearer.status, 200);
    let form = request(
        p,
        "POST",
        "/login",
        None,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("token={}", server.admin).as_bytes(),
    );
    assert_eq!(form.status, 303, "{form:?}");
}

/// What a bad request is, its method, path, headers and body, and the status it must get.
type BadRequest<'a> = (&'a str, &'a str, String, Vec<(&'a str, &'a str)>, Vec<u8>, u16);

#[test]
fn serial_bad_requests_get_their_exact_4xx_as_problem_json() {
    let env = KittEnv::new();
    // A run directory that is a symlink out of the runs directory, and a suite link out of the
    // suites directory.
    let outside = env.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(
        outside.join("run.json"),
        r#"{"id":"escape","identity":"x","suite":"x","file":"/x","created_unix_ns":1}"#,
    )
    .unwrap();
    std::fs::write(outside.join("suite.yaml"), SUITE).unwrap();
    std::fs::create_dir_all(env.runs()).unwrap();
    std::os::unix::fs::symlink(&outside, env.runs().join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("suite.yaml"), suites_dir(&env).join("link.yaml")).unwrap();
    let server = serve(&env, &[]);
    let (p, t) = (server.port, server.admin.clone());
    let json_ct = [("Content-Type", "application/json")];
    let big = vec![b'x'; (1 << 20) + 8192];
    let big_suite = json!({"suite": "x".repeat((1 << 20) + 100)}).to_string();
    let long_id = "a".repeat(129);
    let cases: Vec<BadRequest> = vec![
        ("limit 0", "GET", "/api/v1/results?limit=0".into(), vec![], vec![], 400),
        ("limit over the cap", "GET", "/api/v1/results?limit=1001".into(), vec![], vec![], 400),
        ("limit past u32", "GET", "/api/v1/results?limit=99999999999".into(), vec![], vec![], 400),
        ("limit not a number", "GET", "/api/v1/results?limit=abc".into(), vec![], vec![], 400),
        ("limit negative", "GET", "/api/v1/results?limit=-1".into(), vec![], vec![], 400),
        ("after not a number", "GET", "/api/v1/results?after=x".into(), vec![], vec![], 400),
        ("unknown parameter", "GET", "/api/v1/results?bogus=1".into(), vec![], vec![], 400),
        ("bad since", "GET", "/api/v1/results?since=someday".into(), vec![], vec![], 400),
        ("result id not a number", "GET", "/api/v1/results/abc".into(), vec![], vec![], 400),
        ("result id 0", "GET", "/api/v1/results/0".into(), vec![], vec![], 400),
        ("result id negative", "GET", "/api/v1/results/-5".into(), vec![], vec![], 400),
        ("result id traversal", "GET", "/api/v1/results/%2e%2e".into(), vec![], vec![], 400),
        ("no such result", "GET", "/api/v1/results/99999".into(), vec![], vec![], 404),
        ("run id traversal", "GET", "/api/v1/runs/..%2F..%2Fetc".into(), vec![], vec![], 400),
        ("run id hidden", "GET", "/api/v1/runs/.hidden".into(), vec![], vec![], 400),
        ("run id with NUL", "GET", "/api/v1/runs/a%00b".into(), vec![], vec![], 400),
        ("run id too long", "GET", format!("/api/v1/runs/{long_id}"), vec![], vec![], 400),
        ("run id through a symlink out", "GET", "/api/v1/runs/escape".into(), vec![], vec![], 400),
        ("no such run", "GET", "/api/v1/runs/nope".into(), vec![], vec![], 404),
        ("journal after not a number", "GET", "/api/v1/runs/nope/journal?after=x".into(), vec![], vec![], 400),
        ("journal shard traversal", "GET", "/api/v1/runs/nope/journal?shard=..%2Fx".into(), vec![], vec![], 400),
        ("compare without b", "GET", "/api/v1/compare?a=1".into(), vec![], vec![], 400),
        ("compare a path", "GET", "/api/v1/compare?a=%2Fetc&b=%2Ftmp".into(), vec![], vec![], 400),
        ("compare traversal", "GET", "/api/v1/compare?a=..&b=1".into(), vec![], vec![], 400),
        ("compare unknown runs", "GET", "/api/v1/compare?a=nope&b=nope2".into(), vec![], vec![], 404),
        ("no content type", "POST", "/api/v1/validate".into(), vec![], b"{\"suite\":\"x\"}".to_vec(), 415),
        (
            "text content type",
            "POST",
            "/api/v1/validate".into(),
            vec![("Content-Type", "text/plain")],
            b"{\"suite\":\"x\"}".to_vec(),
            415,
        ),
        ("malformed JSON", "POST", "/api/v1/validate".into(), json_ct.to_vec(), b"{\"suite\":".to_vec(), 400),
        (
            "invalid UTF-8",
            "POST",
            "/api/v1/validate".into(),
            json_ct.to_vec(),
            b"{\"suite\":\"\xff\xfe\"}".to_vec(),
            400,
        ),
        (
            "unknown field",
            "POST",
            "/api/v1/validate".into(),
            json_ct.to_vec(),
            b"{\"suite\":\"x\",\"extra\":1}".to_vec(),
            400,
        ),
        ("wrong type", "POST", "/api/v1/validate".into(), json_ct.to_vec(), b"{\"suite\":1}".to_vec(), 400),
        ("not an object", "POST", "/api/v1/plan".into(), json_ct.to_vec(), b"[]".to_vec(), 400),
        ("body over the cap", "POST", "/api/v1/validate".into(), json_ct.to_vec(), big, 413),
        ("suite over 1 MiB", "POST", "/api/v1/validate".into(), json_ct.to_vec(), big_suite.into_bytes(), 413),
        (
            "suite traversal",
            "POST",
            "/api/v1/runs".into(),
            json_ct.to_vec(),
            b"{\"suite\":\"../etc/passwd\"}".to_vec(),
            400,
        ),
        (
            "suite absolute",
            "POST",
            "/api/v1/runs".into(),
            json_ct.to_vec(),
            b"{\"suite\":\"/etc/passwd\"}".to_vec(),
            400,
        ),
        (
            "suite missing",
            "POST",
            "/api/v1/runs".into(),
            json_ct.to_vec(),
            b"{\"suite\":\"missing.yaml\"}".to_vec(),
            404,
        ),
        (
            "suite through a symlink out",
            "POST",
            "/api/v1/runs".into(),
            json_ct.to_vec(),
            b"{\"suite\":\"link.yaml\"}".to_vec(),
            404,
        ),
        (
            "start with an unknown field",
            "POST",
            "/api/v1/runs".into(),
            json_ct.to_vec(),
            b"{\"suite\":\"s.yaml\",\"cmd\":\"x\"}".to_vec(),
            400,
        ),
        (
            "token name with a space",
            "POST",
            "/api/v1/tokens".into(),
            json_ct.to_vec(),
            b"{\"name\":\"a b\",\"scope\":\"read\"}".to_vec(),
            400,
        ),
        (
            "token scope unknown",
            "POST",
            "/api/v1/tokens".into(),
            json_ct.to_vec(),
            b"{\"name\":\"x\",\"scope\":\"root\"}".to_vec(),
            400,
        ),
        ("revoke unknown token", "DELETE", "/api/v1/tokens/nope".into(), vec![], vec![], 404),
        ("events of a traversal", "GET", "/api/v1/events?run=..%2Fx".into(), vec![], vec![], 400),
        ("events unknown parameter", "GET", "/api/v1/events?bogus=1".into(), vec![], vec![], 400),
        ("events of no run", "GET", "/api/v1/events?run=nope".into(), vec![], vec![], 404),
        ("wrong method", "DELETE", "/api/v1/health".into(), vec![], vec![], 405),
        ("unknown path", "GET", "/api/v2/results".into(), vec![], vec![], 404),
        ("cancel no run", "POST", "/api/v1/runs/nope/cancel".into(), vec![], vec![], 404),
        ("resume no run", "POST", "/api/v1/runs/nope/resume".into(), vec![], vec![], 404),
    ];
    assert!(cases.len() >= 30);
    for (what, method, path, headers, body, status) in &cases {
        let a = request(p, method, path, Some(&t), headers, body);
        assert_eq!(a.status, *status, "{what}: {method} {path}: {}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.headers["content-type"], "application/problem+json", "{what}");
        let problem = a.json();
        assert_eq!(problem["status"], *status, "{what}");
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{what}");
    }
    // Malformed at the protocol level: invalid UTF-8 in the path, a non-Bearer scheme.
    let raw = send_raw(p, b"GET /api/v1/runs/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(raw.status, 400);
    let basic = request(p, "GET", "/api/v1/runs", None, &[("Authorization", "Basic YTpi")], b"");
    assert_eq!(basic.status, 401);
    let lower = format!("bearer {t}");
    assert_eq!(request(p, "GET", "/api/v1/runs", None, &[("Authorization", &lower)], b"").status, 200);
    // The server is still there and well.
    assert_eq!(request(p, "GET", "/api/v1/health", None, &[], b"").status, 200);
}

/// Runs the sim suite with `kitt apply` into this place's runs and store; the run id.
fn apply(env: &KittEnv) -> String {
    let suite = suites_dir(env).join("suite.yaml");
    std::fs::write(&suite, SUITE).unwrap();
    let out = kitt(env).args(["apply"]).arg(&suite).args(["--fresh", "--output", "json", "-q"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    v["run_id"].as_str().unwrap_or_else(|| panic!("{v}")).to_string()
}

#[test]
fn serial_results_and_compare_answer_what_the_cli_answers() {
    let env = KittEnv::new();
    let (a, b) = (apply(&env), apply(&env));
    let server = serve(&env, &[]);
    let (p, t) = (server.port, token(&env, "reader", "read"));
    let cli = kitt(&env).args(["results", "list", "--output", "json"]).output().unwrap();
    let cli: Json = serde_json::from_slice(&cli.stdout).unwrap();
    let all = get(p, "/api/v1/results", &t);
    assert_eq!(all.status, 200);
    assert_eq!(all.json()["results"], cli);
    assert_eq!(cli.as_array().unwrap().len(), 4);
    // Keyset pages of one: every result once, in order, then no `next`.
    let mut seen = Vec::new();
    let mut url = "/api/v1/results?limit=1".to_string();
    loop {
        let page = get(p, &url, &t).json();
        seen.extend(page["results"].as_array().unwrap().iter().map(|r| r["id"].clone()));
        match page["next"].as_i64() {
            Some(n) => url = format!("/api/v1/results?limit=1&after={n}"),
            None => break,
        }
        assert!(seen.len() <= 4, "{seen:?}");
    }
    assert_eq!(seen, cli.as_array().unwrap().iter().map(|r| r["id"].clone()).collect::<Vec<_>>());
    let only_b = get(p, &format!("/api/v1/results?run={b}&suite=served&engine=sim&model=served-model"), &t).json();
    assert_eq!(only_b["results"].as_array().unwrap().len(), 2);
    assert_eq!(get(p, "/api/v1/results?suite=other", &t).json()["results"], json!([]));
    let id = cli[0]["id"].as_i64().unwrap();
    let one = get(p, &format!("/api/v1/results/{id}"), &t);
    assert_eq!(one.json()["result"], cli[0]);
    let shown = kitt(&env).args(["results", "show", &id.to_string(), "--output", "json"]).output().unwrap();
    assert_eq!(one.json(), serde_json::from_slice::<Json>(&shown.stdout).unwrap());
    let compared = get(p, &format!("/api/v1/compare?a={a}&b={b}"), &t);
    assert_eq!(compared.status, 200, "{compared:?}");
    let cli = kitt(&env).args(["compare", &a, &b, "--output", "json"]).output().unwrap();
    assert!(cli.status.success(), "{}", text(&cli));
    assert_eq!(compared.json(), serde_json::from_slice::<Json>(&cli.stdout).unwrap());
    // Runs as `kitt runs list|show` say.
    let runs = get(p, "/api/v1/runs", &t).json();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2);
    let show = get(p, &format!("/api/v1/runs/{a}"), &t).json();
    let cli = kitt(&env).args(["runs", "show", &a, "--output", "json"]).output().unwrap();
    assert_eq!(show, serde_json::from_slice::<Json>(&cli.stdout).unwrap());
    let journal = get(p, &format!("/api/v1/runs/{a}/journal?after=2"), &t).json();
    let records = journal["records"].as_array().unwrap();
    assert!(!records.is_empty() && records.iter().all(|r| r["seq"].as_u64().unwrap() > 2), "{journal}");
    assert_eq!(journal["shards"][0], "journal");
    // A step's files, as text, a chunk at a time; nothing outside the run's directory.
    let steps = env.runs().join(&a).join("steps");
    let (key, file) = std::fs::read_dir(&steps)
        .unwrap()
        .flatten()
        .find_map(|e| {
            let f = e.path().join("requests.jsonl");
            f.is_file().then(|| (e.file_name().to_string_lossy().to_string(), f))
        })
        .expect("a benchmark step's requests.jsonl");
    let whole = std::fs::read(&file).unwrap();
    let served = get(p, &format!("/api/v1/runs/{a}/steps/{key}/requests.jsonl"), &t);
    assert_eq!(served.status, 200);
    assert_eq!(served.body, whole);
    assert_eq!(served.headers["x-kitt-file-size"], whole.len().to_string());
    let chunk = get(p, &format!("/api/v1/runs/{a}/steps/{key}/requests.jsonl?offset=3&limit=10"), &t);
    assert_eq!(chunk.body, whole[3..13]);
    std::os::unix::fs::symlink("/etc/hostname", steps.join(&key).join("escape")).unwrap();
    for (url, status) in [
        (format!("/api/v1/runs/{a}/steps/{key}/escape"), 400),
        (format!("/api/v1/runs/{a}/steps/..%2F..%2F..%2Fetc/hostname"), 400),
        (format!("/api/v1/runs/{a}/steps/{key}/..%2Frun.json"), 400),
        (format!("/api/v1/runs/{a}/steps/{key}/.hidden"), 400),
        (format!("/api/v1/runs/{a}/steps/{key}/nope.log"), 404),
        (format!("/api/v1/runs/{a}/steps/{key}/requests.jsonl?limit=0"), 400),
        (format!("/api/v1/runs/{a}/steps/{key}/requests.jsonl?limit=2000000"), 400),
    ] {
        assert_eq!(get(p, &url, &t).status, status, "{url}");
    }
    // Read-only: the same answers from a store opened read-only; writes refused with the reason.
    drop(server);
    let ro = serve(&env, &["--read-only"]);
    assert_eq!(get(ro.port, "/api/v1/results", &t).json()["results"].as_array().unwrap().len(), 4);
    let refused = post_json(ro.port, "/api/v1/tokens", &ro.admin, &json!({"name": "x", "scope": "read"}));
    assert_eq!(refused.status, 403);
    assert!(refused.json()["detail"].as_str().unwrap().contains("read-only"));
}

/// The store's results of `run` once there are `n` (a run is indexed after it lets go of its
/// directory, so a finished run's results follow shortly).
fn results_of(port: u16, run: &str, token: &str, n: usize) -> Json {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let results = get(port, &format!("/api/v1/results?run={run}"), token).json();
        if results["results"].as_array().unwrap().len() == n {
            return results;
        }
        assert!(Instant::now() < deadline, "{results}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: String,
    data: Json,
}

/// An open event stream.
struct Stream {
    reader: BufReader<TcpStream>,
}

impl Stream {
    fn open(port: u16, path: &str, token: &str, last: Option<&str>) -> Stream {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let last = last.map(|l| format!("Last-Event-ID: {l}\r\n")).unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n{last}\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "{status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        Stream { reader }
    }

    /// The next event from a journal (`step.progress`, which has none, skipped).
    fn next_record(&mut self) -> Option<Sse> {
        loop {
            let e = self.next()?;
            if e.event != "step.progress" {
                return Some(e);
            }
            assert!(e.id.is_empty(), "progress is not replayed, so it has no id: {e:?}");
        }
    }

    /// The next event (chunked framing and comments skipped); `None` at the end of the stream.
    fn next(&mut self) -> Option<Sse> {
        let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = line.strip_prefix("event: ").or_else(|| line.strip_prefix("event:")) {
                event = v.to_string();
            } else if let Some(v) = line.strip_prefix("id: ").or_else(|| line.strip_prefix("id:")) {
                id = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                data.push_str(v);
            } else if line.is_empty() && !event.is_empty() {
                return Some(Sse { event, id, data: serde_json::from_str(&data).unwrap_or(Json::Null) });
            } else if line == "0" {
                return None;
            }
        }
    }
}

/// Every record of every shard of `run`, as (shard, seq).
fn journal_records(run: &Path) -> BTreeSet<(String, u64)> {
    let mut out = BTreeSet::new();
    let mut files = vec![("journal".to_string(), run.join("journal.jsonl"))];
    for e in std::fs::read_dir(run.join("journal")).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().trim_end_matches(".jsonl").to_string();
        files.push((name, e.path()));
    }
    for (name, path) in files {
        for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
            let r: Json = serde_json::from_str(line).unwrap();
            out.insert((name.clone(), r["seq"].as_u64().unwrap()));
        }
    }
    out
}

/// Reads a run's events until `run.finished` from the driver's journal.
fn until_finished(stream: &mut Stream, got: &mut Vec<Sse>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let e = stream.next_record().expect("the stream ended before the run finished");
        let done = e.event == "run.finished" && e.data["shard"] == "journal";
        got.push(e);
        if done {
            return;
        }
    }
    panic!("no run.finished: {got:?}");
}

fn key(e: &Sse) -> (String, u64) {
    (e.data["shard"].as_str().unwrap().to_string(), e.data["seq"].as_u64().unwrap())
}

#[test]
fn serial_a_run_started_over_the_api_streams_its_journals_exactly_once_across_reconnects() {
    let env = KittEnv::new();
    std::fs::write(suites_dir(&env).join("suite.yaml"), SUITE).unwrap();
    let server = serve(&env, &[]);
    let p = server.port;
    let (reader, runner) = (token(&env, "watcher", "read"), token(&env, "ci", "run"));
    let refused = post_json(p, "/api/v1/runs", &reader, &json!({"suite": "suite.yaml"}));
    assert_eq!(refused.status, 403);
    let started = post_json(p, "/api/v1/runs", &runner, &json!({"suite": "suite.yaml"}));
    assert_eq!(started.status, 201, "{started:?}");
    let run = started.json()["run_id"].as_str().unwrap().to_string();
    assert_eq!(started.json()["started_by"], "ci");
    let logged =
        || server.stderr.lock().unwrap().iter().any(|l| l.contains(&format!("run {run} started by token `ci`")));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !logged() {
        assert!(Instant::now() < deadline, "no log line naming the token: {:?}", server.stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    // First connection: a few events, then gone; the reconnect resumes from the last id, while
    // the run goes on and its units' shards appear.
    let path = format!("/api/v1/events?run={run}");
    let mut got = Vec::new();
    let mut first = Stream::open(p, &path, &reader, None);
    for _ in 0..3 {
        got.push(first.next_record().unwrap());
    }
    drop(first);
    let mut again = Stream::open(p, &path, &reader, Some(&got.last().unwrap().id));
    until_finished(&mut again, &mut got);
    drop(again);
    // Wait for the run to end completely (the driver writes its report after run.finished).
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(p, &format!("/api/v1/runs/{run}"), &reader).json()["run"]["status"] == "running" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = env.runs().join(&run);
    let on_disk = journal_records(&dir);
    let keys: Vec<(String, u64)> = got.iter().map(key).collect();
    let unique: BTreeSet<(String, u64)> = keys.iter().cloned().collect();
    assert_eq!(unique.len(), keys.len(), "a record twice: {keys:?}");
    assert_eq!(unique, on_disk, "the stream and the journals differ");
    assert!(on_disk.iter().any(|(s, _)| s != "journal"), "units wrote no shards: {on_disk:?}");
    // In journal order: each shard's records arrive by rising seq.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for (shard, seq) in &keys {
        assert!(last.get(shard).is_none_or(|l| seq > l), "{shard} out of order: {keys:?}");
        last.insert(shard.clone(), *seq);
    }
    assert_eq!(got[0].event, "run.started");
    // Reconnects at several points of the finished run: exactly the rest, once each.
    for cut in [0, 1, keys.len() / 2, keys.len() - 1] {
        let mut s = Stream::open(p, &path, &reader, Some(&got[cut].id));
        let mut rest = Vec::new();
        for _ in cut + 1..keys.len() {
            rest.push(key(&s.next_record().unwrap()));
        }
        let expected: BTreeSet<(String, u64)> = keys[cut + 1..].iter().cloned().collect();
        assert_eq!(rest.iter().cloned().collect::<BTreeSet<_>>(), expected, "reconnect after event {cut}");
        assert_eq!(rest.len(), expected.len());
    }
    // The all-runs stream tells a reconnecting client to refetch.
    let mut all = Stream::open(p, "/api/v1/events", &reader, Some(&got[0].id));
    assert_eq!(all.next().unwrap().event, "reset");
    // The started run is an ordinary one: it finished and is indexed in the store.
    results_of(p, &run, &reader, 2);
}

#[test]
fn serial_sigterm_ends_a_hundred_streams_with_server_closing_within_5_s() {
    let env = KittEnv::new();
    let mut server = serve(&env, &[]);
    let streams: Vec<Stream> =
        (0..100).map(|_| Stream::open(server.port, "/api/v1/events", &server.admin, None)).collect();
    let started = Instant::now();
    // SAFETY: kill(2) on the server this test started.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let handles: Vec<_> =
        streams.into_iter().map(|mut s| std::thread::spawn(move || s.next().map(|e| e.event))).collect();
    for h in handles {
        assert_eq!(h.join().unwrap().as_deref(), Some("server.closing"));
    }
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still running after 5 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn serial_self_signed_tls_is_trusted_through_the_printed_ca_and_plain_http_gets_nothing() {
    let env = KittEnv::new();
    let tls_dir = env.path().join("tls");
    let server = serve(&env, &["--tls-self-signed", "--tls-dir", tls_dir.to_str().unwrap()]);
    let printed = server
        .stderr
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.split("SHA-256 ").nth(1).map(String::from))
        .expect("a fingerprint line");
    use rustls::pki_types::pem::PemObject as _;
    let ca = rustls::pki_types::CertificateDer::from_pem_file(tls_dir.join("ca.pem")).unwrap();
    use sha2::Digest as _;
    let fp: Vec<String> = sha2::Sha256::digest(ca.as_ref()).iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(printed, fp.join(":"));
    use std::os::unix::fs::PermissionsExt as _;
    for f in ["ca.pem", "ca-key.pem", "cert.pem", "key.pem"] {
        assert_eq!(std::fs::metadata(tls_dir.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET /api/v1/version HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        server.admin
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf);
    let a = parse_answer(&buf);
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.headers["strict-transport-security"].contains("max-age"));
    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf));
    // SIGHUP reads the certificate again: with its files gone, a new CA is made and printed.
    for f in ["ca.pem", "ca-key.pem", "cert.pem", "key.pem"] {
        std::fs::remove_file(tls_dir.join(f)).unwrap();
    }
    // SAFETY: kill(2) on the server this test started.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let reloaded = loop {
        let line = server.stderr.lock().unwrap().iter().find(|l| l.contains("certificate reloaded")).cloned();
        if let Some(l) = line {
            break l;
        }
        assert!(Instant::now() < deadline, "no reload: {:?}", server.stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    };
    let new_ca = rustls::pki_types::CertificateDer::from_pem_file(tls_dir.join("ca.pem")).unwrap();
    let new_fp: Vec<String> = sha2::Sha256::digest(new_ca.as_ref()).iter().map(|b| format!("{b:02X}")).collect();
    assert!(reloaded.ends_with(&new_fp.join(":")), "{reloaded}");
    assert_ne!(new_fp.join(":"), printed);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(new_ca).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(tls, "GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf);
    assert_eq!(parse_answer(&buf).status, 200);
    let printed = new_fp.join(":");
    // A second start reuses the CA: clients that trust it keep trusting the server.
    drop(server);
    let again = serve(&env, &["--tls-self-signed", "--tls-dir", tls_dir.to_str().unwrap()]);
    let printed_again = again.stderr.lock().unwrap().iter().find_map(|l| l.split("SHA-256 ").nth(1).map(String::from));
    assert_eq!(printed_again.as_deref(), Some(printed.as_str()));
}

#[test]
fn serial_a_run_cancelled_over_the_api_stops_and_resumes_over_the_api() {
    let env = KittEnv::new();
    // Slow enough to be caught measuring: each request takes about 0.5 s.
    let slow = SUITE.replace("itl_ms: 1", "itl_ms: 100").replace("requests: 4", "requests: 6");
    std::fs::write(suites_dir(&env).join("slow.yaml"), slow).unwrap();
    let server = serve(&env, &[]);
    let (p, t) = (server.port, token(&env, "ci", "run"));
    let started = post_json(p, "/api/v1/runs", &t, &json!({"suite": "slow.yaml"}));
    assert_eq!(started.status, 201, "{started:?}");
    let run = started.json()["run_id"].as_str().unwrap().to_string();
    let mut events = Stream::open(p, &format!("/api/v1/events?run={run}"), &t, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = events.next().unwrap();
        if e.event == "step.started" && e.data["record"]["kind"] == "benchmark" {
            break;
        }
        assert!(Instant::now() < deadline, "no benchmark started");
    }
    let refused = post_json(p, &format!("/api/v1/runs/{run}/resume"), &t, &json!({}));
    assert_eq!(refused.status, 409, "a running run is not resumed: {refused:?}");
    let cancelled = request(p, "POST", &format!("/api/v1/runs/{run}/cancel"), Some(&t), &[], b"");
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    assert_eq!(cancelled.json()["driver_running"], false);
    let shown = get(p, &format!("/api/v1/runs/{run}"), &t).json();
    assert_eq!(shown["run"]["status"], "unfinished", "{shown}");
    assert_eq!(shown["cancel_requested"], true);
    // Resumed over the API, it finishes; what it measured before the cancel is kept.
    let resumed = request(p, "POST", &format!("/api/v1/runs/{run}/resume"), Some(&t), &[], b"");
    assert_eq!(resumed.status, 201, "{resumed:?}");
    assert_eq!(resumed.json()["run_id"], run.as_str());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = get(p, &format!("/api/v1/runs/{run}"), &t).json()["run"]["status"].clone();
        if status == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline && status != "failed", "{status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    results_of(p, &run, &t, 2);
}

/// A suite with a suite-local benchmark template, on the client's side.
fn bundled_suite(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("templates/quick.yaml"),
        "apiVersion: kitt/v1\nkind: Benchmark\nmetadata: {name: quick}\nspec:\n  mechanism: load\n  params:\n    max_tokens: {type: integer, default: 6, minimum: 1}\n  load:\n    profile: {concurrency: 2}\n    requests: 4\n    prompt: {synthetic: {input_tokens: 16}}\n",
    )
    .unwrap();
    let suite = dir.join("bundled.yaml");
    std::fs::write(
        &suite,
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {name: bundled}\nspec:\n  models: [{name: bundled-model}]\n  engines: [{name: sim, template: sim, params: {tokens_per_chunk: 2, itl_ms: 1}}]\n  benchmarks: [{name: q, template: quick}]\n  warmup: {requests: 0}\n  templates: [templates/]\n",
    )
    .unwrap();
    suite
}

#[test]
fn serial_apply_with_server_uploads_a_bundle_and_the_run_lives_on_the_server() {
    let env = KittEnv::new();
    let suite = bundled_suite(&env.path().join("client"));
    let closed = serve(&env, &[]);
    let t = token(&env, "ci", "run");
    let client = |server: &Server, token: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kitt"));
        c.env("KITT_SERVER_TOKEN", token).env("KITT_STORE", "off").env("NO_COLOR", "1");
        c.args(["apply"]).arg(&suite).args([
            "--server",
            &format!("http://127.0.0.1:{}", server.port),
            "--output",
            "json",
        ]);
        c.output().unwrap()
    };
    let refused = client(&closed, &t);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--allow-suite-upload"), "{}", text(&refused));
    drop(closed);
    let server = serve(&env, &["--allow-suite-upload"]);
    let reader = token(&env, "reader", "read");
    let weak = client(&server, &reader);
    assert_eq!(weak.status.code(), Some(1), "{}", text(&weak));
    assert!(String::from_utf8_lossy(&weak.stderr).contains("403"), "{}", text(&weak));
    let out = client(&server, &t);
    assert!(out.status.success(), "{}", text(&out));
    let answer: Json = serde_json::from_slice(&out.stdout).unwrap();
    let run = answer["run_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shown = get(server.port, &format!("/api/v1/runs/{run}"), &t).json();
        if shown["run"]["status"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline && shown["run"]["status"] != "failed", "{shown}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The run used the uploaded template, from the bundle kept on the server.
    let bundles: Vec<PathBuf> =
        std::fs::read_dir(env.runs().join(".bundles")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(bundles.len(), 1, "{bundles:?}");
    assert!(bundles[0].join("templates/quick.yaml").is_file() && bundles[0].join("bundled.yaml").is_file());
    let results = results_of(server.port, &run, &t, 1);
    assert_eq!(results["results"][0]["cell"]["template"], "quick", "{results}");
    // Bad bundles: a wrong digest, a name that climbs out, a suite not among the files.
    let files = json!({"s.yaml": "x"});
    let digest = |f: &Json| {
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(serde_json::to_vec(f).unwrap());
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let post = |body: Json| post_json(server.port, "/api/v1/bundles", &t, &body).status;
    assert_eq!(post(json!({"suite": "s.yaml", "files": files, "digest": "00"})), 400);
    let climbing = json!({"../s.yaml": "x"});
    assert_eq!(post(json!({"suite": "../s.yaml", "files": climbing, "digest": digest(&climbing)})), 400);
    let hidden = json!({".s.yaml": "x"});
    assert_eq!(post(json!({"suite": ".s.yaml", "files": hidden, "digest": digest(&hidden)})), 400);
    assert_eq!(post(json!({"suite": "t.yaml", "files": files, "digest": digest(&files)})), 400);
    // A bundle whose suite does not validate is refused by `kitt apply` on the server: 422.
    assert_eq!(post(json!({"suite": "s.yaml", "files": files, "digest": digest(&files)})), 422);
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 =
        status.lines().find(|l| l.starts_with("VmRSS")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

#[test]
fn serial_a_stalled_client_costs_the_server_no_memory_and_loses_nothing() {
    let env = KittEnv::new();
    let run = env.runs().join("r1");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("run.json"), r#"{"id":"r1","identity":"x","suite":"x","file":"/x","created_unix_ns":1}"#)
        .unwrap();
    std::fs::write(run.join("journal.jsonl"), "").unwrap();
    let server = serve(&env, &[]);
    let mut stalled = Stream::open(server.port, "/api/v1/events?run=r1", &server.admin, None);
    let before = rss_mb(server.child.id());
    // 30 MB of journal while the client reads nothing.
    let mut text = String::new();
    for seq in 0..300_000u64 {
        text.push_str(&format!(
            "{{\"seq\":{seq},\"unix_ns\":1,\"event\":\"run_stopped\",\"reason\":\"{}\"}}\n",
            "x".repeat(40)
        ));
    }
    std::fs::write(run.join("journal.jsonl"), &text).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let during = rss_mb(server.child.id());
    assert!(during - before < 10.0, "the server grew from {before:.1} MB to {during:.1} MB for a stalled client");
    // Nothing was dropped: the client, reading again, gets every record in order.
    for seq in 0..2000u64 {
        let e = stalled.next().unwrap();
        assert_eq!(e.data["seq"], seq, "{e:?}");
    }
}

#[test]
fn serial_the_stream_of_every_run_follows_new_runs_new_results_and_settings_changes() {
    let env = KittEnv::new();
    let server = serve(&env, &[]);
    let mut all = Stream::open(server.port, "/api/v1/events", &server.admin, None);
    let set = kitt(&env).args(["settings", "set", "page_size", "20"]).output().unwrap();
    assert!(set.status.success(), "{}", text(&set));
    let run = apply(&env);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.iter().any(|e: &Sse| e.event == "result.added") {
        assert!(Instant::now() < deadline, "{seen:?}");
        seen.push(all.next().unwrap());
    }
    let settings = seen.iter().find(|e| e.event == "settings.changed").expect("settings.changed");
    assert_eq!(settings.data["after"], 0);
    assert!(seen.iter().any(|e| e.event == "run.started" && e.data["run"] == run.as_str()), "{seen:?}");
    let added = seen.iter().find(|e| e.event == "result.added").unwrap();
    let after = added.data["after"].as_i64().unwrap();
    let listed = get(server.port, &format!("/api/v1/results?after={after}"), &server.admin).json();
    let ids: Vec<i64> = listed["results"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.last().copied(), added.data["last"].as_i64(), "{added:?} {listed}");
    assert!(ids.iter().all(|i| *i > after));
}

#[test]
fn serial_insecure_serves_plain_http_on_a_network_address_and_says_so() {
    let env = KittEnv::new();
    let mut child =
        kitt(&env).args(["serve", "--bind", "0.0.0.0:0", "--insecure"]).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    for line in stderr.lines().map_while(Result::ok) {
        let last = line.starts_with("  tokens: ");
        lines.push(line);
        if last {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    assert!(text.contains("listening on http://0.0.0.0:"), "{text}");
    assert!(text.contains("warning: plain HTTP on a network address (--insecure)"), "{text}");
    assert!(text.contains("log in: http://127.0.0.1:"), "{text}");
}

/// A sim suite whose one benchmark measures for about three seconds (60 requests at 20 per second).
const PROGRESS_SUITE: &str = r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: progress}
spec:
  models: [{name: progress-model}]
  engines: [{name: sim, template: sim, params: {ttft_ms: 5, itl_ms: 1, tokens_per_chunk: 2}}]
  benchmarks:
    - name: poisson
      template: rate
      params: {rate: 20, requests: 60, max_tokens: 8, input_tokens: 16}
  warmup: {requests: 0}
"#;

#[test]
fn serial_a_measuring_step_streams_its_progress_at_most_once_a_second() {
    let env = KittEnv::new();
    std::fs::write(suites_dir(&env).join("progress.yaml"), PROGRESS_SUITE).unwrap();
    let server = serve(&env, &[]);
    let (p, t) = (server.port, token(&env, "ci", "run"));
    let started = post_json(p, "/api/v1/runs", &t, &json!({"suite": "progress.yaml"}));
    assert_eq!(started.status, 201, "{started:?}");
    let run = started.json()["run_id"].as_str().unwrap().to_string();
    let mut stream = Stream::open(p, &format!("/api/v1/events?run={run}"), &t, None);
    let mut progress: Vec<(Instant, Sse)> = Vec::new();
    let mut benchmark_keys = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(Instant::now() < deadline, "no run.finished");
        let e = stream.next().expect("the stream ended before the run finished");
        if e.event == "step.started" && e.data["record"]["kind"] == "benchmark" {
            benchmark_keys.insert(e.data["record"]["key"].as_str().unwrap().to_string());
        }
        if e.event == "step.progress" {
            assert!(e.id.is_empty(), "progress is not replayed, so it has no id: {e:?}");
            progress.push((Instant::now(), e));
        } else if e.event == "run.finished" && e.data["shard"] == "journal" {
            break;
        }
    }
    assert!(progress.len() >= 2, "a three-second benchmark gave {} progress events", progress.len());
    let mut last_requests = 0;
    for (_, e) in &progress {
        assert_eq!(e.data["run"], run.as_str());
        let key = e.data["key"].as_str().unwrap();
        assert!(benchmark_keys.contains(key), "progress of a step that did not start as a benchmark: {e:?}");
        assert_eq!(e.data["requests_total"], 60, "{e:?}");
        assert!(e.data["label"].as_str().unwrap().contains("poisson"), "{e:?}");
        let requests = e.data["requests"].as_u64().unwrap();
        assert!(requests >= last_requests && requests <= 60, "{e:?}");
        assert!(e.data["errors"] == 0 && e.data["elapsed_s"].as_f64().unwrap() >= 0.0, "{e:?}");
        last_requests = requests;
    }
    assert!(last_requests > 0, "the counters never moved: {progress:?}");
    // At most one a second per step (the writer's pace; wide slack for a loaded machine).
    for pair in progress.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= Duration::from_millis(400), "two progress events {gap:?} apart: {pair:?}");
    }
    // The advisory files go with their steps.
    let dir = env.runs().join(&run).join("progress");
    let left: Vec<_> = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "progress files left behind: {left:?}");
}

#[test]
fn serial_a_tokens_last_use_is_kept_in_the_token_file() {
    let env = KittEnv::new();
    let reader = token(&env, "dashboard", "read");
    let unused = token(&env, "unused", "read");
    let listed = |env: &KittEnv| -> Json {
        let out = kitt(env).args(["serve", "token", "list", "--output", "json"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let last_use = |v: &Json, name: &str| {
        v.as_array().unwrap().iter().find(|t| t["name"] == name).unwrap()["last_used_unix_ns"].clone()
    };
    assert_eq!(last_use(&listed(&env), "dashboard"), Json::Null);
    let mut server = serve(&env, &[]);
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    assert_eq!(get(server.port, "/api/v1/version", &reader).status, 200);
    // The first use is written at once, so another process sees it while the server runs.
    let seen = last_use(&listed(&env), "dashboard").as_u64().expect("a last use in the file");
    assert!(seen >= before, "{seen} < {before}");
    assert_eq!(last_use(&listed(&env), "unused"), Json::Null, "{unused} was never used");
    // Later uses are written at the latest when the server stops.
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(get(server.port, "/api/v1/version", &reader).status, 200);
    let term = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let after = last_use(&listed(&env), "dashboard").as_u64().unwrap();
    assert!(after > seen, "the later use was not written at shutdown: {after} <= {seen}");
}

#[test]
fn serial_a_store_in_a_directory_the_server_cannot_write_is_opened_immutable() {
    // kitt serve runs as `nobody`, which may read the store but not write its directory (root
    // may always write, so the server must not run as root here).
    let env = KittEnv::new();
    let run = apply(&env);
    let public = tempfile::Builder::new().prefix("kitt-ro-").tempdir_in("/tmp").unwrap();
    let chmod = |p: &Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    chmod(public.path(), 0o755);
    // The binary, where nobody may run it.
    let exe = public.path().join("kitt");
    std::fs::copy(env!("CARGO_BIN_EXE_kitt"), &exe).unwrap();
    chmod(&exe, 0o755);
    // The store, in a directory owned by root (mode 0755: nobody reads, only root writes).
    let store_dir = public.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    chmod(&store_dir, 0o755);
    let store = store_dir.join("results.db");
    std::fs::copy(store_path(&env), &store).unwrap();
    chmod(&store, 0o644);
    // The server's own files, in a directory nobody owns.
    let home = public.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let chown = Command::new("chown").args(["-R", "nobody:nogroup"]).arg(&home).status().unwrap();
    assert!(chown.success());
    let runs = public.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    chmod(&runs, 0o755);
    let files = || {
        let mut f: Vec<_> = std::fs::read_dir(&store_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        f.sort();
        f
    };
    let before = files();
    let mut child = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(&exe)
        .args(["serve", "--read-only", "--bind", "127.0.0.1:0", "--store"])
        .arg(&store)
        .arg("--runs-dir")
        .arg(&runs)
        .env_clear()
        .env("HOME", &home)
        .env("KITT_TOKENS", home.join("tokens.json"))
        .env("KITT_WEB_TOKEN", "kitt_readonly_0123456789abcdef0123456789")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut port = None;
    let mut banner = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(p) = line.split("listening on ").nth(1).and_then(|u| u.rsplit(':').next()) {
            port = p.trim().parse::<u16>().ok();
        }
        let done = line.starts_with("  tokens: ");
        banner.push(line);
        if done {
            break;
        }
    }
    let Some(port) = port else {
        let _ = child.kill();
        panic!("kitt serve as nobody did not start: {banner:?}");
    };
    let page = get(port, &format!("/api/v1/results?run={run}"), "kitt_readonly_0123456789abcdef0123456789");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(page.json()["results"].as_array().unwrap().len(), 2, "{}", page.json());
    assert_eq!(files(), before, "the store's directory gained files (a -shm or -wal: not opened immutable)");
}

/// schemathesis' command (`$ST`, else `st` on PATH), if there is one.
fn schemathesis() -> Option<PathBuf> {
    let named = std::env::var_os("ST").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("st"));
    if named.is_absolute() {
        return named.is_file().then_some(named);
    }
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(&named)).find(|c| c.is_file()))
}

#[test]
fn serial_schemathesis_finds_no_5xx_and_no_answer_outside_the_document() {
    let Some(st) = schemathesis() else {
        assert!(std::env::var("CI").is_err(), "schemathesis is missing ($ST or `st`): .ci/run installs it");
        eprintln!("skipped: no schemathesis ($ST or `st` on PATH)");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/schemathesis.sh");
    let out =
        Command::new("bash").arg(&script).arg(env!("CARGO_BIN_EXE_kitt")).arg("8").env("ST", &st).output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    // It really ran: schemathesis' summary names the operations it tested and no failures.
    assert!(said.contains("passed") && !said.contains("FAILURES"), "{said}");
}

#[test]
fn serial_models_lists_the_stores_models_and_those_the_suites_name_with_their_files() {
    let env = KittEnv::new();
    apply(&env);
    // A suite naming a local GGUF model and a model directory of safetensors, and one whose model
    // file is missing; a file that is no suite is skipped.
    let dir = suites_dir(&env);
    std::fs::create_dir_all(dir.join("nested/models/llama-dir")).unwrap();
    std::fs::write(dir.join("nested/models/tiny.gguf"), vec![0u8; 1234]).unwrap();
    std::fs::write(dir.join("nested/models/llama-dir/model.safetensors"), vec![0u8; 100]).unwrap();
    std::fs::write(dir.join("nested/models/llama-dir/config.json"), b"{}").unwrap();
    let local = SUITE
        .replace(
            "models: [{name: served-model}]",
            "models: [{name: tiny-gguf, path: models/tiny.gguf}, {name: llama, path: models/llama-dir, served_name: l3}, {name: gone, path: models/none.gguf}]",
        )
        .replace("name: served}", "name: local}");
    std::fs::write(dir.join("nested/local.yaml"), local).unwrap();
    std::fs::write(dir.join("notes.yaml"), "just: text\n").unwrap();
    let server = serve(&env, &[]);
    let t = token(&env, "reader", "read");
    let answer = get(server.port, "/api/v1/models", &t);
    assert_eq!(answer.status, 200, "{answer:?}");
    let models = answer.json()["models"].as_array().unwrap().clone();
    let by_name =
        |name: &str| models.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("{name}: {models:?}"));
    let served = by_name("served-model");
    assert_eq!(served["results"], 2, "{served}");
    assert_eq!(served["engines"], json!(["sim"]));
    assert!(served["last_result_unix_ns"].as_u64().unwrap() > 0);
    assert_eq!(served["suites"][0]["suite"], "suite.yaml", "{served}");
    let gguf = by_name("tiny-gguf");
    assert_eq!(gguf["results"], 0);
    assert_eq!(gguf["suites"][0]["suite"], "nested/local.yaml");
    assert_eq!(gguf["suites"][0]["file"], json!({"exists": true, "format": "gguf", "size_bytes": 1234}));
    let llama = by_name("llama");
    assert_eq!(llama["suites"][0]["served_name"], "l3");
    assert_eq!(llama["suites"][0]["file"], json!({"exists": true, "format": "safetensors", "size_bytes": 102}));
    assert_eq!(by_name("gone")["suites"][0]["file"], json!({"exists": false}));
    let mut names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    let listed = names.clone();
    names.sort();
    assert_eq!(names, listed, "sorted by name");
}
