//! kitt's own engine simulator: an OpenAI-compatible HTTP server (`kitt sim`) that suites run on
//! when no real engine is at hand, and that kitt's tests measure the client against.
//!
//! Owns the wire formats of the engines it imitates (vLLM's `/v1/completions`, `/v1/chat/completions`,
//! `/tokenize`, `/health`, `/version`, `/v1/models`) and nothing else: it never reads a manifest or
//! writes a run directory. Its answers depend only on `(seed, request body bytes)`, never on arrival
//! order or time (DESIGN "Decisions" 7), so runs on the sim are comparable apart from timings.
//!
//! The knobs exist so that the client's fallback paths run (DESIGN "Traps that make a toy"): several
//! tokens per chunk (`--tokens-per-chunk`) and no `usage` (`--no-usage`) force the client to count
//! tokens itself; `--reasoning-tokens` sends reasoning deltas that must not count as the first content
//! token; `--error-rate` fails a deterministic share of requests; `--server-version` lets a test change
//! the reported engine version between runs. With zero delays the sim never sleeps, so the client's own
//! overhead can be measured against it. `--tls-cert`/`--tls-key` and `--require-header` make it look
//! like a protected deployment, for kitt's endpoint mode (`access`).

mod access;
mod generation;
mod stream;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::fs::File;
use std::future::Future;
use std::io::{self, BufWriter, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, SERVER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use access::RequiredHeader;
use generation::Endpoint;
use stream::{EventStream, Pacing, SimBody};

/// The API flavour the simulator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimApi {
    /// OpenAI-compatible, as vLLM and llama.cpp serve it.
    Openai,
}

/// `kitt sim`: run the engine simulator.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// API flavour to speak.
    #[arg(long, value_enum, default_value = "openai")]
    pub api: SimApi,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks any free port.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The served model name.
    #[arg(long, default_value = "sim")]
    pub model: String,
    /// Delay before the first token, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    pub ttft_ms: f64,
    /// Delay per token after the first chunk, in milliseconds (a chunk of k tokens waits k × itl).
    #[arg(long, default_value_t = 0.0)]
    pub itl_ms: f64,
    /// Tokens per streamed event (the last event may carry fewer).
    #[arg(long, default_value_t = 1)]
    pub tokens_per_chunk: u32,
    /// Answer length when the request gives no `max_tokens`.
    #[arg(long, default_value_t = 128)]
    pub output_tokens: u32,
    /// Share of requests answered with HTTP 500, chosen deterministically from the request hash.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Reasoning-first mode: this many reasoning tokens before the content.
    #[arg(long, default_value_t = 0)]
    pub reasoning_tokens: u32,
    /// Send `usage` when a request asks for it; `--usage false` never sends it (forces clients
    /// onto their fallback token counts).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub usage: bool,
    /// Seed mixed into every request hash.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Version reported by `GET /version` and the `server` response header.
    #[arg(long, env = "KITT_SIM_VERSION", default_value = "kitt-sim 0.1.0")]
    pub server_version: String,
    /// Append one JSON line per request received to this file.
    #[arg(long, env = "KITT_SIM_REQUEST_LOG")]
    pub request_log: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM), instead of HTTP; needs `--tls-key`.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Answer HTTP 401 to every request (`/health` too) without this header and exact value, as
    /// `'NAME: VALUE'`; repeatable.
    #[arg(long = "require-header", value_name = "NAME: VALUE", value_parser = access::RequiredHeaderParser)]
    pub require_headers: Vec<RequiredHeader>,
}

/// Largest request body read; a bigger one is answered 400.
const MAX_BODY: usize = 64 << 20;
/// How long in-flight answers may run on after shutdown before their connections are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Binds the listener `args` names; bind port 0 and read `local_addr` to learn the port.
pub async fn bind(args: &SimArgs) -> io::Result<TcpListener> {
    TcpListener::bind((args.host.as_str(), args.port)).await
}

/// Binds and serves until `shutdown` resolves.
pub async fn serve(args: SimArgs, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
    let listener = bind(&args).await?;
    serve_on(listener, args, shutdown).await
}

/// Serves on `listener` until `shutdown` resolves, then lets in-flight answers finish for a short grace.
pub async fn serve_on(
    listener: TcpListener,
    args: SimArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let sim = Arc::new(Sim::new(args)?);
    let scheme = if sim.tls.is_some() { "https" } else { "http" };
    tracing::info!("listening on {scheme}://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors and the like: transient, but don't spin on it.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true); // latency only; the stream works either way
                let sim = Arc::clone(&sim);
                let mut stopped = stopped.clone();
                connections.spawn(async move {
                    let Some(acceptor) = sim.tls.clone() else {
                        return serve_connection(stream, sim, stopped).await;
                    };
                    // The handshake runs here, not in the accept loop: a slow client delays only itself.
                    let handshake = tokio::select! {
                        handshake = acceptor.accept(stream) => handshake,
                        () = async { drop(stopped.wait_for(|stop| *stop).await) } => return,
                    };
                    match handshake {
                        Ok(stream) => serve_connection(stream, sim, stopped).await,
                        Err(e) => tracing::debug!("TLS handshake failed: {e}"),
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = stop.send(true); // cannot fail: `stopped` still holds a receiver here
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} });
    if drained.await.is_err() {
        connections.abort_all();
    }
    Ok(())
}

/// Serves HTTP/1.1 on one connection until it closes or `stopped` turns true, then closes it gracefully.
async fn serve_connection<S>(stream: S, sim: Arc<Sim>, mut stopped: tokio::sync::watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(Arc::clone(&sim), req));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = async { drop(stopped.wait_for(|stop| *stop).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("connection ended: {e}");
    }
}

/// The server's configuration, checked once, plus the request log.
struct Sim {
    args: SimArgs,
    /// The model name as a JSON string, spliced into every streamed chunk.
    model_json: String,
    server: HeaderValue,
    log: Option<Mutex<RequestLog>>,
    /// Present when serving HTTPS.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

struct RequestLog {
    seq: u64,
    out: BufWriter<File>,
}

impl Sim {
    fn new(args: SimArgs) -> io::Result<Self> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        for (name, ms) in [("--ttft-ms", args.ttft_ms), ("--itl-ms", args.itl_ms)] {
            if !(ms.is_finite() && ms >= 0.0) {
                return Err(invalid(format!("{name} must be a finite number ≥ 0, got {ms}")));
            }
        }
        if !(0.0..=1.0).contains(&args.error_rate) {
            return Err(invalid(format!("--error-rate must be within 0..=1, got {}", args.error_rate)));
        }
        if args.tokens_per_chunk == 0 {
            return Err(invalid("--tokens-per-chunk must be at least 1".into()));
        }
        let server = HeaderValue::from_str(&args.server_version)
            .map_err(|_| invalid(format!("--server-version {:?} is not a valid header value", args.server_version)))?;
        let log = match &args.request_log {
            None => None,
            Some(path) => {
                let file = File::options().create(true).append(true).open(path)?;
                Some(Mutex::new(RequestLog { seq: 0, out: BufWriter::new(file) }))
            }
        };
        let tls = access::acceptor(args.tls_cert.as_deref(), args.tls_key.as_deref())?;
        let model_json = Value::from(args.model.as_str()).to_string();
        Ok(Sim { args, model_json, server, log, tls })
    }

    fn record(&self, method: &Method, path: &str, body: &[u8]) {
        let Some(log) = &self.log else { return };
        let body = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
        // A panic elsewhere cannot leave a half-written line: each line is written and flushed whole.
        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
        let line = json!({"seq": log.seq, "method": method.as_str(), "path": path, "body": body});
        log.seq += 1;
        let written = serde_json::to_writer(&mut log.out, &line)
            .map_err(io::Error::from)
            .and_then(|()| log.out.write_all(b"\n"))
            .and_then(|()| log.out.flush());
        if let Err(e) = written {
            tracing::warn!("cannot write the request log: {e}");
        }
    }

    async fn route(&self, method: &Method, path: &str, body: &[u8], start: Instant) -> Response<SimBody> {
        match (method, path) {
            (&Method::GET, "/health") => json_response(StatusCode::OK, json!({"status": "ok"})),
            (&Method::GET, "/version") => json_response(StatusCode::OK, json!({"version": self.args.server_version})),
            (&Method::GET, "/v1/models") => json_response(
                StatusCode::OK,
                json!({"object": "list", "data": [
                    {"id": self.args.model, "object": "model", "created": 0, "owned_by": "kitt-sim"}
                ]}),
            ),
            (&Method::POST, "/tokenize") => match generation::tokenize(body) {
                Ok(tokens) => json_response(StatusCode::OK, tokens),
                Err(message) => error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &message),
            },
            (&Method::POST, "/v1/completions") => self.generate(Endpoint::Completions, body, start).await,
            (&Method::POST, "/v1/chat/completions") => self.generate(Endpoint::Chat, body, start).await,
            (_, "/health" | "/version" | "/v1/models" | "/tokenize" | "/v1/completions" | "/v1/chat/completions") => {
                let message = format!("method {method} is not allowed on {path}");
                error_response(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", &message)
            }
            _ => error_response(StatusCode::NOT_FOUND, "not_found_error", &format!("no route for {method} {path}")),
        }
    }

    async fn generate(&self, endpoint: Endpoint, body: &[u8], start: Instant) -> Response<SimBody> {
        let generation = match generation::plan(endpoint, body, &self.args) {
            Ok(generation) => generation,
            Err(message) => {
                return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &message);
            }
        };
        if generation.fails {
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "simulated failure");
        }
        // Wall clock only labels the answer (`created`); timing uses the monotonic `start`.
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let pacing = Pacing::new(start, self.args.ttft_ms, self.args.itl_ms);
        if generation.stream {
            let events = EventStream::new(generation, &self.model_json, created, self.args.tokens_per_chunk, pacing);
            return response(StatusCode::OK, "text/event-stream", SimBody::Events(Box::new(events)));
        }
        if let Some(pacing) = pacing {
            // The whole answer is due when its last streamed event would have been.
            let first = generation.first_event(self.args.tokens_per_chunk);
            tokio::time::sleep_until(pacing.deadline(generation.total, first)).await;
        }
        json_response(StatusCode::OK, generation.response(&self.args.model, created))
    }
}

async fn handle(sim: Arc<Sim>, req: Request<Incoming>) -> Result<Response<SimBody>, Infallible> {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY).collect().await.map(|body| body.to_bytes());
    let path = parts.uri.path();
    sim.record(&parts.method, path, body.as_deref().unwrap_or_default());
    // A protected server refuses before looking at the request, an unreadable body included.
    let mut response = match (access::missing(&sim.args.require_headers, &parts.headers), body) {
        (Some(name), _) => {
            let message = format!("missing or wrong {name} header");
            error_response(StatusCode::UNAUTHORIZED, "authentication_error", &message)
        }
        (None, Ok(body)) => sim.route(&parts.method, path, &body, start).await,
        (None, Err(e)) => {
            error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &format!("cannot read the body: {e}"))
        }
    };
    response.headers_mut().insert(SERVER, sim.server.clone());
    Ok(response)
}

fn response(status: StatusCode, content_type: &'static str, body: SimBody) -> Response<SimBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(status: StatusCode, value: Value) -> Response<SimBody> {
    let body = SimBody::Full(Some(Bytes::from(value.to_string())));
    response(status, "application/json", body)
}

/// OpenAI's error object.
fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<SimBody> {
    let error = json!({"error": {"message": message, "type": kind, "code": status.as_u16()}});
    json_response(status, error)
}
