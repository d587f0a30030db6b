//! `--api openai`: the OpenAI-compatible API as vLLM serves it (`vllm/entrypoints/openai/`):
//! `/v1/completions`, `/v1/chat/completions`, `/v1/models`, `/tokenize`, `/version`, `/health`,
//! `/metrics`, and llama-server's `/props` (what `--mimic llama_cpp` needs beyond vLLM's shapes).
//!
//! Owns vLLM's shapes: a chat stream opens with a role-only delta, every streamed choice carries
//! `stop_reason`, the last choice its `finish_reason`, and the `choices: []` usage chunk comes only
//! when the request sets `stream_options.include_usage` (usage fields in vLLM's `UsageInfo` order).
//! A request naming a model the server does not serve is refused, as vLLM refuses it. `/health`
//! answers `{"status":"ok"}` (llama.cpp's body; vLLM's is empty) so one sim serves both.

use std::fmt::Write as _;

use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::fault::Call;
use super::generation::{self, Generation, Limits};
use super::stream::{SimBody, Wire};
use super::{Sim, error_response, json_response, not_allowed, text_response};

/// The OpenAI endpoint a request came through; it picks the chunk and response shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Completions,
    Chat,
}

/// The body fields the simulator honours; unknown fields (`stop`, `temperature`, …) are accepted and ignored.
#[derive(Deserialize)]
struct GenerateRequest {
    model: Option<String>,
    prompt: Option<Prompt>,
    messages: Option<Vec<Message>>,
    content: Option<String>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    min_tokens: Option<u32>,
    ignore_eos: Option<bool>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

#[derive(Deserialize)]
pub(super) struct Message {
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    text: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct StreamOptions {
    pub include_usage: Option<bool>,
}

impl Message {
    fn texts(&self) -> impl Iterator<Item = &str> {
        let (text, parts) = match &self.content {
            None => (None, &[][..]),
            Some(Content::Text(text)) => (Some(text.as_str()), &[][..]),
            Some(Content::Parts(parts)) => (None, parts.as_slice()),
        };
        text.into_iter().chain(parts.iter().filter_map(|p| p.text.as_deref()))
    }
}

/// Prompt tokens of a chat: the words of every message's text (OpenAI content parts included).
pub(super) fn message_tokens(messages: &[Message]) -> u32 {
    messages.iter().flat_map(Message::texts).map(generation::words).fold(0, u32::saturating_add)
}

/// Which of vLLM's routes count toward faults (`--fault`), each class on its own.
pub(super) fn call(method: &Method, path: &str) -> Call {
    match (method, path) {
        (&Method::POST, "/v1/completions" | "/v1/chat/completions") => Call::Generation,
        (&Method::POST, "/tokenize") => Call::Tokenize,
        (&Method::GET, "/health") => Call::Health,
        _ => Call::Other,
    }
}

pub(super) async fn route(sim: &Sim, method: &Method, path: &str, body: &[u8], start: Instant) -> Response<SimBody> {
    match (method, path) {
        (&Method::GET, "/health") => json_response(StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, "/version") => json_response(StatusCode::OK, json!({"version": sim.args.server_version})),
        (&Method::GET, "/v1/models") => json_response(StatusCode::OK, models(sim)),
        (&Method::GET, "/props") => json_response(StatusCode::OK, props(sim)),
        (&Method::GET, "/metrics") => text_response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            sim.counters.render_vllm(sim.model()),
        ),
        (&Method::POST, "/tokenize") => match tokenize(body) {
            Ok(tokens) => {
                let count = tokens.len();
                let answer = json!({"count": count, "max_model_len": sim.served.max_model_len, "tokens": tokens,
                    "token_strs": null});
                json_response(StatusCode::OK, answer)
            }
            Err(message) => error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &message),
        },
        (&Method::POST, "/v1/completions") => generate(sim, Endpoint::Completions, body, start).await,
        (&Method::POST, "/v1/chat/completions") => generate(sim, Endpoint::Chat, body, start).await,
        (
            _,
            "/health"
            | "/version"
            | "/v1/models"
            | "/props"
            | "/metrics"
            | "/tokenize"
            | "/v1/completions"
            | "/v1/chat/completions",
        ) => not_allowed(method, path),
        _ => error_response(StatusCode::NOT_FOUND, "not_found_error", &format!("no route for {method} {path}")),
    }
}

/// vLLM's model list: one card per served name.
fn models(sim: &Sim) -> Value {
    let cards: Vec<Value> = sim
        .served
        .models
        .iter()
        .map(|name| {
            json!({"id": name, "object": "model", "created": sim.started_secs, "owned_by": "vllm",
                "root": sim.served.root, "parent": null, "max_model_len": sim.served.max_model_len})
        })
        .collect();
    json!({"object": "list", "data": cards})
}

/// llama-server's `/props`: the build (where kitt's llama.cpp template reads the version), the
/// model's names and the context size each slot has.
fn props(sim: &Sim) -> Value {
    json!({"build_info": sim.args.server_version, "model_path": sim.served.root,
        "model_alias": sim.served.models.join(","),
        "default_generation_settings": {"n_ctx": sim.served.max_model_len}})
}

/// `/tokenize` in both shapes: vLLM's `{"prompt"}` (or `{"messages"}`) and llama.cpp's `{"content"}`.
fn tokenize(body: &[u8]) -> Result<Vec<u32>, String> {
    let req: GenerateRequest = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    Ok(match (&req.prompt, &req.content, &req.messages) {
        (Some(Prompt::Text(text)), _, _) | (None, Some(text), _) => generation::token_ids(text),
        (Some(Prompt::Ids(ids)), _, _) => ids.clone(),
        (None, None, Some(messages)) => {
            messages.iter().flat_map(Message::texts).flat_map(generation::token_ids).collect()
        }
        (None, None, None) => return Err("one of `prompt`, `content` or `messages` is required".into()),
    })
}

/// A decided answer and how this request wants it delivered.
struct Answer {
    generation: Generation,
    stream: bool,
    /// Streaming only: send the `choices: []` usage chunk before `[DONE]`.
    stream_usage: bool,
}

/// Reads a `/v1/completions` or `/v1/chat/completions` body; `Err` is a 400 message.
fn plan(sim: &Sim, endpoint: Endpoint, body: &[u8]) -> Result<Answer, (StatusCode, &'static str, String)> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, "invalid_request_error", message);
    let req: GenerateRequest = serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    if let Some(model) = &req.model
        && !sim.served.models.contains(model)
    {
        return Err((StatusCode::NOT_FOUND, "NotFoundError", format!("The model `{model}` does not exist.")));
    }
    let prompt_tokens = match endpoint {
        Endpoint::Completions => {
            req.prompt.as_ref().map(Prompt::tokens).ok_or_else(|| bad("`prompt` is required".into()))?
        }
        Endpoint::Chat => {
            req.messages.as_deref().map(message_tokens).ok_or_else(|| bad("`messages` is required".into()))?
        }
    };
    let max = match endpoint {
        Endpoint::Completions => req.max_tokens,
        Endpoint::Chat => req.max_completion_tokens.or(req.max_tokens),
    }
    .unwrap_or(sim.args.output_tokens);
    if max == 0 {
        return Err(bad("`max_tokens` must be at least 1".into()));
    }
    let limits = Limits { max, min: req.min_tokens, ignore_eos: req.ignore_eos.unwrap_or(false) };
    Ok(Answer {
        generation: generation::draw(&sim.args, body, prompt_tokens, limits, sim.args.reasoning_tokens),
        stream: req.stream.unwrap_or(false),
        stream_usage: sim.args.usage && req.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
    })
}

impl Prompt {
    fn tokens(&self) -> u32 {
        match self {
            Prompt::Text(text) => generation::words(text),
            Prompt::Ids(ids) => generation::saturate(ids.len()),
        }
    }
}

async fn generate(sim: &Sim, endpoint: Endpoint, body: &[u8], start: Instant) -> Response<SimBody> {
    sim.counters.received();
    let answer = match plan(sim, endpoint, body) {
        Ok(answer) => answer,
        Err((status, kind, message)) => {
            sim.counters.failed();
            return error_response(status, kind, &message);
        }
    };
    if answer.generation.fails {
        sim.counters.failed();
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "simulated failure");
    }
    let id = match endpoint {
        Endpoint::Completions => format!("cmpl-{:016x}", answer.generation.hash),
        Endpoint::Chat => format!("chatcmpl-{:016x}", answer.generation.hash),
    };
    if answer.stream {
        let object = match endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion.chunk",
        };
        let head =
            format!(r#"{{"id":"{id}","object":"{object}","created":{},"model":{},"#, sim.now_secs(), sim.model_json);
        let wire = Chunks { endpoint, head, stream_usage: answer.stream_usage };
        return sim.stream(answer.generation, Box::new(wire), "text/event-stream", start);
    }
    let generation = sim.settle(answer.generation, start).await;
    json_response(StatusCode::OK, response(sim, endpoint, &generation, &id))
}

/// The whole non-streaming response object.
fn response(sim: &Sim, endpoint: Endpoint, generation: &Generation, id: &str) -> Value {
    let reasoning = generation.text(0, generation.reasoning);
    let text = generation.text(generation.reasoning, generation.total);
    let mut choice = match endpoint {
        Endpoint::Completions => json!({"index": 0, "text": text}),
        Endpoint::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text}}),
    };
    if generation.reasoning > 0 {
        let at = match endpoint {
            Endpoint::Completions => &mut choice,
            Endpoint::Chat => &mut choice["message"],
        };
        at["reasoning_content"] = Value::String(reasoning);
    }
    choice["logprobs"] = Value::Null;
    choice["finish_reason"] = finish_reason(generation).into();
    choice["stop_reason"] = Value::Null;
    let object = match endpoint {
        Endpoint::Completions => "text_completion",
        Endpoint::Chat => "chat.completion",
    };
    let mut response = json!({
        "id": id, "object": object, "created": sim.now_secs(), "model": sim.model(), "choices": [choice],
    });
    if sim.args.usage {
        let (prompt, completion) = (generation.prompt_tokens, generation.total);
        response["usage"] = json!({"prompt_tokens": prompt, "total_tokens": u64::from(prompt) + u64::from(completion),
            "completion_tokens": completion});
    }
    response
}

fn finish_reason(generation: &Generation) -> &'static str {
    if generation.length { "length" } else { "stop" }
}

/// vLLM's SSE chunks for one answer.
struct Chunks {
    endpoint: Endpoint,
    /// `{"id":…,"object":…,"created":…,"model":…,` shared by every chunk of this answer.
    head: String,
    stream_usage: bool,
}

impl Wire for Chunks {
    /// One token event; the first also carries chat's role chunk, the last the usage chunk and `[DONE]`
    /// (the same bytes vLLM sends, in fewer writes).
    fn write(&mut self, generation: &Generation, from: u32, to: u32, out: &mut String) {
        let chat = self.endpoint == Endpoint::Chat;
        if chat && from == 0 {
            out.push_str("data: ");
            out.push_str(&self.head);
            out.push_str(r#""choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#);
            out.push_str("\n\n");
        }
        let reasoning = from < generation.reasoning;
        out.push_str("data: ");
        out.push_str(&self.head);
        out.push_str(match (chat, reasoning) {
            (false, false) => r#""choices":[{"index":0,"text":""#,
            (false, true) => r#""choices":[{"index":0,"text":"","reasoning_content":""#,
            (true, false) => r#""choices":[{"index":0,"delta":{"content":""#,
            (true, true) => r#""choices":[{"index":0,"delta":{"reasoning_content":""#,
        });
        generation.push_tokens(out, from, to);
        out.push_str(if chat { r#""},"# } else { r#"","# });
        out.push_str(r#""logprobs":null,"finish_reason":"#);
        if to < generation.total {
            // vLLM sets `stop_reason` on every completion choice, and only on the last chat choice.
            out.push_str(if chat { "null}]}\n\n" } else { "null,\"stop_reason\":null}]}\n\n" });
            return;
        }
        let _ = write!(out, r#""{}","stop_reason":null}}]}}"#, finish_reason(generation)); // cannot fail
        out.push_str("\n\n");
        if self.stream_usage {
            out.push_str("data: ");
            out.push_str(&self.head);
            let (prompt, completion) = (generation.prompt_tokens, generation.total);
            let total = u64::from(prompt) + u64::from(completion);
            let _ = write!(
                out,
                r#""choices":[],"usage":{{"prompt_tokens":{prompt},"total_tokens":{total},"completion_tokens":{completion}}}}}"#
            );
            out.push_str("\n\n");
        }
        out.push_str("data: [DONE]\n\n");
    }
}
