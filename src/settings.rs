//! Settings: typed keys with defaults, kept in the results store, and the one rule that says
//! which value wins: a flag (`--pin KEY=VALUE`) over the environment (`KITT_SETTING_<KEY>`) over
//! the store over the default.
//!
//! Owns the keys (their names, types, defaults and docs) and the parsing of a value given as
//! text; never touches the store itself (`store::settings` keeps JSON text and knows no keys).
//! A value is validated wherever it enters — a flag, the environment, `kitt settings set`, or a
//! store written by another kitt — and an error names the key, where the value came from and
//! the type it expects.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as Json;

use crate::store::StoredSetting;

/// What values a key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A list of paths: a JSON array of strings, or comma-separated text.
    Paths,
    /// One path.
    Path,
    /// An integer at least `min`.
    Int { min: i64 },
}

impl Kind {
    pub fn expected(self) -> String {
        match self {
            Kind::Paths => "a list of paths (a JSON array of strings, or comma-separated)".into(),
            Kind::Path => "a path".into(),
            Kind::Int { min } => format!("an integer ≥ {min}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Paths => "paths",
            Kind::Path => "path",
            Kind::Int { .. } => "int",
        }
    }
}

/// One setting.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    pub kind: Kind,
    /// The default as JSON (`null`: none).
    pub default: &'static str,
    pub doc: &'static str,
}

/// Every key kitt knows.
pub const KEYS: &[Key] = &[
    Key { name: "model_dirs", kind: Kind::Paths, default: "[]", doc: "directories where models are looked up by name" },
    Key {
        name: "allowed_suite_dirs",
        kind: Kind::Paths,
        default: "[]",
        doc: "directories that suites may be started from by a server (empty: any)",
    },
    Key { name: "default_suite", kind: Kind::Path, default: "null", doc: "the suite a server offers first" },
    Key { name: "page_size", kind: Kind::Int { min: 1 }, default: "50", doc: "rows per page in listings" },
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingError {
    #[error("unknown setting `{key}`{}: `kitt settings list` shows every key", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    Unknown { key: String, suggestion: Option<String> },
    #[error("setting `{key}` ({origin}) expects {expected}, got `{got}`")]
    Invalid { key: String, origin: String, expected: String, got: String },
    #[error("`--pin {0}` is not KEY=VALUE")]
    Pin(String),
    #[error("setting `{key}` is pinned by {by}, so the store's value would not be used: unset that first")]
    Pinned { key: String, by: String },
}

/// The key named `name`.
pub fn key(name: &str) -> Result<&'static Key, SettingError> {
    KEYS.iter().find(|k| k.name == name).ok_or_else(|| SettingError::Unknown {
        key: name.to_string(),
        suggestion: KEYS
            .iter()
            .map(|k| (strsim::jaro_winkler(k.name, name), k.name))
            .filter(|(score, _)| *score > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n)| n.to_string()),
    })
}

/// The environment variable that sets `key`: `KITT_SETTING_` and the key in capitals.
pub fn env_var(key: &str) -> String {
    format!("KITT_SETTING_{}", key.to_ascii_uppercase())
}

/// Parses `text` as a value of `key`; `origin` says where it came from, for the error.
pub fn parse(key: &Key, text: &str, origin: &str) -> Result<Json, SettingError> {
    let invalid = || SettingError::Invalid {
        key: key.name.to_string(),
        origin: origin.to_string(),
        expected: key.kind.expected(),
        got: text.to_string(),
    };
    let text = text.trim();
    match key.kind {
        Kind::Int { min } => match text.parse::<i64>() {
            Ok(n) if n >= min => Ok(Json::from(n)),
            _ => Err(invalid()),
        },
        Kind::Path if text.is_empty() => Err(invalid()),
        Kind::Path => match serde_json::from_str::<Json>(text) {
            Ok(Json::String(s)) if !s.is_empty() => Ok(Json::String(s)),
            Ok(Json::String(_)) => Err(invalid()),
            _ => Ok(Json::String(text.to_string())),
        },
        Kind::Paths if text.starts_with('[') => match serde_json::from_str::<Vec<String>>(text) {
            Ok(list) if list.iter().all(|p| !p.trim().is_empty()) => Ok(Json::from(list)),
            _ => Err(invalid()),
        },
        Kind::Paths => {
            let list: Vec<String> = text.split(',').map(str::trim).map(str::to_string).collect();
            if text.is_empty() {
                Ok(Json::Array(Vec::new()))
            } else if list.iter().any(String::is_empty) {
                Err(invalid())
            } else {
                Ok(Json::from(list))
            }
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Flag,
    Env,
    Store,
    Default,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Env => "env",
            Source::Store => "store",
            Source::Default => "default",
        }
    }

    /// Whether the value is pinned: set outside the store, so changing the store's does nothing.
    pub fn pinned(&self) -> bool {
        matches!(self, Source::Flag | Source::Env)
    }
}

/// A key's value in force, and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolved {
    pub key: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: Json,
    pub source: Source,
    /// The environment variable that would pin it.
    pub env: String,
    /// The store's value when it has one (shadowed when the source is a flag or env).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored: Option<Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_unix_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub doc: &'static str,
}

/// `KEY=VALUE` pins, checked against the keys.
pub fn pins(args: &[String]) -> Result<BTreeMap<&'static str, String>, SettingError> {
    let mut out = BTreeMap::new();
    for a in args {
        let (k, v) = a.split_once('=').ok_or_else(|| SettingError::Pin(a.clone()))?;
        out.insert(key(k.trim())?.name, v.to_string());
    }
    Ok(out)
}

/// Every key's value in force: pin over environment over store over default.
pub fn resolve(
    pins: &BTreeMap<&'static str, String>,
    env: &dyn Fn(&str) -> Option<String>,
    stored: &BTreeMap<String, StoredSetting>,
) -> Result<Vec<Resolved>, SettingError> {
    KEYS.iter()
        .map(|k| {
            let var = env_var(k.name);
            let from_store = stored
                .get(k.name)
                .map(|s| {
                    let v = serde_json::from_str::<Json>(&s.value)
                        .ok()
                        .map(|j| match j {
                            Json::String(t) => t,
                            other => other.to_string(),
                        })
                        .unwrap_or_else(|| s.value.clone());
                    parse(k, &v, "in the store: `kitt settings set` it again").map(|j| (j, s))
                })
                .transpose()?;
            let (value, source) = if let Some(p) = pins.get(k.name) {
                (parse(k, p, "from --pin")?, Source::Flag)
            } else if let Some(e) = env(&var).filter(|v| !v.is_empty()) {
                (parse(k, &e, &format!("from {var}"))?, Source::Env)
            } else if let Some((v, _)) = &from_store {
                (v.clone(), Source::Store)
            } else {
                (serde_json::from_str(k.default).unwrap_or(Json::Null), Source::Default)
            };
            Ok(Resolved {
                key: k.name,
                kind: k.kind.name(),
                value,
                source,
                env: var,
                stored: from_store.as_ref().map(|(v, _)| v.clone()),
                changed_unix_ns: from_store.as_ref().map(|(_, s)| s.changed_unix_ns),
                actor: from_store.as_ref().map(|(_, s)| s.actor.clone()),
                doc: k.doc,
            })
        })
        .collect()
}

/// Who is making a change: `$KITT_ACTOR` (a server sets it to the token's name), else `$USER`.
pub fn actor() -> String {
    ["KITT_ACTOR", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(key: &str, value: &str) -> BTreeMap<String, StoredSetting> {
        BTreeMap::from([(
            key.to_string(),
            StoredSetting { value: value.to_string(), changed_unix_ns: 7, actor: "ann".into() },
        )])
    }

    fn source_and_value(
        pins: &[(&'static str, &str)],
        env: &[(&str, &str)],
        store: &BTreeMap<String, StoredSetting>,
    ) -> (Source, Json) {
        let pins = pins.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let env = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
        let r = resolve(&pins, &env, store).unwrap();
        let p = r.into_iter().find(|r| r.key == "page_size").unwrap();
        (p.source, p.value)
    }

    #[test]
    fn a_flag_beats_the_environment_beats_the_store_beats_the_default() {
        let none = BTreeMap::new();
        let store = stored("page_size", "20");
        assert_eq!(source_and_value(&[], &[], &none), (Source::Default, Json::from(50)));
        assert_eq!(source_and_value(&[], &[], &store), (Source::Store, Json::from(20)));
        let env = [("KITT_SETTING_PAGE_SIZE", "30")];
        assert_eq!(source_and_value(&[], &env, &store), (Source::Env, Json::from(30)));
        assert_eq!(source_and_value(&[("page_size", "40")], &env, &store), (Source::Flag, Json::from(40)));
    }

    #[test]
    fn values_are_typed_and_an_error_names_the_key_origin_and_type() {
        let k = key("page_size").unwrap();
        assert_eq!(
            parse(k, "0", "from KITT_SETTING_PAGE_SIZE").unwrap_err().to_string(),
            "setting `page_size` (from KITT_SETTING_PAGE_SIZE) expects an integer ≥ 1, got `0`"
        );
        let dirs = key("model_dirs").unwrap();
        assert_eq!(parse(dirs, "/a, /b", "x").unwrap(), serde_json::json!(["/a", "/b"]));
        assert_eq!(parse(dirs, "[\"/a,b\"]", "x").unwrap(), serde_json::json!(["/a,b"]));
        assert!(parse(dirs, "[1]", "x").is_err() && parse(dirs, "/a,,/b", "x").is_err());
        assert_eq!(parse(key("default_suite").unwrap(), "s.yaml", "x").unwrap(), Json::from("s.yaml"));
        assert_eq!(
            key("page_sise").unwrap_err().to_string(),
            "unknown setting `page_sise` (did you mean `page_size`?): `kitt settings list` shows every key"
        );
    }

    #[test]
    fn every_default_is_a_valid_value() {
        for k in KEYS {
            let d: Json = serde_json::from_str(k.default).unwrap();
            if !d.is_null() {
                let text = match &d {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                };
                assert_eq!(parse(k, &text, "default").unwrap(), d, "{}", k.name);
            }
        }
    }
}
