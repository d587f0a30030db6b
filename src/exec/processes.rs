//! The `processes` executor: each unit is a child `kitt work --run-dir DIR --unit ID` of this
//! kitt binary.
//!
//! Children run in process groups of their own, so a Ctrl-C at the terminal reaches only the
//! driver, which then sends each child one SIGTERM (a graceful stop: the child stops its engine
//! and journals its interruption) and a second one if the driver is told to hurry. Dropping the
//! executor stops (two SIGTERMs: stop now) and reaps whatever still runs, so no path leaves a
//! child, or the engine a child started, behind. A child whose lease expired is abandoned: a
//! SIGTERM, then (if it did not stop, e.g. it is stopped itself) SIGKILL to its process group;
//! its engines die with it (`PR_SET_PDEATHSIG`).
//!
//! A detached driver ([`Processes::detach`]) leaves its children running; a later driver adopts
//! them by their identity (pid and start time, so a reused pid is never mistaken for one) and
//! learns how each ended from the last record of its journal shard, as it is not their parent.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{ExecError, UnitExecutor, UnitState};
use crate::run::journal::{self, Event};
use crate::run::pidfile::{self, Owner};

/// A unit an earlier driver started: its attempt and process.
struct Adopted {
    attempt: u32,
    owner: Owner,
}

pub struct Processes {
    /// The kitt binary the children run (the run's own build: `kitt work` refuses another).
    program: PathBuf,
    run_dir: PathBuf,
    children: HashMap<String, Child>,
    ended: HashMap<String, UnitState>,
    cancelled: HashMap<String, u32>,
    abandoned: HashSet<String>,
    adopted: HashMap<String, Adopted>,
}

impl Processes {
    pub fn new(program: PathBuf, run_dir: PathBuf) -> Processes {
        Processes {
            program,
            run_dir,
            children: HashMap::new(),
            ended: HashMap::new(),
            cancelled: HashMap::new(),
            abandoned: HashSet::new(),
            adopted: HashMap::new(),
        }
    }

    /// Lets every child run on after this executor is dropped (`kitt apply --detach`, a driver
    /// handing its units to the next): their identities are in the run's `executor.json`.
    pub fn detach(&mut self) {
        self.children.clear();
        self.adopted.clear();
    }

    /// How an adopted unit's attempt ended, from its shard's last record.
    fn adopted_end(&self, unit: &str, a: &Adopted) -> UnitState {
        let path = journal::shard_path(&self.run_dir, unit, a.attempt);
        let last = journal::read(&path).ok().and_then(|c| c.records.last().map(|r| r.event.clone()));
        match last {
            Some(Event::RunFinished { ok: true, .. }) => UnitState::Succeeded,
            Some(Event::RunFinished { failed_cells, .. }) => {
                UnitState::Failed(format!("{failed_cells} cell(s) failed; its journal shard says why"))
            }
            Some(Event::RunInterrupted { .. }) => UnitState::Cancelled,
            Some(Event::RunStopped { reason }) => UnitState::Failed(reason),
            _ if self.abandoned.contains(unit) => UnitState::Lost("its lease expired, so it was stopped".into()),
            _ => UnitState::Lost(format!(
                "kitt work (pid {}) ended without a finish record in {}",
                a.owner.pid,
                path.display()
            )),
        }
    }

    fn signal_adopted(owner: &Owner, signal: i32, group: bool) {
        // Only the very process recorded (same start time): a reused pid is left alone.
        if pidfile::still_running(owner)
            && let Ok(pid) = i32::try_from(owner.pid)
        {
            // SAFETY: kill(2) on a process (group) identified by pid and start time.
            unsafe { libc::kill(if group { -pid } else { pid }, signal) };
        }
    }

    fn spawn(&self, unit: &str) -> Result<Child, ExecError> {
        use std::os::unix::process::CommandExt as _;
        let mut c = Command::new(&self.program);
        c.arg("work").arg("--run-dir").arg(&self.run_dir).args(["--unit", unit]);
        c.stdin(Stdio::null()).stdout(Stdio::null()).process_group(0);
        c.spawn().map_err(|e| ExecError::Submit {
            unit: unit.into(),
            reason: format!("cannot run {} work: {e}", self.program.display()),
        })
    }

    /// Signals the child's whole process group (it leads one: `process_group(0)`).
    fn signal_group(child: &Child, signal: i32) {
        // The pid is our own unreaped child, so its group id cannot name another group.
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on a process group we own; no memory is involved.
            unsafe { libc::kill(-pid, signal) };
        }
    }

    fn signal(child: &Child, signal: i32) {
        // The pid is our own unreaped child, so it cannot name another process.
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on a pid we own; no memory is involved.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// What `kitt work`'s exit code says (see `kitt work --help`).
fn state_of(status: std::process::ExitStatus, cancelled: bool, abandoned: bool) -> UnitState {
    use std::os::unix::process::ExitStatusExt as _;
    if abandoned && status.code() != Some(0) {
        return UnitState::Lost("its lease expired, so it was stopped".into());
    }
    match status.code() {
        Some(0) => UnitState::Succeeded,
        Some(130) => UnitState::Cancelled,
        _ if cancelled => UnitState::Cancelled,
        Some(3) => UnitState::Failed("lost its claim to another attempt (exit 3)".into()),
        Some(c) => UnitState::Failed(format!("kitt work exited with {c}; its journal shard says why")),
        None => UnitState::Lost(format!("kitt work was killed by signal {}", status.signal().unwrap_or(0))),
    }
}

impl UnitExecutor for Processes {
    fn submit(&mut self, unit: &str) -> Result<(), ExecError> {
        let child = self.spawn(unit)?;
        // Placed again: its earlier attempt's end is history.
        self.ended.remove(unit);
        self.cancelled.remove(unit);
        self.children.insert(unit.to_string(), child);
        Ok(())
    }

    /// Every child is spawned before any is waited on; if one cannot be spawned, those spawned
    /// are stopped and reaped, so the gang starts whole or not at all.
    fn submit_gang(&mut self, units: &[&str]) -> Result<(), ExecError> {
        let mut started: Vec<(String, Child)> = Vec::new();
        for unit in units {
            match self.spawn(unit) {
                Ok(c) => started.push((unit.to_string(), c)),
                Err(e) => {
                    for (_, mut c) in started {
                        Self::signal(&c, libc::SIGTERM);
                        Self::signal(&c, libc::SIGTERM);
                        let _ = c.wait();
                    }
                    return Err(e);
                }
            }
        }
        self.children.extend(started);
        Ok(())
    }

    fn state(&mut self, unit: &str) -> UnitState {
        if let Some(s) = self.ended.get(unit) {
            return s.clone();
        }
        if let Some(a) = self.adopted.get(unit) {
            if pidfile::still_running(&a.owner) {
                return UnitState::Running;
            }
            let state = match self.adopted_end(unit, a) {
                UnitState::Lost(_) | UnitState::Failed(_) if self.cancelled.contains_key(unit) => UnitState::Cancelled,
                s => s,
            };
            self.adopted.remove(unit);
            self.abandoned.remove(unit);
            self.ended.insert(unit.to_string(), state.clone());
            return state;
        }
        let Some(child) = self.children.get_mut(unit) else {
            return UnitState::Failed(format!("unit {unit} was never submitted"));
        };
        let state = match child.try_wait() {
            Ok(None) => return UnitState::Running,
            Ok(Some(status)) => state_of(status, self.cancelled.contains_key(unit), self.abandoned.remove(unit)),
            Err(e) => UnitState::Failed(format!("cannot wait for kitt work: {e}")),
        };
        self.children.remove(unit);
        self.ended.insert(unit.to_string(), state.clone());
        state
    }

    fn cancel(&mut self, unit: &str) {
        if let Some(child) = self.children.get(unit) {
            *self.cancelled.entry(unit.to_string()).or_default() += 1;
            Self::signal(child, libc::SIGTERM);
        } else if let Some(a) = self.adopted.get(unit) {
            *self.cancelled.entry(unit.to_string()).or_default() += 1;
            Self::signal_adopted(&a.owner, libc::SIGTERM, false);
        }
    }

    fn abandon(&mut self, unit: &str, kill: bool) {
        let signal = if kill { libc::SIGKILL } else { libc::SIGTERM };
        if let Some(child) = self.children.get(unit) {
            self.abandoned.insert(unit.to_string());
            Self::signal_group(child, signal);
        } else if let Some(a) = self.adopted.get(unit) {
            self.abandoned.insert(unit.to_string());
            Self::signal_adopted(&a.owner, signal, true);
        }
    }

    /// The child's identity as JSON (pid, start time, boot and machine).
    fn external_id(&self, unit: &str) -> Option<String> {
        let owner = match (self.children.get(unit), self.adopted.get(unit)) {
            (Some(child), _) => pidfile::owner_of(child.id())?,
            (None, Some(a)) => a.owner.clone(),
            _ => return None,
        };
        serde_json::to_string(&owner).ok()
    }

    /// An id that does not parse, or names a process of another machine, is adopted as ended: its
    /// shard tells how.
    fn adopt(&mut self, unit: &str, attempt: u32, external_id: &str) {
        let owner = serde_json::from_str::<Owner>(external_id).unwrap_or_else(|_| Owner {
            machine: String::new(),
            pid: 0,
            boot_id: String::new(),
            pid_ns: String::new(),
            start_time: 0,
        });
        self.ended.remove(unit);
        self.cancelled.remove(unit);
        self.adopted.insert(unit.to_string(), Adopted { attempt, owner });
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        // Adopted units are stopped like own children (their driver is this one now).
        for (_, a) in self.adopted.drain() {
            Self::signal_adopted(&a.owner, libc::SIGTERM, false);
            Self::signal_adopted(&a.owner, libc::SIGTERM, false);
            Self::signal_adopted(&a.owner, libc::SIGCONT, false);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while pidfile::still_running(&a.owner) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        // SIGKILL would leave each child's engine running; two SIGTERMs make it stop it now.
        for (_, mut child) in self.children.drain() {
            Self::signal(&child, libc::SIGTERM);
            Self::signal(&child, libc::SIGTERM);
            // A stopped child would never handle them (nor end): continue it.
            Self::signal(&child, libc::SIGCONT);
            let _ = child.wait();
        }
    }
}
