//! The load generator and its metrics against the real simulator.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::bench::metrics::summarize;
use crate::engine::client::ErrorKind;
use crate::engine::client::tests::{chat_call, completion_call, start_sim, tokenize_call};
use crate::manifest::decode::Dur;
use crate::manifest::load::PromptSpec;

fn spec(profile: Profile, requests: Option<u64>, input_tokens: u32) -> LoadSpec {
    LoadSpec {
        api: ApiKind::Completion,
        profile,
        requests,
        duration: None,
        prompt: PromptSpec::fixed(input_tokens),
        ignore_eos: true,
        max_concurrency: None,
        slo: None,
        warmup: None,
        cold_requests: None,
        ramp: None,
        request_timeout: None,
    }
}

/// The simulator's tokenize call as a tokenizer.
fn engine_tokenizer() -> crate::bench::tokenizer::Tokenizer {
    let (req, pointer) = tokenize_call();
    crate::bench::tokenizer::Tokenizer::engine(req, pointer)
}

fn input(url: &str, call: RequestTemplate, load: LoadSpec, tokenizer: bool) -> LoadInput {
    let workers = load.profile.max_in_flight().unwrap_or(1) as usize;
    LoadInput {
        client: EngineClient::new(url, vec![], workers).unwrap(),
        call,
        api: load.api,
        load,
        tokenize: tokenizer.then(engine_tokenizer),
        seed: 1,
        progress: Arc::new(AtomicU64::new(0)),
        errors: Arc::new(AtomicU64::new(0)),
        cancel: Cancel::default(),
        expected_output_tokens: None,
        records: None,
        index_offset: 0,
        window_opens: None,
        cutoff: None,
        clients: None,
    }
}

/// A finished run with its records read back from the file it wrote.
struct Ran {
    outcome: LoadOutcome,
    records: Vec<RequestRecord>,
}

impl std::ops::Deref for Ran {
    type Target = LoadOutcome;

    fn deref(&self) -> &LoadOutcome {
        &self.outcome
    }
}

/// [`super::run`], keeping the records in a scratch directory and reading them back.
async fn run(mut input: LoadInput) -> Result<Ran, LoadError> {
    let dir = tempfile::tempdir().unwrap();
    input.records = Some(dir.path().join("requests.jsonl"));
    let outcome = super::run(input).await?;
    let records = outcome.read_records().unwrap();
    let spools = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(spools, 1, "only requests.jsonl is left: the spool is removed");
    Ok(Ran { outcome, records })
}

#[tokio::test]
async fn concurrency_runs_every_request_once() {
    let url = start_sim(&[]).await;
    let load = spec(Profile::Concurrency(4), Some(40), 8);
    let input = input(&url, completion_call(16), load, true);
    let progress = Arc::clone(&input.progress);
    let outcome = run(input).await.unwrap();
    assert_eq!(outcome.records.len(), 40);
    assert_eq!(progress.load(Ordering::Relaxed), 40);
    for (i, r) in outcome.records.iter().enumerate() {
        assert_eq!(r.index, i as u64);
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.output_tokens(), 16);
        assert_eq!(r.usage_prompt_tokens, Some(8));
        assert_eq!(r.scheduled_ns, r.scheduled_ns.min(r.sent_ns));
    }
    let m = summarize(&outcome);
    assert_eq!((m.requests, m.ok, m.errors), (40, 40, 0));
    assert!(m.request_throughput > 0.0 && m.output_token_throughput > 0.0);
    assert_eq!(m.output_tokens.total, 640);
    assert_eq!(m.input_tokens.total, 320);
    assert_eq!(m.ttft_ms.as_ref().unwrap().count, 40);
    assert_eq!(m.itl_ms.as_ref().unwrap().count, 40 * 15);
    assert_eq!(m.e2e_ms.as_ref().unwrap().count, 40);
    assert_eq!(m.tpot_ms.as_ref().unwrap().count, 40);
}

#[tokio::test]
async fn without_usage_the_tokenizer_counts_exactly() {
    let url = start_sim(&["--tokens-per-chunk", "4", "--usage", "false"]).await;
    let load = spec(Profile::Concurrency(2), Some(6), 4);
    let outcome = run(input(&url, completion_call(16), load, true)).await.unwrap();
    for r in &outcome.records {
        assert_eq!(r.usage_completion_tokens, None);
        assert_eq!(r.counted_output_tokens, Some(16), "{r:?}");
        assert_eq!(r.content_events, 4);
        assert_eq!(r.output_tokens(), 16);
    }
    let m = summarize(&outcome);
    assert_eq!(m.output_tokens.source, "tokenizer");
    assert_eq!((m.output_tokens.total, m.output_tokens.events_total), (96, 24));
    assert_eq!(m.usage_agrees, None);

    let url = start_sim(&["--tokens-per-chunk", "4"]).await;
    let load = spec(Profile::Concurrency(2), Some(6), 4);
    let outcome = run(input(&url, completion_call(16), load, true)).await.unwrap();
    for r in &outcome.records {
        assert_eq!(r.usage_completion_tokens, Some(16));
        assert_eq!(r.counted_output_tokens, Some(16));
        assert_eq!(r.content_events, 4);
    }
    let m = summarize(&outcome);
    assert_eq!(m.usage_agrees, Some(true));
    assert_eq!(m.output_tokens.source, "usage");
    assert_eq!(m.output_tokens.counted_total, Some(96));
}

#[tokio::test]
async fn ttft_includes_the_engines_delay() {
    let url = start_sim(&["--ttft-ms", "30"]).await;
    let load = spec(Profile::Concurrency(2), Some(6), 4);
    let outcome = run(input(&url, completion_call(4), load, false)).await.unwrap();
    let m = summarize(&outcome);
    let ttft = m.ttft_ms.unwrap();
    assert!(ttft.p50 >= 30.0 && ttft.min >= 30.0, "{ttft:?}");
    assert!(m.e2e_ms.unwrap().min >= 30.0);
}

#[tokio::test]
async fn reasoning_comes_before_content_and_is_not_ttft() {
    let url = start_sim(&["--reasoning-tokens", "3", "--itl-ms", "2"]).await;
    let mut load = spec(Profile::Synchronous, Some(3), 4);
    load.api = ApiKind::Chat;
    let outcome = run(input(&url, chat_call(8), load, true)).await.unwrap();
    for r in &outcome.records {
        assert!(r.ok(), "{r:?}");
        let (reasoning, content) = (r.first_reasoning_ns.unwrap(), r.first_content_ns.unwrap());
        assert!(reasoning < content, "{r:?}");
        assert_eq!((r.reasoning_events, r.content_events), (3, 5));
        assert_eq!(r.counted_output_tokens, Some(5));
    }
    let m = summarize(&outcome);
    let (ttft, ttfrt) = (m.ttft_ms.unwrap(), m.ttfrt_ms.unwrap());
    // Three reasoning tokens at 2 ms each come between the first reasoning and first content token.
    assert!(ttft.min >= ttfrt.min + 5.0, "{ttft:?} {ttfrt:?}");
    assert_eq!(m.usage_agrees, None); // usage counts reasoning; the text holds only content
}

#[tokio::test]
async fn prompts_have_the_exact_length_and_differ() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let url = start_sim(&["--request-log", log.to_str().unwrap()]).await;
    let load = spec(Profile::Concurrency(3), Some(12), 37);
    let outcome = run(input(&url, completion_call(2), load, true)).await.unwrap();
    assert!(outcome.prompts_exact);
    assert_eq!(outcome.input_tokens, 37);
    assert!(outcome.records.iter().all(|r| r.input_tokens == 37));
    let text = std::fs::read_to_string(&log).unwrap();
    let prompts: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["path"] == "/v1/completions")
        .map(|l| l["body"]["prompt"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(prompts.len(), 12);
    for p in &prompts {
        assert_eq!(p.split_whitespace().count(), 37, "{p}");
    }
    assert_eq!(prompts.iter().collect::<HashSet<_>>().len(), 12);
    let firsts: HashSet<&str> = prompts.iter().map(|p| p.split(' ').next().unwrap()).collect();
    assert_eq!(firsts.len(), 12, "every prompt starts differently");

    // Without a tokenizer: N words, not claimed exact.
    let load = spec(Profile::Synchronous, Some(2), 5);
    let outcome = run(input(&url, completion_call(2), load, false)).await.unwrap();
    assert!(!outcome.prompts_exact);
    assert_eq!(outcome.records[0].usage_prompt_tokens, Some(5));
}

#[tokio::test]
async fn records_that_cannot_be_kept_are_a_clear_error_before_any_request() {
    let url = start_sim(&[]).await;
    let mut input = input(&url, completion_call(2), spec(Profile::Synchronous, Some(2), 4), false);
    input.records = Some("/nonexistent-kitt-dir/requests.jsonl".into());
    let progress = Arc::clone(&input.progress);
    let Err(LoadError::Records(why)) = super::run(input).await else { panic!("the run must fail") };
    assert!(why.contains("/nonexistent-kitt-dir/.kitt-spool-"), "{why}");
    assert_eq!(progress.load(std::sync::atomic::Ordering::Relaxed), 0, "no request was sent");
}

#[tokio::test]
async fn every_failure_is_counted_by_kind() {
    let url = start_sim(&["--error-rate", "1.0"]).await;
    let load = spec(Profile::Concurrency(2), Some(10), 4);
    let outcome = run(input(&url, completion_call(4), load, true)).await.unwrap();
    assert!(outcome.records.iter().all(|r| r.error == Some(ErrorKind::Status(500))));
    let m = summarize(&outcome);
    assert_eq!(m.error_rate, 1.0);
    assert_eq!(m.errors_by_kind.get("http_500"), Some(&10));
    assert_eq!(m.ok, 0);
    assert!(m.ttft_ms.is_none());
}

#[tokio::test]
async fn a_duration_ends_the_run() {
    let url = start_sim(&["--itl-ms", "1"]).await;
    let mut load = spec(Profile::Concurrency(2), None, 4);
    load.duration = Some(Dur(Duration::from_millis(300)));
    let run = run(input(&url, completion_call(16), load, false));
    let outcome = tokio::time::timeout(Duration::from_secs(30), run).await.expect("the run ends").unwrap();
    assert!(!outcome.records.is_empty());
    assert!(outcome.records.iter().all(|r| r.ok()));
    // No request starts after the deadline.
    assert!(outcome.records.iter().all(|r| r.scheduled_ns < 300_000_000 + 50_000_000));
}

#[tokio::test]
async fn cancelling_returns_cancelled() {
    let url = start_sim(&["--itl-ms", "5"]).await;
    let load = spec(Profile::Concurrency(2), Some(1000), 4);
    let input = input(&url, completion_call(64), load, false);
    let cancel = input.cancel.clone();
    let progress = Arc::clone(&input.progress);
    let task = tokio::spawn(run(input));
    while progress.load(Ordering::Relaxed) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    let result =
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("cancel stops the run at once").unwrap();
    assert!(matches!(result, Err(LoadError::Cancelled)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_a_constant_rate_run_delivers_the_offered_rate() {
    let url = start_sim(&[]).await;
    let load = spec(Profile::Constant(200.0), Some(400), 4);
    let outcome = run(input(&url, completion_call(2), load, false)).await.unwrap();
    assert!(outcome.open_loop);
    let m = summarize(&outcome);
    assert_eq!(m.ok, 400);
    let a = m.arrivals.expect("open-loop metrics");
    assert_eq!(a.scheduled, 400);
    assert!((a.offered_rate - 200.0).abs() < 1e-6, "offered {}", a.offered_rate);
    // Wide slack: shared, noisy machines (the tight target lives in `cargo bench`).
    assert!((a.delivered_rate / 200.0 - 1.0).abs() < 0.10, "delivered {}", a.delivered_rate);
    // Every request keeps its scheduled time, and is never released before it.
    for r in &outcome.records {
        assert_eq!(r.scheduled_ns, r.index * 5_000_000);
        assert!(r.dispatched_ns.unwrap() >= r.scheduled_ns);
        assert!(r.sent_ns >= r.dispatched_ns.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_poisson_arrivals_follow_their_seeded_schedule() {
    let url = start_sim(&[]).await;
    let mut load = spec(Profile::Poisson { rate: 400.0, burstiness: 0.5 }, Some(200), 4);
    load.duration = None;
    let a = run(input(&url, completion_call(2), load.clone(), false)).await.unwrap();
    let b = run(input(&url, completion_call(2), load, false)).await.unwrap();
    assert_eq!(a.records.len(), 200);
    let sched = |o: &Ran| o.records.iter().map(|r| r.scheduled_ns).collect::<Vec<_>>();
    assert_eq!(sched(&a), sched(&b), "the same seed gives the same schedule");
    assert!(sched(&a).windows(2).all(|w| w[0] <= w[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_max_concurrency_queues_in_the_client_and_says_how_long() {
    let url = start_sim(&["--ttft-ms", "40"]).await;
    let mut load = spec(Profile::Constant(100.0), Some(20), 4);
    load.max_concurrency = Some(2);
    let outcome = run(input(&url, completion_call(2), load, false)).await.unwrap();
    let m = summarize(&outcome);
    assert_eq!(m.ok, 20);
    let a = m.arrivals.unwrap();
    // Two slots, 40 ms per request, an arrival every 10 ms: later requests wait for a slot.
    let queue = a.client_queue_ms.unwrap();
    assert!(queue.max > 50.0, "client queue {queue:?}");
    // The schedule itself was kept: waiting for a slot is not schedule lag.
    assert!(a.schedule_lag_ms.unwrap().p50 < 10.0);
}

#[test]
fn bodies_bind_the_prompt_or_the_messages() {
    let body: Value = serde_json::from_slice(&body_for(&completion_call(3), ApiKind::Completion, "a b")).unwrap();
    assert_eq!(body["prompt"], "a b");
    assert_eq!(body["max_tokens"], 3);
    let body: Value = serde_json::from_slice(&body_for(&chat_call(3), ApiKind::Chat, "a b")).unwrap();
    assert_eq!(body["messages"], serde_json::json!([{"role": "user", "content": "a b"}]));
}

/// One timing profile of the simulator and what an honest client must measure for it.
struct Truth {
    ttft_ms: f64,
    itl_ms: f64,
    per_chunk: u64,
    reasoning: u64,
}

/// Fidelity against the simulator's known timings. The slack is wide (shared, noisy machines):
/// TTFT may only be late, never early, and the median by less than `SLACK_MS` (one request
/// descheduled on a loaded machine is late by what the machine did, not by what kitt measures);
/// mean ITL and TPOT within 25 % (or 2 ms) of the truth; token counts exact.
async fn fidelity(truth: Truth) {
    const SLACK_MS: f64 = 25.0;
    const N: u64 = 16;
    let flags = [
        "--ttft-ms".to_string(),
        truth.ttft_ms.to_string(),
        "--itl-ms".into(),
        truth.itl_ms.to_string(),
        "--tokens-per-chunk".into(),
        truth.per_chunk.to_string(),
        "--reasoning-tokens".into(),
        truth.reasoning.to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let url = start_sim(&flags).await;
    let chat = truth.reasoning > 0;
    let mut load = spec(Profile::Concurrency(2), Some(8), 8);
    let call = if chat {
        load.api = ApiKind::Chat;
        chat_call(N as u32)
    } else {
        completion_call(N as u32)
    };
    let outcome = run(input(&url, call, load, true)).await.unwrap();
    // Content starts after the reasoning tokens, each costing one inter-token interval.
    let content_ttft = truth.ttft_ms + truth.reasoning as f64 * truth.itl_ms;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut ttfts, mut ttfrts) = (Vec::new(), Vec::new());
    for r in &outcome.records {
        assert!(r.ok(), "{r:?}");
        let ttft = (r.first_content_ns.unwrap() - r.sent_ns) as f64 / 1e6;
        assert!(ttft >= content_ttft, "TTFT {ttft} ms is below the truth {content_ttft} ms");
        ttfts.push(ttft);
        if chat {
            let ttfrt = (r.first_reasoning_ns.unwrap() - r.sent_ns) as f64 / 1e6;
            assert!(ttfrt >= truth.ttft_ms, "TTFRT {ttfrt} ms is below the truth {} ms", truth.ttft_ms);
            ttfrts.push(ttfrt);
        }
        // Exact counts: usage and the tokenizer agree with what was asked.
        assert_eq!(r.usage_completion_tokens, Some(N));
        assert_eq!(r.counted_output_tokens, Some(N - truth.reasoning));
    }
    let ttft = median(ttfts.clone());
    assert!(ttft < content_ttft + SLACK_MS, "median TTFT {ttft} ms, truth {content_ttft} ms: {ttfts:?}");
    if chat {
        let ttfrt = median(ttfrts.clone());
        assert!(ttfrt < truth.ttft_ms + SLACK_MS, "median TTFRT {ttfrt} ms, truth {} ms: {ttfrts:?}", truth.ttft_ms);
    }
    let m = summarize(&outcome);
    let close = |got: f64, want: f64| (got - want).abs() <= (want * 0.25).max(2.0);
    let itl_truth = truth.per_chunk as f64 * truth.itl_ms;
    let itl = m.itl_ms.unwrap().mean;
    assert!(close(itl, itl_truth), "mean ITL {itl} ms, truth {itl_truth} ms");
    if !chat {
        // (e2e − TTFT) spans the content events after the first: (N/k − 1) events of k·ITL each.
        let events = N.div_ceil(truth.per_chunk);
        let tpot_truth = (events - 1) as f64 * itl_truth / (N - 1) as f64;
        let tpot = m.tpot_ms.unwrap().mean;
        assert!(close(tpot, tpot_truth), "mean TPOT {tpot} ms, truth {tpot_truth} ms");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_fidelity_slow_first_token_one_token_per_chunk() {
    fidelity(Truth { ttft_ms: 40.0, itl_ms: 2.0, per_chunk: 1, reasoning: 0 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_fidelity_fast_first_token_four_tokens_per_chunk() {
    fidelity(Truth { ttft_ms: 5.0, itl_ms: 6.0, per_chunk: 4, reasoning: 0 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_fidelity_reasoning_first_stream() {
    fidelity(Truth { ttft_ms: 10.0, itl_ms: 3.0, per_chunk: 2, reasoning: 4 }).await;
}

#[tokio::test]
async fn a_benchmark_warmup_runs_first_on_prompts_of_its_own_and_is_excluded() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let url = start_sim(&["--request-log", log.to_str().unwrap()]).await;
    let mut load = spec(Profile::Concurrency(2), Some(6), 8);
    load.warmup = Some(crate::manifest::load::LoadWarmup { requests: Some(4), duration: None });
    let outcome = run(input(&url, completion_call(2), load, true)).await.unwrap();
    assert_eq!(outcome.records.len(), 6, "only measured requests are recorded");
    assert_eq!(outcome.warmup_requests, 4);
    assert_eq!(summarize(&outcome).warmup_requests, 4);
    let prompts: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["path"] == "/v1/completions")
        .map(|r| r["body"]["prompt"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(prompts.len(), 10);
    // The warmup went first, and no measured prompt was seen during the warmup.
    let (warm, measured) = prompts.split_at(4);
    assert!(warm.iter().all(|p| !measured.contains(p)), "warmup prompts overlap the measured ones");
}

#[tokio::test]
async fn prompt_lengths_follow_their_distribution_exactly() {
    use crate::manifest::load::Length;
    let url = start_sim(&[]).await;
    let mut load = spec(Profile::Concurrency(4), Some(40), 8);
    let length = Length::Uniform(4, 40);
    load.prompt = PromptSpec::Synthetic { input_tokens: length, shared_prefix: None };
    let outcome = run(input(&url, completion_call(2), load, true)).await.unwrap();
    assert!(outcome.prompts_exact);
    let lengths: Vec<u64> = outcome.records.iter().map(|r| r.input_tokens).collect();
    for r in &outcome.records {
        assert_eq!(r.input_tokens, u64::from(length.at(1, r.index)), "request {}", r.index);
        assert_eq!(r.usage_prompt_tokens, Some(r.input_tokens), "the engine saw exactly that many tokens");
    }
    let distinct: std::collections::BTreeSet<u64> = lengths.iter().copied().collect();
    assert!(distinct.len() > 10, "{distinct:?}");
}

#[tokio::test]
async fn shared_prefixes_are_exact_shared_within_a_group_and_distinct_between_groups() {
    let url = start_sim(&[]).await;
    let client = EngineClient::new(&url, vec![], 4).unwrap();
    let tok = engine_tokenizer();
    let spec = PromptSpec::Synthetic {
        input_tokens: crate::manifest::load::Length::Fixed(24),
        shared_prefix: Some(crate::manifest::load::SharedPrefix { tokens: 10, groups: 2 }),
    };
    let (prompts, nominal) = prompts::for_spec(&client, Some(&tok), 3, 6, &spec).await.unwrap();
    assert_eq!(nominal, 24);
    assert!(prompts.iter().all(|p| p.exact && p.tokens == 24), "every prompt is exactly 24 tokens");
    // The first 10 tokens (words, for the simulator's tokenizer) are the group's prefix.
    let head = |i: usize| prompts[i].text.split(' ').take(10).collect::<Vec<_>>().join(" ");
    assert_eq!(head(0), head(2));
    assert_eq!(head(1), head(3));
    assert_ne!(head(0), head(1));
    // After the prefix every prompt is its own.
    let tails: HashSet<String> =
        prompts.iter().map(|p| p.text.split(' ').skip(10).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(tails.len(), 6);
    // Cold (the default): no two prompts share even their first word.
    let cold = PromptSpec::fixed(24);
    let (prompts, _) = prompts::for_spec(&client, Some(&tok), 3, 6, &cold).await.unwrap();
    let firsts: HashSet<&str> = prompts.iter().map(|p| p.text.split(' ').next().unwrap()).collect();
    assert_eq!(firsts.len(), 6);
}

#[tokio::test]
async fn dataset_prompts_come_in_a_seeded_order_measured_by_the_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let sharegpt = dir.path().join("sg.json");
    std::fs::write(
        &sharegpt,
        r#"[
  {"id": "a", "conversations": [{"from": "human", "value": "one two three"}, {"from": "gpt", "value": "x"}]},
  {"id": "b", "conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "four five"}]},
  {"id": "c", "conversations": [{"from": "gpt", "value": "no human turn"}]},
  {"id": "d", "conversations": [{"from": "human", "value": "six seven eight nine"}]}
]"#,
    )
    .unwrap();
    let url = start_sim(&[]).await;
    let client = EngineClient::new(&url, vec![], 4).unwrap();
    let tok = engine_tokenizer();
    let d = |format, path: &std::path::Path, field: Option<&str>| {
        PromptSpec::Dataset(crate::manifest::load::DatasetPrompts {
            path: path.to_string_lossy().to_string(),
            format,
            field: field.map(String::from),
        })
    };
    let spec = d(crate::manifest::load::DatasetFormat::Sharegpt, &sharegpt, None);
    let (a, _) = prompts::for_spec(&client, Some(&tok), 9, 3, &spec).await.unwrap();
    let (b, _) = prompts::for_spec(&client, Some(&tok), 9, 3, &spec).await.unwrap();
    let texts: Vec<&str> = a.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(texts, b.iter().map(|p| p.text.as_str()).collect::<Vec<_>>(), "same seed, same order");
    let mut sorted = texts.clone();
    sorted.sort();
    assert_eq!(sorted, ["four five", "one two three", "six seven eight nine"], "the first human turns");
    for p in &a {
        assert!(p.exact);
        assert_eq!(p.tokens, p.text.split(' ').count() as u64, "measured by the engine's tokenizer");
    }
    // JSONL with a field of one's own; a bad line names the file and line.
    let jsonl = dir.path().join("p.jsonl");
    std::fs::write(&jsonl, "{\"q\": \"alpha beta\"}\n\n{\"q\": \"gamma\"}\n").unwrap();
    let spec = d(crate::manifest::load::DatasetFormat::Jsonl, &jsonl, Some("q"));
    let (p, _) = prompts::for_spec(&client, None, 1, 2, &spec).await.unwrap();
    assert_eq!(p.len(), 2);
    std::fs::write(&jsonl, "{\"q\": \"alpha\"}\n{\"text\": \"no q\"}\n").unwrap();
    let e = prompts::for_spec(&client, None, 1, 2, &spec).await.err().unwrap();
    assert!(e.contains("p.jsonl:2: no string `q`"), "{e}");
}
