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
