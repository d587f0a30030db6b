//! The measured path's HTTP/1.1 client: a pool of kept-alive connections to one engine, each a
//! TCP stream (TCP_NODELAY) or TLS over one, speaking just the part of HTTP/1.1 (RFC 9112) a
//! completion call needs.
//!
//! Owns connections, the bytes of a request and the framing of an answer (its head, then a body
//! by `Content-Length`, chunked, or up to the close); it never interprets the body (the client
//! does, stamping each read) and never decides whether an answer is finished being read: the client
//! gives a connection back ([`Transport::give_back`]) after reading its answer, and only one whose
//! answer was read to the end and that the server keeps open goes back into the pool.
//!
//! Why not a general HTTP client here: at tens of thousands of requests a second, what a general
//! client does per request (a request object with a header map, the answer's header map, a channel
//! from the connection to the body, a buffer per body chunk) costs more than kitt measures, and a
//! load generator's client must not be the bottleneck it reports. Here a request is one write of a
//! head built once per target plus its body; an answer is read into one buffer per connection,
//! its head parsed in place (`httparse`), and its body handed on as slices of that buffer.
//!
//! An idle connection is checked when taken from the pool, without waiting: one the server closed
//! meanwhile is seen closed then and skipped without sending anything on it.
//! The engine's default headers may be secrets: they are marked sensitive, and no error or log
//! line here quotes a header.

use std::fmt;
use std::future::Future as _;
use std::future::poll_fn;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use hyper::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderValue, TRANSFER_ENCODING};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::ClientError;
use crate::plan::RequestTemplate;

/// What a connection's read buffer starts at; it grows only for an answer's head that does not fit.
const READ_BUFFER: usize = 16 << 10;
/// The largest answer head read (status line and headers).
const MAX_HEAD: usize = 64 << 10;
/// Most headers an answer may have.
const MAX_HEADERS: usize = 96;

/// A kept-alive HTTP/1.1 connection and the answer being read on it.
pub(super) struct Conn {
    stream: Stream,
    /// Bytes read: `buf[pos..end]` are not consumed yet.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// The server closed its side: a read returned no bytes.
    eof: bool,
    /// When the last read returned, taken before anything looks at its bytes.
    read_at: Instant,
    /// The request being written.
    out: Vec<u8>,
    /// Where the current answer's body is.
    body: Body,
    /// The server lets the connection carry another request after this answer.
    keep_alive: bool,
    /// Bytes of the current answer read so far (a failure after any is never resent).
    received: usize,
    /// The request's deadline timer, made on the first read that has to wait: one per connection,
    /// not one per request or read (see `fill`).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How the rest of the current answer's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Body {
    /// Read to its end (or no answer yet).
    Done,
    /// This many bytes are left.
    Length(u64),
    /// `Transfer-Encoding: chunked`, at this point of a chunk.
    Chunked(Chunk),
    /// Until the server closes the connection.
    UntilClose,
}

/// Where a chunked body's decoder is (RFC 9112 §7.1).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Chunk {
    /// In a chunk's size: the value so far and how many hex digits it had.
    Size(u64, u8),
    /// In a chunk extension (after `;`) or whitespace after the size, up to the line's end.
    Ext(u64),
    /// After the size line's `\r`.
    SizeLf(u64),
    /// This many data bytes are left in the chunk.
    Data(u64),
    /// After a chunk's data: its `\r` then `\n`.
    DataCr,
    DataLf,
    /// In the trailer section, at the start of a line or inside one.
    Trailer {
        line_start: bool,
    },
    /// After the trailer section's closing `\r`.
    TrailerLf,
}

/// The connections to one engine and what every request to it carries.
pub(super) struct Transport {
    /// `host:port` to connect to (an IPv6 address without brackets).
    pub(super) host: String,
    pub(super) port: u16,
    /// `https`: the TLS setup and the name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The base URL's path, without a trailing `/` (usually empty); request paths follow it.
    prefix: String,
    /// `Host`, `Accept`, `Content-Type` and the engine's default headers (sensitive).
    pub(super) headers: HeaderMap,
    /// The target of the first request template seen: a benchmark sends one template throughout.
    route: OnceLock<Route>,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<Conn>>,
    /// Most idle connections kept: the largest concurrency a load asked for.
    max_idle: std::sync::atomic::AtomicUsize,
    /// Connections opened so far (a new connection is rare once the pool is warm).
    opened: AtomicU64,
}

/// A request template's method and target, with the head of its requests written once.
#[derive(Clone)]
pub(super) struct Route {
    method_text: String,
    path_text: String,
    /// The request line and every header, up to the value of `Content-Length` (it may hold
    /// secrets: never shown).
    head: Vec<u8>,
}

/// A connection taken from the pool or just opened, ready to carry one request.
pub(super) struct Lease {
    pub(super) conn: Conn,
    /// It carried an answer before: the server may have closed it since (a stale connection).
    pub(super) reused: bool,
}

/// Why no connection could be had; `reason` carries the cause chain, never a header.
pub(super) struct ConnectError {
    pub(super) timed_out: bool,
    pub(super) reason: String,
}

/// Why a request or its answer failed on the wire.
#[derive(Debug)]
pub(super) enum WireError {
    /// Writing the request, or reading before any byte of the answer, failed.
    Io(io::Error),
    /// The server closed the connection before this many bytes of the answer (0: none at all).
    Closed { read: usize },
    /// The connection was reset (RST) after this many bytes of the answer.
    Reset { read: usize },
    /// The answer is not HTTP/1.1 as RFC 9112 has it.
    Protocol(String),
    /// The read's deadline passed first.
    Deadline,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{}", super::causes(e)),
            WireError::Closed { read: 0 } => f.write_str("the connection closed before any answer"),
            WireError::Closed { .. } => f.write_str("the connection closed before the answer ended"),
            WireError::Reset { read: 0 } => f.write_str("the connection was reset before any answer"),
            WireError::Reset { read } => write!(f, "the connection was reset after {read} bytes of the answer"),
            WireError::Protocol(what) => write!(f, "not a valid HTTP/1.1 answer: {what}"),
            WireError::Deadline => f.write_str("the deadline passed"),
        }
    }
}

impl WireError {
    /// What a reused kept-alive connection shows when the server had closed it before the
    /// request reached it: closed or reset while the request was being written, or before a
    /// single byte of answer. Once any byte of the answer arrived the engine has seen the
    /// request, and a failure is never this.
    pub(super) fn stale(&self) -> bool {
        use io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        match self {
            WireError::Closed { read } | WireError::Reset { read } => *read == 0,
            WireError::Io(e) => matches!(e.kind(), ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof),
            WireError::Protocol(_) | WireError::Deadline => false,
        }
    }

    pub(super) fn timed_out(&self) -> bool {
        matches!(self, WireError::Deadline) || matches!(self, WireError::Io(e) if e.kind() == io::ErrorKind::TimedOut)
    }

    /// The connection was reset (RST), at any point.
    pub(super) fn reset(&self) -> bool {
        use io::ErrorKind::{ConnectionAborted, ConnectionReset};
        matches!(self, WireError::Reset { .. })
            || matches!(self, WireError::Io(e) if matches!(e.kind(), ConnectionReset | ConnectionAborted))
    }
}

impl Transport {
    /// A transport to `url` (already checked to be `http` or `https` with a host). `headers` are
    /// the engine's default headers, already marked sensitive.
    pub(super) fn new(
        url: &reqwest::Url,
        defaults: HeaderMap,
        tls: Option<Arc<ClientConfig>>,
        max_connections: usize,
    ) -> Result<Self, ClientError> {
        let bad_url = |reason: String| ClientError::Url { url: url.to_string(), reason };
        let Some(name) = url.host_str() else {
            return Err(bad_url("expected http://HOST:PORT or https://HOST:PORT".into()));
        };
        // An IPv6 host is bracketed in the URL and the `Host` header, not when connecting.
        let host = name.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(name).to_string();
        let name = name.to_string();
        let port = url.port_or_known_default().ok_or_else(|| bad_url("no port".into()))?;
        // The `Host` header names the port only when it is not the scheme's default, as browsers do.
        let authority = match url.port() {
            Some(port) => format!("{name}:{port}"),
            None => name,
        };
        let mut headers = defaults;
        let host_value = HeaderValue::from_str(&authority).map_err(|e| bad_url(e.to_string()))?;
        if !headers.contains_key(HOST) {
            headers.insert(HOST, host_value);
        }
        if !headers.contains_key(ACCEPT) {
            headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let tls = match tls {
            None => None,
            Some(config) => {
                let server = match host.parse::<IpAddr>() {
                    Ok(ip) => ServerName::IpAddress(ip.into()),
                    Err(_) => ServerName::try_from(host.clone()).map_err(|e| bad_url(e.to_string()))?,
                };
                Some((TlsConnector::from(config), server))
            }
        };
        Ok(Transport {
            host,
            port,
            tls,
            prefix: url.path().trim_end_matches('/').to_string(),
            headers,
            route: OnceLock::new(),
            idle: Mutex::new(Vec::with_capacity(max_connections.max(1))),
            max_idle: std::sync::atomic::AtomicUsize::new(max_connections.max(1)),
            opened: AtomicU64::new(0),
        })
    }

    /// The method and target of `call`: its head is written once for the first template, then the
    /// template is only compared.
    pub(super) fn route(&self, call: &RequestTemplate) -> Result<std::borrow::Cow<'_, Route>, String> {
        if let Some(route) = self.route.get()
            && route.method_text == call.method
            && route.path_text == call.path
        {
            return Ok(std::borrow::Cow::Borrowed(route));
        }
        let method = &call.method;
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
            return Err(format!("`{method}` is not an HTTP method"));
        }
        let target = format!("{}{}", self.prefix, call.path);
        if !target.starts_with('/') || target.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(format!(
                "`{}` is not a request path: it must start with `/` and have no spaces or control characters",
                call.path
            ));
        }
        let mut head = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
        // The body's length is the request's own: a default header cannot set it or its framing.
        for (name, value) in self.headers.iter().filter(|(n, _)| **n != CONTENT_LENGTH && **n != TRANSFER_ENCODING) {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"content-length: ");
        let route = Route { method_text: call.method.clone(), path_text: call.path.clone(), head };
        if self.route.set(route.clone()).is_ok()
            && let Some(set) = self.route.get()
        {
            return Ok(std::borrow::Cow::Borrowed(set));
        }
        Ok(std::borrow::Cow::Owned(route))
    }

    /// An idle connection that is still open, else a new one.
    pub(super) async fn lease(&self) -> Result<Lease, ConnectError> {
        while let Some(mut conn) = self.take_idle() {
            // Nothing was sent on a connection found closed here: no retry to count.
            if conn.still_open() {
                return Ok(Lease { conn, reused: true });
            }
        }
        let conn = self.open().await?;
        Ok(Lease { conn, reused: false })
    }

    /// A new connection, never one from the pool (a resend goes out on one).
    pub(super) async fn fresh(&self) -> Result<Lease, ConnectError> {
        Ok(Lease { conn: self.open().await?, reused: false })
    }

    /// Keeps up to `n` idle connections from now on (never fewer than before): the pool follows
    /// the largest load sent through it.
    pub(super) fn keep_up_to(&self, n: usize) {
        self.max_idle.fetch_max(n.max(1), Ordering::Relaxed);
    }

    fn take_idle(&self) -> Option<Conn> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }

    /// Returns a connection after its answer, unless the answer was not read to its end, the
    /// server is closing it, or the pool is full.
    pub(super) fn give_back(&self, conn: Conn) {
        if !conn.reusable() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle.load(Ordering::Relaxed) {
            idle.push(conn);
        }
    }

    async fn open(&self) -> Result<Conn, ConnectError> {
        let failed = |what: &str, e: std::io::Error| ConnectError {
            timed_out: e.kind() == std::io::ErrorKind::TimedOut,
            reason: format!("{what} {}:{}: {}", self.host, self.port, super::causes(&e)),
        };
        let tcp =
            TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| failed("cannot connect to", e))?;
        tcp.set_nodelay(true).map_err(|e| failed("cannot set TCP_NODELAY on", e))?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, server)) => Stream::Tls(Box::new(
                connector.connect(server.clone(), tcp).await.map_err(|e| failed("TLS handshake failed with", e))?,
            )),
        };
        Ok(Conn::new(stream))
    }

    /// How many connections were opened so far.
    #[cfg(test)]
    pub(super) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

impl Route {
    /// The bytes of a request with `body`: the head written once, the body's length, the body.
    pub(super) fn write(&self, body: &[u8], out: &mut Vec<u8>) {
        use std::io::Write as _;
        out.clear();
        out.reserve(self.head.len() + 24 + body.len());
        out.extend_from_slice(&self.head);
        let _ = write!(out, "{}\r\n\r\n", body.len()); // writing to a Vec cannot fail
        out.extend_from_slice(body);
    }
}

impl Conn {
    fn new(stream: Stream) -> Self {
        Conn {
            stream,
            buf: vec![0; READ_BUFFER],
            pos: 0,
            end: 0,
            eof: false,
            read_at: Instant::now(),
            out: Vec::new(),
            body: Body::Done,
            keep_alive: false,
            received: 0,
            timer: None,
        }
    }

    /// Sends a request for `route` with `body` and reads the answer's head (skipping interim
    /// `1xx` answers) by `deadline`; its status. The body's first bytes may already be buffered.
    pub(super) async fn send(&mut self, route: &Route, body: &[u8], deadline: Instant) -> Result<u16, WireError> {
        let mut out = std::mem::take(&mut self.out);
        route.write(body, &mut out);
        self.received = 0;
        let mut write = std::pin::pin!(async {
            self.stream.write_all(&out).await?;
            self.stream.flush().await
        });
        // A request almost always fits the socket's buffer at once: only a write that has to
        // wait needs a timer.
        let written = match futures_util::FutureExt::now_or_never(write.as_mut()) {
            Some(done) => Ok(done),
            None => tokio::time::timeout_at(deadline.into(), write).await,
        };
        self.out = out;
        written.map_err(|_| WireError::Deadline)?.map_err(WireError::Io)?;
        loop {
            if let Some(status) = self.head()? {
                if (100..200).contains(&status) && status != 101 {
                    continue;
                }
                return Ok(status);
            }
            if self.end == self.buf.len() {
                self.make_room()?;
            }
            if self.fill(deadline).await? == 0 {
                return Err(WireError::Closed { read: self.received });
            }
        }
    }

    /// Parses an answer head at the start of the buffered bytes: its status, or `None` when it is
    /// not all here yet. Sets how the body is delimited and whether the connection is kept.
    fn head(&mut self) -> Result<Option<u16>, WireError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut answer = httparse::Response::new(&mut headers);
        let bad = |e: String| WireError::Protocol(e);
        let len = match answer.parse(&self.buf[self.pos..self.end]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(bad(format!("more than {MAX_HEADERS} headers"))),
            Err(e) => return Err(bad(format!("{e} in the status line or headers"))),
        };
        let status = answer.code.unwrap_or_default();
        let http11 = answer.version == Some(1);
        let mut keep_alive = http11;
        let mut length: Option<u64> = None;
        let mut chunked = None;
        for h in answer.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .map(str::trim)
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| bad("a `Content-Length` that is not a number".into()))?;
                if length.is_some_and(|l| l != n) {
                    return Err(bad("two different `Content-Length`s".into()));
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // The last coding says whether the body is chunked (RFC 9112 §6.3).
                let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii();
                chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                for option in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if option.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if option.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                        keep_alive = true;
                    }
                }
            }
        }
        self.pos += len;
        self.body = if (100..200).contains(&status) || status == 204 || status == 304 {
            Body::Done
        } else {
            match (chunked, length) {
                (Some(true), _) => Body::Chunked(Chunk::Size(0, 0)),
                // A body in a coding other than chunked lasts until the close.
                (Some(false), _) | (None, None) => Body::UntilClose,
                (None, Some(0)) => Body::Done,
                (None, Some(n)) => Body::Length(n),
            }
        };
        if chunked.is_some() && length.is_some() || self.body == Body::UntilClose {
            keep_alive = false;
        }
        self.keep_alive = keep_alive;
        Ok(Some(status))
    }

    /// Hands the answer's body bytes buffered so far to `sink`, in order; whether the body is
    /// complete. A connection that closed before the body's end is an error.
    pub(super) fn body(&mut self, sink: &mut impl FnMut(&[u8])) -> Result<bool, WireError> {
        while self.pos < self.end {
            match self.body {
                Body::Done => break,
                Body::Length(left) => {
                    let take = (self.end - self.pos).min(usize::try_from(left).unwrap_or(usize::MAX));
                    sink(&self.buf[self.pos..self.pos + take]);
                    self.pos += take;
                    self.body = if left == take as u64 { Body::Done } else { Body::Length(left - take as u64) };
                }
                Body::UntilClose => {
                    sink(&self.buf[self.pos..self.end]);
                    self.pos = self.end;
                }
                Body::Chunked(Chunk::Data(left)) => {
                    let take = (self.end - self.pos).min(usize::try_from(left).unwrap_or(usize::MAX));
                    sink(&self.buf[self.pos..self.pos + take]);
                    self.pos += take;
                    let left = left - take as u64;
                    self.body = Body::Chunked(if left == 0 { Chunk::DataCr } else { Chunk::Data(left) });
                }
                Body::Chunked(state) => {
                    let byte = self.buf[self.pos];
                    self.pos += 1;
                    self.body = match chunk_step(state, byte)? {
                        Some(next) => Body::Chunked(next),
                        None => Body::Done,
                    };
                }
            }
        }
        if self.body == Body::Done {
            return Ok(true);
        }
        if self.eof {
            if self.body == Body::UntilClose {
                self.body = Body::Done;
                return Ok(true);
            }
            return Err(WireError::Closed { read: self.received.max(1) });
        }
        Ok(false)
    }

    /// Waits for more of the answer (at least one byte, or the close) until `deadline`.
    pub(super) async fn read_more(&mut self, deadline: Instant) -> Result<(), WireError> {
        if self.eof {
            return Ok(());
        }
        if self.end == self.buf.len() {
            self.make_room()?;
        }
        self.fill(deadline).await.map(drop)
    }

    /// Bytes of the current answer read so far.
    pub(super) fn received(&self) -> usize {
        self.received
    }

    /// When the last read returned: the arrival of the bytes it brought (the answer's head, then
    /// each part of its body), stamped before any of them was parsed.
    pub(super) fn read_at(&self) -> Instant {
        self.read_at
    }

    /// Whether the connection can carry another request: its answer was read to the end and
    /// neither side is closing it.
    fn reusable(&self) -> bool {
        self.body == Body::Done && self.keep_alive && !self.eof && self.pos == self.end
    }

    /// Whether an idle connection is still open, without waiting: the server closed it meanwhile,
    /// or sent something unasked, and it cannot carry a request.
    fn still_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match &mut self.stream {
            Stream::Plain(tcp) => matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            Stream::Tls(tls) => {
                let mut cx = Context::from_waker(Waker::noop());
                let mut read = ReadBuf::new(&mut probe);
                matches!(Pin::new(tls.as_mut()).poll_read(&mut cx, &mut read), Poll::Pending)
            }
        }
    }

    /// Moves unread bytes to the buffer's start, or grows it for a head that does not fit yet.
    fn make_room(&mut self) -> Result<(), WireError> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        } else if self.buf.len() < MAX_HEAD {
            self.buf.resize((self.buf.len() * 2).min(MAX_HEAD), 0);
        } else {
            return Err(WireError::Protocol(format!("an answer head longer than {} KiB", MAX_HEAD >> 10)));
        }
        Ok(())
    }

    /// One read into the free end of the buffer by `deadline`: how many bytes came (none: the
    /// server closed its side). A read that is ready never touches the timer; one that must wait
    /// polls the connection's timer, which fires no later than the deadline.
    async fn fill(&mut self, deadline: Instant) -> Result<usize, WireError> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
        let n = poll_fn(|cx| {
            let mut read = ReadBuf::new(&mut self.buf[self.end..]);
            match Pin::new(&mut self.stream).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Deadlines only move later as an answer (and the next one) goes on, so the
                    // timer is moved only when it must fire earlier; when it fires before the
                    // read's deadline it is re-armed then. A read that waits thus costs a poll of
                    // the timer, not a trip through the timer wheel.
                    let at = tokio::time::Instant::from_std(deadline);
                    let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    if timer.deadline() > at {
                        timer.as_mut().reset(at);
                    }
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if Instant::now() >= deadline {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::TimedOut)));
                    }
                    timer.as_mut().reset(at);
                    match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Err(io::Error::from(io::ErrorKind::TimedOut))),
                        Poll::Pending => Poll::Pending,
                    }
                }
            }
        })
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut => WireError::Deadline,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted if self.received > 0 => {
                WireError::Reset { read: self.received }
            }
            _ => WireError::Io(e),
        })?;
        self.read_at = Instant::now();
        self.end += n;
        self.received += n;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }
}

/// One byte of a chunked body's framing (not chunk data): the decoder's next state, `None` once
/// the body is complete.
fn chunk_step(state: Chunk, byte: u8) -> Result<Option<Chunk>, WireError> {
    let bad = |what: &str| Err(WireError::Protocol(format!("a chunked body with {what}")));
    let after_size = |size: u64| if size == 0 { Chunk::Trailer { line_start: true } } else { Chunk::Data(size) };
    Ok(Some(match state {
        Chunk::Size(size, digits) => match (byte as char).to_digit(16) {
            Some(digit) if digits < 16 => Chunk::Size(size << 4 | u64::from(digit), digits + 1),
            Some(_) => return bad("a chunk size over 16 hex digits"),
            None if digits == 0 => return bad("a chunk size line without a size"),
            None => match byte {
                b'\r' => Chunk::SizeLf(size),
                b'\n' => after_size(size),
                b';' | b' ' | b'\t' => Chunk::Ext(size),
                _ => return bad("a chunk size that is not hexadecimal"),
            },
        },
        Chunk::Ext(size) => match byte {
            b'\n' => after_size(size),
            _ => Chunk::Ext(size),
        },
        Chunk::SizeLf(size) => match byte {
            b'\n' => after_size(size),
            _ => return bad("a chunk size line not ended by CRLF"),
        },
        Chunk::Data(_) => unreachable!("chunk data is taken in bulk"),
        Chunk::DataCr => match byte {
            b'\r' => Chunk::DataLf,
            b'\n' => Chunk::Size(0, 0),
            _ => return bad("chunk data longer than its size"),
        },
        Chunk::DataLf => match byte {
            b'\n' => Chunk::Size(0, 0),
            _ => return bad("chunk data not ended by CRLF"),
        },
        Chunk::Trailer { line_start } => match byte {
            b'\r' if line_start => Chunk::TrailerLf,
            b'\n' if line_start => return Ok(None),
            b'\n' => Chunk::Trailer { line_start: true },
            _ => Chunk::Trailer { line_start: false },
        },
        Chunk::TrailerLf => match byte {
            b'\n' => return Ok(None),
            _ => return bad("a trailer section not ended by CRLF"),
        },
    }))
}

/// A connection's byte stream: plain TCP or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
