//! `--api tgi`: Hugging Face text-generation-inference's router API (`router/src/server.rs`,
//! `router/src/lib.rs`): `/generate`, `/generate_stream`, `POST /` (compat), `/v1/chat/completions`,
//! `/tokenize`, `/info`, `/health`, `/metrics`, `/v1/models`.
//!
//! Owns TGI's shapes: SSE lines written `data:{…}` (axum 0.7, no space), one event per token even
//! when several tokens leave in one write, `index` counting from 1, the last event carrying
//! `generated_text` and (with `parameters.details`) `details`; an answer that stops early ends with
//! the end-of-sequence token itself, a `special` token that counts in `generated_tokens` but not in
//! `generated_text` (TGI streams it; its chat API sends it as an empty delta). Errors inside a
//! stream arrive as an event with HTTP 200, as TGI sends them. TGI has no reasoning output, so
//! `--reasoning-tokens` does not apply.

use std::fmt::Write as _;

use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::fault::Call;
use super::generation::{self, Generation, Limits};
use super::openai::{Message, StreamOptions, message_tokens};
use super::stream::{SimBody, Wire};
use super::{Sim, json_response, response, text_response};

/// Tokens of one validated chunk of generation in TGI's router (`DEFAULT_GENERATION_LENGTH`): its
/// `max_total_tokens` check uses at most this many new tokens.
const GENERATION_CHUNK: u32 = 1024;
/// The end-of-sequence token a stopped answer ends with.
const EOS_ID: u32 = 2;
const EOS_TEXT: &str = "</s>";

#[derive(Deserialize)]
struct GenerateRequest {
    inputs: String,
    #[serde(default)]
    parameters: Parameters,
    /// Only `POST /` reads it.
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize, Default)]
struct Parameters {
    max_new_tokens: Option<u32>,
    #[serde(default)]
    details: bool,
    return_full_text: Option<bool>,
    seed: Option<u64>,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<Message>,
    #[serde(alias = "max_completion_tokens")]
    max_tokens: Option<u32>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct TokenizeRequest {
    inputs: String,
}

/// Which of TGI's routes count toward faults (`--fault`), each class on its own.
pub(super) fn call(method: &Method, path: &str) -> Call {
    match (method, path) {
        (&Method::POST, "/generate" | "/generate_stream" | "/" | "/v1/chat/completions") => Call::Generation,
        (&Method::POST, "/tokenize") => Call::Tokenize,
        (&Method::GET, "/health" | "/" | "/ping") => Call::Health,
        _ => Call::Other,
    }
}

pub(super) async fn route(sim: &Sim, method: &Method, path: &str, body: &[u8], start: Instant) -> Response<SimBody> {
    match (method, path) {
        (&Method::GET, "/health" | "/" | "/ping") => response(StatusCode::OK, "text/plain", SimBody::Full(None)),
        (&Method::GET, "/info") => json_response(StatusCode::OK, info(sim)),
        (&Method::GET, "/metrics") => text_response(StatusCode::OK, "text/plain", sim.counters.render_tgi()),
        (&Method::GET, "/v1/models") => {
            let card = json!({"id": sim.model(), "object": "model", "created": 0, "owned_by": sim.model()});
            json_response(StatusCode::OK, json!({"object": "list", "data": [card]}))
        }
        (&Method::POST, "/tokenize") => match decode::<TokenizeRequest>(body) {
            Ok(req) => json_response(StatusCode::OK, tokenize(&req.inputs)),
            Err(rejection) => rejected(rejection),
        },
        (&Method::POST, "/generate") => generate(sim, body, start, Delivery::Whole).await,
        (&Method::POST, "/generate_stream") => generate(sim, body, start, Delivery::Stream).await,
        (&Method::POST, "/") => generate(sim, body, start, Delivery::Compat).await,
        (&Method::POST, "/v1/chat/completions") => chat(sim, body, start).await,
        (_, "/health" | "/" | "/ping" | "/info" | "/metrics" | "/v1/models" | "/tokenize" | "/generate")
        | (_, "/generate_stream" | "/v1/chat/completions") => {
            response(StatusCode::METHOD_NOT_ALLOWED, "text/plain", SimBody::Full(None))
        }
        _ => response(StatusCode::NOT_FOUND, "text/plain", SimBody::Full(None)),
    }
}

/// `GET /info`, field for field as TGI's `Info`.
fn info(sim: &Sim) -> Value {
    json!({
        "model_id": sim.model(), "model_sha": null, "model_pipeline_tag": null,
        "max_concurrent_requests": 128, "max_best_of": 2, "max_stop_sequences": 4,
        "max_input_tokens": sim.served.max_input_tokens, "max_total_tokens": sim.served.max_model_len,
        "validation_workers": 2, "max_client_batch_size": 4, "router": "text-generation-router",
        "version": sim.args.server_version, "sha": null, "docker_label": null,
    })
}

/// `POST /tokenize`: one token per word, with its byte offsets in `inputs`.
fn tokenize(inputs: &str) -> Value {
    let mut tokens = Vec::new();
    let mut at = 0;
    for word in inputs.split_whitespace() {
        let start = at + inputs[at..].find(word).unwrap_or(0); // `word` was split out of `inputs[at..]`
        let stop = start + word.len();
        tokens.push(json!({"id": generation::word_id(word), "text": word, "start": start, "stop": stop}));
        at = stop;
    }
    Value::Array(tokens)
}

/// A JSON body, or axum's rejection of it (400 for bad JSON, 422 for the wrong shape).
fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, (StatusCode, String)> {
    serde_json::from_slice(body).map_err(|e| {
        let (status, what) = match e.classify() {
            serde_json::error::Category::Data => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Failed to deserialize the JSON body into the target type")
            }
            _ => (StatusCode::BAD_REQUEST, "Failed to parse the request body as JSON"),
        };
        (status, format!("{what}: {e}"))
    })
}

/// axum answers a rejected body in plain text.
fn rejected((status, text): (StatusCode, String)) -> Response<SimBody> {
    text_response(status, "text/plain; charset=utf-8", text)
}

/// TGI's error object.
fn error_body(message: &str, kind: &str) -> Value {
    json!({"error": message, "error_type": kind})
}

pub(super) fn error_response(status: StatusCode, message: &str, kind: &str) -> Response<SimBody> {
    json_response(status, error_body(message, kind))
}

/// An error that a streaming endpoint sends as its only event (HTTP 200, as TGI's router does).
fn error_event(payload: &Value, done: bool) -> Response<SimBody> {
    let mut text = format!("data:{payload}\n\n");
    if done {
        text.push_str("data:[DONE]\n\n");
    }
    text_response(StatusCode::OK, "text/event-stream", text)
}

/// TGI's validation of a prompt of `input` tokens asking for `max_new` (`router/src/validation.rs`).
fn validate(sim: &Sim, input: u32, max_new: Option<u32>) -> Result<u32, String> {
    let invalid = |what: String| format!("Input validation error: {what}");
    if input == 0 {
        return Err(invalid("`inputs` cannot be empty".into()));
    }
    if max_new == Some(0) {
        return Err(invalid("`max_new_tokens` must be strictly positive".into()));
    }
    let max_total = sim.served.max_model_len;
    let max_new = max_new.unwrap_or(sim.args.output_tokens);
    let chunk = max_new.min(GENERATION_CHUNK);
    if u64::from(input) + u64::from(chunk) > u64::from(max_total) {
        return Err(invalid(format!(
            "`inputs` tokens + `max_new_tokens` must be <= {max_total}. Given: {input} `inputs` tokens and {chunk} `max_new_tokens`"
        )));
    }
    if input > sim.served.max_input_tokens {
        return Err(invalid(format!(
            "`inputs` must have less than {} tokens. Given: {input}",
            sim.served.max_input_tokens
        )));
    }
    Ok(max_new)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// `/generate`: one `GenerateResponse`.
    Whole,
    /// `/generate_stream`: SSE.
    Stream,
    /// `POST /`: SSE when the body says `stream: true`, else `[GenerateResponse]`.
    Compat,
}

async fn generate(sim: &Sim, body: &[u8], start: Instant, delivery: Delivery) -> Response<SimBody> {
    sim.counters.received();
    let req: GenerateRequest = match decode(body) {
        Ok(req) => req,
        Err(rejection) => {
            sim.counters.failed();
            return rejected(rejection);
        }
    };
    let stream = delivery == Delivery::Stream || (delivery == Delivery::Compat && req.stream);
    let prompt_tokens = generation::words(&req.inputs);
    let failure = |message: String, status, kind: &str| {
        sim.counters.failed();
        if stream { error_event(&error_body(&message, kind), false) } else { error_response(status, &message, kind) }
    };
    let max = match validate(sim, prompt_tokens, req.parameters.max_new_tokens) {
        Ok(max) => max,
        Err(message) => return failure(message, StatusCode::UNPROCESSABLE_ENTITY, "validation"),
    };
    let generation = generation::draw(&sim.args, body, prompt_tokens, Limits { max, min: None, ignore_eos: false }, 0);
    if generation.fails {
        let message = "Request failed during generation: simulated failure".to_string();
        return failure(message, StatusCode::FAILED_DEPENDENCY, "generation");
    }
    let prefix = if req.parameters.return_full_text.unwrap_or(false) { req.inputs } else { String::new() };
    let details = (req.parameters.details && sim.args.usage).then_some(req.parameters.seed);
    if stream {
        let wire = TokenEvents { prefix, details };
        return sim.stream(generation, Box::new(wire), "text/event-stream", start);
    }
    let generation = sim.settle(generation, start).await;
    let mut answer = json!({"generated_text": prefix + &generated_text(&generation)});
    if let Some(seed) = details {
        let tokens: Vec<Value> = (0..generation.total).map(|i| token_json(&generation, i)).collect();
        answer["details"] = json!({"finish_reason": finish_reason(&generation), "generated_tokens": generation.total,
            "seed": seed, "prefill": [], "tokens": tokens});
    }
    let answer = if delivery == Delivery::Compat { json!([answer]) } else { answer };
    json_response(StatusCode::OK, answer)
}

/// Whether token `i` is the end-of-sequence token that ends a stopped answer.
fn is_eos(generation: &Generation, i: u32) -> bool {
    !generation.length && i + 1 == generation.total
}

/// The text of every non-special token.
fn generated_text(generation: &Generation) -> String {
    let words = if generation.length { generation.total } else { generation.total - 1 };
    generation.text(0, words)
}

fn finish_reason(generation: &Generation) -> &'static str {
    if generation.length { "length" } else { "eos_token" }
}

fn token_json(generation: &Generation, i: u32) -> Value {
    let mut out = String::new();
    push_token(generation, i, &mut out);
    serde_json::from_str(&out).unwrap_or(Value::Null) // `push_token` writes a JSON object
}

/// Appends token `i` as TGI's `Token` object.
fn push_token(generation: &Generation, i: u32, out: &mut String) {
    let logprob = generation.logprob(i);
    if is_eos(generation, i) {
        let _ = write!(out, r#"{{"id":{EOS_ID},"text":"{EOS_TEXT}","logprob":{logprob},"special":true}}"#);
        return;
    }
    let _ = write!(out, r#"{{"id":{},"text":""#, generation.token_id(i));
    generation.push_token(out, i);
    let _ = write!(out, r#"","logprob":{logprob},"special":false}}"#);
}

/// `/generate_stream`: one `StreamResponse` event per token.
struct TokenEvents {
    /// The prompt, with `return_full_text`.
    prefix: String,
    /// `Some(seed)` when the request asked for `details` (and `--usage` allows them).
    details: Option<Option<u64>>,
}

impl Wire for TokenEvents {
    fn write(&mut self, generation: &Generation, from: u32, to: u32, out: &mut String) {
        for i in from..to {
            let _ = write!(out, r#"data:{{"index":{},"token":"#, i + 1);
            push_token(generation, i, out);
            if i + 1 < generation.total {
                out.push_str(r#","generated_text":null,"details":null}"#);
                out.push_str("\n\n");
                continue;
            }
            let text = Value::String(self.prefix.clone() + &generated_text(generation));
            let _ = write!(out, r#","generated_text":{text},"details":"#);
            match self.details {
                None => out.push_str("null"),
                Some(seed) => {
                    let details = json!({"finish_reason": finish_reason(generation), "generated_tokens": generation.total,
                        "seed": seed, "input_length": generation.prompt_tokens});
                    let _ = write!(out, "{details}");
                }
            }
            out.push_str("}\n\n");
        }
    }
}

async fn chat(sim: &Sim, body: &[u8], start: Instant) -> Response<SimBody> {
    sim.counters.received();
    let req: ChatRequest = match decode(body) {
        Ok(req) => req,
        Err(rejection) => {
            sim.counters.failed();
            return rejected(rejection);
        }
    };
    // TGI answers under its own model id unless the request names another (a LoRA adapter).
    let model = match req.model.as_deref() {
        Some("tgi") | None => sim.model().to_string(),
        Some(other) => other.to_string(),
    };
    let prompt_tokens = message_tokens(&req.messages);
    let failure = |message: String, kind: &str| {
        sim.counters.failed();
        if req.stream {
            error_event(&json!({"error": {"message": message, "http_status_code": 422}}), true)
        } else {
            let status =
                if kind == "generation" { StatusCode::FAILED_DEPENDENCY } else { StatusCode::UNPROCESSABLE_ENTITY };
            error_response(status, &message, kind)
        }
    };
    let max = match validate(sim, prompt_tokens, req.max_tokens) {
        Ok(max) => max,
        Err(message) => return failure(message, "validation"),
    };
    let generation = generation::draw(&sim.args, body, prompt_tokens, Limits { max, min: None, ignore_eos: false }, 0);
    if generation.fails {
        return failure("Request failed during generation: simulated failure".into(), "generation");
    }
    let fingerprint = format!("{}-native", sim.args.server_version);
    if req.stream {
        let include_usage = sim.args.usage && req.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
        let head = format!(
            r#"{{"object":"chat.completion.chunk","id":"","created":{},"model":{},"system_fingerprint":{},"#,
            sim.now_secs(),
            Value::String(model),
            Value::String(fingerprint)
        );
        let wire = ChatChunks { head, include_usage };
        return sim.stream(generation, Box::new(wire), "text/event-stream", start);
    }
    let generation = sim.settle(generation, start).await;
    let mut answer = json!({
        "object": "chat.completion", "id": "", "created": sim.now_secs(), "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": generated_text(&generation)},
            "logprobs": null, "finish_reason": chat_finish_reason(&generation)}],
    });
    if sim.args.usage {
        answer["usage"] = usage(&generation);
    }
    json_response(StatusCode::OK, answer)
}

/// The chat API reports an end-of-sequence stop as `stop` (`FinishReason::format(true)`).
fn chat_finish_reason(generation: &Generation) -> &'static str {
    if generation.length { "length" } else { "stop" }
}

fn usage(generation: &Generation) -> Value {
    let (prompt, completion) = (generation.prompt_tokens, generation.total);
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": u64::from(prompt) + u64::from(completion)})
}

/// TGI's `/v1/chat/completions` stream: one chunk per token (every delta repeats the role), then
/// the usage chunk when asked, then `[DONE]`.
struct ChatChunks {
    /// `{"object":…,"id":"","created":…,"model":…,"system_fingerprint":…,` of every chunk.
    head: String,
    include_usage: bool,
}

impl Wire for ChatChunks {
    fn write(&mut self, generation: &Generation, from: u32, to: u32, out: &mut String) {
        for i in from..to {
            out.push_str("data:");
            out.push_str(&self.head);
            out.push_str(r#""choices":[{"index":0,"delta":{"role":"assistant","content":""#);
            if !is_eos(generation, i) {
                generation.push_token(out, i);
            }
            out.push_str(r#""},"logprobs":null,"finish_reason":"#);
            if i + 1 < generation.total {
                out.push_str("null");
            } else {
                let _ = write!(out, r#""{}""#, chat_finish_reason(generation));
            }
            out.push_str("}],\"usage\":null}\n\n");
        }
        if to < generation.total {
            return;
        }
        if self.include_usage {
            let _ = write!(out, "data:{}\"choices\":[],\"usage\":{}}}\n\n", self.head, usage(generation));
        }
        out.push_str("data:[DONE]\n\n");
    }
}
