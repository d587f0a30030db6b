//! A cell's sampling: the suite's values, the engine instance's `sampling` over them, the
//! benchmark's params over both; and the check that each value has a slot in the API call the
//! cell sends, so no value is accepted and then dropped by a body that cannot carry it.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::{BenchVariant, Compiler, EngineVariant, SamplingOrigin};
use crate::catalog::reach::sampling_slots;
use crate::manifest::diag::{Diagnostic, Pos, unknown_help};
use crate::manifest::load::ApiKind;
use crate::manifest::suite::{EngineInstance, SAMPLING_KEYS};
use crate::manifest::template_kind::{ApiCall, ParamDecl};
use crate::manifest::yaml::{Node, Value};

impl Compiler<'_> {
    /// Types an engine instance's `sampling`: sampling keys only, each a value of its type or
    /// `null` (unset).
    pub(super) fn engine_sampling(&mut self, inst: &EngineInstance) -> Vec<(String, Option<Json>, Pos)> {
        let Some(Node { value: Value::Map(entries), .. }) = inst.sampling.as_ref() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, node) in entries {
            let Some((_, ty)) = SAMPLING_KEYS.iter().find(|(k, _)| *k == key.name) else {
                let help = unknown_help(&key.name, SAMPLING_KEYS.iter().map(|(k, _)| *k));
                self.err(
                    Diagnostic::new(
                        key.pos,
                        format!("unknown sampling key `{}` in engine `{}`", key.name, inst.name.value),
                    )
                    .help(help),
                );
                continue;
            };
            if node.value == Value::Null {
                out.push((key.name.clone(), None, key.pos));
                continue;
            }
            let decl = ParamDecl::of_type(*ty);
            let value = node.to_json();
            match decl.check(&value) {
                Ok(()) => out.push((key.name.clone(), Some(value), key.pos)),
                Err(problem) => self.err(
                    Diagnostic::new(
                        node.pos,
                        format!("sampling `{}` of engine `{}`: {problem}", key.name, inst.name.value),
                    )
                    .help(format!("write {}, or `null` to unset the suite's value for this engine", ty.name())),
                ),
            }
        }
        out
    }

    /// The cell's params and sampling for this engine, and where each sampling value came from.
    pub(super) fn cell_sampling(
        &self,
        ev: &EngineVariant,
        bv: &BenchVariant,
    ) -> (BTreeMap<String, Json>, BTreeMap<String, Json>, BTreeMap<String, SamplingOrigin>) {
        let mut params = bv.params.clone();
        let mut sampling = bv.sampling.clone();
        let mut origins = BTreeMap::new();
        let suite_spans = &self.suite.spec.sampling.spans;
        for k in sampling.keys() {
            let origin = match (bv.explicit.get(k), suite_spans.get(k)) {
                (Some(p), _) => SamplingOrigin::Benchmark(*p),
                (None, Some(p)) => SamplingOrigin::Suite(*p),
                (None, None) => SamplingOrigin::Template(bv.instance.template.pos),
            };
            origins.insert(k.clone(), origin);
        }
        let decls = &bv.entry.manifest.spec.params;
        for (k, v, pos) in &ev.sampling {
            if bv.explicit.contains_key(k) {
                continue;
            }
            match v {
                Some(v) => {
                    sampling.insert(k.clone(), v.clone());
                    if params.contains_key(k) {
                        params.insert(k.clone(), v.clone());
                    }
                    origins.insert(k.clone(), SamplingOrigin::Engine(*pos));
                }
                None => {
                    sampling.remove(k);
                    origins.remove(k);
                    if let Some(d) = decls.get(k).and_then(|d| d.value.default.clone()) {
                        params.insert(k.clone(), d.clone());
                        sampling.insert(k.clone(), d);
                        origins.insert(k.clone(), SamplingOrigin::Template(bv.instance.template.pos));
                    }
                }
            }
        }
        (params, sampling, origins)
    }

    /// Every set sampling value has a slot in `call`'s body; false (with errors) otherwise.
    pub(super) fn check_slots(
        &mut self,
        sampling: &BTreeMap<String, Json>,
        origins: &BTreeMap<String, SamplingOrigin>,
        call: &ApiCall,
        api: ApiKind,
        ev: &EngineVariant,
    ) -> bool {
        let slots = sampling_slots(call);
        let mut ok = true;
        for (k, v) in sampling {
            if v.is_null() || slots.contains(k.as_str()) {
                continue;
            }
            ok = false;
            let api_name = if api == ApiKind::Chat { "chat" } else { "completion" };
            let template = &ev.instance.template.value;
            let carried: Vec<&str> = slots.iter().copied().collect();
            let engine = &ev.instance.name.value;
            let (pos, help) = match origins.get(k).copied().unwrap_or(SamplingOrigin::Template(ev.instance.name.pos)) {
                SamplingOrigin::Suite(p) => (
                    p,
                    format!(
                        "remove it from `sampling`, or unset it for this engine: `{{name: {engine}, sampling: {{{k}: null}}}}` under `engines:`"
                    ),
                ),
                SamplingOrigin::Engine(p) => (p, format!("remove `{k}` from engine `{engine}`'s `sampling`")),
                SamplingOrigin::Benchmark(p) => (
                    p,
                    format!(
                        "remove `{k}` from this benchmark's params, or leave engine `{engine}` out of it with `matrix.exclude`"
                    ),
                ),
                SamplingOrigin::Template(p) => (
                    p,
                    format!(
                        "add a `{{{{{k}}}}}` leaf to the engine template's `api.{api_name}.body`, or use another benchmark"
                    ),
                ),
            };
            let d = Diagnostic::new(
                pos,
                format!(
                    "sampling `{k}` has no slot in the {api_name} API of engine template `{template}` ({} {}), which carries: {}",
                    call.method,
                    call.path,
                    carried.join(", ")
                ),
            )
            .help(help)
            .in_file(&self.suite.file);
            if !self.errors.contains(&d) {
                self.err(d);
            }
        }
        ok
    }
}
