//! `kitt agent`: a host that pulls units from a central `kitt serve` and runs them with `kitt
//! work`, in a copy of the run under its spool.
//!
//! It only connects out. Every unit it holds is an ordinary attempt on the server (created there
//! at the claim); here it is a child `kitt work --agent-copy` over a local copy of the run
//! that knows which of the unit's keys are committed already. The agent streams the child's
//! journal shard and output to the server in order, and uploads each committed step before the
//! journal record that says it finished, so the server never has a record of a step it does not
//! hold. It fences itself: once `lease − 2 × heartbeat` has passed since it sent the last
//! heartbeat that the server acknowledged for a unit, it stops that unit's `kitt work` (and so
//! its engine) and sends nothing more for it, before the server can give the unit to another
//! agent. Its spool survives its restarts: a restarted agent uploads what its dead children
//! committed, then reports those attempts lost so that their units are placed again.

pub mod config;
pub mod proto;
pub mod relay;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config::Config;
use proto::{Beat, Claimed, EventKind, EventLine, Finish, Held, Outcome};

use crate::cancel::Cancel;
use crate::plan::StepKind;
use crate::run::journal::{Event, Record};

/// One unit the agent runs.
struct Slot {
    held: Held,
    /// The process group of its `kitt work` (0 until started).
    pgid: AtomicI32,
    /// When the last heartbeat that the server acknowledged for it was sent.
    last_ack: Mutex<Instant>,
    fence_after: Duration,
    /// Why the server asked it to stop.
    stop: Mutex<Option<String>>,
    /// It fenced itself, or the server said it no longer holds the unit: it sends nothing more.
    fenced: AtomicBool,
    /// The GPUs it was given (UUIDs), and whether it takes the whole host.
    gpus: Vec<String>,
    exclusive: bool,
}

pub struct Agent {
    cfg: Config,
    base: String,
    http: reqwest::Client,
    state: PathBuf,
    heartbeat: Mutex<Duration>,
    name: Mutex<String>,
    slots: Mutex<HashMap<Held, Arc<Slot>>>,
    drain: AtomicBool,
    last_beat_ok: Mutex<Option<u64>>,
    stopping: Cancel,
    /// Where its config is: the coordinator side of a relay reads its token there.
    config_path: Option<PathBuf>,
    /// Client shards of other agents' cells it runs now (relay ids); each takes a slot.
    relays: Mutex<HashSet<String>>,
}

fn now_ns() -> u64 {
    crate::run::journal::unix_ns()
}

/// `x86_64-linux-gnu` and the like: what `kitt agent update` and the server's builds key on.
pub fn target() -> String {
    let env = if cfg!(target_env = "gnu") {
        "gnu"
    } else if cfg!(target_env = "musl") {
        "musl"
    } else {
        "unknown"
    };
    format!("{}-{}-{env}", std::env::consts::ARCH, std::env::consts::OS)
}

/// An error and its causes, as one line (a TLS refusal is in the causes of a request's error).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

fn signal_group(pgid: i32, signal: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) on the process group of a child this agent started.
        unsafe { libc::kill(-pgid, signal) };
    }
}

/// Where the agent's copy of run `run` lives.
fn mirror(state: &Path, run: &str) -> PathBuf {
    state.join("runs").join(run)
}

/// What a unit's spool record says (`runs/<run>/agent-<unit>.<attempt>.json`): enough for a
/// restarted agent to find what its dead child committed.
#[derive(serde::Serialize, serde::Deserialize)]
struct Spooled {
    held: Held,
    preset: Vec<String>,
}

fn spool_path(state: &Path, h: &Held) -> PathBuf {
    mirror(state, &h.run).join(format!("agent-{}.{}.json", h.unit, h.attempt))
}

/// Whether the claimed unit's engine is one kitt connects to (an endpoint): its cells' client
/// shards may then run on other agents, which reach it as this one does, and the labels those
/// agents need (`execution.agents.clients_select`). A started engine listens on this host's
/// loopback, so its shards stay here (`None`).
fn spreads(c: &Claimed) -> Option<std::collections::BTreeMap<String, String>> {
    use serde::Deserialize as _;
    let full: serde_json::Value = serde_json::from_str(&c.plan_json).ok()?;
    let plan = crate::exec::agents::PlanLite::deserialize(&full).ok()?;
    let g = plan.unit(&c.unit).and_then(|u| plan.groups.get(u.group))?;
    g["mode"].get("endpoint")?;
    Some(serde_json::from_value(full["execution"]["agents"]["clients_select"].clone()).unwrap_or_default())
}

#[derive(Debug)]
enum Sent {
    Ok,
    /// The server refuses the attempt: stop, commit nothing more.
    Stale(String),
    /// Not now (network, server restarting): try again later.
    Later(String),
}

impl Agent {
    pub fn new(cfg: Config) -> Result<Agent, String> {
        let http = config::client(cfg.ca_sha256.as_deref())?;
        let base = cfg.server.trim_end_matches('/').to_string();
        let state = cfg.state_dir();
        Ok(Agent {
            cfg,
            base,
            http,
            state,
            heartbeat: Mutex::new(Duration::from_secs(10)),
            name: Mutex::new(String::new()),
            slots: Mutex::new(HashMap::new()),
            drain: AtomicBool::new(false),
            last_beat_ok: Mutex::new(None),
            stopping: Cancel::default(),
            config_path: None,
            relays: Mutex::new(HashSet::new()),
        })
    }

    fn agent_name(&self) -> String {
        self.name.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn relays_running(&self) -> usize {
        self.relays.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/agent/{path}", self.base)
    }

    async fn post<T: serde::Serialize>(
        &self,
        path: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), String> {
        partitioned()?;
        let res = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.cfg.token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).map_err(|e| e.to_string())?)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("{}: {}", self.url(path), chain(&e)))?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await.map_err(|e| format!("{}: {e}", self.url(path)))?;
        Ok((status, bytes.to_vec()))
    }

    fn detail(bytes: &[u8]) -> String {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned())
    }

    async fn register(&self) -> Result<proto::Registered, String> {
        let fp = crate::run::fingerprint();
        let body = proto::Register {
            protocol: [proto::PROTOCOL_MAJOR, proto::PROTOCOL_MINOR],
            kitt_version: env!("CARGO_PKG_VERSION").into(),
            build: crate::run::facts::build_id(),
            target: target(),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string(),
            fingerprint: fp.hash().to_string(),
            fingerprint_identity: fp.identity().to_string(),
            gpus: gpus(),
            slots: self.cfg.slots.max(1),
            docker: crate::docker::server_version().is_ok(),
        };
        let (status, bytes) = self.post("register", &body, Duration::from_secs(30)).await?;
        if status != 200 {
            return Err(format!("the server refused to register this agent ({status}): {}", Self::detail(&bytes)));
        }
        let r: proto::Registered = serde_json::from_slice(&bytes).map_err(|e| format!("register: {e}"))?;
        *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Duration::from_millis(r.heartbeat_ms.max(100));
        *self.name.lock().unwrap_or_else(|e| e.into_inner()) = r.agent.clone();
        Ok(r)
    }

    fn heartbeat_interval(&self) -> Duration {
        *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn held(&self) -> Vec<Held> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// One heartbeat: renewals acknowledged move each unit's fence; stops are relayed.
    async fn beat(&self) -> Result<(), String> {
        let sent = Instant::now();
        let mut gpus = gpus();
        {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            for g in &mut gpus {
                g.holder = slots
                    .values()
                    .find(|s| s.gpus.contains(&g.uuid))
                    .map(|s| format!("{}/{}", s.held.run, s.held.unit));
            }
        }
        let body = proto::Heartbeat { units: self.held(), gpus, disk_free_bytes: disk_free(&self.state) };
        // A slow answer still counts from when it was sent; the fence bounds how long it may take.
        let (status, bytes) = self.post("heartbeat", &body, Duration::from_secs(10)).await?;
        if status == 409 {
            // The server forgot this agent (it was removed): register again.
            self.register().await?;
            return Ok(());
        }
        if status != 200 {
            return Err(format!("heartbeat: {status}: {}", Self::detail(&bytes)));
        }
        let beat: Beat = serde_json::from_slice(&bytes).map_err(|e| format!("heartbeat: {e}"))?;
        self.drain.store(beat.drain, Ordering::Relaxed);
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for h in &beat.renewed {
            if let Some(s) = slots.get(h) {
                *s.last_ack.lock().unwrap_or_else(|e| e.into_inner()) = sent;
            }
        }
        for (h, why) in &beat.stop {
            if let Some(s) = slots.get(h) {
                let mut stop = s.stop.lock().unwrap_or_else(|e| e.into_inner());
                if stop.is_none() {
                    tracing::warn!(
                        "unit {} of run {} (attempt {}): the server says stop: {why}",
                        h.unit,
                        h.run,
                        h.attempt
                    );
                    *stop = Some(why.clone());
                }
                if why != "cancelled" {
                    s.fenced.store(true, Ordering::Relaxed);
                }
                signal_group(s.pgid.load(Ordering::Relaxed), libc::SIGTERM);
            }
        }
        for e in beat.exec {
            let me = self.clone_handle();
            tokio::spawn(async move { me.run_exec(e).await });
        }
        *self.last_beat_ok.lock().unwrap_or_else(|e| e.into_inner()) = Some(now_ns());
        self.write_status();
        Ok(())
    }

    /// What `run_exec` needs, apart from the agent's units.
    fn clone_handle(&self) -> ExecHandle {
        ExecHandle {
            base: self.base.clone(),
            http: self.http.clone(),
            token: self.cfg.token.clone(),
            state: self.state.clone(),
            held: self.held().into_iter().map(|h| h.run).collect(),
        }
    }

    fn write_status(&self) {
        let status = serde_json::json!({
            "pid": std::process::id(),
            "server": self.base,
            "agent": *self.name.lock().unwrap_or_else(|e| e.into_inner()),
            "last_heartbeat_ok_unix_ns": *self.last_beat_ok.lock().unwrap_or_else(|e| e.into_inner()),
            "draining": self.drain.load(Ordering::Relaxed),
            "units": self.held(),
            "written_unix_ns": now_ns(),
        });
        let _ = crate::run::dir::write_atomic(&self.state.join("status.json"), status.to_string().as_bytes());
    }

    async fn heartbeats(self: Arc<Self>) {
        let mut failing = false;
        loop {
            let hb = self.heartbeat_interval();
            // ±20 %, so a fleet restarted at once does not beat in step.
            let jitter = 0.8 + 0.4 * (now_ns() % 1000) as f64 / 1000.0;
            tokio::select! {
                _ = tokio::time::sleep(hb.mul_f64(jitter)) => {}
                _ = self.stopping.cancelled() => {
                    if self.slots.lock().unwrap_or_else(|e| e.into_inner()).is_empty() { return; }
                }
            }
            match self.beat().await {
                Ok(()) => {
                    if failing {
                        tracing::info!("heartbeats reach the server again");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("{e}; the units held stop themselves if this lasts (their fence)");
                    }
                    failing = true;
                }
            }
        }
    }

    async fn claims(self: Arc<Self>) {
        loop {
            if self.stopping.is_cancelled() {
                return;
            }
            let (busy, exclusive) = {
                let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                (slots.len() + self.relays_running(), slots.values().any(|s| s.exclusive))
            };
            // A unit under `isolation: host` takes the whole agent: nothing more is claimed.
            if busy >= self.cfg.slots.max(1) as usize || exclusive || self.drain.load(Ordering::Relaxed) {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = self.stopping.cancelled() => return,
                }
                continue;
            }
            let (free, running, exclusive) = {
                let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                let held: HashSet<&String> = slots.values().flat_map(|s| s.gpus.iter()).collect();
                let free: Vec<String> = gpus()
                    .into_iter()
                    // Memory in use that kitt did not put there: another tenant's.
                    .filter(|g| !held.contains(&g.uuid) && g.memory_used_mib < TENANT_MIB)
                    .map(|g| g.uuid)
                    .collect();
                (free, (slots.len() + self.relays_running()) as u32, slots.values().any(|s| s.exclusive))
            };
            let req = proto::ClaimRequest {
                // While units run, what this agent can take changes as they end: ask again soon.
                wait_ms: if running > 0 { 1000 } else { proto::CLAIM_WAIT_MAX_MS },
                gpus_free: free.len() as u32,
                running,
                exclusive,
                relays: true,
            };
            let sent = Instant::now();
            let res = tokio::select! {
                r = self.post("claim", &req, Duration::from_millis(proto::CLAIM_WAIT_MAX_MS + 10_000)) => r,
                _ = self.stopping.cancelled() => return,
            };
            if let Ok((200, bytes)) = &res
                && let Ok(r) = serde_json::from_slice::<proto::RelayClaim>(bytes)
            {
                // A client shard of another agent's cell: it holds a slot while it runs.
                let id = r.relay.id.clone();
                self.relays.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone());
                let me = self.clone();
                tokio::spawn(async move {
                    me.clone().run_relay(r.relay).await;
                    me.relays.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                });
                continue;
            }
            match res {
                Ok((200, bytes)) => match serde_json::from_slice::<Claimed>(&bytes) {
                    Ok(c) => {
                        let me = self.clone();
                        let fence =
                            fence_after(Duration::from_millis(c.lease_ms), Duration::from_millis(c.heartbeat_ms));
                        let held = Held { run: c.run.clone(), unit: c.unit.clone(), attempt: c.attempt };
                        let slot = Arc::new(Slot {
                            held: held.clone(),
                            pgid: AtomicI32::new(0),
                            // The lease began when the server took the unit, after its wait.
                            last_ack: Mutex::new((sent + Duration::from_millis(c.waited_ms)).min(Instant::now())),
                            fence_after: fence,
                            stop: Mutex::new(None),
                            fenced: AtomicBool::new(false),
                            gpus: free.iter().take(c.gpus as usize).cloned().collect(),
                            exclusive: c.host_isolation,
                        });
                        self.slots.lock().unwrap_or_else(|e| e.into_inner()).insert(held, slot.clone());
                        tokio::spawn(async move { me.run_unit(c, slot).await });
                    }
                    Err(e) => {
                        tracing::warn!("claim: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                Ok((204, _)) => {}
                Ok((409, bytes)) => {
                    tracing::warn!("claim: {}; registering again", Self::detail(&bytes));
                    if let Err(e) = self.register().await {
                        tracing::warn!("{e}");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok((status, bytes)) => {
                    tracing::warn!("claim: {status}: {}", Self::detail(&bytes));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::debug!("claim: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Why this agent will not run the unit's engine (`None`: it will).
    fn refuses(&self, c: &Claimed) -> Option<String> {
        let plan: crate::exec::agents::PlanLite = match serde_json::from_str(&c.plan_json) {
            Ok(p) => p,
            Err(e) => return Some(format!("the run's plan does not read here ({e}): `kitt agent update`")),
        };
        let unit = plan.unit(&c.unit)?;
        let g = plan.groups.get(unit.group)?;
        let id = g["id"].as_str().unwrap_or("?");
        let mode = &g["mode"];
        if mode.get("native").is_some() && !self.cfg.allow_native {
            return Some(format!(
                "engine `{id}` is a native command, and this agent runs none (kitt agent init --allow-native)"
            ));
        }
        let image = mode.get("container").and_then(|c| c["image"].as_str());
        if let Some(image) = image
            && !self.cfg.allow_images.is_empty()
            && !self.cfg.allow_images.iter().any(|p| crate::exec::agents::glob(p, image))
        {
            return Some(format!(
                "image `{image}` is not among this agent's --allow-images ({})",
                self.cfg.allow_images.join(", ")
            ));
        }
        None
    }

    /// Makes the agent's copy of the run for attempt `c.attempt`.
    fn prepare(&self, c: &Claimed) -> Result<(PathBuf, HashSet<String>), String> {
        let dir = mirror(&self.state, &c.run);
        let io = |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
        std::fs::create_dir_all(dir.join("attempts").join(&c.unit)).map_err(|e| io("create", &dir, e))?;
        // The suite and its templates beside the run; run.json names that copy.
        let suite_dir = dir.join("suite");
        for (name, text) in &c.files {
            if !crate::serve::bundle::valid_name(name) {
                return Err(format!("the server sent a suite file named `{name}`"));
            }
            crate::run::dir::write_inside(&suite_dir, name, text.as_bytes()).map_err(|e| io("write", &suite_dir, e))?;
        }
        let mut meta: serde_json::Value = serde_json::from_str(&c.run_json).map_err(|e| format!("run.json: {e}"))?;
        meta["file"] = suite_dir.join(&c.suite).to_string_lossy().into_owned().into();
        crate::run::dir::write_atomic(&dir.join("run.json"), meta.to_string().as_bytes())
            .map_err(|e| io("write", &dir, e))?;
        crate::run::dir::write_atomic(&dir.join("plan.json"), c.plan_json.as_bytes())
            .map_err(|e| io("write", &dir, e))?;
        let attempts = dir.join("attempts").join(&c.unit);
        for n in 0..c.attempt {
            let p = attempts.join(n.to_string());
            if !p.exists() {
                std::fs::write(&p, b"{}").map_err(|e| io("write", &p, e))?;
            }
            crate::run::lease::file::mark_expired(&attempts, n).map_err(|e| io("write", &attempts, e))?;
        }
        let mut preset = HashSet::new();
        for key in &c.committed {
            if key.is_empty() || !key.chars().all(|ch| ch.is_ascii_hexdigit()) {
                return Err(format!("the server named a committed step `{key}`, which is no step key"));
            }
            let d = dir.join("steps").join(key);
            std::fs::create_dir_all(&d).map_err(|e| io("create", &d, e))?;
            // Keys come from the server's plan (hex, checked against this agent's own plan by
            // `kitt work`); the file name is fixed.
            if let Some(text) = c.committed_results.get(key) {
                let f = d.join(crate::serve::agents::BENCHMARK_RESULT);
                std::fs::write(&f, text).map_err(|e| io("write", &f, e))?;
            }
            std::fs::write(d.join(crate::run::commit::COMMITTED), b"committed on the server")
                .map_err(|e| io("write", &d, e))?;
            preset.insert(key.clone());
        }
        let held = Held { run: c.run.clone(), unit: c.unit.clone(), attempt: c.attempt };
        let spooled = Spooled { held: held.clone(), preset: preset.iter().cloned().collect() };
        crate::run::dir::write_atomic(
            &spool_path(&self.state, &held),
            &serde_json::to_vec(&spooled).unwrap_or_default(),
        )
        .map_err(|e| io("write", &dir, e))?;
        Ok((dir, preset))
    }

    async fn finish(&self, h: &Held, outcome: Outcome, reason: String) {
        let body = Finish { run: h.run.clone(), unit: h.unit.clone(), attempt: h.attempt, outcome, reason };
        for i in 0..20 {
            match self.post("finish", &body, Duration::from_secs(30)).await {
                Ok((200, _)) => return,
                Ok((409 | 404, bytes)) => {
                    tracing::warn!("finish {}/{}: {}", h.run, h.unit, Self::detail(&bytes));
                    return;
                }
                Ok((s, bytes)) => tracing::warn!("finish {}/{}: {s}: {}", h.run, h.unit, Self::detail(&bytes)),
                Err(e) => tracing::warn!("finish {}/{}: {e}", h.run, h.unit),
            }
            tokio::time::sleep(Duration::from_millis(500 * (i + 1).min(6))).await;
        }
    }

    async fn run_unit(self: Arc<Self>, c: Claimed, slot: Arc<Slot>) {
        let h = slot.held.clone();
        tracing::info!("unit {} of run {} (attempt {}) claimed", h.unit, h.run, h.attempt);
        let (outcome, reason) = match self.refuses(&c) {
            Some(why) => (Outcome::Failed, why),
            None => match self.prepare(&c) {
                Err(e) => (Outcome::Failed, e),
                Ok((dir, preset)) => self.supervise(&dir, &slot, preset, spreads(&c)).await,
            },
        };
        if !slot.fenced.load(Ordering::Relaxed) {
            self.finish(&h, outcome, reason).await;
        }
        let _ = std::fs::remove_file(spool_path(&self.state, &h));
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.remove(&h);
        if !slots.keys().any(|k| k.run == h.run) {
            let _ = std::fs::remove_dir_all(mirror(&self.state, &h.run));
        }
    }

    /// Runs `kitt work` for the unit and streams it to the server until it ends or is fenced.
    async fn supervise(
        &self,
        dir: &Path,
        slot: &Slot,
        preset: HashSet<String>,
        spread: Option<std::collections::BTreeMap<String, String>>,
    ) -> (Outcome, String) {
        let h = &slot.held;
        let program = match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => return (Outcome::Failed, format!("cannot find this kitt binary: {e}")),
        };
        let log_path = dir.join("agents").join(format!("{}.{}.log", h.unit, h.attempt));
        let _ = std::fs::create_dir_all(dir.join("agents"));
        let log = match std::fs::File::create(&log_path) {
            Ok(f) => f,
            Err(e) => return (Outcome::Failed, format!("cannot write {}: {e}", log_path.display())),
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(["work", "--agent-copy", "--unit", &h.unit, "--run-dir"]).arg(dir);
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(log);
        if !slot.gpus.is_empty() {
            // Its engine sees only its GPUs: a container gets `--gpus device=…`, a native
            // command CUDA_VISIBLE_DEVICES.
            let list = slot.gpus.join(",");
            cmd.env(GPUS_ENV, &list).env("CUDA_VISIBLE_DEVICES", &list).env("NVIDIA_VISIBLE_DEVICES", &list);
        }
        if let (Some(select), Some(config)) = (spread, &self.config_path) {
            // Its cells' client shards run on other agents, relayed through the server.
            let env = relay::RelayEnv {
                config: config.clone(),
                run: h.run.clone(),
                unit: h.unit.clone(),
                attempt: h.attempt,
                select,
            };
            cmd.env(relay::RELAY_ENV, serde_json::to_string(&env).unwrap_or_default());
        } else {
            cmd.env_remove(relay::RELAY_ENV);
        }
        cmd.process_group(0);
        // SAFETY: prctl(2) only, between fork and exec: the child gets SIGTERM (and stops its
        // engine) if this agent dies, so no unit outlives its agent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return (Outcome::Failed, format!("cannot start kitt work: {e}")),
        };
        let pgid = child.id().map_or(0, |p| p as i32);
        slot.pgid.store(pgid, Ordering::Relaxed);
        let mut stream = Streams::new(dir, h, preset, log_path.clone());
        let mut signalled: Option<Instant> = None;
        let mut cancelled = false;
        let status = loop {
            let done = tokio::select! {
                s = child.wait() => Some(s),
                _ = tokio::time::sleep(Duration::from_millis(100)) => None,
            };
            if let Some(s) = done {
                break s;
            }
            let silent = slot.last_ack.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
            if silent > slot.fence_after && !slot.fenced.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "unit {} of run {} (attempt {}): no renewal acknowledged for {:.1?}: fencing (stopping its engine)",
                    h.unit,
                    h.run,
                    h.attempt,
                    silent
                );
            }
            let stop = slot.stop.lock().unwrap_or_else(|e| e.into_inner()).is_some();
            if (slot.fenced.load(Ordering::Relaxed) || stop || self.stopping.is_cancelled()) && signalled.is_none() {
                cancelled = stop;
                signal_group(pgid, libc::SIGTERM);
                signalled = Some(Instant::now());
            }
            if signalled.is_some_and(|t| t.elapsed() > Duration::from_secs(20)) {
                signal_group(pgid, libc::SIGKILL);
            }
            if !slot.fenced.load(Ordering::Relaxed)
                && let Sent::Stale(why) = stream.sync(self, false).await
            {
                tracing::warn!("unit {} of run {}: {why}; fencing", h.unit, h.run);
                slot.fenced.store(true, Ordering::Relaxed);
            }
        };
        let status = match status {
            Ok(s) => s,
            Err(e) => return (Outcome::Lost, format!("cannot wait for kitt work: {e}")),
        };
        if slot.fenced.load(Ordering::Relaxed) {
            return (Outcome::Lost, "fenced".into());
        }
        // Everything it wrote reaches the server before the end is said; a step it committed
        // without journaling it (killed in between) too.
        for _ in 0..50 {
            match stream.sync(self, true).await {
                Sent::Ok => break,
                Sent::Stale(why) => {
                    slot.fenced.store(true, Ordering::Relaxed);
                    return (Outcome::Lost, why);
                }
                Sent::Later(e) => {
                    tracing::warn!("unit {}: {e}; retrying", h.unit);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        use std::os::unix::process::ExitStatusExt as _;
        if self.stopping.is_cancelled() && !cancelled && status.code() != Some(0) {
            return (Outcome::Lost, "its agent stopped".into());
        }
        match status.code() {
            Some(0) => (Outcome::Succeeded, String::new()),
            Some(130) => (Outcome::Cancelled, "cancelled".into()),
            _ if cancelled => (Outcome::Cancelled, "cancelled".into()),
            Some(c) => {
                // What it said last, so the run names the cause (a model path missing here…).
                let said = std::fs::read_to_string(&log_path)
                    .ok()
                    .and_then(|t| t.lines().rev().find(|l| l.starts_with("error:")).map(str::to_string));
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                let reason = match said {
                    Some(e) => format!("kitt work exited with {c} on {}: {e}", host.trim()),
                    None => format!("kitt work exited with {c} on {}; its journal shard says why", host.trim()),
                };
                (Outcome::Failed, reason)
            }
            None => (Outcome::Lost, format!("kitt work was killed by signal {}", status.signal().unwrap_or(0))),
        }
    }

    /// Uploads one committed step of the copy at `dir`.
    async fn upload(&self, dir: &Path, h: &Held, key: &str) -> Sent {
        if let Err(e) = partitioned() {
            return Sent::Later(e);
        }
        let step = dir.join("steps").join(key);
        let tmp = dir.join("agents").join(format!("{key}.tar.zst"));
        let (step2, tmp2) = (step.clone(), tmp.clone());
        let sha = match tokio::task::spawn_blocking(move || crate::serve::agents::pack(&step2, &tmp2)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Sent::Later(format!("cannot pack {}: {e}", step.display())),
            Err(e) => return Sent::Later(e.to_string()),
        };
        let body = match tokio::fs::read(&tmp).await {
            Ok(b) => b,
            Err(e) => return Sent::Later(format!("cannot read {}: {e}", tmp.display())),
        };
        let url = format!("{}/api/v1/agent/steps/{key}", self.base);
        let res = self
            .http
            .put(&url)
            .query(&[("run", h.run.as_str()), ("unit", h.unit.as_str()), ("sha256", sha.as_str())])
            .query(&[("attempt", h.attempt)])
            .bearer_auth(&self.cfg.token)
            .body(body)
            .timeout(Duration::from_secs(600))
            .send()
            .await;
        let _ = tokio::fs::remove_file(&tmp).await;
        match res {
            Ok(r) => {
                let status = r.status().as_u16();
                let bytes = r.bytes().await.unwrap_or_default();
                match status {
                    200 | 201 => Sent::Ok,
                    409 if Self::detail(&bytes).contains("stale attempt") => Sent::Stale(Self::detail(&bytes)),
                    // Committed by another attempt: that commit stands, this one is a duplicate.
                    409 => Sent::Ok,
                    // A refusal no retry changes: the attempt stops, and its unit is placed again.
                    s @ 400..=499 if s != 408 && s != 429 => {
                        Sent::Stale(format!("step {key}: {s}: {}", Self::detail(&bytes)))
                    }
                    s => Sent::Later(format!("step {key}: {s}: {}", Self::detail(&bytes))),
                }
            }
            Err(e) => Sent::Later(format!("{url}: {e}")),
        }
    }

    async fn send_events(&self, lines: &[EventLine]) -> Result<(), Sent> {
        if lines.is_empty() {
            return Ok(());
        }
        partitioned().map_err(Sent::Later)?;
        let mut body = Vec::new();
        for l in lines {
            body.extend(serde_json::to_vec(l).unwrap_or_default());
            body.push(b'\n');
        }
        let res = self
            .http
            .post(self.url("events"))
            .bearer_auth(&self.cfg.token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| Sent::Later(e.to_string()))?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await.unwrap_or_default();
        match status {
            200 => Ok(()),
            409 => Err(Sent::Stale(Self::detail(&bytes))),
            s @ 400..=499 if s != 408 && s != 429 => Err(Sent::Stale(format!("events: {s}: {}", Self::detail(&bytes)))),
            s => Err(Sent::Later(format!("events: {s}: {}", Self::detail(&bytes)))),
        }
    }

    /// A restarted agent: what its dead children committed is uploaded while their attempts
    /// still hold their units, then those attempts are reported lost (their units are placed
    /// again for what is left).
    async fn recover(&self) {
        let runs = self.state.join("runs");
        for run in std::fs::read_dir(&runs).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(run.path()).into_iter().flatten().flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                if !name.starts_with("agent-") || !name.ends_with(".json") {
                    continue;
                }
                let Some(sp) = std::fs::read(f.path()).ok().and_then(|b| serde_json::from_slice::<Spooled>(&b).ok())
                else {
                    continue;
                };
                let h = sp.held;
                let mut stream = Streams::new(
                    &run.path(),
                    &h,
                    sp.preset.into_iter().collect(),
                    run.path().join("agents").join(format!("{}.{}.log", h.unit, h.attempt)),
                );
                match stream.sync(self, true).await {
                    Sent::Ok => {
                        tracing::info!("unit {} of run {}: uploaded what attempt {} left", h.unit, h.run, h.attempt)
                    }
                    other => tracing::warn!("unit {} of run {}: {other:?}", h.unit, h.run),
                }
                self.finish(&h, Outcome::Lost, "its agent restarted".into()).await;
                let _ = std::fs::remove_file(f.path());
            }
            let _ = std::fs::remove_dir_all(run.path());
        }
    }
}

/// Runs the commands `kitt agents exec` sends.
struct ExecHandle {
    base: String,
    http: reqwest::Client,
    token: String,
    state: PathBuf,
    held: HashSet<String>,
}

impl ExecHandle {
    async fn run_exec(self, e: proto::Exec) {
        let (ok, output) = match e.command {
            proto::ExecCommand::CheckDocker => match tokio::task::spawn_blocking(crate::docker::server_version).await {
                Ok(Ok(v)) => (true, format!("Docker {v} answers")),
                Ok(Err(err)) => (false, format!("Docker does not answer: {err}")),
                Err(err) => (false, err.to_string()),
            },
            proto::ExecCommand::EnginesStatus => {
                let exe = std::env::current_exe().unwrap_or_else(|_| "kitt".into());
                let names =
                    tokio::process::Command::new(&exe).args(["engines", "list", "--output", "json"]).output().await;
                let names: Vec<String> = names
                    .ok()
                    .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                    .and_then(|v| v.as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| e["name"].as_str().map(str::to_string))
                    .collect();
                let mut out = Vec::new();
                let mut all = true;
                for n in &names {
                    let o = tokio::process::Command::new(&exe).args(["engines", "check", n]).output().await;
                    let (good, text) = match o {
                        Ok(o) => (
                            o.status.success(),
                            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
                        ),
                        Err(err) => (false, err.to_string()),
                    };
                    all &= good;
                    out.push(format!("{n}: {}", text.trim()));
                }
                (all && !names.is_empty(), out.join("\n"))
            }
            proto::ExecCommand::EnginesSetup => {
                let exe = std::env::current_exe().unwrap_or_else(|_| "kitt".into());
                let engine = e.arg.clone().unwrap_or_default();
                match tokio::process::Command::new(&exe).args(["engines", "setup", &engine]).output().await {
                    Ok(o) => (
                        o.status.success(),
                        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
                    ),
                    Err(err) => (false, err.to_string()),
                }
            }
            proto::ExecCommand::CleanupStorage => {
                let runs = self.state.join("runs");
                let (mut freed, mut removed) = (0u64, 0usize);
                for r in std::fs::read_dir(&runs).into_iter().flatten().flatten() {
                    let name = r.file_name().to_string_lossy().to_string();
                    if self.held.contains(&name) {
                        continue;
                    }
                    freed += dir_size(&r.path());
                    if std::fs::remove_dir_all(r.path()).is_ok() {
                        removed += 1;
                    }
                }
                (true, format!("removed {removed} run cop(ies) no unit holds, {freed} bytes"))
            }
        };
        let url = format!("{}/api/v1/agent/exec/{}", self.base, e.id);
        let body = serde_json::to_vec(&proto::ExecResult { ok, output }).unwrap_or_default();
        for _ in 0..5 {
            let sent = self
                .http
                .post(&url)
                .bearer_auth(&self.token)
                .header("content-type", "application/json")
                .body(body.clone())
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            if sent.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn dir_size(p: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(p).into_iter().flatten().flatten().map(|e| dir_size(&e.path())).sum()
}

/// What of one attempt's journal and output the server has.
struct Streams {
    dir: PathBuf,
    held: Held,
    preset: HashSet<String>,
    uploaded: HashSet<String>,
    journal: PathBuf,
    log: PathBuf,
    /// Byte offset and next sequence number of each stream.
    at: HashMap<EventKind, (u64, u64)>,
}

impl Streams {
    fn new(dir: &Path, h: &Held, preset: HashSet<String>, log: PathBuf) -> Streams {
        Streams {
            dir: dir.to_path_buf(),
            held: h.clone(),
            preset,
            uploaded: HashSet::new(),
            journal: crate::run::journal::shard_path(dir, &h.unit, h.attempt),
            log,
            at: HashMap::new(),
        }
    }

    /// Complete lines of `path` from byte `from`, with the offset after each.
    fn lines(path: &Path, from: u64) -> Vec<(String, u64)> {
        use std::io::{Read as _, Seek as _};
        let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
        if f.seek(std::io::SeekFrom::Start(from)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let _ = f.take(512 << 10).read_to_end(&mut buf);
        let mut out = Vec::new();
        let mut start = 0usize;
        for end in memchr::memchr_iter(b'\n', &buf) {
            let line = String::from_utf8_lossy(&buf[start..end]).into_owned();
            start = end + 1;
            out.push((line, from + start as u64));
        }
        out
    }

    /// Sends what is new. `all`: also every committed step not journaled (the attempt ended).
    async fn sync(&mut self, agent: &Agent, all: bool) -> Sent {
        loop {
            let (off, seq) = self.at.get(&EventKind::Journal).copied().unwrap_or((0, 0));
            let lines = Self::lines(&self.journal, off);
            if lines.is_empty() {
                break;
            }
            let mut batch = Vec::new();
            let mut next = (off, seq);
            let mut blocked = None;
            for (line, end) in lines {
                let finished = serde_json::from_str::<Record>(&line).ok().and_then(|r| match r.event {
                    Event::StepFinished { key, kind: StepKind::Benchmark | StepKind::Collect, .. } => Some(key),
                    _ => None,
                });
                if let Some(key) = finished.filter(|k| !self.uploaded.contains(k) && !self.preset.contains(k))
                    && self.dir.join("steps").join(&key).join(crate::run::commit::COMMITTED).exists()
                {
                    blocked = Some(key);
                    break;
                }
                batch.push(EventLine {
                    run: self.held.run.clone(),
                    unit: self.held.unit.clone(),
                    attempt: self.held.attempt,
                    kind: EventKind::Journal,
                    seq: next.1,
                    line,
                });
                next = (end, next.1 + 1);
                if batch.len() >= 500 {
                    break;
                }
            }
            if let Err(s) = agent.send_events(&batch).await {
                return s;
            }
            self.at.insert(EventKind::Journal, next);
            match blocked {
                Some(key) => match agent.upload(&self.dir, &self.held, &key).await {
                    Sent::Ok => {
                        self.uploaded.insert(key);
                    }
                    other => return other,
                },
                None if batch.is_empty() => break,
                None => {}
            }
        }
        if all && let Ok(plan) = crate::exec::agents::PlanLite::read(&self.dir) {
            let keys: Vec<String> = plan
                .committed(&self.dir, &self.held.unit)
                .into_iter()
                .filter(|k| !self.uploaded.contains(k) && !self.preset.contains(k))
                .collect();
            for key in keys {
                match agent.upload(&self.dir, &self.held, &key).await {
                    Sent::Ok => {
                        self.uploaded.insert(key);
                    }
                    other => return other,
                }
            }
        }
        loop {
            let (off, seq) = self.at.get(&EventKind::Log).copied().unwrap_or((0, 0));
            let lines = Self::lines(&self.log, off);
            if lines.is_empty() {
                break;
            }
            let mut next = (off, seq);
            let batch: Vec<EventLine> = lines
                .into_iter()
                .take(500)
                .map(|(line, end)| {
                    let e = EventLine {
                        run: self.held.run.clone(),
                        unit: self.held.unit.clone(),
                        attempt: self.held.attempt,
                        kind: EventKind::Log,
                        seq: next.1,
                        line: line.chars().take(16 << 10).collect(),
                    };
                    next = (end, next.1 + 1);
                    e
                })
                .collect();
            if let Err(s) = agent.send_events(&batch).await {
                return s;
            }
            self.at.insert(EventKind::Log, next);
        }
        Sent::Ok
    }
}

/// The GPUs (UUIDs, comma-separated) an agent gives the `kitt work` of a unit: its container
/// engines get `--gpus device=…` with them.
pub const GPUS_ENV: &str = "KITT_AGENT_GPUS";
/// A GPU with more memory in use than this, that no unit of this agent holds, is another
/// tenant's: it is not offered.
const TENANT_MIB: u64 = 1024;

/// Test hook: while the file `KITT_TEST_AGENT_PARTITION` names exists, every request of this
/// agent fails as if its network were cut (a partition, without root or a second host). Never
/// set it outside tests.
pub const PARTITION_ENV: &str = "KITT_TEST_AGENT_PARTITION";

fn partitioned() -> Result<(), String> {
    match std::env::var_os(PARTITION_ENV) {
        Some(f) if Path::new(&f).exists() => Err("the network is cut (test hook)".into()),
        _ => Ok(()),
    }
}

/// When an agent stops a unit whose renewals are not acknowledged: `lease − 2 × heartbeat`, so
/// its engine is gone before the server (which waits a whole lease) places the unit again.
pub fn fence_after(lease: Duration, heartbeat: Duration) -> Duration {
    lease.checked_sub(heartbeat * 2).filter(|d| !d.is_zero()).unwrap_or(lease / 2)
}

/// GPUs on this host: NVML where there is one; `KITT_TEST_AGENT_GPUS=N` fakes N (tests).
pub fn gpus() -> Vec<proto::Gpu> {
    if let Some(n) = std::env::var("KITT_TEST_AGENT_GPUS").ok().and_then(|v| v.parse::<u32>().ok()) {
        return (0..n)
            .map(|i| proto::Gpu {
                uuid: format!("GPU-fake-{i}"),
                name: "fake".into(),
                memory_total_mib: 81_559,
                memory_used_mib: 0,
                holder: None,
            })
            .collect();
    }
    let Ok(nvml) = nvml_wrapper::Nvml::init() else { return Vec::new() };
    let n = nvml.device_count().unwrap_or(0);
    (0..n)
        .filter_map(|i| {
            let d = nvml.device_by_index(i).ok()?;
            let mem = d.memory_info().ok()?;
            Some(proto::Gpu {
                uuid: d.uuid().ok()?,
                name: d.name().unwrap_or_default(),
                memory_total_mib: mem.total >> 20,
                memory_used_mib: mem.used >> 20,
                holder: None,
            })
        })
        .collect()
}

fn disk_free(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return 0 };
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return 0;
    }
    s.f_bavail as u64 * s.f_frsize as u64
}

/// The pid file of a running agent (its identity: pid and start time).
pub fn pid_path(state: &Path) -> PathBuf {
    state.join("agent.pid")
}

/// Runs the agent in the foreground until SIGTERM or SIGINT (then its units stop and report).
pub async fn start(cfg: Config, config_path: PathBuf, stop: Cancel) -> Result<(), String> {
    let state = cfg.state_dir();
    std::fs::create_dir_all(state.join("runs")).map_err(|e| format!("cannot create {}: {e}", state.display()))?;
    let pid = pid_path(&state);
    if let Some(owner) =
        std::fs::read(&pid).ok().and_then(|b| serde_json::from_slice::<crate::run::pidfile::Owner>(&b).ok())
        && crate::run::pidfile::still_running(&owner)
        && owner.pid != std::process::id()
    {
        return Err(format!("an agent runs already with this state directory (pid {}); `kitt agent stop`", owner.pid));
    }
    let me = crate::run::pidfile::owner_of(std::process::id()).ok_or("cannot read this process's start time")?;
    crate::run::dir::write_atomic(&pid, &serde_json::to_vec(&me).unwrap_or_default())
        .map_err(|e| format!("cannot write {}: {e}", pid.display()))?;
    // Engines and containers its earlier self left (a kill -9, a reboot) are stopped first.
    let runs = state.join("runs");
    for what in crate::run::pidfile::sweep(&runs, None) {
        tracing::warn!("stopped {what}");
    }
    let scope = crate::docker::Scope::RunsDir(runs.clone());
    if crate::docker::server_version().is_ok() {
        let swept = tokio::task::spawn_blocking(move || crate::docker::sweep(&scope, false)).await.unwrap_or_default();
        for c in &swept.removed {
            tracing::warn!("removed container {} ({})", c.name, c.reason);
        }
    }
    let mut agent = Agent::new(cfg)?;
    agent.config_path = Some(std::path::absolute(&config_path).unwrap_or(config_path));
    let agent = Arc::new(agent);
    let agent_stop = agent.stopping.clone();
    let mut delay = Duration::from_millis(200);
    let registered = loop {
        match agent.register().await {
            Ok(r) => break r,
            Err(e) if e.contains("refused to register") => return Err(e),
            Err(e) => {
                tracing::warn!("{e}; retrying in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return Ok(()),
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    tracing::info!(
        "agent `{}` registered with {} (labels {:?}; heartbeat {:?})",
        registered.agent,
        agent.base,
        registered.labels,
        agent.heartbeat_interval()
    );
    agent.recover().await;
    agent.write_status();
    let beats = tokio::spawn(agent.clone().heartbeats());
    let claims = tokio::spawn(agent.clone().claims());
    stop.cancelled().await;
    tracing::info!("stopping: units held stop their engines and report");
    agent_stop.cancel();
    let _ = claims.await;
    let held: Vec<Arc<Slot>> = agent.slots.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
    for s in &held {
        signal_group(s.pgid.load(Ordering::Relaxed), libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !agent.slots.lock().unwrap_or_else(|e| e.into_inner()).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    beats.abort();
    let _ = std::fs::remove_file(&pid);
    let _ = std::fs::remove_file(state.join("status.json"));
    Ok(())
}
