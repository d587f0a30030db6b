//! A model's local tokenizer.json sizes prompts and counts answers when the engine has no
//! tokenize call (here: the simulator's template with `tokenize: null`; the fixture is a
//! word-level tokenizer, so it agrees with the simulator's own counts).

use std::path::Path;
use std::process::Command;

use serde_json::Value as Json;

#[test]
fn a_local_tokenizer_json_makes_prompts_exact_without_a_tokenize_route() {
    let d = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/words.json");
    std::fs::copy(&fixture, d.path().join("tokenizer.json")).unwrap();
    std::fs::write(
        d.path().join("notok.yaml"),
        "apiVersion: kitt/v1\nkind: Engine\nmetadata: {name: sim_notok}\nspec: {base: sim, tokenize: null}\n",
    )
    .unwrap();
    let suite = |tokenizer: &str| {
        format!(
            r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: local-tok}}
spec:
  templates: [notok.yaml]
  models: [{{name: m{tokenizer}}}]
  engines: [{{name: sim, template: sim_notok}}]
  benchmarks: [{{name: t, template: throughput, params: {{concurrency: 2, requests: 12, input_tokens: 24, max_tokens: 6}}}}]
  warmup: {{requests: 0}}
"#
        )
    };
    let run = |yaml: String, runs: &str| -> Json {
        std::fs::write(d.path().join("s.yaml"), yaml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_kitt"))
            .arg("apply")
            .arg(d.path().join("s.yaml"))
            .arg("--fresh")
            .env("KITT_RUNS_DIR", d.path().join(runs))
            .env("KITT_HOST_LOCK", d.path().join("lock"))
            .env("KITT_STORE", "off")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let dir = std::fs::read_dir(d.path().join(runs)).unwrap().next().unwrap().unwrap().path();
        serde_json::from_slice(&std::fs::read(dir.join("report/result.json")).unwrap()).unwrap()
    };
    // Without a tokenizer prompts are word counts, not exact, and answers are counted by events.
    let without = run(suite(""), "runs-a");
    assert_eq!(without["cells"][0]["provenance"]["prompts_exact"], false);
    assert!(without["cells"][0]["metrics"]["output_tokens"]["counted_total"].is_null());
    // With the model's tokenizer.json both are exact, and agree with the engine's usage.
    let with = run(suite(", tokenizer: tokenizer.json"), "runs-b");
    let c = &with["cells"][0];
    assert_eq!(c["provenance"]["prompts_exact"], true, "{c}");
    let m = &c["metrics"];
    assert_eq!(m["input_tokens"]["counted_total"], 12 * 24, "{m}");
    assert_eq!(m["input_tokens"]["usage_total"], 12 * 24, "{m}");
    assert_eq!(m["output_tokens"]["counted_total"], 12 * 6, "{m}");
    assert_eq!(m["usage_agrees"], true);
    // A tokenizer file that is not there fails the cell and names the file.
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    std::fs::write(d.path().join("s.yaml"), suite(", tokenizer: tokenizer.json")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kitt"))
        .arg("apply")
        .arg(d.path().join("s.yaml"))
        .arg("--fresh")
        .env("KITT_RUNS_DIR", d.path().join("runs-c"))
        .env("KITT_HOST_LOCK", d.path().join("lock"))
        .env("KITT_STORE", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot load the tokenizer") && err.contains("tokenizer.json"), "{err}");
}
