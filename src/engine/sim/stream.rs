//! The simulator's response bodies: a whole document, or a stream of events paced by deadlines.
//!
//! The stream is a hand-written [`Body`] state machine rather than a task feeding a channel: with zero
//! delays it formats each event straight into the connection's write path, which keeps the sim cheap
//! enough to measure a client's own overhead against. Every event's send time is an absolute deadline
//! from the request's start, so timer slack never accumulates across a long answer.
//!
//! What the bytes of a write look like (SSE chunks, TGI token events, Ollama NDJSON lines) is a
//! [`Wire`]'s business; this module owns only when each write is due and how many tokens it carries.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::generation::Generation;
use super::metrics::Flight;

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

/// How one API writes a streamed answer.
pub(super) trait Wire: Send {
    /// Appends the bytes of the write that carries tokens `from..to` of `generation`; when `to` is
    /// `generation.total` this write ends the answer and carries whatever the API sends last.
    fn write(&mut self, generation: &Generation, from: u32, to: u32, out: &mut String);
}

pub(super) enum SimBody {
    Full(Option<Bytes>),
    Events(Box<EventStream>),
}

/// The streamed answer of one request, one `poll_frame` per network write.
pub(super) struct EventStream {
    generation: Generation,
    wire: Box<dyn Wire>,
    tokens_per_chunk: u32,
    /// Tokens in the first event: later events are due `itl` per token after it.
    first: u32,
    sent: u32,
    pacing: Option<Pacing>,
    sleep: Option<Pin<Box<Sleep>>>,
    flight: Flight,
}

impl EventStream {
    pub fn new(
        generation: Generation,
        wire: Box<dyn Wire>,
        tokens_per_chunk: u32,
        pacing: Option<Pacing>,
        flight: Flight,
    ) -> Self {
        EventStream {
            first: generation.first_event(tokens_per_chunk),
            generation,
            wire,
            tokens_per_chunk,
            sent: 0,
            pacing,
            sleep: None,
            flight,
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.sent >= self.generation.total {
            return Poll::Ready(None);
        }
        let size = self.generation.event_size(self.sent, self.tokens_per_chunk);
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
        let mut out = String::with_capacity(256 + 16 * size as usize);
        self.wire.write(&self.generation, self.sent, self.sent + size, &mut out);
        self.sent += size;
        self.flight.sent(size);
        if self.sent == self.generation.total {
            // Counted before the bytes leave, so a client that read the whole answer sees it counted.
            self.flight.finish(self.generation.length, self.generation.total);
        }
        Poll::Ready(Some(Bytes::from(out)))
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
