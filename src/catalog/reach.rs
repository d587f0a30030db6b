//! Reachability: every value a manifest accepts reaches what runs, or is an error that says why
//! it cannot.
//!
//! A param is *used* by a mode when one of the mode's template strings names it (`params.NAME`):
//! container args, env, mounts and extra args; the native command and env; and, in every mode,
//! the setup calls, the tokenize call and the API bodies. A template lists what a mode leaves
//! out under that mode's `unused_params:` with the reason; the endpoint mode, which starts
//! nothing, leaves out whatever only the start command names. The catalog checks templates when
//! it loads them (a param that reaches nothing, and is not listed, is an error in the template);
//! the compiler checks instances (setting an unused param is an error in the suite). A sampling
//! key is carried by an API call when a body leaf is exactly that one expression.
//!
//! Names are found by scanning the text of each template string, not by evaluating it: a
//! param named inside `{{#if}}` or a `when:` condition counts as used.

use std::collections::BTreeSet;

use crate::manifest::Manifest;
use crate::manifest::decode::Spanned;
use crate::manifest::diag::Diagnostic;
use crate::manifest::secret::SecretOr;
use crate::manifest::suite::{EngineInstance, SAMPLING_KEYS};
use crate::manifest::template_kind::{ApiCall, Arg, EngineSpec};
use crate::manifest::yaml::{Node, Value};

/// How an engine instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineMode {
    Container,
    Native,
    Endpoint,
}

impl EngineMode {
    pub fn name(self) -> &'static str {
        match self {
            EngineMode::Container => "container",
            EngineMode::Native => "native",
            EngineMode::Endpoint => "endpoint",
        }
    }

    /// The mode an instance runs in: its own choice, else container when the template has one.
    pub fn of(inst: &EngineInstance, spec: &EngineSpec) -> EngineMode {
        if inst.endpoint.is_some() {
            EngineMode::Endpoint
        } else if inst.native.is_some() || (spec.container.is_none() && inst.container.is_none()) {
            EngineMode::Native
        } else {
            EngineMode::Container
        }
    }
}

/// The reason an endpoint leaves out a param that only the start command names.
pub const ENDPOINT_REASON: &str =
    "an endpoint is a server kitt does not start; only setup calls and request bodies reach it";

/// Adds every `params.NAME` named in `s`.
pub fn params_named(s: &str, out: &mut BTreeSet<String>) {
    let bytes = s.as_bytes();
    let mut from = 0;
    while let Some(i) = s[from..].find("params.") {
        let at = from + i;
        let start = at + "params.".len();
        let before_ok =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b'.');
        let len = s[start..].bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
        if before_ok && len > 0 {
            out.insert(s[start..start + len].to_string());
        }
        from = start;
    }
}

fn node_params(node: &Node, out: &mut BTreeSet<String>) {
    match &node.value {
        Value::Str(s) => params_named(s, out),
        Value::Seq(items) => items.iter().for_each(|n| node_params(n, out)),
        Value::Map(entries) => entries.iter().for_each(|(_, v)| node_params(v, out)),
        _ => {}
    }
}

fn args_params(args: &[Arg], out: &mut BTreeSet<String>) {
    for a in args {
        for t in a.texts() {
            params_named(&t.value, out);
        }
    }
}

fn env_params<'a>(env: impl IntoIterator<Item = &'a Spanned<SecretOr>>, out: &mut BTreeSet<String>) {
    for v in env {
        if let SecretOr::Plain(s) = &v.value {
            params_named(s, out);
        }
    }
}

/// Params named by what every mode sends: setup calls, the tokenize call, the API bodies.
pub fn shared_uses(spec: &EngineSpec) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for call in &spec.setup {
        params_named(&call.path, &mut out);
        if let Some(b) = &call.body {
            node_params(b, &mut out);
        }
    }
    if let Some(t) = &spec.tokenize {
        node_params(&t.body, &mut out);
    }
    for call in [&spec.api.completion, &spec.api.chat].into_iter().flatten() {
        node_params(&call.body, &mut out);
    }
    out
}

/// Params a mode of the template uses; `inst` brings the instance's own args, command and env.
pub fn uses(spec: &EngineSpec, mode: EngineMode, inst: Option<&EngineInstance>) -> BTreeSet<String> {
    let mut out = shared_uses(spec);
    match mode {
        EngineMode::Container => {
            let over = inst.and_then(|i| i.container.as_ref());
            if let Some(c) = &spec.container {
                match over.and_then(|o| o.args.as_ref()) {
                    Some(a) => args_params(a, &mut out),
                    None => args_params(&c.args, &mut out),
                }
                env_params(c.env.values(), &mut out);
                for m in &c.mounts {
                    params_named(&m.source.value, &mut out);
                    params_named(&m.target.value, &mut out);
                }
                for a in &c.extra_args {
                    params_named(&a.value, &mut out);
                }
            }
            if let Some(o) = over {
                o.extra_args.iter().for_each(|a| params_named(&a.value, &mut out));
            }
            inst.into_iter().for_each(|i| env_params(i.env.values(), &mut out));
        }
        EngineMode::Native => {
            let over = inst.and_then(|i| i.native.as_ref()).and_then(|n| n.command.as_ref());
            match (over, &spec.native) {
                (Some(c), _) => args_params(c, &mut out),
                (None, Some(n)) => args_params(&n.command, &mut out),
                (None, None) => {}
            }
            if let Some(n) = &spec.native {
                env_params(n.env.values(), &mut out);
            }
            inst.into_iter().for_each(|i| env_params(i.env.values(), &mut out));
        }
        EngineMode::Endpoint => {}
    }
    out
}

/// The modes a template offers a start command for (every template also serves endpoints).
pub fn offered(spec: &EngineSpec) -> Vec<EngineMode> {
    let mut out = Vec::new();
    if spec.container.is_some() {
        out.push(EngineMode::Container);
    }
    if spec.native.is_some() {
        out.push(EngineMode::Native);
    }
    out.push(EngineMode::Endpoint);
    out
}

/// Why `mode` leaves `param` out, as the template says (endpoint: always the same reason).
pub fn unused_reason(spec: &EngineSpec, mode: EngineMode, param: &str) -> Option<String> {
    let listed = match mode {
        EngineMode::Container => spec.container.as_ref().map(|c| &c.unused_params),
        EngineMode::Native => spec.native.as_ref().map(|n| &n.unused_params),
        EngineMode::Endpoint => {
            return (!shared_uses(spec).contains(param)).then(|| ENDPOINT_REASON.to_string());
        }
    };
    listed.and_then(|l| l.get(param)).map(|r| r.value.clone())
}

/// Checks that every declared param reaches each mode the template offers, or is listed as
/// unused by that mode, and that each listed param is declared and really unused.
pub fn check(m: &Manifest<EngineSpec>) -> Vec<Diagnostic> {
    let spec = &m.spec;
    let name = &m.metadata.name.value;
    let mut errors = Vec::new();
    for mode in offered(spec) {
        let listed = match mode {
            EngineMode::Container => spec.container.as_ref().map(|c| &c.unused_params),
            EngineMode::Native => spec.native.as_ref().map(|n| &n.unused_params),
            EngineMode::Endpoint => None,
        };
        let Some(listed) = listed else { continue };
        let used = uses(spec, mode, None);
        let mode_name = mode.name();
        let section = if mode == EngineMode::Container {
            "`container.args` or `container.env`"
        } else {
            "`native.command` or `native.env`"
        };
        for (param, decl) in &spec.params {
            if !used.contains(param) && !listed.contains_key(param) {
                errors.push(
                    Diagnostic::new(
                        decl.pos,
                        format!("param `{param}` of engine template `{name}` reaches nothing in {mode_name} mode"),
                    )
                    .help(format!(
                        "send it in {section} (`{{{{params.{param}}}}}`), or list it under `{mode_name}.unused_params` with the reason"
                    ))
                    .in_file(&m.file),
                );
            }
        }
        for (param, reason) in listed {
            if !spec.params.contains_key(param) {
                errors.push(
                    Diagnostic::new(reason.pos, format!("`{mode_name}.unused_params` lists `{param}`, which engine template `{name}` does not declare"))
                        .help(if spec.params.is_empty() {
                            format!("engine template `{name}` declares no params; remove `{param}`")
                        } else {
                            crate::manifest::diag::unknown_help(param, spec.params.keys().map(String::as_str))
                        })
                        .in_file(&m.file),
                );
            } else if used.contains(param) {
                errors.push(
                    Diagnostic::new(
                        reason.pos,
                        format!("`{mode_name}.unused_params` lists `{param}`, which {mode_name} mode uses"),
                    )
                    .help(format!("remove `{param}` from `{mode_name}.unused_params`"))
                    .in_file(&m.file),
                );
            } else if reason.value.trim().is_empty() {
                errors.push(
                    Diagnostic::new(reason.pos, format!("`{mode_name}.unused_params` gives no reason for `{param}`"))
                        .help("say why this mode cannot use it; `kitt engines list -v` shows it")
                        .in_file(&m.file),
                );
            }
        }
    }
    errors
}

/// The sampling keys an API call's body carries: leaves that are exactly one sampling
/// expression (`{{temperature}}` or `{{sampling.temperature}}`).
pub fn sampling_slots(call: &ApiCall) -> BTreeSet<&'static str> {
    fn walk(node: &Node, out: &mut BTreeSet<&'static str>) {
        match &node.value {
            Value::Str(s) => {
                let inner = s.trim().strip_prefix("{{").and_then(|r| r.strip_suffix("}}")).map(str::trim);
                if let Some(path) = inner {
                    let key = path.strip_prefix("sampling.").unwrap_or(path);
                    if let Some((k, _)) = SAMPLING_KEYS.iter().find(|(k, _)| *k == key) {
                        out.insert(k);
                    }
                }
            }
            Value::Seq(items) => items.iter().for_each(|n| walk(n, out)),
            Value::Map(entries) => entries.iter().for_each(|(_, v)| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(&call.body, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_found_in_any_template_text() {
        let mut out = BTreeSet::new();
        params_named("{{#each params.faults}}{{this}}{{/each}}-{{params.a_b}} sampling.params.x xparams.y", &mut out);
        assert_eq!(out.into_iter().collect::<Vec<_>>(), ["a_b", "faults"]);
    }
}
