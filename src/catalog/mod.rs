//! The catalog: every Engine, Benchmark and Reporter template a suite can name.
//!
//! Built-ins are YAML files under suites/engines/, suites/benchmarks/ and reporters/, embedded in
//! the binary so kitt works from any directory; suite-local templates (the suite's `templates:`
//! paths) add to them or replace them by name, and each entry remembers the file it came from.
//! `base:` inheritance is resolved here, on node trees, before decoding; every Engine is then
//! checked for params that reach nothing ([`reach`]).

pub mod reach;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::manifest::decode::Spanned;
use crate::manifest::diag::{Diagnostic, Pos};
use crate::manifest::template_kind::{BenchmarkSpec, EngineSpec, ReporterSpec};
use crate::manifest::yaml::{Node, Value};
use crate::manifest::{self, Kind, Manifest, RawManifest};

/// Prefix of the paths of built-in templates.
pub const BUILTIN: &str = "<builtin>";

macro_rules! builtin_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../", $path)))),*]
    };
}

/// Every built-in template file: (path in the repository, contents).
pub const BUILTIN_FILES: &[(&str, &str)] = builtin_files!(
    "suites/engines/vllm.yaml",
    "suites/engines/tgi.yaml",
    "suites/engines/llama_cpp.yaml",
    "suites/engines/ollama.yaml",
    "suites/engines/sim.yaml",
    "suites/engines/mlx.yaml",
    "suites/engines/openai.yaml",
    "suites/benchmarks/throughput.yaml",
    "suites/benchmarks/latency.yaml",
    "suites/benchmarks/rate.yaml",
    "suites/benchmarks/sweep.yaml",
    "suites/benchmarks/memory.yaml",
    "suites/benchmarks/mmlu.yaml",
    "suites/benchmarks/gsm8k.yaml",
    "suites/benchmarks/truthfulqa.yaml",
    "suites/benchmarks/hellaswag.yaml",
    "suites/benchmarks/warmup_analysis.yaml",
    "reporters/json.yaml",
    "reporters/csv.yaml",
    "reporters/markdown.yaml",
    "reporters/html.yaml",
);

/// Template files the built-in reporters name (not manifests).
pub const BUILTIN_TEXTS: &[(&str, &str)] = builtin_files!("reporters/markdown.md.hbs", "reporters/html.html.hbs");

/// The text of a templated reporter's template file: embedded for built-ins, read next to the
/// reporter manifest for local ones.
pub fn reporter_template(entry: &Entry<ReporterSpec>) -> Result<Option<String>, Diagnostic> {
    let Some(t) = &entry.manifest.spec.template else { return Ok(None) };
    let dir = entry.manifest.file.parent().unwrap_or(Path::new("."));
    let path = dir.join(&t.value);
    if let Ok(rel) = path.strip_prefix(BUILTIN) {
        return match BUILTIN_TEXTS.iter().find(|(p, _)| Path::new(p) == rel) {
            Some((_, text)) => Ok(Some(text.to_string())),
            None => Err(Diagnostic::new(t.pos, format!("built-in template file `{}` is missing", t.value))
                .in_file(&entry.manifest.file)),
        };
    }
    std::fs::read_to_string(&path).map(Some).map_err(|e| {
        Diagnostic::new(t.pos, format!("cannot read the template file `{}`: {e}", t.value))
            .help("the path is relative to the reporter file")
            .in_file(&entry.manifest.file)
    })
}

/// The source of a built-in file, for diagnostics.
pub fn builtin_source(path: &Path) -> Option<&'static str> {
    let rel = path.strip_prefix(BUILTIN).ok()?;
    BUILTIN_FILES.iter().find(|(p, _)| Path::new(p) == rel).map(|(_, s)| *s)
}

/// Where a template came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Builtin,
    /// A suite-local file; `overrides` when it replaces a built-in of the same name.
    Local {
        file: PathBuf,
        overrides: bool,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Builtin => write!(f, "built-in"),
            Origin::Local { file, overrides: false } => write!(f, "{}", file.display()),
            Origin::Local { file, overrides: true } => write!(f, "{} (overrides built-in)", file.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry<S> {
    pub manifest: Manifest<S>,
    pub origin: Origin,
}

/// All templates, by kind and name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub engines: BTreeMap<String, Entry<EngineSpec>>,
    pub benchmarks: BTreeMap<String, Entry<BenchmarkSpec>>,
    pub reporters: BTreeMap<String, Entry<ReporterSpec>>,
}

impl Catalog {
    /// The built-in templates (parsed once per process).
    pub fn builtin() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| {
            let raws: Vec<(RawManifest, Origin)> = BUILTIN_FILES
                .iter()
                .filter_map(|(p, src)| {
                    let path = Path::new(BUILTIN).join(p);
                    manifest::parse_raw(src, &path).ok().map(|r| (r, Origin::Builtin))
                })
                .collect();
            // A broken built-in is caught by the catalog tests; here it is simply absent.
            build(raws).unwrap_or_else(|(catalog, _)| catalog)
        })
    }

    /// The built-ins plus the templates found under `paths` (files or directories), relative to
    /// `base_dir`.
    pub fn with_local(
        base_dir: &Path,
        paths: &[Spanned<String>],
        suite_file: &Path,
    ) -> Result<Catalog, Vec<Diagnostic>> {
        if paths.is_empty() {
            return Ok(Catalog::builtin().clone());
        }
        let mut errors = Vec::new();
        let mut raws: Vec<(RawManifest, Origin)> = BUILTIN_FILES
            .iter()
            .filter_map(|(p, src)| manifest::parse_raw(src, &Path::new(BUILTIN).join(p)).ok())
            .map(|r| (r, Origin::Builtin))
            .collect();
        for p in paths {
            let full = base_dir.join(&p.value);
            let files = match template_files(&full) {
                Ok(f) => f,
                Err(e) => {
                    errors.push(
                        Diagnostic::new(p.pos, format!("cannot read templates at `{}`: {e}", p.value))
                            .help("`templates:` lists files or directories relative to the suite file")
                            .in_file(suite_file),
                    );
                    continue;
                }
            };
            for file in files {
                match manifest::read_raw(&file) {
                    Ok(raw) if raw.kind == Kind::Suite => errors.push(
                        Diagnostic::new(Pos::START, "a Suite cannot be used as a template")
                            .help("`templates:` holds Engine, Benchmark and Reporter manifests")
                            .in_file(&file),
                    ),
                    Ok(raw) => {
                        let overrides = raws.iter().any(|(r, o)| {
                            *o == Origin::Builtin
                                && r.kind == raw.kind
                                && r.metadata.name.value == raw.metadata.name.value
                        });
                        raws.retain(|(r, _)| !(r.kind == raw.kind && r.metadata.name.value == raw.metadata.name.value));
                        raws.push((raw, Origin::Local { file: file.clone(), overrides }));
                    }
                    Err(e) => errors.extend(e),
                }
            }
        }
        match build(raws) {
            Ok(c) if errors.is_empty() => Ok(c),
            Ok(_) => Err(errors),
            Err((_, e)) => {
                errors.extend(e);
                Err(errors)
            }
        }
    }

    pub fn origin_of(&self, kind: Kind, name: &str) -> Option<&Origin> {
        match kind {
            Kind::Engine => self.engines.get(name).map(|e| &e.origin),
            Kind::Benchmark => self.benchmarks.get(name).map(|e| &e.origin),
            Kind::Reporter => self.reporters.get(name).map(|e| &e.origin),
            Kind::Suite => None,
        }
    }
}

pub(crate) fn template_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Resolves inheritance and decodes every template; on errors returns what did decode too.
fn build(raws: Vec<(RawManifest, Origin)>) -> Result<Catalog, (Catalog, Vec<Diagnostic>)> {
    let mut catalog = Catalog::default();
    let mut errors = Vec::new();
    for (raw, origin) in &raws {
        let spec = match resolve_base(raw, &raws) {
            Ok(spec) => spec,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let name = raw.metadata.name.value.clone();
        let origin = origin.clone();
        match raw.kind {
            Kind::Engine => match raw.decode_node::<EngineSpec>(&spec) {
                Ok(m) => {
                    errors.extend(reach::check(&m));
                    catalog.engines.insert(name, Entry { manifest: m, origin });
                }
                Err(e) => errors.extend(e),
            },
            Kind::Benchmark => match raw.decode_node::<BenchmarkSpec>(&spec) {
                Ok(m) => {
                    catalog.benchmarks.insert(name, Entry { manifest: m, origin });
                }
                Err(e) => errors.extend(e),
            },
            Kind::Reporter => match raw.decode_node::<ReporterSpec>(&spec) {
                Ok(m) => {
                    catalog.reporters.insert(name, Entry { manifest: m, origin });
                }
                Err(e) => errors.extend(e),
            },
            Kind::Suite => {}
        }
    }
    if errors.is_empty() { Ok(catalog) } else { Err((catalog, errors)) }
}

/// The spec of `raw` merged over its `base` chain; a cycle or unknown base is an error.
pub fn resolve_base(raw: &RawManifest, all: &[(RawManifest, Origin)]) -> Result<Node, Diagnostic> {
    let mut chain = vec![raw];
    let mut current = raw;
    while let Some((base_name, pos)) = base_of(&current.spec) {
        let Some((base, _)) = all.iter().find(|(r, _)| r.kind == raw.kind && r.metadata.name.value == base_name) else {
            let names = all.iter().filter(|(r, _)| r.kind == raw.kind).map(|(r, _)| r.metadata.name.value.as_str());
            return Err(Diagnostic::new(pos, format!("unknown base {} template `{base_name}`", raw.kind.name()))
                .help(crate::manifest::diag::unknown_help(&base_name, names))
                .in_file(&current.file));
        };
        if chain.iter().any(|c| std::ptr::eq(*c, base)) {
            let mut names: Vec<&str> = chain.iter().map(|c| c.metadata.name.value.as_str()).collect();
            names.push(&base.metadata.name.value);
            return Err(Diagnostic::new(pos, format!("template inheritance cycle: {}", names.join(" → ")))
                .help("remove one `base:` so the chain ends")
                .in_file(&current.file));
        }
        chain.push(base);
        current = base;
    }
    let mut merged = chain.last().map(|r| r.spec.clone()).unwrap_or_else(|| raw.spec.clone());
    for child in chain.iter().rev().skip(1) {
        merged = merge(merged, child.spec.clone());
    }
    if let Value::Map(entries) = &mut merged.value
        && chain.len() > 1
    {
        entries.retain(|(k, _)| k.name != "base");
    }
    Ok(merged)
}

fn base_of(spec: &Node) -> Option<(String, Pos)> {
    let Value::Map(entries) = &spec.value else {
        return None;
    };
    entries.iter().find(|(k, _)| k.name == "base").and_then(|(_, v)| match &v.value {
        Value::Str(s) => Some((s.clone(), v.pos)),
        _ => None,
    })
}

/// `over` merged onto `under`: mappings merge key by key, anything else is replaced.
fn merge(under: Node, over: Node) -> Node {
    match (under.value, over.value) {
        (Value::Map(mut base), Value::Map(top)) => {
            for (k, v) in top {
                if v.value == Value::Null {
                    // `key: null` in a child removes what the base set.
                    base.retain(|(bk, _)| bk.name != k.name);
                    continue;
                }
                match base.iter().position(|(bk, _)| bk.name == k.name) {
                    Some(i) => {
                        let (_, old) = base.remove(i);
                        base.insert(i, (k, merge(old, v)));
                    }
                    None => base.push((k, v)),
                }
            }
            Node { pos: over.pos, value: Value::Map(base) }
        }
        (_, value) => Node { pos: over.pos, value },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_template_decodes() {
        let raws: Vec<(RawManifest, Origin)> = BUILTIN_FILES
            .iter()
            .map(|(p, src)| {
                let raw =
                    manifest::parse_raw(src, &Path::new(BUILTIN).join(p)).unwrap_or_else(|e| panic!("{p}: {e:?}"));
                (raw, Origin::Builtin)
            })
            .collect();
        let catalog = build(raws).unwrap_or_else(|(_, e)| panic!("{e:#?}"));
        let total = catalog.engines.len() + catalog.benchmarks.len() + catalog.reporters.len();
        assert_eq!(total, BUILTIN_FILES.len());
        assert_eq!(Catalog::builtin().engines.len(), catalog.engines.len());
    }
}
