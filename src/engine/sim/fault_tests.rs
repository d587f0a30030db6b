//! `--fault`, seen from a raw socket: what bytes arrive, and how the connection ends (FIN, RST or
//! silence), for each fault — with exact counts of which requests fault.

use std::io::ErrorKind;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use super::tests::start;

/// How reading a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The server closed it (FIN): read returned 0.
    Eof,
    /// The server reset it (RST): read failed with ECONNRESET.
    Reset,
    /// Nothing more came for [`QUIET`], the connection still open.
    Silent,
}

/// How long a connection must stay silent to count as stalled.
const QUIET: Duration = Duration::from_millis(400);

/// What one request got back.
#[derive(Debug)]
struct Seen {
    bytes: Vec<u8>,
    end: End,
    /// When the first byte and the first body event arrived, after the request was written.
    first_byte: Option<Duration>,
    first_event: Option<Duration>,
}

impl Seen {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// A response that arrived whole and the server closed after it (`Connection: close`).
    fn complete(&self) -> bool {
        let text = self.text();
        let whole = if text.contains("transfer-encoding: chunked") {
            text.ends_with("0\r\n\r\n")
        } else {
            content_length(&text).is_some_and(|n| body_of(&text).len() == n)
        };
        self.end == End::Eof && whole
    }

    fn status(&self) -> Option<u16> {
        self.text().strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// The SSE payloads (`data: …`) that arrived.
    fn events(&self) -> Vec<String> {
        let text = self.text();
        text.split("\n\n").filter_map(|e| e.split("data: ").nth(1)).map(str::to_string).collect()
    }
}

fn content_length(text: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.to_ascii_lowercase().starts_with("content-length:"))?;
    line.split(':').nth(1)?.trim().parse().ok()
}

fn body_of(text: &str) -> &str {
    text.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// Writes `request` on a fresh connection and reads until the server closes, resets or goes quiet.
async fn exchange(url: &str, request: &str) -> Seen {
    let addr = url.strip_prefix("http://").unwrap();
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let sent = Instant::now();
    let mut seen = Seen { bytes: Vec::new(), end: End::Silent, first_byte: None, first_event: None };
    let mut buf = [0u8; 16 << 10];
    loop {
        match timeout(QUIET, socket.read(&mut buf)).await {
            Err(_) => return seen,
            Ok(Ok(0)) => {
                seen.end = End::Eof;
                return seen;
            }
            Ok(Ok(n)) => {
                seen.bytes.extend_from_slice(&buf[..n]);
                seen.first_byte.get_or_insert(sent.elapsed());
                if seen.text().contains("data: ") {
                    seen.first_event.get_or_insert(sent.elapsed());
                }
            }
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset => {
                seen.end = End::Reset;
                return seen;
            }
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
    }
}

fn post(path: &str, body: &Value) -> String {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: sim\r\nconnection: close\r\n\r\n")
}

/// A streamed completion of 6 tokens, one event each, then `[DONE]`.
fn streamed(i: usize) -> String {
    let body = json!({"prompt": format!("request {i}"), "max_tokens": 6, "ignore_eos": true, "stream": true});
    post("/v1/completions", &body)
}

fn whole(i: usize) -> String {
    let body = json!({"prompt": format!("request {i}"), "max_tokens": 6, "ignore_eos": true});
    post("/v1/completions", &body)
}

/// Requests `0..n` one after another; the indices of those that did not arrive complete.
async fn broken(url: &str, n: usize, request: impl Fn(usize) -> String) -> Vec<usize> {
    let mut out = Vec::new();
    for i in 0..n {
        if !exchange(url, &request(i)).await.complete() {
            out.push(i);
        }
    }
    out
}

#[tokio::test]
async fn stall_holds_exactly_its_share_silent_after_the_first_event() {
    let url = start(&["--fault", "stall:0.2"]).await;
    let mut stalled = Vec::new();
    for i in 0..10 {
        let seen = exchange(&url, &streamed(i)).await;
        match seen.end {
            End::Silent => {
                assert_eq!(seen.status(), Some(200), "{}", seen.text());
                assert_eq!(seen.events().len(), 1, "one event, then silence: {}", seen.text());
                stalled.push(i);
            }
            _ => assert!(seen.complete() && seen.events().last().unwrap() == "[DONE]", "{i}: {}", seen.text()),
        }
    }
    assert_eq!(stalled, [4, 9], "with seed 0, the last of every 5");
    // A whole answer stalls after half its body; `after` delays the first fault.
    let url = start(&["--fault", "stall:1:2"]).await;
    assert_eq!(broken(&url, 2, whole).await, Vec::<usize>::new());
    let seen = exchange(&url, &whole(2)).await;
    let text = seen.text();
    assert_eq!((seen.end, seen.status()), (End::Silent, Some(200)));
    assert_eq!(body_of(&text).len(), content_length(&text).unwrap() / 2, "{text}");
}

#[tokio::test]
async fn cut_closes_with_fin_before_the_end() {
    let url = start(&["--fault", "cut"]).await;
    let seen = exchange(&url, &streamed(0)).await;
    assert_eq!((seen.end, seen.status()), (End::Eof, Some(200)), "{}", seen.text());
    assert_eq!(seen.events().len(), 1, "{}", seen.text());
    assert!(!seen.text().ends_with("0\r\n\r\n"), "no last chunk: {}", seen.text());

    let seen = exchange(&url, &whole(0)).await;
    let text = seen.text();
    assert_eq!(seen.end, End::Eof);
    assert_eq!(body_of(&text).len(), content_length(&text).unwrap() / 2, "{text}");
}

#[tokio::test]
async fn reset_sends_rst_mid_stream() {
    let url = start(&["--fault", "reset:0.5"]).await;
    let ends: Vec<End> = {
        let mut ends = Vec::new();
        for i in 0..4 {
            let seen = exchange(&url, &streamed(i)).await;
            match seen.end {
                End::Reset => assert_eq!((seen.status(), seen.events().len()), (Some(200), 1), "{}", seen.text()),
                _ => assert!(seen.complete(), "{}", seen.text()),
            }
            ends.push(seen.end);
        }
        ends
    };
    assert_eq!(ends, [End::Eof, End::Reset, End::Eof, End::Reset]);
    assert_eq!(exchange(&url, &whole(4)).await.end, End::Eof);
    assert_eq!(exchange(&url, &whole(5)).await.end, End::Reset);
}

#[tokio::test]
async fn reset_head_resets_after_the_request_is_logged_and_ten_bytes_sent() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let url = start(&["--fault", "reset_head::1", "--request-log", log.to_str().unwrap()]).await;
    assert!(exchange(&url, &streamed(0)).await.complete());
    let seen = exchange(&url, &streamed(1)).await;
    assert_eq!(seen.end, End::Reset, "{}", seen.text());
    // The bytes sent before the RST are read first (over loopback they have arrived), then ECONNRESET.
    assert_eq!(seen.text(), "HTTP/1.1 2");
    let lines: Vec<Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let faults: Vec<&Value> = lines.iter().map(|l| &l["fault"]).collect();
    assert_eq!(faults, [&Value::Null, &json!("reset_head")], "received once each, the second faulted");
    assert_eq!(lines[1]["body"]["prompt"], "request 1");
}

#[tokio::test]
async fn bad_json_sends_one_event_that_is_not_json_in_each_framing() {
    let url = start(&["--fault", "bad_json"]).await;
    let seen = exchange(&url, &streamed(0)).await;
    assert!(seen.complete(), "{}", seen.text());
    let events = seen.events();
    let bad: Vec<&String> =
        events.iter().filter(|e| *e != "[DONE]" && serde_json::from_str::<Value>(e).is_err()).collect();
    assert_eq!(bad.len(), 1, "{events:?}");
    assert_eq!(events[1], *bad[0], "right after the first event");
    assert_eq!(events.len(), 6 + 2, "six tokens, the bad event and [DONE]");

    let seen = exchange(&url, &whole(0)).await;
    assert!(seen.complete() && seen.status() == Some(200), "{}", seen.text());
    assert!(serde_json::from_str::<Value>(body_of(&seen.text())).is_err());

    let ollama = start(&["--api", "ollama", "--model", "m", "--ignore-eos", "--fault", "bad_json"]).await;
    let body = json!({"model": "m", "prompt": "a b", "options": {"num_predict": 4}});
    let seen = exchange(&ollama, &post("/api/generate", &body)).await;
    assert!(seen.complete(), "{}", seen.text());
    let text = seen.text();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('{')).collect();
    let bad = lines.iter().filter(|l| serde_json::from_str::<Value>(l).is_err()).count();
    assert_eq!((bad, lines.len()), (1, 4 + 1 + 1), "four tokens, the bad line and the `done` line: {text}");
}

#[tokio::test]
async fn http_errors_come_in_each_api_shape_and_429_says_when_to_retry() {
    let url = start(&["--fault", "http_500:0.5", "--fault", "http_429"]).await;
    let (a, b) = (exchange(&url, &streamed(0)).await, exchange(&url, &streamed(1)).await);
    assert_eq!((a.status(), b.status()), (Some(429), Some(500)));
    assert!(a.text().to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"), "{}", a.text());
    assert!(!b.text().to_ascii_lowercase().contains("retry-after"));
    assert_eq!(serde_json::from_str::<Value>(body_of(&b.text())).unwrap()["error"]["code"], 500);

    let tgi = start(&["--api", "tgi", "--fault", "http_429"]).await;
    let seen = exchange(&tgi, &post("/generate", &json!({"inputs": "a b", "parameters": {"max_new_tokens": 2}}))).await;
    assert_eq!(seen.status(), Some(429));
    let error: Value = serde_json::from_str(body_of(&seen.text())).unwrap();
    assert_eq!(error, json!({"error": "simulated overload", "error_type": "overloaded"}));
}

#[tokio::test]
async fn slow_first_token_holds_the_first_event_not_the_head() {
    let url = start(&["--fault", "slow_first_token", "--fault-delay", "300"]).await;
    let seen = exchange(&url, &streamed(0)).await;
    assert!(seen.complete(), "{}", seen.text());
    let (head, first) = (seen.first_byte.unwrap(), seen.first_event.unwrap());
    assert!(first >= Duration::from_millis(300), "{first:?}");
    assert!(head < first, "the head comes first: {head:?} {first:?}");
}

#[tokio::test]
async fn slow_health_slow_tokenize_and_loading_hold_or_refuse_their_calls() {
    let url = start(&["--fault", "slow_health:0.5", "--fault", "slow_tokenize::1", "--fault-delay", "250"]).await;
    let held = |seen: &Seen| {
        seen.complete() && seen.status() == Some(200) && seen.first_byte.unwrap() >= Duration::from_millis(250)
    };
    let tokenize = post("/tokenize", &json!({"prompt": "a b"}));
    let health = [exchange(&url, &get("/health")).await, exchange(&url, &get("/health")).await];
    assert_eq!(health.iter().map(held).collect::<Vec<_>>(), [false, true]);
    let tokenized = [exchange(&url, &tokenize).await, exchange(&url, &tokenize).await];
    assert_eq!(tokenized.iter().map(held).collect::<Vec<_>>(), [false, true]);
    assert!(tokenized[0].complete());

    let loading = start(&["--fault", "loading", "--fault-delay", "300"]).await;
    assert_eq!(exchange(&loading, &get("/health")).await.status(), Some(503));
    assert!(exchange(&loading, &streamed(0)).await.complete(), "only health refuses");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(exchange(&loading, &get("/health")).await.status(), Some(200));
}

#[tokio::test]
async fn tokenize_health_and_metrics_calls_do_not_shift_which_requests_fault() {
    let url = start(&["--fault", "cut:1/3"]).await;
    let mut cut = Vec::new();
    for i in 0..6 {
        for call in [get("/health"), get("/metrics"), post("/tokenize", &json!({"prompt": "a"})), get("/v1/models")] {
            assert!(exchange(&url, &call).await.complete());
        }
        if !exchange(&url, &streamed(i)).await.complete() {
            cut.push(i);
        }
    }
    assert_eq!(cut, [2, 5]);
    // The same requests with no calls between them fault alike.
    let alone = start(&["--fault", "cut:1/3"]).await;
    assert_eq!(broken(&alone, 6, streamed).await, [2, 5]);
    // A refused request counts; a seed moves where the faults fall.
    let seeded = start(&["--fault", "cut:1/3", "--seed", "1"]).await;
    let refused = exchange(&seeded, &post("/v1/completions", &json!({"max_tokens": 1}))).await;
    assert!(refused.complete() && refused.status() == Some(400), "{}", refused.text());
    assert_eq!(broken(&seeded, 5, streamed).await, [0, 3]);
}
