//! What a coordinator and its client shards say to each other: one JSON object per line over the
//! shard's stdin (coordinator → shard) and stdout (shard → coordinator).
//!
//! A pipe, not a socket: the shard is the coordinator's child, so the channel needs no port, no
//! address and no authentication, and it closes when either side dies — a shard whose stdin
//! closes stops at once, and a coordinator whose shard's stdout closes before `Done` knows that
//! shard is gone. The job carries the engine's headers (secrets among them): over the pipe they
//! reach only the child, never a file. The protocol lives as long as one cell, so it has no
//! version; shards run the coordinator's own binary.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::engine::client::Dial;
use crate::plan::RequestTemplate;

/// Coordinator → shard.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "msg")]
pub(crate) enum ToShard {
    /// What to send, once, first.
    Job(Box<Job>),
    /// A clock sample: the shard answers `Pong` at once.
    Ping { t0: i64 },
    /// Open the window when the shard's own clock reads `at` (ns since the Unix epoch); no
    /// request starts `cutoff_ns` after it (the step's cutoff).
    Start { at: i64, cutoff_ns: Option<u64> },
}

/// Shard → coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "msg")]
pub(crate) enum FromShard {
    /// The job is read, the client built and the spool open: ready for clock samples.
    /// `slurm_step` is `JOB.STEP` where Slurm started the shard as a job step.
    Ready {
        pid: u32,
        host: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slurm_step: Option<String>,
        /// `agent@host` of the agent that runs it, where it runs on another agent than its
        /// coordinator (that agent adds it as the line passes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
    },
    /// `t1` when the ping came, `t2` when the pong left, on the shard's clock.
    Pong { t0: i64, t1: i64, t2: i64 },
    /// Requests finished so far in its window, and how many of them failed (every 50 ms while
    /// it runs), for the progress display.
    Progress {
        done: u64,
        #[serde(default)]
        errors: u64,
    },
    /// The shard's window is over and its spool written.
    Done(Done),
    /// The shard could not do its job (its records are not to be used).
    Failed { error: String },
}

/// How a shard's window went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Done {
    /// Requests sent.
    pub(crate) sent: u64,
    /// The shard reached the step's cutoff before its own end.
    pub(crate) truncated: bool,
    /// The start instant it was told, and its clock when its window opened.
    pub(crate) announced: i64,
    pub(crate) opened: i64,
}

/// One shard's share of a cell.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) shard: u32,
    pub(crate) of: u32,
    pub(crate) dial: Dial,
    pub(crate) call: RequestTemplate,
    /// The cell's whole prompt pool, serialized bodies (request `i` sends `bodies[i % len]`).
    pub(crate) bodies: Vec<String>,
    pub(crate) lengths: Vec<u64>,
    pub(crate) sending: JobSending,
    /// Closed loop: the cell's request count (the shard sends its indices below it).
    pub(crate) limit: Option<u64>,
    /// Closed loop: how long after the start no request starts.
    pub(crate) duration_ns: Option<u64>,
    /// Per-request deadlines: first token, between events, total (ns).
    pub(crate) deadlines_ns: [u64; 3],
    pub(crate) keep_text: bool,
    pub(crate) expected_events: usize,
    /// Where the shard spools its records (the coordinator reads and removes the file).
    pub(crate) spool: std::path::PathBuf,
}

/// How one shard sends (see `load::Sending`); indices are `first + j·stride`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "loop")]
pub(crate) enum JobSending {
    Open { offsets: Vec<u64>, first: u64, stride: u64, max_in_flight: usize },
    Closed { workers: Vec<u64>, of: u64, ramp_ns: u64, first: u64, stride: u64 },
}

/// Writes `msg` as one line and flushes it.
pub(crate) async fn send<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

/// The next message; `None` when the other side closed the pipe.
pub(crate) async fn receive<R, T>(lines: &mut tokio::io::Lines<R>) -> std::io::Result<Option<T>>
where
    R: tokio::io::AsyncBufRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    match lines.next_line().await? {
        None => Ok(None),
        Some(line) => serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| std::io::Error::other(format!("an unreadable message ({e}): {}", excerpt(&line)))),
    }
}

fn excerpt(line: &str) -> &str {
    let end = line.char_indices().nth(120).map_or(line.len(), |(i, _)| i);
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt as _;

    #[tokio::test]
    async fn messages_cross_a_pipe_line_by_line() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (_, mut w) = tokio::io::split(a);
        let (r, _) = tokio::io::split(b);
        let mut lines = tokio::io::BufReader::new(r).lines();
        send(&mut w, &ToShard::Ping { t0: -5 }).await.unwrap();
        send(&mut w, &ToShard::Start { at: 1 << 62, cutoff_ns: None }).await.unwrap();
        assert!(matches!(receive(&mut lines).await.unwrap(), Some(ToShard::Ping { t0: -5 })));
        assert!(
            matches!(receive(&mut lines).await.unwrap(), Some(ToShard::Start { at, cutoff_ns: None }) if at == 1 << 62)
        );
        drop(w);
        assert!(receive::<_, ToShard>(&mut lines).await.unwrap().is_none());
    }

    #[test]
    fn a_dial_never_shows_header_values() {
        let dial = Dial {
            base_url: "http://h:1".into(),
            headers: vec![("Authorization".into(), "Bearer s3cret".into())],
            ca_file: None,
            insecure: false,
        };
        let shown = format!("{dial:?}");
        assert!(shown.contains("Authorization") && !shown.contains("s3cret"), "{shown}");
    }
}
