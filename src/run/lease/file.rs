//! The lease rules on disk: an attempt's [`Renewer`] bumps `attempts/<unit>/<n>.lease` in the
//! background and fences its commits; a driver's [`Watch`] judges expiry from the renewals it
//! observes and marks an expired attempt with `attempts/<unit>/<n>.expired`, after which the next
//! `kitt work` on the unit may claim it even though the expired holder's process still exists.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Clock, Epoch, LeaseConfig, expired, lapsed};

/// What a lease file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseFile {
    pub epoch: Epoch,
    pub counter: u64,
}

pub fn lease_path(attempts_dir: &Path, epoch: Epoch) -> PathBuf {
    attempts_dir.join(format!("{epoch}.lease"))
}

fn expired_path(attempts_dir: &Path, epoch: Epoch) -> PathBuf {
    attempts_dir.join(format!("{epoch}.expired"))
}

/// Whether a driver marked attempt `epoch` expired.
pub fn marked_expired(attempts_dir: &Path, epoch: Epoch) -> bool {
    expired_path(attempts_dir, epoch).exists()
}

/// Marks attempt `epoch` expired (a driver does this once its [`Watch`] says so).
pub fn mark_expired(attempts_dir: &Path, epoch: Epoch) -> std::io::Result<()> {
    crate::run::dir::write_atomic(&expired_path(attempts_dir, epoch), b"")
}

/// The highest attempt claimed under `attempts_dir`.
pub fn newest(attempts_dir: &Path) -> Option<Epoch> {
    std::fs::read_dir(attempts_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .max()
}

/// Why an attempt stopped holding its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// Its last renewal is a lease old on its own clock (it was stopped, or its writes fail).
    Lapsed,
    /// A higher attempt of the unit exists.
    Superseded(Epoch),
}

impl std::fmt::Display for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fenced::Lapsed => write!(f, "its lease lapsed (no renewal for a whole lease)"),
            Fenced::Superseded(n) => write!(f, "attempt {n} superseded it"),
        }
    }
}

struct State {
    counter: u64,
    renewed_at: Duration,
    fenced: Option<Fenced>,
}

/// An attempt's lease: renewed by a background thread until dropped.
pub struct Renewer {
    dir: PathBuf,
    epoch: Epoch,
    cfg: LeaseConfig,
    clock: Arc<dyn Clock>,
    state: Arc<Mutex<State>>,
    done: Arc<AtomicBool>,
}

impl Renewer {
    /// Writes the first lease of attempt `epoch` under `attempts_dir` and starts renewing it;
    /// `on_fenced` is called (once, from the renewing thread) when a renewal finds the attempt
    /// fenced, so that it can stop at once rather than at its next commit.
    pub fn start(
        attempts_dir: &Path,
        epoch: Epoch,
        cfg: LeaseConfig,
        clock: Arc<dyn Clock>,
        on_fenced: Box<dyn Fn(Fenced) + Send>,
    ) -> std::io::Result<Renewer> {
        let now = clock.now();
        write(attempts_dir, epoch, 0)?;
        let r = Renewer {
            dir: attempts_dir.to_path_buf(),
            epoch,
            cfg,
            clock,
            state: Arc::new(Mutex::new(State { counter: 0, renewed_at: now, fenced: None })),
            done: Arc::new(AtomicBool::new(false)),
        };
        let me = r.handle();
        std::thread::Builder::new().name(format!("lease-{epoch}")).spawn(move || {
            while !me.done.load(Ordering::SeqCst) {
                std::thread::sleep(me.cfg.renew);
                if me.done.load(Ordering::SeqCst) {
                    break;
                }
                if let Err(f) = me.renew() {
                    on_fenced(f);
                    break;
                }
            }
        })?;
        Ok(r)
    }

    fn handle(&self) -> Renewer {
        Renewer {
            dir: self.dir.clone(),
            epoch: self.epoch,
            cfg: self.cfg,
            clock: self.clock.clone(),
            state: self.state.clone(),
            done: self.done.clone(),
        }
    }

    /// One renewal: refused (and sticky) once the lease lapsed or a higher attempt exists.
    pub fn renew(&self) -> Result<(), Fenced> {
        self.check()?;
        let now = self.clock.now();
        let Ok(mut s) = self.state.lock() else { return Err(Fenced::Lapsed) };
        match write(&self.dir, self.epoch, s.counter + 1) {
            Ok(()) => {
                s.counter += 1;
                s.renewed_at = now;
            }
            Err(e) => tracing::warn!("cannot renew the lease of attempt {}: {e}", self.epoch),
        }
        Ok(())
    }

    /// The fence: whether this attempt may still commit (no higher attempt, lease not lapsed as
    /// it last renewed it). Once fenced, always fenced.
    pub fn check(&self) -> Result<(), Fenced> {
        let Ok(mut s) = self.state.lock() else { return Err(Fenced::Lapsed) };
        if let Some(f) = s.fenced {
            return Err(f);
        }
        let fenced = match newest(&self.dir) {
            Some(n) if n > self.epoch => Some(Fenced::Superseded(n)),
            _ if lapsed(self.clock.now(), s.renewed_at, self.cfg.lease) => Some(Fenced::Lapsed),
            _ => None,
        };
        s.fenced = fenced;
        fenced.map_or(Ok(()), Err)
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

fn write(dir: &Path, epoch: Epoch, counter: u64) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(&LeaseFile { epoch, counter }).map_err(std::io::Error::other)?;
    crate::run::dir::write_atomic(&lease_path(dir, epoch), &bytes)
}

/// A driver's view of one attempt's lease, judged on the driver's own clock.
pub struct Watch<C: Clock> {
    path: PathBuf,
    lease: Duration,
    clock: C,
    seen: Option<u64>,
    seen_at: Duration,
}

impl<C: Clock> Watch<C> {
    pub fn new(attempts_dir: &Path, epoch: Epoch, lease: Duration, clock: C) -> Watch<C> {
        let seen_at = clock.now();
        Watch { path: lease_path(attempts_dir, epoch), lease, clock, seen: None, seen_at }
    }

    /// Reads the lease file: whether the attempt is expired (its counter has not moved for
    /// `lease` since this watch last saw it move, or since the watch began).
    pub fn poll(&mut self) -> bool {
        let now = self.clock.now();
        let counter = std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice::<LeaseFile>(&b).ok())
            .map(|l| l.counter);
        if counter.is_some() && counter != self.seen {
            self.seen = counter;
            self.seen_at = now;
        }
        expired(now, self.seen_at, self.lease)
    }
}
