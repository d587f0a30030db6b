//! Evals through `kitt apply` against the simulator with an answer key (`kitt sim --answers`):
//! the score is known before the run, so it is asserted exactly.

mod common;
use common::test_data;

use std::path::Path;
use std::process::Command;

use serde_json::Value as Json;

fn apply(dir: &Path, suite: &str) -> Json {
    let path = dir.join("suite.yaml");
    std::fs::write(&path, suite).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kitt"))
        .arg("apply")
        .arg(&path)
        .env("KITT_RUNS_DIR", dir.join("runs"))
        .env("KITT_HOST_LOCK", dir.join("host.lock"))
        .env("KITT_STORE", "off")
        .env_remove("KITT_TEST_KILL_IN_BENCHMARK")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let run = std::fs::read_dir(dir.join("runs")).unwrap().next().unwrap().unwrap().path();
    serde_json::from_slice(&std::fs::read(run.join("report/result.json")).unwrap()).unwrap()
}

fn items(dir: &Path) -> Vec<Json> {
    let run = std::fs::read_dir(dir.join("runs")).unwrap().next().unwrap().unwrap().path();
    std::fs::read_dir(run.join("steps"))
        .unwrap()
        .flatten()
        .filter_map(|s| std::fs::read_to_string(s.path().join("items.jsonl")).ok())
        .flat_map(|t| t.lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<Json>>())
        .collect()
}

fn suite(benchmark: &str, params: &str) -> String {
    format!(
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {{name: eval-sim}}
spec:
  models: [{{name: m}}]
  engines: [{{name: sim, template: sim, params: {{answers: key.jsonl}}}}]
  benchmarks: [{{name: e, template: {benchmark}, params: {params}}}]
  sampling: {{temperature: 0}}
  warmup: {{requests: 0}}
"#
    )
}

#[test]
fn mmlu_scores_exactly_the_share_the_answer_key_gets_right() {
    let Some(data) = test_data() else { return };
    let d = tempfile::tempdir().unwrap();
    // Every fourth question answered right, the rest with the next letter: exactly 25 of 100.
    let csv = data.join("mmlu/data/test/abstract_algebra_test.csv");
    let mut rows = csv::ReaderBuilder::new().has_headers(false).from_path(&csv).unwrap();
    let mut key = String::new();
    let mut n = 0;
    for (i, row) in rows.records().enumerate() {
        let row = row.unwrap();
        let right = row[5].trim().to_string();
        let wrong = ((right.as_bytes()[0] - b'A' + 1) % 4 + b'A') as char;
        let answer = if i % 4 == 0 { right } else { wrong.to_string() };
        key.push_str(&serde_json::json!({"match": row[0].trim(), "answer": answer}).to_string());
        key.push('\n');
        n += 1;
    }
    assert_eq!(n, 100);
    std::fs::write(d.path().join("key.jsonl"), key).unwrap();
    let source = format!("{}/mmlu/data/{{split}}/{{group}}_{{split}}.csv", data.display());
    let r = apply(d.path(), &suite("mmlu", &format!(r#"{{source: "{source}", subjects: [abstract_algebra], k: 0}}"#)));
    let e = &r["cells"][0]["metrics"]["eval"];
    assert_eq!(e["counts"]["scored"], 100, "{e}");
    assert_eq!(e["counts"]["correct"], 25, "{e}");
    assert_eq!(e["accuracy"], 0.25);
    assert_eq!(e["unparseable_share"], 0.0);
    // With shots the item's own question still decides (the latest match in the prompt).
    let d2 = tempfile::tempdir().unwrap();
    std::fs::copy(d.path().join("key.jsonl"), d2.path().join("key.jsonl")).unwrap();
    let r = apply(d2.path(), &suite("mmlu", &format!(r#"{{source: "{source}", subjects: [abstract_algebra], k: 5}}"#)));
    assert_eq!(r["cells"][0]["metrics"]["eval"]["counts"]["correct"], 25);
}

#[test]
fn truthfulqa_answering_always_a_scores_the_share_of_a_after_the_shuffle() {
    let Some(data) = test_data() else { return };
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("key.jsonl"), "{\"match\": \"\", \"answer\": \"A\"}\n").unwrap();
    let source = data.join("truthfulqa/TruthfulQA.csv");
    let r = apply(d.path(), &suite("truthfulqa", &format!(r#"{{source: "{}", sample_size: 200}}"#, source.display())));
    let e = &r["cells"][0]["metrics"]["eval"];
    let items = items(d.path());
    assert_eq!(items.len(), 200);
    let a = items.iter().filter(|i| i["expected"] == "A").count();
    assert_eq!(e["counts"]["correct"].as_u64().unwrap() as usize, a, "{e}");
    // Unshuffled, the correct answer would always be A; shuffled, "always A" is near chance.
    assert!(a < 100, "the options are shuffled: {a} of 200 have A correct");
}
