//! The JSON Schemas: never stale, and in agreement with kitt about what is valid.

use std::path::{Path, PathBuf};

use kitt::catalog::Catalog;
use kitt::manifest::{self, Kind};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema(kind: Kind) -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("schemas").join(manifest::schema::file_name(kind))).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&value).unwrap_or_else(|e| panic!("{kind:?} schema is not a valid JSON Schema: {e}"))
}

fn yaml_files(dirs: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in dirs {
        for e in std::fs::read_dir(root().join(d)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn as_json(path: &Path) -> (Kind, serde_json::Value) {
    let text = std::fs::read_to_string(path).unwrap();
    let node = manifest::yaml::parse(&text).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
    let raw = manifest::parse_raw(&text, path).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
    (raw.kind, node.to_json())
}

#[test]
fn checked_in_schemas_are_not_stale() {
    for kind in Kind::ALL {
        let path = root().join("schemas").join(manifest::schema::file_name(kind));
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        let generated = manifest::schema::generate(kind, Catalog::builtin());
        assert!(on_disk == generated, "{} is stale: run `cargo run -- schema --out schemas/`", path.display());
    }
    let result = std::fs::read_to_string(root().join("schemas/result.schema.json")).unwrap_or_default();
    assert!(
        result == kitt::report::schema(),
        "schemas/result.schema.json is stale: run `cargo run -- schema --out schemas/`"
    );
}

#[test]
fn every_shipped_manifest_validates_against_its_schema() {
    let files = yaml_files(&["examples", "suites", "suites/engines", "suites/benchmarks", "reporters"]);
    assert!(files.len() >= 10);
    for f in files {
        let (kind, value) = as_json(&f);
        let v = schema(kind);
        let errors: Vec<String> = v.iter_errors(&value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{} fails its schema: {errors:#?}", f.display());
    }
}

#[test]
fn broken_manifests_marked_as_schema_errors_are_rejected_by_the_schema() {
    let mut checked = 0;
    for f in yaml_files(&["tests/broken"]) {
        let text = std::fs::read_to_string(&f).unwrap();
        if !text.lines().take_while(|l| l.starts_with('#')).any(|l| l.trim() == "# schema: reject") {
            continue;
        }
        let node = manifest::yaml::parse(&text).unwrap();
        let value = node.to_json();
        let kind = match value["kind"].as_str() {
            Some("Engine") => Kind::Engine,
            Some("Benchmark") => Kind::Benchmark,
            Some("Reporter") => Kind::Reporter,
            _ => Kind::Suite,
        };
        assert!(!schema(kind).is_valid(&value), "{} is accepted by the {kind:?} schema", f.display());
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} schema-error manifests");
}

/// A bound kitt enforces on one field, as the schema must state it too.
#[derive(Clone, Copy)]
enum Bound {
    /// An integer of at least this.
    AtLeast(i64),
    /// A number in this closed range.
    Within(f64, f64),
    /// A number above this.
    Above(f64),
    /// A duration longer than 0.
    Deadline,
    /// One of these strings.
    OneOf(&'static [&'static str]),
}

const SUITE: &str = r#"{"apiVersion": "kitt/v1", "kind": "Suite", "metadata": {"name": "s"},
  "spec": {"models": [{"name": "m"}], "engines": [{"name": "e", "template": "sim"}],
           "benchmarks": [{"name": "b", "template": "latency"}]}}"#;
const BENCHMARK: &str = r#"{"apiVersion": "kitt/v1", "kind": "Benchmark", "metadata": {"name": "b"},
  "spec": {"mechanism": "load", "load": {"profile": "synchronous", "requests": 2,
           "prompt": {"synthetic": {"input_tokens": 16}}}}}"#;

const CONCURRENT: &str = r#"{"apiVersion": "kitt/v1", "kind": "Benchmark", "metadata": {"name": "b"},
  "spec": {"mechanism": "load", "load": {"profile": {"concurrency": 2}, "requests": 2,
           "prompt": {"synthetic": {"input_tokens": 16}}}}}"#;
const CONSTANT: &str = r#"{"apiVersion": "kitt/v1", "kind": "Benchmark", "metadata": {"name": "b"},
  "spec": {"mechanism": "load", "load": {"profile": {"constant": 2}, "requests": 2,
           "prompt": {"synthetic": {"input_tokens": 16}}}}}"#;
const POISSON: &str = r#"{"apiVersion": "kitt/v1", "kind": "Benchmark", "metadata": {"name": "b"},
  "spec": {"mechanism": "load", "load": {"profile": {"poisson": {"rate": 2, "burstiness": 1}}, "requests": 2,
           "prompt": {"synthetic": {"input_tokens": 16}}}}}"#;

/// Every bounded field: (minimal manifest, JSON pointer of the field in it, bound). A new bound
/// kitt enforces is one line here.
const BOUNDS: &[(&str, &str, Bound)] = &[
    (SUITE, "/spec/runs", Bound::AtLeast(1)),
    (SUITE, "/spec/execution/max_parallel", Bound::AtLeast(1)),
    (SUITE, "/spec/execution/retries", Bound::AtLeast(0)),
    (SUITE, "/spec/execution/max_error_rate", Bound::Within(0.0, 1.0)),
    (SUITE, "/spec/execution/request_timeout/first_token", Bound::Deadline),
    (SUITE, "/spec/execution/request_timeout/between_events", Bound::Deadline),
    (SUITE, "/spec/execution/request_timeout/total", Bound::Deadline),
    (SUITE, "/spec/execution/isolation", Bound::OneOf(&["host", "engine", "none"])),
    (SUITE, "/spec/execution/on_failure", Bound::OneOf(&["continue", "stop"])),
    (SUITE, "/spec/warmup/requests", Bound::AtLeast(0)),
    (BENCHMARK, "/spec/load/requests", Bound::AtLeast(1)),
    (BENCHMARK, "/spec/load/request_timeout/total", Bound::Deadline),
    (BENCHMARK, "/spec/load/profile", Bound::OneOf(&["synchronous"])),
    (BENCHMARK, "/spec/load/max_concurrency", Bound::AtLeast(1)),
    (BENCHMARK, "/spec/load/api", Bound::OneOf(&["completion", "chat"])),
    (BENCHMARK, "/spec/load/prompt/synthetic/input_tokens", Bound::AtLeast(1)),
    (CONCURRENT, "/spec/load/profile/concurrency", Bound::AtLeast(1)),
    (CONSTANT, "/spec/load/profile/constant", Bound::Above(0.0)),
    (POISSON, "/spec/load/profile/poisson/rate", Bound::Above(0.0)),
    (POISSON, "/spec/load/profile/poisson/burstiness", Bound::Above(0.0)),
];

/// Values just below, at and just above each bound (each allowed value and one more for an
/// enum), with whether the bound admits them.
fn probes(bound: Bound) -> Vec<(serde_json::Value, bool)> {
    use serde_json::json;
    match bound {
        Bound::AtLeast(m) => vec![(json!(m - 1), false), (json!(m), true), (json!(m + 1), true)],
        Bound::Within(lo, hi) => vec![
            (json!(lo - 0.01), false),
            (json!(lo), true),
            (json!(lo + 0.01), true),
            (json!(hi - 0.01), true),
            (json!(hi), true),
            (json!(hi + 0.01), false),
        ],
        Bound::Above(m) => vec![(json!(m - 0.01), false), (json!(m), false), (json!(m + 0.01), true)],
        Bound::Deadline => vec![
            (json!(0), false),
            (json!("0s"), false),
            (json!("0ms"), false),
            (json!(0.001), true),
            (json!("1ms"), true),
            (json!("0.5s"), true),
        ],
        Bound::OneOf(values) => {
            let mut out: Vec<_> = values.iter().map(|v| (json!(v), true)).collect();
            out.push((json!("no-such-value"), false));
            out
        }
    }
}

/// Sets `pointer` in `doc`, making the mappings on the way.
fn set(doc: &mut serde_json::Value, pointer: &str, value: serde_json::Value) {
    let mut at = doc;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for part in &parts[..parts.len() - 1] {
        at = at.as_object_mut().unwrap().entry(*part).or_insert_with(|| serde_json::json!({}));
    }
    at[parts[parts.len() - 1]] = value;
}

#[test]
fn kitt_and_the_schemas_agree_on_every_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut disagreements = Vec::new();
    for (i, (base, pointer, bound)) in BOUNDS.iter().enumerate() {
        for (j, (value, admitted)) in probes(*bound).into_iter().enumerate() {
            let mut doc: serde_json::Value = serde_json::from_str(base).unwrap();
            set(&mut doc, pointer, value.clone());
            let kind = if doc["kind"] == "Suite" { Kind::Suite } else { Kind::Benchmark };
            // JSON is YAML: kitt reads the same document the schema checks.
            let path = dir.path().join(format!("m{i}-{j}.yaml"));
            std::fs::write(&path, doc.to_string()).unwrap();
            let kitt_ok = kitt::cli::validate_file(&path).is_ok();
            let schema_ok = schema(kind).is_valid(&doc);
            if kitt_ok != admitted || schema_ok != admitted {
                disagreements
                    .push(format!("{pointer} = {value}: expected {admitted}, kitt {kitt_ok}, schema {schema_ok}"));
            }
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}
