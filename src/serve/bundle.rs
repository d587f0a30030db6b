//! `POST /api/v1/bundles`: a suite and its suite-local templates, uploaded by `kitt apply SUITE
//! --server URL`, kept content-addressed under `<runs dir>/.bundles/<sha256>/` and run there as
//! an ordinary `kitt apply --detach` run.
//!
//! Starting a run is code execution on this machine (native commands, container mounts), so a
//! server takes bundles only with `--allow-suite-upload`, from `run` tokens. File names are
//! relative paths of plain names (no `..`, no leading dot, no absolute path); the whole bundle is
//! at most 1 MiB; its digest (SHA-256 of the JSON of its file map, names sorted) must match, so
//! a bundle is written once and a second upload of the same files reuses it.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::App;
use super::api::{MAX_SUITE_BYTES, valid_id};
use super::problem::{Json, Problem};
use super::tokens::Caller;

/// The most files a bundle holds.
pub const MAX_FILES: usize = 256;

/// The digest of a bundle's files: SHA-256 of the JSON object of names to contents (names
/// sorted, as a `BTreeMap` serializes), hex.
pub fn digest(files: &BTreeMap<String, String>) -> String {
    let bytes = serde_json::to_vec(files).unwrap_or_default();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` is a relative path of plain names (each a valid id), at most 8 deep.
pub fn valid_name(name: &str) -> bool {
    let path = Path::new(name);
    let parts: Vec<Component> = path.components().collect();
    !parts.is_empty()
        && parts.len() <= 8
        && !name.contains('\\')
        && parts.iter().all(|c| matches!(c, Component::Normal(n) if n.to_str().is_some_and(valid_id)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// The suite's file name among `files`.
    suite: String,
    files: BTreeMap<String, String>,
    digest: String,
    #[serde(default)]
    fresh: bool,
}

/// The directory holding bundles.
pub fn bundles_dir(app: &App) -> PathBuf {
    app.cfg.runs_root.join(".bundles")
}

/// Writes the bundle's files into `<bundles>/<digest>/` (once: a temporary directory renamed
/// into place) and returns the suite's path there.
fn store(app: &App, b: &Bundle) -> Result<PathBuf, Problem> {
    let root = bundles_dir(app);
    let dir = root.join(&b.digest);
    if !dir.is_dir() {
        std::fs::create_dir_all(&root).map_err(Problem::internal)?;
        let tmp = tempfile::Builder::new().prefix(".upload-").tempdir_in(&root).map_err(Problem::internal)?;
        for (name, text) in &b.files {
            let path = tmp.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(Problem::internal)?;
            }
            std::fs::write(&path, text).map_err(Problem::internal)?;
        }
        let kept = tmp.keep();
        // Another upload of the same bundle may have won the race: its files are the same.
        if std::fs::rename(&kept, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&kept);
        }
    }
    Ok(dir.join(&b.suite))
}

pub async fn upload(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(b): Json<Bundle>,
) -> Result<axum::response::Response, Problem> {
    if !app.cfg.allow_suite_upload {
        return Err(Problem::forbidden(
            "this server runs no uploaded suites: start it with --allow-suite-upload, or put the suite under a --suites-dir",
        ));
    }
    if b.files.len() > MAX_FILES {
        return Err(Problem::bad_request(format!("files: {} files, at most {MAX_FILES}", b.files.len())));
    }
    let size: usize = b.files.iter().map(|(n, t)| n.len() + t.len()).sum();
    if size > MAX_SUITE_BYTES {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("files: {size} bytes, at most {MAX_SUITE_BYTES}"),
        ));
    }
    if let Some(bad) = b.files.keys().find(|n| !valid_name(n)) {
        return Err(Problem::bad_request(format!(
            "files: `{}` is not a relative path of plain names (letters, digits, `-`, `_`, `.`; no `..`, no leading dot)",
            bad.chars().take(64).collect::<String>()
        )));
    }
    if !b.files.contains_key(&b.suite) {
        return Err(Problem::bad_request(format!(
            "suite: `{}` is not one of the files",
            b.suite.chars().take(64).collect::<String>()
        )));
    }
    let computed = digest(&b.files);
    if computed != b.digest {
        return Err(Problem::bad_request(format!(
            "digest: the files' SHA-256 is {computed}, the bundle says {}",
            b.digest.chars().take(64).collect::<String>()
        )));
    }
    let suite = {
        let app = app.clone();
        tokio::task::spawn_blocking(move || store(&app, &b).map(|s| (s, b.fresh)))
            .await
            .map_err(Problem::internal)??
    };
    tracing::info!("bundle {computed} uploaded by token `{}`", caller.name);
    super::api::created(super::api::apply_detached(&app, &suite.0, suite.1, None, &caller).await?)
}
