//! The Docker daemon's version and whether it has the NVIDIA container runtime.
//!
//! A read-only probe with a deadline, kept out of [`super::Fingerprint::detect`] because the
//! daemon can be slow or hang, and out of the hash because it describes the software beside
//! the machine. It runs the `docker` CLI directly (argv, no shell) instead of through
//! `crate::docker` because it must give up after a deadline, which the container code's calls
//! do not; one `docker info` call answers both questions.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the Docker daemon said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Docker {
    /// The daemon's version (`docker info` `.ServerVersion`); absent when it did not answer.
    pub server_version: Option<String>,
    /// The daemon lists a runtime named `nvidia` (the NVIDIA Container Toolkit).
    pub nvidia_runtime: bool,
    /// Why the version is absent: no CLI, no daemon, no permission, no answer in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

const FORMAT: &str = "{{.ServerVersion}}|{{json .Runtimes}}";

pub(crate) fn probe(timeout: Duration) -> Docker {
    match run(&["info", "--format", FORMAT], timeout) {
        Ok(out) => parse(&out),
        Err(note) => Docker { server_version: None, nvidia_runtime: false, note: Some(note) },
    }
}

/// `ServerVersion|{runtimes as JSON}`.
fn parse(out: &str) -> Docker {
    let (version, runtimes) = out.trim().split_once('|').unwrap_or((out.trim(), ""));
    let runtimes: serde_json::Map<String, serde_json::Value> = serde_json::from_str(runtimes).unwrap_or_default();
    let version = version.trim();
    Docker {
        server_version: (!version.is_empty()).then(|| version.to_string()),
        nvidia_runtime: runtimes.contains_key("nvidia"),
        note: version.is_empty().then(|| "the Docker daemon reported no version".to_string()),
    }
}

/// Runs `docker ARGS`, killing it after `timeout`; its stdout, or why there is none.
fn run(args: &[&str], timeout: Duration) -> Result<String, String> {
    let mut child = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `docker`: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`docker info` did not answer within {} ms", timeout.as_millis()));
            }
            Err(e) => return Err(format!("cannot wait for `docker`: {e}")),
        }
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    // The answer is a few hundred bytes: it fits the pipe, so the child never blocks on it.
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut stdout);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut stderr);
    }
    if status.success() {
        Ok(stdout)
    } else {
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim();
        Err(format!("`docker info` failed: {first}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_and_nvidia_runtime_from_one_line() {
        let d = parse(
            "27.3.1|{\"io.containerd.runc.v2\":{\"path\":\"runc\"},\"nvidia\":{\"path\":\"nvidia-container-runtime\"}}\n",
        );
        assert_eq!(d, Docker { server_version: Some("27.3.1".into()), nvidia_runtime: true, note: None });
        let d = parse("20.10.24+dfsg1|{\"runc\":{\"path\":\"runc\"}}");
        assert_eq!((d.server_version.as_deref(), d.nvidia_runtime), (Some("20.10.24+dfsg1"), false));
        let d = parse("|null");
        assert_eq!((d.server_version, d.nvidia_runtime), (None, false));
        assert!(d.note.is_some());
    }
}
