//! What the simulator says: a request body and the seed in, a deterministic [`Generation`] out.
//!
//! Everything here is a pure function of `(seed, body bytes)`; no clock, no counter, no shared state,
//! so two servers given the same bodies answer the same words in any arrival order.

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::SimArgs;

/// The OpenAI endpoint a request came through; it picks the chunk and response shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Completions,
    Chat,
}

/// The body fields the simulator honours; unknown fields (`stop`, `temperature`, …) are accepted and ignored.
#[derive(Deserialize)]
struct GenerateRequest {
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
struct Message {
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
struct StreamOptions {
    include_usage: Option<bool>,
}

/// One simulated answer: how many tokens, which of them are reasoning, and how they are delivered.
#[derive(Debug, Clone)]
pub(super) struct Generation {
    pub endpoint: Endpoint,
    /// `sha256(seed ‖ body)`: the only source of every choice below and of every token's word.
    pub hash: u64,
    pub prompt_tokens: u32,
    /// Completion tokens, reasoning included (as OpenAI and vLLM count them); at least 1.
    pub total: u32,
    /// The first `reasoning` of the `total` tokens are reasoning, not content.
    pub reasoning: u32,
    pub finish_reason: &'static str,
    pub stream: bool,
    /// Streaming only: send the `choices: []` usage chunk before `[DONE]`.
    pub stream_usage: bool,
    /// Non-streaming only: put `usage` in the response.
    pub usage: bool,
    /// Answer HTTP 500 instead (the `--error-rate` draw).
    pub fails: bool,
}

const SALT_ERROR: u64 = 0x6572_726f_725f_7261;
const SALT_EOS: u64 = 0x656f_735f_706f_696e;
const SALT_WORD: u64 = 0x776f_7264_5f5f_5f5f;

/// Decides the answer to a `/v1/completions` or `/v1/chat/completions` body; `Err` is a 400 message.
pub(super) fn plan(endpoint: Endpoint, body: &[u8], args: &SimArgs) -> Result<Generation, String> {
    let req: GenerateRequest = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let prompt_tokens = match endpoint {
        Endpoint::Completions => req.prompt.as_ref().map(Prompt::tokens).ok_or("`prompt` is required")?,
        Endpoint::Chat => req.messages.as_deref().map(message_tokens).ok_or("`messages` is required")?,
    };
    let max = match endpoint {
        Endpoint::Completions => req.max_tokens,
        Endpoint::Chat => req.max_completion_tokens.or(req.max_tokens),
    }
    .unwrap_or(args.output_tokens);
    if max == 0 {
        return Err("`max_tokens` must be at least 1".into());
    }
    let hash = request_hash(args.seed, body);
    let total = if req.ignore_eos.unwrap_or(false) {
        max
    } else {
        let low = req.min_tokens.unwrap_or(0).clamp(1, max);
        low + (mix(hash ^ SALT_EOS) % u64::from(max - low + 1)) as u32
    };
    Ok(Generation {
        endpoint,
        hash,
        prompt_tokens,
        total,
        reasoning: args.reasoning_tokens.min(total),
        finish_reason: if total == max { "length" } else { "stop" },
        stream: req.stream.unwrap_or(false),
        stream_usage: args.usage && req.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        usage: args.usage,
        fails: unit(mix(hash ^ SALT_ERROR)) < args.error_rate,
    })
}

/// `/tokenize` in both shapes: vLLM's `{"prompt"}` (or `{"messages"}`) and llama.cpp's `{"content"}`.
pub(super) fn tokenize(body: &[u8]) -> Result<Value, String> {
    let req: GenerateRequest = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let tokens: Vec<u32> = match (&req.prompt, &req.content, &req.messages) {
        (Some(Prompt::Text(text)), _, _) | (None, Some(text), _) => text.split_whitespace().map(word_id).collect(),
        (Some(Prompt::Ids(ids)), _, _) => ids.clone(),
        (None, None, Some(messages)) => {
            messages.iter().flat_map(Message::texts).flat_map(str::split_whitespace).map(word_id).collect()
        }
        (None, None, None) => {
            return Err("one of `prompt`, `content` or `messages` is required".into());
        }
    };
    Ok(json!({"tokens": tokens, "count": tokens.len()}))
}

impl Prompt {
    fn tokens(&self) -> u32 {
        match self {
            Prompt::Text(text) => words(text),
            Prompt::Ids(ids) => saturate(ids.len()),
        }
    }
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

/// Joining the contents with spaces and counting words is the sum of the per-text counts.
fn message_tokens(messages: &[Message]) -> u32 {
    messages.iter().flat_map(Message::texts).map(words).fold(0, u32::saturating_add)
}

fn words(text: &str) -> u32 {
    saturate(text.split_whitespace().count())
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The sim tokenizer's id for one word: FNV-1a, stable across builds and platforms.
fn word_id(word: &str) -> u32 {
    let hash =
        word.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    (hash % 32_000) as u32
}

fn request_hash(seed: u64, body: &[u8]) -> u64 {
    let digest = Sha256::new().chain_update(seed.to_le_bytes()).chain_update(body).finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]); // a SHA-256 digest is 32 bytes
    u64::from_le_bytes(first)
}

/// splitmix64's finaliser: decorrelates the draws taken from one request hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A draw mapped onto `[0, 1)`, so that `error_rate` 1.0 always fails and 0.0 never does.
fn unit(draw: u64) -> f64 {
    (draw >> 11) as f64 / (1u64 << 53) as f64
}

impl Generation {
    /// Appends tokens `from..to` of this answer: each is a space and one word, so words = tokens.
    pub fn push_tokens(&self, out: &mut String, from: u32, to: u32) {
        use std::fmt::Write as _;
        for i in from..to {
            let word = mix(self.hash ^ SALT_WORD.wrapping_add(u64::from(i))) % 10_000;
            let _ = write!(out, " w{word}"); // writing to a String cannot fail
        }
    }

    /// Tokens in the first streamed event; the pacing of every later event counts from it.
    pub fn first_event(&self, tokens_per_chunk: u32) -> u32 {
        let phase_end = if self.reasoning > 0 { self.reasoning } else { self.total };
        tokens_per_chunk.min(phase_end)
    }

    pub fn id(&self) -> String {
        match self.endpoint {
            Endpoint::Completions => format!("cmpl-{:016x}", self.hash),
            Endpoint::Chat => format!("chatcmpl-{:016x}", self.hash),
        }
    }

    pub fn usage_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.total,
            "total_tokens": u64::from(self.prompt_tokens) + u64::from(self.total),
        })
    }

    /// The whole non-streaming response object.
    pub fn response(&self, model: &str, created: u64) -> Value {
        let mut reasoning = String::new();
        self.push_tokens(&mut reasoning, 0, self.reasoning);
        let mut text = String::new();
        self.push_tokens(&mut text, self.reasoning, self.total);
        let mut choice = match self.endpoint {
            Endpoint::Completions => json!({"index": 0, "text": text}),
            Endpoint::Chat => {
                json!({"index": 0, "message": {"role": "assistant", "content": text}})
            }
        };
        if self.reasoning > 0 {
            let at = match self.endpoint {
                Endpoint::Completions => &mut choice,
                Endpoint::Chat => &mut choice["message"],
            };
            at["reasoning_content"] = Value::String(reasoning);
        }
        choice["logprobs"] = Value::Null;
        choice["finish_reason"] = self.finish_reason.into();
        let object = match self.endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion",
        };
        let mut response = json!({
            "id": self.id(), "object": object, "created": created, "model": model, "choices": [choice],
        });
        if self.usage {
            response["usage"] = self.usage_json();
        }
        response
    }
}
