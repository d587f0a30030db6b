//! The journal: an append-only JSON-lines record of what a run did.
//!
//! Every record is appended and fsynced before kitt acts on it, so a `kill -9` at any instant
//! loses at most the steps in flight. Reading tolerates exactly one kind of damage — a torn last
//! line from a write cut short — which is reported and cut off before the next append; damage
//! anywhere else is an error, never silently trusted.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::plan::StepKind;

/// Observed facts: what only running shows (versions, digests, the machine).
pub type Facts = BTreeMap<String, String>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub seq: u64,
    /// Wall clock, nanoseconds since the Unix epoch (a label; durations use monotonic clocks).
    pub unix_ns: u64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A kitt process started (or resumed) driving the run.
    RunStarted {
        attempt: u32,
        kitt_version: String,
        pid: u32,
        facts: Facts,
        accept_drift: bool,
    },
    StepStarted {
        step: usize,
        key: String,
        kind: StepKind,
        attempt: u32,
        label: String,
    },
    StepFinished {
        step: usize,
        key: String,
        kind: StepKind,
        attempt: u32,
        #[serde(default)]
        outputs: Json,
    },
    StepFailed {
        step: usize,
        key: String,
        kind: StepKind,
        attempt: u32,
        error: String,
        will_retry: bool,
        /// How it failed where that says more than "failed": `truncated`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
    },
    StepSkipped {
        step: usize,
        key: String,
        kind: StepKind,
        reason: String,
    },
    /// Facts observed about one engine group (its server version…).
    Facts {
        scope: String,
        facts: Facts,
    },
    /// A measured step finished, but another attempt had already committed its key: this
    /// attempt's output was discarded (`kitt work`).
    Duplicate {
        step: usize,
        key: String,
        kind: StepKind,
        attempt: u32,
    },
    /// Every step reached an end.
    RunFinished {
        ok: bool,
        failed_cells: usize,
    },
    /// Ctrl-C or SIGTERM: cleanup ran; the run can be resumed.
    RunInterrupted {
        signal: String,
    },
    /// A step stopped the run (drift); cleanup ran; the run can be resumed.
    RunStopped {
        reason: String,
    },
}

/// Nanoseconds since the Unix epoch.
pub fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot {what} the journal {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("the journal {path} is damaged at line {line}: {detail}")]
    Damaged { path: PathBuf, line: usize, detail: String },
}

/// The journal of one run, open for appending.
pub struct Journal {
    file: File,
    path: PathBuf,
    next_seq: u64,
    /// Test hook: SIGKILL this process right after writing the record with this seq.
    kill_after: Option<u64>,
}

/// What reading a journal found.
pub struct Contents {
    pub records: Vec<Record>,
    /// Bytes of a torn last line that were ignored (0 when the journal is intact).
    pub torn_bytes: usize,
    valid_len: u64,
}

/// Reads every intact record of a journal; a missing journal is empty.
pub fn read(path: &Path) -> Result<Contents, JournalError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(JournalError::Io { what: "read", path: path.to_path_buf(), source });
        }
    };
    let mut records = Vec::new();
    let mut offset = 0usize;
    let mut line_no = 0;
    while offset < bytes.len() {
        line_no += 1;
        let rest = &bytes[offset..];
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            // No newline: a write was cut short. Only ever the last line.
            return Ok(Contents { records, torn_bytes: rest.len(), valid_len: offset as u64 });
        };
        let line = &rest[..nl];
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => records.push(r),
            Err(e) if offset + nl + 1 == bytes.len() => {
                tracing::debug!("last journal line unreadable: {e}");
                return Ok(Contents { records, torn_bytes: nl + 1, valid_len: offset as u64 });
            }
            Err(e) => {
                return Err(JournalError::Damaged { path: path.to_path_buf(), line: line_no, detail: e.to_string() });
            }
        }
        offset += nl + 1;
    }
    Ok(Contents { records, torn_bytes: 0, valid_len: offset as u64 })
}

/// The directory of the per-attempt journal shards of the run at `run_dir`.
pub fn shards_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("journal")
}

/// The journal shard of one `kitt work` attempt: `journal/<unit>.<attempt>.jsonl`.
pub fn shard_path(run_dir: &Path, unit: &str, attempt: u32) -> PathBuf {
    shards_dir(run_dir).join(format!("{unit}.{attempt}.jsonl"))
}

/// Everything a run recorded: `journal.jsonl` and every attempt's shard, merged in order (by
/// timestamp, then seq). A shard's torn tail is ignored with a warning (its own attempt cuts it
/// if it ever appends again).
pub fn read_run(run_dir: &Path) -> Result<Vec<Record>, JournalError> {
    let mut records = read(&run_dir.join("journal.jsonl"))?.records;
    let mut shards: Vec<PathBuf> = std::fs::read_dir(shards_dir(run_dir))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    shards.sort();
    for shard in shards {
        let c = read(&shard)?;
        if c.torn_bytes > 0 {
            tracing::warn!(
                "ignoring a torn last line ({} bytes) in {}: a kitt work was killed while writing it",
                c.torn_bytes,
                shard.display()
            );
        }
        records.extend(c.records);
    }
    records.sort_by_key(|r| (r.unix_ns, r.seq));
    Ok(records)
}

impl Journal {
    /// Opens (creating if needed) for appending after `contents`, cutting off a torn tail.
    pub fn open(path: &Path, contents: &Contents) -> Result<Journal, JournalError> {
        let io_err = |what, source| JournalError::Io { what, path: path.to_path_buf(), source };
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_err("open", e))?;
        if contents.torn_bytes > 0 {
            tracing::warn!(
                "ignoring a torn last line ({} bytes) in {}: a previous kitt was killed while writing it",
                contents.torn_bytes,
                path.display()
            );
            file.set_len(contents.valid_len).map_err(|e| io_err("truncate", e))?;
            file.sync_all().map_err(|e| io_err("sync", e))?;
        }
        let mut file = file;
        use std::io::Seek as _;
        file.seek(io::SeekFrom::End(0)).map_err(|e| io_err("seek", e))?;
        let next_seq = contents.records.last().map_or(0, |r| r.seq + 1);
        let kill_after = std::env::var("KITT_TEST_KILL_AFTER_RECORD").ok().and_then(|v| v.parse().ok());
        Ok(Journal { file, path: path.to_path_buf(), next_seq, kill_after })
    }

    /// Test hook: SIGKILL this process right after writing the record with seq `n` (what
    /// `KITT_TEST_KILL_AFTER_RECORD` sets for every journal this process opens).
    pub fn kill_after(&mut self, n: Option<u64>) {
        self.kill_after = n;
    }

    /// Appends one record and fsyncs it.
    pub fn append(&mut self, event: Event) -> Result<Record, JournalError> {
        let record = Record { seq: self.next_seq, unix_ns: unix_ns(), event };
        let mut line = serde_json::to_vec(&record).map_err(|e| JournalError::Damaged {
            path: self.path.clone(),
            line: 0,
            detail: e.to_string(),
        })?;
        line.push(b'\n');
        let io_err = |what, source| JournalError::Io { what, path: self.path.clone(), source };
        self.file.write_all(&line).map_err(|e| io_err("append to", e))?;
        self.file.sync_data().map_err(|e| io_err("sync", e))?;
        self.next_seq += 1;
        if self.kill_after == Some(record.seq) {
            // Test hook (KITT_TEST_KILL_AFTER_RECORD): die like `kill -9` right after this record.
            // SAFETY: raising SIGKILL on ourselves.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started() -> Event {
        Event::StepStarted { step: 1, key: "k".into(), kind: StepKind::Benchmark, attempt: 0, label: "b".into() }
    }

    #[test]
    fn appends_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut j = Journal::open(&path, &read(&path).unwrap()).unwrap();
        j.append(started()).unwrap();
        j.append(Event::RunFinished { ok: true, failed_cells: 0 }).unwrap();
        let c = read(&path).unwrap();
        assert_eq!(c.records.len(), 2);
        assert_eq!(c.records[1].seq, 1);
        assert_eq!(c.torn_bytes, 0);
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_cut_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut j = Journal::open(&path, &read(&path).unwrap()).unwrap();
        j.append(started()).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"seq":1,"unix_ns":5,"event":"step_fini"#).unwrap();
        let c = read(&path).unwrap();
        assert_eq!(c.records.len(), 1);
        assert!(c.torn_bytes > 0);
        let mut j = Journal::open(&path, &c).unwrap();
        j.append(Event::RunFinished { ok: true, failed_cells: 0 }).unwrap();
        let c = read(&path).unwrap();
        assert_eq!(c.records.len(), 2);
        assert_eq!(c.records[1].seq, 1);
    }

    #[test]
    fn a_run_reads_its_journal_and_every_shard_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("journal.jsonl");
        std::fs::create_dir_all(shards_dir(dir.path())).unwrap();
        let shard = shard_path(dir.path(), "u1", 0);
        let mut a = Journal::open(&main, &read(&main).unwrap()).unwrap();
        let mut b = Journal::open(&shard, &read(&shard).unwrap()).unwrap();
        a.append(started()).unwrap();
        b.append(Event::Duplicate { step: 1, key: "k".into(), kind: StepKind::Benchmark, attempt: 0 }).unwrap();
        a.append(Event::RunFinished { ok: true, failed_cells: 0 }).unwrap();
        drop(b);
        // A shard torn by a killed attempt loses only its last line.
        let mut f = OpenOptions::new().append(true).open(&shard).unwrap();
        f.write_all(br#"{"seq":1,"unix_ns":5,"event":"dupl"#).unwrap();
        let events: Vec<&str> = read_run(dir.path())
            .unwrap()
            .iter()
            .map(|r| match r.event {
                Event::StepStarted { .. } => "started",
                Event::Duplicate { .. } => "duplicate",
                Event::RunFinished { .. } => "finished",
                _ => "other",
            })
            .collect();
        assert_eq!(events, ["started", "duplicate", "finished"]);
    }

    #[test]
    fn damage_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        std::fs::write(&path, "garbage\n{\"seq\":0}\n").unwrap();
        assert!(matches!(read(&path), Err(JournalError::Damaged { line: 1, .. })));
    }
}
