//! Everything that stops an eval, worded for the person who has to fix it.
//!
//! Each variant names the thing at fault (a file and line, a URL, a cache entry, an item) and,
//! where there is one, the fix. Decoding errors of the spec itself are manifest `Diagnostic`s
//! (they have positions in the template file) and never reach this type.

use std::path::PathBuf;

/// An error while preparing or running an eval.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A local file (dataset, cache entry, checkpoint) could not be read or written.
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },

    /// A row that cannot be read, or that lacks what the eval needs. `location` is `FILE:LINE`
    /// (or `SOURCE row N` for records without lines).
    #[error("{location}: {reason}")]
    Malformed { location: String, reason: String },

    /// The data is not what the spec's `sha256` (or the cache's own record) says it is.
    #[error(
        "{what}: sha256 is {actual}, expected {expected} ({path}); the data changed or is corrupt: \
         check the source, then fix `sha256` or delete the cached file to download it again"
    )]
    Checksum { what: String, expected: String, actual: String, path: PathBuf },

    /// Offline mode and data that is not in the cache.
    #[error(
        "offline, and {} not in the dataset cache ({}): {}; run once online (or copy the files there)",
        if missing.len() == 1 { "this is" } else { "these are" },
        cache.display(),
        missing.join(", ")
    )]
    Offline { missing: Vec<String>, cache: PathBuf },

    /// A download failed.
    #[error("{url}: {reason}")]
    Fetch { url: String, reason: String },

    /// Nothing to evaluate; `why` says which step left nothing (source, split, filter, window).
    #[error("no items to evaluate: {why}")]
    Empty { why: String },

    /// An item whose prompt cannot be built (a template variable it lacks, say).
    #[error("item {item}: {reason}")]
    Item { item: String, reason: String },

    /// The spec cannot be run as written (found when preparing, not when decoding).
    #[error("eval spec: {0}")]
    Spec(String),

    /// The token counter the executor supplied failed.
    #[error("counting prompt tokens: {0}")]
    Counter(String),

    /// A checkpoint that belongs to another eval, or cannot be read.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },

    /// Every request failed: there is no score to report.
    #[error("all {count} requests failed; the first error: {first}")]
    AllFailed { count: usize, first: String },

    /// Preparation was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl EvalError {
    pub(crate) fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> EvalError {
        EvalError::Io { path: path.into(), reason: e.to_string() }
    }
}
