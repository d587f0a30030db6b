//! The filesystem layout of runs — the only place that knows it.
//!
//! ```text
//! <runs dir>/<run-id>/
//!   run.json        identity of the suite this run belongs to
//!   run.lease       the run lock: a lease of the one kitt process driving the run (see runlock)
//!   plan.json       the compiled plan (secrets are references, never values)
//!   journal.jsonl   append-only record of steps
//!   steps/<key>/    per-step outputs
//!   report/         rendered reports
//! ```
//! Files are written atomically (temp + fsync + rename + directory fsync).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::journal::{self, Event};
pub use super::runlock::LockError;
use super::runlock::{self, RunLock};

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    rename_durably(&tmp, path)
}

/// Like [`write_atomic`], but the contents are streamed by `fill` (for files too large to build
/// in memory first, such as a benchmark's requests.jsonl).
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, File::create(&tmp)?);
        fill(&mut w)?;
        w.flush()?;
        w.get_ref().sync_all()?;
    }
    rename_durably(&tmp, path)
}

/// Writes `bytes` atomically to `rel` under `root`, never leaving `root`: `rel` must be relative
/// without `..` (reporters' outputs are checked when the manifest is compiled; this is the last
/// line), and no symlink is followed — not `root`, not a directory on the way, not the file
/// itself, which is created `O_EXCL | O_NOFOLLOW` beside its final name and renamed over it.
pub fn write_inside(root: &Path, rel: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::path::Component;
    let refuse = |p: &Path, why: &str| io::Error::other(format!("refusing to write {}: {why}", p.display()));
    let mut dir = root.to_path_buf();
    let parts: Vec<Component> = Path::new(rel).components().filter(|c| *c != Component::CurDir).collect();
    let Some((Component::Normal(name), parents)) = parts.split_last() else {
        return Err(refuse(&root.join(rel), "not a file name inside the directory"));
    };
    let no_link = |p: &Path| match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => Err(refuse(p, "it is a symbolic link")),
        _ => Ok(()),
    };
    std::fs::create_dir_all(root)?;
    no_link(root)?;
    for part in parents {
        let Component::Normal(part) = part else {
            return Err(refuse(&root.join(rel), "the path leaves the directory"));
        };
        dir.push(part);
        no_link(&dir)?;
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => no_link(&dir)?,
        }
    }
    let path = dir.join(name);
    no_link(&path)?;
    let tmp = dir.join(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_file(&tmp); // a leftover of a killed kitt with our pid
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", tmp.display())))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    rename_durably(&tmp, &path)?;
    Ok(path)
}

/// Renames a finished, synced file into place and syncs the directory, so the new name survives
/// a crash.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    let dir = to.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Where runs live: `--runs-dir`, else `KITT_RUNS_DIR`, else `./.kitt/runs`.
pub fn runs_root(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("KITT_RUNS_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(".kitt/runs"))
}

/// `run.json`: which suite a run belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMeta {
    pub id: String,
    pub identity: String,
    pub suite: String,
    pub file: PathBuf,
    pub created_unix_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every step ended and every cell succeeded.
    Succeeded,
    /// Every step ended; some cell failed.
    Failed,
    /// Stopped by a signal or a crash: `kitt apply` resumes it.
    Unfinished,
    /// A kitt process holds its lock right now.
    Running,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    #[serde(flatten)]
    pub meta: RunMeta,
    pub path: PathBuf,
    pub status: RunStatus,
    pub records: usize,
}

/// Every run under `root`, oldest first.
pub fn list(root: &Path) -> Vec<RunInfo> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut runs: Vec<RunInfo> = entries.filter_map(|e| e.ok()).filter_map(|e| info(&e.path())).collect();
    runs.sort_by(|a, b| (a.meta.created_unix_ns, &a.meta.id).cmp(&(b.meta.created_unix_ns, &b.meta.id)));
    runs
}

/// What is known about the run at `path`, if it is one.
pub fn info(path: &Path) -> Option<RunInfo> {
    let meta: RunMeta = serde_json::from_slice(&std::fs::read(path.join("run.json")).ok()?).ok()?;
    let contents = journal::read(&path.join("journal.jsonl")).ok();
    let records = contents.as_ref().map_or(Vec::new(), |c| c.records.clone());
    // Finished only if a RunFinished follows the last RunStarted.
    let last_start = records.iter().rposition(|r| matches!(r.event, Event::RunStarted { .. }));
    let finish = records.iter().enumerate().rev().find_map(|(i, r)| match r.event {
        Event::RunFinished { ok, .. } => Some((i, ok)),
        _ => None,
    });
    let status = match (finish, last_start) {
        _ if RunLock::is_held(&runlock::lock_path(path)) => RunStatus::Running,
        (Some((f, ok)), Some(s)) if f > s => {
            if ok {
                RunStatus::Succeeded
            } else {
                RunStatus::Failed
            }
        }
        _ => RunStatus::Unfinished,
    };
    Some(RunInfo { meta, path: path.to_path_buf(), status, records: records.len() })
}

/// A new run id: UTC time plus a few random hex digits.
pub fn new_run_id() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = now.chars().filter(|c| c.is_ascii_digit()).take(14).collect();
    let nanos = journal::unix_ns();
    format!("{}-{}-{:04x}", &stamp[..8], &stamp[8..], (nanos ^ (std::process::id() as u64) << 7) & 0xffff)
}

/// A run directory, locked by this process.
pub struct RunDir {
    pub id: String,
    pub path: PathBuf,
    lock: RunLock,
}

impl RunDir {
    /// Creates a new run directory and locks it.
    pub fn create(root: &Path, meta: &RunMeta) -> Result<RunDir, LockError> {
        let path = root.join(&meta.id);
        std::fs::create_dir_all(path.join("steps")).map_err(|e| LockError::Io(path.clone(), e))?;
        let lock = RunLock::acquire(&runlock::lock_path(&path))?;
        let json = serde_json::to_vec_pretty(meta).unwrap_or_default();
        write_atomic(&path.join("run.json"), &json).map_err(|e| LockError::Io(path.clone(), e))?;
        Ok(RunDir { id: meta.id.clone(), path, lock })
    }

    /// Locks an existing run directory.
    pub fn open(info: &RunInfo) -> Result<RunDir, LockError> {
        let lock = RunLock::acquire(&runlock::lock_path(&info.path))?;
        Ok(RunDir { id: info.meta.id.clone(), path: info.path.clone(), lock })
    }

    /// Lets go of the run lock now (dropping the run directory does too).
    pub fn release(&mut self) {
        self.lock.release();
    }

    pub fn plan_path(&self) -> PathBuf {
        self.path.join("plan.json")
    }

    pub fn journal_path(&self) -> PathBuf {
        self.path.join("journal.jsonl")
    }

    /// The output directory of the step with `key` (created).
    pub fn step_dir(&self, key: &str) -> io::Result<PathBuf> {
        let d = self.path.join("steps").join(key);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    pub fn report_dir(&self) -> PathBuf {
        self.path.join("report")
    }
}

/// Who a process is, for people: in holder descriptions of claims.
pub fn holder_description() -> String {
    format!("pid {}, started {}", std::process::id(), humantime::format_rfc3339_seconds(std::time::SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1, "no temp file left");
    }

    #[test]
    fn report_files_stay_inside_and_never_follow_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("report");
        let outside = d.path().join("outside");
        std::fs::write(&outside, "keep me").unwrap();
        assert_eq!(write_inside(&root, "a/b.md", b"one").unwrap(), root.join("a/b.md"));
        assert_eq!(std::fs::read(root.join("a/b.md")).unwrap(), b"one");
        // A symlink planted where the file goes, or on the way to it, is refused.
        std::os::unix::fs::symlink(&outside, root.join("x.md")).unwrap();
        let e = write_inside(&root, "x.md", b"two").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::os::unix::fs::symlink(d.path(), root.join("up")).unwrap();
        assert!(write_inside(&root, "up/outside", b"two").is_err());
        assert!(write_inside(&root, "../outside", b"two").is_err());
        assert!(write_inside(&root, "/tmp/x", b"two").is_err());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me");
    }
}
