//! Values that may be secret: written inline, or read from the environment at run time.
//!
//! A `{from_env: NAME}` value is never resolved while compiling, so it cannot reach plan.json,
//! the journal, logs, reports or keys; only its name and prefix do.

use schemars::JsonSchema;
use serde::Serialize;

use super::decode::{Cx, Decode, Fields};
use super::diag::Diagnostic;
use super::yaml::{Node, Value};

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum SecretOr {
    /// A literal value, visible in the plan.
    Plain(String),
    /// Read from the environment variable when the step runs; never recorded.
    FromEnv {
        from_env: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
    },
}

impl Decode for SecretOr {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        match &node.value {
            Value::Str(s) => Some(SecretOr::Plain(s.clone())),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => Some(SecretOr::Plain(node.to_json().to_string())),
            Value::Map(_) => {
                let mut f = Fields::open(node, cx, what)?;
                let from_env = f.req(cx, "from_env");
                let prefix = f.opt(cx, "prefix");
                f.finish(cx);
                Some(SecretOr::FromEnv { from_env: from_env?, prefix })
            }
            _ => {
                cx.mismatch(node, "a string or `{from_env: NAME}`", what);
                None
            }
        }
    }
}

/// Names of headers and variables whose values are secrets and must come from the environment:
/// a known word anywhere, or a word of the name (split at `-`, `_`, `.`) that ends in `key`
/// (`Ocp-Apim-Subscription-Key`, `X-Goog-Api-Key`, `OPENAI_APIKEY`), but not `keep` or `keyword`.
pub fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    let known = ["authorization", "token", "secret", "password", "passwd", "credential", "cookie"];
    known.iter().any(|s| n.contains(s)) || n.split(['-', '_', '.']).any(|word| word.ends_with("key"))
}

/// An error when a secret entry — declared one (`declared`) or looking like one — is written inline.
pub fn check_inline(name: &str, value: &SecretOr, declared: bool, pos: super::diag::Pos, cx: &mut Cx) {
    if let SecretOr::Plain(_) = value
        && (declared || looks_secret(name))
    {
        cx.error(
                Diagnostic::new(pos, format!("secret `{name}` is written inline"))
                    .help(format!(
                        "read it from the environment instead: `{name}: {{from_env: MY_VAR}}` (secrets never enter plans, keys, journals or reports)"
                    )),
            );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_names_are_recognised_by_their_words() {
        for name in [
            "Authorization",
            "Ocp-Apim-Subscription-Key",
            "x-api-key",
            "api_key",
            "OPENAI_APIKEY",
            "HF_TOKEN",
            "db.passwd",
        ] {
            assert!(super::looks_secret(name), "{name}");
        }
        for name in ["Content-Type", "keep_alive", "keyword", "CUDA_VISIBLE_DEVICES", "X-Request-Id"] {
            assert!(!super::looks_secret(name), "{name}");
        }
    }
}
