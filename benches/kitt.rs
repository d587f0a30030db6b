//! `cargo bench --bench kitt`: the performance targets of the compiler and the scheduler.
//!
//! Each line prints the measured value next to its target. Timings are the best of a few
//! repetitions (the machines are shared and noisy); memory is the process's peak RSS growth.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kitt::cancel::Cancel;
use kitt::manifest::suite::{Isolation, OnFailure};
use kitt::run::journal::{self, Event, Journal};
use kitt::run::scheduler::{self, Executor, StepFuture};

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn best<T>(reps: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        last = Some(v);
    }
    (best, last.expect("at least one repetition"))
}

/// A suite whose matrix has `a × b` cells on one engine.
fn matrix_suite(dir: &Path, a: usize, b: usize) -> std::path::PathBuf {
    let c: Vec<String> = (1..=a).map(|i| i.to_string()).collect();
    let t: Vec<String> = (1..=b).map(|i| (i * 8).to_string()).collect();
    let yaml = format!(
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: big}}\nspec:\n  models: [{{name: m}}]\n  engines: [{{name: e, template: sim}}]\n  benchmarks:\n    - {{name: t, template: throughput, params: {{concurrency: [{}], input_tokens: [{}]}}}}\n  execution: {{isolation: none}}\n",
        c.join(", "),
        t.join(", ")
    );
    let p = dir.join("big.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

/// A ~1 MB suite: many benchmark instances.
fn large_suite(dir: &Path) -> std::path::PathBuf {
    let mut yaml = String::from(
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {name: wide}\nspec:\n  models: [{name: m}]\n  engines: [{name: e, template: sim}]\n  benchmarks:\n",
    );
    let mut i = 0;
    while yaml.len() < 1024 * 1024 {
        yaml.push_str(&format!(
            "    - name: bench-number-{i:06}\n      template: throughput\n      params: {{concurrency: {}, requests: {}, input_tokens: {}, max_tokens: {}, temperature: 0.{}}}\n      # a comment that makes the entry look like one a person wrote, with some padding\n",
            1 + i % 64, 10 + i % 100, 16 + i % 512, 8 + i % 256, i % 10
        ));
        i += 1;
    }
    let p = dir.join("wide.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

struct Noop;

impl Executor for Noop {
    fn run(self: Arc<Self>, _step: usize, _attempt: u32, _cancel: Cancel) -> StepFuture {
        Box::pin(async { Ok(serde_json::Value::Null) })
    }
    fn restart(self: Arc<Self>, _step: usize, _cancel: Cancel) -> StepFuture {
        Box::pin(async { Ok(serde_json::Value::Null) })
    }
}

#[derive(clap::Parser)]
struct SimCli {
    #[command(flatten)]
    sim: kitt::engine::sim::SimArgs,
}

/// Runs one open-loop load against an in-process zero-latency simulator; returns its metrics.
fn open_loop(
    rt: &tokio::runtime::Runtime,
    profile: kitt::manifest::load::Profile,
    requests: u64,
) -> kitt::bench::metrics::LoadMetrics {
    use clap::Parser as _;
    use kitt::manifest::load::{ApiKind, LoadSpec, PromptSpec};
    rt.block_on(async move {
        let args = SimCli::parse_from(["sim", "--port", "0"]).sim;
        let listener = kitt::engine::sim::bind(&args).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(kitt::engine::sim::serve_on(listener, args, std::future::pending()));
        let call = kitt::plan::RequestTemplate {
            method: "POST".into(),
            path: "/v1/completions".into(),
            body: serde_json::json!({"model": "sim", "prompt": "{{prompt}}", "max_tokens": 4, "ignore_eos": true,
                "stream": true, "stream_options": {"include_usage": true}}),
            stream: kitt::manifest::template_kind::StreamFormat::Sse,
            text: "/choices/0/text".into(),
            reasoning: None,
            done: Some("[DONE]".into()),
            done_field: None,
            usage: None,
            server_prompt_ms: None,
        };
        let load = LoadSpec {
            api: ApiKind::Completion,
            profile,
            requests: Some(requests),
            duration: None,
            prompt: PromptSpec::fixed(8),
            ignore_eos: true,
            max_concurrency: None,
            slo: None,
            warmup: None,
            cold_requests: None,
            ramp: None,
            request_timeout: None,
        };
        let input = kitt::bench::load::LoadInput {
            client: kitt::engine::client::EngineClient::new(&url, Vec::new(), 256).unwrap(),
            call,
            api: ApiKind::Completion,
            load,
            tokenize: None,
            seed: 1,
            progress: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            errors: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            cancel: Cancel::default(),
            expected_output_tokens: None,
            records: None,
            index_offset: 0,
            window_opens: None,
            cutoff: None,
            clients: None,
        };
        let outcome = kitt::bench::load::run(input).await.unwrap();
        server.abort();
        kitt::bench::metrics::summarize(&outcome)
    })
}

fn main() {
    // `cargo bench --bench kitt -- events`: only the event reader.
    if std::env::args().skip(1).any(|a| a == "events") {
        events();
        return;
    }
    // `cargo bench --bench kitt -- merge`: only the merge of client shards' records.
    if std::env::args().skip(1).any(|a| a == "merge") {
        merge();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    println!("{:<58} {:>14} {:>12}", "benchmark", "measured", "target");

    // 1. kitt plan on a 10,000-cell matrix.
    let big = matrix_suite(dir.path(), 100, 100);
    let rss0 = peak_rss_kib();
    let (t, plan) = best(3, || kitt::plan::compile::compile_file(&big).unwrap());
    let rss = peak_rss_kib().saturating_sub(rss0);
    println!(
        "{:<58} {:>11.0} ms {:>12}",
        format!("plan: {} cells, {} steps", plan.cells.len(), plan.steps.len()),
        t.as_secs_f64() * 1e3,
        "< 1000 ms"
    );
    println!("{:<58} {:>11} MB {:>12}", "plan: peak memory growth", rss / 1024, "< 200 MB");
    let (t, json) = best(3, || serde_json::to_vec(&plan).unwrap());
    println!(
        "{:<58} {:>11.0} ms {:>12}",
        format!("plan: serialize to JSON ({} MB)", json.len() / 1_000_000),
        t.as_secs_f64() * 1e3,
        "-"
    );

    // 2. kitt validate of a 1 MB suite.
    let wide = large_suite(dir.path());
    let size = std::fs::metadata(&wide).unwrap().len();
    let (t, _) = best(5, || kitt::cli::validate_file(&wide).unwrap());
    println!(
        "{:<58} {:>11.1} ms {:>12}",
        format!("validate: {} KB suite", size / 1024),
        t.as_secs_f64() * 1e3,
        "< 100 ms"
    );
    let text = std::fs::read_to_string(&wide).unwrap();
    let (t, _) = best(5, || kitt::manifest::yaml::parse(&text).unwrap());
    println!("{:<58} {:>11.1} ms {:>12}", "validate: of which YAML parsing", t.as_secs_f64() * 1e3, "-");
    let (t, _) = best(5, || kitt::plan::compile::load_suite(&wide).unwrap());
    println!("{:<58} {:>11.1} ms {:>12}", "validate: of which parsing + decoding", t.as_secs_f64() * 1e3, "-");

    // 3. Resume: read a 10,000-record journal and decide what is left.
    let jpath = dir.path().join("journal.jsonl");
    {
        let mut j = Journal::open(&jpath, &journal::read(&jpath).unwrap()).unwrap();
        for (i, s) in plan.steps.iter().cycle().take(10_000).enumerate() {
            let event = if i % 2 == 0 {
                Event::StepStarted { step: s.id, key: s.key.clone(), kind: s.kind, attempt: 0, label: "cell".into() }
            } else {
                Event::StepFinished {
                    step: s.id,
                    key: s.key.clone(),
                    kind: s.kind,
                    attempt: 0,
                    outputs: serde_json::json!({"requests": 64, "ok": 64}),
                }
            };
            j.append(event).unwrap();
        }
    }
    let (t, left) = best(5, || {
        let c = journal::read(&jpath).unwrap();
        let finished: HashSet<&str> = c
            .records
            .iter()
            .filter_map(|r| match &r.event {
                Event::StepFinished { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        plan.steps.iter().filter(|s| !finished.contains(s.key.as_str())).count()
    });
    println!(
        "{:<58} {:>11.1} ms {:>12}",
        format!("resume: read 10,000 records, {left} steps left"),
        t.as_secs_f64() * 1e3,
        "< 50 ms"
    );

    // 3b. A run driven by many `kitt work` attempts: the same 10,000 records spread over 1,000
    //     journal shards (10 each), merged in time order.
    let run_dir = dir.path().join("sharded-run");
    std::fs::create_dir_all(journal::shards_dir(&run_dir)).unwrap();
    std::fs::write(run_dir.join("journal.jsonl"), "").unwrap();
    let lines: Vec<String> = std::fs::read_to_string(&jpath).unwrap().lines().map(String::from).collect();
    for (i, chunk) in lines.chunks(10).enumerate() {
        let path = journal::shard_path(&run_dir, &format!("u{i:04}"), 0);
        std::fs::write(path, chunk.join("\n") + "\n").unwrap();
    }
    let (t, merged) = best(5, || journal::read_run(&run_dir).unwrap().len());
    println!(
        "{:<58} {:>11.1} ms {:>12}",
        format!("resume: merge 1,000 shards, {merged} records"),
        t.as_secs_f64() * 1e3,
        "< 1000 ms"
    );

    // 4. Scheduler overhead per step over no-op steps. The journal is on tmpfs when available so
    //    this measures the scheduler, not the disk; the fsync cost is printed separately.
    let shm = Path::new("/dev/shm");
    let jdir = if shm.is_dir() { tempfile::tempdir_in(shm).unwrap() } else { tempfile::tempdir().unwrap() };
    let small = matrix_suite(dir.path(), 50, 100);
    let plan = kitt::plan::compile::compile_file(&small).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let opts = scheduler::Options {
        max_parallel: 1,
        retries: 0,
        step_timeout: Duration::from_secs(60),
        on_failure: OnFailure::Continue,
        isolation: Isolation::None,
        host_lock: jdir.path().join("host.lock"),
        holder: "bench".into(),
        kept_failed: HashSet::new(),
        only: None,
    };
    let (t, n) = best(3, || {
        let p = jdir.path().join(format!("j{}.jsonl", journal::unix_ns()));
        let j = Arc::new(Mutex::new(Journal::open(&p, &journal::read(&p).unwrap()).unwrap()));
        let out = rt.block_on(scheduler::run(&plan, Arc::new(Noop), &HashSet::new(), &opts, j, &Cancel::default()));
        assert_eq!(out.failed_cells, 0);
        plan.steps.len()
    });
    println!(
        "{:<58} {:>11.1} µs {:>12}",
        format!("scheduler: {n} no-op steps (journal on tmpfs), per step"),
        t.as_secs_f64() * 1e6 / n as f64,
        "< 100 µs"
    );
    // 5. Open-loop fidelity against an in-process zero-latency simulator.
    use kitt::manifest::load::Profile;
    for (name, profile, n) in [
        ("constant 100 req/s", Profile::Constant(100.0), 500),
        ("constant 1,000 req/s", Profile::Constant(1000.0), 5000),
        ("poisson 100 req/s", Profile::Poisson { rate: 100.0, burstiness: 1.0 }, 500),
        ("poisson 1,000 req/s", Profile::Poisson { rate: 1000.0, burstiness: 1.0 }, 5000),
    ] {
        let m = open_loop(&rt, profile, n);
        let a = m.arrivals.unwrap();
        println!(
            "{:<58} {:>11.2} %  {:>12}",
            format!("open loop {name}: delivered vs offered rate"),
            (a.delivered_rate / a.offered_rate - 1.0) * 100.0,
            "within 2 %"
        );
    }
    let m = open_loop(&rt, Profile::Constant(5000.0), 25_000);
    let a = m.arrivals.unwrap();
    println!(
        "{:<58} {:>11.1} µs {:>12}",
        format!("open loop 5,000 req/s: schedule lag p99 ({} ok)", m.ok),
        a.schedule_lag_ms.map_or(f64::NAN, |l| l.p99 * 1e3),
        "< 1000 µs"
    );
    println!(
        "{:<58} {:>11.1} µs {:>12}",
        "open loop 5,000 req/s: dispatch → send (client queue) p99",
        a.client_queue_ms.map_or(f64::NAN, |l| l.p99 * 1e3),
        "-"
    );

    events();

    // The durable part: one fsynced journal record on the disk the runs live on.
    let p = dir.path().join("fsync.jsonl");
    let mut j = Journal::open(&p, &journal::read(&p).unwrap()).unwrap();
    let t = Instant::now();
    for _ in 0..200 {
        j.append(Event::RunInterrupted { signal: "bench".into() }).unwrap();
    }
    println!(
        "{:<58} {:>11.1} µs {:>12}",
        "journal: one fsynced record on the runs disk",
        t.elapsed().as_secs_f64() * 1e6 / 200.0,
        "-"
    );
}

/// The event reader alone: the loopback handler's answer (../shared/bench/loopback: 16 one-token
/// completion chunks, a usage chunk and `[DONE]`) framed and read as the measured path reads it.
fn events() {
    let chunk = r#"{"id": "c1", "object": "text_completion", "created": 1, "model": "tiny", "choices": [{"index": 0, "text": " tok", "logprobs": null, "finish_reason": null}]}"#;
    let last = r#"{"id": "c1", "object": "text_completion", "created": 1, "model": "tiny", "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": "length"}], "usage": {"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24}}"#;
    let mut body = format!("data: {chunk}\n\n").repeat(16);
    body.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    let call = kitt::plan::RequestTemplate {
        method: "POST".into(),
        path: "/v1/completions".into(),
        body: serde_json::json!({}),
        stream: kitt::manifest::template_kind::StreamFormat::Sse,
        text: "/choices/0/text".into(),
        reasoning: None,
        done: Some("[DONE]".into()),
        done_field: None,
        usage: Some(kitt::manifest::template_kind::UsagePointers {
            prompt_tokens: Some("/usage/prompt_tokens".into()),
            completion_tokens: "/usage/completion_tokens".into(),
        }),
        server_prompt_ms: None,
    };
    let answers = 20_000;
    let (t, read) = best(5, || kitt::engine::client::read_answer_for_bench(&call, body.as_bytes(), answers));
    assert_eq!(read, 16 * answers as u64);
    let events = 18.0 * answers as f64;
    println!(
        "{:<58} {:>11.0} ns {:>12}",
        format!("events: read one answer ({} bytes, 18 events)", body.len()),
        t.as_secs_f64() * 1e9 / answers as f64,
        "-"
    );
    println!(
        "{:<58} {:>11.2} M/s {:>11}",
        "events: SSE events framed and scanned, one core",
        events / t.as_secs_f64() / 1e6,
        "-"
    );
}

/// One cell's records from 4 client shards merged as the coordinator merges them: 10 million
/// typical streamed requests (16 content events each; `KITT_MERGE_RECORDS` changes the count),
/// the tally alone and with `requests.jsonl` written, and the peak memory.
fn merge() {
    use kitt::engine::client::RequestRecord;
    let total: u64 = std::env::var("KITT_MERGE_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let record = |index: u64| {
        let sent = index * 50_000 + 1_000;
        let first = sent + 2_000_000 + (index % 977) * 1_000;
        RequestRecord {
            index,
            scheduled_ns: index * 50_000,
            dispatched_ns: Some(index * 50_000 + 300),
            sent_ns: sent,
            headers_ns: Some(first - 100_000),
            first_byte_ns: Some(first - 50_000),
            first_event_ns: Some(first),
            first_content_ns: Some(first),
            last_event_ns: Some(first + 15 * 20_000),
            end_ns: first + 15 * 20_000 + 5_000,
            content_event_ns: (0..16).map(|e| first + e * (20_000 + index % 7)).collect(),
            content_events: 16,
            usage_prompt_tokens: Some(128),
            usage_completion_tokens: Some(16),
            input_tokens: 128,
            status: Some(200),
            ..RequestRecord::default()
        }
    };
    let dir = tempfile::tempdir_in(std::env::var_os("KITT_MERGE_DIR").unwrap_or_else(|| ".".into())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    println!("{:<58} {:>14} {:>12}", "benchmark", "measured", "target");
    let rss0 = peak_rss_kib();
    let (tally, took) =
        rt.block_on(kitt::bench::load::clients::merge_for_bench(dir.path(), 4, (0..total).map(record), None)).unwrap();
    assert_eq!(tally.requests(), (total, total));
    println!(
        "{:<58} {:>12.2} s {:>12}",
        format!("merge: {total} records from 4 client shards, tally"),
        took.as_secs_f64(),
        "< 10 s"
    );
    println!(
        "{:<58} {:>11} MB {:>12}",
        "merge: peak memory growth",
        peak_rss_kib().saturating_sub(rss0) / 1024,
        "< 500 MB"
    );
    let out = dir.path().join("requests.jsonl");
    let (_, took) = rt
        .block_on(kitt::bench::load::clients::merge_for_bench(dir.path(), 4, (0..total).map(record), Some(&out)))
        .unwrap();
    println!(
        "{:<58} {:>12.2} s {:>12}",
        format!(
            "merge: the same, writing requests.jsonl ({} MB)",
            std::fs::metadata(&out).map_or(0, |m| m.len()) >> 20
        ),
        took.as_secs_f64(),
        "-"
    );
}
