//! The host lease: a machine-wide lock shared by every kitt process, so that measuring steps
//! of different runs never overlap (an in-process mutex would not stop a second kitt).
//!
//! `${XDG_RUNTIME_DIR:-/tmp}/kitt/host.lock`, or `KITT_HOST_LOCK` (tests use their own). A kitt
//! that finds it taken says who holds it and waits, and can be cancelled while waiting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::dir::LockFile;
use super::scheduler::StepError;
use crate::cancel::Cancel;

/// The host lock's path.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KITT_HOST_LOCK") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("kitt").join("host.lock")
}

/// A held host lease; released when dropped.
pub struct HostLock {
    _lock: LockFile,
}

impl HostLock {
    /// Waits for the host lock, naming its holder once, until acquired or cancelled.
    pub async fn acquire(path: &Path, holder: &str, cancel: &Cancel) -> Result<HostLock, StepError> {
        let mut announced = false;
        loop {
            match LockFile::try_acquire(path) {
                Ok(Some(mut lock)) => {
                    lock.describe(holder);
                    return Ok(HostLock { _lock: lock });
                }
                Ok(None) => {
                    if !announced {
                        let who = std::fs::read_to_string(path).unwrap_or_default();
                        tracing::warn!("waiting for the host lock {} held by {}", path.display(), who.trim());
                        announced = true;
                    }
                }
                Err(e) => return Err(StepError::new(format!("host lock: {e}"))),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = cancel.cancelled() => return Err(StepError::cancelled()),
            }
        }
    }
}
