//! Client shards on other agents (`/api/v1/agent/relays`): the server relays a cell's
//! coordinator and its shards.
//!
//! Agents only connect out, so a coordinator (the `kitt work` of a unit on one agent) cannot
//! reach a shard on another. Instead each shard is a relay here: the coordinator's agent opens
//! it (for an attempt it holds), an agent with a free slot takes it with its next claim and runs
//! `kitt client-shard`, and both sides move the shard's protocol lines through the relay, one
//! stream each way, numbered, long-polled. The protocol is the coordinator's own (job, clock
//! pings, start, progress, done): the server never reads it, so clock offsets are measured end
//! to end over the whole path, and their round trips say how close they are. A finished shard's
//! spool (its records) is uploaded here before its `done` line and fetched by the coordinator's
//! side before it passes that line on.
//!
//! Shards of one gang (one try of one cell) go to distinct agents. A side that stops polling
//! for 1.5 heartbeats ends the other side's stream with the reason, so a dead agent fails its cell
//! within seconds rather than at its lease. Relays live in memory: a server restart ends them
//! (both sides get 404), and the cell fails and is retried like any failed cell.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::App;
use super::problem::{Json, Problem, Query};
use super::tokens::Caller;
use crate::agent::proto::{self, Held, RelayLines, RelayOpen, RelayOpened, RelayRecv, RelaySend, RelayTask, Side};

type Answer = Result<Response, Problem>;

/// How long an opened relay waits for an agent to take it before it is dropped.
const UNTAKEN: Duration = Duration::from_secs(180);
/// The largest `send` body: a job carries the cell's whole prompt pool.
pub const MAX_SEND_BYTES: usize = 512 << 20;
/// The largest spool upload.
const MAX_SPOOL_BYTES: u64 = 16 << 30;

/// One direction's lines.
#[derive(Default)]
struct Pipe {
    /// Lines not yet acknowledged; `lines[0]` is line number `base`.
    lines: Vec<String>,
    base: u64,
    closed: Option<String>,
    /// The receiver was told of the end.
    told: bool,
}

struct Relay {
    held: Held,
    coordinator: String,
    gang: String,
    shard: u32,
    of: u32,
    /// Labels its taker must have.
    select: std::collections::BTreeMap<String, String>,
    /// The agent that took it, and its host.
    taker: Option<(String, String)>,
    opened: Instant,
    /// To the shard, to the coordinator.
    pipes: [Pipe; 2],
    /// When the coordinator's side and the shard's side last polled.
    seen: [Instant; 2],
    spool: Option<(PathBuf, String)>,
    /// Bumped at every change a waiting `recv` may want.
    notify: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    fn pipe(&mut self, to: Side) -> &mut Pipe {
        &mut self.pipes[matches!(to, Side::Coordinator) as usize]
    }

    /// Ends a stream that the other side stopped feeding for `stale` (its agent is gone).
    fn expire(&mut self, now: Instant, stale: Duration) {
        let [by_coordinator, by_shard] = self.seen;
        if now.duration_since(by_coordinator) > stale && self.pipes[0].closed.is_none() {
            self.pipes[0].closed = Some(format!("the coordinator's agent {} stopped answering", self.coordinator));
        }
        if let Some((agent, host)) = &self.taker
            && now.duration_since(by_shard) > stale
            && self.pipes[1].closed.is_none()
        {
            self.pipes[1].closed = Some(format!("agent {agent}@{host}, which ran it, stopped answering"));
        }
    }
}

/// The relays of one server.
pub struct Relays {
    inner: Mutex<HashMap<String, Relay>>,
    /// How long a side may go without polling before the other side is told it is gone: one
    /// and a half of the agents' heartbeats (15 s by default; at least 5 s).
    stale: Duration,
}

impl Relays {
    pub fn new(heartbeat: Duration) -> Relays {
        Relays { inner: Mutex::new(HashMap::new()), stale: (heartbeat * 3 / 2).max(Duration::from_secs(5)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Relay>> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The client shards `agent` runs now: `run/unit shard k of n`.
    pub(crate) fn shards_of(&self, agent: &str) -> Vec<serde_json::Value> {
        let all = self.lock();
        let mut v: Vec<(&Relay, serde_json::Value)> = all
            .values()
            .filter(|r| r.taker.as_ref().is_some_and(|(a, _)| a == agent) && r.pipes[1].closed.is_none())
            .map(|r| {
                let v = serde_json::json!({
                    "run": r.held.run, "unit": r.held.unit, "attempt": r.held.attempt,
                    "shard": r.shard, "of": r.of, "coordinator": r.coordinator,
                });
                (r, v)
            })
            .collect();
        v.sort_by_key(|(r, _)| r.opened);
        v.into_iter().map(|(_, v)| v).collect()
    }

    /// Gives `info` an untaken shard whose labels it has, of a gang it has none of yet, oldest
    /// first.
    pub(super) fn take(&self, info: &super::agents::AgentInfo) -> Option<RelayTask> {
        let (agent, host) = (info.name.as_str(), info.hostname.as_str());
        let mut all = self.lock();
        sweep(&mut all, self.stale);
        let busy: Vec<String> = all
            .values()
            .filter(|r| r.taker.as_ref().is_some_and(|(a, _)| a == agent))
            .map(|r| r.gang.clone())
            .collect();
        let id = all
            .iter()
            .filter(|(_, r)| r.taker.is_none() && r.pipes[0].closed.is_none() && !busy.contains(&r.gang))
            .filter(|(_, r)| r.select.iter().all(|(k, v)| info.labels.get(k) == Some(v)))
            .min_by_key(|(_, r)| (r.opened, r.shard))?
            .0
            .clone();
        let relay = all.get_mut(&id)?;
        relay.taker = Some((agent.to_string(), host.to_string()));
        relay.seen[1] = Instant::now();
        relay.notify.send_modify(|v| *v += 1);
        tracing::info!(
            "client shard {} of {} of unit {} (run {}) taken by agent {agent}",
            relay.shard,
            relay.of,
            relay.held.unit,
            relay.held.run
        );
        Some(RelayTask {
            id,
            run: relay.held.run.clone(),
            unit: relay.held.unit.clone(),
            shard: relay.shard,
            of: relay.of,
            coordinator: relay.coordinator.clone(),
        })
    }
}

/// Drops relays nobody took in time or whose both ends are over and told.
fn sweep(all: &mut HashMap<String, Relay>, stale: Duration) {
    let now = Instant::now();
    all.retain(|_, r| {
        r.expire(now, stale);
        // Nobody took it in time, or its coordinator gave it up first.
        let untaken = r.taker.is_none() && (now.duration_since(r.opened) > UNTAKEN || r.pipes[0].closed.is_some());
        // Both streams ended and the coordinator's side knows: nothing more can pass.
        let over = r.pipes.iter().all(|p| p.closed.is_some()) && r.pipes[1].told;
        let forgotten = r.seen.iter().all(|s| now.duration_since(*s) > 4 * stale);
        let keep = !(untaken || over || forgotten);
        if !keep && let Some((path, _)) = &r.spool {
            let _ = std::fs::remove_file(path);
        }
        keep
    });
}

fn gone(id: &str) -> Problem {
    Problem::not_found(format!(
        "no relay `{}` here (it ended, or the server restarted): the cell fails and is tried again",
        id.chars().take(64).collect::<String>()
    ))
}

/// Whether `agent` is the relay's coordinator side (`true`) or its shard side, as it claims.
fn may(r: &Relay, agent: &str, coordinator_side: bool) -> Result<(), Problem> {
    let ok = if coordinator_side { r.coordinator == agent } else { r.taker.as_ref().is_some_and(|(a, _)| a == agent) };
    if ok {
        Ok(())
    } else {
        Err(Problem::forbidden(format!(
            "agent {agent} is not this relay's {}",
            if coordinator_side { "coordinator" } else { "shard" }
        )))
    }
}

pub(super) async fn open(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(body): Json<RelayOpen>,
) -> Answer {
    let name = super::agents::agent_of(&caller)?;
    super::agents::registered(&app, &name)?;
    super::agents::valid_held(&body.run, &body.unit)?;
    if body.of < 2 || body.shard >= body.of {
        return Err(Problem::bad_request(format!("shard {} of {}: a cell has 2 or more shards", body.shard, body.of)));
    }
    if !proto::valid_hex(&body.gang, 8..=64) {
        return Err(Problem::bad_request("gang: 8 to 64 lowercase hex digits"));
    }
    let h = Held { run: body.run.clone(), unit: body.unit.clone(), attempt: body.attempt };
    let (root, n2, h2) = (app.cfg.runs_root.clone(), name.clone(), h.clone());
    if let Some(why) = super::api::blocking(move || Ok(super::agents::not_holding(&root, &n2, &h2))).await? {
        return Err(super::agents::stale(why));
    }
    let id = super::tokens::random_hex(16);
    let now = Instant::now();
    let mut all = app.relays.lock();
    sweep(&mut all, app.relays.stale);
    all.insert(
        id.clone(),
        Relay {
            held: h,
            coordinator: name,
            gang: body.gang,
            shard: body.shard,
            of: body.of,
            select: body.select,
            taker: None,
            opened: now,
            pipes: Default::default(),
            seen: [now, now],
            spool: None,
            notify: tokio::sync::watch::channel(0).0,
        },
    );
    drop(all);
    app.agents.poke();
    Ok(axum::Json(RelayOpened { id }).into_response())
}

pub(super) async fn send(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<RelaySend>,
) -> Answer {
    let name = super::agents::agent_of(&caller)?;
    let coordinator_side = body.to == Side::Shard;
    let mut all = app.relays.lock();
    let r = all.get_mut(&id).ok_or_else(|| gone(&id))?;
    may(r, &name, coordinator_side)?;
    r.seen[usize::from(!coordinator_side)] = Instant::now();
    let p = r.pipe(body.to);
    if body.lines.iter().any(|l| l.contains('\n')) {
        return Err(Problem::bad_request("a line holds a newline"));
    }
    // Lines this side sent before (a resend after a lost answer) are not added twice.
    let have = p.base + p.lines.len() as u64;
    if body.seq > have {
        return Err(Problem::new(StatusCode::CONFLICT, format!("line {} is next here, not {}", have, body.seq)));
    }
    let fresh: Vec<String> = body.lines.into_iter().skip((have - body.seq) as usize).collect();
    let n = fresh.len();
    if p.closed.is_some() {
        if n == 0 {
            return Ok(axum::Json(serde_json::json!({"accepted": 0})).into_response());
        }
        return Err(Problem::new(StatusCode::CONFLICT, "this side's stream has ended"));
    }
    p.lines.extend(fresh);
    if let Some(why) = body.close {
        p.closed = Some(why);
    }
    r.notify.send_modify(|v| *v += 1);
    Ok(axum::Json(serde_json::json!({"accepted": n})).into_response())
}

pub(super) async fn recv(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<RelayRecv>,
) -> Answer {
    let name = super::agents::agent_of(&caller)?;
    let coordinator_side = body.to == Side::Coordinator;
    let deadline = Instant::now() + Duration::from_millis(body.wait_ms.min(proto::RELAY_WAIT_MAX_MS));
    let mut closing = app.closing.clone();
    loop {
        let mut changed = {
            let mut all = app.relays.lock();
            let r = all.get_mut(&id).ok_or_else(|| gone(&id))?;
            may(r, &name, coordinator_side)?;
            let now = Instant::now();
            r.seen[usize::from(!coordinator_side)] = now;
            r.expire(now, app.relays.stale);
            // Subscribed under the lock: a line sent after this look wakes the wait below.
            let changed = r.notify.subscribe();
            let p = r.pipe(body.to);
            let end = p.base + p.lines.len() as u64;
            if body.from < p.base || body.from > end {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    format!("lines {}..{end} are here; line {} is not", p.base, body.from),
                ));
            }
            // What the receiver asks from on, it has read before: those lines are dropped.
            p.lines.drain(..(body.from - p.base) as usize);
            p.base = body.from;
            if !p.lines.is_empty() || p.closed.is_some() || now >= deadline || *closing.borrow() {
                let closed = if p.lines.is_empty() { p.closed.clone() } else { None };
                if closed.is_some() {
                    p.told = true;
                }
                let lines = p.lines.clone();
                let next = p.base + lines.len() as u64;
                return Ok(axum::Json(RelayLines { lines, next, closed }).into_response());
            }
            changed
        };
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(left.min(Duration::from_secs(1))) => {}
            _ = closing.changed() => {}
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SpoolQuery {
    sha256: String,
}

/// The shard's side uploads its spool before passing its `done` line on.
pub(super) async fn put_spool(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<SpoolQuery>,
    body: axum::body::Body,
) -> Answer {
    let name = super::agents::agent_of(&caller)?;
    if !proto::valid_hex(&q.sha256, 64..=64) {
        return Err(Problem::bad_request("sha256: 64 lowercase hex digits"));
    }
    {
        let all = app.relays.lock();
        let r = all.get(&id).ok_or_else(|| gone(&id))?;
        may(r, &name, false)?;
    }
    let dir = crate::exec::agents::agents_dir(&app.cfg.runs_root).join("relays");
    tokio::fs::create_dir_all(&dir).await.map_err(Problem::internal)?;
    let path = dir.join(format!("{id}.spool"));
    let tmp = dir.join(format!("{id}.spool.part"));
    let size = super::agents::receive_file(body, &tmp, MAX_SPOOL_BYTES, &q.sha256).await?;
    tokio::fs::rename(&tmp, &path).await.map_err(Problem::internal)?;
    let mut all = app.relays.lock();
    let Some(r) = all.get_mut(&id) else {
        let _ = std::fs::remove_file(&path);
        return Err(gone(&id));
    };
    r.seen[1] = Instant::now();
    r.spool = Some((path, q.sha256));
    Ok(axum::Json(serde_json::json!({"bytes": size})).into_response())
}

/// The coordinator's side fetches a shard's spool when its `done` line comes.
pub(super) async fn get_spool(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Answer {
    let name = super::agents::agent_of(&caller)?;
    let (path, sha) = {
        let mut all = app.relays.lock();
        let r = all.get_mut(&id).ok_or_else(|| gone(&id))?;
        may(r, &name, true)?;
        r.seen[0] = Instant::now();
        r.spool.clone().ok_or_else(|| Problem::not_found("the shard has uploaded no spool"))?
    };
    let file = tokio::fs::File::open(&path).await.map_err(|e| Problem::not_found(format!("the spool: {e}")))?;
    let body = axum::body::Body::from_stream(file_chunks(file));
    let mut res = (StatusCode::OK, body).into_response();
    let headers = res.headers_mut();
    headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = axum::http::HeaderValue::from_str(&sha) {
        headers.insert("x-kitt-sha256", v);
    }
    Ok(res)
}

/// A file as a stream of chunks (64 KiB).
pub(crate) fn file_chunks(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 1 << 16];
        match tokio::io::AsyncReadExt::read(&mut f, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}
