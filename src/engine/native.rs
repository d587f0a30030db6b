//! Engines as host processes (native mode), and kitt's own simulator run the same way.
//!
//! An engine process is spawned from argv (never a shell) in its own process group, with its
//! output in a log file of the step directory. Every ending path stops it: `stop` sends SIGTERM
//! to the group and SIGKILL after a grace period; dropping an `EngineProcess` that was not
//! stopped kills the group at once; and `PR_SET_PDEATHSIG` kills it if kitt itself is killed
//! (SIGKILL cannot be caught). The parent-death signal fires when the *thread* that forked the
//! child exits, so every spawn happens on one dedicated thread that lives as long as kitt.
//! `PR_SET_PDEATHSIG` and the /proc reads (who holds a port, whose descendant a process is) are
//! Linux's: elsewhere they fall back to none, and the pid file and `kitt gc` do the cleaning up.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("cannot start `{program}`: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("an engine command needs at least a program")]
    EmptyCommand,
    #[error("cannot open the engine log {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
}

/// A running engine process and its process group.
pub struct EngineProcess {
    child: Child,
    pid: u32,
    log: PathBuf,
    stopped: bool,
}

type SpawnReply = tokio::sync::oneshot::Sender<io::Result<Child>>;

/// The thread that forks every engine process (see the module docs for why it must live on).
fn spawner() -> &'static mpsc::Sender<(Command, tokio::runtime::Handle, SpawnReply)> {
    static SPAWNER: OnceLock<mpsc::Sender<(Command, tokio::runtime::Handle, SpawnReply)>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, tokio::runtime::Handle, SpawnReply)>();
        let spawn_thread = std::thread::Builder::new().name("kitt-spawner".into()).spawn(move || {
            for (mut cmd, handle, reply) in rx {
                let _guard = handle.enter();
                let _ = reply.send(cmd.spawn());
            }
        });
        if let Err(e) = spawn_thread {
            tracing::error!("cannot start the spawner thread: {e}");
        }
        tx
    })
}

impl EngineProcess {
    /// Starts `argv` in `cwd` with `env` added, writing its stdout and stderr to `log`.
    pub async fn spawn(
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
        log: &Path,
    ) -> Result<EngineProcess, NativeError> {
        let (program, args) = argv.split_first().ok_or(NativeError::EmptyCommand)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| NativeError::Log { path: log.to_path_buf(), source })?;
        let err_file = file.try_clone().map_err(|source| NativeError::Log { path: log.to_path_buf(), source })?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err_file))
            .process_group(0)
            .kill_on_drop(false);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                // Linux only: elsewhere an engine outlives a kill -9 of kitt, and the pid file
                // and `kitt gc` stop it (its process group goes down with it all the same).
                #[cfg(target_os = "linux")]
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // kitt may have died between fork and prctl: then nobody would kill us.
                if libc::getppid() != parent {
                    return Err(io::Error::other("parent exited before the engine started"));
                }
                Ok(())
            });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawn_error = |e: io::Error| NativeError::Spawn { program: program.clone(), source: e };
        spawner()
            .send((cmd, tokio::runtime::Handle::current(), tx))
            .map_err(|_| spawn_error(io::Error::other("the spawner thread is gone")))?;
        let child =
            rx.await.map_err(|_| spawn_error(io::Error::other("the spawner thread is gone")))?.map_err(spawn_error)?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(pid, program = %program, "engine process started");
        Ok(EngineProcess { child, pid, log: log.to_path_buf(), stopped: false })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `n` lines of the engine's log.
    pub fn last_log_lines(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn signal_group(&self, signal: libc::c_int) {
        if self.pid > 0 {
            // SAFETY: kill(2) with a negative pid signals the process group we created.
            unsafe {
                libc::kill(-(self.pid as libc::pid_t), signal);
            }
        }
    }

    /// SIGTERM to the group, then SIGKILL after `grace` (at once when `urgent`).
    pub async fn stop(mut self, grace: Duration, urgent: bool) -> Option<ExitStatus> {
        self.stopped = true;
        if let Some(status) = self.exited() {
            self.signal_group(libc::SIGKILL);
            return Some(status);
        }
        if !urgent {
            self.signal_group(libc::SIGTERM);
            if let Ok(Ok(status)) = tokio::time::timeout(grace, self.child.wait()).await {
                self.signal_group(libc::SIGKILL);
                return Some(status);
            }
        }
        self.signal_group(libc::SIGKILL);
        tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.ok().and_then(Result::ok)
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        if !self.stopped {
            tracing::warn!(pid = self.pid, "engine process dropped without a stop; killing its group");
            self.signal_group(libc::SIGKILL);
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the engine binds it next).
pub fn free_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawns_logs_and_stops_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("engine.log");
        let argv: Vec<String> = ["sh", "-c", "echo started; sleep 30 & wait"].iter().map(|s| s.to_string()).collect();
        let mut p = EngineProcess::spawn(&argv, &[], dir.path(), &log).await.unwrap();
        let pid = p.pid();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(p.exited().is_none());
        assert!(p.last_log_lines(5).contains("started"));
        let status = p.stop(Duration::from_secs(2), false).await;
        assert!(status.is_some());
        // The whole group is gone, the background `sleep` included (its reaping by init may
        // take a moment, during which a zombie still counts as a member).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let alive = || unsafe { libc::kill(-(pid as libc::pid_t), 0) } == 0;
        while alive() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(), "process group {pid} still has members");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let argv = vec!["/nonexistent/engine".to_string()];
        let e = EngineProcess::spawn(&argv, &[], dir.path(), &dir.path().join("l")).await.err().unwrap();
        assert!(e.to_string().contains("cannot start `/nonexistent/engine`"), "{e}");
    }
}

/// Whether the server listening on `port` is the engine process `root` or one it started (in its
/// process group, or below it): `Err` names the holder otherwise. When nothing can be seen
/// listening (the tables are unreadable), there is nothing to hold against the engine.
pub fn owns_port(root: u32, port: u16) -> Result<(), String> {
    match listener_pids(port) {
        None => Ok(()),
        Some(pids) if pids.iter().any(|p| descends_from(*p, root)) => Ok(()),
        // Our own engine is always visible to us: an invisible holder is someone else's.
        Some(_) => Err(port_holder(port).unwrap_or_else(|| "another process".to_string())),
    }
}

/// `/proc/PID/stat` fields after the command: (ppid, process group).
#[cfg(target_os = "linux")]
fn parent_and_group(pid: u32) -> Option<(u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat[stat.rfind(')')? + 2..].split_whitespace().skip(1);
    Some((rest.next()?.parse().ok()?, rest.next()?.parse().ok()?))
}

/// Without /proc the parent and group are unknown: only `root` itself is recognised.
#[cfg(not(target_os = "linux"))]
fn parent_and_group(_pid: u32) -> Option<(u32, u32)> {
    None
}

/// Whether `pid` is `root`, in `root`'s process group, or a descendant of `root`.
fn descends_from(pid: u32, root: u32) -> bool {
    let mut current = pid;
    // A chain of parents ends at pid 1 (or 0); the bound only guards against a torn /proc read.
    for _ in 0..4096 {
        if current == root {
            return true;
        }
        let Some((parent, group)) = parent_and_group(current) else { return false };
        if group == root {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        current = parent;
    }
    false
}

/// Who listens on TCP `port` of this machine: "pid N (command)", when it can be found.
pub fn port_holder(port: u16) -> Option<String> {
    match listener_pids(port)? {
        pids if pids.is_empty() => Some("a process this user cannot see".to_string()),
        pids => {
            let pid = pids[0];
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ").trim().to_string();
            Some(format!("pid {pid} ({cmd})"))
        }
    }
}

/// Without /proc (`/proc/net/tcp`) the listeners are unknown: as if nothing listened, so the
/// bind itself is what finds a taken port.
#[cfg(not(target_os = "linux"))]
pub fn listener_pids(_port: u16) -> Option<Vec<u32>> {
    None
}

/// The processes listening on TCP `port` in this network namespace: `None` when nothing
/// listens, an empty list when something listens that this user cannot see.
#[cfg(target_os = "linux")]
pub fn listener_pids(port: u16) -> Option<Vec<u32>> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; field 9 is the inode.
            let listening = f.get(3) == Some(&"0A");
            let local_port = f.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
            if listening && local_port == Some(port) {
                inodes.extend(f.get(9).map(|i| format!("socket:[{i}]")));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let mut pids = Vec::new();
    for proc_dir in std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()) {
        let Ok(pid) = proc_dir.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(proc_dir.path().join("fd")) else { continue };
        for fd in fds.filter_map(|e| e.ok()) {
            let target = std::fs::read_link(fd.path()).map(|t| t.to_string_lossy().to_string()).unwrap_or_default();
            if inodes.contains(&target) {
                pids.push(pid);
                break;
            }
        }
    }
    Some(pids)
}

#[cfg(all(test, target_os = "linux"))]
mod port_tests {
    #[test]
    fn finds_who_listens() {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let who = super::port_holder(port).unwrap();
        assert!(who.contains(&format!("pid {}", std::process::id())), "{who}");
        drop(l);
        assert!(super::port_holder(port).is_none());
    }

    #[test]
    fn a_port_is_owned_by_the_engine_tree_only() {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let me = std::process::id();
        assert!(super::owns_port(me, port).is_ok(), "the listener itself");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let e = super::owns_port(child.id(), port).unwrap_err();
        assert!(e.contains(&format!("pid {me}")), "a parent is not the engine's: {e}");
        let _ = child.kill();
        let _ = child.wait();
    }
}
