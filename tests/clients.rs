//! One cell's load from several client processes (`benchmarks[].clients`), end to end against
//! the simulator: the shards send exactly the one-client schedule, their records merge into the
//! metrics one client would report, a skewed clock is measured and corrected, a killed shard
//! fails its cell (or, with `clients_min`, leaves it complete with fewer and saying so), and the
//! manifest keys are checked with positions.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{KittEnv, report, text};
use kitt::bench::load::LoadOutcome;
use kitt::bench::metrics::{Tally, TallyConfig, summarize};
use kitt::engine::client::RequestRecord;
use serde_json::Value as Json;

/// A constant-rate benchmark (suite-local): `rate` requests per second, `requests` of them.
fn steady(rate: u32, requests: u32) -> String {
    format!(
        "apiVersion: kitt/v1\nkind: Benchmark\nmetadata: {{name: steady}}\nspec:\n  mechanism: load\n  load:\n    profile: {{constant: {rate}}}\n    requests: {requests}\n    max_concurrency: 64\n    prompt: {{synthetic: {{input_tokens: 16}}}}\n"
    )
}

/// A suite on the simulator with one `steady` benchmark whose instance ends with `extra`
/// (`clients: …`), written with its template into `env`'s directory.
fn suite(env: &KittEnv, rate: u32, requests: u32, extra: &str) -> PathBuf {
    std::fs::write(env.path().join("steady.yaml"), steady(rate, requests)).unwrap();
    env.suite(&format!(
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: clients}}\nspec:\n  templates: [steady.yaml]\n  models: [{{name: m}}]\n  engines: [{{name: sim, template: sim, params: {{ttft_ms: 4, itl_ms: 1}}}}]\n  benchmarks: [{{name: steady, template: steady, {extra}}}]\n  sampling: {{max_tokens: 6}}\n  warmup: {{requests: 0}}\n"
    ))
}

/// The records of the benchmark step whose result is `cell`, sorted by index.
fn records(run: &Path, cell: &Json) -> Vec<RequestRecord> {
    let key = cell["provenance"]["key"].as_str().unwrap();
    let text = std::fs::read_to_string(run.join("steps").join(key).join("requests.jsonl")).unwrap();
    let mut out: Vec<RequestRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    out.sort_by_key(|r| r.index);
    out
}

/// The cell of `report` whose `clients` (swept) is `n`.
fn cell_with(report: &Json, n: u64) -> Json {
    report["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cell"]["swept"]["clients"] == n)
        .unwrap_or_else(|| panic!("no cell with clients={n}: {report}"))
        .clone()
}

/// Whether two metric trees agree: every number equal, except those that are floating-point sums
/// (means, standard deviations, the prefill throughput), which may have been added in another
/// order and agree within 1e-9 relative. `skip` names keys only one side has.
fn same_metrics(path: &str, a: &Json, b: &Json, skip: &[&str], out: &mut Vec<String>) {
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                if skip.contains(&k.as_str()) {
                    continue;
                }
                same_metrics(&format!("{path}.{k}"), &x[k], y.get(k).unwrap_or(&Json::Null), skip, out);
            }
        }
        (Json::Number(x), Json::Number(y))
            if [".mean", ".stddev", ".prefill_throughput"].iter().any(|f| path.ends_with(f)) =>
        {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if (x - y).abs() > 1e-9 * x.abs().max(y.abs()).max(1e-12) {
                out.push(format!("{path}: {x} vs {y}"));
            }
        }
        _ if a != b => out.push(format!("{path}: {a} vs {b}")),
        _ => {}
    }
}

/// The exact nearest-rank percentile of sorted `v` (the rank HDR histograms use).
fn exact_percentile(v: &[f64], q: f64) -> f64 {
    let rank = ((q * v.len() as f64).ceil() as usize).max(1);
    v[rank - 1]
}

#[test]
fn four_clients_send_the_one_client_schedule_and_merge_to_its_exact_metrics() {
    let env = KittEnv::new();
    let file = suite(&env, 200, 400, "clients: [1, 4]");
    let sim_log = env.path().join("sim-requests.jsonl");
    let out = env.cmd().env("KITT_SIM_REQUEST_LOG", &sim_log).arg("apply").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = env.only_run();
    let r = report(&run);
    let (one, four) = (cell_with(&r, 1), cell_with(&r, 4));
    assert_ne!(one["provenance"]["key"], four["provenance"]["key"], "clients is part of the cell's identity");
    let clients = &four["metrics"]["clients"];
    assert_eq!(clients["count"], 4, "{clients}");
    assert_eq!(clients["completed"], 4);
    assert_eq!(clients["complete"], true);
    assert!(one["metrics"].get("clients").is_none());

    // The union of the shards' requests is the one-client schedule: the same indices, arrival
    // times and prompts (a prompt's length stands for its slot).
    let (a, b) = (records(&run, &one), records(&run, &four));
    assert_eq!(b.len(), 400);
    let schedule = |rs: &[RequestRecord]| -> Vec<(u64, u64, u64)> {
        rs.iter().map(|r| (r.index, r.scheduled_ns, r.input_tokens)).collect()
    };
    assert_eq!(schedule(&a), schedule(&b));
    assert_eq!(b.iter().map(|r| r.index).collect::<Vec<_>>(), (0..400).collect::<Vec<_>>());
    // The engine received the same 400 prompts from the four shards as from the one client
    // (the cells run one after the other: the one-client cell first), each once.
    let prompts: Vec<String> = std::fs::read_to_string(&sim_log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap())
        .filter(|l| l["path"] == "/v1/completions")
        .map(|l| l["body"]["prompt"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(prompts.len(), 800);
    let (mut first, mut second) = (prompts[..400].to_vec(), prompts[400..].to_vec());
    first.sort();
    second.sort();
    assert_eq!(first, second, "the shards sent other prompts than the one client");
    second.dedup();
    assert_eq!(second.len(), 400, "a prompt was sent twice");
    // 200 req/s: every 5 ms, exactly.
    assert!(b.iter().all(|r| r.scheduled_ns == r.index * 5_000_000), "not the constant schedule");
    // Each shard sent its round-robin share.
    for (k, shard) in clients["shards"].as_array().unwrap().iter().enumerate() {
        assert_eq!(shard["shard"], k);
        assert_eq!(shard["status"], "ok");
        assert_eq!(shard["requests"], 100, "{shard}");
        assert!(shard["send_lag_ms"]["p99"].is_number(), "{shard}");
    }

    // The merged metrics are kitt's own tally of the union, field for field.
    // The benchmark asks for `max_tokens` (6) without early stops: the tally judges that too.
    let mut tally = Tally::new(TallyConfig { expected_output_tokens: Some(6), ..TallyConfig::default() });
    b.iter().for_each(|rec| tally.add(rec));
    let bench: Json = serde_json::from_slice(
        &std::fs::read(run.join("steps").join(four["provenance"]["key"].as_str().unwrap()).join("benchmark.json"))
            .unwrap(),
    )
    .unwrap();
    let outcome = LoadOutcome {
        window_ns: tally.window_ns(),
        tally,
        prompts_exact: bench["prompts_exact"].as_bool().unwrap(),
        input_tokens: 16,
        open_loop: true,
        warmup_requests: 0,
        records: None,
        origin: std::time::Instant::now(),
        truncated: false,
        clients: None,
    };
    let ours = serde_json::to_value(summarize(&outcome)).unwrap();
    let mut diffs = Vec::new();
    same_metrics("metrics", &four["metrics"], &ours, &["clients"], &mut diffs);
    assert!(diffs.is_empty(), "the merge differs from the tally of the union:\n{}", diffs.join("\n"));

    // An independent exact percentile over the union agrees within 0.1 % (HDR's precision).
    let mut e2e: Vec<f64> =
        b.iter().filter(|r| r.error.is_none()).map(|r| (r.end_ns - r.sent_ns) as f64 / 1e6).collect();
    e2e.sort_by(f64::total_cmp);
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let exact = exact_percentile(&e2e, q);
        let merged = four["metrics"]["e2e_ms"][name].as_f64().unwrap();
        assert!((merged - exact).abs() <= exact * 1e-3, "e2e {name}: merged {merged}, exact {exact}");
    }
    let mean = e2e.iter().sum::<f64>() / e2e.len() as f64;
    assert!((four["metrics"]["e2e_ms"]["mean"].as_f64().unwrap() - mean).abs() < 1e-9 * mean);

    // `kitt runs show` lists each shard with its clock offset and send lag.
    let shown = env.cmd().args(["runs", "show"]).arg(run.file_name().unwrap()).output().unwrap();
    let shown_text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown_text.contains("4 of 4 client shards finished"), "{}", text(&shown));
    for k in 0..4 {
        assert!(shown_text.contains(&format!("shard {k} on ")), "{shown_text}");
    }
    assert!(shown_text.contains("clock offset") && shown_text.contains("send lag p50"), "{shown_text}");
}

#[test]
fn a_skewed_client_clock_is_measured_and_its_start_instant_corrected() {
    let env = KittEnv::new();
    let file = suite(&env, 100, 80, "clients: 4");
    let out = env.cmd().env("KITT_TEST_CLOCK_SKEW_MS", "2:5000").arg("apply").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r = report(&env.only_run());
    let clients = &r["cells"][0]["metrics"]["clients"];
    let start = clients["start_unix_ns"].as_i64().unwrap();
    for shard in clients["shards"].as_array().unwrap() {
        let k = shard["shard"].as_u64().unwrap();
        let offset_ms = shard["clock_offset_ms"].as_f64().unwrap();
        let skew_ms = if k == 2 { 5000.0 } else { 0.0 };
        assert!((offset_ms - skew_ms).abs() < 1.0, "shard {k}: offset {offset_ms} ms, skew {skew_ms} ms");
        // The start it was told is the coordinator's start in its own clock.
        let announced = shard["announced_start_ns"].as_i64().unwrap();
        assert!(
            ((announced - start) as f64 / 1e6 - offset_ms).abs() < 1e-3,
            "shard {k}: announced {announced}, start {start}, offset {offset_ms} ms"
        );
        assert!(((announced - start) as f64 - skew_ms * 1e6).abs() < 1e6, "shard {k}: {shard}");
        // Uncorrected, the skewed shard would have found its start 5 s in the past.
        let error = shard["start_error_ms"].as_f64().unwrap();
        assert!(error.abs() < 1000.0, "shard {k} opened its window {error} ms off its announced start");
    }
}

#[test]
fn under_the_processes_executor_the_unit_worker_coordinates_the_shards() {
    let env = KittEnv::new();
    let file = suite(&env, 100, 60, "clients: 2");
    let out = env.cmd().arg("apply").arg(&file).args(["--executor", "processes", "--workers", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = env.only_run();
    let r = report(&run);
    let cell = &r["cells"][0];
    let clients = &cell["metrics"]["clients"];
    assert_eq!(clients["completed"], 2, "{cell}");
    assert_eq!(cell["metrics"]["requests"], 60);
    // On a host with a core per shard, each shard ran on one of its own.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        let cores: Vec<&Json> = clients["shards"].as_array().unwrap().iter().map(|s| &s["core"]).collect();
        assert!(cores.iter().all(|c| c.is_u64()) && cores[0] != cores[1], "pinned to distinct cores: {cores:?}");
    }
    let indices: Vec<u64> = records(&run, cell).iter().map(|r| r.index).collect();
    assert_eq!(indices, (0..60).collect::<Vec<_>>());
}

#[test]
fn the_shards_errors_count_live_in_the_cells_progress() {
    let env = KittEnv::new();
    let file = suite(&env, 50, 200, "clients: 2");
    let yaml = std::fs::read_to_string(&file).unwrap().replace("itl_ms: 1}", "itl_ms: 1, error_rate: 0.3}");
    std::fs::write(&file, yaml).unwrap();
    let mut apply = env.cmd().arg("apply").arg(&file).stdout(std::process::Stdio::null()).spawn().unwrap();
    // The progress file (once a second while the cell's load runs) counts the shards' failures
    // as they happen, not only in the merged result.
    let mut live = (0u64, 0u64);
    while apply.try_wait().unwrap().is_none() {
        let progress = std::fs::read_dir(env.runs())
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|r| std::fs::read_dir(r.path().join("progress")).ok());
        for file in progress.flatten().flatten() {
            if let Ok(v) = serde_json::from_slice::<Json>(&std::fs::read(file.path()).unwrap_or_default())
                && v["errors"].as_u64().unwrap_or(0) > live.1
            {
                live = (v["requests"].as_u64().unwrap(), v["errors"].as_u64().unwrap());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(live.1 > 0 && live.1 < live.0, "no failure counted live: {live:?}");
    let r = report(&env.only_run());
    let errors = r["cells"][0]["metrics"]["errors"].as_u64().unwrap_or(0);
    assert!(errors >= live.1, "{live:?} live, {errors} in the result");
}

/// Live `kitt client-shard` processes started under `runs` (their environment names it).
fn shards_alive(runs: &Path) -> Vec<u32> {
    let marker = format!("KITT_RUNS_DIR={}", runs.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?).replace('\0', " ");
            let environ = String::from_utf8_lossy(&std::fs::read(e.path().join("environ")).ok()?).into_owned();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            (cmdline.contains("client-shard") && environ.split('\0').any(|v| v == marker) && !stat.contains(") Z "))
                .then_some(pid)
        })
        .collect()
}

#[test]
fn a_killed_coordinator_takes_its_shards_with_it_and_the_cell_reruns_whole() {
    use std::os::unix::process::ExitStatusExt as _;
    let env = KittEnv::new();
    // A 5 s window: shards that went on to its end would outlive the deadline below.
    let file = suite(&env, 100, 500, "clients: 4");
    // The coordinator kills itself once its shards have finished 40 requests in all.
    let out = env.cmd().env("KITT_TEST_KILL_IN_BENCHMARK", "40").arg("apply").arg(&file).output().unwrap();
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    // Their pipes closed, the shards stop at once, not at the end of their window.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !shards_alive(&env.runs()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "shards outlived their coordinator: {:?}",
            shards_alive(&env.runs())
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The resume runs the cell again from zero, from four shards, and leaves no spool behind.
    let out = env.cmd().arg("apply").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = env.only_run();
    let r = report(&run);
    let cell = &r["cells"][0];
    assert_eq!(cell["metrics"]["requests"], 500);
    assert_eq!(cell["metrics"]["clients"]["completed"], 4);
    let step = run.join("steps").join(cell["provenance"]["key"].as_str().unwrap());
    let spools: Vec<_> = std::fs::read_dir(&step)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("spool"))
        .collect();
    assert!(spools.is_empty(), "{spools:?}");
}

#[test]
fn a_killed_shard_fails_its_cell_and_is_named() {
    let env = KittEnv::new();
    let file = suite(&env, 100, 200, "clients: 4");
    let out = env.cmd().env("KITT_TEST_SHARD_KILL_AFTER", "1:10").arg("apply").arg(&file).output().unwrap();
    assert!(!out.status.success(), "a cell with a dead shard passed: {}", text(&out));
    let r = report(&env.only_run());
    let cell = &r["cells"][0];
    assert_eq!(cell["status"], "failed", "{cell}");
    let error = cell["error"].as_str().unwrap();
    assert!(error.contains("client shard 1 of 4") && error.contains("signal 9"), "{error}");
    assert!(error.contains("clients_min"), "the message says how to go on without it: {error}");
    // No partial window became a result.
    assert!(cell["metrics"].is_null(), "{cell}");
    let key = cell["provenance"]["key"].as_str().unwrap();
    let step = env.only_run().join("steps").join(key);
    assert!(!step.join("requests.jsonl").exists());
    // The shards' spools are gone with them.
    let left: Vec<_> = std::fs::read_dir(&step)
        .map(|d| d.flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().contains("spool")).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn with_clients_min_a_cell_completes_without_a_killed_shard_and_says_so() {
    let env = KittEnv::new();
    let file = suite(&env, 100, 200, "clients: 4, clients_min: 3");
    let out = env.cmd().env("KITT_TEST_SHARD_KILL_AFTER", "1:10").arg("apply").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = env.only_run();
    let r = report(&run);
    let cell = &r["cells"][0];
    let clients = &cell["metrics"]["clients"];
    assert_eq!(clients["min"], 3);
    assert_eq!(clients["completed"], 3);
    assert_eq!(clients["complete"], false, "a partial cell is never reported as whole: {clients}");
    let dead = &clients["shards"][1];
    assert_eq!(dead["status"], "failed");
    assert!(dead["error"].as_str().unwrap().contains("signal 9"), "{dead}");
    // Its requests are not in the metrics: exactly the other shards' shares.
    let rs = records(&run, cell);
    assert_eq!(cell["metrics"]["requests"], 150);
    assert_eq!(rs.len(), 150);
    assert!(rs.iter().all(|r| r.index % 4 != 1), "a dead shard's records were merged");
}

/// Validates `yaml` as a suite (with the `steady` template beside it): every error as
/// `LINE:COL message`.
fn errors(yaml: &str) -> Vec<String> {
    let env = KittEnv::new();
    std::fs::write(env.path().join("steady.yaml"), steady(100, 10)).unwrap();
    let path = env.suite(yaml);
    match kitt::cli::validate_file(&path) {
        Ok(_) => Vec::new(),
        Err(ds) => ds.iter().map(|d| format!("{}:{} {}", d.pos.line, d.pos.col, d.message)).collect(),
    }
}

fn with_bench(bench: &str, template_extra: &str) -> String {
    format!(
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: c}}\nspec:\n  templates: [steady.yaml]\n  models: [{{name: m}}]\n  engines: [{{name: sim, template: sim}}]\n  benchmarks:\n    - {bench}\n{template_extra}"
    )
}

#[test]
fn bad_clients_keys_are_errors_at_their_positions() {
    let cases: BTreeMap<&str, &str> = BTreeMap::from([
        (
            "{name: b, template: steady, clients: 0}",
            "9:44 `clients` of benchmark `b`: 0 is not a number of clients (1 to 256)",
        ),
        (
            "{name: b, template: steady, clients: 999}",
            "9:44 `clients` of benchmark `b`: 999 is not a number of clients (1 to 256)",
        ),
        (
            "{name: b, template: steady, clients: four}",
            "9:44 `clients` of benchmark `b`: expected a whole number of clients or a list of them, found a string",
        ),
        ("{name: b, template: steady, clients: []}", "9:44 `clients` of benchmark `b`: an empty list"),
        (
            "{name: b, template: steady, clients_min: 2}",
            "9:48 `clients_min` of benchmark `b` needs `clients` of 2 or more",
        ),
        (
            "{name: b, template: steady, clients: [1, 3], clients_min: 4}",
            "9:65 `clients_min` of benchmark `b`: 4 is not between 1 and `clients` (3)",
        ),
        (
            "{name: b, template: sweep, clients: 2}",
            "9:43 `clients: 2` of benchmark `b`: `stages` and `sweep` choose each stage from the merged result of the one before; they run from one client",
        ),
        (
            "{name: b, template: throughput, params: {concurrency: 2}, clients: 4}",
            "9:74 `clients: 4` of benchmark `b`: concurrency 2 cannot be split over 4 clients (each needs a worker)",
        ),
        (
            "{name: b, template: latency, clients: 2}",
            "9:45 `clients: 2` of benchmark `b`: a synchronous profile sends one request at a time, from one client",
        ),
    ]);
    let mut wrong = Vec::new();
    for (bench, want) in cases {
        let got = errors(&with_bench(bench, ""));
        if got.first().map(String::as_str) != Some(want) {
            wrong.push(format!("{bench}\n  want {want}\n  got  {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Valid keys validate.
    assert_eq!(
        errors(&with_bench("{name: b, template: steady, clients: [1, 2, 4], clients_min: 2}", "")),
        Vec::<String>::new()
    );
}

#[test]
fn the_plan_shows_each_cells_client_shards() {
    let env = KittEnv::new();
    let file = suite(&env, 100, 40, "clients: 4, clients_min: 3");
    let out = env.cmd().arg("plan").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("steady clients=4 run=0"), "{plan}");
    assert!(plan.contains("4 client processes on the host running the cell, completes with 3 or more"), "{plan}");
    assert!(
        plan.contains("client shard 1 of 4: requests 1, 5, 9, … at their scheduled times; up to 16 of 64 in flight"),
        "{plan}"
    );
    // And as JSON: the cell's clients.
    let out = env.cmd().args(["plan", "--output", "json"]).arg(&file).output().unwrap();
    let plan: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["cells"][0]["clients"], serde_json::json!({"count": 4, "min": 3}));
}

#[test]
fn clients_change_only_their_cells_keys_and_one_client_changes_nothing() {
    let env = KittEnv::new();
    let keys = |extra: &str| -> Vec<(String, String)> {
        let file = suite(&env, 100, 40, extra);
        let out = env.cmd().args(["plan", "--output", "json"]).arg(&file).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let plan: Json = serde_json::from_slice(&out.stdout).unwrap();
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["kind"].as_str().unwrap().to_string(), s["key"].as_str().unwrap().to_string()))
            .collect()
    };
    let (none, one, two) = (keys("params: {}"), keys("clients: 1"), keys("clients: 2"));
    assert_eq!(none, one, "`clients: 1` is the default and must not change a key");
    for ((kind, a), (_, b)) in none.iter().zip(&two) {
        // Where the load comes from is the cell's identity; the engine's lifecycle is untouched.
        assert_eq!(a != b, kind == "benchmark" || kind == "collect", "{kind}: {a} vs {b}");
    }
}
