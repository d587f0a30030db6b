//! The load generator: sends a cell's requests under its profile and keeps one record per request.
//!
//! Owns the measured window and nothing around it: it never starts engines, writes files or
//! computes metrics (`metrics` does, from the records). Everything that costs time but is not the
//! engine's doing happens outside the window: prompts are built and sized with the engine's
//! tokenizer and every body is serialized to `Bytes` before the first request; tokens of the answers
//! are counted after the last one.
//!
//! The hot path is oha's (STYLE anchors): one pooled client, workers that each keep their own
//! records (no channel, no lock per request; merged and sorted by index at the end), a shared
//! atomic counter handing out request indices, and a body that is a refcount bump to send.
//! Arrivals are a [`Schedule`]: closed loops (synchronous, fixed concurrency) send when a worker is
//! free, so a request's scheduled time is its send time; open-loop profiles (constant, Poisson)
//! precompute every arrival and send at absolute times (`open_loop_run`).
//!
//! Cancellation drops every request in flight and returns `Cancelled`: a partial window is never
//! reported as a result.
//!
//! Token counts (DESIGN "Traps": usage is not always there, and a chunk is not a token): after the
//! window, every successful answer's text is counted with the engine's tokenizer when the engine has
//! one. That is the exact fallback where `usage` is missing, and a cross-check where it is not.

mod arrivals;
mod prompts;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::tokenizer::Tokenizer;
use crate::cancel::Cancel;
use crate::engine::client::{EngineClient, RequestRecord};
use crate::manifest::load::{ApiKind, LoadSpec, Profile};
use crate::plan::RequestTemplate;

/// Prompts built for a run bounded only by `duration`, per worker (at least `DURATION_POOL_MIN`);
/// beyond it, prompts are reused (with a warning).
const DURATION_POOL_PER_WORKER: u64 = 64;
const DURATION_POOL_MIN: u64 = 1024;
/// Most prompts built for one cell, whatever its request count.
const POOL_MAX: u64 = 50_000;
/// Tokenize calls in flight while counting answers after the window.
const COUNT_PARALLEL: usize = 16;

/// What one load run needs.
pub struct LoadInput {
    pub client: EngineClient,
    pub call: RequestTemplate,
    pub load: LoadSpec,
    /// Which placeholder the body has: `{{prompt}}` (completion) or `{{messages}}` (chat).
    pub api: ApiKind,
    /// The tokenizer prompts are sized and answers counted with (the engine's, or a local one).
    pub tokenize: Option<Tokenizer>,
    /// Prompt seed: a request's prompt depends only on `(seed, index)`.
    pub seed: u64,
    /// Completed requests, updated as they finish (for a progress display).
    pub progress: Arc<AtomicU64>,
    /// Output tokens each request must generate (`max_tokens` with `ignore_eos`), to flag early stops.
    pub expected_output_tokens: Option<u64>,
    pub cancel: Cancel,
}

/// A finished run: one record per request, sorted by index.
pub struct LoadOutcome {
    pub records: Vec<RequestRecord>,
    /// The measured window: first send → last end.
    pub window_ns: u64,
    /// Every prompt has exactly `input_tokens` tokens by the engine's tokenizer.
    pub prompts_exact: bool,
    /// The nominal requested prompt length, the mean of a distribution (for chat, of the user
    /// message's content: the engine's chat template adds its own tokens, which `usage` counts).
    pub input_tokens: u32,
    /// Arrivals followed a precomputed schedule (constant or Poisson), not free workers.
    pub open_loop: bool,
    /// The benchmark's SLOs, for goodput.
    pub slo: Option<crate::manifest::load::Slo>,
    /// Output tokens every request was asked to generate without stopping early (`ignore_eos`).
    pub expected_output_tokens: Option<u64>,
    /// Requests sent before the window by the benchmark's own `warmup` (not in `records`).
    pub warmup_requests: u64,
    /// Warmup analysis: how many first requests count as cold.
    pub cold_requests: Option<u64>,
}

/// In-flight limit of open-loop profiles when the benchmark sets no `max_concurrency`.
const DEFAULT_MAX_CONCURRENCY: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the load run was cancelled")]
    Cancelled,
    #[error("cannot build the prompts: {0}")]
    Prompt(String),
    #[error("{0}")]
    Unsupported(String),
}

/// Runs the load described by `input`; on cancellation every request in flight is dropped.
pub async fn run(input: LoadInput) -> Result<LoadOutcome, LoadError> {
    let cancel = input.cancel.clone();
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(LoadError::Cancelled),
        outcome = run_uncancelled(input) => outcome,
    }
}

/// Builds the body of one request: binds `{{prompt}}` (completion) or `{{messages}}` (chat, one
/// user message) in the call's body, serialized once.
pub fn body_for(call: &RequestTemplate, api: ApiKind, prompt: &str) -> Bytes {
    let var = match api {
        ApiKind::Completion => ("prompt", Value::String(prompt.to_string())),
        ApiKind::Chat => ("messages", json!([{"role": "user", "content": prompt}])),
    };
    Bytes::from(crate::template::bind_late(&call.body, &[var]).to_string())
}

async fn run_uncancelled(input: LoadInput) -> Result<LoadOutcome, LoadError> {
    let duration = input.load.duration.as_ref().map(|d| d.0);
    let max_open = input.load.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY).max(1) as usize;
    // Open loop: every arrival time is known before the window opens.
    let arrivals = match &input.load.profile {
        Profile::Stages(_) | Profile::Sweep { .. } => {
            return Err(LoadError::Unsupported("`stages` and `sweep` run stage by stage (see `run_stages`)".into()));
        }
        Profile::Synchronous | Profile::Concurrency(_) => None,
        &Profile::Constant(rate) => Some(arrivals::schedule(
            rate,
            arrivals::Spacing::Constant,
            input.seed,
            input.load.requests,
            duration.map(|d| d.as_nanos() as u64),
        )),
        &Profile::Poisson { rate, burstiness } => Some(arrivals::schedule(
            rate,
            arrivals::Spacing::Gamma(burstiness),
            input.seed,
            input.load.requests,
            duration.map(|d| d.as_nanos() as u64),
        )),
    };
    let workers = match input.load.profile {
        Profile::Synchronous => 1,
        Profile::Concurrency(n) => n.max(1) as usize,
        Profile::Constant(_) | Profile::Poisson { .. } | Profile::Stages(_) | Profile::Sweep { .. } => max_open,
    };
    let pool = match (&arrivals, input.load.requests, duration) {
        (Some(a), _, _) => (a.len() as u64).clamp(1, POOL_MAX),
        (None, Some(n), _) => n.clamp(1, POOL_MAX),
        (None, None, Some(_)) => (workers as u64 * DURATION_POOL_PER_WORKER).clamp(DURATION_POOL_MIN, POOL_MAX),
        (None, None, None) => {
            return Err(LoadError::Unsupported("a load needs `requests` or `duration` to stop".into()));
        }
    };

    let (prompts, input_tokens) =
        prompts::for_spec(&input.client, input.tokenize.as_ref(), input.seed, pool, &input.load.prompt)
            .await
            .map_err(LoadError::Prompt)?;
    let prompts_exact = input.tokenize.is_some() && prompts.iter().all(|p| p.exact);
    let bodies: Vec<Bytes> = prompts.iter().map(|p| body_for(&input.call, input.api, &p.text)).collect();
    let lengths: Vec<u64> = prompts.iter().map(|p| p.tokens).collect();
    drop(prompts);
    tracing::debug!(prompts = bodies.len(), exact = prompts_exact, "prompts built");

    let warmup_requests = match &input.load.warmup {
        Some(w) => warm_up(&input, w, workers.min(64)).await?,
        None => 0,
    };
    let origin = Instant::now();
    let shared = Arc::new(Shared {
        client: input.client.clone(),
        call: input.call,
        bodies,
        lengths,
        schedule: Schedule::closed(input.load.requests, duration.map(|d| origin + d)),
        origin,
        progress: input.progress,
    });
    let open_loop = arrivals.is_some();
    let mut records = match arrivals {
        Some(arrivals) => open_loop_run(Arc::clone(&shared), arrivals, workers).await?,
        None => {
            let mut set = JoinSet::new();
            let ramp = input.load.ramp.map(|r| r.0).unwrap_or_default();
            for w in 0..workers {
                // A ramp starts worker `w` at `w/workers` of it (absolute times, like arrivals).
                let start = origin + ramp.mul_f64(w as f64 / workers as f64);
                let shared = Arc::clone(&shared);
                let limit = input.load.requests;
                set.spawn(async move {
                    if start > Instant::now() {
                        wait_until(start).await;
                    }
                    worker(shared, limit, workers).await
                });
            }
            let mut records = Vec::new();
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok(mut mine) => records.append(&mut mine),
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => return Err(LoadError::Cancelled),
                }
            }
            records
        }
    };
    records.sort_unstable_by_key(|r| r.index);
    let first_send = records.iter().map(|r| r.sent_ns).min().unwrap_or(0);
    let last_end = records.iter().map(|r| r.end_ns).max().unwrap_or(0);
    if records.len() as u64 > pool {
        tracing::warn!(
            "{} requests reused {pool} prompts: an engine with a prefix cache may answer repeats faster",
            records.len()
        );
    }

    if let Some(t) = &input.tokenize {
        count_output(&input.client, t, &mut records).await;
    }
    Ok(LoadOutcome {
        records,
        window_ns: last_end.saturating_sub(first_send),
        prompts_exact,
        input_tokens,
        open_loop,
        slo: input.load.slo.clone(),
        expected_output_tokens: input.expected_output_tokens,
        warmup_requests,
        cold_requests: input.load.cold_requests,
    })
}

/// What every worker reads.
struct Shared {
    client: EngineClient,
    call: RequestTemplate,
    /// Serialized bodies, one per prompt; request `i` sends `bodies[i % len]`.
    bodies: Vec<Bytes>,
    /// Each prompt's length as built.
    lengths: Vec<u64>,
    schedule: Schedule,
    origin: Instant,
    progress: Arc<AtomicU64>,
}

/// When requests go out. Closed loop: a free worker takes the next index at once; no index after
/// the deadline or past the count.
struct Schedule {
    next: AtomicU64,
    limit: Option<u64>,
    deadline: Option<Instant>,
}

/// One request to send: its index and when it was meant to go (ns since the origin).
struct Ticket {
    index: u64,
    scheduled_ns: u64,
}

impl Schedule {
    fn closed(limit: Option<u64>, deadline: Option<Instant>) -> Self {
        Schedule { next: AtomicU64::new(0), limit, deadline }
    }

    fn next(&self, origin: Instant) -> Option<Ticket> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        if self.limit.is_some_and(|n| index >= n) {
            return None;
        }
        Some(Ticket { index, scheduled_ns: since(origin) })
    }
}

async fn worker(shared: Arc<Shared>, limit: Option<u64>, workers: usize) -> Vec<RequestRecord> {
    let capacity = limit.map_or(256, |n| n.div_ceil(workers as u64).min(4096) as usize);
    let mut records = Vec::with_capacity(capacity);
    while let Some(ticket) = shared.schedule.next(shared.origin) {
        // `bodies` is never empty (at least one prompt is built), so the slot is in range.
        let slot = (ticket.index % shared.bodies.len() as u64) as usize;
        let mut record = RequestRecord {
            index: ticket.index,
            scheduled_ns: ticket.scheduled_ns,
            input_tokens: shared.lengths[slot],
            ..RequestRecord::default()
        };
        let body = shared.bodies[slot].clone();
        shared.client.send(&shared.call, body, shared.origin, &mut record).await;
        record.shrink();
        shared.progress.fetch_add(1, Ordering::Relaxed);
        records.push(record);
    }
    records
}

/// The benchmark's own warmup: a closed loop over prompts of its own (another seed), before the
/// window; its records are dropped. Returns how many requests it sent.
async fn warm_up(input: &LoadInput, w: &crate::manifest::load::LoadWarmup, workers: usize) -> Result<u64, LoadError> {
    let pool = w.requests.unwrap_or(DURATION_POOL_MIN).clamp(1, POOL_MAX);
    let (prompts, _) =
        prompts::for_spec(&input.client, input.tokenize.as_ref(), input.seed ^ 0x5741_524d, pool, &input.load.prompt)
            .await
            .map_err(|e| LoadError::Prompt(format!("warmup: {e}")))?;
    let origin = Instant::now();
    let shared = Arc::new(Shared {
        client: input.client.clone(),
        call: input.call.clone(),
        bodies: prompts.iter().map(|p| body_for(&input.call, input.api, &p.text)).collect(),
        lengths: prompts.iter().map(|p| p.tokens).collect(),
        schedule: Schedule::closed(w.requests, w.duration.map(|d| origin + d.0)),
        origin,
        progress: Arc::new(AtomicU64::new(0)),
    });
    let mut set = JoinSet::new();
    for _ in 0..workers.max(1) {
        set.spawn(worker(Arc::clone(&shared), w.requests, workers.max(1)));
    }
    let mut sent = 0u64;
    while let Some(joined) = set.join_next().await {
        sent += joined.map_err(|_| LoadError::Cancelled)?.len() as u64;
    }
    Ok(sent)
}

/// Waits until `target` on an absolute clock: the timer for most of the way (it has millisecond
/// granularity), then yields until the instant, so arrivals are not late by a timer tick.
async fn wait_until(target: Instant) {
    const SPIN: Duration = Duration::from_micros(1500);
    loop {
        let now = Instant::now();
        if now >= target {
            return;
        }
        if target - now > SPIN {
            tokio::time::sleep_until((target - SPIN).into()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// Open loop: one dispatcher releases each request at its scheduled time, whatever is in flight;
/// each request then waits for one of `max_in_flight` slots (client queue time) and goes out.
/// The dispatcher never waits for a slot, so its lateness is pure schedule lag.
async fn open_loop_run(
    shared: Arc<Shared>,
    arrivals: Vec<u64>,
    max_in_flight: usize,
) -> Result<Vec<RequestRecord>, LoadError> {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let mut set = JoinSet::new();
    let mut records = Vec::with_capacity(arrivals.len());
    for (index, offset) in arrivals.into_iter().enumerate() {
        wait_until(shared.origin + Duration::from_nanos(offset)).await;
        let dispatched = since(shared.origin);
        let shared = Arc::clone(&shared);
        let slots = Arc::clone(&slots);
        set.spawn(async move {
            // The semaphore is never closed, so acquiring only waits.
            let permit = slots.acquire_owned().await.ok();
            let slot = index % shared.bodies.len();
            let mut record = RequestRecord {
                index: index as u64,
                scheduled_ns: offset,
                dispatched_ns: Some(dispatched),
                input_tokens: shared.lengths[slot],
                ..RequestRecord::default()
            };
            shared.client.send(&shared.call, shared.bodies[slot].clone(), shared.origin, &mut record).await;
            drop(permit);
            record.shrink();
            shared.progress.fetch_add(1, Ordering::Relaxed);
            record
        });
        // Collect what finished, so memory follows what is in flight, not the whole run.
        while let Some(done) = set.try_join_next() {
            records.push(done.map_err(|_| LoadError::Cancelled)?);
        }
    }
    while let Some(done) = set.join_next().await {
        match done {
            Ok(r) => records.push(r),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Err(LoadError::Cancelled),
        }
    }
    Ok(records)
}

/// Counts each successful answer's text with the engine's tokenizer (`counted_output_tokens`).
/// The count of an empty text is subtracted: tokenizers that add a BOS token add it to every text.
async fn count_output(client: &EngineClient, t: &Tokenizer, records: &mut [RequestRecord]) {
    let baseline = t.count(client, "").await.unwrap_or(0);
    // A plain loop over owned indices: combinator closures over borrowed records make the future
    // lose `Send` (rust-lang/rust#64552).
    let todo: Vec<usize> = (0..records.len()).filter(|&i| records[i].ok() && !records[i].text.is_empty()).collect();
    let mut counts = Vec::with_capacity(todo.len());
    let mut in_flight = FuturesUnordered::new();
    let mut next = 0;
    loop {
        while in_flight.len() < COUNT_PARALLEL && next < todo.len() {
            let i = todo[next];
            in_flight.push(count_one(client, t, i, &records[i].text));
            next += 1;
        }
        match in_flight.next().await {
            Some(done) => counts.push(done),
            None => break,
        }
    }
    drop(in_flight);
    let mut failed = 0usize;
    let mut example = None;
    for (i, count) in counts {
        match count {
            Ok(n) => records[i].counted_output_tokens = Some(n.saturating_sub(baseline)),
            Err(e) => {
                failed += 1;
                example.get_or_insert(e);
            }
        }
    }
    for r in records.iter_mut().filter(|r| r.ok() && r.text.is_empty()) {
        r.counted_output_tokens = Some(0);
    }
    if let Some(e) = example {
        tracing::warn!("could not count the output of {failed} requests with the engine's tokenizer: {e}");
    }
}

async fn count_one(client: &EngineClient, t: &Tokenizer, index: usize, text: &str) -> (usize, Result<u64, String>) {
    (index, t.count(client, text).await)
}

/// Nanoseconds since `origin`.
fn since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
