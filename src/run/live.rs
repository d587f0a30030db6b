//! Live progress of a running measuring step, for `kitt serve`'s `step.progress` events: the
//! file `RUN/progress/KEY.json`, rewritten (temp file, then rename) at most once a second while
//! the step's load runs, and removed when it ends.
//!
//! The file is advisory: nothing that decides anything reads it (resume, reuse and reports
//! read the journals and step directories only), so it is written without fsync, and a stale or
//! missing one changes nothing but what a watcher sees.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::steps::Progress;

/// How often the file is rewritten (the events' rate per step).
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The directory of a run's progress files.
pub fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("progress")
}

/// What a progress file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The step's key.
    pub key: String,
    /// The cell's label (`engine × benchmark × …`).
    pub label: String,
    /// Requests finished so far (warmup requests included while the warmup runs).
    pub requests: u64,
    /// Requests the step will send; 0 when it is bounded by time.
    pub requests_total: u64,
    /// Requests that failed so far.
    pub errors: u64,
    /// Requests finished per second over the last interval.
    pub requests_per_s: f64,
    /// Seconds since the step's load began.
    pub elapsed_s: f64,
    /// When this snapshot was written, in milliseconds since the epoch.
    pub unix_ms: u64,
}

/// Writes a step's progress file while it lives; dropping it stops the writer and removes the
/// file.
pub struct Writer {
    path: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Writer {
    /// Starts writing `RUN/progress/KEY.json` from `progress` (its counters are the running
    /// measuring step's). Needs a tokio runtime.
    pub fn start(run_dir: &Path, key: &str, label: String, progress: Arc<Progress>) -> Writer {
        Writer::every(INTERVAL, run_dir, key, label, progress)
    }

    fn every(interval: Duration, run_dir: &Path, key: &str, label: String, progress: Arc<Progress>) -> Writer {
        let path = dir(run_dir).join(format!("{key}.json"));
        let (task_path, key) = (path.clone(), key.to_string());
        let task = tokio::spawn(async move {
            let began = Instant::now();
            let mut last = (began, 0u64);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = Instant::now();
                let requests = progress.requests.load(Ordering::Relaxed);
                let span = now.duration_since(last.0).as_secs_f64();
                let snapshot = Snapshot {
                    key: key.clone(),
                    label: label.clone(),
                    requests,
                    requests_total: progress.requests_total.load(Ordering::Relaxed),
                    errors: progress.errors.load(Ordering::Relaxed),
                    requests_per_s: if span > 0.0 { requests.saturating_sub(last.1) as f64 / span } else { 0.0 },
                    elapsed_s: now.duration_since(began).as_secs_f64(),
                    unix_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                };
                last = (now, requests);
                if let Err(e) = write(&task_path, &snapshot) {
                    tracing::debug!("progress file {}: {e}", task_path.display());
                }
            }
        });
        Writer { path, task: Some(task) }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Replaces the file at `path` with `snapshot` (temp file, then rename: a reader sees the old
/// whole file or the new one).
fn write(path: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(snapshot).unwrap_or_default())?;
    std::fs::rename(&tmp, path)
}

/// The progress files of the run at `run_dir` now: each step's key, the file's modification stamp
/// (to tell a new snapshot from one seen), and its path.
pub fn list(run_dir: &Path) -> Vec<(String, (i64, i64), PathBuf)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out: Vec<_> = std::fs::read_dir(dir(run_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let key = e.file_name().to_str()?.strip_suffix(".json")?.to_string();
            if key.starts_with('.') {
                return None;
            }
            let meta = e.metadata().ok()?;
            Some((key, (meta.mtime(), meta.mtime_nsec()), e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Reads a progress file; `None` if it is gone or torn (a writer that died mid-write leaves only
/// its temp file, which `list` skips, but a file may vanish between listing and reading).
pub fn read(path: &Path) -> Option<Snapshot> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_follows_the_counters_and_goes_with_the_step() {
        const EVERY: Duration = Duration::from_millis(40);
        let dir = tempfile::tempdir().unwrap();
        let progress = Arc::new(Progress::default());
        progress.requests_total.store(100, Ordering::Relaxed);
        let writer = Writer::every(EVERY, dir.path(), "abc123", "sim × chat".into(), progress.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while list(dir.path()).is_empty() {
            assert!(Instant::now() < deadline, "no snapshot written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let files = list(dir.path());
        assert_eq!(files.len(), 1);
        let first = read(&files[0].2).unwrap();
        assert_eq!((first.key.as_str(), first.requests, first.requests_total), ("abc123", 0, 100));
        progress.requests.store(40, Ordering::Relaxed);
        progress.errors.store(3, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while read(&list(dir.path())[0].2).is_none_or(|s| s.requests != 40) {
            assert!(Instant::now() < deadline, "the counters never reached the file");
            tokio::time::sleep(EVERY / 2).await;
        }
        let second = read(&list(dir.path())[0].2).unwrap();
        assert_eq!((second.requests, second.errors), (40, 3));
        assert!(second.elapsed_s > 0.0);
        drop(writer);
        assert!(list(dir.path()).is_empty(), "the file goes when the step ends");
    }
}
