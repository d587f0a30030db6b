//! `kitt serve`'s pages in a real browser: the real binary on a free port over a store seeded by
//! real sim runs, driven by headless Chromium over the DevTools protocol (web_support/cdp.rs).
//! Screenshots of every page go to `$KITT_ARTIFACTS/web/` when that is set.

mod common;
mod web_support;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{KittEnv, text};
use serde_json::{Value as Json, json};
use web_support::cdp::{Browser, Load, chromium};

/// A sim suite of two cells repeated twice: results with verdicts to compare.
const SEED: &str = r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: seeded}
spec:
  models: [{name: seed-model}]
  engines: [{name: sim, template: sim, params: {tokens_per_chunk: 2, itl_ms: 1}}]
  benchmarks:
    - name: tput
      template: throughput
      params: {concurrency: [1, 2], requests: 6, input_tokens: 16, max_tokens: 6}
  sampling: {temperature: 0, seed: 5}
  warmup: {requests: 0}
  runs: 2
"#;

/// A sim suite whose one cell measures for about eight seconds (160 requests at 20 per second):
/// the live page is told of progress at most once a second per step, so it sees several counts
/// before the cell ends.
const SLOW: &str = r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: slow}
spec:
  models: [{name: slow-model}]
  engines: [{name: sim, template: sim}]
  benchmarks:
    - name: poisson
      template: rate
      params: {rate: 20, requests: 160, max_tokens: 8, input_tokens: 16}
  warmup: {requests: 0}
"#;

/// A model name that is markup.
const HOSTILE: &str = "<img src=x onerror=alert(1)>";

struct Server {
    child: Child,
    port: u16,
    admin: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn store(env: &KittEnv) -> PathBuf {
    env.path().join("results.db")
}

fn suites_dir(env: &KittEnv) -> PathBuf {
    let d = env.path().join("suites");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `kitt` for this place: its runs, store and tokens.
fn kitt(env: &KittEnv) -> std::process::Command {
    let mut c = env.cmd();
    c.env("KITT_STORE", store(env))
        .env("KITT_TOKENS", env.path().join("cfg").join("tokens.json"))
        .env_remove("KITT_WEB_TOKEN")
        .env_remove("KITT_DEVON_URL");
    c
}

/// Starts `kitt serve` on a free port and waits until it listens.
fn serve(env: &KittEnv, extra: &[&str], vars: &[(&str, &str)]) -> Server {
    let mut cmd = kitt(env);
    cmd.arg("serve");
    if !extra.contains(&"--bind") {
        cmd.args(["--bind", "127.0.0.1:0"]);
    }
    cmd.arg("--suites-dir").arg(suites_dir(env)).args(extra);
    cmd.envs(vars.iter().copied()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut port = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(p) = line.split("listening on ").nth(1).and_then(|u| u.rsplit(':').next()) {
                port = p.trim().parse::<u16>().ok();
            }
            if let (true, Some(p)) = (line.starts_with("  tokens: "), port) {
                let _ = tx.send(p);
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("kitt serve did not start")
    });
    let admin = std::fs::read_to_string(env.path().join("cfg").join("web-token")).unwrap().trim().to_string();
    Server { child, port, admin }
}

/// A GET without a browser: (status, headers, body).
fn http(port: u16, path: &str, cookie: Option<&str>) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let cookie = cookie.map(|c| format!("Cookie: kitt_token={c}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{cookie}\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().split_whitespace().nth(1).unwrap_or("0").parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Two runs of the seed suite indexed into the store, and a hand-made result whose model name
/// is markup; the run ids.
fn seed(env: &KittEnv) -> Vec<String> {
    let suite = env.suite(SEED);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let out = kitt(env).args(["apply", "--fresh", "-q", "--output", "json"]).arg(&suite).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let v: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        runs.push(v["run_id"].as_str().unwrap().to_string());
    }
    let dir = env.path().join("hostile-run");
    std::fs::create_dir_all(dir.join("report")).unwrap();
    let cell = json!({
        "schema": "kitt.result/v1",
        "cell": {"model": HOSTILE, "engine": "sim", "engine_template": "sim", "benchmark": "tput",
                 "template": "throughput", "params": {"concurrency": 1}, "swept": {}, "run_index": 0,
                 "sampling": {"temperature": 0.0}},
        "status": "failed", "error": HOSTILE,
        "metrics": {"requests": 4, "errors": 0, "request_throughput": 9.5, "ttft_ms": {"min": 1.0, "p50": 2.0, "p99": 3.0, "max": 4.0}},
        "provenance": {"run_id": "hostile", "key": "hostile-key", "attempt": 0, "reused": false,
                       "started_unix_ns": 1_790_000_000_000_000_000u64, "finished_unix_ns": 1_790_000_000_500_000_000u64,
                       "facts": {"engine.version": HOSTILE, "machine": "test"}, "prompts_exact": true}
    });
    let report = json!({"schema": "kitt.report/v1", "run_id": "hostile", "suite": HOSTILE, "suite_file": "suite.yaml",
        "kitt_version": "0.1.0", "facts": {}, "cells": [cell], "failed_cells": 1});
    std::fs::write(dir.join("report/result.json"), report.to_string()).unwrap();
    let out = kitt(env).args(["results", "import"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    runs
}

/// The store's result ids, oldest first.
fn result_ids(env: &KittEnv) -> Vec<i64> {
    let out = kitt(env).args(["results", "list", "--output", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().iter().filter_map(|r| r["id"].as_i64()).collect()
}

/// Where screenshots go (`$KITT_ARTIFACTS/web`), if anywhere.
fn artifacts() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("KITT_ARTIFACTS")?).join("web");
    std::fs::create_dir_all(&dir).unwrap();
    Some(dir)
}

fn shoot(b: &mut Browser, name: &str) {
    if let Some(dir) = artifacts() {
        b.screenshot(&dir.join(format!("{name}.png")));
    }
}

/// Asserts a load was clean: no console error or warning, no failed request, nothing asked of
/// another host than loopback, no dialog, a 2xx document.
fn clean(load: &Load) {
    assert!(load.problems.is_empty(), "{}: console problems: {:#?}", load.url, load.problems);
    assert!(load.failed.is_empty(), "{}: failed requests: {:#?}", load.url, load.failed);
    assert!(load.dialogs.is_empty(), "{}: dialogs opened: {:?}", load.url, load.dialogs);
    assert!(load.status.is_some_and(|s| (200..300).contains(&s)), "{}: document status {:?}", load.url, load.status);
    for r in &load.requests {
        let loopback = r.starts_with("http://127.0.0.1:") || r.starts_with("http://localhost:");
        assert!(loopback, "{}: a request off loopback: {r}", load.url);
    }
    assert!(!load.requests.is_empty(), "{}: no request seen (is the Network domain on?)", load.url);
}

/// A fake DEVON serving its documented routes: `/` (its UI), `/openapi.json` (FastAPI's, with
/// `info.version`) and `GET /api/v1/models` (only with `Authorization: Bearer KEY`).
fn fake_devon(key: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    return;
                }
                let mut auth = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("authorization:") {
                        auth = v.trim().to_string();
                    }
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, kind, body) = match path.as_str() {
                    "/" => ("200 OK", "text/html", "<!doctype html><title>DEVON</title><h1>DEVON</h1>".to_string()),
                    // For the detector's own test: a console error and a missing image.
                    "/broken" => ("200 OK", "text/html", "<!doctype html><title>x</title><script>console.error('boom')</script><img src=/missing alt=x>".to_string()),
                    "/openapi.json" => ("200 OK", "application/json", json!({"openapi": "3.1.0", "info": {"title": "DEVON", "version": "0.4.2"}}).to_string()),
                    "/api/v1/models" if auth == format!("bearer {key}") => ("200 OK", "application/json", json!({
                        "count": 2,
                        "models": [
                            {"source": "huggingface", "model_id": "Qwen/Qwen2.5-0.5B-Instruct", "path": "/vault/qwen", "size_bytes": 988_000_000u64,
                             "downloaded_at": "2026-11-30T10:00:00Z", "files": ["model.safetensors", "config.json"]},
                            {"source": "huggingface", "model_id": format!("evil/{HOSTILE}"), "path": "/vault/evil", "size_bytes": 1,
                             "downloaded_at": "2026-11-30T10:00:00Z", "files": []}
                        ]}).to_string()),
                    "/api/v1/models" => ("401 Unauthorized", "application/json", r#"{"detail":"Not authenticated"}"#.to_string()),
                    _ => ("404 Not Found", "application/json", r#"{"detail":"Not Found"}"#.to_string()),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// Logs the browser in through the URL `kitt serve` prints.
/// Registers agent `token` as `kitt agent` would (a raw POST).
fn register_agent(port: u16, token: &str) {
    use std::io::{Read as _, Write as _};
    let body = serde_json::json!({
        "protocol": [1, 0], "kitt_version": "0.1.0", "build": "test", "target": "x86_64-linux-gnu", "hostname": "gpu-host",
        "fingerprint": "abc123", "fingerprint_identity": "h100_test", "gpus": [], "slots": 1, "docker": false,
    })
    .to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /api/v1/agent/register HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

fn log_in(b: &mut Browser, server: &Server) {
    let load = b.navigate(&server.url(&format!("/login?token={}", server.admin)));
    clean(&load);
    assert_eq!(b.eval("location.pathname"), "/", "the login goes to the dashboard");
}

#[test]
fn the_templates_write_no_unescaped_output_and_load_nothing_from_outside() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("web/templates");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        seen += 1;
        assert!(!text.contains("{{{"), "{}: `{{{{{{` writes unescaped output", path.display());
        assert!(!text.contains("{{&"), "{}: `{{{{&` writes unescaped output", path.display());
        let lower = text.to_lowercase();
        assert!(
            !lower.contains("<script>") && !lower.contains(" style=") && !lower.contains("<style"),
            "{}: inline script or style",
            path.display()
        );
        assert!(
            !lower.contains("http://") && !lower.contains("https://") && !lower.contains("//cdn"),
            "{}: an outside URL",
            path.display()
        );
    }
    assert!(seen >= 10, "only {seen} templates in {}", dir.display());
}

#[test]
fn serial_every_page_loads_in_chromium_with_no_console_error_no_failed_request_and_nothing_off_loopback() {
    let Some(exe) = chromium() else { return };
    let env = KittEnv::new();
    std::fs::write(suites_dir(&env).join("slow.yaml"), SLOW).unwrap();
    let runs = seed(&env);
    let ids = result_ids(&env);
    let devon = fake_devon("devon-secret");
    let devon_url = format!("http://127.0.0.1:{devon}");
    let model_dir = env.path().join("models");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("tiny-q4.gguf"), b"GGUF0000").unwrap();
    let model_dirs = model_dir.display().to_string();
    let server = serve(
        &env,
        &["--devon-url", &devon_url],
        &[("DEVON_API_KEY", "devon-secret"), ("KITT_SETTING_MODEL_DIRS", &model_dirs)],
    );
    // An agent registered, so the Agents page has a row (and, for the admin, its buttons).
    let out = kitt(&env)
        .args(["serve", "token", "create", "--name", "gpu-a", "--scope", "agent", "--labels", "gpu=h100"])
        .args(["--output", "json"])
        .output()
        .unwrap();
    let agent_token =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["token"].as_str().unwrap().to_string();
    register_agent(server.port, &agent_token);
    let mut b = Browser::launch(&exe);
    // The detector itself: a console error and a failed request are seen.
    let broken = b.navigate(&format!("{devon_url}/broken"));
    assert!(broken.problems.iter().any(|p| p.contains("boom")), "{broken:?}");
    assert!(broken.failed.iter().any(|f| f.contains("404")), "{broken:?}");
    log_in(&mut b, &server);
    let pages: Vec<(String, String)> = vec![
        ("dashboard".into(), "/".into()),
        ("runs".into(), "/runs".into()),
        ("run".into(), format!("/runs/{}", runs[0])),
        ("results".into(), "/results".into()),
        ("results-filtered".into(), "/results?engine=sim&benchmark=tput&order=oldest&since=2020-01-01".into()),
        ("result".into(), format!("/results/{}", ids[0])),
        ("compare".into(), format!("/compare?ids={},{}", ids[0], ids[4])),
        ("compare-runs".into(), format!("/compare?ids={},{}", runs[0], runs[1])),
        ("engines".into(), "/engines".into()),
        ("engine".into(), "/engines/sim".into()),
        ("models".into(), "/models".into()),
        ("quicktest".into(), "/quicktest".into()),
        ("quicktest-show".into(), "/quicktest?model=tiny&engine=sim&suite=quick&show=1".into()),
        ("settings".into(), "/settings".into()),
        ("devon".into(), "/devon".into()),
        ("agents".into(), "/agents".into()),
    ];
    let mut slowest = (0.0, String::new());
    for (name, path) in &pages {
        let load = b.navigate(&server.url(path));
        clean(&load);
        assert_eq!(b.eval("location.pathname"), path.split('?').next().unwrap(), "{path}: went elsewhere");
        let main = b.eval("document.querySelector('main').innerText").as_str().unwrap_or_default().to_string();
        assert!(main.len() > 20, "{path}: an empty page");
        if load.load_ms > slowest.0 {
            slowest = (load.load_ms, path.clone());
        }
        shoot(&mut b, name);
    }
    eprintln!("slowest load event: {:.0} ms ({})", slowest.0, slowest.1);
    // The Agents page: the registered agent with its labels, and the admin's drain button works.
    b.navigate(&server.url("/agents"));
    let main = b.eval("document.querySelector('main').innerText").as_str().unwrap_or_default().to_string();
    assert!(main.contains("gpu-a") && main.contains("gpu=h100"), "{main}");
    b.eval("document.querySelector('form[action=\"/agents/gpu-a/drain\"]').submit()");
    let load = b.wait_loaded("drain");
    clean(&load);
    assert_eq!(b.eval("location.pathname"), "/agents");
    let main = b.eval("document.querySelector('main').innerText").as_str().unwrap_or_default().to_string();
    assert!(main.contains("draining"), "{main}");
    // Settings: an admin sets a key in the store from the page; a pinned key has no form.
    b.navigate(&server.url("/settings"));
    assert_eq!(b.eval("document.querySelectorAll('form[action=\"/settings/model_dirs\"]').length"), 0, "pinned");
    b.eval("document.querySelector('form[action=\"/settings/page_size\"] input[name=value]').value = '25'; document.querySelector('form[action=\"/settings/page_size\"]').submit()");
    let load = b.wait_loaded("setting");
    clean(&load);
    assert_eq!(b.eval("location.pathname"), "/settings");
    let row = b.eval("[...document.querySelectorAll('tr')].find(r => r.innerText.startsWith('page_size')).innerText");
    let row = row.as_str().unwrap_or_default();
    assert!(row.contains("store") && row.contains("by admin"), "{row}");
    assert_eq!(b.eval("document.querySelector('form[action=\"/settings/page_size\"] input[name=value]').value"), "25");

    // The run page shows the step tree with every step done and its timings.
    b.navigate(&server.url(&format!("/runs/{}", runs[0])));
    let states = b.eval("[...document.querySelectorAll('tr[data-step] td.state')].map(t => t.className)");
    let states: Vec<&str> = states.as_array().unwrap().iter().filter_map(|s| s.as_str()).collect();
    assert!(!states.is_empty() && states.iter().all(|s| s.contains("done") || s.contains("skipped")), "{states:?}");
    let took =
        b.eval("[...document.querySelectorAll('tr[data-step] td.took')].filter(t => /\\d/.test(t.textContent)).length");
    assert!(took.as_u64().unwrap() > 0, "no step shows how long it took");

    // The Devon page frames exactly DEVON's origin, and its CSP says so; no other page does.
    let (_, headers, _) = http(server.port, "/devon", Some(&server.admin));
    assert_eq!(
        header(&headers, "content-security-policy"),
        Some(
            format!(
                "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; frame-src {devon_url}"
            )
            .as_str()
        )
    );
    let (_, headers, _) = http(server.port, "/models", Some(&server.admin));
    assert!(!header(&headers, "content-security-policy").unwrap().contains("frame-src"));
    b.navigate(&server.url("/devon"));
    assert_eq!(b.eval("document.querySelector('iframe.devon').src"), format!("{devon_url}/"));
    // The Models page lists the models of the suites, the store and the model directories,
    // and DEVON's (asked with the Bearer key), each with a quick test.
    b.navigate(&server.url("/models"));
    let names = b.eval("[...document.querySelectorAll('main > table:first-of-type td.name')].map(t => t.textContent)");
    assert_eq!(names, json!([HOSTILE, "seed-model", "slow-model", "tiny-q4"]));
    let local = b.eval("[...document.querySelectorAll('main > table:first-of-type tr')].find(r => r.textContent.includes('tiny-q4')).textContent");
    assert!(local.as_str().unwrap().contains("gguf, 8 B"), "{local}");
    let devon_rows = b.eval("[...document.querySelectorAll('#devon-models tr td.name')].map(t => t.textContent)");
    assert_eq!(devon_rows, json!(["Qwen/Qwen2.5-0.5B-Instruct", format!("evil/{HOSTILE}")]));
    let quick = b.eval("document.querySelector('#devon-models a').getAttribute('href')");
    assert_eq!(quick, "/quicktest?model=Qwen2.5-0.5B-Instruct&model_path=/vault/qwen");
    let (status, _, body) = http(server.port, "/api/v1/devon/status", Some(&server.admin));
    assert_eq!(status, 200, "{body}");
    let v: Json = serde_json::from_str(&body).unwrap();
    assert_eq!((v["reachable"].clone(), v["version"].clone()), (json!(true), json!("0.4.2")), "{v}");
}

#[test]
fn serial_a_quick_test_from_the_form_runs_on_sim_and_its_page_counts_live_to_finished() {
    let Some(exe) = chromium() else { return };
    let env = KittEnv::new();
    std::fs::write(suites_dir(&env).join("slow.yaml"), SLOW).unwrap();
    let server = serve(&env, &[], &[]);
    let mut b = Browser::launch(&exe);
    log_in(&mut b, &server);
    clean(&b.navigate(&server.url("/quicktest")));
    // Show suite prints the YAML it will run; a bad value is an error at its line and column.
    b.eval("document.querySelector('input[name=model]').value = 'web-model'; document.querySelector('select[name=suite]').value = 'slow.yaml'; document.querySelector('input[name=runs]').value = '0'; document.getElementById('show-suite').click()");
    let load = b.wait_loaded("show suite");
    clean(&load);
    let yaml = b.eval("document.getElementById('suite-yaml').innerText").as_str().unwrap().to_string();
    assert!(yaml.contains("web-model") && yaml.contains("template: sim") && yaml.contains("poisson"), "{yaml}");
    let errors = b.eval("document.getElementById('errors').innerText").as_str().unwrap().to_string();
    // The bad line is marked in the YAML shown, and the error names its line and column.
    let bad = b.eval("[...document.querySelectorAll('#suite-yaml .line.bad')].map(l => [l.querySelector('.n').textContent, l.textContent])");
    let bad = bad.as_array().unwrap();
    assert_eq!(bad.len(), 1, "one line is marked: {bad:?}");
    let (n, line) = (bad[0][0].as_str().unwrap(), bad[0][1].as_str().unwrap());
    assert!(line.contains("runs: 0"), "the marked line is {line:?}");
    assert!(errors.contains(&format!("{n}:")) && errors.contains("runs"), "the error names line {n}: {errors}");
    // Launch with a valid form: the browser goes to the run's page, which follows it live.
    b.eval("document.querySelector('input[name=runs]').value = '1'; document.getElementById('launch').click()");
    let load = b.wait_loaded("launch");
    assert!(load.problems.is_empty() && load.failed.is_empty(), "{load:?}");
    let path = b.eval("location.pathname").as_str().unwrap().to_string();
    assert!(path.starts_with("/runs/"), "launch went to {path}");
    b.eval("window.__same_page = 'yes'");
    shoot(&mut b, "run-live-start");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen_requests: Vec<u64> = Vec::new();
    let status = loop {
        assert!(Instant::now() < deadline, "the page never said finished; requests seen {seen_requests:?}");
        let v = b.eval(
            "({status: document.getElementById('run-status').textContent, requests: document.getElementById('live-requests').textContent, updates: document.getElementById('live-updates').textContent, same: window.__same_page})",
        );
        assert_eq!(v["same"], "yes", "the page was reloaded");
        if let Ok(n) = v["requests"].as_str().unwrap_or_default().parse::<u64>()
            && seen_requests.last() != Some(&n)
        {
            seen_requests.push(n);
        }
        let status = v["status"].as_str().unwrap_or_default().to_string();
        if status.contains("finished") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    shoot(&mut b, "run-live-finished");
    assert_eq!(status, "finished: succeeded");
    let moving: Vec<&u64> = seen_requests.iter().filter(|n| **n > 0).collect();
    assert!(moving.len() >= 2, "the request counter did not advance on the page: {seen_requests:?}");
    assert!(moving.windows(2).all(|w| w[0] <= w[1]), "the counter went back: {seen_requests:?}");
    // Every step ended on the page, without a reload.
    let states = b.eval("[...document.querySelectorAll('tr[data-step] td.state')].map(t => t.className)");
    let states: Vec<&str> = states.as_array().unwrap().iter().filter_map(|s| s.as_str()).collect();
    assert!(states.iter().all(|s| s.contains("done") || s.contains("skipped")), "{states:?}");
    assert_eq!(b.eval("window.__same_page"), "yes");
    // The run is an ordinary run: the CLI sees it finished.
    let run = path.trim_start_matches("/runs/");
    let out = kitt(&env).args(["runs", "show", run, "--output", "json"]).output().unwrap();
    let v: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(v["run"]["status"], "succeeded", "{v}");
}

#[test]
fn serial_compare_draws_one_series_per_result_with_verdicts() {
    let Some(exe) = chromium() else { return };
    let env = KittEnv::new();
    seed(&env);
    let ids = result_ids(&env);
    let server = serve(&env, &[], &[]);
    let mut b = Browser::launch(&exe);
    log_in(&mut b, &server);
    // Tick three results on the Results page and press Compare.
    clean(&b.navigate(&server.url("/results?order=oldest")));
    assert_eq!(b.eval("document.getElementById('compare-button').disabled"), true, "compare waits for two ticks");
    let picked = [ids[0], ids[2], ids[4]];
    for id in picked {
        b.eval(&format!(
            "(() => {{ const c = document.querySelector('input[name=ids][value=\"{id}\"]'); c.click(); }})()"
        ));
    }
    assert_eq!(b.eval("document.getElementById('compare-button').disabled"), false);
    b.eval("document.getElementById('compare-button').click()");
    let load = b.wait_loaded("compare");
    clean(&load);
    assert_eq!(
        b.eval("location.pathname + location.search"),
        format!("/compare?ids={}&ids={}&ids={}", picked[0], picked[1], picked[2])
    );
    let series =
        b.eval("[...document.querySelectorAll('#overlays svg.plot')].map(s => s.querySelectorAll('g.series').length)");
    let series: Vec<u64> = series.as_array().unwrap().iter().filter_map(Json::as_u64).collect();
    assert!(series.len() >= 3, "latency plots: {series:?}");
    assert_eq!(&series[..3], &[3, 3, 3], "a line per result in each latency plot");
    let verdicts = b.eval("[...document.querySelectorAll('table.verdicts td.verdict')].map(t => t.textContent)");
    assert!(!verdicts.as_array().unwrap().is_empty(), "no verdicts: {verdicts}");
    shoot(&mut b, "compare-three");
    // The y axes go log and back (the hover values drawn at their log positions).
    let before = b.eval("document.querySelector('#overlays g.series circle').getAttribute('cy')");
    b.eval("document.getElementById('scale-toggle').click()");
    let log = b.eval("({scale: document.querySelector('#overlays svg.plot').dataset.scale, cy: document.querySelector('#overlays g.series circle').getAttribute('cy'), ticks: document.querySelectorAll('#overlays .log-tick').length, pressed: document.getElementById('scale-toggle').getAttribute('aria-pressed')})");
    assert_eq!((log["scale"].as_str(), log["pressed"].as_str()), (Some("log"), Some("true")), "{log}");
    assert!(log["cy"] != before && log["ticks"].as_u64().unwrap() >= 4, "{log} vs {before}");
    shoot(&mut b, "compare-three-log");
    b.eval("document.getElementById('scale-toggle').click()");
    assert_eq!(b.eval("document.querySelector('#overlays g.series circle').getAttribute('cy')"), before);
    assert_eq!(b.eval("document.querySelectorAll('#overlays .log-tick').length"), 0);
    // Download as one HTML file: styles inline, no script, the same plots.
    let href = b.eval("document.getElementById('download').getAttribute('href')").as_str().unwrap().to_string();
    let (status, headers, body) = http(server.port, &href, Some(&server.admin));
    assert_eq!(status, 200, "{href}: {body}");
    assert_eq!(header(&headers, "content-disposition"), Some("attachment; filename=\"kitt-compare.html\""));
    assert!(body.contains("<style>") && !body.contains("<script") && !body.contains("/assets/"), "not one file");
    let first_plot = body.split("<svg").nth(1).unwrap().split("</svg>").next().unwrap();
    assert_eq!(first_plot.matches("<g class=\"series\">").count(), 3, "{first_plot}");
}

#[test]
fn serial_without_a_login_every_page_goes_to_login_and_comes_back() {
    let Some(exe) = chromium() else { return };
    let env = KittEnv::new();
    let server = serve(&env, &[], &[]);
    // Without a browser: a 303 to /login naming the page.
    for path in
        ["/", "/runs", "/results?model=a%20b", "/compare", "/engines", "/models", "/quicktest", "/settings", "/agents"]
    {
        let (status, headers, _) = http(server.port, path, None);
        assert_eq!(status, 303, "{path}");
        let to = header(&headers, "location").unwrap();
        assert!(to.starts_with("/login?next=/"), "{path} → {to}");
    }
    let (status, _, _) =
        http(server.port, "/results", Some("kitt_0000000000000000000000000000000000000000000000000000000000000000"));
    assert_eq!(status, 303, "an unknown token is no login");
    let mut b = Browser::launch(&exe);
    for path in ["/", "/runs", "/results", "/settings"] {
        let load = b.navigate(&server.url(path));
        clean(&load);
        assert_eq!(b.eval("location.pathname"), "/login", "{path}");
        assert_eq!(b.eval("document.querySelectorAll('input[name=token]').length"), 1);
    }
    shoot(&mut b, "login");
    // A wrong token is refused on the page; the right one comes back to the page asked for.
    b.eval("document.querySelector('input[name=token]').value = 'kitt_nope'; document.querySelector('form').submit()");
    let load = b.wait_loaded("bad login");
    assert_eq!(load.status, Some(401));
    assert!(b.eval("document.querySelector('main').innerText").as_str().unwrap().contains("not known"));
    b.navigate(&server.url("/settings"));
    b.eval(&format!(
        "document.querySelector('input[name=token]').value = '{}'; document.querySelector('form').submit()",
        server.admin
    ));
    let load = b.wait_loaded("login");
    clean(&load);
    assert_eq!(b.eval("location.pathname"), "/settings");
}

#[test]
fn serial_an_insecure_server_says_so_on_every_page_and_a_loopback_one_does_not() {
    let env = KittEnv::new();
    let server = serve(&env, &["--bind", "0.0.0.0:0", "--insecure"], &[]);
    for path in ["/", "/runs", "/results", "/compare", "/engines", "/models", "/quicktest", "/settings", "/login"] {
        let (status, _, body) = http(server.port, path, Some(&server.admin));
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.contains("class=\"banner insecure\""), "{path}: no --insecure banner");
    }
    drop(server);
    let server = serve(&env, &[], &[]);
    let (_, _, body) = http(server.port, "/", Some(&server.admin));
    assert!(body.contains("<h1>Dashboard</h1>") && !body.contains("banner insecure"), "{body}");
    // An unknown page is an HTML page for a browser, problem JSON for an API client.
    let (status, headers, _) = http(server.port, "/nowhere", Some(&server.admin));
    assert_eq!((status, header(&headers, "content-type")), (404, Some("application/problem+json")));
}

#[test]
fn serial_a_model_named_as_markup_renders_as_text() {
    let Some(exe) = chromium() else { return };
    let env = KittEnv::new();
    seed(&env);
    let hostile_id = *result_ids(&env).last().unwrap();
    let devon = fake_devon("k");
    let server = serve(&env, &["--devon-url", &format!("http://127.0.0.1:{devon}")], &[("DEVON_API_KEY", "k")]);
    let mut b = Browser::launch(&exe);
    log_in(&mut b, &server);
    for path in [
        "/".to_string(),
        "/results".to_string(),
        format!("/results/{hostile_id}"),
        "/models".to_string(),
        format!("/compare?ids={},{hostile_id}", hostile_id - 1),
        format!("/quicktest?model={}&show=1", "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E"),
    ] {
        let load = b.navigate(&server.url(&path));
        assert!(load.dialogs.is_empty(), "{path}: the markup ran: {:?}", load.dialogs);
        assert_eq!(b.eval("document.querySelectorAll('main img').length"), 0, "{path}: an img element was made");
        let text = b.eval("document.querySelector('main').innerText").as_str().unwrap().to_string();
        assert!(text.contains(HOSTILE), "{path}: the name is not shown as text");
    }
    shoot(&mut b, "hostile-results");
}

/// The load event of pages in Chromium, for `scripts/bench-web.sh` (which starts the server over
/// its generated store and names it in `KITT_BENCH_URL`, with a token in `KITT_BENCH_TOKEN` and
/// the pages in `KITT_BENCH_PATHS`, space-separated): 3 loads to warm up, then 20 of each,
/// every one clean.
#[test]
#[ignore = "a measurement: scripts/bench-web.sh runs it against its own server"]
fn bench_load_event_times() {
    let url = std::env::var("KITT_BENCH_URL").expect("KITT_BENCH_URL: the server to measure");
    let token = std::env::var("KITT_BENCH_TOKEN").expect("KITT_BENCH_TOKEN: a read token");
    let paths = std::env::var("KITT_BENCH_PATHS").unwrap_or_else(|_| "/ /results".into());
    let exe = chromium().expect("chromium");
    let mut b = Browser::launch(&exe);
    clean(&b.navigate(&format!("{url}/login?token={token}")));
    for path in paths.split_whitespace() {
        let mut times: Vec<f64> = Vec::new();
        for i in 0..23 {
            let load = b.navigate(&format!("{url}{path}"));
            clean(&load);
            if i >= 3 {
                times.push(load.load_ms);
            }
        }
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
        println!(
            "load event {path}: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms ({} loads)",
            at(0.5),
            at(0.95),
            at(1.0),
            times.len()
        );
    }
}
