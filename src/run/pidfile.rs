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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::dir::LockFile;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Owner {
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
    Some(Owner { pid, boot_id: boot_id(), pid_ns: pid_ns(), start_time: start_time(pid)? })
}

fn path(run_dir: &Path, key: &str) -> PathBuf {
    run_dir.join("pids").join(format!("{key}.json"))
}

/// Records a started engine process.
pub fn write(run_dir: &Path, key: &str, pid: u32) {
    let Some(owner) = owner_of(pid) else { return };
    let p = path(run_dir, key);
    let bytes = serde_json::to_vec(&owner).unwrap_or_default();
    if let Err(e) = super::dir::write_atomic(&p, &bytes) {
        tracing::warn!("cannot write the pid file {}: {e}", p.display());
    }
}

/// Forgets a stopped engine process.
pub fn remove(run_dir: &Path, key: &str) {
    let _ = std::fs::remove_file(path(run_dir, key));
}

/// Whether `owner` is still the very process that was recorded.
pub fn still_running(owner: &Owner) -> bool {
    owner.boot_id == boot_id() && owner.pid_ns == pid_ns() && start_time(owner.pid) == Some(owner.start_time)
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

/// Stops every recorded engine whose run's kitt is gone; returns what it stopped.
pub fn sweep(runs_root: &Path) -> Vec<String> {
    let mut stopped = Vec::new();
    let Ok(runs) = std::fs::read_dir(runs_root) else { return stopped };
    for run in runs.filter_map(|e| e.ok()).map(|e| e.path()) {
        let Ok(files) = std::fs::read_dir(run.join("pids")) else { continue };
        if LockFile::is_held(&run.join("lock")) {
            continue; // its kitt is alive and owns these processes
        }
        for file in files.filter_map(|e| e.ok()).map(|e| e.path()) {
            let owner: Option<Owner> = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(owner) = owner.filter(|o| !group_members(o).is_empty()) {
                signal_group(owner.pid, libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(5);
                while !group_members(&owner).is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if !group_members(&owner).is_empty() {
                    signal_group(owner.pid, libc::SIGKILL);
                }
                let run_id = run.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
                stopped.push(format!("engine process {} left by run {run_id}", owner.pid));
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
        let stopped = sweep(root.path());
        assert_eq!(stopped.len(), 1, "{stopped:?}");
        assert!(child.wait().is_ok());
        assert!(!path(&run, "k").exists());
        // A live run's processes are not touched.
        let mut child = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        write(&run, "k", child.id());
        let _lock = LockFile::acquire(&run.join("lock")).unwrap();
        assert!(sweep(root.path()).is_empty());
        assert!(child.try_wait().unwrap().is_none());
        let _ = child.kill();
        let _ = child.wait();
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
        assert_eq!(sweep(root.path()).len(), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while start_time(worker).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(start_time(worker).is_none(), "the worker was stopped");
    }
}
