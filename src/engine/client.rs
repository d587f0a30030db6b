//! The engine client: the only place kitt speaks HTTP to engines.
//!
//! Owns connections (per engine, a pool sized to the load's concurrency), control calls (health,
//! version, tokenize, setup) and the measured completion call, which reads SSE, NDJSON or a single
//! JSON answer and timestamps every network chunk on arrival, before any framing or JSON decoding
//! (DESIGN "Traps that make a toy"). It never decides what to send or how often: bodies arrive
//! serialized, and the load generator owns the schedule.
//!
//! Two transports: control calls go through `reqwest` (convenient, and their cost is not
//! measured); the measured call goes through `transport`, kitt's own lean HTTP/1.1 connections,
//! so that the client's own cost stays far below what it measures.
//!
//! Requests never go through a proxy: an environment proxy in front of an engine would silently
//! become part of every latency kitt reports.
//!
//! Engines kitt did not start may sit behind HTTPS (`tls`) and want credentials in headers. Header
//! values are secrets: they are marked sensitive (hidden from `Debug`) and no error, record or log
//! line ever quotes one.

mod extract;
mod framing;
mod record;
#[cfg(test)]
pub(crate) mod tests;
mod tls;
#[cfg(test)]
mod tls_tests;
mod transport;
#[cfg(test)]
mod transport_tests;

use std::error::Error as _;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::manifest::template_kind::StreamFormat;
use crate::plan::{HttpRequest, RequestTemplate};
use framing::{LineFramer, SseFramer};
use record::{Events, Reader, excerpt};
use transport::{Conn, Transport};

pub use record::{ErrorKind, RequestRecord};
pub use tls::TlsOptions;
pub(crate) use tls::crypto_provider;

/// Control calls (not measured) give up after this long.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);
/// After the end sentinel, how long the rest of the body may take to arrive: reading it to the end
/// lets the connection go back to the pool, but a server that keeps the stream open must not stall
/// the next request.
const DRAIN_GRACE: Duration = Duration::from_millis(100);
/// Most of a failed answer's body that is read (and quoted from).
const ERROR_BODY_LIMIT: usize = 64 << 10;

/// A connection pool to one engine. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct EngineClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Control calls.
    http: reqwest::Client,
    /// The measured call.
    transport: Transport,
    /// Without a trailing `/`; paths start with one.
    base: String,
    /// How the first template's answers are read, compiled once (a benchmark sends one template).
    reader: std::sync::OnceLock<Reader>,
    /// What it was made from, so another process can open the same connection.
    dial: Dial,
}

/// What a client to one engine is made from: another process (a cell's client shard) builds
/// an identical client from it. Header values may be secrets: it travels only over a pipe to a
/// child process, is never written to a file, and its `Debug` shows no value.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Dial {
    pub base_url: String,
    pub headers: Vec<(String, String)>,
    pub ca_file: Option<PathBuf>,
    pub insecure: bool,
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Dial")
            .field("base_url", &self.base_url)
            .field("headers", &names)
            .field("ca_file", &self.ca_file)
            .field("insecure", &self.insecure)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid engine URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    /// The header's value is never shown: it may be a secret.
    #[error("invalid request header `{name}`: {reason}")]
    Header { name: String, reason: String },
    #[error("cannot use the CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("cannot set up the HTTP client: {0}")]
    Build(String),
    #[error("no answer from {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("cannot decode the answer of {url}: {reason}")]
    Decode { url: String, reason: String },
    #[error("the answer of {url} has nothing usable at `{pointer}`: {answer}")]
    Pointer { url: String, pointer: String, answer: String },
}

impl EngineClient {
    /// A client for the engine at `base_url` (`http://host:port` or `https://host:port`), sending
    /// `headers` with every request and keeping up to `max_connections` idle connections for reuse.
    /// `https` engines must present a certificate the system trusts.
    pub fn new(base_url: &str, headers: Vec<(String, String)>, max_connections: usize) -> Result<Self, ClientError> {
        Self::with_tls(base_url, headers, max_connections, &TlsOptions::default())
    }

    /// [`EngineClient::new`], checking an `https` engine's certificate as `tls` says.
    pub fn with_tls(
        base_url: &str,
        headers: Vec<(String, String)>,
        max_connections: usize,
        tls: &TlsOptions,
    ) -> Result<Self, ClientError> {
        let dial = Dial {
            base_url: base_url.to_string(),
            headers: headers.clone(),
            ca_file: tls.ca_file.clone(),
            insecure: tls.insecure,
        };
        let base = base_url.trim_end_matches('/').to_string();
        let bad_url = |reason: String| ClientError::Url { url: base_url.to_string(), reason };
        let url = reqwest::Url::parse(&base).map_err(|e| bad_url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(bad_url("expected http://HOST:PORT or https://HOST:PORT".into()));
        }
        let mut map = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            let bad = |reason: String| ClientError::Header { name: name.clone(), reason };
            let key = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| bad("the value has characters a header cannot carry".into()))?;
            value.set_sensitive(true);
            map.insert(key, value);
        }
        let https = url.scheme() == "https";
        let roots = tls::roots(tls)?;
        // Control calls keep no idle connection: a server with a thread per connection
        // (llama.cpp's HTTP server: a few threads, 5 s keep-alive) would keep a worker waiting
        // on it, and the measured requests' own connections would queue behind those workers.
        let builder = reqwest::Client::builder()
            .default_headers(map.clone())
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(0);
        let http = tls::configure(builder, https, tls, &roots)?.build().map_err(|e| ClientError::Build(chain(&e)))?;
        let tls = if https { Some(tls::client_config(tls, roots)?) } else { None };
        let transport = Transport::new(&url, map, tls, max_connections)?;
        Ok(EngineClient { inner: Arc::new(Inner { http, transport, base, reader: Default::default(), dial }) })
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// What this client was made from (see [`Dial`]).
    pub fn dial(&self) -> &Dial {
        &self.inner.dial
    }

    /// A new client (its own pool) from `dial`, keeping up to `max_connections` connections.
    pub fn from_dial(dial: &Dial, max_connections: usize) -> Result<Self, ClientError> {
        let tls = TlsOptions { ca_file: dial.ca_file.clone(), insecure: dial.insecure };
        Self::with_tls(&dial.base_url, dial.headers.clone(), max_connections, &tls)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.base)
    }

    /// `GET path`: the status and body text, whatever the status (health checks read both).
    pub async fn get(&self, path: &str, timeout: Duration) -> Result<(u16, String), ClientError> {
        let url = self.url(path);
        let mut tries = 0;
        let sent = loop {
            match self.inner.http.get(&url).timeout(timeout).send().await {
                Err(e) if tries < STALE_RETRIES && stale_connection_reqwest(&e) => tries += 1,
                other => break other,
            }
        };
        let response = sent.map_err(|e| connect_error(&url, &e))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| connect_error(&url, &e))?;
        Ok((status, text))
    }

    /// `GET path`, expecting a 2xx JSON answer.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        self.call_json(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body, expecting a 2xx JSON answer.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call_json(Method::POST, path, Some(body)).await
    }

    async fn call_json(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let url = self.url(path);
        let body = body.map(|b| b.to_string());
        let send = || {
            let mut request = self.inner.http.request(method.clone(), &url).timeout(CONTROL_TIMEOUT);
            if let Some(body) = &body {
                request = request.header(CONTENT_TYPE, "application/json").body(body.clone());
            }
            request.send()
        };
        // The same stale kept-alive connection as in `send`: resend once on a fresh one.
        let mut tries = 0;
        let response = loop {
            match send().await {
                Err(e) if tries < STALE_RETRIES && stale_connection_reqwest(&e) => tries += 1,
                other => break other,
            }
        }
        .map_err(|e| connect_error(&url, &e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| connect_error(&url, &e))?;
        if !status.is_success() {
            return Err(ClientError::Status { url, status: status.as_u16(), body: excerpt(&bytes) });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode { reason: format!("{e}: {}", excerpt(&bytes)), url })
    }

    /// Token count of `text` with the engine's tokenizer: `req` is the template's tokenize call
    /// (its body has `{{prompt}}`), `pointer` a JSON pointer to the token list (or a number) in
    /// the answer.
    pub async fn count_tokens(&self, req: &HttpRequest, pointer: &str, text: &str) -> Result<u64, ClientError> {
        let method = Method::from_bytes(req.method.as_bytes()).map_err(|_| ClientError::Url {
            url: self.url(&req.path),
            reason: format!("`{}` is not an HTTP method", req.method),
        })?;
        let body =
            req.body.as_ref().map(|b| crate::template::bind_late(b, &[("prompt", Value::String(text.to_string()))]));
        let answer = self.call_json(method, &req.path, body.as_ref()).await?;
        let found = answer.pointer(pointer);
        if let Some(Value::Array(tokens)) = found {
            return Ok(tokens.len() as u64);
        }
        found.and_then(Value::as_u64).ok_or_else(|| ClientError::Pointer {
            url: self.url(&req.path),
            pointer: pointer.to_string(),
            answer: excerpt(answer.to_string().as_bytes()),
        })
    }

    /// Sends one completion request and reads the whole (streamed) answer, timestamping as bytes
    /// arrive, under the default deadlines. Stamps are nanoseconds since `origin`; failures are
    /// recorded, never returned.
    pub async fn send(&self, call: &RequestTemplate, body: &[u8], origin: Instant, record: &mut RequestRecord) {
        self.send_within(call, body, origin, &Deadlines::default(), record).await;
    }

    /// [`EngineClient::send`] under `deadlines`: a request past one ends as error `timeout`
    /// (`record.deadline` says which) and its connection is dropped.
    pub async fn send_within(
        &self,
        call: &RequestTemplate,
        body: &[u8],
        origin: Instant,
        deadlines: &Deadlines,
        record: &mut RequestRecord,
    ) {
        let transport = &self.inner.transport;
        let route = match transport.route(call) {
            Ok(route) => route,
            Err(reason) => {
                record.fail(ErrorKind::Connect, reason);
                return;
            }
        };
        // Taken before the connection: opening one is part of the request's latency, as it is
        // for a user's first request. A resend keeps this first stamp: its lost time is the
        // request's.
        let sent = Instant::now();
        record.sent_ns = at(sent, origin);
        let clock = RequestClock { sent, deadlines };
        let (head_deadline, head_kind) = clock.before_body();
        let mut resent = false;
        let (mut conn, status) = loop {
            let fresh = resent;
            let leased = async move { if fresh { transport.fresh().await } else { transport.lease().await } };
            let mut leased = std::pin::pin!(leased);
            // A pooled connection is ready at once: only a wait (a new connection) needs a timer.
            let ready = futures_util::FutureExt::now_or_never(leased.as_mut()).map(Ok);
            let outcome = match ready {
                Some(done) => done,
                None => tokio::time::timeout_at(head_deadline.into(), leased).await,
            };
            let mut lease = match outcome {
                Ok(Ok(lease)) => lease,
                Ok(Err(e)) => {
                    let kind = if e.timed_out { ErrorKind::Timeout } else { ErrorKind::Connect };
                    record.fail(kind, e.reason);
                    record.end_ns = since(origin);
                    return;
                }
                Err(_) => {
                    record.time_out(head_kind, "while connecting");
                    record.end_ns = since(origin);
                    return;
                }
            };
            match lease.conn.send(&route, body, head_deadline).await {
                // A kept-alive connection the server had closed while it was idle (llama.cpp's
                // HTTP server advertises keep-alive, then closes after a streamed answer): it
                // failed while the request was written or before a single byte of answer, so
                // the engine cannot have answered it. It goes out once more, on a new
                // connection; any other failure is the request's.
                Err(e) if lease.reused && !resent && e.stale() => {
                    resent = true;
                    record.connection_retries += 1;
                }
                Err(e) => {
                    record.end_ns = since(origin);
                    wire_failure(record, &e, head_kind, lease.conn.received(), "before the answer's head");
                    return;
                }
                Ok(status) => break (lease.conn, status),
            }
        };
        // The read that completed the head, stamped as it returned (before the head was parsed).
        let t = at(conn.read_at(), origin);
        record.headers_ns = Some(t);
        record.status = Some(status);
        let (end, reusable) = if (200..300).contains(&status) {
            let cached = self.inner.reader.get_or_init(|| Reader::new(call));
            let other;
            let reader = if cached.fits(call) {
                cached
            } else {
                other = Reader::new(call);
                &other
            };
            read_answer(&mut conn, t, call.stream, reader, origin, &clock, record).await
        } else {
            let (excerpt_of, complete) = read_limited(&mut conn, ERROR_BODY_LIMIT, clock.until_end().0).await;
            record.fail(ErrorKind::Status(status), excerpt(&excerpt_of));
            (since(origin), complete)
        };
        record.end_ns = end;
        // Only a connection whose answer was read to the end can carry the next request.
        if reusable {
            transport.give_back(conn);
        }
    }

    /// Keeps up to `n` idle connections from now on: a load of concurrency `n` reuses its
    /// connections instead of opening new ones.
    pub fn size_for(&self, n: usize) {
        self.inner.transport.keep_up_to(n);
    }
}

/// The deadlines of one request (an `execution.request_timeout`), and the instant its step must
/// end by (`execution.step_timeout`), if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub first_token: Duration,
    pub between_events: Duration,
    pub total: Duration,
    pub step_cutoff: Option<Instant>,
}

impl Default for Deadlines {
    fn default() -> Self {
        crate::manifest::load::RequestTimeout::default().into()
    }
}

impl From<crate::manifest::load::RequestTimeout> for Deadlines {
    fn from(t: crate::manifest::load::RequestTimeout) -> Self {
        Deadlines {
            first_token: t.first_token.0,
            between_events: t.between_events.0,
            total: t.total.0,
            step_cutoff: None,
        }
    }
}

/// Which deadline a request passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deadline {
    FirstToken,
    BetweenEvents,
    Total,
    /// The step's own `step_timeout`: the request is cut because its cell is (`cancelled`).
    StepTimeout,
}

impl Deadline {
    fn name(self) -> &'static str {
        match self {
            Deadline::FirstToken => "first_token",
            Deadline::BetweenEvents => "between_events",
            Deadline::Total => "total",
            Deadline::StepTimeout => "step_timeout",
        }
    }
}

/// One request's deadlines as instants: whichever of its phase deadline and its total comes
/// first (at a tie, the phase's).
struct RequestClock<'a> {
    sent: Instant,
    deadlines: &'a Deadlines,
}

impl RequestClock<'_> {
    fn total(&self) -> Instant {
        self.sent + self.deadlines.total
    }

    fn pick(&self, phase: Instant, kind: Deadline) -> (Instant, Deadline) {
        let total = self.total();
        let (at, kind) = if total < phase { (total, Deadline::Total) } else { (phase, kind) };
        match self.deadlines.step_cutoff {
            Some(cutoff) if cutoff < at => (cutoff, Deadline::StepTimeout),
            _ => (at, kind),
        }
    }

    /// Until the first byte of the answer's body.
    fn before_body(&self) -> (Instant, Deadline) {
        self.pick(self.sent + self.deadlines.first_token, Deadline::FirstToken)
    }

    /// Once the body has begun: the next read, after one at `last_read`.
    fn after_read(&self, last_read: Instant) -> (Instant, Deadline) {
        self.pick(last_read + self.deadlines.between_events, Deadline::BetweenEvents)
    }

    /// Only the total applies (an error answer's body).
    fn until_end(&self) -> (Instant, Deadline) {
        self.pick(self.total(), Deadline::Total)
    }
}

/// Records a failure on the wire: a deadline as `timeout` (naming it), a reset as
/// `connection_reset` (with the bytes of answer that had arrived), a close before the answer
/// ended as `stream`, anything before an answer as `connect`.
fn wire_failure(record: &mut RequestRecord, e: &transport::WireError, deadline: Deadline, received: usize, when: &str) {
    use transport::WireError;
    if e.timed_out() {
        record.time_out(deadline, when);
    } else if e.reset() {
        record.fail(ErrorKind::ConnectionReset, format!("{e} ({received} bytes of answer received)"));
    } else if matches!(e, WireError::Closed { read } if *read > 0) || record.status.is_some() {
        record.fail(ErrorKind::Stream, format!("the answer broke off: {e}"));
    } else {
        record.fail(ErrorKind::Connect, format!("request failed: {e}"));
    }
}

/// Reads `body`, a whole streamed answer, as the measured path reads one that arrived in a single
/// read, `times` times; the content events read in all. For benchmarks: the event reader's speed
/// without the network.
#[doc(hidden)]
pub fn read_answer_for_bench(call: &RequestTemplate, body: &[u8], times: usize) -> u64 {
    let reader = Reader::new(call);
    let mut events_read = 0;
    for i in 0..times {
        let mut record = RequestRecord { skip_text: true, ..RequestRecord::default() };
        let mut events = Events::new(&reader, &mut record);
        let t = i as u64;
        let mut on_event = |payload: &[u8]| events.event(payload, t);
        let mut framing = Framing::new(call.stream);
        if framing.feed(body, &mut on_event).is_continue() {
            framing.finish(&mut on_event);
        }
        events_read += u64::from(record.content_events);
    }
    events_read
}

/// Most resends of one control call (never a measured one) over stale kept-alive connections.
const STALE_RETRIES: u32 = 16;

/// Whether `e`, from a control call, is a pooled connection found closed before any answer.
fn stale_connection_reqwest(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return h.is_incomplete_message();
        }
        source = s.source();
    }
    false
}

/// Nanoseconds since `origin` (saturating: a u64 of nanoseconds lasts 584 years).
fn since(origin: Instant) -> u64 {
    at(Instant::now(), origin)
}

/// `instant` as nanoseconds since `origin` (0 if it was before).
fn at(instant: Instant, origin: Instant) -> u64 {
    u64::try_from(instant.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

/// The framing state of one answer.
enum Framing {
    Sse(SseFramer),
    Lines(LineFramer),
    /// One JSON document: the body is gathered, then read as a single event.
    Whole(Vec<u8>),
}

impl Framing {
    fn new(stream: StreamFormat) -> Self {
        match stream {
            StreamFormat::Sse => Framing::Sse(SseFramer::default()),
            StreamFormat::Ndjson => Framing::Lines(LineFramer::default()),
            StreamFormat::None => Framing::Whole(Vec::new()),
        }
    }

    /// Feeds body bytes; `on_event` gets each completed event and may stop the answer.
    fn feed(&mut self, data: &[u8], on_event: &mut impl FnMut(&[u8]) -> ControlFlow<()>) -> ControlFlow<()> {
        match self {
            Framing::Sse(f) => f.feed(data, on_event),
            Framing::Lines(f) => f.feed(data, on_event),
            Framing::Whole(buf) => {
                buf.extend_from_slice(data);
                ControlFlow::Continue(())
            }
        }
    }

    /// The body ended: delivers what is left (a last event without its terminator, or the whole
    /// document).
    fn finish(&mut self, on_event: &mut impl FnMut(&[u8]) -> ControlFlow<()>) {
        match self {
            Framing::Sse(f) => f.finish(on_event),
            Framing::Lines(f) => f.finish(on_event),
            Framing::Whole(buf) => {
                let _ = on_event(buf); // the answer is over either way
            }
        }
    }
}

/// Reads a 2xx answer, whose head arrived at `t`, into `record`; returns when it ended (the read
/// with the end marker, the end of the body, or the failure) and whether the body was read to its
/// end (its connection can be reused). A body that ends cleanly without the end marker is a
/// complete answer: some servers (TGI's `generate_stream`) send none.
async fn read_answer(
    conn: &mut Conn,
    mut t: u64,
    stream: StreamFormat,
    reader: &Reader,
    origin: Instant,
    clock: &RequestClock<'_>,
    record: &mut RequestRecord,
) -> (u64, bool) {
    let mut framing = Framing::new(stream);
    let mut events = Events::new(reader, record);
    let mut last = t;
    let mut body_started = false;
    loop {
        // Every byte of one read is stamped with the read's arrival, taken before any parsing.
        let mut flow = ControlFlow::Continue(());
        let decoded = conn.body(&mut |data: &[u8]| {
            if flow.is_break() || data.is_empty() {
                return;
            }
            last = t;
            body_started = true;
            events.record.first_byte_ns.get_or_insert(t);
            flow = framing.feed(data, &mut |payload| events.event(payload, t));
        });
        let (deadline, kind) = if body_started { clock.after_read(conn.read_at()) } else { clock.before_body() };
        let complete = match decoded {
            Ok(complete) => complete,
            Err(e) => return (broke_off(events.record, &e, kind, conn.received(), origin), false),
        };
        if flow.is_break() {
            let reusable = events.finished && (complete || drain(conn).await);
            return (t, reusable);
        }
        if complete {
            break;
        }
        if let Err(e) = conn.read_more(deadline).await {
            return (broke_off(events.record, &e, kind, conn.received(), origin), false);
        }
        t = at(conn.read_at(), origin);
    }
    let end = since(origin);
    framing.finish(&mut |payload| events.event(payload, last));
    (end, true)
}

/// Records an answer that failed on the wire after its head; when it ended.
fn broke_off(
    record: &mut RequestRecord,
    e: &transport::WireError,
    deadline: Deadline,
    received: usize,
    origin: Instant,
) -> u64 {
    let end = since(origin);
    wire_failure(record, e, deadline, received, "while the answer streamed");
    end
}

/// Reads what is left of a finished answer so its connection can be reused, within a grace;
/// whether the body was read to its end.
async fn drain(conn: &mut Conn) -> bool {
    let rest = async {
        let mut read = 0;
        loop {
            match conn.body(&mut |data| read += data.len()) {
                Ok(true) => return true,
                Ok(false) if read <= ERROR_BODY_LIMIT => {}
                _ => return false,
            }
            if conn.read_more(Instant::now() + DRAIN_GRACE).await.is_err() {
                return false;
            }
        }
    };
    // On timeout the connection is dropped rather than reused.
    tokio::time::timeout(DRAIN_GRACE, rest).await.unwrap_or(false)
}

/// Up to `limit` bytes of a body, and whether that was all of it; a read error ends it early
/// (the status is the error).
async fn read_limited(conn: &mut Conn, limit: usize, deadline: Instant) -> (Vec<u8>, bool) {
    let mut read = Vec::new();
    loop {
        let complete = conn.body(&mut |data| {
            let room = limit.saturating_sub(read.len());
            read.extend_from_slice(&data[..data.len().min(room)]);
        });
        match complete {
            Ok(true) => return (read, true),
            Ok(false) if read.len() < limit => {}
            _ => return (read, false),
        }
        if conn.read_more(deadline).await.is_err() {
            return (read, false);
        }
    }
}

fn connect_error(url: &str, e: &reqwest::Error) -> ClientError {
    ClientError::Connect { url: url.to_string(), reason: chain(e) }
}

/// An error and its causes, without the URL (callers name it once).
fn chain(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_body() {
        "the answer broke off".to_string()
    } else {
        "request failed".to_string()
    };
    append_causes(&mut text, e.source());
    text
}

/// An error and its causes, each once (a cause often repeats its error's text).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    append_causes(&mut text, e.source());
    text
}

/// Appends `source` and its own causes to `text`, `: `-separated, skipping one that `text`
/// already ends with.
fn append_causes(text: &mut String, mut source: Option<&(dyn std::error::Error + 'static)>) {
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
}
