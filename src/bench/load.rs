//! The load generator: sends a cell's requests under its profile and keeps one record per request.
//!
//! Owns the measured window and nothing around it: it never starts engines, writes files or
//! computes metrics (`metrics` does, from the records). Everything that costs time but is not the
//! engine's doing happens outside the window: prompts are built and sized with the engine's
//! tokenizer and every body is serialized to `Bytes` before the first request; tokens of the answers
//! are counted after the last one.
//!
//! The hot path is oha's (STYLE anchors): one pooled client, a shared atomic counter handing out
//! request indices, and a body prepared before the window and sent as it is. A finished request is encoded into
//! a spool buffer (`spool`: written to disk in blocks), never kept: memory does not grow
//! with the request count. After the window the spool is read back once: answers are counted with
//! the tokenizer, each record is folded into the metrics' [`Tally`] and written to the cell's
//! `requests.jsonl` (in the order requests finished; `index` is the send order).
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
pub mod clients;
mod prompts;
mod spool;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::metrics::{Stat, Tally, TallyConfig};
use super::tokenizer::Tokenizer;
use crate::cancel::Cancel;
use crate::engine::client::{Deadlines, EngineClient, RequestRecord};
use crate::manifest::load::{ApiKind, LoadSpec, Profile};
use crate::plan::RequestTemplate;
pub use spool::SPOOL_PREFIX;
use spool::{SPOOL_BLOCK, Spool, SpoolReader};

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
    /// Failed requests, counted as they finish (for a progress display).
    pub errors: Arc<AtomicU64>,
    /// Output tokens each request must generate (`max_tokens` with `ignore_eos`), to flag early stops.
    pub expected_output_tokens: Option<u64>,
    pub cancel: Cancel,
    /// Where each request's record goes, one JSON line, appended (the stages of a staged benchmark
    /// share one file); `None`: records are only tallied.
    pub records: Option<PathBuf>,
    /// Added to every recorded index (a later stage's requests follow the earlier stages').
    pub index_offset: u64,
    /// Awaited once the prompts are built and sized and the benchmark's own warmup is done,
    /// right before the window opens: what measures alongside the window (resource sampling,
    /// the engine's counters) starts there, so none of that work leaks into it.
    pub window_opens: Option<WindowHook>,
    /// When the step must end (its `step_timeout`, less a margin to write what was measured): no
    /// request starts after it, and one still in flight is cut there (`cancelled`); the outcome
    /// is then `truncated`.
    pub cutoff: Option<Instant>,
    /// Send the window from several client processes (`benchmarks[].clients`); `None`: from
    /// this one.
    pub clients: Option<clients::Clients>,
}

/// See [`LoadInput::window_opens`].
pub type WindowHook = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// A finished run: its requests tallied (and written to `records`).
#[derive(Clone)]
pub struct LoadOutcome {
    pub tally: Tally,
    /// The measured window: first send → last end.
    pub window_ns: u64,
    /// Every prompt has exactly `input_tokens` tokens by the engine's tokenizer.
    pub prompts_exact: bool,
    /// The nominal requested prompt length, the mean of a distribution (for chat, of the user
    /// message's content: the engine's chat template adds its own tokens, which `usage` counts).
    pub input_tokens: u32,
    /// Arrivals followed a precomputed schedule (constant or Poisson), not free workers.
    pub open_loop: bool,
    /// Requests sent before the window by the benchmark's own `warmup` (not tallied).
    pub warmup_requests: u64,
    /// The file the records were appended to, if any.
    pub records: Option<PathBuf>,
    /// When the window opened (request stamps count from it).
    pub origin: Instant,
    /// The run reached its step's cutoff before its own end: its records are partial.
    pub truncated: bool,
    /// How the client shards of a cell sent it (`None`: one client, this process).
    pub clients: Option<clients::ClientsReport>,
}

impl LoadOutcome {
    /// Reads the records back from `records`, sorted by index (tests only: this is the one place a
    /// whole run's records are in memory).
    #[cfg(test)]
    pub(crate) fn read_records(&self) -> std::io::Result<Vec<RequestRecord>> {
        let Some(path) = &self.records else { return Ok(Vec::new()) };
        let mut records = Vec::new();
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(File::open(path)?).lines() {
            records.push(serde_json::from_str(&line?).map_err(std::io::Error::other)?);
        }
        records.sort_by_key(|r: &RequestRecord| r.index);
        Ok(records)
    }
}

/// In-flight limit of open-loop profiles when the benchmark sets no `max_concurrency`.
pub(crate) const DEFAULT_MAX_CONCURRENCY: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the load run was cancelled")]
    Cancelled,
    #[error("cannot build the prompts: {0}")]
    Prompt(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot keep the request records: {0}")]
    Records(String),
    /// A cell's client shards could not send it (names the shard).
    #[error("{0}")]
    Clients(String),
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

/// What is fixed before the window opens: the arrivals (open loop), the workers, and the prompt
/// pool with every body serialized. Built once per cell, whichever number of clients sends it.
pub(super) struct Prepared {
    /// Open loop: every arrival's offset from the origin, in request order.
    arrivals: Option<Vec<u64>>,
    /// Closed loop: the workers; open loop: the most requests in flight.
    workers: usize,
    /// Serialized bodies, one per prompt slot; request `i` sends `bodies[i % len]`.
    bodies: Vec<Bytes>,
    /// Each prompt's length as built.
    lengths: Vec<u64>,
    prompts_exact: bool,
    input_tokens: u32,
}

/// Arrivals, workers and the prompt pool of `input`: one tokenizer pass, before any window.
async fn prepare(input: &LoadInput) -> Result<Prepared, LoadError> {
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
    Ok(Prepared { arrivals, workers, bodies, lengths, prompts_exact, input_tokens })
}

async fn run_uncancelled(mut input: LoadInput) -> Result<LoadOutcome, LoadError> {
    let prepared = prepare(&input).await?;
    let workers = prepared.workers;
    let warmup_requests = match &input.load.warmup {
        Some(w) => warm_up(&input, w, workers.min(64)).await?,
        None => 0,
    };
    if let Some(clients) = input.clients.take() {
        return clients::run(input, prepared, clients, warmup_requests).await;
    }
    let duration = input.load.duration.as_ref().map(|d| d.0);
    let Prepared { arrivals, bodies, lengths, prompts_exact, input_tokens, .. } = prepared;
    let pool = bodies.len() as u64;
    let mut deadlines: Deadlines = input.load.request_timeout.unwrap_or_default().into();
    deadlines.step_cutoff = input.cutoff;
    input.client.size_for(workers);
    if let Some(opens) = &input.window_opens {
        opens().await;
    }
    let origin = Instant::now();
    let keep_text = input.tokenize.is_some();
    let spool = Arc::new(Spool::create(input.records.as_deref())?);
    let shared = Arc::new(Shared {
        client: input.client.clone(),
        call: input.call.clone(),
        bodies,
        lengths,
        schedule: Schedule::closed(
            input.load.requests,
            earliest_instant(duration.map(|d| origin + d), input.cutoff),
            Deal::ALL,
        ),
        origin,
        progress: Arc::clone(&input.progress),
        errors: Arc::clone(&input.errors),
        spool: Some(Arc::clone(&spool)),
        keep_text,
        expected_events: expected_events(input.expected_output_tokens),
        deadlines,
    });
    let open_loop = arrivals.is_some();
    let sending = match arrivals {
        Some(offsets) => Sending::Open { offsets, deal: Deal::ALL, max_in_flight: workers },
        None => Sending::Closed {
            workers: (0..workers as u64).collect(),
            of: workers as u64,
            ramp: input.load.ramp.map(|r| r.0).unwrap_or_default(),
        },
    };
    let sent = send(Arc::clone(&shared), sending, input.cutoff).await?;
    drop(shared);
    warn_reused(sent, pool);

    let (settle, config) = Settle::of(&input);
    let truncated = input.cutoff.is_some_and(|c| Instant::now() >= c);
    spool.finish().map_err(|e| LoadError::Records(format!("{}: {e}", spool.path.display())))?;
    let reader = spool.records().map_err(|e| LoadError::Records(e.to_string()))?;
    let (tally, _) = settle.run(vec![reader], config).await?;
    Ok(LoadOutcome {
        truncated,
        window_ns: tally.window_ns(),
        tally,
        prompts_exact,
        input_tokens,
        open_loop,
        warmup_requests,
        records: input.records,
        origin,
        clients: None,
    })
}

/// How one client sends its share of a cell (all of it, with one client).
pub(super) enum Sending {
    /// Open loop: this client's arrivals (offsets from the origin, in order), the request
    /// indices they carry, and its in-flight limit.
    Open { offsets: Vec<u64>, deal: Deal, max_in_flight: usize },
    /// Closed loop: this client's workers by their cell-wide number (`of` in all), for the ramp;
    /// they take indices from the schedule.
    Closed { workers: Vec<u64>, of: u64, ramp: Duration },
}

/// Which request indices one client sends: `first`, `first + stride`, … (round-robin dealing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Deal {
    pub(super) first: u64,
    pub(super) stride: u64,
}

impl Deal {
    /// Every index: one client.
    const ALL: Deal = Deal { first: 0, stride: 1 };

    fn index(self, j: u64) -> u64 {
        self.first + j * self.stride
    }
}

/// Sends `sending` from `shared`; returns how many requests went out.
async fn send(shared: Arc<Shared>, sending: Sending, cutoff: Option<Instant>) -> Result<u64, LoadError> {
    match sending {
        Sending::Open { offsets, deal, max_in_flight } => {
            open_loop_run(shared, offsets, deal, max_in_flight, cutoff).await
        }
        Sending::Closed { workers, of, ramp } => {
            let mut set = JoinSet::new();
            for w in workers {
                // A ramp starts worker `w` at `w/of` of it (absolute times, like arrivals).
                let start = shared.origin + ramp.mul_f64(w as f64 / of.max(1) as f64);
                let shared = Arc::clone(&shared);
                set.spawn(async move {
                    if start > Instant::now() {
                        wait_until(start).await;
                    }
                    worker(shared).await
                });
            }
            let mut sent = 0;
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok(n) => sent += n,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => return Err(LoadError::Cancelled),
                }
            }
            Ok(sent)
        }
    }
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
    errors: Arc<AtomicU64>,
    /// Where finished records go; `None`: they are dropped (a warmup).
    spool: Option<Arc<Spool>>,
    /// Whether records keep their answer's text (for the tokenizer after the window).
    keep_text: bool,
    /// Content events a request is expected to bring (its output tokens, capped), to size its list.
    expected_events: usize,
    /// Every request's deadlines.
    deadlines: Deadlines,
}

impl Shared {
    /// A record to fill: room for the expected events up front, and no text gathered when no
    /// tokenizer will count it.
    fn blank(&self) -> RequestRecord {
        RequestRecord {
            content_event_ns: Vec::with_capacity(self.expected_events),
            skip_text: !self.keep_text,
            ..RequestRecord::default()
        }
    }

    fn done(&self, mut record: RequestRecord) {
        self.progress.fetch_add(1, Ordering::Relaxed);
        if record.error.is_some() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(spool) = &self.spool {
            if !self.keep_text {
                record.text = String::new();
            }
            spool.push(&record);
        }
    }
}

/// When requests go out. Closed loop: a free worker takes the next index at once; no index after
/// the deadline or past the count.
struct Schedule {
    next: AtomicU64,
    limit: Option<u64>,
    deadline: Option<Instant>,
    /// Which indices this client takes (with several clients, every `stride`-th).
    deal: Deal,
}

/// One request to send: its index and when it was meant to go (ns since the origin).
struct Ticket {
    index: u64,
    scheduled_ns: u64,
}

impl Schedule {
    fn closed(limit: Option<u64>, deadline: Option<Instant>, deal: Deal) -> Self {
        Schedule { next: AtomicU64::new(0), limit, deadline, deal }
    }

    fn next(&self, origin: Instant) -> Option<Ticket> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let index = self.deal.index(self.next.fetch_add(1, Ordering::Relaxed));
        if self.limit.is_some_and(|n| index >= n) {
            return None;
        }
        Some(Ticket { index, scheduled_ns: since(origin) })
    }
}

/// Runs closed-loop requests until the schedule says stop; returns how many it sent.
async fn worker(shared: Arc<Shared>) -> u64 {
    let mut sent = 0;
    while let Some(ticket) = shared.schedule.next(shared.origin) {
        // `bodies` is never empty (at least one prompt is built), so the slot is in range.
        let slot = (ticket.index % shared.bodies.len() as u64) as usize;
        let mut record = RequestRecord {
            index: ticket.index,
            scheduled_ns: ticket.scheduled_ns,
            input_tokens: shared.lengths[slot],
            ..shared.blank()
        };
        let body = &shared.bodies[slot];
        shared.client.send_within(&shared.call, body, shared.origin, &shared.deadlines, &mut record).await;
        shared.done(record);
        sent += 1;
    }
    sent
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
        schedule: Schedule::closed(w.requests, w.duration.map(|d| origin + d.0), Deal::ALL),
        origin,
        progress: Arc::new(AtomicU64::new(0)),
        errors: Arc::new(AtomicU64::new(0)),
        spool: None,
        keep_text: false,
        expected_events: expected_events(input.expected_output_tokens),
        deadlines: input.load.request_timeout.unwrap_or_default().into(),
    });
    let mut set = JoinSet::new();
    for _ in 0..workers.max(1) {
        set.spawn(worker(Arc::clone(&shared)));
    }
    let mut sent = 0u64;
    while let Some(joined) = set.join_next().await {
        sent += joined.map_err(|_| LoadError::Cancelled)?;
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
/// The dispatcher never waits for a slot, so its lateness is pure schedule lag. Returns how many
/// requests it sent.
async fn open_loop_run(
    shared: Arc<Shared>,
    arrivals: Vec<u64>,
    deal: Deal,
    max_in_flight: usize,
    cutoff: Option<Instant>,
) -> Result<u64, LoadError> {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let mut set = JoinSet::new();
    let mut sent = 0;
    for (j, offset) in arrivals.into_iter().enumerate() {
        let index = deal.index(j as u64);
        let due = shared.origin + Duration::from_nanos(offset);
        if cutoff.is_some_and(|c| due >= c) {
            break;
        }
        sent += 1;
        wait_until(due).await;
        let dispatched = since(shared.origin);
        let shared = Arc::clone(&shared);
        let slots = Arc::clone(&slots);
        set.spawn(async move {
            // The semaphore is never closed, so acquiring only waits.
            let permit = slots.acquire_owned().await.ok();
            let slot = (index % shared.bodies.len() as u64) as usize;
            let mut record = RequestRecord {
                index,
                scheduled_ns: offset,
                dispatched_ns: Some(dispatched),
                input_tokens: shared.lengths[slot],
                ..shared.blank()
            };
            let body = &shared.bodies[slot];
            shared.client.send_within(&shared.call, body, shared.origin, &shared.deadlines, &mut record).await;
            drop(permit);
            shared.done(record);
        });
        // Reap what finished, so memory follows what is in flight, not the whole run.
        while let Some(done) = set.try_join_next() {
            done.map_err(|_| LoadError::Cancelled)?;
        }
    }
    while let Some(done) = set.join_next().await {
        match done {
            Ok(()) => {}
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Err(LoadError::Cancelled),
        }
    }
    Ok(sent)
}

/// Says when a load sent more requests than it had prompts.
fn warn_reused(sent: u64, pool: u64) {
    if sent > pool {
        tracing::warn!(
            "{sent} requests reused {pool} prompts: an engine with a prefix cache may answer repeats faster"
        );
    }
}

/// After the window: every spooled record, its answer counted with the tokenizer, tallied and
/// appended to the records file.
struct Settle<'a> {
    /// The tokenizer answers are counted with, and the engine's client it may call.
    tokenize: Option<(&'a Tokenizer, &'a EngineClient)>,
    out: Option<&'a Path>,
    index_offset: u64,
}

impl<'a> Settle<'a> {
    /// How `input`'s load settles, and the tally's configuration.
    fn of(input: &'a LoadInput) -> (Settle<'a>, TallyConfig) {
        let config = TallyConfig {
            slo: input.load.slo.clone(),
            expected_output_tokens: input.expected_output_tokens,
            cold_requests: input.load.cold_requests,
        };
        let settle = Settle {
            tokenize: input.tokenize.as_ref().map(|t| (t, &input.client)),
            out: input.records.as_deref(),
            index_offset: input.index_offset,
        };
        (settle, config)
    }

    /// Reads every source to its end, one after another (a cell's client shards in shard order),
    /// counting, tallying and writing each record; returns the tally of their union and, per
    /// source, the schedule lag of its open-loop requests (dispatch − scheduled time).
    async fn run(&self, sources: Vec<SpoolReader>, config: TallyConfig) -> Result<(Tally, Vec<Stat>), LoadError> {
        let io = |e: std::io::Error| LoadError::Records(e.to_string());
        let mut out = match self.out {
            Some(path) => Some(BufWriter::with_capacity(
                SPOOL_BLOCK,
                File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| LoadError::Records(format!("{}: {e}", path.display())))?,
            )),
            None => None,
        };
        let mut tally = Tally::new(config);
        let mut lags: Vec<Stat> = sources.iter().map(|_| Stat::default()).collect();
        let mut keep = |source: usize, mut r: RequestRecord| -> Result<(), LoadError> {
            r.index += self.index_offset;
            r.text = String::new();
            tally.add(&r);
            if let Some(d) = r.dispatched_ns {
                lags[source].add(d.saturating_sub(r.scheduled_ns) as f64);
            }
            if let Some(w) = out.as_mut() {
                serde_json::to_writer(&mut *w, &r).map_err(|e| LoadError::Records(e.to_string()))?;
                w.write_all(b"\n").map_err(io)?;
            }
            Ok(())
        };
        let baseline = match self.tokenize {
            Some((t, client)) => t.count(client, "").await.unwrap_or(0),
            None => 0,
        };
        let mut in_flight = FuturesUnordered::new();
        let mut failed = 0usize;
        let mut example = None;
        let mut sources = sources.into_iter().enumerate().peekable();
        while sources.peek().is_some() || !in_flight.is_empty() {
            while in_flight.len() < COUNT_PARALLEL {
                let Some((source, reader)) = sources.peek_mut() else { break };
                let source = *source;
                let Some(mut r) = reader.next_record().map_err(|e| LoadError::Records(format!("spool: {e}")))? else {
                    sources.next();
                    continue;
                };
                match self.tokenize {
                    Some((t, client)) if r.ok() && !r.text.is_empty() => {
                        in_flight.push(count_one(client, t, source, r))
                    }
                    Some(_) if r.ok() => {
                        r.counted_output_tokens = Some(0);
                        keep(source, r)?;
                    }
                    _ => keep(source, r)?,
                }
            }
            if let Some((source, mut r, count)) = in_flight.next().await {
                match count {
                    Ok(n) => r.counted_output_tokens = Some(n.saturating_sub(baseline)),
                    Err(e) => {
                        failed += 1;
                        example.get_or_insert(e);
                    }
                }
                keep(source, r)?;
            }
        }
        if let Some(mut w) = out {
            w.flush().map_err(io)?;
            w.get_ref().sync_all().map_err(io)?;
        }
        if let Some(e) = example {
            tracing::warn!("could not count the output of {failed} requests with the engine's tokenizer: {e}");
        }
        Ok((tally, lags))
    }
}

/// Counts one answer's text (`counted_output_tokens`, before the empty text's count is taken off:
/// tokenizers that add a BOS token add it to every text).
async fn count_one(
    client: &EngineClient,
    t: &Tokenizer,
    source: usize,
    record: RequestRecord,
) -> (usize, RequestRecord, Result<u64, String>) {
    let count = t.count(client, &record.text).await;
    (source, record, count)
}

/// Room for the content events of one answer: its expected output tokens, within bounds.
fn expected_events(output_tokens: Option<u64>) -> usize {
    output_tokens.unwrap_or(16).clamp(1, 4096) as usize
}

/// The earlier of two optional instants.
fn earliest_instant(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    a.into_iter().chain(b).min()
}

/// Nanoseconds since `origin`.
fn since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
