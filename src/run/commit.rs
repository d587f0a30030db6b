//! Exclusive commits of measured step outputs: `steps/<key>/` is created exactly once, whoever
//! races for it.
//!
//! A `kitt work` attempt writes a measured step (benchmark, collect) into a private directory and
//! commits it with one atomic exclusive operation, so two attempts of one unit (a requeued one
//! and a straggler, on one host or two sharing a filesystem) never leave two results or a mix of
//! both: on Linux a `renameat2(RENAME_NOREPLACE)` of the directory onto `steps/<key>/`, elsewhere
//! (or where the filesystem refuses that flag) an `O_EXCL` marker `steps/<key>/.committed`. No
//! lock and no clock is involved, so it holds across processes and hosts alike.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::path::Path;

use crate::plan::{Plan, StepKind};

/// The marker every committed step directory holds (who committed it).
pub const COMMITTED: &str = ".committed";

/// Commits the directory `from` as `to`, which must not exist yet: `Ok(true)` when this call
/// committed it, `Ok(false)` when another commit of `to` already stands (then `from` is left for
/// the caller to discard). `marker` is written into the committed directory as [`COMMITTED`].
///
/// A `to` without the marker is the leftover of a writer that never committed (a killed attempt,
/// the local driver's in-place output): it is set aside next to `from` and the commit retried.
pub fn commit_dir(from: &Path, to: &Path, marker: &[u8]) -> io::Result<bool> {
    commit_dir_hooked(from, to, marker, &|| {})
}

/// [`commit_dir`], calling `mid` between writing the marker and the rename (a test's kill point).
pub fn commit_dir_hooked(from: &Path, to: &Path, marker: &[u8], mid: &dyn Fn()) -> io::Result<bool> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::create_dir_all(from)?;
    super::dir::write_atomic(&from.join(COMMITTED), marker)?;
    mid();
    for _ in 0..3 {
        match rename_noreplace(from, to) {
            Ok(()) => {
                sync_parent(to);
                return Ok(true);
            }
            Err(e) if exists_error(&e) => {
                if to.join(COMMITTED).exists() {
                    return Ok(false);
                }
                let aside = from.with_extension("stale");
                let _ = std::fs::remove_dir_all(&aside);
                match std::fs::rename(to, &aside) {
                    Ok(()) => {}
                    // Another attempt set it aside first: retry the commit.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.kind() == io::ErrorKind::Unsupported => {
                return commit_by_marker(from, to, marker);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!("{} keeps reappearing without a commit marker", to.display())))
}

fn exists_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AlreadyExists || e.raw_os_error() == Some(libc::ENOTEMPTY)
}

#[cfg(target_os = "linux")]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let f = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let t = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths, relative to the working directory.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn rename_noreplace(_from: &Path, _to: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// The portable commit: whoever creates `to/.committed` exclusively owns `to` and moves its files
/// in; readers trust a step directory only once its journal record says finished.
fn commit_by_marker(from: &Path, to: &Path, marker: &[u8]) -> io::Result<bool> {
    std::fs::create_dir_all(to)?;
    let mut f = match OpenOptions::new().write(true).create_new(true).open(to.join(COMMITTED)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    f.write_all(marker)?;
    f.sync_all()?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name() != COMMITTED {
            std::fs::rename(entry.path(), to.join(entry.file_name()))?;
        }
    }
    std::fs::remove_dir_all(from)?;
    sync_parent(&to.join(COMMITTED));
    Ok(true)
}

fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent()
        && let Ok(d) = std::fs::File::open(parent)
    {
        let _ = d.sync_all();
    }
}

/// The measured keys of `plan` committed in the run at `run_dir`, journaled or not (an attempt
/// killed between its commit and its journal record still committed).
pub fn committed_keys(plan: &Plan, run_dir: &Path) -> HashSet<String> {
    plan.steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Benchmark | StepKind::Collect))
        .filter(|s| run_dir.join("steps").join(&s.key).join(COMMITTED).exists())
        .map(|s| s.key.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_commit_stands_and_the_second_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, to) = (d.path().join("a"), d.path().join("b"), d.path().join("steps/k"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("result.json"), "a").unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("result.json"), "b").unwrap();
        assert!(commit_dir(&a, &to, b"a").unwrap());
        assert!(!commit_dir(&b, &to, b"b").unwrap());
        assert_eq!(std::fs::read_to_string(to.join("result.json")).unwrap(), "a");
        assert_eq!(std::fs::read_to_string(to.join(COMMITTED)).unwrap(), "a");
        assert!(!a.exists(), "the committed directory moved");
    }

    #[test]
    fn a_leftover_without_a_marker_is_set_aside() {
        let d = tempfile::tempdir().unwrap();
        let (a, to) = (d.path().join("a"), d.path().join("steps/k"));
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(to.join(".requests.jsonl.partial"), "half").unwrap();
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("result.json"), "a").unwrap();
        assert!(commit_dir(&a, &to, b"a").unwrap());
        assert!(to.join("result.json").exists());
        assert!(!to.join(".requests.jsonl.partial").exists());
    }

    #[test]
    fn the_marker_fallback_is_exclusive_too() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, to) = (d.path().join("a"), d.path().join("b"), d.path().join("k"));
        for (dir, what) in [(&a, "a"), (&b, "b")] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("result.json"), what).unwrap();
        }
        assert!(commit_by_marker(&a, &to, b"a").unwrap());
        assert!(!commit_by_marker(&b, &to, b"b").unwrap());
        assert_eq!(std::fs::read_to_string(to.join("result.json")).unwrap(), "a");
    }
}
