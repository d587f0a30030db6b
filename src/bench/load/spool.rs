//! The spool: finished records on their way to disk during the window, read back once after it.
//!
//! Owns the scratch file and its format. A record is encoded in a compact binary form (LEB128
//! integers, stamps of content events as differences from the one before, strings with their
//! length), framed by its length: encoding one costs a few dozen nanoseconds, where a JSON line
//! cost a microsecond and another to read back. The format lives only as long as one run of one
//! process (the file is removed when the spool is dropped), so it has no version; `requests.jsonl`
//! is the durable form.

use std::fs::File;
use std::io::{BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::LoadError;
use crate::engine::client::{Deadline, ErrorKind, RequestRecord};

/// How a spool file's name starts (the rest: process id and a counter).
pub const SPOOL_PREFIX: &str = ".kitt-spool-";

/// Bytes of finished records gathered before they are written out.
pub(super) const SPOOL_BLOCK: usize = 256 << 10;

/// Finished records on their way to disk: encoded records gather in a buffer that is written in
/// blocks, so a request costs an encoding, not a write. The file is a scratch file beside the
/// records' destination (or in the temp dir), removed when the spool is dropped: after the run, or
/// when a cancelled run is dropped.
pub(super) struct Spool {
    pub(super) path: PathBuf,
    inner: Mutex<SpoolInner>,
    /// A client shard's spool outlives its process: the coordinator reads it and removes it.
    keep: bool,
}

struct SpoolInner {
    buf: Vec<u8>,
    file: File,
    /// The first write error; the run reports it at the end.
    error: Option<std::io::Error>,
}

impl Spool {
    pub(super) fn create(near: Option<&Path>) -> Result<Spool, LoadError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{SPOOL_PREFIX}{}-{n}", std::process::id());
        let path = match near.and_then(Path::parent) {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
            _ => std::env::temp_dir().join(name),
        };
        Spool::open_new(path, false)
    }

    /// A spool at `path` that stays when it is dropped (a client shard's, read by its
    /// coordinator after the shard has exited).
    pub(super) fn create_kept(path: PathBuf) -> Result<Spool, LoadError> {
        Spool::open_new(path, true)
    }

    fn open_new(path: PathBuf, keep: bool) -> Result<Spool, LoadError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LoadError::Records(format!("cannot create the spool {}: {e}", path.display())))?;
        Ok(Spool {
            path,
            inner: Mutex::new(SpoolInner { buf: Vec::with_capacity(SPOOL_BLOCK + 4096), file, error: None }),
            keep,
        })
    }

    pub(super) fn push(&self, record: &RequestRecord) {
        let mut guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let inner = &mut *guard;
        encode(record, &mut inner.buf);
        if inner.buf.len() >= SPOOL_BLOCK {
            inner.flush();
        }
    }

    /// Writes out what is buffered; the first error of the whole run, if any.
    pub(super) fn finish(&self) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.flush();
        match inner.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Reads the records back, in the order they were pushed (after [`Spool::finish`]).
    pub(super) fn records(&self) -> std::io::Result<SpoolReader> {
        SpoolReader::open(&self.path)
    }
}

impl SpoolInner {
    fn flush(&mut self) {
        if self.error.is_none()
            && let Err(e) = self.file.write_all(&self.buf)
        {
            self.error = Some(e);
        }
        self.buf.clear();
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The records of a spool file, one by one.
pub(super) struct SpoolReader {
    file: BufReader<File>,
    frame: Vec<u8>,
}

impl SpoolReader {
    /// Reads the spool file at `path` from its start.
    pub(super) fn open(path: &Path) -> std::io::Result<SpoolReader> {
        Ok(SpoolReader { file: BufReader::with_capacity(SPOOL_BLOCK, File::open(path)?), frame: Vec::new() })
    }

    /// The next record; `None` at the end of the file.
    pub(super) fn next_record(&mut self) -> std::io::Result<Option<RequestRecord>> {
        let mut len = [0u8; 4];
        match self.file.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        self.frame.resize(u32::from_le_bytes(len) as usize, 0);
        self.file.read_exact(&mut self.frame)?;
        decode(&self.frame).map(Some).map_err(|what| std::io::Error::other(format!("a corrupt spool record: {what}")))
    }
}

/// The code of `connection_reset`, above every `5 + status` code.
const CONNECTION_RESET: u64 = 1 << 20;

/// Appends `record`, framed by its length, to `out`.
pub(super) fn encode(record: &RequestRecord, out: &mut Vec<u8>) {
    // Every field is named, so a field added to the record cannot be forgotten here.
    let RequestRecord {
        index,
        scheduled_ns,
        sent_ns,
        headers_ns,
        first_byte_ns,
        first_event_ns,
        first_reasoning_ns,
        first_content_ns,
        last_event_ns,
        end_ns,
        dispatched_ns,
        content_event_ns,
        content_events,
        reasoning_events,
        usage_prompt_tokens,
        usage_completion_tokens,
        counted_output_tokens,
        input_tokens,
        server_prompt_ms,
        status,
        connection_retries,
        error,
        deadline,
        error_detail,
        text,
        skip_text: _,
    } = record;
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    for n in [*index, *scheduled_ns, *sent_ns, *end_ns, *input_tokens] {
        put(out, n);
    }
    for n in [
        headers_ns,
        first_byte_ns,
        first_event_ns,
        first_reasoning_ns,
        first_content_ns,
        last_event_ns,
        dispatched_ns,
        usage_prompt_tokens,
        usage_completion_tokens,
        counted_output_tokens,
    ] {
        put_opt(out, *n);
    }
    put(out, u64::from(*content_events));
    put(out, u64::from(*reasoning_events));
    put(out, u64::from(*connection_retries));
    put_opt(out, status.map(u64::from));
    put_opt(out, server_prompt_ms.map(f64::to_bits));
    put(out, content_event_ns.len() as u64);
    let mut previous = 0;
    for &t in content_event_ns {
        // Stamps only grow within an answer; a difference is a byte or two.
        put(out, t.wrapping_sub(previous));
        previous = t;
    }
    put_opt(
        out,
        error.map(|kind| match kind {
            ErrorKind::Connect => 0,
            ErrorKind::Timeout => 1,
            ErrorKind::Stream => 2,
            ErrorKind::Decode => 3,
            ErrorKind::Cancelled => 4,
            ErrorKind::Status(code) => 5 + u64::from(code),
            ErrorKind::ConnectionReset => CONNECTION_RESET,
        }),
    );
    put_opt(
        out,
        deadline.map(|d| match d {
            Deadline::FirstToken => 0,
            Deadline::BetweenEvents => 1,
            Deadline::Total => 2,
            Deadline::StepTimeout => 3,
        }),
    );
    put_opt(out, error_detail.as_ref().map(|d| d.len() as u64));
    out.extend_from_slice(error_detail.as_deref().unwrap_or_default().as_bytes());
    put(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// A record from what [`encode`] wrote (without the length frame).
pub(super) fn decode(mut bytes: &[u8]) -> Result<RequestRecord, &'static str> {
    let b = &mut bytes;
    let mut r = RequestRecord {
        index: get(b)?,
        scheduled_ns: get(b)?,
        sent_ns: get(b)?,
        end_ns: get(b)?,
        input_tokens: get(b)?,
        headers_ns: get_opt(b)?,
        first_byte_ns: get_opt(b)?,
        first_event_ns: get_opt(b)?,
        first_reasoning_ns: get_opt(b)?,
        first_content_ns: get_opt(b)?,
        last_event_ns: get_opt(b)?,
        dispatched_ns: get_opt(b)?,
        usage_prompt_tokens: get_opt(b)?,
        usage_completion_tokens: get_opt(b)?,
        counted_output_tokens: get_opt(b)?,
        content_events: narrow(get(b)?)?,
        reasoning_events: narrow(get(b)?)?,
        connection_retries: narrow(get(b)?)?,
        status: get_opt(b)?.map(|s| u16::try_from(s).map_err(|_| "a status over 65535")).transpose()?,
        server_prompt_ms: get_opt(b)?.map(f64::from_bits),
        ..RequestRecord::default()
    };
    let events = usize::try_from(get(b)?).map_err(|_| "too many events")?;
    if events > b.len() {
        return Err("more events than bytes");
    }
    r.content_event_ns.reserve_exact(events);
    let mut previous = 0u64;
    for _ in 0..events {
        previous = previous.wrapping_add(get(b)?);
        r.content_event_ns.push(previous);
    }
    r.error = match get_opt(b)? {
        None => None,
        Some(0) => Some(ErrorKind::Connect),
        Some(1) => Some(ErrorKind::Timeout),
        Some(2) => Some(ErrorKind::Stream),
        Some(3) => Some(ErrorKind::Decode),
        Some(4) => Some(ErrorKind::Cancelled),
        Some(CONNECTION_RESET) => Some(ErrorKind::ConnectionReset),
        Some(n) => Some(ErrorKind::Status(u16::try_from(n - 5).map_err(|_| "an unknown error kind")?)),
    };
    r.deadline = match get_opt(b)? {
        None => None,
        Some(0) => Some(Deadline::FirstToken),
        Some(1) => Some(Deadline::BetweenEvents),
        Some(2) => Some(Deadline::Total),
        Some(3) => Some(Deadline::StepTimeout),
        Some(_) => return Err("an unknown deadline"),
    };
    if let Some(len) = get_opt(b)? {
        r.error_detail = Some(text(b, len)?);
    }
    let len = get(b)?;
    r.text = text(b, len)?;
    if !b.is_empty() {
        return Err("bytes after the record");
    }
    Ok(r)
}

/// An unsigned LEB128 integer.
fn put(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// `None` as 0, a value as itself plus two; the two largest values, which that would overflow,
/// as 1 followed by the value.
fn put_opt(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        None => put(out, 0),
        Some(n) if n >= u64::MAX - 1 => {
            put(out, 1);
            put(out, n);
        }
        Some(n) => put(out, n + 2),
    }
}

fn get(b: &mut &[u8]) -> Result<u64, &'static str> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first().ok_or("a record cut short")?;
        *b = rest;
        n |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(n);
        }
    }
    Err("an integer over 64 bits")
}

fn get_opt(b: &mut &[u8]) -> Result<Option<u64>, &'static str> {
    Ok(match get(b)? {
        0 => None,
        1 => Some(get(b)?),
        n => Some(n - 2),
    })
}

fn narrow(n: u64) -> Result<u32, &'static str> {
    u32::try_from(n).map_err(|_| "a count over 32 bits")
}

fn text(b: &mut &[u8], len: u64) -> Result<String, &'static str> {
    let len = usize::try_from(len).map_err(|_| "a string longer than memory")?;
    if len > b.len() {
        return Err("a string cut short");
    }
    let (bytes, rest) = b.split_at(len);
    *b = rest;
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string that is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> RequestRecord {
        RequestRecord {
            index: 7,
            scheduled_ns: 1,
            sent_ns: 2,
            headers_ns: Some(3),
            first_byte_ns: Some(4),
            first_event_ns: Some(5),
            first_reasoning_ns: Some(u64::MAX - 1),
            counted_output_tokens: Some(0),
            first_content_ns: Some(6),
            last_event_ns: Some(u64::MAX),
            end_ns: u64::MAX - 1,
            dispatched_ns: Some(u64::MAX - 2),
            content_event_ns: vec![6, 6, 90, 1 << 40, 5],
            content_events: u32::MAX,
            reasoning_events: 3,
            usage_prompt_tokens: Some(8),
            usage_completion_tokens: Some(16),
            input_tokens: 8,
            server_prompt_ms: Some(1.25),
            status: Some(503),
            connection_retries: 2,
            error: Some(ErrorKind::Status(503)),
            deadline: Some(Deadline::BetweenEvents),
            error_detail: Some("overloaded — retry".into()),
            text: " a b é".into(),
            skip_text: false,
        }
    }

    fn same(a: &RequestRecord, b: &RequestRecord) {
        assert_eq!(serde_json::to_value(a).unwrap(), serde_json::to_value(b).unwrap());
        assert_eq!(a.text, b.text);
    }

    #[test]
    fn records_round_trip_through_the_spool_format() {
        let mut records = vec![full(), RequestRecord::default()];
        for kind in [
            ErrorKind::Connect,
            ErrorKind::Timeout,
            ErrorKind::Stream,
            ErrorKind::Decode,
            ErrorKind::Cancelled,
            ErrorKind::ConnectionReset,
            ErrorKind::Status(100),
            ErrorKind::Status(599),
        ] {
            records.push(RequestRecord { error: Some(kind), ..RequestRecord::default() });
        }
        for deadline in [Deadline::FirstToken, Deadline::Total, Deadline::StepTimeout] {
            records.push(RequestRecord { deadline: Some(deadline), ..RequestRecord::default() });
        }
        let mut bytes = Vec::new();
        for r in &records {
            encode(r, &mut bytes);
        }
        let mut at = 0;
        for r in &records {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            same(&decode(&bytes[at + 4..at + 4 + len]).unwrap(), r);
            at += 4 + len;
        }
        assert_eq!(at, bytes.len());
        // A typical streamed answer's record is far smaller than its JSON line.
        let mut one = Vec::new();
        let typical =
            RequestRecord { content_event_ns: (0..16).map(|i| 1_000_000_000 + i * 20_000).collect(), ..full() };
        encode(&typical, &mut one);
        assert!(one.len() * 3 < serde_json::to_vec(&typical).unwrap().len(), "{}", one.len());
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let mut bytes = Vec::new();
        encode(&full(), &mut bytes);
        let body = &bytes[4..];
        for cut in 0..body.len() {
            assert!(decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = body.to_vec();
        longer.push(0);
        assert_eq!(decode(&longer).unwrap_err(), "bytes after the record");
        assert!(decode(&[0xff; 11]).is_err());
    }

    #[test]
    fn a_spool_reads_back_what_was_pushed_and_is_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(Some(&dir.path().join("requests.jsonl"))).unwrap();
        for i in 0..3000 {
            spool.push(&RequestRecord { index: i, ..full() });
        }
        spool.finish().unwrap();
        let mut reader = spool.records().unwrap();
        for i in 0..3000 {
            same(&reader.next_record().unwrap().unwrap(), &RequestRecord { index: i, ..full() });
        }
        assert!(reader.next_record().unwrap().is_none());
        let path = spool.path.clone();
        assert!(path.file_name().unwrap().to_string_lossy().starts_with(SPOOL_PREFIX));
        drop(spool);
        assert!(!path.exists());
    }
}
