//! Plans of the shipped suites (snapshots), and the stability rules of step keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kitt::plan::{self, Plan, StepKind};

fn shipped() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["examples", "suites"] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_example_and_suite_validates_and_plans() {
    let files = shipped();
    assert!(files.len() >= 4);
    for f in files {
        if !is_suite(&f) {
            // A template shipped beside the examples: checked on its own.
            let raw = kitt::manifest::read_raw(&f).unwrap_or_else(|e| panic!("{}: {e:#?}", f.display()));
            kitt::manifest::validate::template_file(&raw).unwrap_or_else(|e| panic!("{}: {e:#?}", f.display()));
            continue;
        }
        let plan = plan::compile::compile_file(&f).unwrap_or_else(|e| panic!("{}: {e:#?}", f.display()));
        assert!(!plan.cells.is_empty(), "{} has no cells", f.display());
        let graph = plan.graph();
        assert!(!petgraph::algo::is_cyclic_directed(&graph), "{} has a cycle", f.display());
    }
}

fn is_suite(f: &Path) -> bool {
    std::fs::read_to_string(f).unwrap().lines().any(|l| l.trim() == "kind: Suite")
}

#[test]
fn example_plans_snapshot() {
    for f in shipped().into_iter().filter(|f| f.starts_with("examples") && is_suite(f)) {
        let plan = plan::compile::compile_file(&f).unwrap();
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(format!("{name}.text"), plan::render::text(&plan, &BTreeMap::new()));
        insta::assert_json_snapshot!(format!("{name}.json"), plan, {".suite.dir" => "[dir]", ".suite.identity" => "[identity]"});
    }
}

fn write(dir: &Path, yaml: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("suite.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

fn keys(plan: &Plan) -> BTreeMap<String, String> {
    plan.steps
        .iter()
        .map(|s| {
            let who = match (s.cell, s.group) {
                (Some(c), _) => format!("{}:{}", s.kind.name(), plan.cells[c].label()),
                (None, Some(g)) => format!("{}:{}", s.kind.name(), plan.groups[g].id),
                _ => s.kind.name().to_string(),
            };
            (who, s.key.clone())
        })
        .collect()
}

const SUITE: &str = r#"
apiVersion: kitt/v1
kind: Suite
metadata: {name: keys}
spec:
  models:
    - {name: tiny, path: models/tiny.gguf}
  engines:
    - {name: a, template: vllm, image: "vllm/vllm-openai:v0.6.0"}
    - {name: b, template: llama_cpp, params: {ctx_size: 1024}}
  benchmarks:
    - name: tput
      template: throughput
      params: {concurrency: [1, 4], requests: 16}
    - name: lat
      template: latency
      params: {requests: 10}
  sampling: {temperature: 0.2}
"#;

fn compile(dir: &Path, yaml: &str) -> Plan {
    plan::compile::compile_file(&write(dir, yaml)).unwrap_or_else(|e| panic!("{e:#?}"))
}

#[test]
fn keys_are_stable_across_runs_and_directories() {
    let t = tempfile::tempdir().unwrap();
    let one = keys(&compile(&t.path().join("one"), SUITE));
    let again = keys(&compile(&t.path().join("one"), SUITE));
    let elsewhere = keys(&compile(&t.path().join("deep/other/place"), SUITE));
    assert_eq!(one, again);
    assert_eq!(one, elsewhere, "keys depend on the directory");
    // Every key is distinct.
    let mut values: Vec<_> = one.values().collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), one.len());
}

#[test]
fn changing_one_benchmark_param_changes_exactly_that_cells_keys() {
    let t = tempfile::tempdir().unwrap();
    let before = compile(t.path(), SUITE);
    let after = compile(t.path(), &SUITE.replace("params: {requests: 10}", "params: {requests: 11}"));
    assert_eq!(before.steps.len(), after.steps.len());
    let changed: Vec<(StepKind, String, String)> = before
        .steps
        .iter()
        .zip(&after.steps)
        .filter(|(a, b)| a.key != b.key)
        .map(|(a, _)| {
            let cell = &before.cells[a.cell.expect("only cell steps may change")];
            (a.kind, cell.benchmark.clone(), cell.engine.clone())
        })
        .collect();
    // `lat` runs on two engine groups: its benchmark and collect steps on each, nothing else.
    assert_eq!(
        changed,
        vec![
            (StepKind::Benchmark, "lat".into(), "a".into()),
            (StepKind::Collect, "lat".into(), "a".into()),
            (StepKind::Benchmark, "lat".into(), "b".into()),
            (StepKind::Collect, "lat".into(), "b".into()),
        ]
    );
}

#[test]
fn changing_an_image_changes_every_key_of_that_engine_only() {
    let t = tempfile::tempdir().unwrap();
    let before = compile(t.path(), SUITE);
    let after = compile(t.path(), &SUITE.replace("vllm/vllm-openai:v0.6.0", "vllm/vllm-openai:v0.6.1"));
    for (a, b) in before.steps.iter().zip(&after.steps) {
        let on_a = a.group.is_some_and(|g| before.groups[g].engine == "a");
        match a.kind {
            StepKind::Report => assert_eq!(a.key, b.key),
            _ if on_a => assert_ne!(a.key, b.key, "{:?} of engine a kept its key", a.kind),
            _ => assert_eq!(a.key, b.key, "{:?} of engine b changed", a.kind),
        }
    }
}

#[test]
fn reordering_yaml_keys_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let reordered = r#"
kind: Suite
spec:
  sampling: {temperature: 0.2}
  benchmarks:
    - params: {requests: 16, concurrency: [1, 4]}
      template: throughput
      name: tput
    - {params: {requests: 10}, template: latency, name: lat}
  engines:
    - {image: "vllm/vllm-openai:v0.6.0", template: vllm, name: a}
    - {params: {ctx_size: 1024}, name: b, template: llama_cpp}
  models:
    - {path: models/tiny.gguf, name: tiny}
metadata: {name: keys}
apiVersion: kitt/v1
"#;
    assert_eq!(keys(&compile(&t.path().join("x"), SUITE)), keys(&compile(&t.path().join("y"), reordered)));
}

#[test]
fn an_eval_cells_key_follows_its_eval_not_only_its_params() {
    let t = tempfile::tempdir().unwrap();
    let suite = "apiVersion: kitt/v1\nkind: Suite\nmetadata: {name: e}\nspec:\n  templates: [my.yaml]\n  models: [{name: m}]\n  engines: [{name: sim, template: sim}]\n  benchmarks: [{name: g, template: my_gsm, params: {source: data.jsonl}}]\n";
    // The answer extraction never reaches a request body: only the eval itself tells them apart.
    let template = |extract: &str| {
        format!(
            "apiVersion: kitt/v1\nkind: Benchmark\nmetadata: {{name: my_gsm}}\nspec:\n  base: gsm8k\n  eval:\n    answer: {{extract: {extract}}}\n"
        )
    };
    let bench_key = |extract: &str| {
        let dir = t.path().join(extract);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("my.yaml"), template(extract)).unwrap();
        let plan = compile(&dir, suite);
        let b = plan.steps.iter().find(|s| s.kind == StepKind::Benchmark).unwrap();
        (b.key.clone(), plan.cells[0].request.as_ref().unwrap().body.clone())
    };
    let (number, body_a) = bench_key("number");
    let (exact, body_b) = bench_key("exact");
    assert_eq!(body_a, body_b, "the requests are the same");
    // Same params and requests, another eval: a resumed run must not reuse the old answers.
    assert_ne!(number, exact);
    assert_eq!(number, bench_key("number").0);
}
