//! What one request observed: [`RequestRecord`], and the reader that fills it from the answer's events.
//!
//! Owns the meaning of an event (content, reasoning, usage, end of stream) as a template's pointers
//! define it, and nothing about HTTP or framing. Every stamp is the arrival time of the network
//! chunk that completed the event, taken by the caller before any parsing (DESIGN "Traps": never
//! timestamp after decoding). Reasoning is not content (DESIGN decision 9): the first content token
//! and the first reasoning token each have their own stamp.

use std::fmt;
use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use super::extract::{self, Leaf, Pointers, SLOTS};
use crate::plan::RequestTemplate;

/// One request as the client saw it. Stamps are nanoseconds since the benchmark's origin;
/// `0`/`None` means it did not happen.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The request's index in its cell (prompt and order).
    pub index: u64,
    /// When the arrival process meant to send it (closed loop: when it was sent).
    pub scheduled_ns: u64,
    /// Just before the request was handed to the connection.
    pub sent_ns: u64,
    /// The response's status line and headers arrived.
    pub headers_ns: Option<u64>,
    /// The first body chunk arrived.
    pub first_byte_ns: Option<u64>,
    /// The first event of any kind (a role-only chunk counts).
    pub first_event_ns: Option<u64>,
    /// The first event with reasoning text.
    pub first_reasoning_ns: Option<u64>,
    /// The first event with content text: what TTFT measures.
    pub first_content_ns: Option<u64>,
    /// The last event with content or reasoning text.
    pub last_event_ns: Option<u64>,
    /// The answer was complete (end sentinel, end field, or end of body) or failed.
    pub end_ns: u64,
    /// Open loop: when the scheduler released the request (≥ `scheduled_ns`; the gap is schedule
    /// lag); it was sent at `sent_ns` once admitted under `max_concurrency` (the gap is client
    /// queue time). `None` in closed loops, where a request is sent when a worker is free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_ns: Option<u64>,
    /// Arrival of every content event, in order (inter-token latencies).
    pub content_event_ns: Vec<u64>,
    pub content_events: u32,
    pub reasoning_events: u32,
    /// The engine's own counts (`usage`), when it sent them.
    pub usage_prompt_tokens: Option<u64>,
    pub usage_completion_tokens: Option<u64>,
    /// The content text counted with the engine's tokenizer, after the measured window.
    pub counted_output_tokens: Option<u64>,
    /// The prompt's length as the load generator built it.
    pub input_tokens: u64,
    /// The server's own prompt-processing time, when the engine reports it (llama.cpp `timings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_prompt_ms: Option<f64>,
    pub status: Option<u16>,
    /// 1 when the request was resent, once, on a new connection, because the kept-alive
    /// connection it first went out on failed while it was written or before any byte of answer
    /// (a server closing an idle connection; curl does the same). `sent_ns` is the first send's.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connection_retries: u32,
    pub error: Option<ErrorKind>,
    /// With error `timeout`: the deadline that passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<super::Deadline>,
    pub error_detail: Option<String>,
    /// The content text, kept for counting its tokens exactly after the window (then emptied:
    /// `requests.jsonl` does not hold answers).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    /// Set before sending when nothing will count the text: the reader then does not gather it.
    #[serde(skip)]
    pub skip_text: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl RequestRecord {
    /// Output tokens by the best count available: the engine's `usage`, else the tokenizer's count
    /// of the text, else the number of content events (exact only at one token per event).
    pub fn output_tokens(&self) -> u64 {
        self.usage_completion_tokens.or(self.counted_output_tokens).unwrap_or(u64::from(self.content_events))
    }

    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    pub(crate) fn fail(&mut self, kind: ErrorKind, detail: impl Into<String>) {
        self.error = Some(kind);
        self.error_detail = Some(detail.into());
    }

    /// Fails the request as `timeout` at `deadline`, passed `when` (as `cancelled` when the
    /// deadline is its step's: the request was cut, not slow).
    pub(crate) fn time_out(&mut self, deadline: super::Deadline, when: &str) {
        self.deadline = Some(deadline);
        let kind = if deadline == super::Deadline::StepTimeout { ErrorKind::Cancelled } else { ErrorKind::Timeout };
        self.fail(kind, format!("the `{}` deadline passed {when}", deadline.name()));
    }
}

/// Why a request failed. Serialized as its name: `connect`, `http_500`, `timeout`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// No connection, or the request could not be sent.
    Connect,
    /// The engine answered with a non-2xx status.
    Status(u16),
    Timeout,
    /// The answer broke off, or the engine reported an error inside the stream.
    Stream,
    /// The connection was reset after the engine had the request (never resent).
    ConnectionReset,
    /// An event or answer was not valid JSON.
    Decode,
    Cancelled,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::Status(code) => write!(f, "http_{code}"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::Stream => f.write_str("stream"),
            ErrorKind::ConnectionReset => f.write_str("connection_reset"),
            ErrorKind::Decode => f.write_str("decode"),
            ErrorKind::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for ErrorKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "connect" => ErrorKind::Connect,
            "timeout" => ErrorKind::Timeout,
            "stream" => ErrorKind::Stream,
            "connection_reset" => ErrorKind::ConnectionReset,
            "decode" => ErrorKind::Decode,
            "cancelled" => ErrorKind::Cancelled,
            other => match other.strip_prefix("http_").and_then(|c| c.parse().ok()) {
                Some(code) => ErrorKind::Status(code),
                None => return Err(format!("unknown error kind `{other}`")),
            },
        })
    }
}

impl<'de> Deserialize<'de> for ErrorKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

const TEXT: usize = 0;
const REASONING: usize = 1;
const USAGE_PROMPT: usize = 2;
const USAGE_COMPLETION: usize = 3;
const DONE_FIELD: usize = 4;
const ERROR: usize = 5;
const SERVER_PROMPT_MS: usize = 6;
/// Where engines put an error inside a stream (`{"error": …}`: OpenAI, vLLM, TGI, Ollama).
const ERROR_POINTER: &str = "/error";
/// How much of a bad event the error detail quotes.
const EXCERPT: usize = 200;

/// How a template's answers are read: its end sentinel and its pointers, compiled once and
/// reused for every request that sends the template.
pub(crate) struct Reader {
    done: Option<Vec<u8>>,
    pointers: Pointers,
    /// The template's pointers it was compiled from (to tell whether it fits another template).
    source: [Option<String>; SLOTS],
}

impl Reader {
    pub(crate) fn new(call: &RequestTemplate) -> Self {
        let pointers = Self::pointers_of(call);
        Reader {
            done: call.done.as_ref().map(|d| d.as_bytes().to_vec()),
            pointers: Pointers::new(&pointers),
            source: pointers.map(|p| p.map(str::to_string)),
        }
    }

    /// Whether this reader reads `call`'s answers.
    pub(crate) fn fits(&self, call: &RequestTemplate) -> bool {
        self.done.as_deref() == call.done.as_deref().map(str::as_bytes)
            && self.source.iter().zip(Self::pointers_of(call)).all(|(a, b)| a.as_deref() == b)
    }

    fn pointers_of(call: &RequestTemplate) -> [Option<&str>; SLOTS] {
        let usage = call.usage.as_ref();
        let mut pointers = [None; SLOTS];
        pointers[TEXT] = Some(call.text.as_str());
        pointers[REASONING] = call.reasoning.as_deref();
        pointers[USAGE_PROMPT] = usage.and_then(|u| u.prompt_tokens.as_deref());
        pointers[USAGE_COMPLETION] = usage.map(|u| u.completion_tokens.as_str());
        pointers[DONE_FIELD] = call.done_field.as_deref();
        pointers[ERROR] = Some(ERROR_POINTER);
        pointers[SERVER_PROMPT_MS] = call.server_prompt_ms.as_deref();
        pointers
    }
}

/// Reads the events of one answer into its record.
pub(crate) struct Events<'a> {
    reader: &'a Reader,
    pub(crate) record: &'a mut RequestRecord,
    /// The end sentinel or end field was seen.
    pub(crate) finished: bool,
}

impl<'a> Events<'a> {
    pub(crate) fn new(reader: &'a Reader, record: &'a mut RequestRecord) -> Self {
        Events { reader, record, finished: false }
    }

    /// One event's payload, completed by a chunk that arrived at `t`. Breaks at the end of the
    /// answer or on an error (recorded).
    pub(crate) fn event(&mut self, payload: &[u8], t: u64) -> ControlFlow<()> {
        let payload = payload.trim_ascii();
        if self.reader.done.as_deref() == Some(payload) {
            self.finished = true;
            return ControlFlow::Break(());
        }
        let mut picked: [Option<Leaf>; SLOTS] = Default::default();
        if let Err(e) = extract::pick_into(payload, &self.reader.pointers, &mut picked) {
            let excerpt = excerpt(payload);
            self.record.fail(ErrorKind::Decode, format!("malformed JSON event ({e}): {excerpt}"));
            return ControlFlow::Break(());
        }
        let r = &mut *self.record;
        r.first_event_ns.get_or_insert(t);
        if let Some(error) = picked[ERROR].as_ref().filter(|e| **e != Leaf::Null) {
            r.fail(ErrorKind::Stream, format!("the engine reported an error: {}", error.to_text()));
            return ControlFlow::Break(());
        }
        if let Some(n) = picked[USAGE_PROMPT].as_ref().and_then(Leaf::as_count) {
            r.usage_prompt_tokens = Some(n);
        }
        if let Some(n) = picked[USAGE_COMPLETION].as_ref().and_then(Leaf::as_count) {
            r.usage_completion_tokens = Some(n);
        }
        match &picked[SERVER_PROMPT_MS] {
            Some(Leaf::Float(ms)) => r.server_prompt_ms = Some(*ms),
            Some(Leaf::Int(ms)) => r.server_prompt_ms = Some(*ms as f64),
            _ => {}
        }
        if let Some(Leaf::Str(s)) = &picked[REASONING]
            && !s.is_empty()
        {
            r.first_reasoning_ns.get_or_insert(t);
            r.reasoning_events += 1;
            r.last_event_ns = Some(t);
        }
        if let Some(Leaf::Str(s)) = &picked[TEXT]
            && !s.is_empty()
        {
            r.first_content_ns.get_or_insert(t);
            r.content_events += 1;
            r.content_event_ns.push(t);
            if !r.skip_text {
                r.text.push_str(s);
            }
            r.last_event_ns = Some(t);
        }
        if picked[DONE_FIELD] == Some(Leaf::Bool(true)) {
            self.finished = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

/// The start of `bytes` as text, for error details.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::template_kind::{StreamFormat, UsagePointers};
    use serde_json::json;

    fn chat() -> RequestTemplate {
        RequestTemplate {
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            body: json!({}),
            stream: StreamFormat::Sse,
            text: "/choices/0/delta/content".into(),
            reasoning: Some("/choices/0/delta/reasoning_content".into()),
            done: Some("[DONE]".into()),
            done_field: None,
            usage: Some(UsagePointers {
                prompt_tokens: Some("/usage/prompt_tokens".into()),
                completion_tokens: "/usage/completion_tokens".into(),
            }),
            server_prompt_ms: None,
        }
    }

    #[test]
    fn reasoning_role_and_usage_chunks_are_not_content() {
        let call = chat();
        let mut record = RequestRecord::default();
        let reader = Reader::new(&call);
        let mut events = Events::new(&reader, &mut record);
        let stream = [
            (r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#, 10),
            (r#"{"choices":[{"delta":{"reasoning_content":" think"}}]}"#, 20),
            (r#"{"choices":[{"delta":{"content":" a b"}}]}"#, 30),
            (r#"{"choices":[{"delta":{"content":" c"}}]}"#, 40),
            (r#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":4}}"#, 50),
        ];
        for (payload, t) in stream {
            assert!(events.event(payload.as_bytes(), t).is_continue());
        }
        assert!(events.event(b" [DONE] ", 60).is_break());
        assert!(events.finished);
        assert_eq!(record.first_event_ns, Some(10));
        assert_eq!(record.first_reasoning_ns, Some(20));
        assert_eq!(record.first_content_ns, Some(30));
        assert_eq!(record.last_event_ns, Some(40));
        assert_eq!(record.content_event_ns, [30, 40]);
        assert_eq!((record.content_events, record.reasoning_events), (2, 1));
        assert_eq!(record.text, " a b c");
        assert_eq!((record.usage_prompt_tokens, record.usage_completion_tokens), (Some(4), Some(4)));
        assert!(record.ok());
    }

    #[test]
    fn text_is_gathered_only_when_something_will_count_it() {
        let call = chat();
        let mut record = RequestRecord { skip_text: true, ..Default::default() };
        let reader = Reader::new(&call);
        let mut events = Events::new(&reader, &mut record);
        assert!(events.event(br#"{"choices":[{"delta":{"content":" a"}}]}"#, 1).is_continue());
        assert!(events.event(br#"{"choices":[{"delta":{"content":" b"}}]}"#, 2).is_continue());
        assert_eq!((record.content_events, record.text.as_str()), (2, ""));
    }

    #[test]
    fn errors_inside_the_stream_and_bad_json_fail_the_request() {
        let call = chat();
        let mut record = RequestRecord::default();
        let reader = Reader::new(&call);
        let mut events = Events::new(&reader, &mut record);
        assert!(events.event(br#"{"error":{"message":"overloaded"}}"#, 5).is_break());
        assert_eq!(record.error, Some(ErrorKind::Stream));
        assert!(record.error_detail.as_deref().unwrap().contains("overloaded"));

        let mut record = RequestRecord::default();
        let reader = Reader::new(&call);
        let mut events = Events::new(&reader, &mut record);
        assert!(events.event(b"{\"choices\": [", 5).is_break());
        assert_eq!(record.error, Some(ErrorKind::Decode));
    }

    #[test]
    fn a_done_field_ends_ndjson_answers() {
        let mut call = chat();
        call.stream = StreamFormat::Ndjson;
        call.text = "/response".into();
        call.done = None;
        call.done_field = Some("/done".into());
        call.usage = Some(UsagePointers { prompt_tokens: None, completion_tokens: "/eval_count".into() });
        let mut record = RequestRecord::default();
        let reader = Reader::new(&call);
        let mut events = Events::new(&reader, &mut record);
        assert!(events.event(br#"{"response":" x","done":false}"#, 1).is_continue());
        assert!(events.event(br#"{"response":"","done":true,"eval_count":1}"#, 2).is_break());
        assert!(events.finished);
        assert_eq!(record.output_tokens(), 1);
        assert_eq!(record.content_events, 1);
    }

    #[test]
    fn output_tokens_prefers_usage_then_counted_then_events() {
        let mut r = RequestRecord { content_events: 4, ..Default::default() };
        assert_eq!(r.output_tokens(), 4);
        r.counted_output_tokens = Some(16);
        assert_eq!(r.output_tokens(), 16);
        r.usage_completion_tokens = Some(15);
        assert_eq!(r.output_tokens(), 15);
        assert_eq!(serde_json::to_value(ErrorKind::Status(503)).unwrap(), json!("http_503"));
        assert_eq!(serde_json::to_value(ErrorKind::Connect).unwrap(), json!("connect"));
        for kind in [ErrorKind::Status(503), ErrorKind::Connect, ErrorKind::Timeout, ErrorKind::Cancelled] {
            assert_eq!(serde_json::from_value::<ErrorKind>(serde_json::to_value(kind).unwrap()).unwrap(), kind);
        }
        assert!(serde_json::from_value::<ErrorKind>(json!("http_x")).is_err());
    }
}
