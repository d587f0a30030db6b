//! `--request-log`: one JSON line per request received — method, path, body, and the fault it drew —
//! so that a test checks that every value it set arrived, and that a request arrived exactly once.
//!
//! A request's fault is drawn while the log's lock is held, so the log's order is the order in which
//! the fault counters counted (docs/faults.md); each line is written and flushed whole, so a crash
//! fault's exit or a panic elsewhere never leaves half a line.

use std::fs::File;
use std::io::{self, BufWriter, Write as _};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use hyper::Method;
use serde_json::{Value, json};

use super::FaultKind;

pub(super) struct RequestLog {
    seq: u64,
    out: BufWriter<File>,
}

impl RequestLog {
    /// Opens `path` for appending.
    pub fn open(path: &Path) -> io::Result<Mutex<Self>> {
        let file = File::options().create(true).append(true).open(path)?;
        Ok(Mutex::new(RequestLog { seq: 0, out: BufWriter::new(file) }))
    }
}

/// Appends one request's line; `draw` decides its fault, under the lock.
pub(super) fn append(
    log: &Mutex<RequestLog>,
    method: &Method,
    path: &str,
    body: &[u8],
    draw: impl FnOnce() -> Option<FaultKind>,
) -> Option<FaultKind> {
    let body = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
    let fault = draw();
    let mut line = json!({"seq": log.seq, "method": method.as_str(), "path": path, "body": body});
    if let Some(fault) = fault {
        line["fault"] = fault.name().into();
    }
    log.seq += 1;
    let written = serde_json::to_writer(&mut log.out, &line)
        .map_err(io::Error::from)
        .and_then(|()| log.out.write_all(b"\n"))
        .and_then(|()| log.out.flush());
    if let Err(e) = written {
        tracing::warn!("cannot write the request log: {e}");
    }
    fault
}
