//! The host lease: a machine-wide lock shared by every kitt process of every user, so that no
//! run loads a model onto the machine or measures on it while another run measures.
//!
//! It must work without root having prepared anything, for every user, and from inside a
//! container that shares the host's `/tmp`: a per-user directory (`$XDG_RUNTIME_DIR`) would give
//! each user a lease of their own, `/run/kitt` needs root, and an abstract socket is private to a
//! network namespace. So the lease lives in `/tmp/kitt-host/`, a world-writable sticky directory
//! (mode 1777, like `/tmp` itself) made by whichever kitt comes first:
//!
//! - `host.lock` is `flock`ed by the holder. It is created `O_EXCL` with mode 0666 (an `fchmod`
//!   makes that umask-proof), opened read-only (`flock` needs no more), with `O_NOFOLLOW` (a
//!   symlink planted there is refused) and `O_NONBLOCK` (a FIFO cannot hang kitt); it is never
//!   written, so it is never truncated.
//! - Who holds it is written to `host.lock.holder.<pid>-<n>`, a file of the holder's own, which
//!   it also `flock`s (so a waiter names only live holders) and removes when it lets go.
//!
//! `KITT_HOST_LOCK` names another lock file (tests use their own). A kitt that finds the lease
//! taken says who holds it and waits, and can be cancelled while waiting.
//!
//! Within one kitt process the lease is shared: [`HostLease`] counts holds (an engine group's,
//! from its start to its stop, and each measuring step's) and keeps the machine-wide lock while
//! any is held, while measuring steps of the process take turns on an in-process mutex.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::scheduler::StepError;
use crate::cancel::Cancel;

/// The shared lease directory (see the module docs for why `/tmp` and not `$TMPDIR`).
pub const SHARED_DIR: &str = "/tmp/kitt-host";

/// The host lock's path: `KITT_HOST_LOCK`, else `/tmp/kitt-host/host.lock`.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KITT_HOST_LOCK") {
        return PathBuf::from(p);
    }
    Path::new(SHARED_DIR).join("host.lock")
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "the host lock {0} is a symbolic link; kitt refuses to follow it (remove it: `rm {0}`; kitt creates the real file)"
    )]
    Symlink(PathBuf),
    #[error("the host lock {0} is not a regular file; remove it and kitt creates a new one")]
    NotAFile(PathBuf),
    #[error(
        "{path} is not a shared lease directory (owner uid {uid}, mode {mode:o}): its owner or root must `chmod 1777 {path}` or remove it"
    )]
    NotShared { path: PathBuf, uid: u32, mode: u32 },
    #[error("cannot use the host lock {0}: {1}")]
    Io(PathBuf, io::Error),
}

/// Makes the lease directory: world-writable and sticky when it is the shared one.
fn prepare_dir(dir: &Path, shared: bool) -> Result<(), LeaseError> {
    let io_err = |e| LeaseError::Io(dir.to_path_buf(), e);
    if !shared {
        return std::fs::create_dir_all(dir).map_err(io_err);
    }
    if matches!(std::fs::symlink_metadata(dir), Err(e) if e.kind() == io::ErrorKind::NotFound) {
        create_shared_dir(dir).map_err(io_err)?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_err)?;
    if !meta.is_dir() {
        return Err(LeaseError::NotShared { path: dir.to_path_buf(), uid: meta.uid(), mode: meta.mode() & 0o7777 });
    }
    const SHARED: u32 = 0o1777;
    if meta.mode() & SHARED == SHARED {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if meta.uid() == unsafe { libc::geteuid() } {
        // We made it (and the umask took bits away), or made it before: share it.
        return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(SHARED)).map_err(io_err);
    }
    Err(LeaseError::NotShared { path: dir.to_path_buf(), uid: meta.uid(), mode: meta.mode() & 0o7777 })
}

/// Creates the shared directory so that no one ever sees it half made: under a private name, made
/// world-writable and sticky, then renamed into place without replacing one that another kitt put
/// there first (two kitts starting at once would otherwise see the other's directory before its
/// `chmod`, with the creator's umask, and refuse it).
fn create_shared_dir(dir: &Path) -> io::Result<()> {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let tmp = dir.with_file_name(format!(".{name}.{}.{nanos}", std::process::id()));
    std::fs::create_dir(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))
        .and_then(|()| rename_noreplace(&tmp, dir));
    match placed {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_dir(&tmp);
            // Another kitt placed it first: use theirs.
            if dir.is_dir() { Ok(()) } else { Err(e) }
        }
    }
}

/// `rename`, failing when `to` exists (even as an empty directory, which a plain rename replaces).
#[cfg(target_os = "linux")]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths, relative to the working directory.
    let r =
        unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Elsewhere, a directory made with `mkdir` and shared with `chmod` (a race there is reported as
/// a directory that is not shared, and resolves on the next try).
#[cfg(not(target_os = "linux"))]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    if to.exists() {
        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
    }
    std::fs::rename(from, to)
}

/// Opens (creating when absent) a file without following a symlink, never truncating it.
fn open_lock_file(path: &Path) -> Result<File, LeaseError> {
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let classify = |e: io::Error| match e.raw_os_error() {
        Some(libc::ELOOP) => LeaseError::Symlink(path.to_path_buf()),
        _ => LeaseError::Io(path.to_path_buf(), e),
    };
    loop {
        match OpenOptions::new().read(true).custom_flags(flags).open(path) {
            Ok(file) => {
                let meta = file.metadata().map_err(classify)?;
                if !meta.is_file() {
                    return Err(LeaseError::NotAFile(path.to_path_buf()));
                }
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(classify(e)),
        }
        // Absent: create it exclusively (O_EXCL never follows a symlink either).
        match OpenOptions::new().read(true).write(true).create_new(true).mode(0o666).custom_flags(flags).open(path) {
            Ok(file) => {
                // The umask may have taken bits away; every user must be able to open it.
                file.set_permissions(std::fs::Permissions::from_mode(0o666)).map_err(classify)?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue, // another kitt was first
            Err(e) => return Err(classify(e)),
        }
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: whether it was taken.
fn try_flock(file: &File, path: &Path) -> Result<bool, LeaseError> {
    let Err(e) = super::runlock::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) else {
        return Ok(true);
    };
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(LeaseError::Io(path.to_path_buf(), e)) }
}

fn holder_prefix(path: &Path) -> String {
    format!("{}.holder.", path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default())
}

/// What the live holders of the lock at `path` wrote about themselves.
pub fn holders(path: &Path) -> Vec<String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let prefix = holder_prefix(path);
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let p = entry.path();
        let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        let Ok(mut file) = OpenOptions::new().read(true).custom_flags(flags).open(&p) else { continue };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        let free = super::runlock::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB).is_ok();
        if free {
            // Left by a kitt that died: its owner (or root) can remove it; others leave it.
            let _ = std::fs::remove_file(&p);
            continue;
        }
        let mut text = String::new();
        let _ = io::Read::read_to_string(&mut file, &mut text);
        out.push(text.trim().to_string());
    }
    out.sort();
    out
}

/// A held host lock; released when dropped.
pub struct HostLock {
    _lock: File,
    holder_file: Option<(PathBuf, File)>,
}

impl HostLock {
    /// Takes the lock at `path` if it is free, recording `holder` beside it.
    pub fn try_acquire(path: &Path, holder: &str) -> Result<Option<HostLock>, LeaseError> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        prepare_dir(dir, dir == Path::new(SHARED_DIR))?;
        let lock = open_lock_file(path)?;
        if !try_flock(&lock, path)? {
            return Ok(None);
        }
        Ok(Some(HostLock { _lock: lock, holder_file: write_holder(path, holder) }))
    }

    /// Waits for the host lock, naming its holders once, until acquired or cancelled.
    pub async fn acquire(path: &Path, holder: &str, cancel: &Cancel) -> Result<HostLock, StepError> {
        let mut announced = false;
        loop {
            match Self::try_acquire(path, holder) {
                Ok(Some(lock)) => return Ok(lock),
                Ok(None) if !announced => {
                    let who = holders(path);
                    let who = if who.is_empty() { "another kitt".to_string() } else { who.join("; ") };
                    tracing::warn!("waiting for the host lock {} held by {who}", path.display());
                    announced = true;
                }
                Ok(None) => {}
                Err(e) => return Err(StepError::new(e.to_string())),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = cancel.cancelled() => return Err(StepError::cancelled()),
            }
        }
    }
}

/// Writes the holder's description to a file of its own next to the lock (best effort: the
/// lease holds without it, a waiter then names "another kitt").
fn write_holder(path: &Path, holder: &str) -> Option<(PathBuf, File)> {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = path.with_file_name(format!("{}{}-{n}", holder_prefix(path), std::process::id()));
    let _ = std::fs::remove_file(&p); // a stale one of a dead kitt with our pid
    let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o644).custom_flags(flags).open(&p).ok()?;
    let _ = super::runlock::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB);
    let _ = file.write_all(holder.as_bytes());
    Some((p, file))
}

impl Drop for HostLock {
    fn drop(&mut self) {
        if let Some((p, _)) = &self.holder_file {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The host lease of one kitt process, shared by its steps (see the module docs).
pub struct HostLease {
    path: PathBuf,
    holder: String,
    held: Mutex<(usize, Option<HostLock>)>,
    measuring: Arc<tokio::sync::Mutex<()>>,
}

/// One hold on the process's lease; the machine-wide lock goes when the last hold does.
pub struct LeaseHold {
    lease: Arc<HostLease>,
}

/// What a measuring step holds: the lease, and its turn among this process's measuring steps.
pub struct MeasuringHold {
    _turn: tokio::sync::OwnedMutexGuard<()>,
    _hold: LeaseHold,
}

impl HostLease {
    pub fn new(path: PathBuf, holder: String) -> Arc<HostLease> {
        Arc::new(HostLease { path, holder, held: Mutex::new((0, None)), measuring: Arc::default() })
    }

    /// A hold on the machine-wide lock, waiting (cancellably) while another process has it.
    pub async fn hold(self: &Arc<Self>, cancel: &Cancel) -> Result<LeaseHold, StepError> {
        let mut announced = false;
        loop {
            {
                let mut held = self.held.lock().map_err(|_| StepError::new("host lease state poisoned"))?;
                if held.0 > 0 {
                    held.0 += 1;
                    return Ok(LeaseHold { lease: self.clone() });
                }
                match HostLock::try_acquire(&self.path, &self.holder) {
                    Ok(Some(lock)) => {
                        *held = (1, Some(lock));
                        return Ok(LeaseHold { lease: self.clone() });
                    }
                    Ok(None) => {}
                    Err(e) => return Err(StepError::new(e.to_string())),
                }
            }
            if !announced {
                let who = holders(&self.path);
                let who = if who.is_empty() { "another kitt".to_string() } else { who.join("; ") };
                tracing::warn!("waiting for the host lock {} held by {who}", self.path.display());
                announced = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = cancel.cancelled() => return Err(StepError::cancelled()),
            }
        }
    }

    /// A measuring step's hold: the lease, then its turn among this process's measuring steps.
    pub async fn measure(self: &Arc<Self>, cancel: &Cancel) -> Result<MeasuringHold, StepError> {
        let hold = self.hold(cancel).await?;
        let turn = tokio::select! {
            t = self.measuring.clone().lock_owned() => t,
            _ = cancel.cancelled() => return Err(StepError::cancelled()),
        };
        Ok(MeasuringHold { _turn: turn, _hold: hold })
    }
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        if let Ok(mut held) = self.lease.held.lock() {
            held.0 = held.0.saturating_sub(1);
            if held.0 == 0 {
                held.1 = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_lock_file_is_shared_and_never_written() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("host.lock");
        let held = HostLock::try_acquire(&p, "pid 1 (run a)").unwrap().expect("free");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o666);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0, "the holder is written elsewhere");
        assert!(HostLock::try_acquire(&p, "pid 2").unwrap().is_none());
        assert_eq!(holders(&p), vec!["pid 1 (run a)".to_string()]);
        drop(held);
        assert!(holders(&p).is_empty());
        assert!(HostLock::try_acquire(&p, "pid 2").unwrap().is_some());
    }

    #[test]
    fn a_symlink_at_the_lock_path_is_refused_and_its_target_untouched() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        let p = d.path().join("host.lock");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = HostLock::try_acquire(&p, "me").err().expect("refused");
        assert!(matches!(e, LeaseError::Symlink(_)), "{e}");
        assert!(e.to_string().contains("symbolic link") && e.to_string().contains("rm "), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        // A dangling symlink is not followed to create its target either.
        let gone = d.path().join("created-through-link");
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(&gone, &p).unwrap();
        assert!(matches!(HostLock::try_acquire(&p, "me"), Err(LeaseError::Symlink(_))));
        assert!(!gone.exists());
    }

    #[tokio::test]
    async fn holds_of_one_process_share_the_lock_until_the_last_goes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("host.lock");
        let lease = HostLease::new(p.clone(), "me".into());
        let cancel = Cancel::default();
        let group = lease.hold(&cancel).await.unwrap();
        let step = lease.measure(&cancel).await.unwrap();
        assert!(HostLock::try_acquire(&p, "other").unwrap().is_none());
        drop(step);
        assert!(HostLock::try_acquire(&p, "other").unwrap().is_none(), "the group still holds it");
        drop(group);
        assert!(HostLock::try_acquire(&p, "other").unwrap().is_some());
    }
}
