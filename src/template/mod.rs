//! Typed rendering of template trees.
//!
//! A template tree is a YAML node whose string leaves may hold handlebars expressions. Rendering
//! never builds JSON by pasting strings: a leaf that is exactly one expression (`"{{max_tokens}}"`)
//! takes the value's own type (a number stays a number, a list stays a list); any other string
//! leaf is rendered as text by handlebars in strict mode, where a missing variable is an error.
//! A leaf that is exactly one sampling expression whose value is unset is left out (DESIGN
//! decision 1), so engines receive only the sampling values a suite sets.
//!
//! Late-bound variables (`port`, `run.id`, `kitt.exe`, per request `prompt` and `messages`, and
//! an endpoint's `model.served_name` when it is `auto`) render to themselves (`{{port}}`) so keys
//! hash placeholders; the runner binds them with `bind_late` when the values exist.
//!
//! A secret param renders to `{{from_env.NAME}}`, a placeholder naming its environment variable:
//! plans, keys and logs hold the name, and `bind_late` reads the value only where the bound
//! string goes straight to the engine (its argv, environment, headers or request bodies).

use handlebars::{Handlebars, RenderErrorReason};
use serde_json::{Map, Value as Json};

use crate::manifest::diag::{Diagnostic, Pos, unknown_help};
use crate::manifest::suite::SAMPLING_KEYS;
use crate::manifest::yaml::{Node, Value};

/// The placeholder a late-bound variable renders to.
pub fn placeholder(name: &str) -> String {
    format!("{{{{{name}}}}}")
}

/// A strict handlebars registry with no HTML escaping.
pub struct Renderer {
    hb: Handlebars<'static>,
}

impl Default for Renderer {
    fn default() -> Self {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        Renderer { hb }
    }
}

/// The single variable path of a leaf that is exactly `{{ path }}`.
fn single_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?.trim();
    let ok = !inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    ok.then_some(inner)
}

/// Looks up a dotted path in a JSON context.
pub fn lookup<'a>(ctx: &'a Json, path: &str) -> Option<&'a Json> {
    path.split('.').try_fold(ctx, |v, part| v.get(part))
}

fn is_sampling_path(path: &str) -> bool {
    let key = path.strip_prefix("sampling.").unwrap_or(path);
    SAMPLING_KEYS.iter().any(|(k, _)| *k == key)
}

/// Every dotted leaf path of a context (for "did you mean" suggestions).
fn known_paths(ctx: &Json) -> Vec<String> {
    fn walk(v: &Json, prefix: &str, out: &mut Vec<String>) {
        if let Json::Object(m) = v {
            for (k, v) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                walk(v, &p, out);
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(ctx, "", &mut out);
    out
}

/// A context in layers: `top` (small, per cell) over `base` (shared, never cloned on the common
/// path). A variable is looked up in `top` first.
#[derive(Clone, Copy)]
pub struct Layers<'a> {
    pub top: &'a Json,
    pub base: &'a Json,
}

impl Layers<'_> {
    fn lookup(&self, path: &str) -> Option<&Json> {
        lookup(self.top, path).or_else(|| lookup(self.base, path))
    }

    /// Both layers as one value (only for text templates, which handlebars renders whole).
    fn merged(&self) -> Json {
        let mut out = self.base.clone();
        if let (Json::Object(o), Json::Object(t)) = (&mut out, self.top) {
            for (k, v) in t {
                o.insert(k.clone(), v.clone());
            }
        }
        out
    }
}

impl Renderer {
    /// Renders one string; `pos` locates it for errors.
    pub fn render_str(&self, s: &str, ctx: &Json, pos: Pos) -> Result<Option<Json>, Diagnostic> {
        self.render_str_in(s, Layers { top: &Json::Null, base: ctx }, pos)
    }

    fn render_str_in(&self, s: &str, layers: Layers, pos: Pos) -> Result<Option<Json>, Diagnostic> {
        if !s.contains("{{") {
            return Ok(Some(Json::String(s.to_string())));
        }
        if let Some(path) = single_expression(s) {
            return match layers.lookup(path) {
                Some(Json::Null) | None if is_sampling_path(path) => Ok(None),
                Some(v) => Ok(Some(v.clone())),
                None => Err(unknown_variable(path, &layers.merged(), pos)),
            };
        }
        let ctx = layers.merged();
        let ctx = &ctx;
        match self.hb.render_template(s, ctx) {
            Ok(text) => Ok(Some(Json::String(text))),
            Err(e) => Err(match e.reason() {
                RenderErrorReason::MissingVariable(Some(path)) => unknown_variable(path, ctx, pos),
                _ => Diagnostic::new(pos, format!("template error in `{s}`: {}", e.reason()))
                    .help("see the handlebars syntax: `{{name}}`, `{{#if x}}…{{/if}}`"),
            }),
        }
    }

    /// Renders a template tree; `None` when the whole tree is an unset sampling leaf.
    pub fn render(&self, node: &Node, ctx: &Json) -> Result<Option<Json>, Diagnostic> {
        self.render_layered(node, Layers { top: &Json::Null, base: ctx })
    }

    /// Renders a template tree in a layered context.
    pub fn render_layered(&self, node: &Node, layers: Layers) -> Result<Option<Json>, Diagnostic> {
        Ok(match &node.value {
            Value::Str(s) => return self.render_str_in(s, layers, node.pos),
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    if let Some(v) = self.render_layered(item, layers)? {
                        out.push(v);
                    }
                }
                Some(Json::Array(out))
            }
            Value::Map(entries) => {
                let mut out = Map::new();
                for (k, v) in entries {
                    if let Some(v) = self.render_layered(v, layers)? {
                        out.insert(k.name.clone(), v);
                    }
                }
                Some(Json::Object(out))
            }
            _ => Some(node.to_json()),
        })
    }

    /// Renders a tree into a new node tree that keeps every position (for decoding afterwards).
    pub fn render_node(&self, node: &Node, ctx: &Json) -> Result<Node, Diagnostic> {
        Ok(match &node.value {
            Value::Str(s) => match self.render_str(s, ctx, node.pos)? {
                Some(v) => Node::from_json(&v, node.pos),
                None => Node { pos: node.pos, value: Value::Null },
            },
            Value::Seq(items) => Node {
                pos: node.pos,
                value: Value::Seq(items.iter().map(|i| self.render_node(i, ctx)).collect::<Result<_, _>>()?),
            },
            Value::Map(entries) => Node {
                pos: node.pos,
                value: Value::Map(
                    entries
                        .iter()
                        .map(|(k, v)| Ok((k.clone(), self.render_node(v, ctx)?)))
                        .collect::<Result<_, Diagnostic>>()?,
                ),
            },
            _ => node.clone(),
        })
    }

    /// Renders a string that must stay a string (argv elements, paths).
    pub fn render_text(&self, s: &str, ctx: &Json, pos: Pos) -> Result<String, Diagnostic> {
        Ok(match self.render_str(s, ctx, pos)? {
            Some(Json::String(s)) => s,
            Some(other) => scalar_text(&other),
            None => String::new(),
        })
    }
}

/// The text of a scalar JSON value, as it would appear on a command line.
pub fn scalar_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn unknown_variable(path: &str, ctx: &Json, pos: Pos) -> Diagnostic {
    let known = known_paths(ctx);
    let help = unknown_help(path, known.iter().map(String::as_str).filter(|p| p.contains('.') || !p.is_empty()));
    Diagnostic::new(pos, format!("unknown template variable `{path}`")).help(help)
}

const FROM_ENV: &str = "{{from_env.";

/// The placeholder of a secret read from the environment variable `var` when the engine starts.
pub fn env_placeholder(var: &str) -> String {
    placeholder(&format!("from_env.{var}"))
}

/// The environment variables named by `{{from_env.NAME}}` placeholders in `s`.
pub fn env_placeholders(s: &str) -> impl Iterator<Item = &str> {
    s.split(FROM_ENV).skip(1).filter_map(|rest| rest.split_once("}}").map(|(var, _)| var))
}

/// Replaces each `{{from_env.NAME}}` whose variable is set (in the environment or the secrets
/// file, `crate::secrets`) by its value; an unset one stays a placeholder (`kitt apply` checks every secret's variable before it starts anything).
fn bind_env(s: &str) -> String {
    let mut out = s.to_string();
    for var in env_placeholders(s) {
        if let Ok(Some(value)) = crate::secrets::lookup(var) {
            out = out.replace(&env_placeholder(var), &value);
        }
    }
    out
}

/// Binds late variables in a rendered tree: a string that is exactly a placeholder takes the
/// value's type; placeholders inside longer strings are replaced as text. Secret placeholders
/// (`{{from_env.NAME}}`) take their value from the environment.
pub fn bind_late(value: &Json, vars: &[(&str, Json)]) -> Json {
    match value {
        Json::String(s) if s.contains("{{") => {
            for (name, v) in vars {
                if *s == placeholder(name) {
                    return v.clone();
                }
            }
            let mut out = s.clone();
            for (name, v) in vars {
                out = out.replace(&placeholder(name), &scalar_text(v));
            }
            if out.contains(FROM_ENV) {
                out = bind_env(&out);
            }
            Json::String(out)
        }
        Json::Array(items) => Json::Array(items.iter().map(|i| bind_late(i, vars)).collect()),
        Json::Object(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), bind_late(v, vars))).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(yaml: &str) -> Node {
        crate::manifest::yaml::parse(yaml).unwrap()
    }

    #[test]
    fn single_expressions_keep_their_type() {
        let r = Renderer::default();
        let ctx = json!({"max_tokens": 128, "stop": ["a", "b"], "model": {"name": "m"}, "temperature": null});
        let out = r
            .render(
                &node(
                    "{n: '{{max_tokens}}', s: '{{stop}}', t: 'x-{{model.name}}', u: '{{temperature}}', v: '{{top_p}}'}",
                ),
                &ctx,
            )
            .unwrap()
            .unwrap();
        assert_eq!(out, json!({"n": 128, "s": ["a", "b"], "t": "x-m"}));
    }

    #[test]
    fn unknown_variables_are_errors_with_suggestions() {
        let r = Renderer::default();
        let ctx = json!({"params": {"concurrency": 4}});
        let e = r.render(&node("a: '{{params.concurency}}'"), &ctx).unwrap_err();
        assert_eq!(e.message, "unknown template variable `params.concurency`");
        assert_eq!(e.help.as_deref(), Some("did you mean `params.concurrency`?"));
        let e = r.render(&node("a: 'x {{params.nope}} y'"), &ctx).unwrap_err();
        assert!(e.message.contains("params.nope"), "{}", e.message);
    }

    #[test]
    fn late_binding() {
        let v = json!({"port": "{{port}}", "url": "http://127.0.0.1:{{port}}/x"});
        let b = bind_late(&v, &[("port", json!(8123))]);
        assert_eq!(b, json!({"port": 8123, "url": "http://127.0.0.1:8123/x"}));
    }

    #[test]
    fn secret_placeholders_bind_from_the_environment_and_only_there() {
        let var = "KITT_TEMPLATE_TEST_SECRET";
        let v = json!({"auth": format!("Bearer {}", env_placeholder(var)), "port": "{{port}}"});
        assert_eq!(env_placeholders(v["auth"].as_str().unwrap()).collect::<Vec<_>>(), [var]);
        // SAFETY: no other thread reads the environment: nextest runs each test in its own process,
        // and no other test names this variable.
        unsafe { std::env::set_var(var, "s3") };
        let b = bind_late(&v, &[("port", json!(1))]);
        assert_eq!(b, json!({"auth": "Bearer s3", "port": 1}));
        unsafe { std::env::remove_var(var) };
        assert_eq!(bind_late(&v, &[])["auth"], v["auth"], "an unset variable stays a placeholder");
    }
}
