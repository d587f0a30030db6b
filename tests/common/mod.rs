//! What several test binaries share.

use std::path::{Path, PathBuf};

/// The shared datasets (`KITT_TEST_DATA`, default ../shared/datasets), or `None` (a skip, said
/// on stderr) when they are absent outside CI. Under `CI=true` absence fails the test.
pub fn test_data() -> Option<PathBuf> {
    let dir = std::env::var_os("KITT_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets"));
    if dir.join("mmlu/data/test").is_dir() {
        return Some(dir);
    }
    let msg = format!("the test datasets are not at {} (set KITT_TEST_DATA)", dir.display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    None
}
