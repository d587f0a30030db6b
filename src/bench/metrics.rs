//! Metrics of a load run, derived from its request records and nothing else.
//!
//! Owns the formulas. Peer tools give one name to different quantities (peers.md §2: GuideLLM's
//! "TPOT" includes the first token, vLLM's "ITL" pools every chunk gap), so each field documents
//! exactly what it measures. Only successful requests enter latencies and token counts; every
//! request enters the error counts. Reasoning is not content (DESIGN decision 9): TTFT is the
//! first content event; the first reasoning event has its own metric.
//!
//! Records are folded in one at a time ([`Tally`]), so a run's memory does not grow with its
//! request count. Percentiles come from an HDR histogram (nanoseconds, 3 significant digits, so
//! within 0.1 %); count, mean, min and max are exact, the standard deviation is Welford's running
//! one (exact up to floating-point rounding).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::load::LoadOutcome;
use crate::engine::client::RequestRecord;

/// Significant digits the percentile histograms keep.
const SIGFIG: u8 = 3;

/// A summary of samples; latencies are in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Distribution {
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// Population standard deviation (divides by `count`).
    pub stddev: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p99_9: f64,
    /// Samples that are only lower bounds: requests cut at a deadline (error `timeout`), entered
    /// at the time they were cut. Absent when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub censored: Option<Censored>,
}

/// The censored share of a distribution: a request cut at its deadline would have taken at least
/// as long as it had run, so it enters the distribution at that time, marked. A percentile at or
/// above the smallest censored sample is only a lower bound (shown as `≥ value`); one below it is
/// exact, since every censored request lies above it whatever its true value. With any censored
/// sample the mean and maximum are lower bounds too.
#[derive(Debug, Clone, Serialize)]
pub struct Censored {
    pub count: u64,
    /// The smallest censored sample, in milliseconds.
    pub from_ms: f64,
    /// The percentiles that are only lower bounds (`p90`, `p99`, …).
    pub lower_bounds: Vec<&'static str>,
}

impl Distribution {
    /// Whether percentile `name` (`p50`, `p99_9`, …) is only a lower bound.
    pub fn is_lower_bound(&self, name: &str) -> bool {
        self.censored.as_ref().is_some_and(|c| c.lower_bounds.contains(&name))
    }

    /// `value` of percentile `name` as text with `decimals`, prefixed `≥ ` where it is only a
    /// lower bound.
    pub fn show(&self, name: &str, value: f64, decimals: usize) -> String {
        let bound = if self.is_lower_bound(name) { "≥ " } else { "" };
        format!("{bound}{value:.decimals$}")
    }

    /// Summarizes samples in nanoseconds, reported in milliseconds; `None` without samples.
    #[cfg(test)]
    pub(crate) fn of_ns(samples: &[f64]) -> Option<Self> {
        let mut stat = Stat::default();
        samples.iter().for_each(|s| stat.add(*s));
        stat.summary()
    }
}

/// A running summary of samples in nanoseconds: count, mean and extremes exact, variance by
/// Welford's update (weighted, mergeable), percentiles from an HDR histogram. Its memory does not
/// grow with the number of samples.
#[derive(Debug, Clone)]
pub(crate) struct Stat {
    n: u64,
    /// Σ value × weight, for the reported mean.
    sum: f64,
    /// Running mean and sum of squared deviations (Welford).
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
    hist: Histogram<u64>,
    /// Censored samples (lower bounds) among `n`, and the smallest of them.
    censored: u64,
    censored_min: f64,
}

impl Default for Stat {
    fn default() -> Self {
        Stat {
            n: 0,
            sum: 0.0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            censored: 0,
            censored_min: f64::INFINITY,
            // `new` histograms grow to fit whatever is recorded.
            hist: Histogram::new(SIGFIG).expect("3 significant digits is a valid precision"),
        }
    }
}

impl Stat {
    pub(crate) fn add(&mut self, v: f64) {
        self.add_n(v, 1);
    }

    /// Adds `v` as a lower bound: a request cut at a deadline after running this long.
    pub(crate) fn add_censored(&mut self, v: f64) {
        self.add_n(v, 1);
        self.censored += 1;
        self.censored_min = self.censored_min.min(v);
    }

    /// Adds `v` counted `w` times. The histogram takes `max(v, 0)` (it holds no negatives); the
    /// exact statistics take `v`.
    pub(crate) fn add_n(&mut self, v: f64, w: u64) {
        if w == 0 {
            return;
        }
        self.n += w;
        self.sum += v * w as f64;
        let delta = v - self.mean;
        self.mean += delta * w as f64 / self.n as f64;
        self.m2 += delta * (v - self.mean) * w as f64;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        let ns = v.max(0.0).round() as u64;
        if self.hist.record_n(ns, w).is_err() {
            self.hist.saturating_record_n(ns, w);
        }
    }

    /// Folds `other` in (Chan et al.'s pairwise update).
    pub(crate) fn merge(&mut self, other: &Stat) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = other.clone();
            return;
        }
        let (a, b) = (self.n as f64, other.n as f64);
        let delta = other.mean - self.mean;
        self.mean += delta * b / (a + b);
        self.m2 += other.m2 + delta * delta * a * b / (a + b);
        self.n += other.n;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.censored += other.censored;
        self.censored_min = self.censored_min.min(other.censored_min);
        // Both histograms resize to fit, so adding cannot fail for want of range.
        let _ = self.hist.add(&other.hist);
    }

    pub(crate) fn summary(&self) -> Option<Distribution> {
        if self.n == 0 {
            return None;
        }
        const MS: f64 = 1e6;
        let q = |quantile: f64| self.hist.value_at_quantile(quantile) as f64 / MS;
        let censored = (self.censored > 0).then(|| {
            // Compared in the histogram's own units, so a percentile that lands in the censored
            // sample's bucket counts as a bound.
            let from = self.hist.lowest_equivalent(self.censored_min.max(0.0).round() as u64);
            let lower_bounds = [(0.50, "p50"), (0.90, "p90"), (0.95, "p95"), (0.99, "p99"), (0.999, "p99_9")]
                .into_iter()
                .filter(|(quantile, _)| self.hist.value_at_quantile(*quantile) >= from)
                .map(|(_, name)| name)
                .collect();
            Censored { count: self.censored, from_ms: self.censored_min / MS, lower_bounds }
        });
        Some(Distribution {
            censored,
            count: self.n,
            mean: self.sum / self.n as f64 / MS,
            min: self.min / MS,
            max: self.max / MS,
            stddev: (self.m2 / self.n as f64).max(0.0).sqrt() / MS,
            p50: q(0.50),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            p99_9: q(0.999),
        })
    }
}

/// Token totals over the successful requests, by each way of counting them.
#[derive(Debug, Clone, Serialize)]
pub struct TokenCounts {
    /// Sum over requests of the best count each has: output — the engine's `usage`, else the
    /// tokenizer's count of the text, else content events; input — `usage`, else the prompt's
    /// length as built.
    pub total: u64,
    /// `total` / successful requests.
    pub mean: f64,
    /// Sum of the engine's `usage` counts, when every successful request had one.
    pub usage_total: Option<u64>,
    /// Sum of the tokenizer's counts, when every successful request had one (input: when every
    /// prompt was sized exactly with the engine's tokenizer).
    pub counted_total: Option<u64>,
    /// Sum of content events (a chunk may carry several tokens); 0 for input.
    pub events_total: u64,
    /// Where `total` comes from: `usage`, `tokenizer`, `events` (output), `words` (input sized
    /// without a tokenizer), `mixed` (requests differ) or `none` (no successful request).
    pub source: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadMetrics {
    /// Requests sent in the window.
    pub requests: u64,
    /// Requests of the benchmark's own warmup, before the window and excluded from everything else.
    pub warmup_requests: u64,
    /// Requests that completed without error.
    pub ok: u64,
    pub errors: u64,
    /// `errors / requests` (0 without requests).
    pub error_rate: f64,
    /// Failed requests by kind: `connect`, `http_<status>`, `timeout`, `stream`, `decode`.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Client TTFT − the server's own prompt time, per request, where the engine reports the
    /// latter (llama.cpp `timings.prompt_ms`): network, HTTP and queueing outside the engine's
    /// prompt processing. Never negative for a correct client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_minus_server_prompt_ms: Option<Distribution>,
    /// Open-loop profiles only: how faithfully the schedule was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arrivals: Option<Arrivals>,
    /// Requests resent once because their kept-alive connection had been closed by the server
    /// before it answered (the engine never saw the first send).
    pub connection_retries: u64,
    /// The window: first send → last end, over all requests.
    pub duration_s: f64,
    /// `ok / duration_s`.
    pub request_throughput: f64,
    /// `output_tokens.total / duration_s`.
    pub output_token_throughput: f64,
    /// `(input_tokens.total + output_tokens.total) / duration_s`.
    pub total_token_throughput: f64,
    pub input_tokens: TokenCounts,
    pub output_tokens: TokenCounts,
    /// Time to first token: first content event − send, per request with content.
    pub ttft_ms: Option<Distribution>,
    /// First event of any kind (a role-only chunk, reasoning) − send.
    pub ttft_first_event_ms: Option<Distribution>,
    /// Time to first reasoning token: first reasoning event − send, per request with reasoning.
    pub ttfrt_ms: Option<Distribution>,
    /// Inter-token latency: the gap between consecutive content events of a request, pooled over
    /// all requests (a per-event gap: with several tokens per event it spans several tokens).
    pub itl_ms: Option<Distribution>,
    /// Token-weighted inter-token latency: each gap between content events divided by the tokens
    /// it brought and counted once per token (tokens of a request spread evenly over its events
    /// after the first). Equals `itl_ms` at one token per event.
    pub itl_token_ms: Option<Distribution>,
    /// Time per output token after the first: `(e2e − ttft) / (n − 1)` per request, `n` its output
    /// tokens; only requests with `n > 1` and a content event.
    pub tpot_ms: Option<Distribution>,
    /// End-to-end latency: end of the answer − send.
    pub e2e_ms: Option<Distribution>,
    /// Open-loop profiles only: the same latencies measured from when each request was meant to
    /// go out by the schedule, not from when it was sent, so time spent waiting for the client
    /// (schedule lag, a `max_concurrency` slot) counts, as it would for a user (coordinated
    /// omission corrected, as wrk2 and GuideLLM do). The SLOs, goodput and a sweep's stop use
    /// these where they exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_schedule: Option<FromSchedule>,
    /// Whether the engine's `usage` equals the tokenizer's count of the text on every request that
    /// has both and no reasoning (`usage` counts reasoning tokens too); `None` where none has both.
    pub usage_agrees: Option<bool>,
    /// Prompt tokens processed per second of time to first token, over successful requests:
    /// `Σ input tokens / Σ TTFT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_throughput: Option<f64>,
    /// Successful requests that generated fewer tokens than asked for although the engine was told
    /// not to stop (`ignore_eos`): a cell with any is flagged, since early stops look faster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_early: Option<u64>,
    /// Warmup analysis (`cold_requests:`): the first requests against the rest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_vs_warm: Option<ColdVsWarm>,
    /// Requests that met every SLO the benchmark sets, per second of the window (`slo:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goodput: Option<Goodput>,
}

/// Latencies measured from each request's scheduled send time.
#[derive(Debug, Clone, Serialize)]
pub struct FromSchedule {
    /// First content event − scheduled time.
    pub ttft_ms: Option<Distribution>,
    /// First event of any kind − scheduled time.
    pub ttft_first_event_ms: Option<Distribution>,
    /// End of the answer − scheduled time.
    pub e2e_ms: Option<Distribution>,
}

/// The first `cold` requests (in send order) against the rest.
#[derive(Debug, Clone, Serialize)]
pub struct ColdVsWarm {
    pub cold_requests: u64,
    /// Mean end-to-end latency of the cold requests and of the rest.
    pub cold_e2e_ms: f64,
    pub warm_e2e_ms: f64,
    pub cold_ttft_ms: f64,
    pub warm_ttft_ms: f64,
    /// `(cold − warm) / cold × 100` of the mean e2e latency.
    pub e2e_reduction_pct: f64,
    /// The first request index from which every e2e latency stays within 10 % of the warm
    /// median: where the engine settled.
    pub stable_from: Option<u64>,
}

/// Goodput against the benchmark's SLOs.
#[derive(Debug, Clone, Serialize)]
pub struct Goodput {
    /// Successful requests meeting every SLO set (TTFT, TPOT, e2e latency).
    pub requests: u64,
    /// `requests / duration_s`.
    pub rate: f64,
    /// `requests / all requests`.
    pub share: f64,
}

/// How an open-loop schedule was kept: every scheduled request was sent (none is dropped), so
/// the question is only how late.
#[derive(Debug, Clone, Serialize)]
pub struct Arrivals {
    /// Requests the schedule held (all of them were sent).
    pub scheduled: u64,
    /// `(n − 1) / (last scheduled − first scheduled)`: the rate the schedule asked for.
    pub offered_rate: f64,
    /// `(n − 1) / (last sent − first sent)`: the rate at which requests actually went out (after
    /// any wait for a `max_concurrency` slot).
    pub delivered_rate: f64,
    /// Dispatch − scheduled time, per request: how late the client released it.
    pub schedule_lag_ms: Option<Distribution>,
    /// Sent − dispatch time, per request: waiting for a `max_concurrency` slot.
    pub client_queue_ms: Option<Distribution>,
    /// The schedule was not kept: schedule lag p99 or client queue time p99 above
    /// max(1 ms, 10 % of the mean inter-arrival time). Send-based latencies then understate what
    /// users would see; `from_schedule` does not.
    pub client_limited: bool,
}

/// What the benchmark asked for that judges each request as it is tallied.
#[derive(Debug, Clone, Default)]
pub struct TallyConfig {
    /// The benchmark's SLOs, for goodput.
    pub slo: Option<crate::manifest::load::Slo>,
    /// Output tokens every request was asked to generate without stopping early (`ignore_eos`).
    pub expected_output_tokens: Option<u64>,
    /// Warmup analysis: how many first requests count as cold.
    pub cold_requests: Option<u64>,
}

/// Token totals of one direction, folded request by request.
#[derive(Debug, Clone)]
struct CountTally {
    total: u64,
    usage: u64,
    usage_all: bool,
    counted: u64,
    counted_all: bool,
    events: u64,
    source: Option<&'static str>,
    mixed: bool,
}

impl Default for CountTally {
    fn default() -> Self {
        CountTally {
            total: 0,
            usage: 0,
            usage_all: true,
            counted: 0,
            counted_all: true,
            events: 0,
            source: None,
            mixed: false,
        }
    }
}

impl CountTally {
    fn add(&mut self, best: u64, usage: Option<u64>, counted: Option<u64>, events: u64, source: &'static str) {
        self.total += best;
        match usage {
            Some(u) => self.usage += u,
            None => self.usage_all = false,
        }
        match counted {
            Some(c) => self.counted += c,
            None => self.counted_all = false,
        }
        self.events += events;
        match self.source {
            None => self.source = Some(source),
            Some(s) if s != source => self.mixed = true,
            Some(_) => {}
        }
    }

    fn merge(&mut self, o: &CountTally) {
        self.total += o.total;
        self.usage += o.usage;
        self.usage_all &= o.usage_all;
        self.counted += o.counted;
        self.counted_all &= o.counted_all;
        self.events += o.events;
        match (self.source, o.source) {
            (None, s) => self.source = s,
            (Some(a), Some(b)) if a != b => self.mixed = true,
            _ => {}
        }
        self.mixed |= o.mixed;
    }

    /// `built` names where a count marked `built` came from (input: the prompt as built).
    fn counts(&self, ok: u64, built: &'static str, counted_total: Option<u64>) -> TokenCounts {
        let nonempty = ok > 0;
        let source = match self.source {
            None => "none",
            Some(_) if self.mixed => "mixed",
            Some("built") => built,
            Some(s) => s,
        };
        TokenCounts {
            total: self.total,
            mean: if nonempty { self.total as f64 / ok as f64 } else { 0.0 },
            usage_total: (self.usage_all && nonempty).then_some(self.usage),
            counted_total: counted_total.filter(|_| nonempty),
            events_total: self.events,
            source,
        }
    }
}

/// Everything the metrics need from a run's requests, folded in one request at a time: its memory
/// does not grow with the request count (a million-request cell costs what a thousand-request
/// one does), and the tallies of a staged benchmark's stages merge into the benchmark's.
///
/// The one exception is warmup analysis (`cold_requests`): its "stable from" index needs every
/// request's latency in send order, 24 bytes per request, kept only when it is asked for.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    config: TallyConfig,
    requests: u64,
    ok: u64,
    errors_by_kind: BTreeMap<String, u64>,
    /// The first failure's detail, for messages.
    pub(crate) first_error: Option<String>,
    connection_retries: u64,
    first_send: Option<u64>,
    last_end: Option<u64>,
    ttft: Stat,
    first_event: Stat,
    ttfrt: Stat,
    e2e: Stat,
    itl: Stat,
    itl_token: Stat,
    tpot: Stat,
    ttft_minus_server: Stat,
    output: CountTally,
    input: CountTally,
    /// Σ input tokens as built, over successful requests.
    input_built: u64,
    usage_compared: u64,
    usage_disagrees: bool,
    prefill_tokens: u64,
    prefill_secs: f64,
    stopped_early: u64,
    goodput_met: u64,
    scheduled: (Option<u64>, Option<u64>),
    dispatched: (Option<u64>, Option<u64>),
    sent: (Option<u64>, Option<u64>),
    lag: Stat,
    queue: Stat,
    /// From the scheduled time (open loop only).
    sched_ttft: Stat,
    sched_first_event: Stat,
    sched_e2e: Stat,
    /// `(index, e2e ms, ttft ms)` of successful requests, only with `cold_requests`.
    by_index: Vec<(u64, f64, f64)>,
}

fn widen(range: &mut (Option<u64>, Option<u64>), v: u64) {
    *range = (earliest(range.0, Some(v)), latest(range.1, Some(v)));
}

/// The earlier of two optional stamps (`None` where neither is set).
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    a.into_iter().chain(b).min()
}

/// The later of two optional stamps.
fn latest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    a.max(b)
}

impl Tally {
    pub fn new(config: TallyConfig) -> Self {
        Tally { config, ..Tally::default() }
    }

    /// Requests tallied, and how many of them succeeded.
    pub fn requests(&self) -> (u64, u64) {
        (self.requests, self.ok)
    }

    /// First send → last end over every request tallied.
    pub fn window_ns(&self) -> u64 {
        match (self.first_send, self.last_end) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        }
    }

    /// Folds one finished request in.
    pub fn add(&mut self, r: &RequestRecord) {
        self.requests += 1;
        self.connection_retries += u64::from(r.connection_retries);
        self.first_send = earliest(self.first_send, Some(r.sent_ns));
        self.last_end = latest(self.last_end, Some(r.end_ns));
        widen(&mut self.scheduled, r.scheduled_ns);
        let open_loop = r.dispatched_ns.is_some();
        if let Some(d) = r.dispatched_ns {
            widen(&mut self.dispatched, d);
            widen(&mut self.sent, r.sent_ns);
            self.lag.add(d.saturating_sub(r.scheduled_ns) as f64);
            self.queue.add(r.sent_ns.saturating_sub(d) as f64);
        }
        if let Some(kind) = r.error {
            *self.errors_by_kind.entry(kind.to_string()).or_insert(0) += 1;
            if self.first_error.is_none() {
                self.first_error = r.error_detail.clone();
            }
            if kind == crate::engine::client::ErrorKind::Timeout {
                self.add_timed_out(r, open_loop);
            }
            return;
        }
        self.ok += 1;
        let since_send = |t: u64| t.saturating_sub(r.sent_ns) as f64;
        let since_schedule = |t: u64| t.saturating_sub(r.scheduled_ns) as f64;
        let n = r.output_tokens();
        let ttft = r.first_content_ns.map(since_send);
        let e2e = since_send(r.end_ns);
        if open_loop {
            if let Some(t) = r.first_content_ns {
                self.sched_ttft.add(since_schedule(t));
            }
            if let Some(t) = r.first_event_ns {
                self.sched_first_event.add(since_schedule(t));
            }
            self.sched_e2e.add(since_schedule(r.end_ns));
        }
        if let Some(t) = ttft {
            self.ttft.add(t);
        }
        if let Some(t) = r.first_event_ns {
            self.first_event.add(since_send(t));
        }
        if let Some(t) = r.first_reasoning_ns {
            self.ttfrt.add(since_send(t));
        }
        self.e2e.add(e2e);
        // Per token: each gap between content events shared by the tokens it brought, the tokens
        // of a request spread evenly over its events after the first (exact when chunks are even).
        let gaps = r.content_event_ns.len().saturating_sub(1);
        let per_gap = if gaps > 0 { n.saturating_sub(1) as f64 / gaps as f64 } else { 0.0 };
        for w in r.content_event_ns.windows(2) {
            let gap = w[1].saturating_sub(w[0]) as f64;
            self.itl.add(gap);
            if per_gap > 0.0 {
                self.itl_token.add_n(gap / per_gap, per_gap.round().max(1.0) as u64);
            }
        }
        let tpot = r.first_content_ns.filter(|_| n > 1).map(|f| r.end_ns.saturating_sub(f) as f64 / (n - 1) as f64);
        if let Some(t) = tpot {
            self.tpot.add(t);
        }
        if let (Some(t), Some(server)) = (ttft, r.server_prompt_ms) {
            self.ttft_minus_server.add(t - server * 1e6);
        }

        let out_source = match (r.usage_completion_tokens, r.counted_output_tokens) {
            (Some(_), _) => "usage",
            (None, Some(_)) => "tokenizer",
            (None, None) => "events",
        };
        self.output.add(n, r.usage_completion_tokens, r.counted_output_tokens, u64::from(r.content_events), out_source);
        let input = r.usage_prompt_tokens.unwrap_or(r.input_tokens);
        let in_source = if r.usage_prompt_tokens.is_some() { "usage" } else { "built" };
        self.input.add(input, r.usage_prompt_tokens, None, 0, in_source);
        self.input_built += r.input_tokens;
        if r.reasoning_events == 0
            && let (Some(u), Some(c)) = (r.usage_completion_tokens, r.counted_output_tokens)
        {
            self.usage_compared += 1;
            self.usage_disagrees |= u != c;
        }
        if let Some(t) = ttft {
            self.prefill_tokens += input;
            self.prefill_secs += t / 1e9;
        }
        if self.config.expected_output_tokens.is_some_and(|want| n < want) {
            self.stopped_early += 1;
        }
        if let Some(slo) = &self.config.slo {
            let ms = |ns: f64| ns / 1e6;
            // Open loop: a user waits from when the request was due, not from when the client
            // got round to sending it.
            let (slo_ttft, slo_e2e) = if open_loop {
                (r.first_content_ns.map(since_schedule), since_schedule(r.end_ns))
            } else {
                (ttft, e2e)
            };
            let met = slo.ttft_ms.is_none_or(|max| slo_ttft.is_some_and(|t| ms(t) <= max))
                && slo.tpot_ms.is_none_or(|max| tpot.is_none_or(|t| ms(t) <= max))
                && slo.e2e_ms.is_none_or(|max| ms(slo_e2e) <= max);
            self.goodput_met += u64::from(met);
        }
        if self.config.cold_requests.is_some() {
            self.by_index.push((r.index, e2e / 1e6, ttft.map_or(0.0, |t| t / 1e6)));
        }
    }

    /// A request cut at a deadline stays in the latency picture: its TTFT (when its first token
    /// had not come) and its end-to-end latency enter as lower bounds at the time it was cut, so
    /// an engine that gets slower never looks faster for timing out. It never meets an SLO.
    fn add_timed_out(&mut self, r: &RequestRecord, open_loop: bool) {
        let from = |start: u64, t: u64| t.saturating_sub(start) as f64;
        for (start, ttft, first_event, e2e) in [
            (Some(r.sent_ns), &mut self.ttft, &mut self.first_event, &mut self.e2e),
            (
                open_loop.then_some(r.scheduled_ns),
                &mut self.sched_ttft,
                &mut self.sched_first_event,
                &mut self.sched_e2e,
            ),
        ] {
            let Some(start) = start else { continue };
            match r.first_content_ns {
                Some(t) => ttft.add(from(start, t)),
                None => ttft.add_censored(from(start, r.end_ns)),
            }
            match r.first_event_ns {
                Some(t) => first_event.add(from(start, t)),
                None => first_event.add_censored(from(start, r.end_ns)),
            }
            e2e.add_censored(from(start, r.end_ns));
        }
    }

    /// Folds the tally of a later part of the same benchmark in (a stage of `stages`/`sweep`).
    pub fn merge(&mut self, o: &Tally) {
        self.requests += o.requests;
        self.ok += o.ok;
        for (k, v) in &o.errors_by_kind {
            *self.errors_by_kind.entry(k.clone()).or_insert(0) += v;
        }
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.connection_retries += o.connection_retries;
        for (mine, theirs) in [
            (&mut self.ttft, &o.ttft),
            (&mut self.first_event, &o.first_event),
            (&mut self.ttfrt, &o.ttfrt),
            (&mut self.e2e, &o.e2e),
            (&mut self.itl, &o.itl),
            (&mut self.itl_token, &o.itl_token),
            (&mut self.tpot, &o.tpot),
            (&mut self.ttft_minus_server, &o.ttft_minus_server),
            (&mut self.lag, &o.lag),
            (&mut self.queue, &o.queue),
            (&mut self.sched_ttft, &o.sched_ttft),
            (&mut self.sched_first_event, &o.sched_first_event),
            (&mut self.sched_e2e, &o.sched_e2e),
        ] {
            mine.merge(theirs);
        }
        self.output.merge(&o.output);
        self.input.merge(&o.input);
        self.input_built += o.input_built;
        self.usage_compared += o.usage_compared;
        self.usage_disagrees |= o.usage_disagrees;
        self.prefill_tokens += o.prefill_tokens;
        self.prefill_secs += o.prefill_secs;
        self.stopped_early += o.stopped_early;
        self.goodput_met += o.goodput_met;
        self.scheduled = (earliest(self.scheduled.0, o.scheduled.0), latest(self.scheduled.1, o.scheduled.1));
        self.dispatched = (earliest(self.dispatched.0, o.dispatched.0), latest(self.dispatched.1, o.dispatched.1));
        self.sent = (earliest(self.sent.0, o.sent.0), latest(self.sent.1, o.sent.1));
        self.first_send = earliest(self.first_send, o.first_send);
        self.last_end = latest(self.last_end, o.last_end);
        self.by_index.extend_from_slice(&o.by_index);
    }

    fn arrivals(&self) -> Arrivals {
        let n = self.requests;
        let rate = |(first, last): (Option<u64>, Option<u64>)| match (first, last) {
            (Some(a), Some(b)) if b > a && n > 1 => (n - 1) as f64 / ((b - a) as f64 / 1e9),
            _ => 0.0,
        };
        let offered_rate = rate(self.scheduled);
        let schedule_lag_ms = self.lag.summary();
        let client_queue_ms = self.queue.summary();
        let mean_gap_ms = if offered_rate > 0.0 { 1e3 / offered_rate } else { 0.0 };
        let bound = (0.1 * mean_gap_ms).max(1.0);
        let client_limited =
            [&schedule_lag_ms, &client_queue_ms].iter().any(|d| d.as_ref().is_some_and(|d| d.p99 > bound));
        Arrivals {
            scheduled: n,
            offered_rate,
            delivered_rate: rate(self.sent),
            schedule_lag_ms,
            client_queue_ms,
            client_limited,
        }
    }

    fn cold_vs_warm(&self, cold: u64) -> Option<ColdVsWarm> {
        let mut by_index = self.by_index.clone();
        by_index.sort_by_key(|r| r.0);
        let k = (cold as usize).min(by_index.len());
        if k == 0 || k == by_index.len() {
            return None;
        }
        let mean =
            |rs: &[(u64, f64, f64)], f: fn(&(u64, f64, f64)) -> f64| rs.iter().map(f).sum::<f64>() / rs.len() as f64;
        let (c, w) = by_index.split_at(k);
        let (cold_e2e, warm_e2e) = (mean(c, |r| r.1), mean(w, |r| r.1));
        let mut warm_sorted: Vec<f64> = w.iter().map(|r| r.1).collect();
        warm_sorted.sort_by(f64::total_cmp);
        let median = warm_sorted[warm_sorted.len() / 2];
        // The first position from which every later latency is within 10 % of the warm median:
        // scanning from the end, the last one outside it.
        let last_outside = by_index.iter().rposition(|r| (r.1 - median).abs() > 0.1 * median);
        let stable_from = match last_outside {
            None => Some(by_index[0].0),
            Some(i) => by_index.get(i + 1).map(|r| r.0),
        };
        Some(ColdVsWarm {
            cold_requests: k as u64,
            cold_e2e_ms: cold_e2e,
            warm_e2e_ms: warm_e2e,
            cold_ttft_ms: mean(c, |r| r.2),
            warm_ttft_ms: mean(w, |r| r.2),
            e2e_reduction_pct: if cold_e2e > 0.0 { (cold_e2e - warm_e2e) / cold_e2e * 100.0 } else { 0.0 },
            stable_from,
        })
    }
}

/// Derives the metrics of a finished run.
pub fn summarize(outcome: &LoadOutcome) -> LoadMetrics {
    let t = &outcome.tally;
    let requests = t.requests;
    let errors = requests - t.ok;
    let duration_s = outcome.window_ns as f64 / 1e9;
    let per_s = |x: f64| {
        if duration_s > 0.0 { x / duration_s } else { 0.0 }
    };
    let built = if outcome.prompts_exact { "tokenizer" } else { "words" };
    let input_tokens = t.input.counts(t.ok, built, outcome.prompts_exact.then_some(t.input_built));
    let output_tokens = t.output.counts(t.ok, "events", t.output.counted_all.then_some(t.output.counted));
    LoadMetrics {
        requests,
        warmup_requests: outcome.warmup_requests,
        ok: t.ok,
        errors,
        error_rate: if requests > 0 { errors as f64 / requests as f64 } else { 0.0 },
        errors_by_kind: t.errors_by_kind.clone(),
        connection_retries: t.connection_retries,
        arrivals: outcome.open_loop.then(|| t.arrivals()),
        ttft_minus_server_prompt_ms: t.ttft_minus_server.summary(),
        duration_s,
        request_throughput: per_s(t.ok as f64),
        output_token_throughput: per_s(output_tokens.total as f64),
        total_token_throughput: per_s((input_tokens.total + output_tokens.total) as f64),
        input_tokens,
        output_tokens,
        ttft_ms: t.ttft.summary(),
        ttft_first_event_ms: t.first_event.summary(),
        ttfrt_ms: t.ttfrt.summary(),
        itl_ms: t.itl.summary(),
        itl_token_ms: t.itl_token.summary(),
        tpot_ms: t.tpot.summary(),
        e2e_ms: t.e2e.summary(),
        from_schedule: (outcome.open_loop && t.sched_e2e.n > 0).then(|| FromSchedule {
            ttft_ms: t.sched_ttft.summary(),
            ttft_first_event_ms: t.sched_first_event.summary(),
            e2e_ms: t.sched_e2e.summary(),
        }),
        usage_agrees: (t.usage_compared > 0).then_some(!t.usage_disagrees),
        prefill_throughput: (t.prefill_secs > 0.0).then(|| t.prefill_tokens as f64 / t.prefill_secs),
        cold_vs_warm: t.config.cold_requests.and_then(|k| t.cold_vs_warm(k)),
        stopped_early: t.config.expected_output_tokens.map(|_| t.stopped_early),
        goodput: t.config.slo.as_ref().map(|_| Goodput {
            requests: t.goodput_met,
            rate: per_s(t.goodput_met as f64),
            share: if requests > 0 { t.goodput_met as f64 / requests as f64 } else { 0.0 },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::client::ErrorKind;

    const MS: u64 = 1_000_000;

    fn record(index: u64, sent_ms: u64, content_ms: &[u64], end_ms: u64) -> RequestRecord {
        RequestRecord {
            index,
            sent_ns: sent_ms * MS,
            first_event_ns: content_ms.first().map(|t| t * MS),
            first_content_ns: content_ms.first().map(|t| t * MS),
            content_event_ns: content_ms.iter().map(|t| t * MS).collect(),
            content_events: content_ms.len() as u32,
            end_ns: end_ms * MS,
            input_tokens: 10,
            status: Some(200),
            ..Default::default()
        }
    }

    fn outcome(records: Vec<RequestRecord>, window_ms: u64) -> LoadOutcome {
        outcome_with(TallyConfig::default(), &records, window_ms)
    }

    fn outcome_with(config: TallyConfig, records: &[RequestRecord], window_ms: u64) -> LoadOutcome {
        let mut tally = Tally::new(config);
        records.iter().for_each(|r| tally.add(r));
        LoadOutcome {
            tally,
            window_ns: window_ms * MS,
            prompts_exact: true,
            input_tokens: 10,
            open_loop: false,
            warmup_requests: 0,
            records: None,
            origin: std::time::Instant::now(),
            truncated: false,
            clients: None,
        }
    }

    #[test]
    fn token_weighted_itl_spreads_each_gap_over_its_tokens() {
        // Events every 6 ms carrying 3 tokens each: 9 tokens, 3 events, 2 gaps of 8 tokens after
        // the first (4 per gap): per token 1.5 ms, counted 8 times.
        let mut a = record(0, 0, &[10, 16, 22], 22);
        a.usage_completion_tokens = Some(9);
        let m = summarize(&outcome(vec![a], 100));
        let per_event = m.itl_ms.unwrap();
        assert_eq!((per_event.count, per_event.mean), (2, 6.0));
        let per_token = m.itl_token_ms.unwrap();
        assert_eq!(per_token.count, 8);
        assert!((per_token.mean - 1.5).abs() < 1e-9, "{per_token:?}");
        assert!((per_token.p50 - 1.5).abs() < 0.01);
        // At one token per event both agree.
        let mut b = record(0, 0, &[10, 12, 14, 16], 16);
        b.usage_completion_tokens = Some(4);
        let m = summarize(&outcome(vec![b], 100));
        assert_eq!(m.itl_ms.unwrap().mean, m.itl_token_ms.unwrap().mean);
    }

    #[test]
    fn formulas_on_known_records() {
        // Two requests: TTFT 10 and 20 ms; events every 5 ms; 4 tokens each by usage.
        let mut a = record(0, 0, &[10, 15, 20, 25], 25);
        a.usage_completion_tokens = Some(4);
        a.counted_output_tokens = Some(4);
        let mut b = record(1, 100, &[120, 125, 130, 135], 140);
        b.usage_completion_tokens = Some(4);
        b.counted_output_tokens = Some(4);
        let mut failed = record(2, 5, &[], 6);
        failed.error = Some(ErrorKind::Status(503));
        let m = summarize(&outcome(vec![a, b, failed], 2000));
        assert_eq!((m.requests, m.ok, m.errors), (3, 2, 1));
        assert!((m.error_rate - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.errors_by_kind, BTreeMap::from([("http_503".to_string(), 1)]));
        assert_eq!(m.duration_s, 2.0);
        assert_eq!(m.request_throughput, 1.0);
        assert_eq!(m.output_token_throughput, 4.0);
        assert_eq!(m.total_token_throughput, 14.0);
        let ttft = m.ttft_ms.unwrap();
        assert_eq!((ttft.count, ttft.mean, ttft.min, ttft.max, ttft.stddev), (2, 15.0, 10.0, 20.0, 5.0));
        let itl = m.itl_ms.unwrap();
        assert_eq!((itl.count, itl.mean), (6, 5.0));
        // (e2e − ttft) / (n − 1): (25 − 10) / 3 = 5 and (40 − 20) / 3.
        let tpot = m.tpot_ms.unwrap();
        assert!((tpot.max - 20.0 / 3.0).abs() < 1e-9 && tpot.min == 5.0);
        assert_eq!(m.e2e_ms.unwrap().max, 40.0);
        assert!(m.ttfrt_ms.is_none());
        assert_eq!(m.output_tokens.source, "usage");
        assert_eq!(m.output_tokens.usage_total, Some(8));
        assert_eq!(m.output_tokens.counted_total, Some(8));
        assert_eq!(m.output_tokens.events_total, 8);
        assert_eq!(m.input_tokens.source, "tokenizer");
        assert_eq!(m.input_tokens.counted_total, Some(20));
        assert_eq!(m.usage_agrees, Some(true));
    }

    #[test]
    fn fallbacks_and_disagreement() {
        let mut a = record(0, 0, &[1, 2], 3);
        a.counted_output_tokens = Some(8); // 4 tokens per event, no usage
        let b = record(1, 0, &[1, 2], 3);
        let m = summarize(&outcome(vec![a.clone(), b], 1000));
        assert_eq!(m.output_tokens.total, 10);
        assert_eq!(m.output_tokens.source, "mixed");
        assert_eq!(m.output_tokens.usage_total, None);
        assert_eq!(m.output_tokens.counted_total, None);
        assert_eq!(m.usage_agrees, None);
        a.usage_completion_tokens = Some(9);
        let m = summarize(&outcome(vec![a], 1000));
        assert_eq!(m.usage_agrees, Some(false));
        assert_eq!(m.output_tokens.total, 9);
    }

    #[test]
    fn nothing_to_summarize() {
        let m = summarize(&outcome(vec![], 0));
        assert_eq!((m.requests, m.error_rate, m.request_throughput), (0, 0.0, 0.0));
        assert!(m.ttft_ms.is_none() && m.e2e_ms.is_none());
        assert_eq!(m.output_tokens.source, "none");
        assert_eq!(m.output_tokens.usage_total, None);
    }

    #[test]
    fn percentiles_are_within_the_histogram_precision() {
        let samples: Vec<f64> = (1..=1000).map(|i| (i * MS) as f64).collect();
        let d = Distribution::of_ns(&samples).unwrap();
        for (got, want) in [(d.p50, 500.0), (d.p90, 900.0), (d.p95, 950.0), (d.p99, 990.0)] {
            assert!((got - want).abs() <= want * 1e-3, "{got} vs {want}");
        }
        assert_eq!((d.min, d.max, d.mean), (1.0, 1000.0, 500.5));
    }

    #[test]
    fn goodput_early_stops_and_prefill() {
        // Three requests: TTFT 10 ms each; 4, 4 and 2 content events (tokens); e2e 40, 100, 20 ms.
        let records = vec![
            record(0, 0, &[10, 20, 30, 40], 40),
            record(1, 0, &[10, 40, 70, 100], 100),
            record(2, 0, &[10, 20], 20),
        ];
        let slo = |ttft_ms, tpot_ms, e2e_ms| crate::manifest::load::Slo { ttft_ms, tpot_ms, e2e_ms, attainment: None };
        let config = |slo| TallyConfig { slo: Some(slo), expected_output_tokens: Some(4), cold_requests: None };
        let m = summarize(&outcome_with(config(slo(Some(15.0), None, Some(50.0))), &records, 100));
        let g = m.goodput.unwrap();
        assert_eq!(g.requests, 2, "request 1 breaks the e2e SLO");
        assert!((g.rate - 20.0).abs() < 1e-9 && (g.share - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(m.stopped_early, Some(1), "request 2 generated 2 of 4 tokens");
        // 3 × 10 input tokens over 3 × 10 ms of TTFT.
        assert!((m.prefill_throughput.unwrap() - 1000.0).abs() < 1e-6);
        // TPOT: (40−10)/3 = 10, (100−10)/3 = 30, (20−10)/1 = 10.
        let o = outcome_with(config(slo(None, Some(10.0), None)), &records, 100);
        assert_eq!(summarize(&o).goodput.unwrap().requests, 2);
    }

    #[test]
    fn cold_requests_against_the_rest() {
        // e2e: 100 ms (cold), then 52, 50, 50, 49, 51.
        let e2e = [100, 52, 50, 50, 49, 51];
        let records: Vec<RequestRecord> = e2e.iter().enumerate().map(|(i, e)| record(i as u64, 0, &[10], *e)).collect();
        let config = TallyConfig { cold_requests: Some(1), ..TallyConfig::default() };
        let c = summarize(&outcome_with(config, &records, 400)).cold_vs_warm.unwrap();
        assert_eq!(c.cold_requests, 1);
        assert!((c.cold_e2e_ms - 100.0).abs() < 1e-9 && (c.warm_e2e_ms - 50.4).abs() < 1e-9);
        assert!((c.e2e_reduction_pct - 49.6).abs() < 1e-9);
        assert_eq!(c.stable_from, Some(1));
    }

    #[test]
    fn tallies_of_parts_merge_into_the_tally_of_the_whole() {
        let records: Vec<RequestRecord> = (0..200u64)
            .map(|i| {
                let mut r = record(i, i, &[i + 3 + i % 7, i + 9 + i % 5, i + 20], i + 25 + i % 11);
                r.usage_completion_tokens = Some(3 + i % 2);
                if i % 17 == 0 {
                    r.error = Some(ErrorKind::Timeout);
                }
                r
            })
            .collect();
        let config = TallyConfig { cold_requests: Some(5), expected_output_tokens: Some(4), ..Default::default() };
        let whole = summarize(&outcome_with(config.clone(), &records, 1000));
        let mut a = outcome_with(config.clone(), &records[..77], 1000);
        let b = outcome_with(config, &records[77..], 1000);
        a.tally.merge(&b.tally);
        let merged = summarize(&a);
        let (w, m) = (serde_json::to_value(&whole).unwrap(), serde_json::to_value(&merged).unwrap());
        for key in
            ["requests", "ok", "errors_by_kind", "output_tokens", "input_tokens", "stopped_early", "cold_vs_warm"]
        {
            assert_eq!(w[key], m[key], "{key}");
        }
        for key in ["ttft_ms", "itl_ms", "itl_token_ms", "tpot_ms", "e2e_ms"] {
            for stat in ["count", "min", "max", "p50", "p99"] {
                assert_eq!(w[key][stat], m[key][stat], "{key}.{stat}");
            }
            for stat in ["mean", "stddev"] {
                let (x, y) = (w[key][stat].as_f64().unwrap(), m[key][stat].as_f64().unwrap());
                assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{key}.{stat}: {x} vs {y}");
            }
        }
        assert_eq!(a.tally.window_ns(), 232 * MS, "first send 0 → last end 197 + 25 + 10");
    }

    #[test]
    fn timeouts_enter_latencies_as_lower_bounds() {
        // 16 answers in 80 ms; 4 stalled after their first token and cut at 1,080 ms.
        let mut records: Vec<RequestRecord> = (0..16).map(|i| record(i, 0, &[10, 80], 80)).collect();
        for i in 16..20 {
            let mut r = record(i, 0, &[10], 1080);
            r.error = Some(ErrorKind::Timeout);
            records.push(r);
        }
        let slo = crate::manifest::load::Slo { e2e_ms: Some(5000.0), ..Default::default() };
        let config = TallyConfig { slo: Some(slo), ..TallyConfig::default() };
        let m = summarize(&outcome_with(config, &records, 1100));
        assert_eq!((m.requests, m.ok, m.errors_by_kind["timeout"]), (20, 16, 4));
        let e2e = m.e2e_ms.unwrap();
        assert_eq!(e2e.count, 20, "timed-out requests stay in e2e");
        let c = e2e.censored.as_ref().unwrap();
        assert_eq!((c.count, c.from_ms), (4, 1080.0));
        assert_eq!(c.lower_bounds, vec!["p90", "p95", "p99", "p99_9"]);
        assert!(!e2e.is_lower_bound("p50") && e2e.is_lower_bound("p90"));
        assert_eq!(e2e.show("p90", e2e.p90, 0), "≥ 1080");
        assert_eq!(e2e.show("p50", e2e.p50, 0), "80");
        // Their first token came: TTFT is exact for all 20.
        let ttft = m.ttft_ms.unwrap();
        assert_eq!((ttft.count, ttft.censored.is_none()), (20, true));
        // A timed-out request never meets an SLO, however loose.
        assert_eq!(m.goodput.unwrap().requests, 16);

        // Cut before their first token: TTFT is censored too.
        let mut records: Vec<RequestRecord> = (0..8).map(|i| record(i, 0, &[10, 80], 80)).collect();
        let mut r = record(8, 0, &[], 60_000);
        r.error = Some(ErrorKind::Timeout);
        records.push(r);
        let ttft = summarize(&outcome(records, 60_000)).ttft_ms.unwrap();
        assert_eq!(ttft.count, 9);
        assert_eq!(ttft.censored.unwrap().lower_bounds, vec!["p90", "p95", "p99", "p99_9"]);
        // Other failures are not latencies at all.
        let mut r = record(0, 0, &[], 5);
        r.error = Some(ErrorKind::ConnectionReset);
        assert!(summarize(&outcome(vec![r], 10)).e2e_ms.is_none());
    }

    #[test]
    fn open_loop_latency_is_also_measured_from_the_schedule() {
        // 20 req/s, one slot: the engine pauses 2 s on request 5, and the requests due meanwhile
        // wait for the slot; once sent, each answers in 10 ms.
        let mut records = Vec::new();
        let mut free_at = 0u64;
        for i in 0..20u64 {
            let scheduled = i * 50;
            let sent = scheduled.max(free_at);
            let service = if i == 5 { 2000 } else { 10 };
            let mut r = record(i, sent, &[sent + service], sent + service);
            r.scheduled_ns = scheduled * MS;
            r.dispatched_ns = Some(scheduled * MS);
            free_at = sent + service;
            records.push(r);
        }
        let slo = crate::manifest::load::Slo { ttft_ms: Some(100.0), ..Default::default() };
        let config = TallyConfig { slo: Some(slo), ..TallyConfig::default() };
        let mut o = outcome_with(config, &records, 3000);
        o.open_loop = true;
        let m = summarize(&o);
        let sched = m.from_schedule.as_ref().unwrap();
        let sent_based = m.ttft_ms.as_ref().unwrap();
        let from_schedule = sched.ttft_ms.as_ref().unwrap();
        assert!(sent_based.p50 <= 10.1, "{sent_based:?}");
        assert!(from_schedule.p99 >= 1500.0, "{from_schedule:?}");
        assert!(from_schedule.p50 > sent_based.p50);
        let a = m.arrivals.as_ref().unwrap();
        assert!(a.client_limited, "requests waited seconds for a slot: {a:?}");
        // Sends bunched after the pause: 19 gaps over first → last send, not the schedule's 950 ms.
        let last_sent = records.iter().map(|r| r.sent_ns).max().unwrap() as f64 / 1e9;
        assert!(last_sent > 2.0);
        assert!((a.delivered_rate - 19.0 / last_sent).abs() < 1e-9, "{}", a.delivered_rate);
        assert!((a.offered_rate - 20.0).abs() < 1e-9);
        // Goodput judges from the schedule: only the requests not held up meet 100 ms.
        let met = records.iter().filter(|r| r.first_content_ns.unwrap() - r.scheduled_ns <= 100 * MS).count();
        assert_eq!(m.goodput.as_ref().unwrap().requests, met as u64);
        assert!(met < 15, "{met}");
        // Closed loops have no schedule to measure from.
        assert!(summarize(&outcome(records, 3000)).from_schedule.is_none());
    }
}
