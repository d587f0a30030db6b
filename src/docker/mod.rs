//! The docker CLI — the only place kitt talks to Docker. Always argv, never a shell.
//!
//! Container lifecycle comes with container-mode execution; today this answers what the engine
//! catalog needs to know: whether an image is present.

use std::process::Command;

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
