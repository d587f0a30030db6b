//! `run`: send a prepared eval's items through the executor's `generate`, checkpointing as it
//! goes, and score it.
//!
//! The loop drives at most `concurrency` generate futures on the caller's task (no spawning, so
//! the callback may borrow the executor's client and need not be `Send`). Every
//! `checkpoint_every` answers the checkpoint is rewritten atomically; on cancel the in-flight
//! requests are dropped (their items are sent again on resume), the checkpoint is written, and the
//! outcome is `Interrupted`. Resuming reads the checkpoint, sends only what is missing, and
//! scores all items in order: the same numbers as an uninterrupted run.
//!
//! Only answers are final. A failed generation is kept in the checkpoint as a failure, for the
//! record, but the next attempt (a step retry, or `kitt apply` resuming the run) asks that item
//! again: after an engine crash the eval ends with the score a clean run gets, not with the
//! crash's errors frozen in. Within one attempt nothing is retried (a measuring step never
//! retries requests); the failures of the last attempt are what the result counts.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};

use super::dataset::fetch::write_atomic;
use super::error::EvalError;
use super::prepare::Prepared;
use super::prompt::Prompt;
use super::score::{Done, EvalResult, Failure, ItemRecord, Verdict, judge, score};
use crate::cancel::Cancel;

/// One generation request, for the executor to send through the engine's completion or chat
/// call (as `prompt` / `messages`, with these sampling values and never `ignore_eos`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    /// The item's position in `Prepared::items`.
    pub index: usize,
    pub id: String,
    pub prompt: Prompt,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// Where the run stands, after each answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Items with an outcome: answered (including those read from the checkpoint) or failed in
    /// this attempt.
    pub done: usize,
    pub total: usize,
    pub correct: usize,
    /// Generations that failed in this attempt.
    pub errors: usize,
    /// Answers taken from the checkpoint.
    pub resumed: usize,
    /// Items the checkpoint had as failed, asked again in this attempt.
    pub retried: usize,
}

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    /// Requests in flight (at least 1).
    pub concurrency: usize,
    /// The checkpoint file (read on start if present, rewritten as the run goes).
    pub checkpoint: PathBuf,
    /// Rewrite the checkpoint after this many answers (at least 1; default 50).
    pub checkpoint_every: usize,
    pub cancel: Cancel,
}

impl RunOptions {
    pub fn new(checkpoint: impl Into<PathBuf>, concurrency: usize, cancel: Cancel) -> RunOptions {
        RunOptions { concurrency, checkpoint: checkpoint.into(), checkpoint_every: 50, cancel }
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum EvalOutcome {
    /// Every item has an outcome (an answer, or a failure of this attempt): the score and one
    /// record per item (for items.jsonl). `resumed` answers came from the checkpoint; `retried`
    /// items had failed in an earlier attempt and were asked again.
    Finished { result: Box<EvalResult>, items: Vec<ItemRecord>, resumed: usize, retried: usize },
    /// Cancelled; the checkpoint holds `done` of `total` answers and the next run resumes there.
    Interrupted { done: usize, total: usize },
}

/// Runs `prepared` (see the module docs). `generate` turns a request into the model's text or an
/// error; `progress` is called after each answer.
pub async fn run<G, F, E>(
    prepared: &Prepared,
    generate: G,
    opts: &RunOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<EvalOutcome, EvalError>
where
    G: Fn(Request) -> F,
    F: Future<Output = Result<String, E>>,
    E: Into<Failure>,
{
    let total = prepared.items.len();
    let (mut done, retried) = read_checkpoint(&opts.checkpoint, prepared)?;
    let resumed = done.iter().flatten().count();
    let mut state = Progress { done: resumed, total, correct: 0, errors: 0, resumed, retried };
    for (i, d) in done.iter().enumerate() {
        if let Some(d) = d {
            tally(&mut state, judge(prepared, i, d).1);
        }
    }
    if resumed > 0 || retried > 0 {
        tracing::info!(resumed, retried, total, "eval resumes from its checkpoint; failed items are asked again");
        progress(&state);
    }
    let mut pending: VecDeque<usize> = (0..total).filter(|&i| done[i].is_none()).collect();
    let generate = &generate;
    let spec = &prepared.spec.generation;
    let mut in_flight = FuturesUnordered::new();
    let mut unsaved = 0usize;
    let every = opts.checkpoint_every.max(1);
    let cancel = &opts.cancel;
    loop {
        while in_flight.len() < opts.concurrency.max(1) && !cancel.is_cancelled() {
            let Some(i) = pending.pop_front() else { break };
            let item = &prepared.items[i];
            let req = Request {
                index: i,
                id: item.id.clone(),
                prompt: item.prompt.clone(),
                max_tokens: spec.max_tokens,
                temperature: spec.temperature,
                stop: spec.stop.clone(),
            };
            in_flight.push(async move { (i, generate(req).await) });
        }
        if in_flight.is_empty() || cancel.is_cancelled() {
            break;
        }
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            next = in_flight.next() => next,
        };
        let Some((i, answer)) = next else { break };
        if cancel.is_cancelled() && answer.is_err() {
            break; // an error caused by the cancel itself is not the item's answer
        }
        let d: Done = answer.map_err(Into::into);
        tally(&mut state, judge(prepared, i, &d).1);
        state.done += 1;
        done[i] = Some(d);
        progress(&state);
        unsaved += 1;
        if unsaved >= every {
            write_checkpoint(&opts.checkpoint, prepared, &done)?;
            unsaved = 0;
        }
    }
    drop(in_flight);
    write_checkpoint(&opts.checkpoint, prepared, &done)?;
    if state.done < total {
        tracing::info!(done = state.done, total, "eval interrupted; the checkpoint keeps the answers");
        return Ok(EvalOutcome::Interrupted { done: state.done, total });
    }
    let done: Vec<Done> = done.into_iter().flatten().collect();
    let (result, items) = score(prepared, &done)?;
    Ok(EvalOutcome::Finished { result: Box::new(result), items, resumed, retried })
}

fn tally(p: &mut Progress, v: Verdict) {
    match v {
        Verdict::Correct => p.correct += 1,
        Verdict::Error => p.errors += 1,
        _ => {}
    }
}

/// The checkpoint file: the outcomes so far, for one prepared eval.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    format: u32,
    fingerprint: String,
    items: usize,
    done: Vec<Entry>,
}

/// One item's outcome: `raw` (an answer, final) or `error` (a failure, asked again on resume).
/// Format 1 wrote failures the same way, so older checkpoints resume the same.
#[derive(Serialize, Deserialize)]
struct Entry {
    index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
}

const CHECKPOINT_FORMAT: u32 = 1;

/// The answers a checkpoint holds, by item index (none when there is no checkpoint yet), and how
/// many items it had as failed: those stay unanswered, to be asked again.
fn read_checkpoint(path: &Path, prepared: &Prepared) -> Result<(Vec<Option<Done>>, usize), EvalError> {
    let mut out = vec![None; prepared.items.len()];
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((out, 0)),
        Err(e) => return Err(EvalError::io(path, e)),
    };
    let bad = |reason: String| EvalError::Checkpoint { path: path.to_path_buf(), reason };
    let c: Checkpoint = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("unreadable ({e}); delete it to start the eval over")))?;
    if c.format != CHECKPOINT_FORMAT {
        return Err(bad(format!("format {} is not {CHECKPOINT_FORMAT}; delete it to start the eval over", c.format)));
    }
    if c.fingerprint != prepared.fingerprint || c.items != prepared.items.len() {
        return Err(bad(format!(
            "it was written for another eval ({} items, fingerprint {}…), this one has {} items (fingerprint {}…): \
             the dataset, the spec or the prompts changed; delete it to start the eval over",
            c.items,
            c.fingerprint.get(..12).unwrap_or(&c.fingerprint),
            prepared.items.len(),
            prepared.fingerprint.get(..12).unwrap_or(&prepared.fingerprint),
        )));
    }
    let mut failed = 0;
    for e in c.done {
        let slot = out.get_mut(e.index).ok_or_else(|| bad(format!("item index {} out of range", e.index)))?;
        match e.raw {
            Some(raw) => *slot = Some(Ok(raw)),
            None => failed += 1,
        }
    }
    Ok((out, failed))
}

fn write_checkpoint(path: &Path, prepared: &Prepared, done: &[Option<Done>]) -> Result<(), EvalError> {
    let entry = |index: usize, d: &Done| match d {
        Ok(raw) => Entry { index, raw: Some(raw.clone()), error: None, kind: None },
        Err(f) => Entry { index, raw: None, error: Some(f.detail.clone()), kind: Some(f.kind.clone()) },
    };
    let c = Checkpoint {
        format: CHECKPOINT_FORMAT,
        fingerprint: prepared.fingerprint.clone(),
        items: prepared.items.len(),
        done: done.iter().enumerate().filter_map(|(index, d)| d.as_ref().map(|d| entry(index, d))).collect(),
    };
    let bytes = serde_json::to_vec(&c).map_err(|e| EvalError::io(path, e))?;
    write_atomic(path, &bytes)
}
