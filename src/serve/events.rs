//! `/api/v1/events`: server-sent events read from the runs' journals.
//!
//! Each stream tails the journal files itself (journals are appended and fsynced a record at a
//! time, so the files are the only queue): a run's stream when the run's one watcher (`Watchers`:
//! inotify on the run's directories, shared by all its streams) says they changed; the stream of
//! every run every 200 ms, looking for new runs too. Running measuring steps add `step.progress`
//! events from their advisory progress files (`run::live`), at most one a second per step. It reads a bounded chunk per
//! shard per poll and produces events only as fast as the client takes them, so a slow client
//! costs a file offset, never a growing buffer, and nothing is ever dropped.
//!
//! An event's id names its run, its journal shard and the record's sequence number in that shard
//! (`RUN/SHARD/SEQ`), followed after `@` by how far the stream had got in every shard of the run
//! (`journal:12,g0.1:5`). Records of different shards interleave in whatever order their
//! writers appended them, so only that vector says what a client has seen: a reconnect with
//! `Last-Event-ID` on a run's stream (`?run=ID`) replays exactly the records after it in every
//! shard, including shards that appeared meanwhile, with no gap and no duplicate. The stream of
//! all runs follows new records only; a reconnect to it gets a `reset` event (refetch the state,
//! then follow), since one id cannot carry every run's position.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::App;
use super::problem::{Problem, Query};
use crate::run::journal::Record;

/// How often a run's watcher looks at its files where inotify cannot be had.
const WATCH: Duration = Duration::from_millis(10);
/// How often a run's watcher looks at its files even when inotify says nothing (a safety net
/// for events the kernel coalesced away or a directory made between two looks).
const WATCH_SAFETY: Duration = Duration::from_secs(1);
/// How often a run's stream reads its files when its watcher says nothing (a safety net).
const POLL_RUN: Duration = Duration::from_secs(1);
/// How often the stream of every run reads the journals (it also looks for new runs).
const POLL_ALL: Duration = Duration::from_millis(200);

/// One watcher per run that some stream follows: a task that wakes when the run's directory,
/// its journal shards' directory or its progress directory change (inotify; where there is
/// none, every `WATCH`), looks at the sizes of the journal files and the stamps of the progress
/// files, and bumps a counter when they changed. The run's streams wait on that counter and read
/// the files only then, so a hundred idle streams of a run cost one watch, not a hundred; the
/// task ends once no stream follows the run.
#[derive(Default)]
pub struct Watchers(std::sync::Mutex<std::collections::HashMap<PathBuf, tokio::sync::watch::Receiver<u64>>>);

impl Watchers {
    fn subscribe(&self, dir: &Path) -> tokio::sync::watch::Receiver<u64> {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A watcher whose task ended has a closed channel: start another.
        if let Some(rx) = map.get(dir).filter(|rx| rx.has_changed().is_ok()) {
            return rx.clone();
        }
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        map.insert(dir.to_path_buf(), rx.clone());
        let dir = dir.to_path_buf();
        let mut inotify = match super::inotify::Inotify::new() {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::debug!("inotify: {e}; watching {} by polling", dir.display());
                None
            }
        };
        let watched = [dir.clone(), crate::run::journal::shards_dir(&dir), crate::run::live::dir(&dir)];
        if let Some(i) = inotify.as_mut() {
            // Before the first look, so nothing written after it goes unseen.
            for d in &watched {
                i.watch(d);
            }
        }
        // Taken before the subscriber's first read, so anything appended after that read shows.
        let mut last = files_state(&dir);
        tokio::spawn(async move {
            let mut changes = 0u64;
            // The map keeps one receiver: with no other, no stream follows the run.
            while tx.receiver_count() > 1 {
                match inotify.as_mut() {
                    Some(i) => {
                        // A directory made since the last look is watched from now on; what was
                        // written in it before shows in the look below.
                        for d in &watched {
                            i.watch(d);
                        }
                        tokio::select! {
                            woke = i.changed() => if woke.is_err() { inotify = None },
                            _ = tokio::time::sleep(WATCH_SAFETY) => {}
                        }
                    }
                    None => tokio::time::sleep(WATCH).await,
                }
                let now = files_state(&dir);
                if now != last {
                    last = now;
                    changes += 1;
                    let _ = tx.send(changes);
                }
            }
        });
        rx
    }
}
/// The most bytes read from one shard per poll (bounds a stream's memory).
const CHUNK: u64 = 256 * 1024;
/// The most streams open at once; more are refused with 503.
pub const MAX_STREAMS: usize = 512;

/// The journal shards of the run at `dir`, by name: `journal` (the driver's `journal.jsonl`)
/// and `UNIT.ATTEMPT` for each `kitt work` attempt's shard, sorted by name.
pub fn shards(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let main = dir.join("journal.jsonl");
    if main.is_file() {
        out.push(("journal".to_string(), main));
    }
    let mut rest: Vec<(String, PathBuf)> = std::fs::read_dir(crate::run::journal::shards_dir(dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".jsonl")?.to_string();
            (super::api::valid_id(&name) && name != "journal").then(|| (name, e.path()))
        })
        .collect();
    rest.sort();
    out.extend(rest);
    out
}

/// Each journal shard of a run and its length, and each progress file and its stamp: what a
/// watcher compares to tell that a run's files changed.
type FilesState = (Vec<(String, u64)>, Vec<(String, (i64, i64))>);

/// The `FilesState` of the run at `dir`.
fn files_state(dir: &Path) -> FilesState {
    let journals = shards(dir).into_iter().map(|(n, p)| (n, std::fs::metadata(p).map_or(0, |m| m.len()))).collect();
    let progress = crate::run::live::list(dir).into_iter().map(|(key, stamp, _)| (key, stamp)).collect();
    (journals, progress)
}

/// The journal event's name on the stream.
fn event_name(record: &Record) -> &'static str {
    use crate::run::journal::Event as E;
    match record.event {
        E::RunStarted { .. } => "run.started",
        E::StepStarted { .. } => "step.started",
        E::StepFinished { .. } => "step.finished",
        E::StepFailed { .. } => "step.failed",
        E::StepSkipped { .. } => "step.skipped",
        E::Facts { .. } => "run.facts",
        E::Duplicate { .. } => "step.duplicate",
        E::RunFinished { .. } => "run.finished",
        E::RunInterrupted { .. } => "run.interrupted",
        E::RunStopped { .. } => "run.stopped",
    }
}

/// How far a stream has read one shard.
#[derive(Debug, Default, Clone)]
struct ShardTail {
    offset: u64,
    /// The last sequence number delivered (records at or below it are skipped).
    seen: Option<u64>,
}

/// One run's shards as a stream reads them.
struct RunTail {
    run: String,
    dir: PathBuf,
    shards: BTreeMap<String, ShardTail>,
    /// Shards first met after the stream began are read from their start; at the start of a
    /// live-only stream, existing ones from their end.
    from_end: bool,
    /// The stamp of each progress file already told of, by step key.
    progress: BTreeMap<String, (i64, i64)>,
    /// When each step's progress was last told of (kept after its file goes: a step whose
    /// writer starts anew must still wait out the second).
    told: BTreeMap<String, std::time::Instant>,
}

impl RunTail {
    fn new(run: String, dir: PathBuf, from_end: bool) -> RunTail {
        RunTail { run, dir, shards: BTreeMap::new(), from_end, progress: BTreeMap::new(), told: BTreeMap::new() }
    }

    fn cursor(&self) -> String {
        let parts: Vec<String> = self.shards.iter().filter_map(|(n, t)| t.seen.map(|s| format!("{n}:{s}"))).collect();
        parts.join(",")
    }

    /// Reads what the shards gained since the last poll, into `out` as events. The driver's
    /// journal is read first and its records are sent last: it records a unit's end (and the
    /// run's) only after the unit's shard is complete, so a client never sees `run.finished`
    /// before a record written ahead of it. When a shard has more than a chunk waiting, the
    /// driver's records wait for the next poll, for the same reason.
    fn poll(&mut self, out: &mut VecDeque<Event>) {
        let all = shards(&self.dir);
        let mut driver = None;
        let mut behind = false;
        for (name, path) in &all {
            let tail = self.tail(name, path);
            let (records, next, more) = read_lines(path, tail.offset);
            if name == "journal" {
                driver = Some((records, next));
                continue;
            }
            behind |= more;
            self.deliver(name, records, next, out);
        }
        self.poll_progress(out);
        if let Some((records, next)) = driver
            && !behind
        {
            self.deliver("journal", records, next, out);
        }
        self.from_end = false;
    }

    /// `step.progress`: a progress file is new or was rewritten since the stream last looked (at
    /// most once a second per step: its writer's pace). Progress is not in the journals, so its
    /// events carry no id and a reconnect does not replay them: the next snapshot follows within
    /// a second.
    fn poll_progress(&mut self, out: &mut VecDeque<Event>) {
        let files = crate::run::live::list(&self.dir);
        self.progress.retain(|key, _| files.iter().any(|(k, _, _)| k == key));
        for (key, stamp, path) in files {
            if self.progress.get(&key) == Some(&stamp) {
                continue;
            }
            // At most one a second per step, even where a step's writer was started anew (a new
            // phase writes at once): a newer snapshot waits for a later look.
            if self.told.get(&key).is_some_and(|t| t.elapsed() < crate::run::live::INTERVAL) {
                continue;
            }
            let Some(snapshot) = crate::run::live::read(&path) else { continue };
            self.told.insert(key.clone(), std::time::Instant::now());
            self.progress.insert(key, stamp);
            let mut data = serde_json::to_value(&snapshot).unwrap_or_default();
            data["run"] = serde_json::Value::String(self.run.clone());
            out.push_back(Event::default().event("step.progress").data(data.to_string()));
        }
    }

    fn tail(&mut self, name: &str, path: &Path) -> ShardTail {
        let from_end = self.from_end;
        self.shards
            .entry(name.to_string())
            .or_insert_with(|| ShardTail {
                offset: if from_end { std::fs::metadata(path).map_or(0, |m| m.len()) } else { 0 },
                seen: None,
            })
            .clone()
    }

    fn deliver(&mut self, name: &str, records: Vec<Record>, next: u64, out: &mut VecDeque<Event>) {
        if let Some(t) = self.shards.get_mut(name) {
            t.offset = next;
        }
        for r in records {
            let Some(tail) = self.shards.get_mut(name) else { break };
            if tail.seen.is_some_and(|s| r.seq <= s) {
                continue;
            }
            tail.seen = Some(r.seq);
            let data = serde_json::json!({"run": self.run, "shard": name, "seq": r.seq, "record": r});
            let id = format!("{}/{name}/{}@{}", self.run, r.seq, self.cursor());
            out.push_back(Event::default().event(event_name(&r)).id(id).data(data.to_string()));
        }
    }
}

/// The whole records of the file at `path` from `offset` on (at most `CHUNK` bytes of them),
/// the offset past them, and whether more was left unread. A line without its newline is still
/// being written (or torn): it waits.
fn read_lines(path: &Path, offset: u64) -> (Vec<Record>, u64, bool) {
    let Ok(mut file) = std::fs::File::open(path) else { return (Vec::new(), offset, false) };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return (Vec::new(), offset, false);
    }
    let mut buf = Vec::new();
    if file.take(CHUNK).read_to_end(&mut buf).is_err() {
        return (Vec::new(), offset, false);
    }
    let more = buf.len() as u64 == CHUNK;
    let Some(end) = memchr::memrchr(b'\n', &buf) else { return (Vec::new(), offset, more) };
    let records =
        buf[..end].split(|b| *b == b'\n').filter_map(|line| serde_json::from_slice::<Record>(line).ok()).collect();
    (records, offset + end as u64 + 1, more)
}

/// A `Last-Event-ID`: the run and its position in each shard.
fn parse_last_id(id: &str) -> Option<(String, BTreeMap<String, u64>)> {
    let (head, cursor) = id.split_once('@')?;
    let run = head.split('/').next()?.to_string();
    let mut seen = BTreeMap::new();
    for part in cursor.split(',').filter(|p| !p.is_empty()) {
        let (name, seq) = part.rsplit_once(':')?;
        seen.insert(name.to_string(), seq.parse().ok()?);
    }
    Some((run, seen))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    run: Option<String>,
}

struct Stream {
    app: Arc<App>,
    /// `Some`: one run; `None`: every run, new ones as they appear.
    only: Option<String>,
    runs: BTreeMap<String, RunTail>,
    pending: VecDeque<Event>,
    /// The store's last result id and settings change this stream has told of (the stream of
    /// every run only).
    store_seen: Option<(i64, i64)>,
    /// The run's watcher (a run's stream only).
    watch: Option<tokio::sync::watch::Receiver<u64>>,
    closing: tokio::sync::watch::Receiver<bool>,
    ended: bool,
    _slot: StreamSlot,
}

/// One of the `MAX_STREAMS` places, given back when the stream ends.
struct StreamSlot(Arc<App>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Stream {
    fn poll_files(&mut self) {
        if self.only.is_none() {
            // New runs only: a name already followed costs a map lookup, not a read.
            let entries = std::fs::read_dir(&self.app.cfg.runs_root).into_iter().flatten().flatten();
            for e in entries {
                let Some(id) = e.file_name().to_str().map(String::from) else { continue };
                if self.runs.contains_key(&id) || !super::api::valid_id(&id) || !e.path().join("run.json").is_file() {
                    continue;
                }
                self.runs.insert(id.clone(), RunTail::new(id, e.path(), false));
            }
        }
        for tail in self.runs.values_mut() {
            tail.poll(&mut self.pending);
        }
        if self.only.is_none() {
            self.poll_store();
        }
    }

    /// `result.added` and `settings.changed`: the store's last ids moved. The data says from
    /// where (`{"after", "last"}`), so a client lists exactly the new rows
    /// (`/api/v1/results?after=…`).
    fn poll_store(&mut self) {
        let (results, settings) = match self.app.store() {
            Ok(Some(store)) => match (store.last_result_id(), store.last_setting_change()) {
                (Ok(r), Ok(s)) => (r, s),
                _ => return,
            },
            // No store yet: the first one to appear is all news.
            Ok(None) => (0, 0),
            Err(_) => return,
        };
        let Some((seen_results, seen_settings)) = self.store_seen.replace((results, settings)) else { return };
        if results > seen_results {
            let data = serde_json::json!({"after": seen_results, "last": results});
            self.pending.push_back(Event::default().event("result.added").data(data.to_string()));
        }
        if settings > seen_settings {
            let data = serde_json::json!({"after": seen_settings, "last": settings});
            self.pending.push_back(Event::default().event("settings.changed").data(data.to_string()));
        }
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Stream)> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(e) = self.pending.pop_front() {
                return Some((Ok(e), self));
            }
            if *self.closing.borrow() {
                self.ended = true;
                return Some((Ok(Event::default().event("server.closing").data("{}")), self));
            }
            self.poll_files();
            if self.pending.is_empty() {
                let wait = if self.only.is_some() { POLL_RUN } else { POLL_ALL };
                let mut closed_watch = false;
                match self.watch.as_mut() {
                    Some(w) => tokio::select! {
                        changed = w.changed() => closed_watch = changed.is_err(),
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.closing.changed() => {}
                    },
                    None => tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.closing.changed() => {}
                    },
                }
                if closed_watch {
                    // Its task ended just as this stream subscribed: follow a new one.
                    let dir = self.runs.values().next().map(|t| t.dir.clone());
                    self.watch = dir.map(|d| self.app.watchers.subscribe(&d));
                }
            }
        }
    }
}

pub async fn stream(State(app): State<Arc<App>>, headers: HeaderMap, Query(q): Query<EventsQuery>) -> Response {
    if app.streams.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
        app.streams.fetch_sub(1, Ordering::SeqCst);
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} event streams are open; retry later"),
        )
        .into_response();
    }
    let slot = StreamSlot(app.clone());
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(String::from);
    let mut pending = VecDeque::new();
    let mut runs = BTreeMap::new();
    match &q.run {
        Some(id) => {
            let info = match super::api::run_dir(&app, id) {
                Ok(i) => i,
                Err(p) => return p.into_response(),
            };
            let mut tail = RunTail::new(info.meta.id.clone(), info.path, false);
            if let Some(last) = &last {
                match parse_last_id(last) {
                    Some((run, seen)) if run == *id => {
                        for (name, seq) in seen {
                            tail.shards.insert(name, ShardTail { offset: 0, seen: Some(seq) });
                        }
                    }
                    _ => {
                        return Problem::bad_request("Last-Event-ID: not an id of this run's events").into_response();
                    }
                }
            }
            runs.insert(id.clone(), tail);
        }
        None => {
            if last.is_some() {
                pending.push_back(
                    Event::default().event("reset").data(
                        r#"{"reason":"the stream of all runs cannot replay; refetch what you show, then follow"}"#,
                    ),
                );
            }
            for info in crate::run::dir::list(&app.cfg.runs_root) {
                let id = info.meta.id.clone();
                runs.insert(id.clone(), RunTail::new(id, info.path, true));
            }
        }
    }
    let closing = app.closing.clone();
    let watch = q.run.as_ref().and_then(|_| runs.values().next()).map(|t| app.watchers.subscribe(&t.dir));
    let mut state =
        Stream { app, only: q.run, runs, pending, store_seen: None, watch, closing, ended: false, _slot: slot };
    if state.only.is_none() {
        // What the store holds now is not news.
        state.poll_store();
    }
    let events = futures_util::stream::unfold(state, Stream::next);
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_event_id_gives_the_run_and_every_shard() {
        let (run, seen) = parse_last_id("r1/g0.1/5@journal:12,g0.1:5").unwrap();
        assert_eq!(run, "r1");
        assert_eq!(seen, BTreeMap::from([("journal".to_string(), 12), ("g0.1".to_string(), 5)]));
        assert!(parse_last_id("garbage").is_none());
        assert!(parse_last_id("r/j/1@journal:x").is_none());
    }
}
