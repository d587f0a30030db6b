//! Pid files of native engines, and the sweep that stops what a killed kitt left behind.
//!
//! A native engine normally dies with kitt (parent-death signal), but the signal reaches only the
//! process kitt spawned: the workers an engine forks (vLLM's, a wrapper script's children) live
//! on. Each engine gets `pids/<group key>.json` in its run directory right after it is spawned
//! (not once healthy: an engine may load for minutes) with its pid and what identifies that
//! process beyond the pid: the boot id, the pid namespace and the process start time. The sweep
//! (at every `kitt apply` and in `kitt gc`) stops the recorded process group when the run's kitt
//! is gone and the group still has members that are the engine or started after it — even when
//! the engine itself has died, as a pid is not reused while it names a live process group. So a
//! reused pid is never signalled and a live run is never touched.
//!
//! Owners also name their machine ([`machine_id`]): a record written on another machine (a runs
//! directory on a shared file system, a container label on a shared Docker daemon) is never judged
//! by this machine's boot id, pids or namespaces, which mean nothing there.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::runlock::{self, RunLock};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    /// The machine the process runs on ([`machine_id`]); empty in records older than the field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub machine: String,
    pub pid: u32,
    pub boot_id: String,
    pub pid_ns: String,
    /// Start time of the process, in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start_time: u64,
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_string()
}

pub fn pid_ns() -> String {
    std::fs::read_link("/proc/self/ns/pid").map(|p| p.to_string_lossy().to_string()).unwrap_or_default()
}

/// This machine's identity in owner records, decided once per process:
///
/// 1. `KITT_MACHINE_ID`, when set: for tests, which play several machines on one host;
/// 2. else a random id kept in kitt's state directory (`$XDG_STATE_HOME/kitt/machine-id.<host
///    name>`, else `~/.local/state/kitt/machine-id.<host name>`), created on first use. Not
///    `/etc/machine-id`: images built by copying a root file system (`docker import`, golden VM
///    images) share one, so it does not tell machines apart. The host name is in the file name
///    because a home directory is often shared by every node of a cluster;
/// 3. else (no writable state directory) `boot:<boot id>`, unique to this boot of this kernel.
pub fn machine_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        if let Some(id) = std::env::var("KITT_MACHINE_ID").ok().filter(|v| !v.trim().is_empty()) {
            return id.trim().to_string();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        state_dir().and_then(|d| persisted_machine_id(&d, &host)).unwrap_or_else(|| format!("boot:{}", boot_id()))
    })
    .clone()
}

/// `$XDG_STATE_HOME/kitt` (an absolute one; the XDG spec ignores a relative one), else
/// `~/.local/state/kitt`.
pub(crate) fn state_dir() -> Option<PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base =
        env("XDG_STATE_HOME").filter(|p| p.is_absolute()).or_else(|| env("HOME").map(|h| h.join(".local/state")))?;
    Some(base.join("kitt"))
}

fn valid_machine_id(text: &str) -> Option<String> {
    let id = text.trim();
    (id.len() >= 16 && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .then(|| id.to_string())
}

/// The id in `dir/machine-id.<host>`, created at random when there is none. Two kitts starting at once
/// on a fresh machine agree: each links its own candidate into place, and the loser reads the
/// winner's.
fn persisted_machine_id(dir: &Path, host: &str) -> Option<String> {
    let host: String =
        host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')).collect();
    let path = dir.join(if host.is_empty() { "machine-id".to_string() } else { format!("machine-id.{host}") });
    if let Some(id) = std::fs::read_to_string(&path).ok().and_then(|t| valid_machine_id(&t)) {
        return Some(id);
    }
    std::fs::create_dir_all(dir).ok()?;
    // A fresh version-4 UUID from the kernel on every read.
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").ok()?;
    let id = valid_machine_id(&uuid.trim().replace('-', ""))?;
    static CANDIDATES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CANDIDATES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let candidate = dir.join(format!(".machine-id.{}.{n}", std::process::id()));
    std::fs::write(&candidate, format!("{id}\n")).ok()?;
    let chosen = if std::fs::hard_link(&candidate, &path).is_ok() {
        Some(id)
    } else if let Some(theirs) = std::fs::read_to_string(&path).ok().and_then(|t| valid_machine_id(&t)) {
        Some(theirs)
    } else {
        // A damaged file: replace it.
        std::fs::rename(&candidate, &path).ok().map(|_| id)
    };
    let _ = std::fs::remove_file(&candidate);
    chosen
}

/// The start time of `pid`, if it is alive.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // A zombie has exited already; it only waits to be reaped.
    if rest.starts_with('Z') {
        return None;
    }
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The identity of a live process of this machine and namespace.
pub fn owner_of(pid: u32) -> Option<Owner> {
    Some(Owner { machine: machine_id(), pid, boot_id: boot_id(), pid_ns: pid_ns(), start_time: start_time(pid)? })
}

fn path(run_dir: &Path, key: &str) -> PathBuf {
    run_dir.join("pids").join(format!("{key}.json"))
}

/// A pid file: the engine process and the kitt that started it (a `kitt work` of a unit, or the
/// run's driver), so a sweep leaves a live unit's engine alone even when no driver holds the run.
#[derive(Serialize, Deserialize)]
struct EngineRecord {
    #[serde(flatten)]
    engine: Owner,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_by: Option<Owner>,
}

/// Records a started engine process (of no kitt in particular: only the run lock spares it).
pub fn write(run_dir: &Path, key: &str, pid: u32) {
    write_started_by(run_dir, key, pid, None);
}

/// Records an engine process that `starter` (this kitt, as a rule) started and owns: a sweep
/// spares it while `starter` lives, as it does every engine of a run whose lock is held.
pub fn write_started_by(run_dir: &Path, key: &str, pid: u32, starter: Option<Owner>) {
    let Some(engine) = owner_of(pid) else { return };
    let p = path(run_dir, key);
    let record = EngineRecord { engine, started_by: starter };
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    if let Err(e) = super::dir::write_atomic(&p, &bytes) {
        tracing::warn!("cannot write the pid file {}: {e}", p.display());
    }
}

/// Forgets a stopped engine process.
pub fn remove(run_dir: &Path, key: &str) {
    let _ = std::fs::remove_file(path(run_dir, key));
}

/// Whether `owner` was recorded on another machine (and so cannot be judged here). A record older
/// than the machine field is this machine's only when it names this very boot.
pub fn foreign(owner: &Owner) -> bool {
    if owner.machine.is_empty() { owner.boot_id != boot_id() } else { owner.machine != machine_id() }
}

/// Whether `owner` is still the very process that was recorded (false for another machine's).
pub fn still_running(owner: &Owner) -> bool {
    !foreign(owner)
        && owner.boot_id == boot_id()
        && owner.pid_ns == pid_ns()
        && start_time(owner.pid) == Some(owner.start_time)
}

/// Live processes of the recorded engine's process group (the engine itself, or what it started
/// and left in its group), if the record is of this boot and pid namespace.
pub fn group_members(owner: &Owner) -> Vec<u32> {
    if owner.boot_id != boot_id() || owner.pid_ns != pid_ns() {
        return Vec::new();
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut members = Vec::new();
    for entry in procs.filter_map(|e| e.ok()) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // state is field 0 here, pgrp field 2, starttime field 19; a zombie is already dead.
        let group = fields.get(2).and_then(|g| g.parse::<u32>().ok());
        let started = fields.get(19).and_then(|t| t.parse::<u64>().ok());
        if fields.first() != Some(&"Z") && group == Some(owner.pid) && started.is_some_and(|t| t >= owner.start_time) {
            members.push(pid);
        }
    }
    members
}

fn signal_group(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a process group we verified is the engine we started.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

/// An engine process the sweep stopped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stopped {
    pub pid: u32,
    pub run: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "engine process {} left by run {}", self.pid, self.run)
    }
}

/// Stops every recorded engine whose run's kitt is gone (of run `only` alone, when given);
/// returns what it stopped. Records of another machine are left as they are.
pub fn sweep(runs_root: &Path, only: Option<&str>) -> Vec<Stopped> {
    let mut stopped = Vec::new();
    let Ok(runs) = std::fs::read_dir(runs_root) else { return stopped };
    for run in runs.filter_map(|e| e.ok()).map(|e| e.path()) {
        let run_id = run.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        if only.is_some_and(|o| o != run_id) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(run.join("pids")) else { continue };
        if RunLock::is_held(&runlock::lock_path(&run)) {
            continue; // its kitt is alive and owns these processes
        }
        for file in files.filter_map(|e| e.ok()).map(|e| e.path()) {
            let record: Option<EngineRecord> = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok());
            if record.as_ref().is_some_and(|r| foreign(&r.engine)) {
                continue; // another machine's process: its own kitt judges it
            }
            if record.as_ref().and_then(|r| r.started_by.as_ref()).is_some_and(still_running) {
                continue; // the unit's `kitt work` that started it is alive and owns it
            }
            let owner = record.map(|r| r.engine);
            if let Some(owner) = owner.filter(|o| !group_members(o).is_empty()) {
                signal_group(owner.pid, libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(5);
                while !group_members(&owner).is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if !group_members(&owner).is_empty() {
                    signal_group(owner.pid, libc::SIGKILL);
                }
                stopped.push(Stopped { pid: owner.pid, run: run_id.clone() });
            }
            let _ = std::fs::remove_file(&file);
        }
    }
    stopped
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt as _;

    use super::*;

    #[test]
    fn start_time_survives_odd_command_names() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert!(owner_of(me).is_some_and(|o| still_running(&o)));
        let mut other = owner_of(me).unwrap();
        other.start_time += 1;
        assert!(!still_running(&other), "a different start time is a different process");
    }

    #[test]
    fn the_sweep_stops_an_orphan_and_spares_a_live_run() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("r1");
        std::fs::create_dir_all(&run).unwrap();
        // An orphan: a process group of our own making, recorded, with no kitt holding the run.
        let mut child = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        write(&run, "k", child.id());
        assert!(sweep(root.path(), Some("another-run")).is_empty(), "--run scopes the sweep");
        let stopped = sweep(root.path(), Some("r1"));
        assert_eq!(stopped, [Stopped { pid: child.id(), run: "r1".into() }]);
        assert!(child.wait().is_ok());
        assert!(!path(&run, "k").exists());
        // A live run's processes are not touched.
        let mut child = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        write(&run, "k", child.id());
        let _lock = RunLock::acquire(&runlock::lock_path(&run)).unwrap();
        assert!(sweep(root.path(), None).is_empty());
        assert!(child.try_wait().unwrap().is_none());
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn the_sweep_spares_an_engine_whose_starter_lives_and_stops_it_once_the_starter_is_gone() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("r1");
        std::fs::create_dir_all(&run).unwrap();
        let mut engine = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        // A `kitt work` of a unit: alive, holding no run lock.
        let mut starter = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        write_started_by(&run, "k", engine.id(), owner_of(starter.id()));
        assert!(sweep(root.path(), None).is_empty(), "a live starter's engine is spared");
        assert!(engine.try_wait().unwrap().is_none());
        let _ = starter.kill();
        let _ = starter.wait();
        assert_eq!(sweep(root.path(), None), [Stopped { pid: engine.id(), run: "r1".into() }]);
        assert!(engine.wait().is_ok());
    }

    #[test]
    fn another_machines_record_is_neither_signalled_nor_forgotten() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("r1");
        let mut child = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        // The same pid, boot and namespace, as another machine on a shared runs directory would
        // record them by chance: only the machine tells them apart.
        let owner = Owner { machine: "another-machine-0123456789".into(), ..owner_of(child.id()).unwrap() };
        assert!(foreign(&owner) && !still_running(&owner));
        super::super::dir::write_atomic(&path(&run, "k"), &serde_json::to_vec(&owner).unwrap()).unwrap();
        assert!(sweep(root.path(), None).is_empty());
        assert!(child.try_wait().unwrap().is_none(), "another machine's pid is not ours to signal");
        assert!(path(&run, "k").exists(), "its own kitt still needs the record");
        // A record older than the machine field is ours only when it names this boot.
        let legacy = Owner { machine: String::new(), ..owner_of(child.id()).unwrap() };
        assert!(!foreign(&legacy) && still_running(&legacy));
        assert!(foreign(&Owner { boot_id: "another-boot".into(), ..legacy }));
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn the_machine_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/kitt");
        let ids: Vec<String> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..4).map(|_| s.spawn(|| persisted_machine_id(&state, "node1\n").unwrap())).collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|id| id == &ids[0]), "kitts starting at once agree: {ids:?}");
        assert_eq!(ids[0].len(), 32);
        assert_eq!(std::fs::read_to_string(state.join("machine-id.node1")).unwrap().trim(), ids[0]);
        assert_eq!(persisted_machine_id(&state, "node1").unwrap(), ids[0], "kept across processes");
        // Another node sharing this home directory is another machine.
        assert_ne!(persisted_machine_id(&state, "node2").unwrap(), ids[0]);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(persisted_machine_id(other.path(), "node1").unwrap(), ids[0], "random, not copied from /etc");
        std::fs::write(state.join("machine-id.node1"), "x\n").unwrap();
        assert!(persisted_machine_id(&state, "node1").is_some_and(|id| id.len() == 32), "a damaged file is not an id");
    }

    #[test]
    fn the_sweep_stops_what_a_dead_engine_left_in_its_group() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("r1");
        std::fs::create_dir_all(&run).unwrap();
        let marker = root.path().join("worker.pid");
        // An engine that starts a worker and dies, as a wrapper killed by the parent-death signal.
        let script = format!("sleep 30 & echo $! > {}; read _; exit 0", marker.display());
        let mut engine = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        write(&run, "k", engine.id());
        drop(engine.stdin.take()); // the engine exits now
        assert!(engine.wait().unwrap().success());
        let worker: u32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        assert!(start_time(worker).is_some(), "the worker outlived its engine");
        assert_eq!(sweep(root.path(), None).len(), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while start_time(worker).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(start_time(worker).is_none(), "the worker was stopped");
    }
}
