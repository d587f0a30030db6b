//! Decoding spanned YAML nodes into typed manifest values, collecting every error.
//!
//! serde's derive stops at the first error; a user fixing a suite wants all of them at once, in
//! file order. So each manifest type decodes itself from a `Node` through a small `Fields` reader
//! that knows which keys it asked for: whatever is left is an unknown key, reported with a
//! suggestion. The JSON Schemas come from the same types via schemars; a test keeps both in step.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use super::diag::{Diagnostic, Pos, unknown_help};
use super::yaml::{Key, Node, Value};

/// Errors collected while decoding one file.
#[derive(Debug, Default)]
pub struct Cx {
    pub errors: Vec<Diagnostic>,
}

impl Cx {
    pub fn error(&mut self, d: Diagnostic) {
        self.errors.push(d);
    }

    /// An "expected X, found Y" error at `node`.
    pub fn mismatch(&mut self, node: &Node, expected: &str, what: &str) {
        self.error(Diagnostic::new(node.pos, format!("{what}: expected {expected}, found {}", node.type_name())));
    }
}

/// A value that decodes itself from a node. `None` means an error was recorded in `cx`.
pub trait Decode: Sized {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self>;
}

/// A value together with the position it was written at.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub pos: Pos,
    pub value: T,
}

impl<T> Spanned<T> {
    pub fn new(pos: Pos, value: T) -> Self {
        Spanned { pos, value }
    }
}

impl<T: Serialize> Serialize for Spanned<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<T: JsonSchema> JsonSchema for Spanned<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(g)
    }
    fn inline_schema() -> bool {
        T::inline_schema()
    }
}

impl<T: Decode> Decode for Spanned<T> {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        T::decode(node, cx, what).map(|value| Spanned { pos: node.pos, value })
    }
}

impl Decode for Node {
    fn decode(node: &Node, _: &mut Cx, _: &str) -> Option<Self> {
        Some(node.clone())
    }
}

impl Decode for String {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            _ => {
                cx.mismatch(node, "a string", what);
                None
            }
        }
    }
}

impl Decode for bool {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                cx.mismatch(node, "`true` or `false`", what);
                None
            }
        }
    }
}

impl Decode for f64 {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        match node.value {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => {
                cx.mismatch(node, "a number", what);
                None
            }
        }
    }
}

macro_rules! decode_unsigned {
    ($($t:ty),*) => {$(
        impl Decode for $t {
            fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
                match node.value {
                    Value::Int(i) => match <$t>::try_from(i) {
                        Ok(v) => Some(v),
                        Err(_) => {
                            cx.error(Diagnostic::new(
                                node.pos,
                                format!("{what}: {i} is out of range (0 to {})", <$t>::MAX),
                            ));
                            None
                        }
                    },
                    _ => {
                        cx.mismatch(node, "a whole number", what);
                        None
                    }
                }
            }
        }
    )*};
}
decode_unsigned!(u16, u32, u64);

impl<T: Decode> Decode for Vec<T> {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let Value::Seq(items) = &node.value else {
            cx.mismatch(node, "a list", what);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match T::decode(item, cx, what) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

/// A mapping with free keys (environment, headers, params): keys keep their positions.
impl<T: Decode> Decode for BTreeMap<String, Spanned<T>> {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let Value::Map(entries) = &node.value else {
            cx.mismatch(node, "a mapping", what);
            return None;
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (key, value) in entries {
            let inner = format!("`{}` in {what}", key.name);
            match T::decode(value, cx, &inner) {
                Some(v) => {
                    out.insert(key.name.clone(), Spanned::new(key.pos, v));
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

/// A duration written as `30m`, `1s`, `250ms`, `1h 30m`, or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: `30m`, `10s`, `250ms`, `1h 30m`, or a number of seconds.",
            "anyOf": [
                {"type": "string", "pattern": "^\\s*([0-9]+(\\.[0-9]+)?\\s*(ns|us|ms|s|m|h|d|sec|min|hour|hours|days|secs|mins)\\s*)+$"},
                {"type": "number", "minimum": 0}
            ]
        })
    }
}

/// The schema of a duration that must be longer than 0 (a deadline): a number above 0, or a
/// duration string with a digit other than 0 in it.
pub struct Deadline;

impl JsonSchema for Deadline {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Deadline".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration longer than 0: `30m`, `10s`, `250ms`, `1h 30m`, or a number of seconds.",
            "anyOf": [
                {"type": "string", "pattern": "^(?=[^1-9]*[1-9])\\s*([0-9]+(\\.[0-9]+)?\\s*(ns|us|ms|s|m|h|d|sec|min|hour|hours|days|secs|mins)\\s*)+$"},
                {"type": "number", "exclusiveMinimum": 0}
            ]
        })
    }
}

impl Decode for Dur {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        match &node.value {
            Value::Int(i) if *i >= 0 => Some(Dur(Duration::from_secs(*i as u64))),
            Value::Float(f) if *f >= 0.0 && f.is_finite() => Some(Dur(Duration::from_secs_f64(*f))),
            Value::Str(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) => Some(Dur(d)),
                Err(e) => {
                    cx.error(
                        Diagnostic::new(node.pos, format!("{what}: `{s}` is not a duration ({e})"))
                            .help("write a duration like `30s`, `5m`, `250ms` or `1h 30m`"),
                    );
                    None
                }
            },
            _ => {
                cx.mismatch(node, "a duration such as `30s` or `5m`", what);
                None
            }
        }
    }
}

/// Reads the fields of one mapping; `finish` reports every key nobody asked for.
pub struct Fields<'a> {
    node: &'a Node,
    entries: &'a [(Key, Node)],
    asked: Vec<&'static str>,
    what: String,
}

impl<'a> Fields<'a> {
    /// Starts reading `node` as a mapping; records an error and returns `None` otherwise.
    pub fn open(node: &'a Node, cx: &mut Cx, what: &str) -> Option<Fields<'a>> {
        match &node.value {
            Value::Map(entries) => Some(Fields { node, entries, asked: Vec::new(), what: what.to_string() }),
            _ => {
                cx.mismatch(node, "a mapping", what);
                None
            }
        }
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// The raw node under `key`, if present.
    pub fn node(&mut self, key: &'static str) -> Option<&'a Node> {
        self.asked.push(key);
        self.entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v)
    }

    /// The position of the key `key` itself, if present.
    pub fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entries.iter().find(|(k, _)| k.name == key).map(|(k, _)| k.pos)
    }

    /// An optional field; `null` counts as absent.
    pub fn opt<T: Decode>(&mut self, cx: &mut Cx, key: &'static str) -> Option<T> {
        let node = self.node(key)?;
        if node.value == Value::Null {
            return None;
        }
        T::decode(node, cx, &format!("`{key}` in {}", self.what))
    }

    /// A required field; a missing one is an error at the mapping's position.
    pub fn req<T: Decode>(&mut self, cx: &mut Cx, key: &'static str) -> Option<T> {
        match self.node(key) {
            Some(node) if node.value != Value::Null => T::decode(node, cx, &format!("`{key}` in {}", self.what)),
            _ => {
                cx.error(
                    Diagnostic::new(self.node.pos, format!("missing key `{key}` in {}", self.what))
                        .help(format!("add `{key}:`")),
                );
                None
            }
        }
    }

    /// Reports unknown keys, with a suggestion from the keys this mapping accepts.
    pub fn finish(self, cx: &mut Cx) {
        for (key, _) in self.entries {
            if !self.asked.contains(&key.name.as_str()) {
                cx.error(
                    Diagnostic::new(key.pos, format!("unknown key `{}` in {}", key.name, self.what))
                        .help(unknown_help(&key.name, self.asked.iter().copied())),
                );
            }
        }
    }
}

/// A string-valued enum: the accepted spellings and the values they map to.
pub fn decode_choice<T: Copy>(node: &Node, cx: &mut Cx, what: &str, choices: &[(&'static str, T)]) -> Option<T> {
    let names = choices.iter().map(|(n, _)| *n);
    match &node.value {
        Value::Str(s) => match choices.iter().find(|(n, _)| n == s) {
            Some((_, v)) => Some(*v),
            None => {
                cx.error(
                    Diagnostic::new(node.pos, format!("{what}: unknown value `{s}`")).help(unknown_help(s, names)),
                );
                None
            }
        },
        _ => {
            cx.mismatch(node, &crate::manifest::diag::one_of(names), what);
            None
        }
    }
}

/// Implements `Decode` for a fieldless enum from its YAML spellings.
#[macro_export]
macro_rules! string_enum {
    ($t:ty { $($name:literal => $v:expr),+ $(,)? }) => {
        impl $crate::manifest::decode::Decode for $t {
            fn decode(
                node: &$crate::manifest::yaml::Node,
                cx: &mut $crate::manifest::decode::Cx,
                what: &str,
            ) -> Option<Self> {
                $crate::manifest::decode::decode_choice(node, cx, what, &[$(($name, $v)),+])
            }
        }
    };
}
