use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::*;

#[derive(Parser)]
pub(super) struct Cli {
    #[command(flatten)]
    pub(super) sim: SimArgs,
}

/// Starts a simulator on a free port with these `kitt sim` flags; returns its base URL.
pub(super) async fn start(flags: &[&str]) -> String {
    crate::engine::client::crypto_provider(); // reqwest's test clients need the process-wide one
    let args = Cli::parse_from(["sim", "--port", "0"].iter().chain(flags)).sim;
    let listener = bind(&args).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve_on(listener, args, std::future::pending()));
    url
}

pub(super) async fn post(url: &str, path: &str, body: &Value) -> reqwest::Response {
    let request = reqwest::Client::new().post(format!("{url}{path}"));
    request.header("content-type", "application/json").body(body.to_string()).send().await.unwrap()
}

pub(super) async fn json_of(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

/// The SSE events of one streamed answer, `[DONE]` checked and dropped.
async fn events(url: &str, path: &str, body: &Value) -> Vec<Value> {
    let response = post(url, path, body).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let mut payloads: Vec<&str> = text.split_terminator("\n\n").map(|e| e.strip_prefix("data: ").unwrap()).collect();
    assert_eq!(payloads.pop(), Some("[DONE]"), "{text}");
    payloads.into_iter().map(|p| serde_json::from_str(p).unwrap()).collect()
}

fn words(value: &Value) -> usize {
    value.as_str().map_or(0, |s| s.split_whitespace().count())
}

fn completion(max_tokens: u32, extra: Value) -> Value {
    let mut body = json!({"model": "sim", "prompt": "one two three", "max_tokens": max_tokens, "stream": true});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn streamed_chunks_group_tokens_and_usage_counts_them() {
    let url = start(&["--tokens-per-chunk", "4"]).await;
    let body = completion(10, json!({"ignore_eos": true, "stream_options": {"include_usage": true}}));
    let events = events(&url, "/v1/completions", &body).await;
    let (usage, tokens) = events.split_last().unwrap();
    let sizes: Vec<usize> = tokens.iter().map(|e| words(&e["choices"][0]["text"])).collect();
    assert_eq!(sizes, [4, 4, 2]);
    let finishes: Vec<&Value> = tokens.iter().map(|e| &e["choices"][0]["finish_reason"]).collect();
    assert_eq!(finishes, [&Value::Null, &Value::Null, &json!("length")]);
    assert_eq!(tokens[0]["object"], "text_completion");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], json!({"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13}));
}

#[tokio::test]
async fn usage_chunk_only_when_asked_and_allowed() {
    let url = start(&[]).await;
    let plain = events(&url, "/v1/completions", &completion(5, json!({}))).await;
    assert!(plain.iter().all(|e| e.get("usage").is_none() && e["choices"] != json!([])));
    let asked = completion(5, json!({"stream_options": {"include_usage": true}}));
    assert!(events(&url, "/v1/completions", &asked).await.last().unwrap().get("usage").is_some());

    let no_usage = start(&["--usage", "false"]).await;
    let streamed = events(&no_usage, "/v1/completions", &asked).await;
    assert!(streamed.iter().all(|e| e.get("usage").is_none()));
    let whole = json_of(post(&no_usage, "/v1/completions", &completion(5, json!({"stream": false}))).await).await;
    assert!(whole.get("usage").is_none() && whole["choices"][0]["text"].is_string());
}

#[tokio::test]
async fn reasoning_deltas_come_first_and_stay_out_of_content() {
    let url = start(&["--reasoning-tokens", "3", "--tokens-per-chunk", "2"]).await;
    let body = json!({"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 8,
        "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
    let events = events(&url, "/v1/chat/completions", &body).await;
    assert_eq!(events[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    let deltas: Vec<&Value> = events[1..events.len() - 1].iter().map(|e| &e["choices"][0]["delta"]).collect();
    let kinds: Vec<(bool, usize)> = deltas
        .iter()
        .map(|d| match (d.get("reasoning_content"), d.get("content")) {
            (Some(r), None) => (true, words(r)),
            (None, Some(c)) => (false, words(c)),
            _ => panic!("a delta mixes reasoning and content: {d}"),
        })
        .collect();
    assert_eq!(kinds, [(true, 2), (true, 1), (false, 2), (false, 2), (false, 1)]);
    assert_eq!(events.last().unwrap()["usage"]["completion_tokens"], 8);

    let whole = completion(8, json!({"ignore_eos": true, "stream": false}));
    let whole = json_of(post(&url, "/v1/completions", &whole).await).await;
    assert_eq!(words(&whole["choices"][0]["reasoning_content"]), 3);
    assert_eq!(words(&whole["choices"][0]["text"]), 5);
}

#[tokio::test]
async fn answers_depend_only_on_seed_and_body() {
    let (a, b, other_seed) = (start(&["--seed", "7"]).await, start(&["--seed", "7"]).await, start(&[]).await);
    let bodies: Vec<Value> = (0..8)
        .map(|i| json!({"prompt": format!("prompt {i}"), "max_tokens": 40, "min_tokens": 5, "stream": true}))
        .collect();
    let answer = |url: String, body: Value| async move {
        let events = events(&url, "/v1/completions", &body).await;
        let text: String = events.iter().filter_map(|e| e["choices"][0]["text"].as_str()).collect();
        (text, events.last().unwrap()["choices"][0]["finish_reason"].clone())
    };
    let mut first = Vec::new();
    for body in &bodies {
        first.push(answer(a.clone(), body.clone()).await);
    }
    for (body, expected) in bodies.iter().zip(&first).rev() {
        assert_eq!(&answer(b.clone(), body.clone()).await, expected);
        let length = words(&json!(expected.0));
        assert!((5..=40).contains(&length), "{length}");
        assert_eq!(expected.1, if length == 40 { "length" } else { "stop" });
    }
    assert!(first.windows(2).any(|w| w[0].0.split_whitespace().count() != w[1].0.split_whitespace().count()));
    assert_ne!(answer(other_seed, bodies[0].clone()).await, first[0]);
}

#[tokio::test]
async fn delays_follow_ttft_then_itl_per_token() {
    let url = start(&["--ttft-ms", "50", "--itl-ms", "10", "--tokens-per-chunk", "2"]).await;
    let sent = Instant::now();
    let response = post(&url, "/v1/completions", &completion(6, json!({"ignore_eos": true}))).await;
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    assert!(sent.elapsed() >= Duration::from_millis(50), "{:?}", sent.elapsed());
    while body.next().await.is_some() {}
    assert!(sent.elapsed() >= Duration::from_millis(90), "{:?}", sent.elapsed());
}

#[tokio::test]
async fn error_rate_fails_a_deterministic_share() {
    let url = start(&["--error-rate", "1.0"]).await;
    let response = post(&url, "/v1/completions", &completion(5, json!({}))).await;
    assert_eq!(response.status(), 500);
    let error = json!({"error": {"message": "simulated failure", "type": "server_error", "code": 500}});
    assert_eq!(json_of(response).await, error);

    let half = start(&["--error-rate", "0.5"]).await;
    let mut failed = Vec::new();
    for i in 0..20 {
        let body = completion(5, json!({"prompt": format!("p{i}"), "stream": false}));
        let status = post(&half, "/v1/completions", &body).await.status();
        assert_eq!(post(&half, "/v1/completions", &body).await.status(), status);
        failed.push(status == 500);
    }
    assert!(failed.contains(&true) && failed.contains(&false), "{failed:?}");
}

#[tokio::test]
async fn request_log_has_one_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let url = start(&["--request-log", log.to_str().unwrap()]).await;
    reqwest::get(format!("{url}/health")).await.unwrap();
    let body = completion(3, json!({"stream": false}));
    post(&url, "/v1/completions", &body).await.bytes().await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        lines,
        [
            json!({"seq": 0, "method": "GET", "path": "/health", "body": null}),
            json!({"seq": 1, "method": "POST", "path": "/v1/completions", "body": body}),
        ]
    );
}

#[tokio::test]
async fn tokenize_counts_words_in_both_shapes() {
    let url = start(&[]).await;
    let vllm = json_of(post(&url, "/tokenize", &json!({"prompt": "a b  c\nd a"})).await).await;
    let llama = json_of(post(&url, "/tokenize", &json!({"content": "a b  c\nd a"})).await).await;
    assert_eq!(vllm, llama);
    assert_eq!(vllm["count"], 5);
    assert_eq!((&vllm["max_model_len"], &vllm["token_strs"]), (&json!(4096), &Value::Null));
    let tokens: Vec<u64> = vllm["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    assert!(tokens[0] == tokens[4] && tokens[0] != tokens[1] && tokens.iter().all(|&t| t < 32_000));
}

#[tokio::test]
async fn non_streaming_answers_have_the_openai_shape() {
    let url = start(&["--server-version", "sim 9", "--model", "m"]).await;
    let body = completion(7, json!({"model": "m", "ignore_eos": true, "stream": false}));
    let response = post(&url, "/v1/completions", &body).await;
    assert_eq!(response.headers()["server"], "sim 9");
    assert_eq!(response.headers()["content-type"], "application/json");
    let mut answer = json_of(response).await;
    assert!(answer["id"].as_str().unwrap().starts_with("cmpl-") && answer["created"].is_u64());
    assert_eq!(words(&answer["choices"][0]["text"].take()), 7);
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(answer["model"], "m");
    let choice = json!({"index": 0, "text": null, "logprobs": null, "finish_reason": "length", "stop_reason": null});
    assert_eq!(answer["choices"], json!([choice]));
    assert_eq!(answer["usage"], json!({"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}));

    let chat = json!({"messages": [{"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "say hi"}]}], "max_completion_tokens": 4, "ignore_eos": true});
    let mut answer = json_of(post(&url, "/v1/chat/completions", &chat).await).await;
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(words(&answer["choices"][0]["message"]["content"].take()), 4);
    assert_eq!(answer["choices"][0]["message"], json!({"role": "assistant", "content": null}));
    assert_eq!(answer["usage"]["prompt_tokens"], 4);
}

#[tokio::test]
async fn routes_and_request_errors() {
    let url = start(&["--server-version", "v2", "--model", "m"]).await;
    let get = |path: &str| reqwest::get(format!("{url}{path}"));
    assert_eq!(json_of(get("/health").await.unwrap()).await, json!({"status": "ok"}));
    assert_eq!(json_of(get("/version").await.unwrap()).await, json!({"version": "v2"}));
    let mut models = json_of(get("/v1/models").await.unwrap()).await;
    assert!(models["data"][0]["created"].take().is_u64());
    let card = json!({"id": "m", "object": "model", "created": null, "owned_by": "vllm", "root": "m", "parent": null,
        "max_model_len": 4096});
    assert_eq!(models, json!({"object": "list", "data": [card]}));
    let missing = get("/nope").await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(json_of(missing).await["error"]["code"], 404);
    assert_eq!(get("/v1/completions").await.unwrap().status(), 405);

    let client = reqwest::Client::new();
    let malformed = client.post(format!("{url}/v1/completions")).body("{\"prompt\": ").send().await.unwrap();
    assert_eq!(malformed.status(), 400);
    let error = json_of(malformed).await;
    assert!(error["error"]["message"].as_str().unwrap().starts_with("invalid JSON body: EOF"), "{error}");
    let no_prompt = post(&url, "/v1/completions", &json!({"max_tokens": 3})).await;
    assert_eq!(json_of(no_prompt).await["error"]["message"], "`prompt` is required");
    // vLLM refuses a model it does not serve.
    let other = post(&url, "/v1/completions", &completion(3, json!({"model": "other"}))).await;
    assert_eq!(other.status(), 404);
    let error =
        json!({"error": {"message": "The model `other` does not exist.", "type": "NotFoundError", "code": 404}});
    assert_eq!(json_of(other).await, error);
}

#[tokio::test]
async fn serve_returns_when_shutdown_resolves() {
    let args = Cli::parse_from(["sim", "--port", "0"]).sim;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(args, async move {
        let _ = stopped.await;
    }));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_required_header_guards_every_route_and_is_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let flags = ["--require-header", "Authorization: Bearer s3cret", "--require-header", "X-Tenant:a"];
    let url = start(&[&flags[..], &["--request-log", log.to_str().unwrap()]].concat()).await;
    let client = reqwest::Client::new();
    let get = |headers: &[(&str, &str)]| {
        let mut request = client.get(format!("{url}/health"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    let unauthorized = |name: &str| {
        let message = format!("missing or wrong {name} header");
        json!({"error": {"message": message, "type": "authentication_error", "code": 401}})
    };
    let anonymous = get(&[]).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(json_of(anonymous).await, unauthorized("Authorization"));
    let wrong = get(&[("authorization", "Bearer s3cre"), ("x-tenant", "a")]).await.unwrap();
    assert_eq!(json_of(wrong).await, unauthorized("Authorization"));
    let half = get(&[("authorization", "Bearer s3cret")]).await.unwrap();
    assert_eq!(json_of(half).await, unauthorized("X-Tenant"));
    let allowed = get(&[("authorization", "Bearer s3cret"), ("x-tenant", "a")]).await.unwrap();
    assert_eq!(json_of(allowed).await, json!({"status": "ok"}));
    let refused = post(&url, "/v1/completions", &completion(3, json!({"stream": false}))).await;
    assert_eq!(refused.status(), 401);

    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged.lines().count(), 5, "{logged}");
    assert!(!logged.contains("s3cret"), "{logged}");

    let args = Cli::parse_from(["sim"].iter().chain(&flags)).sim;
    assert_eq!(args.require_headers.len(), 2);
    assert!(!format!("{args:?}").contains("s3cret"), "{args:?}");
    for bad in ["Authorization Bearer s3cret", "Author ization: s3cret", "Authorization: s3cret\u{7f}", "X-Key: "] {
        let error = Cli::try_parse_from(["sim", "--require-header", bad]).err().unwrap().to_string();
        assert!(error.contains("invalid --require-header") && !error.contains("s3cret"), "{error}");
    }
}

#[test]
fn tls_needs_both_a_certificate_and_a_key_that_exist() {
    let error = Cli::try_parse_from(["sim", "--tls-cert", "c.pem"]).err().unwrap();
    assert_eq!(error.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{error}");
    let args = Cli::parse_from(["sim", "--tls-cert", "/nonexistent/c.pem", "--tls-key", "k.pem"]).sim;
    let error = Sim::new(args).err().unwrap().to_string();
    assert!(error.starts_with("cannot read --tls-cert /nonexistent/c.pem: "), "{error}");
}
