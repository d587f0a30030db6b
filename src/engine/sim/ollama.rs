//! `--api ollama`: Ollama's native API (`server/routes.go`, `api/types.go`, `docs/api.md`):
//! `/api/generate`, `/api/chat`, `/api/pull`, `/api/tags`, `/api/version`, `GET /`.
//!
//! Owns Ollama's shapes and its one piece of server state that answers depend on: which models are
//! pulled. A model is usable only once pulled (or pre-seeded with `--models`); until then generating
//! with it is Ollama's 404 (`model 'x' not found`). Names are Ollama's: a tag defaults to `latest`
//! and case does not matter. Answers stream as NDJSON (`stream` defaults to true); the last line has
//! `done: true`, `done_reason`, the token counts and the durations in nanoseconds, measured on the
//! sim's own monotonic clock; zero-valued metrics are left out, as Go's `omitempty` leaves them.

use std::fmt::Write as _;
use std::sync::PoisonError;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::fault::Call;
use super::generation::{self, Generation, Limits};
use super::openai::{Message, message_tokens};
use super::stream::{SimBody, Wire};
use super::{Sim, json_response, text_response};

/// A model the server has: pulled, or pre-seeded.
#[derive(Debug, Clone)]
pub(super) struct Pulled {
    /// `name:tag`, as first pulled.
    name: String,
    modified_at: String,
}

#[derive(Deserialize)]
struct GenerateRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    stream: Option<bool>,
    #[serde(default)]
    raw: bool,
    think: Option<Value>,
    options: Option<Options>,
}

#[derive(Deserialize)]
struct Options {
    num_predict: Option<i64>,
}

#[derive(Deserialize)]
struct PullRequest {
    model: Option<String>,
    /// The older spelling of `model`.
    name: Option<String>,
    stream: Option<bool>,
}

/// `name` with Ollama's default tag: `llama3.2` is `llama3.2:latest`.
fn with_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') { name.to_string() } else { format!("{name}:latest") }
}

/// Models named by `--models`, present from the start.
pub(super) fn seed(models: &[String]) -> Vec<Pulled> {
    let now = rfc3339(SystemTime::now());
    let mut pulled: Vec<Pulled> = Vec::new();
    for name in models {
        if find(&pulled, name).is_none() {
            pulled.push(Pulled { name: with_tag(name), modified_at: now.clone() });
        }
    }
    pulled
}

fn find<'a>(pulled: &'a [Pulled], name: &str) -> Option<&'a Pulled> {
    let wanted = with_tag(name.trim());
    pulled.iter().find(|p| p.name.eq_ignore_ascii_case(&wanted))
}

/// Which of Ollama's routes count toward faults (`--fault`), each class on its own.
pub(super) fn call(method: &Method, path: &str) -> Call {
    match (method, path) {
        (&Method::POST, "/api/generate" | "/api/chat") => Call::Generation,
        (&Method::GET | &Method::HEAD, "/") => Call::Health,
        _ => Call::Other,
    }
}

pub(super) async fn route(sim: &Sim, method: &Method, path: &str, body: &[u8], start: Instant) -> Response<SimBody> {
    match (method, path) {
        (&Method::GET | &Method::HEAD, "/") => {
            text_response(StatusCode::OK, "text/plain; charset=utf-8", "Ollama is running".into())
        }
        (&Method::GET | &Method::HEAD, "/api/version") => {
            json_response(StatusCode::OK, json!({"version": sim.args.server_version}))
        }
        (&Method::GET | &Method::HEAD, "/api/tags") => json_response(StatusCode::OK, tags(sim)),
        (&Method::POST, "/api/pull") => pull(sim, body),
        (&Method::POST, "/api/generate") => generate(sim, body, start, false).await,
        (&Method::POST, "/api/chat") => generate(sim, body, start, true).await,
        // gin answers an unknown route, or a known one with the wrong method, with its plain 404.
        _ => text_response(StatusCode::NOT_FOUND, "text/plain", "404 page not found".into()),
    }
}

pub(super) fn error(status: StatusCode, message: &str) -> Response<SimBody> {
    json_response(status, json!({"error": message}))
}

/// `GET /api/tags`: the pulled models, the newest first.
fn tags(sim: &Sim) -> Value {
    let pulled = sim.pulled.lock().unwrap_or_else(PoisonError::into_inner);
    let models: Vec<Value> = pulled
        .iter()
        .rev()
        .map(|p| {
            let digest = digest(&p.name);
            json!({"name": p.name, "model": p.name, "modified_at": p.modified_at, "size": size(&digest), "digest": digest,
                "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                    "parameter_size": "1B", "quantization_level": "Q4_K_M"}})
        })
        .collect();
    json!({"models": models})
}

/// A stable stand-in for a model's manifest digest (hex, as `/api/tags` shows it).
fn digest(name: &str) -> String {
    Sha256::digest(name.as_bytes()).iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}"); // writing to a String cannot fail
        s
    })
}

fn size(digest: &str) -> u64 {
    700_000_000 + u64::from_str_radix(&digest[..6], 16).unwrap_or(0) // a hex digest has 64 digits
}

/// `POST /api/pull`: the model becomes usable. NDJSON progress unless `stream: false`.
fn pull(sim: &Sim, body: &[u8]) -> Response<SimBody> {
    let req: PullRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Some(name) = req.model.or(req.name).map(|n| n.trim().to_string()).filter(|n| !n.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "invalid model name");
    };
    {
        let mut pulled = sim.pulled.lock().unwrap_or_else(PoisonError::into_inner);
        if find(&pulled, &name).is_none() {
            pulled.push(Pulled { name: with_tag(&name), modified_at: rfc3339(SystemTime::now()) });
        }
    }
    if req.stream == Some(false) {
        return json_response(StatusCode::OK, json!({"status": "success"}));
    }
    let hex = digest(&with_tag(&name));
    let total = size(&hex);
    let lines = [
        json!({"status": "pulling manifest"}),
        json!({"status": format!("pulling {}", &hex[..12]), "digest": format!("sha256:{hex}"), "total": total, "completed": total}),
        json!({"status": "verifying sha256 digest"}),
        json!({"status": "writing manifest"}),
        json!({"status": "success"}),
    ];
    let text = lines.iter().fold(String::new(), |mut s, l| {
        let _ = writeln!(s, "{l}");
        s
    });
    text_response(StatusCode::OK, "application/x-ndjson", text)
}

async fn generate(sim: &Sim, body: &[u8], start: Instant, chat: bool) -> Response<SimBody> {
    sim.counters.received();
    let req: GenerateRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => {
            sim.counters.failed();
            return error(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    let Some(model) = req.model.filter(|m| !m.trim().is_empty()) else {
        sim.counters.failed();
        return error(StatusCode::BAD_REQUEST, "model is required");
    };
    let known = find(&sim.pulled.lock().unwrap_or_else(PoisonError::into_inner), &model).is_some();
    if !known {
        sim.counters.failed();
        return error(StatusCode::NOT_FOUND, &format!("model '{model}' not found"));
    }
    let model_json = Value::String(model).to_string();
    let prompt_tokens = match (&req.prompt, &req.messages) {
        (Some(prompt), _) if !chat && !prompt.is_empty() => generation::words(prompt),
        (_, Some(messages)) if chat && !messages.is_empty() => message_tokens(messages),
        // An empty prompt (or no messages) only loads the model.
        _ => {
            let mut line = format!(r#"{{"model":{model_json},"created_at":"{}","#, rfc3339(SystemTime::now()));
            line.push_str(if chat { r#""message":{"role":"assistant","content":""},"# } else { r#""response":"","# });
            line.push_str(r#""done":true,"done_reason":"load"}"#);
            return text_response(StatusCode::OK, "application/json; charset=utf-8", line);
        }
    };
    let max = match req.options.and_then(|o| o.num_predict) {
        Some(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
        _ => sim.args.output_tokens, // Ollama's -1 (and 0): no limit of its own
    };
    let thinks = req.think.as_ref().is_none_or(|t| *t != Value::Bool(false));
    let reasoning = if thinks { sim.args.reasoning_tokens } else { 0 };
    let generation =
        generation::draw(&sim.args, body, prompt_tokens, Limits { max, min: None, ignore_eos: false }, reasoning);
    if generation.fails {
        sim.counters.failed();
        return error(StatusCode::INTERNAL_SERVER_ERROR, "simulated failure");
    }
    let context = (!chat && !req.raw).then(|| {
        let mut ids = req.prompt.as_deref().map(generation::token_ids).unwrap_or_default();
        ids.extend((generation.reasoning..generation.total).map(|i| generation.token_id(i)));
        ids
    });
    let mut lines = Lines { model_json, chat, context, usage: sim.args.usage, clock: Clock::new(start) };
    if req.stream.unwrap_or(true) {
        return sim.stream(generation, Box::new(lines), "application/x-ndjson", start);
    }
    let generation = sim.settle(generation, start).await;
    lines.clock.first = Some(sim.first_token_due(&generation, start));
    let mut out = String::new();
    lines.head(&mut out);
    let (thinking, text) =
        (generation.text(0, generation.reasoning), generation.text(generation.reasoning, generation.total));
    lines.body(&thinking, &text, &mut out);
    lines.done(&generation, &mut out);
    text_response(StatusCode::OK, "application/json; charset=utf-8", out)
}

/// When the answer's tokens happened, for the durations of its last line.
struct Clock {
    start: Instant,
    /// The request was read and admitted (the end of Ollama's "load").
    admitted: Instant,
    first: Option<Instant>,
}

impl Clock {
    fn new(start: Instant) -> Self {
        Clock { start, admitted: Instant::now(), first: None }
    }

    /// `(total, load, prompt_eval, eval)` in nanoseconds, each at least 1 (a zero would be omitted).
    fn durations(&self, now: Instant) -> [u128; 4] {
        let first = self.first.unwrap_or(now).clamp(self.admitted, now.max(self.admitted));
        let ns = |from: Instant, to: Instant| to.saturating_duration_since(from).as_nanos().max(1);
        [ns(self.start, now), ns(self.start, self.admitted), ns(self.admitted, first), ns(first, now)]
    }
}

/// Ollama's NDJSON lines for one answer.
struct Lines {
    model_json: String,
    chat: bool,
    /// `/api/generate` without `raw`: the token ids of prompt and answer, on the last line.
    context: Option<Vec<u32>>,
    usage: bool,
    clock: Clock,
}

impl Lines {
    /// `{"model":…,"created_at":…,`
    fn head(&self, out: &mut String) {
        let _ = write!(out, r#"{{"model":{},"created_at":"{}","#, self.model_json, rfc3339(SystemTime::now()));
    }

    /// The text fields: `response` and `thinking`, or chat's `message`.
    fn body(&self, thinking: &str, text: &str, out: &mut String) {
        if self.chat {
            let _ = write!(out, r#""message":{{"role":"assistant","content":"{text}""#);
            if !thinking.is_empty() {
                let _ = write!(out, r#","thinking":"{thinking}""#);
            }
            out.push_str("},");
        } else {
            let _ = write!(out, r#""response":"{text}","#);
            if !thinking.is_empty() {
                let _ = write!(out, r#""thinking":"{thinking}","#);
            }
        }
    }

    /// `"done":true,…}` with the reason, counts and durations (the rest of the line after `body`).
    fn done(&self, generation: &Generation, out: &mut String) {
        let reason = if generation.length { "length" } else { "stop" };
        let _ = write!(out, r#""done":true,"done_reason":"{reason}""#);
        if let Some(context) = &self.context {
            out.push_str(",\"context\":");
            out.push_str(&Value::from(context.clone()).to_string());
        }
        let [total, load, prompt_eval, eval] = self.clock.durations(Instant::now());
        let _ = write!(out, r#","total_duration":{total},"load_duration":{load}"#);
        if self.usage && generation.prompt_tokens > 0 {
            let _ = write!(out, r#","prompt_eval_count":{}"#, generation.prompt_tokens);
        }
        let _ = write!(out, r#","prompt_eval_duration":{prompt_eval}"#);
        if self.usage {
            let _ = write!(out, r#","eval_count":{}"#, generation.total);
        }
        let _ = write!(out, r#","eval_duration":{eval}}}"#);
    }
}

impl Wire for Lines {
    fn write(&mut self, generation: &Generation, from: u32, to: u32, out: &mut String) {
        if from == 0 {
            self.clock.first = Some(Instant::now());
        }
        let text = generation.text(from, to);
        let (thinking, content) = if from < generation.reasoning { (text.as_str(), "") } else { ("", text.as_str()) };
        self.head(out);
        self.body(thinking, content, out);
        out.push_str("\"done\":false}\n");
        if to == generation.total {
            self.head(out);
            self.body("", "", out);
            self.done(generation, out);
            out.push('\n');
        }
    }
}

/// RFC 3339 in UTC with nanoseconds, trailing zeros trimmed (Go's `time.RFC3339Nano`).
pub(super) fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rem / 3_600, rem / 60 % 60, rem % 60);
    let nanos = since.subsec_nanos();
    if nanos > 0 {
        let fraction = format!("{nanos:09}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_matches_known_instants() {
        let at = |secs: u64, nanos: u32| rfc3339(UNIX_EPOCH + Duration::new(secs, nanos));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_691_178_165, 499_127_000), "2023-08-04T19:42:45.499127Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(at(4_102_444_799, 0), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn names_get_the_latest_tag_and_match_without_case() {
        assert_eq!(with_tag("llama3.2"), "llama3.2:latest");
        assert_eq!(with_tag("hf.co/org/repo:Q4_K_M"), "hf.co/org/repo:Q4_K_M");
        assert_eq!(with_tag("registry:5000/library/m"), "registry:5000/library/m:latest");
        let pulled = seed(&["Llama3.2".into(), "llama3.2:latest".into(), "qwen:0.5b".into()]);
        assert_eq!(pulled.len(), 2);
        assert!(find(&pulled, "LLAMA3.2:latest").is_some() && find(&pulled, "qwen").is_none());
    }
}
