//! What the agent test binaries share: a sim suite placed on agents, and reading what a run's
//! attempts and commits say.
#![allow(dead_code)] // each test binary uses its own part

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// The heartbeat the server asks of its agents in these tests.
pub const HEARTBEAT_MS: u64 = 300;

pub fn suite(model: &str, cells: &str, requests: u32, select: &str, lease: &str) -> String {
    format!(
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: agents-{model}}}
spec:
  models: [{{name: {model}}}]
  engines: [{{name: sim, template: sim, params: {{ttft_ms: 2, itl_ms: 1, tokens_per_chunk: 2}}}}]
  benchmarks:
    - name: tput
      template: throughput
      params: {{concurrency: [{cells}], requests: {requests}, input_tokens: 16, max_tokens: 16}}
  sampling: {{temperature: 0, seed: 5}}
  warmup: {{requests: 1}}
  execution:
    executor: agents
    granularity: cell
    isolation: engine
    agents: {{select: {{{select}}}, lease: {lease}}}
"#
    )
}

/// Waits for `f` to hold, up to `secs`.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn finished(run: &Path) -> bool {
    run.join("report").join("result.json").exists()
        && std::fs::read_to_string(run.join("journal.jsonl")).unwrap_or_default().contains("\"run_finished\"")
}

/// Each attempt record of the run: (unit, attempt) → record.
pub fn records(run: &Path) -> BTreeMap<(String, u32), Json> {
    std::fs::read_dir(run.join("agents"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let stem = name.strip_suffix(".json")?;
            let (unit, attempt) = stem.rsplit_once('.')?;
            let v: Json = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some(((unit.to_string(), attempt.parse().ok()?), v))
        })
        .collect()
}

/// Every committed step of the run: key → the marker the server wrote.
pub fn commits(run: &Path) -> BTreeMap<String, Json> {
    std::fs::read_dir(run.join("steps"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = std::fs::read(e.path().join(".committed")).ok()?;
            Some((e.file_name().to_string_lossy().to_string(), serde_json::from_slice(&m).unwrap_or(Json::Null)))
        })
        .collect()
}
