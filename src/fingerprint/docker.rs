//! The Docker daemon's version and whether it has the NVIDIA container runtime.
//!
//! A read-only probe with a deadline, kept out of [`super::Fingerprint::detect`] because the
//! daemon can be slow or hang, and out of the hash because it describes the software beside
//! the machine. One `docker info` call (through `crate::docker`) answers both questions.

use std::time::Duration;

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

/// Runs `docker ARGS`, killed after `timeout`; its stdout, or why there is none.
fn run(args: &[&str], timeout: Duration) -> Result<String, String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    crate::docker::docker_within(&args, timeout).map_err(|e| e.to_string())
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
