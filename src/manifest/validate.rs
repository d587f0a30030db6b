//! Validation of template files on their own (`kitt validate suites/engines/vllm.yaml`).
//!
//! A suite is validated by compiling it (plan::compile). A template file is checked by decoding
//! it with the catalog around it (so `base:` resolves) and rendering every template string with
//! a context where every documented variable is set: an expression naming anything else is an
//! unknown variable, found before any suite uses the template.

use std::path::Path;

use serde_json::{Value as Json, json};

use super::decode::{Cx, Decode};
use super::diag::{Diagnostic, Pos};
use super::load::LoadSpec;
use super::suite::SAMPLING_KEYS;
use super::template_kind::{Mechanism, ParamDecl, ParamType, ReportFormat};
use super::{Kind, RawManifest};
use crate::catalog::{Catalog, Origin};
use crate::template::{Renderer, placeholder};

/// What a successful validation found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Checked {
    pub kind: Kind,
    pub name: String,
}

fn sample(decl: &ParamDecl) -> Json {
    decl.default.clone().unwrap_or_else(|| match decl.ty {
        ParamType::String => "x".into(),
        ParamType::Integer => 1.into(),
        ParamType::Number => 1.0.into(),
        ParamType::Boolean => true.into(),
        ParamType::List => json!(["x"]),
    })
}

/// A context with every variable a template may use.
fn full_context(params: serde_json::Map<String, Json>) -> Json {
    let mut ctx = json!({
        "model": {"name": "m", "path": "models/m.gguf", "dir": "models", "file": "m.gguf", "served_name": "m"},
        "engine": {"name": "e", "template": "t"},
        "params": params,
        "run": {"id": placeholder("run.id"), "index": 0},
        "port": placeholder("port"),
        "bind_host": "127.0.0.1",
        "kitt": {"exe": placeholder("kitt.exe")},
        "prompt": placeholder("prompt"),
        "messages": placeholder("messages"),
        "ignore_eos": true,
    });
    let mut sampling = serde_json::Map::new();
    for (k, ty) in SAMPLING_KEYS {
        let v = sample(&ParamDecl::of_type(*ty));
        ctx[*k] = v.clone();
        sampling.insert((*k).to_string(), v);
    }
    ctx["sampling"] = Json::Object(sampling);
    ctx
}

/// Validates a template manifest (Engine, Benchmark or Reporter) on its own.
pub fn template_file(raw: &RawManifest) -> Result<Checked, Vec<Diagnostic>> {
    let dir = raw.file.parent().unwrap_or(Path::new("."));
    let local = crate::manifest::decode::Spanned::new(
        Pos::START,
        raw.file.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default(),
    );
    let catalog = Catalog::with_local(dir, std::slice::from_ref(&local), &raw.file)?;
    let name = raw.metadata.name.value.clone();
    let r = Renderer::default();
    let mut errors = Vec::new();
    let mut check = |node: &crate::manifest::yaml::Node, ctx: &Json, file: &Path| {
        if let Err(d) = r.render(node, ctx) {
            errors.push(d.in_file(file));
        }
    };
    let is_local = |o: &Origin| matches!(o, Origin::Local { .. });
    match raw.kind {
        Kind::Engine => {
            let Some(e) = catalog.engines.get(&name).filter(|e| is_local(&e.origin)) else {
                return Ok(Checked { kind: raw.kind, name });
            };
            let spec = &e.manifest.spec;
            let params = spec.params.iter().map(|(k, d)| (k.clone(), sample(&d.value))).collect();
            let ctx = full_context(params);
            let file = &e.manifest.file;
            let strings = |v: &[crate::manifest::decode::Spanned<String>]| -> crate::manifest::yaml::Node {
                crate::manifest::yaml::Node {
                    pos: Pos::START,
                    value: crate::manifest::yaml::Value::Seq(
                        v.iter()
                            .map(|s| crate::manifest::yaml::Node {
                                pos: s.pos,
                                value: crate::manifest::yaml::Value::Str(s.value.clone()),
                            })
                            .collect(),
                    ),
                }
            };
            if let Some(c) = &spec.container {
                let args: Vec<_> = c.args.iter().flat_map(|a| a.texts()).cloned().collect();
                check(&strings(&args), &ctx, file);
                check(&strings(&c.extra_args), &ctx, file);
                for m in &c.mounts {
                    check(&strings(&[m.source.clone(), m.target.clone()]), &ctx, file);
                }
            }
            if let Some(n) = &spec.native {
                let command: Vec<_> = n.command.iter().flat_map(|a| a.texts()).cloned().collect();
                check(&strings(&command), &ctx, file);
            }
            for call in &spec.setup {
                if let Some(b) = &call.body {
                    check(b, &ctx, file);
                }
            }
            if let Some(t) = &spec.tokenize {
                check(&t.body, &ctx, file);
            }
            for call in [&spec.api.completion, &spec.api.chat].into_iter().flatten() {
                check(&call.body, &ctx, file);
            }
        }
        Kind::Benchmark => {
            let Some(b) = catalog.benchmarks.get(&name).filter(|b| is_local(&b.origin)) else {
                return Ok(Checked { kind: raw.kind, name });
            };
            let spec = &b.manifest.spec;
            let params = spec.params.iter().map(|(k, d)| (k.clone(), sample(&d.value))).collect();
            let ctx = full_context(params);
            if let (Mechanism::Load, Some(load)) = (spec.mechanism, &spec.load) {
                match r.render_node(load, &ctx) {
                    Ok(node) => {
                        let mut cx = Cx::default();
                        LoadSpec::decode(&node, &mut cx, "`load`");
                        errors.extend(cx.errors.into_iter().map(|d| d.in_file(&b.manifest.file)));
                    }
                    Err(d) => errors.push(d.in_file(&b.manifest.file)),
                }
            }
        }
        Kind::Reporter => {
            if let Some(rep) = catalog.reporters.get(&name).filter(|r| is_local(&r.origin))
                && let (ReportFormat::Template, Some(t)) = (rep.manifest.spec.format, &rep.manifest.spec.template)
                && !dir.join(&t.value).is_file()
            {
                errors.push(
                    Diagnostic::new(t.pos, format!("template file `{}` not found", t.value))
                        .help("the path is relative to the reporter file")
                        .in_file(&raw.file),
                );
            }
        }
        Kind::Suite => {}
    }
    if errors.is_empty() {
        Ok(Checked { kind: raw.kind, name })
    } else {
        crate::manifest::sort(&mut errors);
        Err(errors)
    }
}
