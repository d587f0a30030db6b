//! The run lock: a lease file, `run.lease`, that says which one kitt process drives a run.
//!
//! Not `flock`: a runs directory may sit on NFS, where a `flock` is not seen by other hosts, or
//! on a parallel file system that has no `flock` at all. The lease works with what every one of
//! them gives: an exclusive create (`O_CREAT | O_EXCL`), an atomic rename and reads.
//!
//! - **Taking it.** The lease is created `O_EXCL` holding the holder's identity (machine id, host
//!   name, pid, boot id, pid namespace, process start time, a random token) and a renewal counter.
//!   A background thread bumps the counter every renewal interval (written atomically).
//! - **A live holder** makes a second kitt fail at once naming it.
//! - **A dead holder of this machine** (same machine, boot and pid namespace, and its pid no longer
//!   names the process that started at the recorded time) is taken over at once.
//! - **A holder this machine cannot judge** (another machine, another pid namespace, or a lease
//!   that cannot be read) is judged by its renewals alone, on this process's own monotonic clock
//!   (clocks are never compared across hosts): the second kitt watches the counter, fails naming
//!   the holder as soon as it moves, and takes the lease over once it has not moved for a whole
//!   lease (the unit lease's length, 90 s by default: 3 renewals plus NFS's attribute-cache time).
//! - **Taking over** writes a new lease beside the old one and renames it over the old one only
//!   if the old one still holds the token that was judged, then re-reads it to confirm. The
//!   remaining race: two kitts that judged the same dead holder at the same instant can both pass
//!   the token check before either renames; the later rename wins the file, and the earlier one
//!   may already have confirmed. The loser finds the token changed at its next renewal and logs an
//!   error; the window is the few microseconds between one kitt's check and its rename.
//! - **Letting go**: on drop (every exit path that unwinds) and explicitly ([`RunLock::release`]),
//!   the file is removed if it still holds this holder's token. A kill -9 leaves it behind, for
//!   the next kitt to judge as above.
//!
//! `KITT_TEST_NO_FLOCK=1` ([`NO_FLOCK_ENV`]) makes every `flock` kitt calls fail with `ENOLCK`,
//! as on a file system without it; tests use it to prove runs need none.

use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::lease::LeaseConfig;
use super::pidfile::{self, Owner};

/// Test hook: every `flock` fails with `ENOLCK`. Never set it outside tests.
pub const NO_FLOCK_ENV: &str = "KITT_TEST_NO_FLOCK";

/// `flock(2)` on `fd`, unless [`NO_FLOCK_ENV`] says the file system has none.
pub fn flock(fd: std::os::fd::RawFd, op: libc::c_int) -> io::Result<()> {
    if std::env::var_os(NO_FLOCK_ENV).is_some_and(|v| v == "1") {
        return Err(io::Error::from_raw_os_error(libc::ENOLCK));
    }
    // SAFETY: flock on a file descriptor the caller owns.
    if unsafe { libc::flock(fd, op) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The run lock of the run directory `run`.
pub fn lock_path(run: &Path) -> PathBuf {
    run.join("run.lease")
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{0} is in use by another kitt ({1}); wait for it to finish or stop it")]
    Held(PathBuf, String),
    #[error("cannot use {0}: {1}")]
    Io(PathBuf, io::Error),
}

/// What the lease file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    #[serde(flatten)]
    pub owner: Owner,
    pub host: String,
    pub token: String,
    pub counter: u64,
    /// When the holder took the lease, for people (never compared with another clock).
    pub since: String,
}

impl Lease {
    fn describe(&self) -> String {
        format!("pid {} on {}, started {}", self.owner.pid, self.host, self.since)
    }
}

fn read(path: &Path) -> io::Result<Option<Lease>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) => Err(e),
    }
}

fn token() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|u| u.trim().replace('-', ""))
        .unwrap_or_else(|_| format!("{}-{}", std::process::id(), super::journal::unix_ns()))
}

/// Whether this machine can tell for sure that the holder is gone.
fn provably_gone(owner: &Owner) -> bool {
    !pidfile::foreign(owner)
        && (owner.boot_id != pidfile::boot_id()
            || (owner.pid_ns == pidfile::pid_ns() && !pidfile::still_running(owner)))
}

/// Whether this machine can tell for sure that the holder is alive.
fn provably_alive(owner: &Owner) -> bool {
    pidfile::still_running(owner)
}

/// A held run lock; renewed in the background, released when dropped.
pub struct RunLock {
    path: PathBuf,
    token: String,
    /// Set when let go; the renewing thread checks and renews under this lock, so that no
    /// renewal recreates the file after release removed it.
    done: Arc<Mutex<bool>>,
}

impl RunLock {
    /// Takes the lock, or fails naming the holder (after watching it for up to a lease when this
    /// machine cannot judge it).
    pub fn acquire(path: &Path) -> Result<RunLock, LockError> {
        Self::acquire_with(path, LeaseConfig::from_env())
    }

    pub fn acquire_with(path: &Path, cfg: LeaseConfig) -> Result<RunLock, LockError> {
        let io_err = |e| LockError::Io(path.to_path_buf(), e);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let me = pidfile::owner_of(std::process::id())
            .ok_or_else(|| io_err(io::Error::other("cannot read this process's start time in /proc")))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        let mine = Lease {
            owner: me,
            host,
            token: token(),
            counter: 0,
            since: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        let bytes = serde_json::to_vec(&mine).map_err(|e| io_err(io::Error::other(e)))?;
        // A few rounds: the lease may vanish or change hands between our reads.
        for _ in 0..8 {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(io_err)?;
                    return Ok(Self::start(path, mine, cfg));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(e)),
            }
            let judged = match read(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(e)),
                Ok(l) => l,
            };
            match &judged {
                Some(l) if provably_alive(&l.owner) => return Err(held(path, judged)),
                Some(l) if provably_gone(&l.owner) => {}
                _ => {
                    if !Self::renewals_stop(path, &judged, cfg) {
                        return Err(held(path, read(path).ok().flatten()));
                    }
                }
            }
            if Self::take_over(path, &judged, &bytes).map_err(io_err)? {
                tracing::info!(
                    "took over the run lock {} of {}",
                    path.display(),
                    judged.as_ref().map_or("an unreadable lease".into(), Lease::describe)
                );
                return Ok(Self::start(path, mine, cfg));
            }
        }
        Err(held(path, read(path).ok().flatten()))
    }

    /// Watches the lease on this process's clock: true once it has not changed for a whole
    /// lease, false as soon as it changes (its holder renews it, or another kitt took it).
    fn renewals_stop(path: &Path, judged: &Option<Lease>, cfg: LeaseConfig) -> bool {
        let who = judged.as_ref().map_or("an unreadable lease".into(), Lease::describe);
        tracing::warn!(
            "the run lock {} is held by {who}, which this machine cannot check; waiting up to {:?} for a renewal",
            path.display(),
            cfg.lease
        );
        let start = Instant::now();
        while start.elapsed() < cfg.lease {
            std::thread::sleep(cfg.renew.min(std::time::Duration::from_millis(200)));
            match read(path) {
                Ok(now) if &now == judged => {}
                _ => return false,
            }
        }
        true
    }

    /// Renames a new lease over the judged one if it is still the judged one; whether we won.
    fn take_over(path: &Path, judged: &Option<Lease>, bytes: &[u8]) -> io::Result<bool> {
        let tmp = path.with_file_name(format!(".run.lease.take.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        if read(path).ok().flatten() != *judged {
            let _ = std::fs::remove_file(&tmp);
            return Ok(false);
        }
        super::dir::rename_durably(&tmp, path)?;
        let now: Option<Lease> = read(path).ok().flatten();
        let ours: Option<Lease> = serde_json::from_slice(bytes).ok();
        Ok(now.is_some() && now.as_ref().map(|l| &l.token) == ours.as_ref().map(|l| &l.token))
    }

    fn start(path: &Path, mine: Lease, cfg: LeaseConfig) -> RunLock {
        let done = Arc::new(Mutex::new(false));
        let lock = RunLock { path: path.to_path_buf(), token: mine.token.clone(), done: done.clone() };
        let path = path.to_path_buf();
        let spawned = std::thread::Builder::new().name("run-lease".into()).spawn(move || {
            let mut lease = mine;
            let mut warned = false;
            loop {
                std::thread::sleep(cfg.renew);
                let Ok(released) = done.lock() else { break };
                if *released {
                    break;
                }
                match read(&path) {
                    Ok(Some(l)) if l.token == lease.token => {}
                    _ => {
                        if !warned {
                            tracing::error!(
                                "the run lock {} is no longer this kitt's: another kitt took it over",
                                path.display()
                            );
                            warned = true;
                        }
                        continue;
                    }
                }
                lease.counter += 1;
                let bytes = serde_json::to_vec(&lease).unwrap_or_default();
                if let Err(e) = super::dir::write_atomic(&path, &bytes) {
                    tracing::warn!("cannot renew the run lock {}: {e}", path.display());
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start renewing the run lock {}: {e}", lock.path.display());
        }
        lock
    }

    /// Whether a kitt holds the lock at `path` now, as far as this machine can tell: a holder of
    /// another machine counts as alive (only watching its renewals could say otherwise).
    pub fn is_held(path: &Path) -> bool {
        match read(path) {
            Err(_) => false,
            Ok(Some(l)) => !provably_gone(&l.owner),
            Ok(None) => true, // being created, or damaged: `acquire` judges it by watching
        }
    }

    /// Who holds the lock at `path`, unless this machine can tell that holder is gone.
    pub fn holder(path: &Path) -> Option<Lease> {
        read(path).ok().flatten().filter(|l| !provably_gone(&l.owner))
    }

    /// Lets go of the lock now (also done on drop).
    pub fn release(&mut self) {
        let Ok(mut released) = self.done.lock() else { return };
        if std::mem::replace(&mut *released, true) {
            return;
        }
        if read(&self.path).ok().flatten().is_some_and(|l| l.token == self.token) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        self.release();
    }
}

fn held(path: &Path, lease: Option<Lease>) -> LockError {
    let who = lease.as_ref().map_or("a holder whose lease cannot be read".into(), Lease::describe);
    LockError::Held(path.parent().unwrap_or(path).to_path_buf(), who)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn quick() -> LeaseConfig {
        LeaseConfig { renew: Duration::from_millis(20), lease: Duration::from_millis(300) }
    }

    fn planted(path: &Path, owner: Owner) -> Lease {
        let l = Lease { owner, host: "elsewhere".into(), token: "old".into(), counter: 7, since: "then".into() };
        std::fs::write(path, serde_json::to_vec(&l).unwrap()).unwrap();
        l
    }

    #[test]
    fn a_live_holder_is_refused_by_name_and_release_lets_go() {
        let d = tempfile::tempdir().unwrap();
        let p = lock_path(d.path());
        let mut held = RunLock::acquire_with(&p, quick()).unwrap();
        assert!(RunLock::is_held(&p));
        match RunLock::acquire_with(&p, quick()) {
            Err(LockError::Held(_, who)) => assert!(who.contains(&format!("pid {}", std::process::id())), "{who}"),
            other => panic!("expected Held, got {:?}", other.err()),
        }
        // The background thread renews it.
        let first = read(&p).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(120));
        let later = read(&p).unwrap().unwrap();
        assert!(later.counter > first.counter && later.token == first.token, "{first:?} {later:?}");
        held.release();
        std::thread::sleep(Duration::from_millis(60));
        assert!(!p.exists() && !RunLock::is_held(&p), "released, and no renewal recreates it");
        let again = RunLock::acquire_with(&p, quick()).unwrap();
        drop(again);
        assert!(!p.exists(), "drop lets go too");
    }

    #[test]
    fn a_dead_holder_of_this_machine_is_taken_over_at_once() {
        let d = tempfile::tempdir().unwrap();
        let p = lock_path(d.path());
        let mut gone = pidfile::owner_of(std::process::id()).unwrap();
        gone.start_time += 1; // the pid now names another process
        planted(&p, gone);
        assert!(!RunLock::is_held(&p));
        let started = Instant::now();
        let lock = RunLock::acquire_with(&p, LeaseConfig { lease: Duration::from_secs(60), ..quick() }).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "no lease wait for a provably dead holder");
        let now = read(&p).unwrap().unwrap();
        assert_eq!((now.token.as_str(), now.owner.pid), (lock.token.as_str(), std::process::id()));
    }

    #[test]
    fn another_machines_holder_is_judged_by_its_renewals_on_our_clock() {
        let d = tempfile::tempdir().unwrap();
        let p = lock_path(d.path());
        let foreign = Owner { machine: "another-machine-0123456789".into(), ..pidfile::owner_of(1).unwrap() };
        // Renewing: refused, naming it, as soon as a renewal is seen.
        let mut lease = planted(&p, foreign.clone());
        assert!(RunLock::is_held(&p), "this machine cannot say it is gone");
        let stop = Arc::new(Mutex::new(false));
        let renewer = {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                while !*stop.lock().unwrap() {
                    std::thread::sleep(Duration::from_millis(30));
                    lease.counter += 1;
                    crate::run::dir::write_atomic(&p, &serde_json::to_vec(&lease).unwrap()).unwrap();
                }
            })
        };
        match RunLock::acquire_with(&p, quick()) {
            Err(LockError::Held(_, who)) => assert!(who.contains("on elsewhere"), "{who}"),
            other => panic!("expected Held, got {:?}", other.err()),
        }
        *stop.lock().unwrap() = true;
        renewer.join().unwrap();
        // Silent for a whole lease: taken over.
        planted(&p, foreign);
        let started = Instant::now();
        let lock = RunLock::acquire_with(&p, quick()).unwrap();
        assert!(started.elapsed() >= quick().lease, "judged only after a whole lease");
        assert_eq!(read(&p).unwrap().unwrap().token, lock.token);
    }

    #[test]
    fn a_taker_that_finds_the_lease_changed_does_not_rename_over_it() {
        let d = tempfile::tempdir().unwrap();
        let p = lock_path(d.path());
        let mut gone = pidfile::owner_of(std::process::id()).unwrap();
        gone.start_time += 1;
        let judged = planted(&p, gone.clone());
        // Another kitt took it over between our judgement and our rename.
        let theirs = Lease { token: "theirs".into(), ..judged.clone() };
        std::fs::write(&p, serde_json::to_vec(&theirs).unwrap()).unwrap();
        let mine = serde_json::to_vec(&Lease { token: "mine".into(), ..judged.clone() }).unwrap();
        assert!(!RunLock::take_over(&p, &Some(judged), &mine).unwrap());
        assert_eq!(read(&p).unwrap().unwrap().token, "theirs");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temporary file left");
    }
}
