//! The simulator's response bodies: a whole JSON document, or an SSE stream paced by deadlines.
//!
//! The stream is a hand-written [`Body`] state machine rather than a task feeding a channel: with zero
//! delays it formats each event straight into the connection's write path, which keeps the sim cheap
//! enough to measure a client's own overhead against. Every event's send time is an absolute deadline
//! from the request's start, so timer slack never accumulates across a long answer.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::generation::{Endpoint, Generation};

/// When a request's tokens are due: the first event `ttft` after `start`, then `itl` per later token.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pacing {
    pub start: Instant,
    pub ttft_ms: f64,
    pub itl_ms: f64,
}

impl Pacing {
    /// `None` when both delays are zero: the zero-latency sim never touches a timer.
    pub fn new(start: Instant, ttft_ms: f64, itl_ms: f64) -> Option<Self> {
        (ttft_ms > 0.0 || itl_ms > 0.0).then_some(Pacing { start, ttft_ms, itl_ms })
    }

    /// Due time of the event that brings the count of sent tokens to `through`, when the first event
    /// carried `first` tokens.
    pub fn deadline(&self, through: u32, first: u32) -> Instant {
        const YEAR_MS: f64 = 365.0 * 86_400_000.0; // keeps `start + offset` far from overflow
        let ms = self.ttft_ms + self.itl_ms * f64::from(through.saturating_sub(first));
        self.start + Duration::from_secs_f64(ms.min(YEAR_MS) / 1000.0)
    }
}

pub(super) enum SimBody {
    Full(Option<Bytes>),
    Events(Box<EventStream>),
}

/// The SSE answer of one streaming request, one `poll_frame` per token event.
pub(super) struct EventStream {
    generation: Generation,
    /// `{"id":…,"object":…,"created":…,"model":…,` shared by every chunk of this answer.
    head: String,
    tokens_per_chunk: u32,
    /// Tokens in the first event: later events are due `itl` per token after it.
    first: u32,
    sent: u32,
    pacing: Option<Pacing>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl EventStream {
    pub fn new(
        generation: Generation,
        model_json: &str,
        created: u64,
        tokens_per_chunk: u32,
        pacing: Option<Pacing>,
    ) -> Self {
        let object = match generation.endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion.chunk",
        };
        let head =
            format!(r#"{{"id":"{}","object":"{object}","created":{created},"model":{model_json},"#, generation.id());
        EventStream {
            first: generation.first_event(tokens_per_chunk),
            generation,
            head,
            tokens_per_chunk,
            sent: 0,
            pacing,
            sleep: None,
        }
    }

    /// Size of the next event: events never mix reasoning and content tokens.
    fn next_size(&self) -> u32 {
        let phase_end =
            if self.sent < self.generation.reasoning { self.generation.reasoning } else { self.generation.total };
        self.tokens_per_chunk.min(phase_end - self.sent)
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.sent >= self.generation.total {
            return Poll::Ready(None);
        }
        let size = self.next_size();
        if let Some(pacing) = &self.pacing {
            let deadline = pacing.deadline(self.sent + size, self.first);
            if Instant::now() < deadline {
                let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                ready!(sleep.as_mut().poll(cx));
            }
        }
        let event = self.format_event(size);
        self.sent += size;
        Poll::Ready(Some(Bytes::from(event)))
    }

    /// One token event; the first also carries chat's role chunk, the last the usage chunk and `[DONE]`
    /// (the same bytes a real server sends, in fewer writes).
    fn format_event(&self, size: u32) -> String {
        let generation = &self.generation;
        let chat = generation.endpoint == Endpoint::Chat;
        let mut out = String::with_capacity(2 * self.head.len() + 160 + 8 * size as usize);
        if chat && self.sent == 0 {
            out.push_str("data: ");
            out.push_str(&self.head);
            out.push_str(r#""choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#);
            out.push_str("\n\n");
        }
        let reasoning = self.sent < generation.reasoning;
        out.push_str("data: ");
        out.push_str(&self.head);
        out.push_str(match (chat, reasoning) {
            (false, false) => r#""choices":[{"index":0,"text":""#,
            (false, true) => r#""choices":[{"index":0,"text":"","reasoning_content":""#,
            (true, false) => r#""choices":[{"index":0,"delta":{"content":""#,
            (true, true) => r#""choices":[{"index":0,"delta":{"reasoning_content":""#,
        });
        generation.push_tokens(&mut out, self.sent, self.sent + size);
        out.push_str(if chat { r#""},"# } else { r#"","# });
        out.push_str(r#""logprobs":null,"finish_reason":"#);
        let last = self.sent + size == generation.total;
        if !last {
            out.push_str("null}]}\n\n");
            return out;
        }
        out.push('"');
        out.push_str(generation.finish_reason);
        out.push_str("\"}]}\n\n");
        if generation.stream_usage {
            out.push_str("data: ");
            out.push_str(&self.head);
            let (prompt, completion) = (generation.prompt_tokens, generation.total);
            let total = u64::from(prompt) + u64::from(completion);
            let _ = write!(
                out,
                r#""choices":[],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{total}}}}}"#
            ); // writing to a String cannot fail
            out.push_str("\n\n");
        }
        out.push_str("data: [DONE]\n\n");
        out
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            SimBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            SimBody::Events(events) => events.poll_event(cx).map(|e| e.map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(data) => data.is_none(),
            SimBody::Events(events) => events.sent >= events.generation.total,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            SimBody::Events(_) => SizeHint::default(),
        }
    }
}
