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

/// Unit ids by what each unit holds: the group's id, or the group's id and the cell's label.
fn unit_ids(plan: &Plan) -> BTreeMap<String, String> {
    plan.units
        .iter()
        .map(|u| {
            let who = match u.cell {
                Some(c) => format!("{} {}", plan.groups[u.group].id, plan.cells[c].label()),
                None => plan.groups[u.group].id.clone(),
            };
            (who, u.id.clone())
        })
        .collect()
}

#[test]
fn a_group_units_id_survives_an_edit_of_a_benchmark_it_does_not_run() {
    let t = tempfile::tempdir().unwrap();
    let suite = format!("{SUITE}  matrix: {{exclude: [{{engine: a, benchmark: lat}}]}}\n");
    let before = unit_ids(&compile(t.path(), &suite));
    let after = unit_ids(&compile(t.path(), &suite.replace("params: {requests: 10}", "params: {requests: 11}")));
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(before["a/tiny"], after["a/tiny"], "engine a does not run `lat`");
    assert_ne!(before["b/tiny"], after["b/tiny"], "engine b runs the edited `lat`");
    // Its own steps changing changes it: a new image is a new unit.
    let image = unit_ids(&compile(t.path(), &suite.replace("v0.6.0", "v0.6.1")));
    assert_ne!(before["a/tiny"], image["a/tiny"]);
    assert_eq!(before["b/tiny"], image["b/tiny"]);
}

#[test]
fn with_cell_granularity_each_cell_is_a_unit_with_an_engine_of_its_own() {
    let t = tempfile::tempdir().unwrap();
    let cellwise = SUITE.replace("  sampling:", "  execution: {granularity: cell}\n  sampling:");
    let group = compile(&t.path().join("g"), SUITE);
    let plan = compile(&t.path().join("c"), &cellwise);
    assert_eq!(plan.units.len(), plan.cells.len());
    let group_keys: std::collections::HashSet<&str> = group.steps.iter().map(|s| s.key.as_str()).collect();
    for u in &plan.units {
        assert_eq!(u.kind, plan::UnitKind::Cell);
        let kinds: Vec<StepKind> = u.steps.iter().map(|s| plan.steps[*s].kind).collect();
        let count = |k: StepKind| kinds.iter().filter(|x| **x == k).count();
        for k in [StepKind::Start, StepKind::Benchmark, StepKind::Collect, StepKind::Stop] {
            assert_eq!(count(k), 1, "unit {} has {kinds:?}", u.id);
        }
        assert_eq!(kinds.last(), Some(&StepKind::Stop), "unit {} has {kinds:?}", u.id);
        // A cell on a fresh engine is another measurement: none of its keys but the image
        // check's is a group plan's.
        for s in u.steps.iter().map(|s| &plan.steps[*s]).filter(|s| s.kind != StepKind::Pull) {
            assert!(!group_keys.contains(s.key.as_str()), "{} keeps its group key", s.kind.name());
        }
    }
    // Editing `lat` changes exactly the units of `lat` cells.
    let before = unit_ids(&plan);
    let after =
        unit_ids(&compile(&t.path().join("c"), &cellwise.replace("params: {requests: 10}", "params: {requests: 11}")));
    let changed: Vec<&String> = before.keys().filter(|k| before[*k] != after[*k]).collect();
    assert_eq!(changed, vec!["a/tiny lat run=0", "b/tiny lat run=0"]);
}

#[test]
fn units_snapshot() {
    let quickstart = plan::compile::compile_file(Path::new("examples/quickstart.yaml")).unwrap();
    insta::assert_snapshot!("units.quickstart.text", plan::render::units_text(&quickstart));
    let t = tempfile::tempdir().unwrap();
    let cellwise = SUITE.replace("  sampling:", "  execution: {granularity: cell, isolation: engine}\n  sampling:");
    let plan = compile(t.path(), &cellwise);
    let shown = plan::render::units_text(&plan).replace(&plan.suite.file.display().to_string(), "[suite]");
    insta::assert_snapshot!("units.cells.text", shown);
    insta::assert_json_snapshot!("units.cells.json", plan::render::units(&plan));
}

#[test]
fn kitt_plan_units_prints_the_units_as_json() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kitt"))
        .args(["plan", "examples/quickstart.yaml", "--units", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let units: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let units = units.as_array().unwrap();
    assert_eq!(units.len(), 1);
    assert_eq!(units[0]["kind"], "group");
    assert_eq!(units[0]["needs"]["exclusive_host"], true);
    let kinds: Vec<&str> = units[0]["steps"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"start"));
    assert_eq!(kinds.last(), Some(&"stop"));
}
