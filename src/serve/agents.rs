//! The agent API (`/api/v1/agent/*`) and the fleet view (`/api/v1/agents`): the server half of
//! `kitt agent`.
//!
//! The server is the only writer of its run directories: what an agent does reaches them through
//! here, as a local `kitt work` would have written it. A claim creates the attempt
//! (`attempts/<unit>/<n>`, its lease file) for the agent; each heartbeat renews the lease files
//! of the attempts the agent holds; its journal lines are appended to the attempt's shard in
//! order (resends dropped by sequence number); a finished step is committed with the same
//! exclusive rename as a local commit, and only while the attempt still holds its unit. The
//! registry (`RUNS/.agents/agents.json`) is a snapshot for `kitt agents list`; the truth about
//! units is in the run directories, so a server restart loses nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::App;
use super::api::blocking;
use super::problem::{Json, Problem, Query};
use super::tokens::{Caller, Scope};
use crate::agent::proto::{self, Beat, Claimed, EventKind, EventLine, EventsAccepted, Finish, Gpu, Held, Outcome};
use crate::exec::agents::{self as files, AttemptRecord, QueueEntry};
use crate::run::lease::file::{LeaseFile, lease_path, mark_expired, marked_expired, newest};

type Answer = Result<Response, Problem>;

/// Test hook: `KITT_AGENT_HEARTBEAT_MS` sets the heartbeat the server asks of its agents
/// (default 10 s), so tests see leases and fences in seconds.
pub const HEARTBEAT_ENV: &str = "KITT_AGENT_HEARTBEAT_MS";
/// The largest step upload (streamed to disk).
pub const MAX_STEP_BYTES: u64 = 4 << 30;
/// The largest JSON body of the agent routes.
pub const MAX_JSON_BYTES: usize = 1 << 20;

/// An agent as the server knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub hostname: String,
    pub kitt_version: String,
    pub build: String,
    pub target: String,
    pub fingerprint: String,
    pub fingerprint_identity: String,
    pub gpus: Vec<Gpu>,
    pub slots: u32,
    pub docker: bool,
    pub registered_unix_ns: u64,
    pub last_seen_unix_ns: u64,
    /// `active` or `draining`.
    pub state: String,
    pub held: Vec<Held>,
    #[serde(default)]
    pub disk_free_bytes: u64,
}

#[derive(Default)]
struct Registry {
    agents: BTreeMap<String, AgentInfo>,
    /// The next sequence number of each attempt's journal and log, once read from its file.
    next_seq: HashMap<(Held, EventKind), u64>,
    /// When each run last had a unit claimed (runs are served round-robin).
    last_served: HashMap<String, Instant>,
    /// Commands waiting for each agent's next heartbeat, and the answers they got.
    exec_pending: HashMap<String, Vec<proto::Exec>>,
    exec_done: HashMap<String, proto::ExecResult>,
    /// When the snapshot was last written.
    saved_at: Option<Instant>,
    dirty: bool,
}

/// The agents of one server.
pub struct Agents {
    root: PathBuf,
    pub heartbeat: Duration,
    reg: Mutex<Registry>,
    /// Bumped when the queue directory changes: waiting claims look again only then (and once a
    /// second), so a thousand idle agents cost one look at the queue per tick, not a thousand.
    queue_changed: tokio::sync::watch::Sender<u64>,
}

/// The file of a benchmark step that its collect step reads.
pub const BENCHMARK_RESULT: &str = "benchmark.json";

fn now_ns() -> u64 {
    crate::run::journal::unix_ns()
}

impl Agents {
    /// Opens the agents of the runs directory `root`: the queue directories are made (their
    /// existence tells a driver a server places units here) and the last snapshot read.
    pub fn open(root: &Path) -> Agents {
        let heartbeat = std::env::var(HEARTBEAT_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(10));
        for d in [files::queue_dir(root), files::claimed_dir(root)] {
            if let Err(e) = std::fs::create_dir_all(&d) {
                tracing::warn!("cannot make {}: {e}; agents cannot take units", d.display());
            }
        }
        let mut reg = Registry::default();
        if let Ok(bytes) = std::fs::read(files::agents_dir(root).join("agents.json"))
            && let Ok(agents) = serde_json::from_slice::<BTreeMap<String, AgentInfo>>(&bytes)
        {
            reg.agents = agents;
        }
        let agents = Agents {
            root: root.to_path_buf(),
            heartbeat,
            reg: Mutex::new(reg),
            queue_changed: tokio::sync::watch::channel(0).0,
        };
        agents.recover_claims();
        agents
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A claim the server died in the middle of: its attempt is recorded lost (the driver
    /// places the unit again), or, if the attempt record was written, the entry is dropped.
    fn recover_claims(&self) {
        let dir = files::claimed_dir(&self.root);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Some(entry) = std::fs::read(e.path()).ok().and_then(|b| serde_json::from_slice::<QueueEntry>(&b).ok())
            else {
                let _ = std::fs::remove_file(e.path());
                continue;
            };
            let run_dir = self.root.join(&entry.run);
            if files::read_record(&run_dir, &entry.unit, entry.attempt).is_none() {
                let r = AttemptRecord {
                    agent: String::new(),
                    hostname: String::new(),
                    outcome: Outcome::Lost,
                    reason: "the server stopped while an agent claimed it".into(),
                    claimed_unix_ns: now_ns(),
                    ended_unix_ns: Some(now_ns()),
                };
                let _ = files::write_record(&run_dir, &entry.unit, entry.attempt, &r);
            }
            let _ = std::fs::remove_file(e.path());
        }
    }

    /// Writes the registry snapshot, at most once a second unless `now`.
    fn save(&self, reg: &mut Registry, now: bool) {
        if !reg.dirty || (!now && reg.saved_at.is_some_and(|t| t.elapsed() < Duration::from_secs(1))) {
            return;
        }
        let path = files::agents_dir(&self.root).join("agents.json");
        match serde_json::to_vec_pretty(&reg.agents) {
            Ok(bytes) => {
                if let Err(e) = crate::run::dir::write_atomic(&path, &bytes) {
                    tracing::warn!("cannot write {}: {e}", path.display());
                }
            }
            Err(e) => tracing::warn!("cannot write the agents' snapshot: {e}"),
        }
        reg.saved_at = Some(Instant::now());
        reg.dirty = false;
    }

    /// Watches the queue directory (its modification time, every 25 ms) for the claims that
    /// wait, until `closing`.
    pub async fn watch_queue(&self, mut closing: tokio::sync::watch::Receiver<bool>) {
        let queue = files::queue_dir(&self.root);
        let mut seen = None;
        loop {
            let now = std::fs::metadata(&queue).and_then(|m| m.modified()).ok();
            if now != seen {
                seen = now;
                self.queue_changed.send_modify(|n| *n += 1);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
                _ = closing.changed() => return,
            }
        }
    }

    /// Every known agent.
    /// Wakes the waiting claims: something to take appeared.
    pub(super) fn poke(&self) {
        self.queue_changed.send_modify(|n| *n += 1);
    }

    pub fn list(&self) -> Vec<AgentInfo> {
        self.lock().agents.values().cloned().collect()
    }
}

/// The caller, who must be an agent (an `agent` token; an admin's is refused here: it is not an
/// agent and holds no units).
pub(super) fn agent_of(caller: &Caller) -> Result<String, Problem> {
    if caller.scope != Scope::Agent {
        return Err(Problem::forbidden(format!(
            "the agent routes take only agent tokens (`kitt serve token create --scope agent`); `{}` is a `{}` token",
            caller.name,
            caller.scope.name()
        )));
    }
    if !proto::valid_agent_name(&caller.name) {
        return Err(Problem::forbidden(format!(
            "agent names are 1 to 63 of a-z, 0-9 and `-`; the token is named `{}`",
            caller.name
        )));
    }
    Ok(caller.name.clone())
}

pub(super) fn registered(app: &App, name: &str) -> Result<AgentInfo, Problem> {
    app.agents.lock().agents.get(name).cloned().ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            format!("agent `{name}` is not registered: POST /api/v1/agent/register first"),
        )
    })
}

pub(super) fn valid_held(run: &str, unit: &str) -> Result<(), Problem> {
    if !super::api::valid_id(run) || !super::api::valid_id(unit) {
        return Err(Problem::bad_request(format!("`{run}`/`{unit}` is not a run id and a unit id")));
    }
    Ok(())
}

/// Records an attempt of `agent` that the server no longer counts as held (its lease expired, a
/// later attempt superseded it) as lost, if its record still says running.
fn end_record(root: &Path, agent: &str, h: &Held, why: &str) {
    let run_dir = root.join(&h.run);
    if let Some(mut r) = files::read_record(&run_dir, &h.unit, h.attempt)
        && r.agent == agent
        && r.outcome == Outcome::Running
    {
        r.outcome = Outcome::Lost;
        r.reason = why.to_string();
        r.ended_unix_ns = Some(now_ns());
        let _ = files::write_record(&run_dir, &h.unit, h.attempt, &r);
    }
}

/// Why `agent` may not act for the attempt now (`None`: it holds it).
pub(super) fn not_holding(root: &Path, agent: &str, h: &Held) -> Option<String> {
    let run_dir = root.join(&h.run);
    let Some(r) = files::read_record(&run_dir, &h.unit, h.attempt) else {
        return Some("the server gave no such attempt".into());
    };
    if r.agent != agent {
        return Some(format!("attempt {} is agent {}'s", h.attempt, r.agent));
    }
    let attempts = run_dir.join("attempts").join(&h.unit);
    if marked_expired(&attempts, h.attempt) {
        return Some("its lease expired".into());
    }
    if newest(&attempts).is_some_and(|n| n > h.attempt) {
        return Some("a later attempt superseded it".into());
    }
    if r.outcome != Outcome::Running {
        return Some(format!("it ended ({:?})", r.outcome).to_lowercase());
    }
    None
}

pub(super) fn stale(why: String) -> Problem {
    Problem::new(StatusCode::CONFLICT, format!("stale attempt: {why}; commit nothing more"))
}

pub(super) async fn register(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(body): Json<proto::Register>,
) -> Answer {
    let name = agent_of(&caller)?;
    if body.protocol[0] != proto::PROTOCOL_MAJOR {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "agent `{name}` speaks agent protocol {}.{}, this server {}.{}: run `kitt agent update`",
                body.protocol[0],
                body.protocol[1],
                proto::PROTOCOL_MAJOR,
                proto::PROTOCOL_MINOR
            ),
        ));
    }
    let agents = &app.agents;
    let mut reg = agents.lock();
    let now = now_ns();
    let held = reg.agents.get(&name).map(|a| a.held.clone()).unwrap_or_default();
    let state = reg.agents.get(&name).map_or_else(|| "active".to_string(), |a| a.state.clone());
    let info = AgentInfo {
        name: name.clone(),
        labels: caller.labels.clone(),
        hostname: body.hostname,
        kitt_version: body.kitt_version,
        build: body.build,
        target: body.target,
        fingerprint: body.fingerprint,
        fingerprint_identity: body.fingerprint_identity,
        gpus: body.gpus,
        slots: body.slots.max(1),
        docker: body.docker,
        registered_unix_ns: now,
        last_seen_unix_ns: now,
        state,
        held: held.clone(),
        disk_free_bytes: 0,
    };
    reg.agents.insert(name.clone(), info);
    reg.dirty = true;
    agents.save(&mut reg, true);
    tracing::info!("agent `{name}` registered");
    let hb = agents.heartbeat.as_millis() as u64;
    let reply = proto::Registered {
        agent: name,
        labels: caller.labels,
        heartbeat_ms: hb,
        claim_wait_ms: proto::CLAIM_WAIT_MAX_MS,
        held,
    };
    Ok(axum::Json(reply).into_response())
}

/// Renews a held attempt's lease file (the driver watches its counter move).
fn renew(root: &Path, h: &Held) -> std::io::Result<()> {
    let dir = root.join(&h.run).join("attempts").join(&h.unit);
    let path = lease_path(&dir, h.attempt);
    let counter = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<LeaseFile>(&b).ok())
        .map_or(0, |l| l.counter + 1);
    let bytes = serde_json::to_vec(&LeaseFile { epoch: h.attempt, counter }).map_err(std::io::Error::other)?;
    // Liveness, not data: renamed into place without a sync (a sync per renewal would make a
    // busy disk's latency every agent's), as a local attempt's renewer does.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.lease.{}.{n}", h.attempt, std::process::id()));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, &path)
}

pub(super) async fn heartbeat(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(body): Json<proto::Heartbeat>,
) -> Answer {
    let name = agent_of(&caller)?;
    registered(&app, &name)?;
    for h in &body.units {
        valid_held(&h.run, &h.unit)?;
    }
    let app2 = app.clone();
    let name2 = name.clone();
    let units = body.units.clone();
    let beat = blocking(move || {
        let root = &app2.cfg.runs_root;
        let mut beat = Beat::default();
        for h in units {
            if let Some(why) = not_holding(root, &name2, &h) {
                end_record(root, &name2, &h, &why);
                beat.stop.push((h, why));
                continue;
            }
            if files::cancel_path(&root.join(&h.run), &h.unit, h.attempt).exists() {
                beat.stop.push((h, "cancelled".into()));
                continue;
            }
            match renew(root, &h) {
                Ok(()) => beat.renewed.push(h),
                Err(e) => tracing::warn!("cannot renew the lease of {}/{} attempt {}: {e}", h.run, h.unit, h.attempt),
            }
        }
        Ok(beat)
    })
    .await?;
    let mut reg = app.agents.lock();
    let mut beat = beat;
    if let Some(a) = reg.agents.get_mut(&name) {
        a.last_seen_unix_ns = now_ns();
        a.held = beat.renewed.clone();
        if !body.gpus.is_empty() {
            a.gpus = body.gpus;
        }
        a.disk_free_bytes = body.disk_free_bytes;
        beat.drain = a.state == "draining";
    }
    beat.exec = reg.exec_pending.remove(&name).unwrap_or_default();
    reg.dirty = true;
    app.agents.save(&mut reg, false);
    Ok(axum::Json(beat).into_response())
}

/// Whether `agent`, asking with `req`, may take `entry`.
fn matches(root: &Path, agent: &AgentInfo, entry: &QueueEntry, req: &proto::ClaimRequest) -> bool {
    if entry.gpus > req.gpus_free || req.exclusive || (entry.host_isolation && req.running > 0) {
        return false;
    }
    if !entry.select.iter().all(|(k, v)| agent.labels.get(k) == Some(v)) {
        return false;
    }
    if let Some(g) = &entry.fingerprint
        && !files::glob(g, &agent.fingerprint)
        && !files::glob(g, &agent.fingerprint_identity)
    {
        return false;
    }
    if entry.same_fingerprint
        && let Ok(pinned) = std::fs::read_to_string(files::pin_path(&root.join(&entry.run)))
        && pinned.trim() != agent.fingerprint
    {
        return false;
    }
    true
}

/// Takes the first queued unit `agent` matches, runs round-robin and FIFO within a run.
fn try_claim(app: &App, agent: &AgentInfo, req: &proto::ClaimRequest) -> Result<Option<Claimed>, Problem> {
    let root = &app.cfg.runs_root;
    let queue = files::queue_dir(root);
    let mut names: Vec<PathBuf> = std::fs::read_dir(&queue)
        .map_err(|e| Problem::internal(format!("cannot read {}: {e}", queue.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    names.sort();
    let mut entries: Vec<(PathBuf, QueueEntry)> = Vec::new();
    for p in names {
        match std::fs::read(&p).ok().and_then(|b| serde_json::from_slice::<QueueEntry>(&b).ok()) {
            Some(e) if super::api::valid_id(&e.run) && super::api::valid_id(&e.unit) => entries.push((p, e)),
            // Taken meanwhile, or not a queue entry: not ours to judge.
            _ => {}
        }
    }
    {
        let reg = app.agents.lock();
        let far = Instant::now() - Duration::from_secs(3600 * 24 * 365);
        let served = |run: &str| reg.last_served.get(run).copied().unwrap_or(far);
        // Stable: within a run the queue's order stands.
        entries.sort_by_key(|(_, e)| served(&e.run));
    }
    for (path, entry) in entries {
        if !matches(root, agent, &entry, req) {
            continue;
        }
        let taken = files::claimed_dir(root).join(path.file_name().unwrap_or_default());
        if std::fs::rename(&path, &taken).is_err() {
            continue;
        }
        match start_attempt(root, agent, &entry) {
            Ok(c) => {
                let _ = std::fs::remove_file(&taken);
                let mut reg = app.agents.lock();
                reg.last_served.insert(entry.run.clone(), Instant::now());
                if let Some(a) = reg.agents.get_mut(&agent.name) {
                    a.held.push(Held { run: c.run.clone(), unit: c.unit.clone(), attempt: c.attempt });
                }
                reg.dirty = true;
                app.agents.save(&mut reg, false);
                return Ok(Some(c));
            }
            Err(why) => {
                tracing::warn!(
                    "unit {} of run {}: cannot start attempt {}: {why}",
                    entry.unit,
                    entry.run,
                    entry.attempt
                );
                let r = AttemptRecord {
                    agent: agent.name.clone(),
                    hostname: agent.hostname.clone(),
                    outcome: Outcome::Failed,
                    reason: why,
                    claimed_unix_ns: now_ns(),
                    ended_unix_ns: Some(now_ns()),
                };
                let _ = files::write_record(&root.join(&entry.run), &entry.unit, entry.attempt, &r);
                let _ = std::fs::remove_file(&taken);
            }
        }
    }
    Ok(None)
}

/// Creates attempt `entry.attempt` of the unit for `agent`: its claim file (naming the agent's
/// host), its first lease, and its record.
fn start_attempt(root: &Path, agent: &AgentInfo, entry: &QueueEntry) -> Result<Claimed, String> {
    let run_dir = root.join(&entry.run);
    let read = |name: &str| {
        std::fs::read_to_string(run_dir.join(name))
            .map_err(|e| format!("cannot read {}: {e}", run_dir.join(name).display()))
    };
    let (run_json, plan_json) = (read("run.json")?, read("plan.json")?);
    let plan: files::PlanLite = serde_json::from_str(&plan_json).map_err(|e| format!("plan.json: {e}"))?;
    if plan.unit(&entry.unit).is_none() {
        return Err("the plan has no such unit".into());
    }
    let committed = plan.committed(&run_dir, &entry.unit);
    // A committed benchmark's result travels with the claim (a few kilobytes): its collect, if
    // still to run, reads it. The rest of a step's files stay on the server.
    let committed_results = committed
        .iter()
        .filter_map(|k| {
            let text = std::fs::read_to_string(run_dir.join("steps").join(k).join(BENCHMARK_RESULT)).ok()?;
            Some((k.clone(), text))
        })
        .collect();
    let meta: crate::run::dir::RunMeta = serde_json::from_str(&run_json).map_err(|e| format!("run.json: {e}"))?;
    // The agent compiles the suite itself (its model paths are its own): it gets the suite and
    // its suite-local templates, and checks its plan's keys against the server's.
    let (suite, suite_files) = crate::cli::remote::bundle_files(&meta.file)
        .map_err(|e| format!("the run's suite {}: {e}", meta.file.display()))?;
    if entry.same_fingerprint {
        let pin = files::pin_path(&run_dir);
        if let Some(d) = pin.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).create_new(true).open(&pin) {
            let _ = f.write_all(agent.fingerprint.as_bytes());
        }
    }
    let attempts = run_dir.join("attempts").join(&entry.unit);
    std::fs::create_dir_all(&attempts).map_err(|e| e.to_string())?;
    let claim = crate::run::work::Claim {
        // What `kitt runs show` prints as the unit's host: the agent, and the machine it is on.
        host: format!("{}@{}", agent.name, agent.hostname),
        started_unix_ns: now_ns(),
        owner: crate::run::pidfile::Owner {
            machine: format!("agent:{}", agent.name),
            pid: 0,
            boot_id: String::new(),
            pid_ns: String::new(),
            start_time: 0,
        },
        slurm_job: None,
        slurm_restart: None,
    };
    let path = attempts.join(entry.attempt.to_string());
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("attempt {} exists already ({e})", entry.attempt))?;
        f.write_all(&serde_json::to_vec(&claim).unwrap_or_default()).map_err(|e| e.to_string())?;
    }
    let lease = serde_json::to_vec(&LeaseFile { epoch: entry.attempt, counter: 0 }).unwrap_or_default();
    crate::run::dir::write_atomic(&lease_path(&attempts, entry.attempt), &lease).map_err(|e| e.to_string())?;
    let record = AttemptRecord {
        agent: agent.name.clone(),
        hostname: agent.hostname.clone(),
        outcome: Outcome::Running,
        reason: String::new(),
        claimed_unix_ns: now_ns(),
        ended_unix_ns: None,
    };
    files::write_record(&run_dir, &entry.unit, entry.attempt, &record).map_err(|e| e.to_string())?;
    tracing::info!(
        "unit {} of run {} (attempt {}) claimed by agent {}",
        entry.unit,
        entry.run,
        entry.attempt,
        agent.name
    );
    Ok(Claimed {
        run: entry.run.clone(),
        unit: entry.unit.clone(),
        attempt: entry.attempt,
        lease_ms: entry.lease_ms,
        heartbeat_ms: 0,
        waited_ms: 0,
        run_json,
        plan_json,
        committed,
        committed_results,
        gpus: entry.gpus,
        host_isolation: entry.host_isolation,
        suite,
        files: suite_files,
    })
}

pub(super) async fn claim(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(body): Json<proto::ClaimRequest>,
) -> Answer {
    let name = agent_of(&caller)?;
    let agent = registered(&app, &name)?;
    if agent.state == "draining" {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let deadline = Instant::now() + Duration::from_millis(body.wait_ms.min(proto::CLAIM_WAIT_MAX_MS));
    let mut closing = app.closing.clone();
    let mut changed = app.agents.queue_changed.subscribe();
    let began = Instant::now();
    loop {
        changed.borrow_and_update();
        let app2 = app.clone();
        let agent2 = agent.clone();
        // Read before the attempt is made: the agent's fence never starts after its lease.
        let waited = began.elapsed();
        // A client shard of a cell that is about to start comes before any unit.
        if body.relays
            && let Some(task) = app.relays.take(&agent)
        {
            return Ok(axum::Json(proto::RelayClaim { relay: task }).into_response());
        }
        let req = body.clone();
        if let Some(mut c) = blocking(move || try_claim(&app2, &agent2, &req)).await? {
            c.heartbeat_ms = app.agents.heartbeat.as_millis() as u64;
            c.waited_ms = waited.as_millis() as u64;
            return Ok(axum::Json(c).into_response());
        }
        if Instant::now() >= deadline || *closing.borrow() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(left.min(Duration::from_secs(1))) => {}
            _ = closing.changed() => {}
        }
    }
}

/// The stream file of an attempt's journal or log.
fn stream_path(root: &Path, h: &Held, kind: EventKind) -> PathBuf {
    let run_dir = root.join(&h.run);
    match kind {
        EventKind::Journal => crate::run::journal::shard_path(&run_dir, &h.unit, h.attempt),
        EventKind::Log => files::log_path(&run_dir, &h.unit, h.attempt),
    }
}

fn count_lines(path: &Path) -> u64 {
    std::fs::read(path).map_or(0, |b| memchr::memchr_iter(b'\n', &b).count() as u64)
}

pub(super) async fn events(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: axum::body::Bytes,
) -> Answer {
    let name = agent_of(&caller)?;
    registered(&app, &name)?;
    if body.len() > MAX_JSON_BYTES {
        return Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "an events batch is at most 1 MiB"));
    }
    let mut lines = Vec::new();
    for (i, l) in body.split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()) {
        let e: EventLine =
            serde_json::from_slice(l).map_err(|e| Problem::bad_request(format!("line {}: {e}", i + 1)))?;
        valid_held(&e.run, &e.unit)?;
        if e.kind == EventKind::Journal && serde_json::from_str::<crate::run::journal::Record>(&e.line).is_err() {
            return Err(Problem::bad_request(format!("line {}: not a journal record", i + 1)));
        }
        if e.line.contains('\n') {
            return Err(Problem::bad_request(format!("line {}: a line has no newline in it", i + 1)));
        }
        lines.push(e);
    }
    let app2 = app.clone();
    let answer = blocking(move || {
        let root = app2.cfg.runs_root.clone();
        let mut checked: HashMap<Held, ()> = HashMap::new();
        let mut out = EventsAccepted::default();
        let mut files_open: HashMap<(Held, EventKind), std::fs::File> = HashMap::new();
        for e in lines {
            let h = Held { run: e.run.clone(), unit: e.unit.clone(), attempt: e.attempt };
            if !checked.contains_key(&h) {
                if let Some(why) = not_holding(&root, &name, &h) {
                    return Err(stale(why));
                }
                checked.insert(h.clone(), ());
            }
            let key = (h.clone(), e.kind);
            let path = stream_path(&root, &h, e.kind);
            let next = {
                let mut reg = app2.agents.lock();
                *reg.next_seq.entry(key.clone()).or_insert_with(|| count_lines(&path))
            };
            if e.seq < next {
                out.dropped += 1;
                continue;
            }
            if e.seq > next {
                // A gap: the agent resends from `next`.
                continue;
            }
            let f = match files_open.entry(key.clone()) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    if let Some(d) = path.parent() {
                        std::fs::create_dir_all(d).map_err(Problem::internal)?;
                    }
                    let f =
                        std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(Problem::internal)?;
                    v.insert(f)
                }
            };
            use std::io::Write as _;
            f.write_all(format!("{}\n", e.line).as_bytes()).map_err(Problem::internal)?;
            app2.agents.lock().next_seq.insert(key, next + 1);
            out.accepted += 1;
        }
        for ((h, kind), f) in files_open {
            let _ = f.sync_data();
            let next = app2.agents.lock().next_seq.get(&(h.clone(), kind)).copied().unwrap_or(0);
            out.next.push((h, kind, next));
        }
        Ok(out)
    })
    .await?;
    Ok(axum::Json(answer).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StepQuery {
    run: String,
    unit: String,
    attempt: u32,
    sha256: String,
}

/// What a committed step's marker says when the server committed it for an agent.
#[derive(Serialize, Deserialize)]
struct AgentMarker {
    unit: String,
    attempt: u32,
    agent: String,
    sha256: String,
}

fn committed_sha(step_dir: &Path) -> Option<String> {
    let bytes = std::fs::read(step_dir.join(crate::run::commit::COMMITTED)).ok()?;
    serde_json::from_slice::<AgentMarker>(&bytes).ok().map(|m| m.sha256)
}

pub(super) async fn step(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<StepQuery>,
    body: axum::body::Body,
) -> Answer {
    let name = agent_of(&caller)?;
    registered(&app, &name)?;
    valid_held(&q.run, &q.unit)?;
    if !proto::valid_hex(&key, 16..=64) {
        return Err(Problem::bad_request(format!(
            "`{}` is not a step key (hex digits)",
            key.chars().take(80).collect::<String>()
        )));
    }
    if !proto::valid_hex(&q.sha256, 64..=64) {
        return Err(Problem::bad_request("sha256: 64 lowercase hex digits"));
    }
    let root = app.cfg.runs_root.clone();
    let h = Held { run: q.run.clone(), unit: q.unit.clone(), attempt: q.attempt };
    if let Some(why) = not_holding(&root, &name, &h) {
        return Err(stale(why));
    }
    let attempts = root.join(&q.run).join("attempts").join(&q.unit);
    let upload = attempts.join(format!("{}.agent", q.attempt));
    tokio::fs::create_dir_all(&upload).await.map_err(Problem::internal)?;
    let tmp = upload.join(format!("{key}.tar.zst.part"));
    receive_file(body, &tmp, MAX_STEP_BYTES, &q.sha256).await?;
    let (status, value) = blocking(move || commit_upload(&root, &name, &h, &key, &q.sha256, &tmp)).await?;
    Ok((status, axum::Json(value)).into_response())
}

/// Streams an upload's body into `tmp`, at most `max` bytes, and checks it against its
/// SHA-256 `sha`; its size. Nothing of a cut, oversized or damaged upload stays: the agent sends
/// it whole again.
pub(super) async fn receive_file(body: axum::body::Body, tmp: &Path, max: u64, sha: &str) -> Result<u64, Problem> {
    use futures_util::StreamExt as _;
    let received = async {
        let mut file = tokio::fs::File::create(tmp).await.map_err(Problem::internal)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Problem::bad_request(format!("the upload was cut: {e}")))?;
            size += chunk.len() as u64;
            if size > max {
                return Err(Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("an upload here is at most {} GiB", max >> 30),
                ));
            }
            hasher.update(&chunk);
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await.map_err(Problem::internal)?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(Problem::internal)?;
        let got = super::tokens::hex(&hasher.finalize());
        if got != sha {
            return Err(Problem::bad_request(format!("sha256 mismatch: the body's is {got}, the query says {sha}")));
        }
        Ok(size)
    };
    let r = received.await;
    if r.is_err() {
        let _ = tokio::fs::remove_file(tmp).await;
    }
    r
}

/// Unpacks an uploaded step and commits it, once, while the attempt still holds its unit.
fn commit_upload(
    root: &Path,
    agent: &str,
    h: &Held,
    key: &str,
    sha: &str,
    tar_zst: &Path,
) -> Result<(StatusCode, serde_json::Value), Problem> {
    let result = (|| {
        let run_dir = root.join(&h.run);
        let plan = files::PlanLite::read(&run_dir).map_err(Problem::internal)?;
        if plan.unit(&h.unit).is_none() {
            return Err(Problem::not_found("no such unit"));
        }
        if !plan.measured(&h.unit).iter().any(|k| k == key) {
            return Err(Problem::bad_request(format!("unit {} has no measured step {key}", h.unit)));
        }
        let to = run_dir.join("steps").join(key);
        let same = |dir: &Path| -> Result<(StatusCode, serde_json::Value), Problem> {
            if committed_sha(dir).as_deref() == Some(sha) {
                Ok((StatusCode::OK, json!({"key": key, "committed": false, "identical": true})))
            } else {
                Err(Problem::new(StatusCode::CONFLICT, format!("step {key} is committed by another attempt")))
            }
        };
        if to.join(crate::run::commit::COMMITTED).exists() {
            return same(&to);
        }
        if let Some(why) = not_holding(root, agent, h) {
            return Err(stale(why));
        }
        let from = tar_zst.with_extension("").with_extension("dir");
        let _ = std::fs::remove_dir_all(&from);
        unpack(tar_zst, &from).map_err(|e| Problem::bad_request(format!("the upload is not a step archive: {e}")))?;
        let marker = serde_json::to_vec(&AgentMarker {
            unit: h.unit.clone(),
            attempt: h.attempt,
            agent: agent.to_string(),
            sha256: sha.to_string(),
        })
        .map_err(Problem::internal)?;
        if crate::run::commit::commit_dir(&from, &to, &marker).map_err(Problem::internal)? {
            tracing::info!("step {key} committed from agent {agent} (unit {}, attempt {})", h.unit, h.attempt);
            Ok((StatusCode::CREATED, json!({"key": key, "committed": true})))
        } else {
            let _ = std::fs::remove_dir_all(&from);
            same(&to)
        }
    })();
    let _ = std::fs::remove_file(tar_zst);
    result
}

/// Unpacks a zstd-compressed tar of plain files and directories into `to` (nothing else: no
/// links, devices, absolute paths or `..`).
pub fn unpack(tar_zst: &Path, to: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(tar_zst)?;
    let dec = zstd::stream::read::Decoder::new(f)?;
    let mut archive = tar::Archive::new(dec);
    std::fs::create_dir_all(to)?;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(std::io::Error::other(format!("entry {:?} is not a file or directory", entry.path()?)));
        }
        let path = entry.path()?.into_owned();
        if !path.components().all(|c| matches!(c, std::path::Component::Normal(_))) {
            return Err(std::io::Error::other(format!("entry {} leaves the step", path.display())));
        }
        entry.unpack_in(to)?;
    }
    Ok(())
}

/// Packs the directory `dir` (files and directories) as a zstd-compressed tar; its sha256.
pub fn pack(dir: &Path, out: &Path) -> std::io::Result<String> {
    let f = std::fs::File::create(out)?;
    let enc = zstd::stream::write::Encoder::new(f, 3)?;
    let mut b = tar::Builder::new(enc);
    b.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(dir.join(&rel))?.flatten().collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let r = rel.join(e.file_name());
            // The commit marker is the committer's own: the server writes its own.
            if r.as_os_str() == crate::run::commit::COMMITTED {
                continue;
            }
            let t = e.file_type()?;
            if t.is_dir() {
                b.append_dir(&r, e.path())?;
                stack.push(r);
            } else if t.is_file() {
                b.append_path_with_name(e.path(), &r)?;
            }
        }
    }
    b.into_inner()?.finish()?.sync_all()?;
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(out)?, &mut h)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

pub(super) async fn finish(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(body): Json<Finish>,
) -> Answer {
    let name = agent_of(&caller)?;
    registered(&app, &name)?;
    valid_held(&body.run, &body.unit)?;
    if body.outcome == Outcome::Running {
        return Err(Problem::bad_request("outcome: an attempt that finished is not `running`"));
    }
    let root = app.cfg.runs_root.clone();
    let h = Held { run: body.run.clone(), unit: body.unit.clone(), attempt: body.attempt };
    let name2 = name.clone();
    let h2 = h.clone();
    blocking(move || {
        let run_dir = root.join(&h2.run);
        let Some(mut r) = files::read_record(&run_dir, &h2.unit, h2.attempt) else {
            return Err(Problem::not_found("no such attempt"));
        };
        if r.agent != name2 {
            return Err(stale(format!("attempt {} is agent {}'s", h2.attempt, r.agent)));
        }
        if r.outcome == Outcome::Running {
            r.outcome = body.outcome;
            r.reason = body.reason.chars().take(4000).collect();
            r.ended_unix_ns = Some(now_ns());
            files::write_record(&run_dir, &h2.unit, h2.attempt, &r).map_err(Problem::internal)?;
            tracing::info!(
                "unit {} of run {} (attempt {}) on agent {name2}: {:?}",
                h2.unit,
                h2.run,
                h2.attempt,
                r.outcome
            );
        }
        let _ = std::fs::remove_dir_all(run_dir.join("attempts").join(&h2.unit).join(format!("{}.agent", h2.attempt)));
        Ok(())
    })
    .await?;
    let mut reg = app.agents.lock();
    if let Some(a) = reg.agents.get_mut(&name) {
        a.held.retain(|x| *x != h);
    }
    reg.next_seq.retain(|(x, _), _| *x != h);
    reg.dirty = true;
    app.agents.save(&mut reg, false);
    Ok(axum::Json(json!({"ok": true})).into_response())
}

/// Every agent as `GET /api/v1/agents` and the Agents page show it.
pub(crate) fn listing(app: &App) -> Result<Vec<serde_json::Value>, Problem> {
    let heartbeat = app.agents.heartbeat;
    let now = now_ns();
    Ok(app
        .agents
        .list()
        .into_iter()
        .map(|a| {
            let silent = Duration::from_nanos(now.saturating_sub(a.last_seen_unix_ns));
            let mut v = serde_json::to_value(&a).unwrap_or_default();
            v["online"] = (silent < heartbeat * 3).into();
            v["gpus_total"] = a.gpus.len().into();
            v["gpus_free"] = a.gpus.iter().filter(|g| g.holder.is_none()).count().into();
            // Client shards of other agents' cells it runs now (each takes a slot).
            v["client_shards"] = app.relays.shards_of(&a.name).into();
            v
        })
        .collect())
}

/// `GET /api/v1/agents`.
pub(super) async fn list(State(app): State<Arc<App>>) -> Answer {
    let agents = listing(&app)?;
    Ok(axum::Json(json!({"agents": agents})).into_response())
}

fn known(app: &App, name: &str) -> Result<(), Problem> {
    if app.agents.lock().agents.contains_key(name) {
        Ok(())
    } else {
        Err(Problem::not_found(format!("no agent `{}` (kitt agents list)", name.chars().take(80).collect::<String>())))
    }
}

pub(crate) fn drain_agent(app: &App, name: &str) -> Result<(), Problem> {
    known(app, name)?;
    let mut reg = app.agents.lock();
    if let Some(a) = reg.agents.get_mut(name) {
        a.state = "draining".into();
    }
    reg.dirty = true;
    app.agents.save(&mut reg, true);
    tracing::info!("agent `{name}` drained");
    Ok(())
}

/// `POST /api/v1/agents/{id}/drain`: the agent takes no new unit; what it runs finishes.
pub(super) async fn drain(State(app): State<Arc<App>>, UrlPath(name): UrlPath<String>) -> Answer {
    drain_agent(&app, &name)?;
    Ok(axum::Json(json!({"agent": name, "state": "draining"})).into_response())
}

/// Forgets an agent; the attempts it held are lost now (their units are placed again) and it is
/// told to stop them on its next heartbeat. How many it held.
pub(crate) async fn remove_agent(app: &Arc<App>, name: &str) -> Result<usize, Problem> {
    known(app, name)?;
    let held = app.agents.lock().agents.get(name).map(|a| a.held.clone()).unwrap_or_default();
    let root = app.cfg.runs_root.clone();
    let n = held.len();
    blocking(move || {
        for h in held {
            let run_dir = root.join(&h.run);
            let attempts = run_dir.join("attempts").join(&h.unit);
            let _ = mark_expired(&attempts, h.attempt);
            if let Some(mut r) = files::read_record(&run_dir, &h.unit, h.attempt)
                && r.outcome == Outcome::Running
            {
                r.outcome = Outcome::Lost;
                r.reason = "its agent was removed".into();
                r.ended_unix_ns = Some(now_ns());
                let _ = files::write_record(&run_dir, &h.unit, h.attempt, &r);
            }
        }
        Ok(())
    })
    .await?;
    let mut reg = app.agents.lock();
    reg.agents.remove(name);
    reg.dirty = true;
    app.agents.save(&mut reg, true);
    tracing::info!("agent `{name}` removed; {n} unit(s) it held are placed again");
    Ok(n)
}

/// `DELETE /api/v1/agents/{id}`.
pub(super) async fn remove(State(app): State<Arc<App>>, UrlPath(name): UrlPath<String>) -> Answer {
    let n = remove_agent(&app, &name).await?;
    Ok(axum::Json(json!({"agent": name, "removed": true, "requeued": n})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExecBody {
    command: proto::ExecCommand,
    #[serde(default)]
    arg: Option<String>,
}

/// `POST /api/v1/agents/{id}/exec`: the command goes out with the agent's next heartbeat; the
/// answer comes back when the agent has run it (waited for up to two minutes).
pub(super) async fn exec(
    State(app): State<Arc<App>>,
    UrlPath(name): UrlPath<String>,
    Json(body): Json<ExecBody>,
) -> Answer {
    known(&app, &name)?;
    if body.command == proto::ExecCommand::EnginesSetup && !body.arg.as_deref().is_some_and(super::api::valid_id) {
        return Err(Problem::bad_request("arg: `engines-setup` needs the engine to set up (`llama_cpp`, `vllm`, …)"));
    }
    let id = super::tokens::random_hex(8);
    app.agents.lock().exec_pending.entry(name.clone()).or_default().push(proto::Exec {
        id: id.clone(),
        command: body.command,
        arg: body.arg,
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(r) = app.agents.lock().exec_done.remove(&id) {
            return Ok(axum::Json(json!({"agent": name, "ok": r.ok, "output": r.output})).into_response());
        }
        if Instant::now() >= deadline || *app.closing.borrow() {
            let mut reg = app.agents.lock();
            if let Some(p) = reg.exec_pending.get_mut(&name) {
                p.retain(|e| e.id != id);
            }
            return Err(Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("agent `{name}` did not answer within 2 minutes (is it running? kitt agents list)"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `POST /api/v1/agent/exec/{id}`: an agent's answer to a command.
pub(super) async fn exec_done(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<proto::ExecResult>,
) -> Answer {
    agent_of(&caller)?;
    if !proto::valid_hex(&id, 16..=16) {
        return Err(Problem::bad_request("the command id is 16 hex digits"));
    }
    let mut reg = app.agents.lock();
    if reg.exec_done.len() > 1000 {
        reg.exec_done.clear();
    }
    let output: String = body.output.chars().take(256 << 10).collect();
    reg.exec_done.insert(id, proto::ExecResult { ok: body.ok, output });
    Ok(axum::Json(json!({"ok": true})).into_response())
}

/// The glibc this process runs on, `major.minor` (`None` off glibc).
pub fn glibc() -> Option<(u32, u32)> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: gnu_get_libc_version returns a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) }.to_string_lossy().into_owned();
        let mut parts = v.split('.').filter_map(|p| p.parse::<u32>().ok());
        Some((parts.next()?, parts.next().unwrap_or(0)))
    }
    #[cfg(not(target_env = "gnu"))]
    {
        None
    }
}

#[cfg(target_env = "gnu")]
unsafe extern "C" {
    fn gnu_get_libc_version() -> *const libc::c_char;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BuildQuery {
    target: String,
    #[serde(default)]
    glibc: Option<String>,
}

/// Why this server's own build cannot run on `target` with `glibc` (`None`: it can).
pub fn build_refusal(target: &str, host_glibc: Option<&str>) -> Option<String> {
    let ours = crate::agent::target();
    if target != ours {
        return Some(format!(
            "this server has a kitt build for {ours} only, and a {target} host cannot run it: build kitt there (`cargo install --path .`) and run `kitt agent init` with it"
        ));
    }
    let (Some((maj, min)), Some(theirs)) = (glibc(), host_glibc) else { return None };
    let mut p = theirs.split('.').filter_map(|x| x.parse::<u32>().ok());
    let theirs = (p.next().unwrap_or(0), p.next().unwrap_or(0));
    (theirs < (maj, min)).then(|| {
        format!(
            "this server's kitt build needs glibc {maj}.{min} or newer, and the host has {}.{}: build kitt there, or update its system",
            theirs.0, theirs.1
        )
    })
}

/// `GET /api/v1/agent/build`: this server's own kitt for the agent's target and libc, with its
/// SHA-256 in `x-kitt-sha256` (the agent checks it over the channel it pinned).
pub(super) async fn build(axum::Extension(caller): axum::Extension<Caller>, Query(q): Query<BuildQuery>) -> Answer {
    agent_of(&caller)?;
    if let Some(why) = build_refusal(&q.target, q.glibc.as_deref()) {
        return Err(Problem::new(StatusCode::CONFLICT, why));
    }
    let (bytes, sha) = blocking(|| {
        let exe = std::env::current_exe().map_err(Problem::internal)?;
        let bytes =
            std::fs::read(&exe).map_err(|e| Problem::internal(format!("cannot read {}: {e}", exe.display())))?;
        let sha: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        Ok((bytes, sha))
    })
    .await?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (axum::http::HeaderName::from_static("x-kitt-sha256"), sha),
            (axum::http::HeaderName::from_static("x-kitt-build"), crate::run::facts::build_id()),
        ],
        bytes,
    )
        .into_response())
}

/// `GET /api/v1/agent/install.sh` (no token: it holds no secret). It asks for the agent token
/// (from `KITT_AGENT_TOKEN_FILE`, else the terminal), downloads this server's kitt for the host's
/// target with it, checks the SHA-256, installs it and runs `kitt agent init`, trusting only this
/// server's CA (embedded: public).
pub(super) async fn install_script(State(app): State<Arc<App>>, headers: axum::http::HeaderMap) -> Answer {
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)) {
        return Err(Problem::bad_request("the Host header is not a host name"));
    }
    let tls = app.cfg.tls.is_some();
    let (ca_pem, pin) = match &app.cfg.tls {
        Some(source) => {
            let (pem, pin) = blocking({
                let source = source.clone();
                move || super::tls::trust_anchor(&source).map_err(Problem::internal)
            })
            .await?;
            (pem, pin)
        }
        None => (String::new(), String::new()),
    };
    let script = install_text(&format!("{}://{host}", if tls { "https" } else { "http" }), &ca_pem, &pin);
    Ok(([(axum::http::header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")], script).into_response())
}

/// The install script for a server at `url` whose CA is `ca_pem` (empty: plain HTTP on loopback).
pub fn install_text(url: &str, ca_pem: &str, pin: &str) -> String {
    let ca = if ca_pem.is_empty() {
        String::new()
    } else {
        format!("ca=\"$dir/kitt-ca.pem\"\ncat > \"$ca\" <<'KITT_CA'\n{}KITT_CA\ncurl_tls=\"--cacert $ca\"\n", ca_pem)
    };
    let pin_flag = if pin.is_empty() { String::new() } else { format!(" --ca-sha256 {pin}") };
    format!(
        r#"#!/bin/sh
# Installs kitt from {url} and makes this host one of its agents. The script holds no secret:
# the agent token is read from KITT_AGENT_TOKEN_FILE, else from the terminal.
set -eu
server="{url}"
dest="${{KITT_INSTALL_DIR:-$HOME/.local/bin}}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
curl_tls=""
{ca}case "$(uname -m)" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  *) arch="$(uname -m)" ;;
esac
glibc="$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{{print $2}}')"
if [ -n "$glibc" ]; then target="$arch-linux-gnu"; else target="$arch-linux-musl"; fi
if [ -n "${{KITT_AGENT_TOKEN_FILE:-}}" ]; then
  token="$(cat "$KITT_AGENT_TOKEN_FILE")"
else
  printf 'agent token (kitt serve token create --scope agent): ' >/dev/tty
  stty -echo </dev/tty 2>/dev/null || true
  read -r token </dev/tty
  stty echo </dev/tty 2>/dev/null || true
  printf '\n' >/dev/tty
fi
printf 'Authorization: Bearer %s\n' "$token" > "$dir/auth"
code="$(curl -sS $curl_tls -H @"$dir/auth" -D "$dir/headers" -o "$dir/kitt" -w '%{{http_code}}' \
  "$server/api/v1/agent/build?target=$target&glibc=$glibc")"
rm -f "$dir/auth"
if [ "$code" != 200 ]; then
  echo "kitt install: the server refused ($code): $(cat "$dir/kitt")" >&2
  exit 1
fi
want="$(awk 'tolower($1) == "x-kitt-sha256:" {{print $2}}' "$dir/headers" | tr -d '\r')"
got="$(sha256sum "$dir/kitt" | awk '{{print $1}}')"
if [ -z "$want" ] || [ "$want" != "$got" ]; then
  echo "kitt install: SHA-256 mismatch (expected $want, got $got)" >&2
  exit 1
fi
mkdir -p "$dest"
chmod 755 "$dir/kitt"
mv "$dir/kitt" "$dest/kitt"
printf '%s\n' "$token" | "$dest/kitt" agent init --server "$server"{pin_flag} --token-file -
echo "kitt installed in $dest/kitt; start the agent with: $dest/kitt agent start (or kitt agent service install)"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::eval::items::Rng;

    fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
        let mut b = base.to_vec();
        for _ in 0..1 + rng.next() % 8 {
            let i = (rng.next() as usize) % (b.len() + 1);
            match rng.next() % 4 {
                0 if i < b.len() => b[i] = rng.next() as u8,
                1 if i < b.len() => {
                    b.remove(i);
                }
                2 => b.insert(i, rng.next() as u8),
                _ => b.truncate(i),
            }
        }
        b
    }

    #[test]
    fn the_agent_decoders_refuse_mangled_input_and_never_panic() {
        let register = serde_json::to_vec(&serde_json::json!({
            "protocol": [1, 0], "kitt_version": "0.1.0", "build": "b", "target": "x86_64-linux-gnu", "hostname": "h",
            "fingerprint": "f", "fingerprint_identity": "i", "gpus": [], "slots": 1, "docker": false,
        }))
        .unwrap();
        let line = br#"{"run":"r","unit":"u","attempt":0,"kind":"journal","seq":3,"line":"{\"seq\":0,\"unix_ns\":1,\"event\":\"run_started\"}"}"#;
        let finish = br#"{"run":"r","unit":"u","attempt":1,"outcome":"lost","reason":"x"}"#;
        let claimed = serde_json::to_vec(&serde_json::json!({
            "run": "r", "unit": "u", "attempt": 0, "lease_ms": 1, "heartbeat_ms": 1, "waited_ms": 0, "run_json": "{}",
            "plan_json": "{}", "committed": [], "gpus": 0, "suite": "s.yaml", "files": {},
        }))
        .unwrap();
        assert!(serde_json::from_slice::<proto::Register>(&register).is_ok());
        assert!(serde_json::from_slice::<EventLine>(line).is_ok());
        assert!(serde_json::from_slice::<Finish>(finish).is_ok());
        assert!(serde_json::from_slice::<Claimed>(&claimed).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let step = dir.path().join("step");
        std::fs::create_dir_all(step.join("sub")).unwrap();
        std::fs::write(step.join("result.json"), b"{}").unwrap();
        std::fs::write(step.join("sub/requests.jsonl"), b"{}\n{}\n").unwrap();
        let archive = dir.path().join("a.tar.zst");
        pack(&step, &archive).unwrap();
        let good = std::fs::read(&archive).unwrap();
        unpack(&archive, &dir.path().join("out")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("out/sub/requests.jsonl")).unwrap(), b"{}\n{}\n");
        let mut rng = Rng::new(7);
        for i in 0..3000 {
            let _ = serde_json::from_slice::<proto::Register>(&mutate(&mut rng, &register));
            let _ = serde_json::from_slice::<EventLine>(&mutate(&mut rng, line));
            let _ = serde_json::from_slice::<Finish>(&mutate(&mut rng, finish));
            let _ = serde_json::from_slice::<Claimed>(&mutate(&mut rng, &claimed));
            let _ = serde_json::from_slice::<proto::Heartbeat>(&mutate(
                &mut rng,
                br#"{"units":[{"run":"r","unit":"u","attempt":2}]}"#,
            ));
            if i % 10 == 0 {
                let bad = dir.path().join("bad.tar.zst");
                std::fs::write(&bad, mutate(&mut rng, &good)).unwrap();
                let out = dir.path().join(format!("bad-{i}"));
                let _ = unpack(&bad, &out);
                // Whatever it unpacked stays inside its directory.
                for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    assert!(
                        ["step", "out", "a.tar.zst", "bad.tar.zst"].contains(&name.as_str())
                            || name.starts_with("bad-"),
                        "{name} escaped"
                    );
                }
            }
        }
    }

    fn agent(labels: &[(&str, &str)], fingerprint: &str) -> AgentInfo {
        AgentInfo {
            name: "a".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            hostname: "h".into(),
            kitt_version: String::new(),
            build: String::new(),
            target: String::new(),
            fingerprint: fingerprint.into(),
            fingerprint_identity: format!("{fingerprint}_identity_h100"),
            gpus: Vec::new(),
            slots: 1,
            docker: false,
            registered_unix_ns: 0,
            last_seen_unix_ns: 0,
            state: "active".into(),
            held: Vec::new(),
            disk_free_bytes: 0,
        }
    }

    #[test]
    fn a_unit_goes_only_to_an_agent_with_its_labels_fingerprint_gpus_and_room() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("r1/agents")).unwrap();
        let entry = QueueEntry {
            run: "r1".into(),
            unit: "u".into(),
            attempt: 0,
            select: [("gpu".to_string(), "h100".to_string())].into(),
            fingerprint: Some("*_h100".into()),
            same_fingerprint: true,
            gpus: 1,
            host_isolation: false,
            lease_ms: 3000,
            queued_unix_ns: 0,
        };
        let req = |gpus_free, running, exclusive| proto::ClaimRequest {
            wait_ms: 0,
            gpus_free,
            running,
            exclusive,
            relays: false,
        };
        let good = agent(&[("gpu", "h100"), ("rack", "r1")], "fp1");
        assert!(matches(root.path(), &good, &entry, &req(1, 0, false)));
        assert!(!matches(root.path(), &agent(&[("gpu", "a100")], "fp1"), &entry, &req(1, 0, false)), "labels");
        assert!(!matches(root.path(), &good, &entry, &req(0, 0, false)), "no GPU free");
        assert!(!matches(root.path(), &good, &entry, &req(1, 1, true)), "a host-isolated unit runs there");
        let mut no_glob = good.clone();
        no_glob.fingerprint_identity = "fp1_identity_a100".into();
        assert!(!matches(root.path(), &no_glob, &entry, &req(1, 0, false)), "fingerprint glob");
        let host = QueueEntry { host_isolation: true, ..entry.clone() };
        assert!(!matches(root.path(), &good, &host, &req(1, 1, false)), "host isolation needs an idle agent");
        // `same_fingerprint`: the run's first claim pins it; another fingerprint no longer matches.
        std::fs::write(files::pin_path(&root.path().join("r1")), "fp1").unwrap();
        assert!(matches(root.path(), &good, &entry, &req(1, 0, false)));
        let other = agent(&[("gpu", "h100")], "fp2");
        assert!(!matches(root.path(), &other, &entry, &req(1, 0, false)), "pinned to fp1");
        let free = QueueEntry { same_fingerprint: false, ..entry };
        assert!(matches(root.path(), &other, &free, &req(1, 0, false)));
    }

    #[test]
    fn an_archive_with_a_link_or_a_path_out_of_the_step_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (name, link) in [("../evil", false), ("ok/link", true)] {
            let path = dir.path().join("x.tar.zst");
            let f = std::fs::File::create(&path).unwrap();
            let enc = zstd::stream::write::Encoder::new(f, 1).unwrap();
            let mut b = tar::Builder::new(enc);
            let mut h = tar::Header::new_gnu();
            if link {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, "/etc/passwd").unwrap();
            } else {
                h.set_size(1);
                h.set_mode(0o644);
                // `append_data` refuses `..`; write the name into the header as a hostile archive would.
                h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                b.append(&h, &b"x"[..]).unwrap();
            }
            b.into_inner().unwrap().finish().unwrap();
            let e = unpack(&path, &dir.path().join("out")).unwrap_err();
            assert!(e.to_string().contains("leaves the step") || e.to_string().contains("not a file"), "{e}");
            assert!(!dir.path().join("evil").exists());
        }
    }
}
