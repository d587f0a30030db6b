//! Staged load profiles end to end against the simulator: `sweep` (synchronous, throughput, rates
//! between, early stop on SLO attainment) and `stages` with a ramp.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;

fn kitt(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kitt"));
    c.env("KITT_RUNS_DIR", dir.join("runs"))
        .env("KITT_STORE", "off")
        .env("KITT_HOST_LOCK", dir.join("host.lock"))
        .env_remove("KITT_TEST_KILL_AFTER_RECORD")
        .env_remove("KITT_TEST_KILL_IN_BENCHMARK");
    c
}

fn text(o: &Output) -> String {
    format!("{:?}\n{}\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn only_run(dir: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1);
    runs[0].clone()
}

fn report(run: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(run.join("report/result.json")).unwrap()).unwrap()
}

fn stage_names(cell: &Json) -> Vec<String> {
    cell["metrics"]["stages"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str().map(String::from)).collect()
}

#[test]
fn serial_the_sweep_example_runs_every_stage_and_reports_each() {
    let d = tempfile::tempdir().unwrap();
    let out = kitt(d.path())
        .arg("apply")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sweep.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r = report(&only_run(d.path()));
    let sweep = &r["cells"][0];
    let names = stage_names(sweep);
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(names[0], "synchronous");
    assert!(names[1].starts_with("throughput"));
    let stages = sweep["metrics"]["stages"].as_array().unwrap();
    let (sync, max) = (
        stages[0]["metrics"]["request_throughput"].as_f64().unwrap(),
        stages[1]["metrics"]["request_throughput"].as_f64().unwrap(),
    );
    // The rates lie evenly between the two measured throughputs, and each was offered as scheduled.
    for (k, s) in stages[2..5].iter().enumerate() {
        let offered = s["metrics"]["arrivals"]["offered_rate"].as_f64().unwrap();
        let expected = sync + (max - sync) * (k + 1) as f64 / 4.0;
        assert!((offered - expected).abs() / expected < 0.01, "stage {k}: {offered} vs {expected}");
        assert_eq!(s["metrics"]["requests"], 30);
    }
    // The cell's metrics are those of the highest rate it sustained, not a mix of five loads.
    assert_eq!(stages[4]["headline"], true, "{stages:?}");
    assert!(stages[..4].iter().all(|s| s.get("headline").is_none()));
    assert_eq!(sweep["metrics"]["requests"], 30);
    assert_eq!(sweep["metrics"]["request_throughput"], stages[4]["metrics"]["request_throughput"]);
    assert!(sweep["metrics"]["from_schedule"].is_object(), "a rate stage is an open loop");
    let staged = &r["cells"][1];
    assert_eq!(stage_names(staged), ["stage 1", "stage 2"]);
    assert_eq!(staged["metrics"]["requests"], 80);
}

#[test]
fn serial_a_sweep_stops_at_the_first_rate_that_misses_its_slo() {
    let d = tempfile::tempdir().unwrap();
    let suite = d.path().join("s.yaml");
    // Every request takes at least 20 ms to its first token: a 5 ms objective fails at once.
    std::fs::write(
        &suite,
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: stop}
spec:
  models: [{name: m}]
  engines: [{name: sim, template: sim, params: {ttft_ms: 20, itl_ms: 1}}]
  benchmarks:
    - {name: sweep, template: sweep, params: {rates: 4, requests: 12, max_concurrency: 4, max_tokens: 4, input_tokens: 8, ttft_slo_ms: 5}}
"#,
    )
    .unwrap();
    let out = kitt(d.path()).arg("apply").arg(&suite).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r = report(&only_run(d.path()));
    let stages = r["cells"][0]["metrics"]["stages"].as_array().unwrap().clone();
    assert_eq!(stages.len(), 4, "synchronous, throughput, the first rate, and why it stopped: {stages:?}");
    let stop = &stages[3];
    assert!(stop["stopped"].as_str().unwrap().contains("met the SLOs"), "{stop}");
    assert_eq!(stop["rates_not_run"], 3);
    // No rate was sustained: the synchronous stage speaks for the cell.
    assert_eq!(stages[0]["headline"], true, "{stages:?}");
    assert_eq!(r["cells"][0]["metrics"]["requests"], 12);
}

#[test]
fn serial_a_ramp_starts_workers_one_by_one() {
    let d = tempfile::tempdir().unwrap();
    let suite = d.path().join("s.yaml");
    std::fs::write(&suite, "apiVersion: kitt/v1\nkind: Suite\nmetadata: {name: ramp}\nspec:\n  templates: [ramp.yaml]\n  models: [{name: m}]\n  engines: [{name: sim, template: sim, params: {itl_ms: 5}}]\n  benchmarks: [{name: r, template: ramped}]\n  warmup: {requests: 0}\n").unwrap();
    std::fs::write(
        d.path().join("ramp.yaml"),
        "apiVersion: kitt/v1\nkind: Benchmark\nmetadata: {name: ramped}\nspec:\n  mechanism: load\n  load:\n    profile: {concurrency: 4}\n    ramp: 600ms\n    requests: 8\n    prompt: {synthetic: {input_tokens: 8}}\n",
    )
    .unwrap();
    let out = kitt(d.path()).arg("apply").arg(&suite).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = only_run(d.path());
    let mut sends: Vec<u64> = std::fs::read_dir(run.join("steps"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("requests.jsonl")).ok())
        .flat_map(|t| {
            t.lines().map(|l| serde_json::from_str::<Json>(l).unwrap()["sent_ns"].as_u64().unwrap()).collect::<Vec<_>>()
        })
        .collect();
    sends.sort_unstable();
    assert_eq!(sends.len(), 8);
    // Workers start at 0, 150, 300 and 450 ms: the 4th distinct start is at least 450 ms in.
    let first = sends[0];
    assert!(sends[3] - first >= 440_000_000, "{sends:?}");
}

#[test]
fn repeated_cells_are_summarized_with_a_confidence_interval() {
    let d = tempfile::tempdir().unwrap();
    let suite = d.path().join("s.yaml");
    std::fs::write(
        &suite,
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: reps}
spec:
  models: [{name: m}]
  engines: [{name: sim, template: sim, params: {ttft_ms: 2}}]
  benchmarks: [{name: lat, template: latency, params: {requests: 4, max_tokens: 4}}]
  runs: 3
  warmup: {requests: 0}
  reporters: [json, markdown, html]
"#,
    )
    .unwrap();
    let out = kitt(d.path()).arg("apply").arg(&suite).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("REPEATED sim lat × 3 runs: ttft.p50"), "{}", text(&out));
    let run = only_run(d.path());
    let r = report(&run);
    let reps = r["repetitions"].as_array().unwrap();
    assert_eq!(reps.len(), 1);
    assert_eq!(reps[0]["runs"], 3);
    let ttft = &reps[0]["metrics"]["ttft.p50"];
    assert_eq!(ttft["n"], 3);
    let values: Vec<f64> =
        r["cells"].as_array().unwrap().iter().map(|c| c["metrics"]["ttft_ms"]["p50"].as_f64().unwrap()).collect();
    let mean = values.iter().sum::<f64>() / 3.0;
    assert!((ttft["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    let (lo, hi) = (ttft["ci95"][0].as_f64().unwrap(), ttft["ci95"][1].as_f64().unwrap());
    assert!(lo <= mean && mean <= hi, "{ttft}");
    let md = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    assert!(md.contains("## Repetitions") && md.contains("| sim | m | lat  | 3 | ttft.p50 |"), "{md}");
    let html = std::fs::read_to_string(run.join("report/report.html")).unwrap();
    assert!(html.contains("<h2 id=\"repetitions\">") && html.contains("<td>ttft.p50</td>"), "the html report too");
}
