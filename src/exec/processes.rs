//! The `processes` executor: each unit is a child `kitt work --run-dir DIR --unit ID` of this
//! kitt binary.
//!
//! Children run in process groups of their own, so a Ctrl-C at the terminal reaches only the
//! driver, which then sends each child one SIGTERM (a graceful stop: the child stops its engine
//! and journals its interruption) and a second one if the driver is told to hurry. Dropping the
//! executor stops (two SIGTERMs: stop now) and reaps whatever still runs, so no path leaves a
//! child, or the engine a child started, behind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{ExecError, UnitExecutor, UnitState};

pub struct Processes {
    /// The kitt binary the children run (the run's own build: `kitt work` refuses another).
    program: PathBuf,
    run_dir: PathBuf,
    children: HashMap<String, Child>,
    ended: HashMap<String, UnitState>,
    cancelled: HashMap<String, u32>,
}

impl Processes {
    pub fn new(program: PathBuf, run_dir: PathBuf) -> Processes {
        Processes { program, run_dir, children: HashMap::new(), ended: HashMap::new(), cancelled: HashMap::new() }
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

    fn signal(child: &Child, signal: i32) {
        // The pid is our own unreaped child, so it cannot name another process.
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on a pid we own; no memory is involved.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// What `kitt work`'s exit code says (see `kitt work --help`).
fn state_of(code: Option<i32>, cancelled: bool) -> UnitState {
    match code {
        Some(0) => UnitState::Succeeded,
        Some(130) => UnitState::Cancelled,
        _ if cancelled => UnitState::Cancelled,
        Some(3) => UnitState::Failed("lost its claim to another attempt (exit 3)".into()),
        Some(c) => UnitState::Failed(format!("kitt work exited with {c}; its journal shard says why")),
        None => UnitState::Failed("kitt work was killed by a signal".into()),
    }
}

impl UnitExecutor for Processes {
    fn submit(&mut self, unit: &str) -> Result<(), ExecError> {
        let child = self.spawn(unit)?;
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
        let Some(child) = self.children.get_mut(unit) else {
            return UnitState::Failed(format!("unit {unit} was never submitted"));
        };
        let state = match child.try_wait() {
            Ok(None) => return UnitState::Running,
            Ok(Some(status)) => state_of(status.code(), self.cancelled.contains_key(unit)),
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
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        // SIGKILL would leave each child's engine running; two SIGTERMs make it stop it now.
        for (_, mut child) in self.children.drain() {
            Self::signal(&child, libc::SIGTERM);
            Self::signal(&child, libc::SIGTERM);
            let _ = child.wait();
        }
    }
}
