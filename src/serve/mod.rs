//! `kitt serve`: the REST API (`/api/v1`, OpenAPI), live events from the journals, tokens and TLS.
//!
//! The server is a view and a door, never a second source of truth: it reads the same run
//! directories and results store as the CLI, and starts, resumes and cancels runs by running
//! `kitt apply --detach` and `kitt runs cancel`, so a run it started is an ordinary run that
//! goes on when the server stops. Every route but `/api/v1/health` needs a token (`tokens`):
//! starting a run is code execution on this machine, so there is no open mode, on loopback
//! either. Decisions: axum for routing with one route table that also generates the OpenAPI
//! document (`routes`, `openapi`); the connection loop is our own (hyper + tokio-rustls) so plain
//! HTTP and TLS share it and SIGTERM ends streams and connections within a bound.

pub mod agents;
pub mod api;
pub mod bundle;
pub mod events;
mod inotify;
pub mod openapi;
pub mod pages;
pub mod problem;
pub mod relays;
pub mod routes;
mod tls;
pub mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use problem::Problem;
pub use tls::TlsSource;
use tokens::{Keyring, Scope};

use crate::store::{Location, Store};

/// The largest request body (a suite is at most 1 MiB; JSON around it a little more).
pub const MAX_BODY: usize = api::MAX_SUITE_BYTES + 4096;
/// How long connections get to finish after SIGTERM.
const GRACE: Duration = Duration::from_secs(4);
/// Connections the server keeps to the store.
const STORE_CONNECTIONS: usize = 4;
/// The cookie `/login` sets.
pub const COOKIE: &str = "kitt_token";

/// What a server serves, and how.
pub struct Config {
    pub bind: SocketAddr,
    /// The store (`None`: turned off), and the text it was given as, for the `kitt` children.
    pub store: Option<Location>,
    pub store_flag: Option<PathBuf>,
    pub runs_root: PathBuf,
    pub read_only: bool,
    pub tls: Option<TlsSource>,
    /// Canonical directories whose suites `POST /api/v1/runs` may start.
    pub suites_dirs: Vec<PathBuf>,
    /// Whether `POST /api/v1/bundles` may run uploaded suites.
    pub allow_suite_upload: bool,
    /// The kitt binary that runs `apply` and `runs cancel`.
    pub exe: PathBuf,
    /// Plain HTTP on a network address (`--insecure`): every page says so.
    pub insecure: bool,
    /// DEVON, the model manager, when one is configured (`--devon-url`).
    pub devon: Option<Devon>,
    /// The server's own settings as given, each with where it came from (the Settings page).
    pub given: Vec<Given>,
}

/// DEVON (the model manager): the origin its UI and API answer on, and the environment variable
/// that holds its API key (sent as `Authorization: Bearer`; DEVON asks for one only when it has
/// `DEVON_API_KEY` set).
#[derive(Debug, Clone)]
pub struct Devon {
    /// `scheme://host[:port]`, nothing after it: the page's CSP allows exactly this origin.
    pub origin: String,
    pub token_env: String,
}

impl Devon {
    /// Checks `url` is an http(s) origin (a path is refused: the CSP names origins only).
    pub fn new(url: &str, token_env: &str) -> Result<Devon, String> {
        let url = url.trim().trim_end_matches('/');
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        let valid =
            rest.is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c)));
        if !valid {
            return Err(format!("--devon-url `{url}`: expected an origin, http(s)://HOST[:PORT], without a path"));
        }
        Ok(Devon { origin: url.to_string(), token_env: token_env.to_string() })
    }
}

/// One of the server's settings as given: its name, value and source (`flag`, `env`,
/// `default`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Given {
    pub name: &'static str,
    pub value: String,
    pub source: &'static str,
}

/// The state every handler shares.
pub struct App {
    pub cfg: Config,
    pub keyring: Keyring,
    /// Connections to the store, opened on first use; requests take them in turn, so reads on
    /// different connections run at once (a `Store` serializes the calls on its one connection).
    stores: Mutex<Vec<Arc<Store>>>,
    next_store: AtomicUsize,
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// Event streams open now.
    pub streams: AtomicUsize,
    /// One journal watcher per run that some stream follows.
    pub watchers: events::Watchers,
    /// The results page's filter values, and the store's (result count, last id) they were
    /// read at: read again only when the store changed.
    pub facets: Mutex<Option<((u64, i64), crate::store::Facets)>>,
    /// The agents that pull units from this server.
    pub agents: agents::Agents,
    /// Client shards relayed between agents.
    pub relays: relays::Relays,
    /// Failed token checks per address.
    pub auth_limit: AuthLimit,
}

/// Failed token checks per client address: after [`AuthLimit::MAX`] in a minute, no token from
/// that address is checked until the minute is over (429), so tokens cannot be tried in bulk.
#[derive(Default)]
pub struct AuthLimit {
    failures: Mutex<std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
}

impl AuthLimit {
    pub const MAX: u32 = 100;
    const WINDOW: Duration = Duration::from_secs(60);

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>> {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `ip` may not have a token checked now.
    pub fn limited(&self, ip: Option<std::net::IpAddr>) -> bool {
        let Some(ip) = ip else { return false };
        let mut m = self.lock();
        match m.get(&ip) {
            Some((n, since)) if since.elapsed() < Self::WINDOW => *n >= Self::MAX,
            Some(_) => {
                m.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// A token from `ip` failed its check.
    pub fn failed(&self, ip: Option<std::net::IpAddr>) {
        let Some(ip) = ip else { return };
        let mut m = self.lock();
        if m.len() > 100_000 {
            m.retain(|_, (_, since)| since.elapsed() < Self::WINDOW);
        }
        let e = m.entry(ip).or_insert((0, std::time::Instant::now()));
        if e.1.elapsed() >= Self::WINDOW {
            *e = (0, std::time::Instant::now());
        }
        e.0 += 1;
        if e.0 == Self::MAX {
            tracing::warn!(
                "{ip}: {} failed tokens in a minute; its tokens are not checked until the minute is over",
                Self::MAX
            );
        }
    }

    pub fn refusal() -> Problem {
        Problem::new(StatusCode::TOO_MANY_REQUESTS, "too many unknown tokens from this address; wait a minute")
    }
}

/// The client's address, as the connection loop recorded it.
pub(crate) fn peer(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// The router, with each request told its connection's peer address.
#[derive(Clone)]
struct WithPeer {
    router: Router,
    peer: SocketAddr,
}

impl tower_service::Service<axum::http::Request<hyper::body::Incoming>> for WithPeer {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = <Router as tower_service::Service<axum::http::Request<hyper::body::Incoming>>>::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        <Router as tower_service::Service<axum::http::Request<hyper::body::Incoming>>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(axum::extract::ConnectInfo(self.peer));
        self.router.call(req)
    }
}

impl App {
    /// A connection to the store, opened on first use (the store may not exist until the
    /// first run is indexed).
    pub fn store(&self) -> Result<Option<Arc<Store>>, Problem> {
        let Some(location) = &self.cfg.store else { return Ok(None) };
        let mut pool = self.stores.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.is_empty() {
            for _ in 0..STORE_CONNECTIONS {
                let opened =
                    if self.cfg.read_only { Store::open_read_only(location) } else { Store::open_existing(location) };
                match opened {
                    Ok(Some(s)) => pool.push(Arc::new(s)),
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(Problem::internal(format!("results store {location}: {e}"))),
                }
            }
        }
        let i = self.next_store.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % pool.len();
        Ok(Some(pool[i].clone()))
    }
}

/// How a route is guarded.
#[derive(Clone)]
struct Guard {
    app: Arc<App>,
    scope: Option<Scope>,
    writes: bool,
}

/// The token a request presents, and whether it came in the cookie.
pub(crate) fn presented(req: &Request) -> Result<Option<(String, bool)>, Problem> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let text = v.to_str().unwrap_or_default();
        // The scheme is case-insensitive (RFC 9110).
        return match text.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
                Ok(Some((t.trim().to_string(), false)))
            }
            _ => Err(Problem::new(StatusCode::UNAUTHORIZED, "Authorization: expected `Bearer TOKEN`")),
        };
    }
    for v in req.headers().get_all(header::COOKIE) {
        for pair in v.to_str().unwrap_or_default().split(';') {
            if let Some((k, t)) = pair.trim().split_once('=')
                && k == COOKIE
            {
                return Ok(Some((t.to_string(), true)));
            }
        }
    }
    Ok(None)
}

/// Whether a cookie-authenticated write comes from a page of this server: its `Origin` must be
/// this server's own (scheme, host and port).
pub(crate) fn same_origin(req: &Request, tls: bool) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let Some(host) = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()) else { return false };
    origin == format!("{}://{host}", if tls { "https" } else { "http" })
}

async fn guard(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let Some(needed) = g.scope else { return next.run(req).await };
    let (token, by_cookie) = match presented(&req) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Problem::new(
                StatusCode::UNAUTHORIZED,
                "this route needs a token: `Authorization: Bearer TOKEN` (kitt serve token create), or log in at /login",
            )
            .into_response();
        }
        Err(p) => return p.into_response(),
    };
    let ip = peer(&req);
    if g.app.auth_limit.limited(ip) {
        return AuthLimit::refusal().into_response();
    }
    let Some(caller) = g.app.keyring.check(&token) else {
        g.app.auth_limit.failed(ip);
        return Problem::new(StatusCode::UNAUTHORIZED, "the token is not known, or it was revoked").into_response();
    };
    if !caller.scope.allows(needed) {
        return Problem::forbidden(format!(
            "this route needs a `{}` token; `{}` is a `{}` token",
            needed.name(),
            caller.name,
            caller.scope.name()
        ))
        .into_response();
    }
    if g.writes && g.app.cfg.read_only {
        return Problem::forbidden("the server is read-only (kitt serve --read-only): it changes nothing")
            .into_response();
    }
    if by_cookie && !matches!(*req.method(), Method::GET | Method::HEAD) && !same_origin(&req, g.app.cfg.tls.is_some())
    {
        return Problem::forbidden("a write with the login cookie needs this server's own Origin header")
            .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Headers on every answer: no sniffing, a strict content policy (a page that embeds DEVON sets
/// its own, as strict but for that one frame origin), no caching, and HSTS under TLS. The
/// referrer policy is `same-origin`: nothing leaves for another origin, and a form posted by a
/// page carries this server's `Origin` (under `no-referrer` a browser sends `Origin: null`, and
/// the cookie guard would refuse every form).
async fn secure_headers(State(tls): State<bool>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    if !h.contains_key("content-security-policy") {
        h.insert("content-security-policy", HeaderValue::from_static(pages::CSP));
    }
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if tls {
        h.insert("strict-transport-security", HeaderValue::from_static("max-age=31536000"));
    }
    res
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginQuery {
    token: Option<String>,
    next: Option<String>,
}

/// Where a login goes back to: a path of this server (`/runs/x?y`), never another origin.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && !n.contains("://") => n,
        _ => "/",
    }
}

/// `/login?token=T` (the URL `kitt serve` prints) or the login page's form POST of `token=T`:
/// trades a token for an HttpOnly, SameSite=Strict cookie, for browsers (an EventSource sends no
/// headers), and goes to `next` (a page that sent the browser here) or the dashboard.
async fn login(
    State(app): State<Arc<App>>,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<SocketAddr>>>,
    method: Method,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> Response {
    let ip = connect.map(|c| c.0.0.ip());
    if app.auth_limit.limited(ip) {
        return AuthLimit::refusal().into_response();
    }
    let query = match axum::extract::Query::<LoginQuery>::try_from_uri(&uri) {
        Ok(q) => q.0,
        Err(e) => return Problem::bad_request(e.body_text()).into_response(),
    };
    let token = if method == Method::POST {
        std::str::from_utf8(&body)
            .ok()
            .and_then(|b| b.trim().split('&').find_map(|kv| kv.strip_prefix("token=")))
            .map(String::from)
    } else {
        query.token.clone()
    };
    let next = local_path(query.next.as_deref()).to_string();
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return pages::login_page(&app, &next, None);
    };
    if !token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || app.keyring.check(&token).is_none() {
        app.auth_limit.failed(ip);
        return pages::login_page(&app, &next, Some("the token is not known, or it was revoked"));
    }
    let secure = if app.cfg.tls.is_some() { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure}");
    let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, next)]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// A handler that panics answers 500 instead of dropping the connection (none should: this is
/// the last line, and it logs).
async fn contain_panics(req: Request, next: Next) -> Response {
    use futures_util::FutureExt as _;
    match std::panic::AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(res) => res,
        Err(_) => Problem::internal("the handler failed unexpectedly (a bug: see the server's log)").into_response(),
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    Problem::not_found(format!("no route {} (see /api/v1/openapi.json)", uri.path())).into_response()
}

/// The router: every route of the table behind its guard, `/login`, and problem+json for
/// unknown paths.
pub fn router(app: Arc<App>) -> Router {
    // One method router per path (GET and POST /api/v1/runs share one), each method behind
    // its own guard.
    let mut paths: std::collections::BTreeMap<&str, axum::routing::MethodRouter<Arc<App>>> = Default::default();
    for r in routes::ROUTES {
        let g = Guard { app: app.clone(), scope: r.scope, writes: r.writes };
        let method_router = (r.handler)().route_layer(axum::middleware::from_fn_with_state(g, guard));
        let merged = match paths.remove(r.path) {
            Some(existing) => existing.merge(method_router),
            None => method_router,
        };
        paths.insert(r.path, merged);
    }
    let mut router: Router<Arc<App>> = Router::new();
    for (path, method_router) in paths {
        router = router.route(
            path,
            method_router.fallback(|| async {
                Problem::new(StatusCode::METHOD_NOT_ALLOWED, "this path does not take that method").into_response()
            }),
        );
    }
    let tls = app.cfg.tls.is_some();
    router
        .route("/login", axum::routing::get(login).post(login))
        .merge(pages::router(app.clone()))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(contain_panics))
        .layer(axum::middleware::from_fn_with_state(tls, secure_headers))
        .with_state(app)
}

/// Waits for SIGTERM or SIGINT.
async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

/// SIGHUP: the certificate is read again (a self-signed one is made again if its files are
/// gone); connections already open keep theirs. A certificate that does not load leaves the old
/// one in place.
fn reload(app: &App, acceptor: &mut Option<tls::Acceptor>) {
    let Some(source) = &app.cfg.tls else { return };
    match tls::acceptor(source) {
        Ok(a) => {
            tracing::info!("SIGHUP: certificate reloaded; to trust: SHA-256 {}", a.fingerprint);
            *acceptor = Some(a);
        }
        Err(e) => tracing::warn!("SIGHUP: keeping the certificate in use: {e}"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Tokens(#[from] tokens::TokenError),
}

/// Serves until SIGTERM or SIGINT; `ready` is told the address listened on (and, under TLS,
/// the CA's fingerprint) once connections are accepted.
pub async fn serve(
    cfg: Config,
    tokens_path: PathBuf,
    admin_token: &str,
    ready: impl FnOnce(SocketAddr, Option<&str>),
) -> Result<(), ServeError> {
    let mut acceptor = match &cfg.tls {
        Some(source) => Some(tls::acceptor(source)?),
        None => None,
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let keyring = Keyring::new(tokens_path, admin_token)?;
    let listener = tokio::net::TcpListener::bind(cfg.bind).await.map_err(|e| ServeError::Bind(cfg.bind, e))?;
    let local = listener.local_addr().map_err(|e| ServeError::Bind(cfg.bind, e))?;
    let (close_tx, closing) = tokio::sync::watch::channel(false);
    let runs_root = cfg.runs_root.clone();
    let agents = agents::Agents::open(&runs_root);
    let relays = relays::Relays::new(agents.heartbeat);
    let app = Arc::new(App {
        cfg,
        keyring,
        stores: Mutex::new(Vec::new()),
        next_store: AtomicUsize::new(0),
        closing,
        streams: AtomicUsize::new(0),
        watchers: events::Watchers::default(),
        facets: Mutex::new(None),
        agents,
        relays,
        auth_limit: AuthLimit::default(),
    });
    let router = router(app.clone());
    {
        let app = app.clone();
        let closing = app.closing.clone();
        tokio::spawn(async move { app.agents.watch_queue(closing).await });
    }
    ready(local, acceptor.as_ref().map(|a| a.fingerprint.as_str()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stop = terminated();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { match hangup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => {
                reload(&app, &mut acceptor);
                continue;
            }
            _ = &mut stop => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(WithPeer { router: router.clone(), peer });
        let builder = hyper::server::conn::http1::Builder::new();
        match &acceptor {
            None => {
                let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection from {peer}: {e}");
                    }
                });
            }
            Some(a) => {
                let tls = a.acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!("TLS handshake from {peer}: {e}");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!("connection from {peer}: {e}");
                    }
                });
            }
        }
    }
    // Streams say `server.closing` and end; connections finish what they serve, within GRACE.
    let _ = close_tx.send(true);
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {} s; closing them", GRACE.as_secs());
    }
    app.keyring.flush();
    Ok(())
}
