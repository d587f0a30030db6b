//! Metrics of a load run, derived from its request records and nothing else.
//!
//! Owns the formulas. Peer tools give one name to different quantities (peers.md §2: GuideLLM's
//! "TPOT" includes the first token, vLLM's "ITL" pools every chunk gap), so each field documents
//! exactly what it measures. Only successful requests enter latencies and token counts; every
//! request enters the error counts. Reasoning is not content (DESIGN decision 9): TTFT is the
//! first content event; the first reasoning event has its own metric.
//!
//! Percentiles come from an HDR histogram (nanoseconds, 3 significant digits, so within 0.1 %);
//! count, mean, min, max and standard deviation are computed exactly from the samples.

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
}

impl Distribution {
    /// Summarizes weighted samples `(value ns, weight)`: each value counts `weight` times.
    pub(crate) fn of_weighted_ns(samples: &[(f64, u64)]) -> Option<Self> {
        let n: u64 = samples.iter().map(|(_, w)| w).sum();
        if n == 0 {
            return None;
        }
        const MS: f64 = 1e6;
        let mean = samples.iter().map(|(v, w)| v * *w as f64).sum::<f64>() / n as f64;
        let variance = samples.iter().map(|(v, w)| (v - mean).powi(2) * *w as f64).sum::<f64>() / n as f64;
        let min = samples.iter().filter(|(_, w)| *w > 0).map(|(v, _)| *v).fold(f64::INFINITY, f64::min);
        let max = samples.iter().filter(|(_, w)| *w > 0).map(|(v, _)| *v).fold(f64::NEG_INFINITY, f64::max);
        let mut h = Histogram::<u64>::new(SIGFIG).ok()?;
        for (v, w) in samples {
            let ns = v.max(0.0).round() as u64;
            // `new` histograms grow to fit; `saturating_record_n` alone would clamp to the initial range.
            if h.record_n(ns, *w).is_err() {
                h.saturating_record_n(ns, *w);
            }
        }
        let q = |quantile: f64| h.value_at_quantile(quantile) as f64 / MS;
        Some(Distribution {
            count: n,
            mean: mean / MS,
            min: min / MS,
            max: max / MS,
            stddev: variance.sqrt() / MS,
            p50: q(0.50),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            p99_9: q(0.999),
        })
    }

    /// Summarizes samples in nanoseconds, reported in milliseconds; `None` without samples.
    pub(crate) fn of_ns(samples: &[f64]) -> Option<Self> {
        Self::of_weighted_ns(&samples.iter().map(|s| (*s, 1)).collect::<Vec<_>>())
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

fn cold_vs_warm(ok: &[&RequestRecord], cold: u64) -> Option<ColdVsWarm> {
    let mut by_index: Vec<&&RequestRecord> = ok.iter().collect();
    by_index.sort_by_key(|r| r.index);
    let k = (cold as usize).min(by_index.len());
    if k == 0 || k == by_index.len() {
        return None;
    }
    let e2e = |r: &RequestRecord| r.end_ns.saturating_sub(r.sent_ns) as f64 / 1e6;
    let ttft = |r: &RequestRecord| r.first_content_ns.map_or(0.0, |f| f.saturating_sub(r.sent_ns) as f64 / 1e6);
    let mean = |rs: &[&&RequestRecord], f: &dyn Fn(&RequestRecord) -> f64| {
        rs.iter().map(|r| f(r)).sum::<f64>() / rs.len() as f64
    };
    let (c, w) = by_index.split_at(k);
    let (cold_e2e, warm_e2e) = (mean(c, &e2e), mean(w, &e2e));
    let mut warm_sorted: Vec<f64> = w.iter().map(|r| e2e(r)).collect();
    warm_sorted.sort_by(f64::total_cmp);
    let median = warm_sorted[warm_sorted.len() / 2];
    let within = |r: &RequestRecord| (e2e(r) - median).abs() <= 0.1 * median;
    let stable_from = (0..by_index.len()).find(|&i| by_index[i..].iter().all(|r| within(r))).map(|i| by_index[i].index);
    Some(ColdVsWarm {
        cold_requests: k as u64,
        cold_e2e_ms: cold_e2e,
        warm_e2e_ms: warm_e2e,
        cold_ttft_ms: mean(c, &ttft),
        warm_ttft_ms: mean(w, &ttft),
        e2e_reduction_pct: if cold_e2e > 0.0 { (cold_e2e - warm_e2e) / cold_e2e * 100.0 } else { 0.0 },
        stable_from,
    })
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
    /// `(n − 1) / (last dispatched − first dispatched)`: the rate the client kept.
    pub delivered_rate: f64,
    /// Dispatch − scheduled time, per request: how late the client released it.
    pub schedule_lag_ms: Option<Distribution>,
    /// Sent − dispatch time, per request: waiting for a `max_concurrency` slot.
    pub client_queue_ms: Option<Distribution>,
    /// Schedule lag p99 above max(1 ms, 10 % of the mean inter-arrival time): the client, not the
    /// engine, limited this step, and its latencies understate what users would see.
    pub client_limited: bool,
}

fn arrivals(records: &[RequestRecord]) -> Arrivals {
    let n = records.len();
    let rate = |first: Option<u64>, last: Option<u64>| match (first, last) {
        (Some(a), Some(b)) if b > a && n > 1 => (n - 1) as f64 / ((b - a) as f64 / 1e9),
        _ => 0.0,
    };
    let scheduled: Vec<u64> = records.iter().map(|r| r.scheduled_ns).collect();
    let dispatched: Vec<u64> = records.iter().filter_map(|r| r.dispatched_ns).collect();
    let offered_rate = rate(scheduled.iter().min().copied(), scheduled.iter().max().copied());
    let delivered_rate = rate(dispatched.iter().min().copied(), dispatched.iter().max().copied());
    let lag: Vec<f64> =
        records.iter().filter_map(|r| r.dispatched_ns.map(|d| d.saturating_sub(r.scheduled_ns) as f64)).collect();
    let queue: Vec<f64> =
        records.iter().filter_map(|r| r.dispatched_ns.map(|d| r.sent_ns.saturating_sub(d) as f64)).collect();
    let schedule_lag_ms = Distribution::of_ns(&lag);
    let mean_gap_ms = if offered_rate > 0.0 { 1e3 / offered_rate } else { 0.0 };
    let client_limited = schedule_lag_ms.as_ref().is_some_and(|l| l.p99 > (0.1 * mean_gap_ms).max(1.0));
    Arrivals {
        scheduled: n as u64,
        offered_rate,
        delivered_rate,
        schedule_lag_ms,
        client_queue_ms: Distribution::of_ns(&queue),
        client_limited,
    }
}

/// Derives the metrics of a finished run.
pub fn summarize(outcome: &LoadOutcome) -> LoadMetrics {
    let records = &outcome.records;
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
    let requests = records.len() as u64;
    let errors = requests - ok.len() as u64;
    let mut errors_by_kind = BTreeMap::new();
    for kind in records.iter().filter_map(|r| r.error) {
        *errors_by_kind.entry(kind.to_string()).or_insert(0) += 1;
    }
    let duration_s = outcome.window_ns as f64 / 1e9;
    let per_s = |x: f64| {
        if duration_s > 0.0 { x / duration_s } else { 0.0 }
    };

    let input_tokens = input_counts(&ok, outcome.prompts_exact);
    let output_tokens = output_counts(&ok);

    let from_send = |at: fn(&RequestRecord) -> Option<u64>| -> Vec<f64> {
        ok.iter().filter_map(|r| at(r).map(|t| t.saturating_sub(r.sent_ns) as f64)).collect()
    };
    let ttft = from_send(|r| r.first_content_ns);
    let first_event = from_send(|r| r.first_event_ns);
    let ttfrt = from_send(|r| r.first_reasoning_ns);
    let e2e = from_send(|r| Some(r.end_ns));
    let itl: Vec<f64> =
        ok.iter().flat_map(|r| r.content_event_ns.windows(2).map(|w| w[1].saturating_sub(w[0]) as f64)).collect();
    // Per token: each gap between content events shared by the tokens it brought, the tokens of a
    // request spread evenly over its events after the first (exact when chunks are even).
    let itl_token: Vec<(f64, u64)> = ok
        .iter()
        .flat_map(|r| {
            let gaps = r.content_event_ns.len().saturating_sub(1);
            let tokens = r.output_tokens().saturating_sub(1);
            let per_gap = if gaps > 0 { tokens as f64 / gaps as f64 } else { 0.0 };
            r.content_event_ns.windows(2).filter(move |_| per_gap > 0.0).map(move |w| {
                let gap = w[1].saturating_sub(w[0]) as f64;
                (gap / per_gap, per_gap.round().max(1.0) as u64)
            })
        })
        .collect();
    let tpot: Vec<f64> = ok
        .iter()
        .filter_map(|r| {
            let n = r.output_tokens();
            let first = r.first_content_ns?;
            (n > 1).then(|| r.end_ns.saturating_sub(first) as f64 / (n - 1) as f64)
        })
        .collect();

    let both: Vec<(u64, u64)> = ok
        .iter()
        .filter(|r| r.reasoning_events == 0)
        .filter_map(|r| Some((r.usage_completion_tokens?, r.counted_output_tokens?)))
        .collect();
    let usage_agrees = (!both.is_empty()).then(|| both.iter().all(|(u, c)| u == c));

    LoadMetrics {
        requests,
        warmup_requests: outcome.warmup_requests,
        ok: ok.len() as u64,
        errors,
        error_rate: if requests > 0 { errors as f64 / requests as f64 } else { 0.0 },
        errors_by_kind,
        connection_retries: records.iter().map(|r| u64::from(r.connection_retries)).sum(),
        arrivals: outcome.open_loop.then(|| arrivals(records)),
        ttft_minus_server_prompt_ms: Distribution::of_ns(
            &ok.iter()
                .filter_map(|r| {
                    let ttft = r.first_content_ns?.saturating_sub(r.sent_ns) as f64;
                    Some(ttft - r.server_prompt_ms? * 1e6)
                })
                .collect::<Vec<_>>(),
        ),
        duration_s,
        request_throughput: per_s(ok.len() as f64),
        output_token_throughput: per_s(output_tokens.total as f64),
        total_token_throughput: per_s((input_tokens.total + output_tokens.total) as f64),
        input_tokens,
        output_tokens,
        ttft_ms: Distribution::of_ns(&ttft),
        ttft_first_event_ms: Distribution::of_ns(&first_event),
        ttfrt_ms: Distribution::of_ns(&ttfrt),
        itl_ms: Distribution::of_ns(&itl),
        itl_token_ms: Distribution::of_weighted_ns(&itl_token),
        tpot_ms: Distribution::of_ns(&tpot),
        e2e_ms: Distribution::of_ns(&e2e),
        usage_agrees,
        prefill_throughput: {
            let (tokens, secs) = ok
                .iter()
                .filter_map(|r| {
                    Some((
                        r.usage_prompt_tokens.unwrap_or(r.input_tokens),
                        r.first_content_ns?.saturating_sub(r.sent_ns) as f64 / 1e9,
                    ))
                })
                .fold((0u64, 0.0f64), |(t, s), (a, b)| (t + a, s + b));
            (secs > 0.0).then(|| tokens as f64 / secs)
        },
        cold_vs_warm: outcome.cold_requests.and_then(|k| cold_vs_warm(&ok, k)),
        stopped_early: outcome
            .expected_output_tokens
            .map(|want| ok.iter().filter(|r| r.output_tokens() < want).count() as u64),
        goodput: outcome.slo.as_ref().map(|slo| {
            let met = ok
                .iter()
                .filter(|r| {
                    let ms = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e6;
                    let ttft = r.first_content_ns.map(|f| ms(f, r.sent_ns));
                    let e2e = ms(r.end_ns, r.sent_ns);
                    let n = r.output_tokens();
                    let tpot = r.first_content_ns.filter(|_| n > 1).map(|f| ms(r.end_ns, f) / (n - 1) as f64);
                    slo.ttft_ms.is_none_or(|max| ttft.is_some_and(|t| t <= max))
                        && slo.tpot_ms.is_none_or(|max| tpot.is_none_or(|t| t <= max))
                        && slo.e2e_ms.is_none_or(|max| e2e <= max)
                })
                .count() as u64;
            Goodput {
                requests: met,
                rate: per_s(met as f64),
                share: if requests > 0 { met as f64 / requests as f64 } else { 0.0 },
            }
        }),
    }
}

fn output_counts(ok: &[&RequestRecord]) -> TokenCounts {
    let source = |r: &RequestRecord| match (r.usage_completion_tokens, r.counted_output_tokens) {
        (Some(_), _) => "usage",
        (None, Some(_)) => "tokenizer",
        (None, None) => "events",
    };
    counts(
        ok,
        |r| r.output_tokens(),
        |r| r.usage_completion_tokens,
        ok.iter().map(|r| r.counted_output_tokens).sum::<Option<u64>>(),
        ok.iter().map(|r| u64::from(r.content_events)).sum(),
        source,
    )
}

fn input_counts(ok: &[&RequestRecord], prompts_exact: bool) -> TokenCounts {
    let built = if prompts_exact { "tokenizer" } else { "words" };
    counts(
        ok,
        |r| r.usage_prompt_tokens.unwrap_or(r.input_tokens),
        |r| r.usage_prompt_tokens,
        prompts_exact.then(|| ok.iter().map(|r| r.input_tokens).sum()),
        0,
        |r| {
            if r.usage_prompt_tokens.is_some() { "usage" } else { built }
        },
    )
}

fn counts(
    ok: &[&RequestRecord],
    best: impl Fn(&RequestRecord) -> u64,
    usage: impl Fn(&RequestRecord) -> Option<u64>,
    counted_total: Option<u64>,
    events_total: u64,
    source: impl Fn(&RequestRecord) -> &'static str,
) -> TokenCounts {
    let total: u64 = ok.iter().map(|r| best(r)).sum();
    let mut sources = ok.iter().map(|r| source(r));
    let first = sources.next();
    let source = match first {
        None => "none",
        Some(s) if sources.all(|o| o == s) => s,
        Some(_) => "mixed",
    };
    let nonempty = !ok.is_empty();
    TokenCounts {
        total,
        mean: if nonempty { total as f64 / ok.len() as f64 } else { 0.0 },
        usage_total: ok.iter().map(|r| usage(r)).sum::<Option<u64>>().filter(|_| nonempty),
        counted_total: counted_total.filter(|_| nonempty),
        events_total,
        source,
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
        LoadOutcome {
            records,
            window_ns: window_ms * MS,
            prompts_exact: true,
            input_tokens: 10,
            open_loop: false,
            slo: None,
            expected_output_tokens: None,
            warmup_requests: 0,
            cold_requests: None,
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
        let mut o = outcome(records, 100);
        o.slo = Some(crate::manifest::load::Slo {
            ttft_ms: Some(15.0),
            tpot_ms: None,
            e2e_ms: Some(50.0),
            attainment: None,
        });
        o.expected_output_tokens = Some(4);
        let m = summarize(&o);
        let g = m.goodput.unwrap();
        assert_eq!(g.requests, 2, "request 1 breaks the e2e SLO");
        assert!((g.rate - 20.0).abs() < 1e-9 && (g.share - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(m.stopped_early, Some(1), "request 2 generated 2 of 4 tokens");
        // 3 × 10 input tokens over 3 × 10 ms of TTFT.
        assert!((m.prefill_throughput.unwrap() - 1000.0).abs() < 1e-6);
        let tpot_slo =
            crate::manifest::load::Slo { ttft_ms: None, tpot_ms: Some(10.0), e2e_ms: None, attainment: None };
        o.slo = Some(tpot_slo);
        // TPOT: (40−10)/3 = 10, (100−10)/3 = 30, (20−10)/1 = 10.
        assert_eq!(summarize(&o).goodput.unwrap().requests, 2);
    }

    #[test]
    fn cold_requests_against_the_rest() {
        // e2e: 100 ms (cold), then 52, 50, 50, 49, 51.
        let e2e = [100, 52, 50, 50, 49, 51];
        let records: Vec<RequestRecord> = e2e.iter().enumerate().map(|(i, e)| record(i as u64, 0, &[10], *e)).collect();
        let mut o = outcome(records, 400);
        o.cold_requests = Some(1);
        let c = summarize(&o).cold_vs_warm.unwrap();
        assert_eq!(c.cold_requests, 1);
        assert!((c.cold_e2e_ms - 100.0).abs() < 1e-9 && (c.warm_e2e_ms - 50.4).abs() < 1e-9);
        assert!((c.e2e_reduction_pct - 49.6).abs() < 1e-9);
        assert_eq!(c.stable_from, Some(1));
    }
}
