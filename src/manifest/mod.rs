//! Manifests: YAML files of kind `Suite`, `Engine`, `Benchmark` or `Reporter`.
//!
//! Owns parsing and decoding — nothing else in kitt reads YAML. A manifest is parsed into a
//! spanned node tree (`yaml`), its envelope (`apiVersion`, `kind`, `metadata`) is checked, and its
//! `spec` is decoded into typed values (`decode`), collecting every error with its position.
//! Semantic checks that need the catalog (unknown templates, params) live in `validate`.

pub mod agents;
pub mod decode;
pub mod diag;
pub mod emit;
pub mod kubernetes;
pub mod load;
pub mod schema;
pub mod secret;
pub mod slurm;
pub mod suite;
pub mod template_kind;
pub mod validate;
pub mod yaml;

use std::path::{Path, PathBuf};

use decode::{Cx, Decode, Fields};
use diag::{Diagnostic, Pos};
pub use suite::SuiteSpec;
use template_kind::{BenchmarkSpec, EngineSpec, Metadata, ReporterSpec};
use yaml::{Node, Value};

/// The only apiVersion this kitt reads.
pub const API_VERSION: &str = "kitt/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    Suite,
    Engine,
    Benchmark,
    Reporter,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Suite, Kind::Engine, Kind::Benchmark, Kind::Reporter];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Suite => "Suite",
            Kind::Engine => "Engine",
            Kind::Benchmark => "Benchmark",
            Kind::Reporter => "Reporter",
        }
    }
}

/// A manifest whose envelope is checked and whose spec is still a node tree.
#[derive(Debug, Clone)]
pub struct RawManifest {
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: Node,
    /// Where it was read from (a built-in's path is under `<builtin>/`).
    pub file: PathBuf,
}

/// A decoded manifest of one kind.
#[derive(Debug, Clone)]
pub struct Manifest<S> {
    pub metadata: Metadata,
    pub spec: S,
    pub file: PathBuf,
}

pub type Suite = Manifest<SuiteSpec>;

/// Reads a manifest file and checks its envelope.
pub fn read_raw(path: &Path) -> Result<RawManifest, Vec<Diagnostic>> {
    let fail = |msg: String, help: &str| vec![Diagnostic::new(Pos::START, msg).help(help).in_file(path)];
    let meta =
        std::fs::metadata(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display()), "check the path"))?;
    if meta.len() > yaml::MAX_BYTES as u64 {
        return Err(fail(
            format!("manifest is {} bytes, over the limit of {} bytes (8 MiB)", meta.len(), yaml::MAX_BYTES),
            "split the suite, or move large data (prompts, datasets) into files it references",
        ));
    }
    let bytes =
        std::fs::read(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display()), "check the path"))?;
    let source =
        String::from_utf8(bytes).map_err(|_| fail("manifest is not valid UTF-8".into(), "save the file as UTF-8"))?;
    parse_raw(&source, path)
}

/// Parses `source` (the contents of `file`) and checks its envelope.
pub fn parse_raw(source: &str, file: &Path) -> Result<RawManifest, Vec<Diagnostic>> {
    let root = yaml::parse(source).map_err(|d| vec![d.in_file(file)])?;
    let mut cx = Cx::default();
    let raw = envelope(&root, &mut cx);
    let mut errors = cx.errors;
    match raw {
        Some((kind, metadata, spec)) if errors.is_empty() => {
            Ok(RawManifest { kind, metadata, spec, file: file.to_path_buf() })
        }
        _ => {
            for e in &mut errors {
                e.file.get_or_insert_with(|| file.to_path_buf());
            }
            sort(&mut errors);
            Err(errors)
        }
    }
}

fn envelope(root: &Node, cx: &mut Cx) -> Option<(Kind, Metadata, Node)> {
    if root.value == Value::Null {
        cx.error(
            Diagnostic::new(root.pos, "empty manifest").help(
                "a manifest starts with `apiVersion: kitt/v1` and `kind: Suite` (or Engine, Benchmark, Reporter)",
            ),
        );
        return None;
    }
    let mut f = Fields::open(root, cx, "the manifest")?;
    let api: Option<decode::Spanned<String>> = f.req(cx, "apiVersion");
    let kind: Option<decode::Spanned<String>> = f.req(cx, "kind");
    let metadata: Option<Metadata> = f.req(cx, "metadata");
    let spec: Option<Node> = f.req(cx, "spec");
    f.finish(cx);
    if let Some(api) = &api
        && api.value != API_VERSION
    {
        cx.error(
            Diagnostic::new(api.pos, format!("unsupported apiVersion `{}`", api.value))
                .help(format!("this kitt reads `apiVersion: {API_VERSION}`")),
        );
    }
    let kind = kind.and_then(|k| {
        let found = Kind::ALL.into_iter().find(|c| c.name() == k.value);
        if found.is_none() {
            cx.error(
                Diagnostic::new(k.pos, format!("unknown kind `{}`", k.value))
                    .help(diag::unknown_help(&k.value, Kind::ALL.map(Kind::name))),
            );
        }
        found
    });
    Some((kind?, metadata?, spec?))
}

impl RawManifest {
    /// Decodes the spec as `S`, with every error of the spec.
    pub fn decode<S: Decode>(&self) -> Result<Manifest<S>, Vec<Diagnostic>> {
        self.decode_node(&self.spec)
    }

    /// Decodes `spec` (this manifest's spec, possibly merged with a base) as `S`.
    pub fn decode_node<S: Decode>(&self, spec: &Node) -> Result<Manifest<S>, Vec<Diagnostic>> {
        let mut cx = Cx::default();
        let what = format!("{} `{}`", self.kind.name(), self.metadata.name.value);
        let decoded = S::decode(spec, &mut cx, &what);
        match decoded {
            Some(spec) if cx.errors.is_empty() => {
                Ok(Manifest { metadata: self.metadata.clone(), spec, file: self.file.clone() })
            }
            _ => {
                let mut errors = cx.errors;
                for e in &mut errors {
                    e.file.get_or_insert_with(|| self.file.clone());
                }
                sort(&mut errors);
                Err(errors)
            }
        }
    }

    pub fn expect_kind(&self, kind: Kind) -> Result<(), Vec<Diagnostic>> {
        if self.kind == kind {
            return Ok(());
        }
        Err(vec![
            Diagnostic::new(Pos::START, format!("expected a {} manifest, found a {}", kind.name(), self.kind.name()))
                .in_file(&self.file),
        ])
    }
}

/// Sorts diagnostics by file and position and drops exact repeats.
pub fn sort(errors: &mut Vec<Diagnostic>) {
    errors.sort_by(|a, b| (&a.file, a.pos, &a.message).cmp(&(&b.file, b.pos, &b.message)));
    errors.dedup();
}

pub type EngineTemplate = Manifest<EngineSpec>;
pub type BenchmarkTemplate = Manifest<BenchmarkSpec>;
pub type ReporterTemplate = Manifest<ReporterSpec>;
