//! Endpoint engines (a server kitt does not start) and argv safety of native engines.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::Parser;
use serde_json::Value as Json;

#[derive(Parser)]
struct SimCli {
    #[command(flatten)]
    sim: kitt::engine::sim::SimArgs,
}

/// Starts the simulator in this process on a free port; returns its base URL.
fn start_sim(flags: &[&str]) -> String {
    let args = SimCli::parse_from(["sim", "--port", "0"].iter().chain(flags)).sim;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = kitt::engine::sim::bind(&args).await.unwrap();
            let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
            tx.send(format!("{scheme}://{}", listener.local_addr().unwrap())).unwrap();
            kitt::engine::sim::serve_on(listener, args, std::future::pending()).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

fn kitt(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kitt"));
    c.env("KITT_RUNS_DIR", dir.join("runs"))
        .env("KITT_STORE", "off")
        .env("KITT_HOST_LOCK", dir.join("host.lock"))
        .env_remove("KITT_SIM_REQUEST_LOG");
    c
}

fn text(o: &Output) -> String {
    format!("{:?}\n{}\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
    }
    out
}

fn endpoint_suite(dir: &Path, url: &str, extra: &str) -> PathBuf {
    let p = dir.join("suite.yaml");
    std::fs::write(
        &p,
        format!(
            r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: remote}}
spec:
  models: [{{name: remote-model, served_name: auto}}]
  engines:
    - name: prod
      template: vllm
      endpoint:
        url: {url}
        headers: {{Authorization: {{from_env: KITT_TEST_TOKEN, prefix: "Bearer "}}, X-Team: bench}}
{extra}
  benchmarks: [{{name: lat, template: latency, params: {{requests: 4, max_tokens: 5, input_tokens: 8}}}}]
  warmup: {{requests: 1}}
  reporters: [json, csv]
"#
        ),
    )
    .unwrap();
    p
}

const SECRET: &str = "s3cret-token-4f1c";

#[test]
fn an_endpoint_with_a_secret_header_runs_and_the_secret_is_written_nowhere() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("sim-requests.jsonl");
    let url = start_sim(&[
        "--model",
        "served-x",
        "--require-header",
        &format!("Authorization: Bearer {SECRET}"),
        "--request-log",
        log.to_str().unwrap(),
    ]);
    let suite = endpoint_suite(d.path(), &url, "");
    // The plan has no pull, start or stop for an endpoint: it connects.
    let plan = kitt(d.path()).args(["plan", "--output", "json"]).arg(&suite).output().unwrap();
    let plan: Json = serde_json::from_slice(&plan.stdout).unwrap();
    let kinds: Vec<&str> = plan["steps"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["connect", "warmup", "benchmark", "collect", "report"]);
    let out = kitt(d.path()).arg("apply").arg(&suite).env("KITT_TEST_TOKEN", SECRET).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // `served_name: auto` found the server's model, and it reached every request.
    let bodies: Vec<Json> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap())
        .filter(|r| r["path"] == "/v1/completions")
        .map(|r| r["body"].clone())
        .collect();
    assert_eq!(bodies.len(), 1 + 4);
    assert!(bodies.iter().all(|b| b["model"] == "served-x"), "{bodies:?}");
    // The secret is in no file kitt wrote, nor in its output.
    let runs = d.path().join("runs");
    for f in files_under(&runs) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(SECRET), "the secret leaked into {}", f.display());
    }
    assert!(!text(&out).contains(SECRET));
    let run = files_under(&runs).into_iter().find(|f| f.ends_with("report/result.json")).unwrap();
    let report: Json = serde_json::from_slice(&std::fs::read(run).unwrap()).unwrap();
    let facts = &report["cells"][0]["provenance"]["facts"];
    assert_eq!(facts["engine.served_model"], "served-x");
    assert_eq!(facts["endpoint.models"], "served-x");
}

#[test]
fn a_missing_secret_or_a_wrong_one_is_a_clear_failure() {
    let d = tempfile::tempdir().unwrap();
    let url = start_sim(&["--model", "served-x", "--require-header", &format!("Authorization: Bearer {SECRET}")]);
    let suite = endpoint_suite(d.path(), &url, "");
    let out = kitt(d.path()).arg("apply").arg(&suite).env_remove("KITT_TEST_TOKEN").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("KITT_TEST_TOKEN"), "{}", text(&out));
    let out = kitt(d.path()).arg("apply").arg(&suite).arg("--fresh").env("KITT_TEST_TOKEN", "wrong").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("401"), "{}", text(&out));
    assert!(!text(&out).contains(SECRET));
}

#[test]
fn a_native_argument_with_spaces_quotes_and_flags_stays_one_argument() {
    let d = tempfile::tempdir().unwrap();
    let weird = r#"we ird "name" --usage false"#;
    let suite = d.path().join("s.yaml");
    std::fs::write(
        &suite,
        format!(
            "apiVersion: kitt/v1\nkind: Suite\nmetadata: {{name: argv}}\nspec:\n  models: [{{name: m, served_name: '{weird}'}}]\n  engines: [{{name: s, template: sim}}]\n  benchmarks: [{{name: lat, template: latency, params: {{requests: 3, max_tokens: 4}}}}]\n  warmup: {{requests: 0}}\n"
        ),
    )
    .unwrap();
    let plan: Json =
        serde_json::from_slice(&kitt(d.path()).args(["plan", "--output", "json"]).arg(&suite).output().unwrap().stdout)
            .unwrap();
    let argv: Vec<&str> =
        plan["groups"][0]["mode"]["native"]["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let i = argv.iter().position(|a| *a == "--model").unwrap();
    assert_eq!(argv[i + 1], weird, "one argv element");
    let out = kitt(d.path()).arg("apply").arg(&suite).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let run = files_under(&d.path().join("runs")).into_iter().find(|f| f.ends_with("report/result.json")).unwrap();
    let report: Json = serde_json::from_slice(&std::fs::read(run).unwrap()).unwrap();
    // Had `--usage false` become a flag of its own, the simulator would have sent no usage.
    assert_eq!(report["cells"][0]["metrics"]["output_tokens"]["source"], "usage");
    assert_eq!(report["cells"][0]["status"], "ok");
}

/// A throwaway CA and a server certificate for 127.0.0.1, made with the openssl command line.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is installed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=kitt test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

#[test]
fn an_https_endpoint_is_trusted_through_its_ca_file_or_loudly_not_at_all() {
    let d = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(d.path());
    let url =
        start_sim(&["--model", "tls-model", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    assert!(url.starts_with("https://"));
    // Without the CA the server is not trusted: the connect step fails and says why.
    let suite = endpoint_suite(d.path(), &url, "");
    let out = kitt(d.path()).arg("apply").arg(&suite).env("KITT_TEST_TOKEN", "t").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).to_lowercase().contains("certificate"), "{}", text(&out));
    // With the CA file it runs.
    let suite = endpoint_suite(d.path(), &url, &format!("        ca_file: {}", ca.display()));
    let out = kitt(d.path()).arg("apply").arg(&suite).arg("--fresh").env("KITT_TEST_TOKEN", "t").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // `insecure: true` runs too, and every result says so.
    let suite = endpoint_suite(d.path(), &url, "        insecure: true");
    let out = kitt(d.path())
        .args(["apply", "--output", "json", "--fresh"])
        .arg(&suite)
        .env("KITT_TEST_TOKEN", "t")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["report"]["cells"][0]["provenance"]["facts"]["endpoint.tls"], "INSECURE: certificate not verified");
}

#[test]
fn the_endpoint_example_runs_against_a_local_server() {
    let d = tempfile::tempdir().unwrap();
    let url = start_sim(&["--model", "example-model", "--require-header", "Authorization: Bearer example-token"]);
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/endpoint.yaml")).unwrap();
    assert!(example.contains("url: http://127.0.0.1:8000"));
    // The example as shipped, pointed at this test's server instead of port 8000.
    let suite = d.path().join("endpoint.yaml");
    std::fs::write(&suite, example.replace("http://127.0.0.1:8000", &url)).unwrap();
    let out = kitt(d.path()).arg("apply").arg(&suite).env("KITT_ENDPOINT_TOKEN", "example-token").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("latency #0") && stdout.contains("tput concurrency=8 #0"), "{stdout}");
}

/// The `openai` template talks to any OpenAI-compatible server with the standard fields only: no
/// tokenize call (prompts are sized with the model's tokenizer.json) and no `ignore_eos`, so
/// answers that stop early show as a warning rather than as a faster engine.
#[test]
fn the_openai_template_needs_no_tokenize_route_and_flags_early_stops() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("sim-requests.jsonl");
    let url = start_sim(&["--request-log", log.to_str().unwrap()]);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/words.json");
    std::fs::copy(&fixture, d.path().join("tokenizer.json")).unwrap();
    let suite = d.path().join("suite.yaml");
    std::fs::write(
        &suite,
        format!(
            r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: hosted}}
spec:
  models: [{{name: sim, tokenizer: tokenizer.json}}]
  engines: [{{name: api, template: openai, endpoint: {{url: "{url}"}}}}]
  benchmarks: [{{name: lat, template: latency, params: {{requests: 12, max_tokens: 40, input_tokens: 16}}}}]
  warmup: {{requests: 0}}
  execution: {{max_error_rate: 0}}
"#
        ),
    )
    .unwrap();
    let out = kitt(d.path()).arg("apply").arg(&suite).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let requests: Vec<Json> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(requests.iter().all(|r| r["path"] != "/tokenize"), "no tokenize call: {requests:?}");
    let generations: Vec<&Json> = requests.iter().filter(|r| r["path"] == "/v1/completions").collect();
    assert_eq!(generations.len(), 12);
    for r in &generations {
        let body = &r["body"];
        assert!(body.get("ignore_eos").is_none() && body.get("top_k").is_none(), "{body}");
        assert_eq!(body["max_tokens"], 40);
    }
    let run = std::fs::read_dir(d.path().join("runs")).unwrap().next().unwrap().unwrap().path();
    let report: Json = serde_json::from_slice(&std::fs::read(run.join("report/result.json")).unwrap()).unwrap();
    let cell = &report["cells"][0];
    assert_eq!(cell["provenance"]["prompts_exact"], true, "sized with the model's tokenizer");
    // The sim, not told to ignore EOS, ends some answers early: the warning says so.
    let early = cell["metrics"]["stopped_early"].as_u64().unwrap();
    assert!(early > 0, "{}", cell["metrics"]);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("generated fewer tokens than asked"), "{summary}");
}

fn secret_param_suite(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("keyed-sim.yaml"), common::KEYED_SIM).unwrap();
    let p = dir.join("suite.yaml");
    std::fs::write(
        &p,
        "apiVersion: kitt/v1\nkind: Suite\nmetadata: {name: keyed}\nspec:\n  templates: [keyed-sim.yaml]\n  models: [{name: m}]\n  engines: [{name: s, template: keyed-sim, params: {api_key: {from_env: KITT_TEST_API_KEY}}}]\n  benchmarks: [{name: lat, template: latency, params: {requests: 3, max_tokens: 4}}]\n  warmup: {requests: 1}\n  reporters: [json, csv, markdown]\n",
    )
    .unwrap();
    p
}

#[test]
fn a_secret_param_reaches_the_engine_and_is_written_nowhere() {
    let d = tempfile::tempdir().unwrap();
    let suite = secret_param_suite(d.path());
    // The value is a path outside the run directory: the simulator writes its request log there
    // only if the value reached its argv.
    let secret = d.path().join("k3y-9d2e-sentinel");
    let secret = secret.to_str().unwrap();
    let plan_with = |value: &str| -> Json {
        let out =
            kitt(d.path()).args(["plan", "--output", "json"]).arg(&suite).env("KITT_TEST_API_KEY", value).output();
        let out = out.unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(!text(&out).contains(value), "the value leaked into `kitt plan`");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let plan = plan_with(secret);
    assert_eq!(plan["groups"][0]["params"]["api_key"], "secret:api_key");
    assert_eq!(plan["groups"][0]["secrets"]["api_key"], "KITT_TEST_API_KEY");
    let keys = |p: &Json| -> Vec<String> {
        p["steps"].as_array().unwrap().iter().map(|s| s["key"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(keys(&plan), keys(&plan_with("another-value")), "keys do not depend on a secret's value");
    let text_plan = kitt(d.path()).arg("plan").arg(&suite).env("KITT_TEST_API_KEY", secret).output().unwrap();
    assert!(text_plan.status.success() && !text(&text_plan).contains(secret), "{}", text(&text_plan));

    let out = kitt(d.path()).arg("apply").arg(&suite).env("KITT_TEST_API_KEY", secret).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(secret), "the value leaked into kitt's output");
    // It reached the engine's argv: the request log is where the value says.
    let log = std::fs::read_to_string(format!("{secret}.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("/v1/completions")).count(), 1 + 3);
    let runs = d.path().join("runs");
    let files = files_under(&runs);
    assert!(files.iter().any(|f| f.ends_with("plan.json")) && files.iter().any(|f| f.ends_with("engine.log")));
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(secret), "the secret leaked into {}", f.display());
        assert!(!String::from_utf8_lossy(&bytes).contains("k3y-9d2e"), "the secret leaked into {}", f.display());
    }
}

#[test]
fn a_secret_param_whose_variable_is_unset_stops_before_anything_starts() {
    let d = tempfile::tempdir().unwrap();
    let suite = secret_param_suite(d.path());
    let out = kitt(d.path()).arg("apply").arg(&suite).env_remove("KITT_TEST_API_KEY").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out)
            .contains("secret param `api_key` reads the environment variable `KITT_TEST_API_KEY`, which is not set"),
        "{}",
        text(&out)
    );
    assert!(!d.path().join("runs").exists(), "no run was started");
}
