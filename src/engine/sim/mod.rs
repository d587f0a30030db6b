//! kitt's own engine simulator (`kitt sim`): an HTTP server that speaks the wire formats of the
//! engines kitt tests — vLLM's OpenAI-compatible API (`--api openai`), text-generation-inference's
//! (`--api tgi`) and Ollama's (`--api ollama`) — so that suites run when no real engine is at hand,
//! and kitt's tests measure its client against byte-faithful answers.
//!
//! Owns those wire formats (one module per API: `openai`, `tgi`, `ollama`), the reading of a real
//! engine's command line (`mimic`, so the sim can be a container image's program and kitt's built-in
//! templates run through Docker with their real args), and the counters behind `/metrics`
//! (`metrics`); nothing else: it never reads a manifest or writes a run directory. Its answers depend
//! only on `(seed, request body bytes)` — and, for Ollama, on whether the model was pulled — never on
//! arrival order or time (DESIGN "Decisions" 7), so runs on the sim are comparable apart from timings.
//! The one exception is deliberate: which requests `--fault` breaks is counted in arrival order, so
//! that a test knows exactly how many break.
//!
//! The knobs exist so that the client's fallback paths run (DESIGN "Traps that make a toy"): several
//! tokens per write (`--tokens-per-chunk`) and no engine counts (`--usage false`) force the client to
//! count tokens itself; `--reasoning-tokens` sends reasoning deltas that must not count as the first
//! content token; `--error-rate` fails a deterministic share of requests; `--server-version` lets a
//! test change the reported engine version between runs. With zero delays the sim never sleeps, so the
//! client's own overhead can be measured against it. `--tls-cert`/`--tls-key` and `--require-header`
//! make it look like a protected deployment, for kitt's endpoint mode (`access`). `--fault` makes it
//! fail as engines and networks fail — stalls, resets, bad JSON, HTTP errors, crashes (`fault`, and
//! `socket` for the connection's end; docs/faults.md) — for a known share of requests.

mod access;
mod fault;
#[cfg(test)]
mod fault_tests;
mod flags;
mod generation;
mod log;
mod metrics;
mod mimic;
mod ollama;
mod openai;
mod socket;
mod stream;
#[cfg(test)]
mod tests;
mod tgi;
#[cfg(test)]
mod wire_tests;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
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
pub use fault::{CRASH_EXIT, FaultArg, FaultKind, FaultSpec};
use fault::{Call, Faults};
pub use flags::Parsed;
use generation::Generation;
use log::RequestLog;
use metrics::Counters;
pub use mimic::{Mimic, MimicError, Served, report, resolve};
use socket::{Socket, Switch};
use stream::{EventStream, Pacing, SimBody, Wire};

/// The API flavour the simulator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimApi {
    /// OpenAI-compatible, as vLLM serves it (and llama.cpp, near enough).
    Openai,
    /// Hugging Face text-generation-inference: `/generate`, `/generate_stream`, `/info`, and its
    /// OpenAI-compatible chat.
    Tgi,
    /// Ollama: `/api/generate`, `/api/chat` (NDJSON), `/api/pull`, `/api/tags`.
    Ollama,
}

impl SimApi {
    pub fn name(self) -> &'static str {
        match self {
            SimApi::Openai => "openai",
            SimApi::Tgi => "tgi",
            SimApi::Ollama => "ollama",
        }
    }
}

/// `kitt sim`: run the engine simulator.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// API flavour to speak [default: openai; with --mimic, the engine's].
    #[arg(long, value_enum)]
    pub api: Option<SimApi>,
    /// Imitate this engine's command line: the arguments after `--` are the engine's own (its
    /// container args), checked against the engine's real flags (an unknown one is refused) and read
    /// for where to listen and what to call the model; every flag read is printed at startup as one
    /// JSON line on stderr. Ollama reads `OLLAMA_HOST` from the environment.
    #[arg(long, value_enum)]
    pub mimic: Option<Mimic>,
    /// With --mimic: the engine's own arguments, after `--`.
    #[arg(last = true, value_name = "ENGINE_ARGS", requires = "mimic")]
    pub engine_args: Vec<String>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, conflicts_with = "mimic")]
    pub host: Option<String>,
    /// Port to listen on; 0 picks any free port [default: 8000].
    #[arg(long, conflicts_with = "mimic")]
    pub port: Option<u16>,
    /// The served model name [default: sim]; with --api ollama, a model that is pulled from the start.
    #[arg(long, conflicts_with = "mimic")]
    pub model: Option<String>,
    /// --api ollama: models that are pulled from the start (comma-separated, repeatable).
    #[arg(long, env = "KITT_SIM_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Context length reported by `/tokenize` and `/v1/models` (vLLM) and `/info` (TGI's
    /// `max_total_tokens`); TGI also refuses prompts that do not fit it.
    #[arg(long, default_value_t = 4096)]
    pub max_model_len: u32,
    /// Delay before the first token, in milliseconds.
    #[arg(long, env = "KITT_SIM_TTFT_MS", default_value_t = 0.0)]
    pub ttft_ms: f64,
    /// Delay per token after the first chunk, in milliseconds (a chunk of k tokens waits k × itl).
    #[arg(long, env = "KITT_SIM_ITL_MS", default_value_t = 0.0)]
    pub itl_ms: f64,
    /// Tokens per network write (the last may carry fewer). TGI still sends one event per token.
    #[arg(long, env = "KITT_SIM_TOKENS_PER_CHUNK", default_value_t = 1)]
    pub tokens_per_chunk: u32,
    /// Answer length when the request gives no limit (`max_tokens`, `max_new_tokens`, `num_predict`).
    #[arg(long, default_value_t = 128)]
    pub output_tokens: u32,
    /// Run every answer to its token limit, as if each request set `ignore_eos`. Without it, an
    /// answer whose request does not set `ignore_eos` (TGI and Ollama have no such field) may stop
    /// early at a drawn end-of-sequence, as a real model does.
    #[arg(long, env = "KITT_SIM_IGNORE_EOS")]
    pub ignore_eos: bool,
    /// An answer key (JSONL of `{"match": TEXT, "answer": TEXT}`): a request whose body holds a
    /// `match` is answered with its `answer` (the match found latest in the prompt wins, so an
    /// item's own question beats its few-shot examples; an empty `match` is the default answer).
    /// Evals against the simulator then score exactly what the key says. Empty: no key.
    #[arg(long, env = "KITT_SIM_ANSWERS", default_value = "")]
    pub answers: String,
    /// The key read from `--answers`: (the match as it appears JSON-escaped in a body, answer words).
    #[arg(skip)]
    pub answer_key: Arc<Vec<(String, Vec<String>)>>,
    /// Share of requests answered with a failure, chosen deterministically from the request hash.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Reasoning-first mode: this many reasoning tokens before the content (OpenAI
    /// `reasoning_content`, Ollama `thinking`; TGI has none).
    #[arg(long, default_value_t = 0)]
    pub reasoning_tokens: u32,
    /// Send the engine's own token counts (OpenAI `usage` when asked, TGI `details`, Ollama
    /// `eval_count`); `--usage false` never sends them (forces clients onto their fallback counts).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub usage: bool,
    /// Seed mixed into every request hash.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Version reported by `GET /version` (TGI: `/info`, Ollama: `/api/version`) and the `server`
    /// response header.
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
    /// Inject a fault into a share of the calls (repeatable; comma-separated lists and empty values
    /// too). KIND is one of: stall (stop mid-answer, keep the connection open), cut (close it
    /// mid-answer: FIN), reset (RST mid-answer), reset_head (write `HTTP/1.1 2`, then RST), bad_json
    /// (an event that is not JSON), http_500, http_429 (with `Retry-After: 1`), slow_first_token
    /// (--fault-delay before the first token), crash (exit with status 70; once per --fault-state),
    /// slow_health, slow_tokenize (held --fault-delay), loading (health answers 503 for the first
    /// --fault-delay). RATE (default 1; a decimal or N/D) and AFTER (default 0) pick the calls:
    /// counting generation, tokenize and health calls apart from 0, call n faults when n ≥ AFTER and
    /// ⌊(k+1)·RATE + o⌋ > ⌊k·RATE + o⌋ with k = n − AFTER and o = (seed mod D)/D for RATE = N/D
    /// reduced: exactly RATE of them, the last of every D with seed 0. See docs/faults.md.
    #[arg(
        long = "fault",
        env = "KITT_SIM_FAULTS",
        value_name = "KIND[:RATE[:AFTER]]",
        value_delimiter = ',',
        value_parser = fault::parse_arg
    )]
    pub faults: Vec<FaultArg>,
    /// How long slow_first_token, slow_health and slow_tokenize hold a call, and loading lasts, in
    /// milliseconds.
    #[arg(long, env = "KITT_SIM_FAULT_DELAY", default_value_t = 1000.0)]
    pub fault_delay: f64,
    /// A crash fault records here that it happened; a server started with this file present does
    /// not crash again (so a restarted engine serves on). Empty: every start may crash.
    #[arg(long, env = "KITT_SIM_FAULT_STATE", value_name = "PATH", default_value = "")]
    pub fault_state: String,
}

/// Largest request body read; a bigger one is answered 400.
const MAX_BODY: usize = 64 << 20;
/// How long in-flight answers may run on after shutdown before their connections are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Binds the listener `args` names (with `--mimic`, the engine's argv and the process environment
/// name it); bind port 0 and read `local_addr` to learn the port.
pub async fn bind(args: &SimArgs) -> io::Result<TcpListener> {
    let served = served(args)?;
    TcpListener::bind((served.host.as_str(), served.port)).await
}

/// With `--mimic`, the startup report ([`report`]) of what the engine argv and environment said;
/// `None` without `--mimic`, or when they do not resolve (serving then reports why).
pub fn startup_report(args: &SimArgs) -> Option<String> {
    let mimic = args.mimic?;
    served(args).ok().map(|served| report(mimic, &served))
}

/// [`resolve`] against the process environment, as an I/O error for the binary's one error path.
fn served(args: &SimArgs) -> io::Result<Served> {
    resolve(args, &|name| std::env::var(name).ok()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
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
    let api = sim.served.api.name();
    tracing::info!("listening on {scheme}://{} ({api} API)", listener.local_addr()?);
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
                let (stream, switch) = Socket::new(stream);
                let sim = Arc::clone(&sim);
                let mut stopped = stopped.clone();
                connections.spawn(async move {
                    let Some(acceptor) = sim.tls.clone() else {
                        return serve_connection(stream, switch, sim, stopped).await;
                    };
                    // The handshake runs here, not in the accept loop: a slow client delays only itself.
                    let handshake = tokio::select! {
                        handshake = acceptor.accept(stream) => handshake,
                        () = async { drop(stopped.wait_for(|stop| *stop).await) } => return,
                    };
                    match handshake {
                        Ok(stream) => serve_connection(stream, switch, sim, stopped).await,
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
async fn serve_connection<S>(
    stream: S,
    switch: Arc<Switch>,
    sim: Arc<Sim>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(Arc::clone(&sim), Arc::clone(&switch), req));
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

/// The server's configuration, checked once, plus what it has served.
struct Sim {
    args: SimArgs,
    served: Served,
    /// The first model name as a JSON string, spliced into streamed chunks.
    model_json: String,
    server: HeaderValue,
    log: Option<Mutex<RequestLog>>,
    /// Present when serving HTTPS.
    tls: Option<tokio_rustls::TlsAcceptor>,
    counters: Arc<Counters>,
    /// Ollama: the models pulled so far, oldest first.
    pulled: Mutex<Vec<ollama::Pulled>>,
    /// Wall clock at startup, in seconds (labels such as vLLM's `created`).
    started_secs: u64,
    faults: Faults,
}

impl Sim {
    fn new(mut args: SimArgs) -> io::Result<Self> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        if !args.answers.is_empty() {
            args.answer_key = Arc::new(read_answer_key(&args.answers)?);
        }
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
        let served = served(&args)?;
        let server = HeaderValue::from_str(&args.server_version)
            .map_err(|_| invalid(format!("--server-version {:?} is not a valid header value", args.server_version)))?;
        let log = args.request_log.as_deref().map(RequestLog::open).transpose()?;
        let tls = access::acceptor(args.tls_cert.as_deref(), args.tls_key.as_deref())?;
        let state = Some(std::path::Path::new(&args.fault_state)).filter(|p| !p.as_os_str().is_empty());
        let faults = Faults::new(&args.faults, args.seed, args.fault_delay, state)?;
        let model_json = Value::from(served.models.first().map_or("", String::as_str)).to_string();
        let pulled = Mutex::new(if served.api == SimApi::Ollama { ollama::seed(&served.models) } else { Vec::new() });
        Ok(Sim {
            args,
            served,
            model_json,
            server,
            log,
            tls,
            counters: Arc::default(),
            pulled,
            started_secs: unix_secs(),
            faults,
        })
    }

    /// The model name answers carry (OpenAI and TGI always serve at least one).
    fn model(&self) -> &str {
        self.served.models.first().map_or("", String::as_str)
    }

    /// Wall clock now, in seconds: a label (`created`), never a measurement.
    fn now_secs(&self) -> u64 {
        unix_secs()
    }

    /// What kind of call a request is, for counting it toward faults.
    fn call(&self, method: &Method, path: &str) -> Call {
        match self.served.api {
            SimApi::Openai => openai::call(method, path),
            SimApi::Tgi => tgi::call(method, path),
            SimApi::Ollama => ollama::call(method, path),
        }
    }

    /// Counts a request toward faults and logs it (with the fault it drew); returns that fault.
    fn admit(&self, method: &Method, path: &str, body: &[u8]) -> Option<FaultKind> {
        let call = self.call(method, path);
        match &self.log {
            None => self.faults.draw(call),
            Some(log) => log::append(log, method, path, body, || self.faults.draw(call)),
        }
    }

    async fn route(&self, method: &Method, path: &str, body: &[u8], start: Instant) -> Response<SimBody> {
        match self.served.api {
            SimApi::Openai => openai::route(self, method, path, body, start).await,
            SimApi::Tgi => tgi::route(self, method, path, body, start).await,
            SimApi::Ollama => ollama::route(self, method, path, body, start).await,
        }
    }

    fn pacing(&self, start: Instant) -> Option<Pacing> {
        Pacing::new(start, self.args.ttft_ms, self.args.itl_ms)
    }

    /// Admits `generation` and streams it as `wire` writes it.
    fn stream(
        &self,
        generation: Generation,
        wire: Box<dyn Wire>,
        content_type: &'static str,
        start: Instant,
    ) -> Response<SimBody> {
        let flight = self.counters.admit(generation.prompt_tokens);
        let events = EventStream::new(generation, wire, self.args.tokens_per_chunk, self.pacing(start), flight);
        response(StatusCode::OK, content_type, SimBody::Events(Box::new(events)))
    }

    /// Admits `generation` and waits until the whole answer is due: when its last streamed event
    /// would have been.
    async fn settle(&self, generation: Generation, start: Instant) -> Generation {
        let mut flight = self.counters.admit(generation.prompt_tokens);
        if let Some(pacing) = self.pacing(start) {
            let first = generation.first_event(self.args.tokens_per_chunk);
            tokio::time::sleep_until(pacing.deadline(generation.total, first)).await;
        }
        flight.sent(generation.total);
        flight.finish(generation.length, generation.total);
        generation
    }

    /// When the first token of `generation` was due (now, without delays).
    fn first_token_due(&self, generation: &Generation, start: Instant) -> Instant {
        let first = generation.first_event(self.args.tokens_per_chunk);
        self.pacing(start).map_or_else(Instant::now, |pacing| pacing.deadline(first, first).min(Instant::now()))
    }
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn handle(sim: Arc<Sim>, switch: Arc<Switch>, req: Request<Incoming>) -> Result<Response<SimBody>, Infallible> {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY).collect().await.map(|body| body.to_bytes());
    let path = parts.uri.path();
    let fault = sim.admit(&parts.method, path, body.as_deref().unwrap_or_default());
    // A protected server refuses before looking at the request, an unreadable body included.
    let mut response = match (access::missing(&sim.args.require_headers, &parts.headers), body) {
        (Some(name), _) => {
            let message = format!("missing or wrong {name} header");
            error_response(StatusCode::UNAUTHORIZED, "authentication_error", &message)
        }
        (None, Ok(body)) => match fault {
            None => sim.route(&parts.method, path, &body, start).await,
            Some(fault) => fault::answer(&sim, fault, &switch, &parts.method, path, &body, start).await,
        },
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
    text_response(status, "application/json", value.to_string())
}

fn text_response(status: StatusCode, content_type: &'static str, text: String) -> Response<SimBody> {
    response(status, content_type, SimBody::Full(Some(Bytes::from(text))))
}

/// OpenAI's error object (also the sim's own refusals, such as a missing required header).
fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<SimBody> {
    let error = json!({"error": {"message": message, "type": kind, "code": status.as_u16()}});
    json_response(status, error)
}

fn not_allowed(method: &Method, path: &str) -> Response<SimBody> {
    let message = format!("method {method} is not allowed on {path}");
    error_response(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", &message)
}

/// Reads an answer key (see `--answers`).
fn read_answer_key(path: &str) -> io::Result<Vec<(String, Vec<String>)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read the answer key {path}: {e}")))?;
    let mut key = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{path}:{}: {why}", n + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let (Some(m), Some(a)) = (v["match"].as_str(), v["answer"].as_str()) else {
            return Err(bad("each line needs string `match` and `answer` fields"));
        };
        // Bodies carry the prompt JSON-escaped: search for the escaped form.
        let escaped = serde_json::to_string(m).unwrap_or_default();
        let escaped = escaped[1..escaped.len() - 1].to_string();
        key.push((escaped, a.split_whitespace().map(String::from).collect()));
    }
    Ok(key)
}
