//! A small Chrome DevTools Protocol client for the page tests: headless Chromium on a private
//! profile, one page target driven over its WebSocket (tungstenite, synchronous), and what a
//! page load did: console messages, exceptions, log entries, failed requests, every URL asked
//! for, and the load event's time.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use tungstenite::{Message, WebSocket};

/// Chromium on PATH (Debian's `chromium`), or `None` (a skip, said on stderr) outside CI; under
/// `CI=true` a missing browser fails the test.
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
        .iter()
        .flat_map(|b| std::env::split_paths(&path).map(move |d| d.join(b)))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "no chromium on PATH: CI installs it (.ci/run: apt-get install -y --no-install-recommends chromium)"
            );
        }
        eprintln!("SKIPPED: no chromium on PATH (apt-get install -y --no-install-recommends chromium)");
    }
    found
}

/// What one page load did.
#[derive(Debug, Default)]
pub struct Load {
    pub url: String,
    /// Console errors and warnings, uncaught exceptions, and error or warning log entries (CSP
    /// violations and failed loads are reported there).
    pub problems: Vec<String>,
    /// Requests that failed or got a status of 400 or more.
    pub failed: Vec<String>,
    /// Every URL the page asked for.
    pub requests: Vec<String>,
    /// JavaScript dialogs opened (an `alert` that should never run).
    pub dialogs: Vec<String>,
    /// The load event's end, in ms from the navigation's start.
    pub load_ms: f64,
    /// The main document's status.
    pub status: Option<u64>,
}

/// The browser's process, killed when dropped: a launch that fails half-way leaves none behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Browser {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    pending: Vec<Json>,
    // Fields drop in order: the websocket, then the browser, then its profile.
    _child: Process,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.ws.close(None);
    }
}

/// A plain HTTP GET on loopback (the DevTools endpoint's JSON), read up to its Content-Length
/// (the endpoint keeps the connection open).
fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        raw.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
            });
            if n == 0 || length.is_some_and(|l: usize| body.len() >= l) {
                return body.to_string();
            }
        } else if n == 0 {
            return String::new();
        }
    }
}

impl Browser {
    pub fn launch(exe: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Process(
            Command::new(exe)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-default-apps",
                    "--disable-extensions",
                    "--disable-sync",
                    "--mute-audio",
                    "--password-store=basic",
                    "--window-size=1360,1000",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("about:blank")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // Chromium writes its port and browser path here once it listens.
        let active = profile.path().join("DevToolsActivePort");
        let started = Instant::now();
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&active).ok().and_then(|t| t.lines().next()?.trim().parse().ok()) {
                break p;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "chromium did not open its DevTools port");
            std::thread::sleep(Duration::from_millis(50));
        };
        let page_ws = loop {
            let list: Json = serde_json::from_str(&http_get(port, "/json/list")).unwrap_or(Json::Null);
            if let Some(ws) = list
                .as_array()
                .and_then(|a| a.iter().find(|t| t["type"] == "page"))
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            {
                break ws.to_string();
            }
            assert!(started.elapsed() < Duration::from_secs(30), "chromium has no page target: {list}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // The handshake waits as long as it takes; reads after it wait a little at a time, so a
        // test can wait for an event with a deadline.
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (ws, _) =
            tungstenite::client(page_ws.as_str(), stream).unwrap_or_else(|e| panic!("DevTools websocket: {e}"));
        ws.get_ref().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut b = Browser { _child: child, _profile: profile, ws, next_id: 0, pending: Vec::new() };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable", "Network.enable"] {
            b.call(domain, json!({}));
        }
        b
    }

    /// The next message, or `None` after `wait`.
    fn read(&mut self, wait: Duration) -> Option<Json> {
        let until = Instant::now() + wait;
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("DevTools websocket: {e}"),
            }
            if Instant::now() >= until {
                return None;
            }
        }
    }

    /// Sends a command and returns its result; events that arrive meanwhile are kept.
    pub fn call(&mut self, method: &str, params: Json) -> Json {
        self.next_id += 1;
        let id = self.next_id;
        self.ws.send(Message::text(json!({"id": id, "method": method, "params": params}).to_string())).unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < until, "{method}: no answer in 60 s");
            let Some(m) = self.read(Duration::from_millis(200)) else { continue };
            if m["id"] == id {
                assert!(m["error"].is_null(), "{method}: {}", m["error"]);
                return m["result"].clone();
            }
            self.pending.push(m);
        }
    }

    /// Waits until an event named `method` comes (or `wait` passes); every event read is kept.
    fn until_event(&mut self, method: &str, wait: Duration) -> bool {
        if self.pending.iter().any(|e| e["method"] == method) {
            return true;
        }
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if let Some(m) = self.read(Duration::from_millis(100)) {
                let hit = m["method"] == method;
                self.pending.push(m);
                if hit {
                    return true;
                }
            }
        }
        false
    }

    /// Collects events for `wait`.
    fn settle(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if let Some(m) = self.read(Duration::from_millis(50)) {
                self.pending.push(m);
            }
        }
    }

    /// Evaluates `expr` in the page and returns its value.
    pub fn eval(&mut self, expr: &str) -> Json {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true, "awaitPromise": true}));
        assert!(r["exceptionDetails"].is_null(), "{expr}: {}", r["exceptionDetails"]);
        r["result"]["value"].clone()
    }

    /// Loads `url` and reports what the load did, up to its load event and a quiet moment after.
    pub fn navigate(&mut self, url: &str) -> Load {
        self.pending.clear();
        let r = self.call("Page.navigate", json!({"url": url}));
        assert!(r["errorText"].is_null(), "{url}: {}", r["errorText"]);
        self.wait_loaded(url)
    }

    /// After a navigation (a link, a form): waits for its load event and reports.
    pub fn wait_loaded(&mut self, url: &str) -> Load {
        assert!(self.until_event("Page.loadEventFired", Duration::from_secs(30)), "{url}: no load event in 30 s");
        self.settle(Duration::from_millis(300));
        let load_ms = self
            .eval("(() => { const n = performance.getEntriesByType('navigation')[0]; return n ? n.loadEventEnd : -1; })()")
            .as_f64()
            .unwrap_or(-1.0);
        let mut load = Load { url: url.to_string(), load_ms, ..Load::default() };
        for e in std::mem::take(&mut self.pending) {
            let p = &e["params"];
            match e["method"].as_str().unwrap_or_default() {
                "Runtime.consoleAPICalled" if matches!(p["type"].as_str(), Some("error" | "warning" | "assert")) => {
                    load.problems.push(format!("console.{}: {}", p["type"], p["args"]));
                }
                "Runtime.exceptionThrown" => load.problems.push(format!("exception: {}", p["exceptionDetails"])),
                "Log.entryAdded" if matches!(p["entry"]["level"].as_str(), Some("error" | "warning")) => {
                    load.problems
                        .push(format!("log {}: {} ({})", p["entry"]["level"], p["entry"]["text"], p["entry"]["url"]));
                }
                "Network.requestWillBeSent" => {
                    load.requests.push(p["request"]["url"].as_str().unwrap_or_default().into())
                }
                "Network.loadingFailed" if p["canceled"] != true => {
                    load.failed.push(format!("{}: {}", p["requestId"], p["errorText"]));
                }
                "Network.responseReceived" => {
                    let status = p["response"]["status"].as_u64().unwrap_or(0);
                    if p["type"] == "Document" {
                        load.status = Some(status);
                    }
                    if status >= 400 {
                        load.failed.push(format!("{} {}", status, p["response"]["url"]));
                    }
                }
                "Page.javascriptDialogOpening" => {
                    load.dialogs.push(p["message"].to_string());
                    self.call("Page.handleJavaScriptDialog", json!({"accept": true}));
                }
                _ => {}
            }
        }
        load
    }

    /// Saves a PNG of the page (the whole page, not only the window).
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true}));
        let bytes = base64(shot["data"].as_str().unwrap_or_default());
        assert!(bytes.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::write(path, bytes).unwrap();
    }
}

/// Standard base64 (the screenshot's encoding), decoded.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::with_capacity(text.len() * 3 / 4), 0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn base64_decodes_what_it_should() {
    assert_eq!(base64("aGVsbG8gd29ybGQ="), b"hello world");
    assert_eq!(base64("iVBORw=="), b"\x89PNG");
}
