//! The docker CLI — the only place kitt talks to Docker. Always argv, never a shell.
//!
//! `DOCKER_HOST` and `DOCKER_CONTEXT` reach the CLI through the environment; `--docker-context`
//! (set once by the command line) adds `--context` to every call.
//!
//! Every container kitt starts carries labels saying who owns it (`kitt.owner`, see [`owner`]),
//! so that a container left behind by a killed kitt is found and removed by the next `kitt apply`
//! or `kitt gc` ([`sweep`]) while the containers of a live kitt — or of a kitt on another machine
//! sharing the daemon — are never touched. A [`Container`] exists before `docker run` returns:
//! a start that fails or is cancelled (created but not started, or the CLI's timeout) saves what
//! the container wrote and removes it; dropped without being stopped, it is removed at once;
//! `stop` saves its logs first.

pub mod owner;
pub mod run_spec;
pub mod sweep;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub use run_spec::RunSpec;
pub use sweep::{Scope, Sweep, label_path, sweep};

/// The label holding the owner of a container.
pub const OWNER_LABEL: &str = "kitt.owner";
/// The label holding the file a container's logs are saved to when it is swept.
pub const LOG_LABEL: &str = "kitt.log";
/// The label holding the run directory (absolute) a container belongs to: the sweep's scope.
pub const RUN_DIR_LABEL: &str = "kitt.run_dir";

static CONTEXT: OnceLock<String> = OnceLock::new();

/// Makes every later docker call use `--context NAME`.
pub fn set_context(name: &str) {
    let _ = CONTEXT.set(name.to_string());
}

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot run `docker`: {0}; install Docker (the `docker` CLI must be on PATH)")]
    Missing(std::io::Error),
    #[error("`docker {command}` failed: {message}{hint}")]
    Failed { command: String, message: String, hint: &'static str },
}

fn base_args() -> Vec<String> {
    CONTEXT.get().map(|c| vec!["--context".to_string(), c.clone()]).unwrap_or_default()
}

fn check(args: &[String], out: std::io::Result<Output>) -> Result<String, DockerError> {
    let out = out.map_err(DockerError::Missing)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string());
    }
    let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let hint = if message.contains("Cannot connect to the Docker daemon") || message.contains("permission denied") {
        "; is the Docker daemon running, and may this user use it (group `docker`)? DOCKER_HOST and --docker-context choose another daemon"
    } else {
        ""
    };
    let command = args.iter().take(2).cloned().collect::<Vec<_>>().join(" ");
    Err(DockerError::Failed { command, message, hint })
}

/// How long one docker call may take before kitt gives up on it (a hung daemon must not hang
/// kitt): 120 s, or `KITT_DOCKER_TIMEOUT` seconds; `pull` is not bounded, since an image may be
/// large.
pub fn call_timeout() -> Duration {
    static T: OnceLock<Duration> = OnceLock::new();
    *T.get_or_init(|| {
        let secs = std::env::var("KITT_DOCKER_TIMEOUT").ok().and_then(|v| v.parse::<f64>().ok());
        Duration::from_secs_f64(secs.filter(|s| *s > 0.0).unwrap_or(120.0))
    })
}

fn timed_out(args: &[String], limit: Duration) -> DockerError {
    DockerError::Failed {
        command: args.iter().take(2).cloned().collect::<Vec<_>>().join(" "),
        message: format!("no answer within {limit:?}"),
        hint: "; is the Docker daemon responsive (`docker info`)?",
    }
}

/// Runs `docker ARGS` (blocking), killed after [`call_timeout`] (a pull is not bounded).
pub fn docker_sync(args: &[String]) -> Result<String, DockerError> {
    let pull = args.first().is_some_and(|a| a == "pull");
    docker_within(args, if pull { Duration::from_secs(24 * 3600) } else { call_timeout() })
}

/// Runs `docker ARGS` (blocking), killed after `limit`.
pub fn docker_within(args: &[String], limit: Duration) -> Result<String, DockerError> {
    let mut child = std::process::Command::new("docker")
        .args(base_args())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(DockerError::Missing)?;
    // Read the pipes on their own threads so a chatty command cannot block on a full pipe.
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = std::io::Read::read_to_end(p, &mut buf);
        }
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = std::io::Read::read_to_end(p, &mut buf);
        }
        buf
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(timed_out(args, limit));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => break Err(e),
        }
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    check(args, status.map(|status| Output { status, stdout, stderr }))
}

/// Runs `docker ARGS` with `env` added to the CLI's environment (how secrets reach `-e NAME`
/// without ever appearing in an argv).
pub async fn docker(args: &[String], env: &[(String, String)]) -> Result<String, DockerError> {
    let out = tokio::process::Command::new("docker")
        .args(base_args())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    if args.first().is_some_and(|a| a == "pull") {
        return check(args, out.await);
    }
    match tokio::time::timeout(call_timeout(), out).await {
        Ok(out) => check(args, out),
        Err(_) => Err(timed_out(args, call_timeout())),
    }
}

pub(crate) fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// What the daemon says about an image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    pub id: String,
    /// `repo@sha256:…` digests; empty for an image built or imported locally.
    pub digests: Vec<String>,
}

fn no_such(e: &DockerError) -> bool {
    matches!(e, DockerError::Failed { message, .. } if message.contains("No such image") || message.contains("No such object") || message.contains("No such container"))
}

fn parse_image(text: &str) -> Option<ImageInfo> {
    let (id, digests) = text.split_once(' ').unwrap_or((text, "[]"));
    let digests: Vec<String> = serde_json::from_str::<Option<Vec<String>>>(digests).ok().flatten().unwrap_or_default();
    Some(ImageInfo { id: id.to_string(), digests })
}

const IMAGE_FORMAT: &str = "{{.Id}} {{json .RepoDigests}}";

/// The image when it is present locally, `None` when it is not.
pub async fn inspect_image(image: &str) -> Result<Option<ImageInfo>, DockerError> {
    match docker(&strings(&["image", "inspect", "--format", IMAGE_FORMAT, "--", image]), &[]).await {
        Ok(text) => Ok(parse_image(&text)),
        Err(e) if no_such(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The image's id when it is present locally, `None` when it is not (blocking).
pub fn image_id(image: &str) -> Result<Option<String>, DockerError> {
    match docker_sync(&strings(&["image", "inspect", "--format", "{{.Id}}", "--", image])) {
        Ok(id) => Ok(Some(id)),
        Err(e) if no_such(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `docker pull IMAGE`.
pub async fn pull(image: &str) -> Result<(), DockerError> {
    docker(&strings(&["pull", "--quiet", "--", image]), &[]).await.map(|_| ())
}

/// The server's version.
pub fn server_version() -> Result<String, DockerError> {
    docker_sync(&strings(&["version", "--format", "{{.Server.Version}}"]))
}

/// Whether the daemon has the NVIDIA container runtime (asked once per process).
pub fn nvidia_runtime() -> bool {
    static NVIDIA: OnceLock<bool> = OnceLock::new();
    *NVIDIA.get_or_init(|| {
        docker_sync(&strings(&["info", "--format", "{{json .Runtimes}}"])).is_ok_and(|r| r.contains("nvidia"))
    })
}

/// What the daemon says about a container's state.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// created | running | restarting | exited | dead | …
    pub status: String,
    pub exit_code: i64,
    pub restarts: u64,
    /// The container's first process, as the host sees it (0 when not running).
    pub pid: u32,
    pub oom_killed: bool,
}

impl State {
    /// Why the container is not serving, if it is not: exited, restarting or restarted.
    pub fn trouble(&self) -> Option<String> {
        match self.status.as_str() {
            "running" if self.restarts == 0 => None,
            "running" => Some(format!("restarted {} time(s)", self.restarts)),
            "created" => None,
            "restarting" => Some("is restarting".into()),
            s => Some(format!(
                "{s} with exit code {}{}",
                self.exit_code,
                if self.oom_killed { " (killed: out of memory)" } else { "" }
            )),
        }
    }
}

fn parse_state(text: &str) -> Option<State> {
    let f: Vec<&str> = text.split_whitespace().collect();
    Some(State {
        status: f.first()?.to_string(),
        exit_code: f.get(1)?.parse().ok()?,
        restarts: f.get(2)?.parse().ok()?,
        pid: f.get(3)?.parse().ok()?,
        oom_killed: *f.get(4)? == "true",
    })
}

/// A container kitt started. Dropping one that was not stopped removes it at once.
pub struct Container {
    pub name: String,
    /// Where `stop` saves the container's logs.
    log: PathBuf,
    removed: bool,
}

impl Container {
    /// `docker run -d` of `spec`; the container's name is `spec.name`. When the run fails —
    /// the daemon created the container but could not start it, or the CLI gave up waiting —
    /// the container's output and the error are saved to `log` and the container is removed.
    pub async fn run(spec: &RunSpec, log: &Path) -> Result<Container, DockerError> {
        // Knowing who we are may ask the daemon (sibling mode): not on the async threads.
        let _ = tokio::task::spawn_blocking(owner::current).await;
        let (args, env) = spec.argv(log);
        // The handle exists first: a start cancelled mid-way removes what the daemon made.
        let container = Container { name: spec.name.clone(), log: log.to_path_buf(), removed: false };
        match docker(&args, &env).await {
            Ok(_) => Ok(container),
            Err(e) => {
                container.discard(&e).await;
                Err(e)
            }
        }
    }

    /// Saves what a container that failed to start wrote, and why it failed, then removes it.
    async fn discard(mut self, error: &DockerError) {
        let exists =
            docker(&strings(&["container", "inspect", "--format", "{{.State.Status}}", "--", &self.name]), &[])
                .await
                .is_ok();
        if exists {
            save_logs(&self.name, &self.log).await;
        }
        let note = format!("kitt: `docker run` of {} failed: {error}\n", self.name);
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, note.as_bytes()));
        if let Err(e) = appended {
            tracing::warn!("cannot write {}: {e}", self.log.display());
        }
        let name = self.name.clone();
        match tokio::task::spawn_blocking(move || remove_sync(&name)).await {
            Ok(Ok(())) => self.removed = true,
            Ok(Err(e)) => tracing::error!("cannot remove container {} after its failed start: {e}", self.name),
            Err(e) => tracing::error!("cannot remove container {}: {e}", self.name),
        }
    }

    pub async fn state(&self) -> Result<State, DockerError> {
        let format = "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}} {{.State.Pid}} {{.State.OOMKilled}}";
        let text = docker(&strings(&["container", "inspect", "--format", format, "--", &self.name]), &[]).await?;
        parse_state(&text).ok_or_else(|| DockerError::Failed {
            command: "container inspect".into(),
            message: format!("unexpected answer `{text}`"),
            hint: "",
        })
    }

    /// The last `n` lines the container wrote (stdout and stderr).
    pub async fn last_log_lines(&self, n: usize) -> String {
        let out = tokio::process::Command::new("docker")
            .args(base_args())
            .args(["logs", "--tail", &n.to_string(), "--", &self.name])
            .stdin(Stdio::null())
            .output()
            .await;
        match out {
            Ok(o) => {
                let mut text = String::from_utf8_lossy(&o.stdout).to_string();
                text.push_str(&String::from_utf8_lossy(&o.stderr));
                text.trim_end().to_string()
            }
            Err(e) => format!("(cannot read the logs: {e})"),
        }
    }

    /// Stops the container (SIGTERM, SIGKILL after `grace`; at once when `urgent`), saves its
    /// logs and removes it. Returns the exit status.
    pub async fn stop(mut self, grace: Duration, urgent: bool) -> Result<String, DockerError> {
        if !urgent {
            let secs = grace.as_secs().max(1).to_string();
            // A container that already exited is fine; `rm -f` below handles every case.
            let _ = docker(&strings(&["stop", "--time", &secs, "--", &self.name]), &[]).await;
        }
        let state = self.state().await.ok();
        save_logs(&self.name, &self.log).await;
        let rm = docker(&strings(&["rm", "--force", "--volumes", "--", &self.name]), &[]).await;
        self.removed = rm.is_ok();
        rm?;
        Ok(state.map(|s| format!("{} (exit code {})", s.status, s.exit_code)).unwrap_or_else(|| "removed".into()))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.removed {
            let _ = remove_sync(&self.name);
        }
    }
}

/// `docker rm --force --volumes NAME` (blocking); a container that is not there counts as removed.
pub(crate) fn remove_sync(name: &str) -> Result<(), DockerError> {
    match docker_sync(&strings(&["rm", "--force", "--volumes", "--", name])) {
        Err(e) if !no_such(&e) => Err(e),
        _ => Ok(()),
    }
}

/// `docker logs NAME` appending to the file at `path` (stdout and stderr), if it can be opened.
fn logs_to(name: &str, path: &Path) -> Option<std::process::Command> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path).ok()?;
    let err = file.try_clone().ok()?;
    let mut c = std::process::Command::new("docker");
    c.args(base_args())
        .args(["logs", "--timestamps", "--", name])
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err));
    Some(c)
}

async fn save_logs(name: &str, path: &Path) {
    if let Some(c) = logs_to(name, path) {
        let _ = tokio::process::Command::from(c).status().await;
    }
}

pub(crate) fn save_logs_sync(name: &str, path: &Path) {
    if let Some(mut c) = logs_to(name, path) {
        let _ = c.status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_inspect_answers() {
        assert_eq!(
            parse_image("sha256:ab [\"r@sha256:cd\"]"),
            Some(ImageInfo { id: "sha256:ab".into(), digests: vec!["r@sha256:cd".into()] })
        );
        assert_eq!(parse_image("sha256:ab []").unwrap().digests, Vec::<String>::new());
        assert_eq!(parse_image("sha256:ab null").unwrap().digests, Vec::<String>::new());
        let s = parse_state("exited 137 0 0 true").unwrap();
        assert_eq!(s.trouble().unwrap(), "exited with exit code 137 (killed: out of memory)");
        assert_eq!(parse_state("running 0 0 4242 false").unwrap().trouble(), None);
        assert_eq!(parse_state("running 0 2 4242 false").unwrap().trouble().unwrap(), "restarted 2 time(s)");
    }
}
