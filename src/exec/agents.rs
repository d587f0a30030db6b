//! The `agents` executor: units run on remote `kitt agent` hosts that pull them from a `kitt
//! serve` over the same runs directory.
//!
//! Everything goes through files, as for every executor, so a driver, a server and their
//! restarts agree without talking to each other:
//! - `RUNS/.agents/queue/<ns>-<run>-<unit>.json`: a unit waiting for an agent (written here by
//!   `submit`, atomically; the name orders the queue). The server takes an entry by renaming it
//!   into `RUNS/.agents/claimed/`, so one agent gets it.
//! - `RUN/agents/<unit>.<attempt>.json`: the attempt as the server sees it ([`AttemptRecord`]),
//!   written only by the server: which agent holds it and how it ended.
//! - `RUN/agents/<unit>.<attempt>.cancel`: a cancel asked by the driver, relayed by the server on
//!   the agent's next heartbeat.
//!
//! The attempt itself is the ordinary one (`attempts/<unit>/<n>`, its lease file, journal shard
//! and step commits), written by the server on the agent's behalf: the server renews the lease
//! on each heartbeat, so the driver judges expiry exactly as for a local `kitt work`, on the
//! server's clock.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ExecError, Leases, UnitExecutor, UnitState};
use crate::agent::proto::Outcome;
use crate::run::lease::file::{Watch, marked_expired, newest};
use crate::run::lease::{Epoch, RealClock};

/// What the agent machinery reads of a plan.json (the plan itself is written, never read back).
#[derive(Debug, Clone, Deserialize)]
pub struct PlanLite {
    pub units: Vec<UnitLite>,
    pub steps: Vec<StepLite>,
    #[serde(default)]
    pub groups: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UnitLite {
    pub id: String,
    pub group: usize,
    pub steps: Vec<usize>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StepLite {
    pub key: String,
    pub kind: crate::plan::StepKind,
}

impl PlanLite {
    pub fn read(run_dir: &Path) -> Result<PlanLite, String> {
        let p = run_dir.join("plan.json");
        let bytes = std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", p.display()))
    }

    pub fn unit(&self, id: &str) -> Option<&UnitLite> {
        self.units.iter().find(|u| u.id == id)
    }

    /// The measured (benchmark, collect) keys of unit `id`.
    pub fn measured(&self, id: &str) -> Vec<String> {
        self.unit(id)
            .map(|u| {
                u.steps
                    .iter()
                    .filter_map(|s| self.steps.get(*s))
                    .filter(|s| matches!(s.kind, crate::plan::StepKind::Benchmark | crate::plan::StepKind::Collect))
                    .map(|s| s.key.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The measured keys of unit `id` committed in the run at `run_dir`.
    pub fn committed(&self, run_dir: &Path, id: &str) -> Vec<String> {
        self.measured(id)
            .into_iter()
            .filter(|k| run_dir.join("steps").join(k).join(crate::run::commit::COMMITTED).exists())
            .collect()
    }
}

/// The server's agent directory under a runs directory.
pub fn agents_dir(runs_root: &Path) -> PathBuf {
    runs_root.join(".agents")
}

pub fn queue_dir(runs_root: &Path) -> PathBuf {
    agents_dir(runs_root).join("queue")
}

pub fn claimed_dir(runs_root: &Path) -> PathBuf {
    agents_dir(runs_root).join("claimed")
}

/// A unit waiting for an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueEntry {
    pub run: String,
    pub unit: String,
    pub attempt: u32,
    /// Labels the agent's token must have.
    #[serde(default)]
    pub select: BTreeMap<String, String>,
    /// A glob the agent's fingerprint (hash or identity) must match.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Every unit of the run on agents of one fingerprint (the first claim pins it).
    #[serde(default)]
    pub same_fingerprint: bool,
    /// GPUs the unit takes.
    #[serde(default)]
    pub gpus: u32,
    /// The run's `isolation: host`: one measuring unit per agent.
    #[serde(default)]
    pub host_isolation: bool,
    pub lease_ms: u64,
    pub queued_unix_ns: u64,
}

/// One attempt on an agent, as the server records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptRecord {
    pub agent: String,
    pub hostname: String,
    pub outcome: Outcome,
    #[serde(default)]
    pub reason: String,
    pub claimed_unix_ns: u64,
    #[serde(default)]
    pub ended_unix_ns: Option<u64>,
}

pub fn record_path(run_dir: &Path, unit: &str, attempt: u32) -> PathBuf {
    run_dir.join("agents").join(format!("{unit}.{attempt}.json"))
}

pub fn cancel_path(run_dir: &Path, unit: &str, attempt: u32) -> PathBuf {
    run_dir.join("agents").join(format!("{unit}.{attempt}.cancel"))
}

/// The attempt's output lines as the agent sent them.
pub fn log_path(run_dir: &Path, unit: &str, attempt: u32) -> PathBuf {
    run_dir.join("agents").join(format!("{unit}.{attempt}.log"))
}

/// The fingerprint a `same_fingerprint` run is pinned to (its first claim's).
pub fn pin_path(run_dir: &Path) -> PathBuf {
    run_dir.join("agents").join("fingerprint")
}

pub fn read_record(run_dir: &Path, unit: &str, attempt: u32) -> Option<AttemptRecord> {
    serde_json::from_slice(&std::fs::read(record_path(run_dir, unit, attempt)).ok()?).ok()
}

pub fn write_record(run_dir: &Path, unit: &str, attempt: u32, r: &AttemptRecord) -> std::io::Result<()> {
    let p = record_path(run_dir, unit, attempt);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    crate::run::dir::write_atomic(&p, &serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?)
}

/// Where the run's units wait: [`queue_dir`] of the run's runs directory.
fn queue_of(run_dir: &Path) -> PathBuf {
    queue_dir(run_dir.parent().unwrap_or(Path::new(".")))
}

/// What `execution.agents` asks of the agents that take a run's units.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    pub select: BTreeMap<String, String>,
    pub fingerprint: Option<String>,
    pub same_fingerprint: bool,
    pub gpus: u32,
    pub lease: std::time::Duration,
    pub host_isolation: bool,
}

pub struct Agents {
    run_id: String,
    run_dir: PathBuf,
    wanted: Wanted,
    /// Each submitted unit's attempt and its queue entry.
    units: HashMap<String, (u32, PathBuf)>,
    /// Units that ended here without the server (cancelled while queued; abandoned).
    ended: HashMap<String, UnitState>,
    cancels: HashMap<String, u32>,
}

impl Wanted {
    /// What the plan's `execution.agents` asks (its defaults when absent).
    pub fn of(plan: &crate::plan::Plan) -> Wanted {
        let b = plan.execution.agents.clone().unwrap_or_default();
        Wanted {
            select: b.select.into_iter().map(|(k, v)| (k, v.value)).collect(),
            fingerprint: b.fingerprint.map(|f| f.value),
            same_fingerprint: b.same_fingerprint,
            gpus: b.gpus,
            lease: b.lease.0,
            host_isolation: plan.execution.isolation == crate::manifest::suite::Isolation::Host,
        }
    }
}

impl Agents {
    /// An executor for the run at `run_dir`, whose runs directory a `kitt serve` must serve
    /// (it made `.agents/queue/` there).
    pub fn for_run(run_id: &str, run_dir: &Path, wanted: Wanted) -> Result<Agents, String> {
        let queue = queue_of(run_dir);
        if !queue.is_dir() {
            return Err(format!(
                "the agents executor places units through a `kitt serve` over this runs directory, and {} has none ({} is missing); start the run with `kitt apply SUITE --server URL`, or run `kitt serve --runs-dir {}`",
                run_dir.parent().unwrap_or(Path::new(".")).display(),
                queue.display(),
                run_dir.parent().unwrap_or(Path::new(".")).display()
            ));
        }
        Ok(Agents {
            run_id: run_id.to_string(),
            run_dir: run_dir.to_path_buf(),
            wanted,
            units: HashMap::new(),
            ended: HashMap::new(),
            cancels: HashMap::new(),
        })
    }

    fn queue(&self, unit: &str, attempt: u32) -> Result<PathBuf, ExecError> {
        let now = crate::run::journal::unix_ns();
        let entry = QueueEntry {
            run: self.run_id.clone(),
            unit: unit.to_string(),
            attempt,
            select: self.wanted.select.clone(),
            fingerprint: self.wanted.fingerprint.clone(),
            same_fingerprint: self.wanted.same_fingerprint,
            gpus: self.wanted.gpus,
            host_isolation: self.wanted.host_isolation,
            lease_ms: self.wanted.lease.as_millis() as u64,
            queued_unix_ns: now,
        };
        let path = queue_of(&self.run_dir).join(format!("{now:020}-{}-{unit}.json", self.run_id));
        let bytes = serde_json::to_vec(&entry).unwrap_or_default();
        crate::run::dir::write_atomic(&path, &bytes)
            .map_err(|e| ExecError::Submit { unit: unit.into(), reason: format!("cannot queue it: {e}") })?;
        Ok(path)
    }
}

/// The unit state an attempt record says.
fn state_of(r: &AttemptRecord) -> UnitState {
    match r.outcome {
        Outcome::Running => UnitState::Running,
        Outcome::Succeeded => UnitState::Succeeded,
        Outcome::Failed => UnitState::Failed(format!("on agent {}: {}", r.agent, r.reason)),
        Outcome::Cancelled => UnitState::Cancelled,
        Outcome::Lost => UnitState::Lost(format!("on agent {}: {}", r.agent, r.reason)),
    }
}

impl UnitExecutor for Agents {
    fn submit(&mut self, unit: &str) -> Result<(), ExecError> {
        let attempt = newest(&self.run_dir.join("attempts").join(unit)).map_or(0, |n| n + 1);
        let path = self.queue(unit, attempt)?;
        self.ended.remove(unit);
        self.cancels.remove(unit);
        self.units.insert(unit.to_string(), (attempt, path));
        Ok(())
    }

    /// Queued together: agents take them as they come free (a barrier across agents is the
    /// distributed-load issue's, not this executor's).
    fn submit_gang(&mut self, units: &[&str]) -> Result<(), ExecError> {
        for (i, u) in units.iter().enumerate() {
            if let Err(e) = self.submit(u) {
                for done in &units[..i] {
                    self.cancel(done);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn state(&mut self, unit: &str) -> UnitState {
        if let Some(s) = self.ended.get(unit) {
            return s.clone();
        }
        let Some((attempt, _)) = self.units.get(unit) else {
            return UnitState::Failed(format!("unit {unit} was never submitted"));
        };
        match read_record(&self.run_dir, unit, *attempt) {
            Some(r) => {
                let s = state_of(&r);
                if s.ended() {
                    self.ended.insert(unit.to_string(), s.clone());
                }
                s
            }
            None => UnitState::Running,
        }
    }

    fn cancel(&mut self, unit: &str) {
        let Some((attempt, queued)) = self.units.get(unit).cloned() else { return };
        *self.cancels.entry(unit.to_string()).or_default() += 1;
        // Still queued: taking the entry back is the whole cancel (a claim renames it away first).
        if std::fs::remove_file(&queued).is_ok() {
            self.ended.insert(unit.to_string(), UnitState::Cancelled);
            return;
        }
        let p = cancel_path(&self.run_dir, unit, attempt);
        if let Err(e) = crate::run::dir::write_atomic(&p, b"") {
            tracing::warn!("cannot ask unit {unit} to stop ({}): {e}", p.display());
        }
    }

    /// The attempt's lease expired: the agent has fenced itself by now (it stops once `lease −
    /// 2 × heartbeat` passed without an acknowledged renewal), and the server refuses anything
    /// more from it (the attempt is marked expired). So it is lost at once.
    fn abandon(&mut self, unit: &str, _kill: bool) {
        let Some((attempt, queued)) = self.units.get(unit).cloned() else { return };
        let _ = std::fs::remove_file(&queued);
        let _ = crate::run::dir::write_atomic(&cancel_path(&self.run_dir, unit, attempt), b"");
        let on = read_record(&self.run_dir, unit, attempt).map(|r| r.agent).unwrap_or_else(|| "no agent".into());
        self.ended.insert(unit.to_string(), UnitState::Lost(format!("its lease expired (agent {on})")));
    }

    fn external_id(&self, unit: &str) -> Option<String> {
        let (attempt, queued) = self.units.get(unit)?;
        Some(serde_json::json!({"attempt": attempt, "queued": queued}).to_string())
    }

    fn adopt(&mut self, unit: &str, attempt: u32, external_id: &str) {
        let queued = serde_json::from_str::<serde_json::Value>(external_id)
            .ok()
            .and_then(|v| v["queued"].as_str().map(PathBuf::from))
            .unwrap_or_default();
        self.ended.remove(unit);
        self.cancels.remove(unit);
        self.units.insert(unit.to_string(), (attempt, queued.clone()));
        // Neither queued nor claimed: the entry was lost with a server that died mid-claim.
        if !queued.exists() && read_record(&self.run_dir, unit, attempt).is_none() {
            let claimed = claimed_dir(self.run_dir.parent().unwrap_or(Path::new(".")))
                .join(queued.file_name().unwrap_or_default());
            if !claimed.exists() {
                self.ended.insert(unit.to_string(), UnitState::Lost("its queue entry is gone".into()));
            }
        }
    }
}

impl Drop for Agents {
    /// Units still queued are taken back (a claimed one is the agent's until its lease ends or
    /// its cancel is relayed): nothing waits for an agent on behalf of a driver that is gone.
    fn drop(&mut self) {
        for (unit, (attempt, queued)) in &self.units {
            if self.ended.contains_key(unit) {
                continue;
            }
            if std::fs::remove_file(queued).is_err() {
                let _ = crate::run::dir::write_atomic(&cancel_path(&self.run_dir, unit, *attempt), b"");
            }
        }
    }
}

/// The driver's watch over agent attempts' leases: like [`super::leases::LeaseWatches`], but an
/// attempt still waiting in the queue has no lease yet (an agent may be hours away), so the
/// watch starts when the server creates the attempt for its agent.
pub struct AgentLeases {
    attempts: PathBuf,
    lease: std::time::Duration,
    watching: HashMap<String, (Epoch, Option<Watch<RealClock>>)>,
}

impl AgentLeases {
    pub fn new(run_dir: &Path, lease: std::time::Duration) -> AgentLeases {
        AgentLeases { attempts: run_dir.join("attempts"), lease, watching: HashMap::new() }
    }
}

impl Leases for AgentLeases {
    fn placed(&mut self, unit: &str) {
        let epoch = newest(&self.attempts.join(unit)).map_or(0, |n| n + 1);
        self.watching.insert(unit.to_string(), (epoch, None));
    }

    fn adopted(&mut self, unit: &str, attempt: u32) {
        self.watching.insert(unit.to_string(), (attempt, None));
    }

    fn expired(&mut self, unit: &str) -> bool {
        let dir = self.attempts.join(unit);
        let Some((epoch, watch)) = self.watching.get_mut(unit) else { return false };
        if watch.is_none() {
            if !dir.join(epoch.to_string()).exists() {
                return false;
            }
            *watch = Some(Watch::new(&dir, *epoch, self.lease, RealClock::default()));
        }
        let Some(w) = watch.as_mut() else { return false };
        if !w.poll() {
            return false;
        }
        if !marked_expired(&dir, *epoch)
            && let Err(e) = crate::run::lease::file::mark_expired(&dir, *epoch)
        {
            tracing::warn!("cannot mark attempt {epoch} of unit {unit} expired under {}: {e}", dir.display());
        }
        true
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_a_shell_would() {
        assert!(glob("nvidia-h100*", "nvidia-h100-80gb_x"));
        assert!(glob("*h100*", "a_h100_b"));
        assert!(!glob("*h200*", "a_h100_b"));
        assert!(glob("abc", "abc") && !glob("abc", "abcd"));
        assert!(glob("a*c*e", "abcde") && !glob("a*c*e", "abce_"));
        assert!(glob("*", ""));
    }
}
