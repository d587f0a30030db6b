//! The simulator's response bodies: a whole document, or a stream of events paced by deadlines.
//!
//! The stream is a hand-written [`Body`] state machine rather than a task feeding a channel: with zero
//! delays it formats each event straight into the connection's write path, which keeps the sim cheap
//! enough to measure a client's own overhead against. Every event's send time is an absolute deadline
//! from the request's start, so timer slack never accumulates across a long answer.
//!
//! What the bytes of a write look like (SSE chunks, TGI token events, Ollama NDJSON lines) is a
//! [`Wire`]'s business; this module owns only when each write is due and how many tokens it carries,
//! and where a faulted body ([`Break`]) breaks: after its first event, or half its bytes.

use std::io;
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
    /// A whole document that breaks after its first part.
    Broken(BrokenBody),
}

/// How a faulted body breaks once its first part is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Break {
    /// Send nothing more, and never end.
    Stall,
    /// End the connection: the body fails, and hyper drops (closes) the connection.
    Close,
    /// Send this event, which is not JSON, then go on as if it had not been sent.
    BadEvent(&'static str),
}

/// Where a break stands: a close first lets hyper flush what was sent, so that it reaches the
/// client before the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaking {
    Due,
    Flushing,
    Done,
}

impl Break {
    /// Polls a due break: `None` when it has passed and the body goes on.
    fn poll(self, state: &mut Breaking, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        match (self, *state) {
            (_, Breaking::Done) => Poll::Ready(None),
            (Break::Stall, _) => Poll::Pending, // never woken: the connection stays open, silent
            (Break::Close, Breaking::Due) => {
                *state = Breaking::Flushing;
                cx.waker().wake_by_ref(); // hyper flushes while this poll is pending
                Poll::Pending
            }
            (Break::Close, Breaking::Flushing) => {
                Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "connection fault"))))
            }
            (Break::BadEvent(text), _) => {
                *state = Breaking::Done;
                Poll::Ready(Some(Ok(Bytes::from_static(text.as_bytes()))))
            }
        }
    }
}

/// A whole document that announces its full length, sends the first half, then breaks.
pub(super) struct BrokenBody {
    half: Option<Bytes>,
    len: u64,
    brk: Break,
    state: Breaking,
}

impl BrokenBody {
    pub fn new(whole: Bytes, brk: Break) -> Self {
        let len = whole.len() as u64;
        BrokenBody { half: Some(whole.slice(..whole.len() / 2)), len, brk, state: Breaking::Due }
    }
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
    /// A fault, due when `sent` reaches `break_at`.
    brk: Option<(Break, Breaking)>,
    break_at: u32,
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
            brk: None,
            break_at: 0,
        }
    }

    /// Breaks the stream after its first event — or, when that event would end the answer, before
    /// it (after the response head).
    pub fn fault(&mut self, brk: Break) {
        self.brk = Some((brk, Breaking::Due));
        self.break_at = if self.first < self.generation.total { self.first } else { 0 };
    }

    /// Holds every event `delay` longer (the first token comes `delay` late; the rest keep their pace).
    pub fn hold(&mut self, start: Instant, delay: Duration) {
        let pacing = self.pacing.unwrap_or(Pacing { start, ttft_ms: 0.0, itl_ms: 0.0 });
        self.pacing = Some(Pacing { start: pacing.start + delay, ..pacing });
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if let Some((brk, state)) = &mut self.brk
            && self.sent == self.break_at
            && let Some(event) = ready!(brk.poll(state, cx))
        {
            return Poll::Ready(Some(event));
        }
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
        Poll::Ready(Some(Ok(Bytes::from(out))))
    }
}

impl Body for SimBody {
    type Data = Bytes;
    /// Only a fault fails a body.
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let data = match self.get_mut() {
            SimBody::Full(data) => Poll::Ready(data.take().map(Ok)),
            SimBody::Events(events) => events.poll_event(cx),
            SimBody::Broken(body) => match body.half.take() {
                Some(half) => Poll::Ready(Some(Ok(half))),
                None => body.brk.poll(&mut body.state, cx),
            },
        };
        data.map(|d| d.map(|d| d.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(data) => data.is_none(),
            SimBody::Events(events) => events.sent >= events.generation.total && events.brk.is_none(),
            SimBody::Broken(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            SimBody::Events(_) => SizeHint::default(),
            SimBody::Broken(body) => SizeHint::with_exact(body.len),
        }
    }
}
