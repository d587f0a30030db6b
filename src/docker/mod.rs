//! The docker CLI — the only place kitt talks to Docker. Always argv, never a shell.
//!
//! Container lifecycle comes with container-mode execution; today this answers what the engine
//! catalog needs to know: whether Docker answers, and whether an image is present.

use std::process::Command;

/// Whether the Docker engine answers, with its server version.
pub fn server_version() -> Result<String, String> {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map_err(|e| format!("cannot run `docker`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The image's id when it is present locally, `None` when it is not.
pub fn image_id(image: &str) -> Result<Option<String>, String> {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", "--", image])
        .output()
        .map_err(|e| format!("cannot run `docker`: {e}"))?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_string()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such image") || err.contains("No such object") { Ok(None) } else { Err(err.trim().to_string()) }
}
