//! The client against the real simulator; helpers here are shared with the load generator's tests.

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

use super::*;
use crate::engine::sim::{SimArgs, bind, serve_on};
use crate::manifest::template_kind::UsagePointers;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sim: SimArgs,
}

/// Starts a simulator on a free port with these `kitt sim` flags; returns its base URL (`https`
/// with `--tls-cert`).
pub(crate) async fn start_sim(flags: &[&str]) -> String {
    let args = Cli::parse_from(["sim", "--port", "0"].iter().chain(flags)).sim;
    let listener = bind(&args).await.unwrap();
    let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    tokio::spawn(serve_on(listener, args, std::future::pending()));
    url
}

fn usage() -> Option<UsagePointers> {
    Some(UsagePointers {
        prompt_tokens: Some("/usage/prompt_tokens".into()),
        completion_tokens: "/usage/completion_tokens".into(),
    })
}

/// suites/engines/vllm.yaml's completion call, rendered with `max_tokens` and `ignore_eos: true`.
pub(crate) fn completion_call(max_tokens: u32) -> RequestTemplate {
    RequestTemplate {
        method: "POST".into(),
        path: "/v1/completions".into(),
        body: json!({"model": "sim", "prompt": "{{prompt}}", "max_tokens": max_tokens,
            "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}),
        stream: StreamFormat::Sse,
        text: "/choices/0/text".into(),
        reasoning: Some("/choices/0/reasoning_content".into()),
        done: Some("[DONE]".into()),
        done_field: None,
        usage: usage(),
        server_prompt_ms: None,
    }
}

/// suites/engines/vllm.yaml's chat call, rendered likewise.
pub(crate) fn chat_call(max_tokens: u32) -> RequestTemplate {
    RequestTemplate {
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        body: json!({"model": "sim", "messages": "{{messages}}", "max_tokens": max_tokens,
            "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}),
        stream: StreamFormat::Sse,
        text: "/choices/0/delta/content".into(),
        reasoning: Some("/choices/0/delta/reasoning_content".into()),
        done: Some("[DONE]".into()),
        done_field: None,
        usage: usage(),
        server_prompt_ms: None,
    }
}

/// suites/engines/vllm.yaml's tokenize call and pointer.
pub(crate) fn tokenize_call() -> (HttpRequest, String) {
    let req = HttpRequest {
        method: "POST".into(),
        path: "/tokenize".into(),
        body: Some(json!({"model": "sim", "prompt": "{{prompt}}"})),
    };
    (req, "/tokens".into())
}

async fn send_one(url: &str, call: &RequestTemplate, body: Value) -> RequestRecord {
    let client = EngineClient::new(url, vec![], 1).unwrap();
    let mut record = RequestRecord::default();
    let origin = Instant::now();
    client.send(call, body.to_string().as_bytes(), origin, &mut record).await;
    record
}

pub(crate) fn completion_body(prompt: &str, max_tokens: u32) -> Value {
    json!({"model": "sim", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": true,
        "stream": true, "stream_options": {"include_usage": true}})
}

#[tokio::test]
async fn a_streamed_completion_is_stamped_in_order() {
    let url = start_sim(&["--ttft-ms", "20", "--itl-ms", "2"]).await;
    let record = send_one(&url, &completion_call(8), completion_body("a b c", 8)).await;
    assert!(record.ok(), "{record:?}");
    assert_eq!(record.status, Some(200));
    assert_eq!((record.content_events, record.reasoning_events), (8, 0));
    assert_eq!(record.content_event_ns.len(), 8);
    assert_eq!(record.usage_prompt_tokens, Some(3));
    assert_eq!(record.usage_completion_tokens, Some(8));
    assert_eq!(record.text.split_whitespace().count(), 8);
    let headers = record.headers_ns.unwrap();
    let first = record.first_content_ns.unwrap();
    assert!(record.sent_ns <= headers && headers <= record.first_byte_ns.unwrap());
    assert!(record.first_event_ns.unwrap() <= first);
    assert!(first - record.sent_ns >= 20_000_000, "{record:?}");
    assert!(record.content_event_ns.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(record.last_event_ns, record.content_event_ns.last().copied());
    assert!(record.last_event_ns.unwrap() <= record.end_ns);
}

#[tokio::test]
async fn reasoning_is_not_content() {
    let url = start_sim(&["--reasoning-tokens", "3", "--itl-ms", "2"]).await;
    let body = json!({"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
        "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
    let record = send_one(&url, &chat_call(8), body).await;
    assert!(record.ok(), "{record:?}");
    assert_eq!((record.reasoning_events, record.content_events), (3, 5));
    assert!(record.first_reasoning_ns.unwrap() < record.first_content_ns.unwrap());
    assert_eq!(record.first_event_ns, record.first_reasoning_ns); // role chunk shares the write
    assert_eq!(record.text.split_whitespace().count(), 5);
    assert_eq!(record.usage_completion_tokens, Some(8));
}

#[tokio::test]
async fn a_plain_json_answer_is_one_event() {
    let url = start_sim(&[]).await;
    let mut call = completion_call(5);
    call.stream = StreamFormat::None;
    let body = json!({"model": "sim", "prompt": "x y", "max_tokens": 5, "ignore_eos": true});
    let record = send_one(&url, &call, body).await;
    assert!(record.ok(), "{record:?}");
    assert_eq!(record.content_events, 1);
    assert_eq!(record.usage_completion_tokens, Some(5));
    assert_eq!(record.text.split_whitespace().count(), 5);
}

#[tokio::test]
async fn failures_are_recorded_by_kind() {
    let url = start_sim(&["--error-rate", "1.0"]).await;
    let record = send_one(&url, &completion_call(4), completion_body("a", 4)).await;
    assert_eq!(record.error, Some(ErrorKind::Status(500)));
    assert_eq!(record.status, Some(500));
    assert!(record.error_detail.as_deref().unwrap().contains("simulated failure"));
    assert!(!record.ok() && record.end_ns >= record.sent_ns);

    // A port nobody listens on: bind one, then close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let record = send_one(&dead, &completion_call(4), completion_body("a", 4)).await;
    assert_eq!(record.error, Some(ErrorKind::Connect), "{record:?}");

    let url = start_sim(&[]).await;
    let record = send_one(&url, &completion_call(4), json!({"prompt": 1})).await;
    assert_eq!(record.error, Some(ErrorKind::Status(400)));
}

#[tokio::test]
async fn control_calls() {
    let url = start_sim(&[]).await;
    let client = EngineClient::new(&format!("{url}/"), vec![("x-k".into(), "v".into())], 4).unwrap();
    assert_eq!(client.base_url(), url);
    let (status, body) = client.get("/health", Duration::from_secs(5)).await.unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    assert_eq!(client.get("/nope", Duration::from_secs(5)).await.unwrap().0, 404);
    assert_eq!(client.get_json("/version").await.unwrap()["version"], "kitt-sim 0.1.0");
    let (tokenize, pointer) = tokenize_call();
    assert_eq!(client.count_tokens(&tokenize, &pointer, " a b  c").await.unwrap(), 3);
    assert_eq!(client.count_tokens(&tokenize, "/count", "a b").await.unwrap(), 2);
    let missing = client.count_tokens(&tokenize, "/nope", "a").await.unwrap_err();
    assert!(matches!(missing, ClientError::Pointer { .. }), "{missing}");
    let status = client.post_json("/v1/completions", &json!({})).await.unwrap_err();
    assert!(status.to_string().starts_with(&format!("{url}/v1/completions answered HTTP 400")), "{status}");

    let bad = EngineClient::new("localhost:8000", vec![], 1).err().unwrap();
    assert!(bad.to_string().contains("invalid engine URL"), "{bad}");
    let bad = EngineClient::new("http://h", vec![("a b".into(), "secret".into())], 1).err().unwrap();
    assert!(!bad.to_string().contains("secret"), "{bad}");
}

/// A server like llama.cpp's: it advertises keep-alive, answers one request per connection
/// (after `delay`), then reads the next request on that connection and closes it unanswered.
/// Returns its base URL.
async fn closing_server(content_type: &'static str, body: &'static str, delay: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nKeep-Alive: timeout=5, max=100\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.read(&mut buf).await;
            });
        }
    });
    url
}

const ONE_TOKEN_STREAM: &str = "data: {\"choices\":[{\"text\":\" w1\"}]}\n\ndata: [DONE]\n\n";

/// The second request goes out on the pooled (dead) connection and must be resent.
#[tokio::test]
async fn a_connection_closed_after_keep_alive_is_resent_once() {
    let url = closing_server("text/event-stream", ONE_TOKEN_STREAM, Duration::ZERO).await;
    let call = completion_call(1);
    let client = EngineClient::new(&url, Vec::new(), 4).unwrap();
    let origin = Instant::now();
    let mut first = RequestRecord::default();
    client.send(&call, b"{}", origin, &mut first).await;
    assert!(first.ok(), "{first:?}");
    let mut second = RequestRecord::default();
    client.send(&call, b"{}", origin, &mut second).await;
    assert!(second.ok(), "{second:?}");
    assert_eq!(second.connection_retries, 1);
    assert_eq!(second.content_events, 1);
}

/// Control calls (tokenize, version, health) meet the same closed kept-alive connections.
#[tokio::test]
async fn control_calls_resend_on_a_connection_the_server_closed() {
    let url = closing_server("application/json", r#"{"tokens":[1,2,3]}"#, Duration::ZERO).await;
    let client = EngineClient::new(&url, Vec::new(), 4).unwrap();
    let (req, pointer) = tokenize_call();
    for _ in 0..3 {
        assert_eq!(client.count_tokens(&req, &pointer, "a b c").await.unwrap(), 3);
        assert_eq!(client.get("/health", Duration::from_secs(2)).await.unwrap().0, 200);
    }
}

/// With several kept-alive connections all closed by the server, a request that meets one is
/// resent once, on a new connection, not on the next pooled (and dead) one.
#[tokio::test]
async fn a_dead_pooled_connection_is_followed_by_a_new_one_not_another_pooled_one() {
    // Slow enough that four requests hold four connections at once.
    let url = closing_server("text/event-stream", ONE_TOKEN_STREAM, Duration::from_millis(30)).await;
    let call = completion_call(1);
    let client = EngineClient::new(&url, Vec::new(), 8).unwrap();
    let origin = Instant::now();
    // Four at once leave four kept-alive connections in the pool, all of which the server will
    // close on their next request.
    let mut handles = Vec::new();
    for _ in 0..4 {
        let (client, call) = (client.clone(), call.clone());
        handles.push(tokio::spawn(async move {
            let mut r = RequestRecord::default();
            client.send(&call, b"{}", origin, &mut r).await;
            r
        }));
    }
    for h in handles {
        assert!(h.await.unwrap().ok());
    }
    let opened = client.inner.transport.opened();
    // One request alone then meets a dead connection, and goes out once more on a new one.
    let mut r = RequestRecord::default();
    client.send(&call, b"{}", origin, &mut r).await;
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.connection_retries, 1, "{r:?}");
    assert_eq!(client.inner.transport.opened(), opened + 1);
}

/// One client, two templates with different pointers: each answer is read with its own template's
/// pointers, not those of the first template the client saw.
#[tokio::test]
async fn each_template_is_read_with_its_own_pointers() {
    let url = start_sim(&[]).await;
    let client = EngineClient::new(&url, vec![], 1).unwrap();
    let origin = Instant::now();
    let mut completion = RequestRecord::default();
    let body = completion_body("a b", 3).to_string();
    client.send(&completion_call(3), body.as_bytes(), origin, &mut completion).await;
    assert!(completion.ok(), "{completion:?}");
    assert_eq!(completion.content_events, 3);
    let mut chat = RequestRecord::default();
    let body = json!({"model": "sim", "messages": [{"role": "user", "content": "a b"}], "max_tokens": 4,
        "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}})
    .to_string();
    client.send(&chat_call(4), body.as_bytes(), origin, &mut chat).await;
    assert!(chat.ok(), "{chat:?}");
    assert_eq!((chat.content_events, chat.usage_completion_tokens), (4, Some(4)));
}
