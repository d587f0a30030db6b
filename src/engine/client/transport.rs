//! The measured path's HTTP/1.1 transport: a pool of kept-alive connections to one engine, each a
//! `hyper::client::conn::http1` connection over TCP (TCP_NODELAY) or tokio-rustls.
//!
//! Owns connections and the bytes of a request's head; it never reads an answer's body (the client
//! does, stamping chunks) and never decides whether a connection may be reused: the client gives
//! one back ([`Transport::give_back`]) only after reading its answer to the end. A connection
//! dropped instead closes.
//!
//! Why not reqwest here: at tens of thousands of requests a second its per-request work (URL
//! parsing, header maps merged per request, a generic pool with its own bookkeeping) costs more
//! than kitt measures, and a load generator's client must not be the bottleneck it reports.
//! Everything a request needs (the target URI, the `Host` header, the engine's default headers)
//! is built once here; a request only clones it.
//!
//! A connection has no task of its own: the request using it polls hyper's `Connection` (the
//! half that reads and writes the socket) together with whatever it awaits (the answer's head, a
//! body chunk), so a request's work stays on one task and one thread, with no wake-up handed
//! between tasks per chunk. An idle connection is polled once when taken from the pool: one the
//! server closed meanwhile is seen closed then and skipped without sending anything on it.
//! The engine's default headers may be secrets: they are marked sensitive, and no error or log
//! line here quotes a header.

use std::future::{Future, poll_fn};
use std::io;
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as _, Frame, Incoming};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::ClientError;
use crate::plan::RequestTemplate;

/// A kept-alive HTTP/1.1 connection: the handle requests go through and the half that does its
/// I/O, polled by whoever uses the connection.
pub(super) struct Conn {
    sender: SendRequest<Full<Bytes>>,
    io: Connection<TokioIo<Stream>, Full<Bytes>>,
    /// The I/O half finished: the connection is closed (by either side, or on an error).
    ended: bool,
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
    max_idle: usize,
    /// Connections opened so far (a new connection is rare once the pool is warm).
    opened: AtomicU64,
}

/// A request template's method and target, parsed once.
#[derive(Clone)]
pub(super) struct Route {
    method_text: String,
    path_text: String,
    method: Method,
    pub(super) uri: Uri,
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
            max_idle: max_connections.max(1),
            opened: AtomicU64::new(0),
        })
    }

    /// The method and target of `call`: parsed once for the first template, then only compared.
    pub(super) fn route(&self, call: &RequestTemplate) -> Result<std::borrow::Cow<'_, Route>, String> {
        if let Some(route) = self.route.get()
            && route.method_text == call.method
            && route.path_text == call.path
        {
            return Ok(std::borrow::Cow::Borrowed(route));
        }
        let method = Method::from_bytes(call.method.as_bytes())
            .map_err(|_| format!("`{}` is not an HTTP method", call.method))?;
        let target = format!("{}{}", self.prefix, call.path);
        let uri = Uri::from_maybe_shared(Bytes::from(target))
            .map_err(|e| format!("`{}` is not a request path: {e}", call.path))?;
        let route = Route { method_text: call.method.clone(), path_text: call.path.clone(), method, uri };
        if self.route.set(route.clone()).is_ok()
            && let Some(set) = self.route.get()
        {
            return Ok(std::borrow::Cow::Borrowed(set));
        }
        Ok(std::borrow::Cow::Owned(route))
    }

    /// The request for `route` with `body`: clones of what was built once.
    pub(super) fn request(&self, route: &Route, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = route.method.clone();
        *request.uri_mut() = route.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }

    /// An idle connection that is still open, else a new one.
    pub(super) async fn lease(&self) -> Result<Lease, ConnectError> {
        while let Some(mut conn) = self.take_idle() {
            // Polling it finishes the previous answer's bookkeeping and reads what arrived while
            // it was idle: a close by the server ends it. Nothing was sent on it: no retry to count.
            if conn.ready().await {
                return Ok(Lease { conn, reused: true });
            }
        }
        let conn = self.open().await?;
        Ok(Lease { conn, reused: false })
    }

    fn take_idle(&self) -> Option<Conn> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }

    /// Returns a connection whose answer was read to the end, unless the pool is full.
    pub(super) fn give_back(&self, conn: Conn) {
        if conn.ended {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
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
        match &self.tls {
            None => handshake(Stream::Plain(tcp)).await,
            Some((connector, server)) => {
                let tls =
                    connector.connect(server.clone(), tcp).await.map_err(|e| failed("TLS handshake failed with", e))?;
                handshake(Stream::Tls(Box::new(tls))).await
            }
        }
    }

    /// How many connections were opened so far.
    #[cfg(test)]
    pub(super) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

/// Starts HTTP/1.1 on `stream` (no I/O happens until the connection is first polled).
async fn handshake(stream: Stream) -> Result<Conn, ConnectError> {
    let (sender, io) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectError { timed_out: false, reason: super::causes(&e) })?;
    Ok(Conn { sender, io, ended: false })
}

impl Conn {
    /// Sends `request` and waits for the answer's head, doing the connection's I/O meanwhile.
    pub(super) async fn send(&mut self, request: Request<Full<Bytes>>) -> hyper::Result<hyper::Response<Incoming>> {
        let mut answer = pin!(self.sender.send_request(request));
        poll_fn(|cx| {
            drive(&mut self.io, &mut self.ended, cx);
            answer.as_mut().poll(cx)
        })
        .await
    }

    /// The next frame of `body` (an answer on this connection), doing the connection's I/O meanwhile.
    pub(super) async fn frame(&mut self, body: &mut Incoming) -> Option<hyper::Result<Frame<Bytes>>> {
        poll_fn(|cx| {
            drive(&mut self.io, &mut self.ended, cx);
            Pin::new(&mut *body).poll_frame(cx)
        })
        .await
    }

    /// Whether the connection can take a request now, after its previous answer was read.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            drive(&mut self.io, &mut self.ended, cx);
            if self.ended {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }
}

/// Polls the connection's I/O half once (unless it already finished). Its errors reach the
/// request through the answer or the body, so only its end is kept.
fn drive(io: &mut Connection<TokioIo<Stream>, Full<Bytes>>, ended: &mut bool, cx: &mut Context<'_>) {
    if !*ended && Pin::new(io).poll(cx).is_ready() {
        *ended = true;
    }
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

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
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
