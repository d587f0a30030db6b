//! A YAML document as a tree of spanned nodes.
//!
//! Owns turning bytes into `Node`s: every node keeps the position where it starts, so that every
//! later error — a wrong type, an unknown key, a bad reference — can point at the user's text.
//! The event parser is `granit-parser` (the parser under `serde-saphyr`, maintained, panic-free,
//! with positions on every event); building our own tree instead of deserializing straight into
//! structs lets the decoder report *all* errors of a file at once instead of the first one.
//!
//! Limits (DESIGN decision 10) are enforced here, before anything else sees the input: size,
//! nesting depth and alias expansion, so a hostile file cannot exhaust memory or time.

use std::collections::HashMap;

use granit_parser::{Event, Parser, ScalarStyle};

use super::diag::{Diagnostic, Pos};

/// Largest manifest accepted, in bytes.
pub const MAX_BYTES: usize = 8 * 1024 * 1024;
/// Deepest nesting of sequences and mappings accepted.
pub const MAX_DEPTH: usize = 64;
/// Most nodes that aliases may expand to in one document.
pub const MAX_ALIAS_NODES: usize = 10_000;

/// One YAML node with the position of its first character.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// The value of a node, resolved with the YAML 1.2 core schema (no `yes`/`no` booleans).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in document order; duplicates are rejected while parsing.
    Map(Vec<(Key, Node)>),
}

impl serde::Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

/// A mapping key: always a string in kitt manifests, with its own position.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub pos: Pos,
    pub name: String,
}

impl Node {
    /// A short name of the node's type for error messages ("a string", "a mapping").
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The node as JSON, dropping positions.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
            }
            Value::Str(s) => s.clone().into(),
            Value::Seq(items) => items.iter().map(Node::to_json).collect(),
            Value::Map(entries) => {
                entries.iter().map(|(k, v)| (k.name.clone(), v.to_json())).collect::<serde_json::Map<_, _>>().into()
            }
        }
    }

    /// A node built from JSON, every position set to `pos` (for values that come from code).
    pub fn from_json(value: &serde_json::Value, pos: Pos) -> Node {
        let value = match value {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(items) => Value::Seq(items.iter().map(|v| Node::from_json(v, pos)).collect()),
            serde_json::Value::Object(map) => {
                Value::Map(map.iter().map(|(k, v)| (Key { pos, name: k.clone() }, Node::from_json(v, pos))).collect())
            }
        };
        Node { pos, value }
    }
}

/// Parse one YAML document. An empty document is `Null` at 1:1.
pub fn parse(source: &str) -> Result<Node, Diagnostic> {
    if source.len() > MAX_BYTES {
        return Err(Diagnostic::new(
            Pos::START,
            format!("manifest is {} bytes, over the limit of {} bytes (8 MiB)", source.len(), MAX_BYTES),
        )
        .help("split the suite, or move large data (prompts, datasets) into files it references"));
    }
    if let Some((line, col)) = find_tab_indent(source) {
        return Err(Diagnostic::new(Pos { line, col }, "tab character used for indentation".to_string())
            .help("YAML indents with spaces only; replace the tab with spaces"));
    }
    let mut builder = Builder::default();
    // The parser's own nesting limits match ours, so deep input stops early in the scanner
    // instead of after it has tokenized everything (flow collections are scanned ahead).
    let mut options = granit_parser::Options::default();
    options.flow_nesting_limit = MAX_DEPTH;
    options.block_nesting_limit = MAX_DEPTH;
    let mut parser = Parser::new_from_str_with_options(source, options);
    let mut root = None;
    let mut documents = 0;
    while let Some(item) = parser.next_event() {
        let (event, span) = item.map_err(|e| {
            let m = e.marker();
            let pos = Pos { line: m.line(), col: m.col() + 1 };
            if matches!(e.kind(), granit_parser::ErrorKind::RecursionLimitExceeded) {
                return Diagnostic::new(pos, format!("nesting deeper than {MAX_DEPTH} levels"))
                    .help("a kitt manifest never needs this depth; flatten the structure");
            }
            Diagnostic::new(pos, format!("YAML syntax error: {}", e.kind()))
        })?;
        let pos = Pos { line: span.start.line(), col: span.start.col() + 1 };
        match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(Diagnostic::new(pos, "more than one YAML document in a manifest".to_string())
                        .help("put each manifest in its own file (remove the second `---`)"));
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let node = Node { pos, value: resolve_scalar(&text, style) };
                builder.push(node, anchor)?;
            }
            Event::SequenceStart(_, anchor, _) => builder.open(pos, anchor, Value::Seq(Vec::new()))?,
            Event::MappingStart(_, anchor, _) => builder.open(pos, anchor, Value::Map(Vec::new()))?,
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(done) = builder.close()? {
                    root = Some(done);
                }
            }
            Event::Alias(id) => builder.alias(id, pos)?,
            _ => {}
        }
        if builder.stack.is_empty()
            && let Some(node) = builder.finished.take()
        {
            root = Some(node);
        }
    }
    Ok(root.unwrap_or(Node { pos: Pos::START, value: Value::Null }))
}

/// The first line whose indentation contains a tab, outside block scalars we cannot tell apart
/// cheaply; YAML forbids tabs in indentation, and the parser's own message for them is obscure.
fn find_tab_indent(source: &str) -> Option<(usize, usize)> {
    for (i, line) in source.lines().enumerate() {
        let indent: &str = &line[..line.len() - line.trim_start_matches([' ', '\t']).len()];
        if let Some(col) = indent.find('\t')
            && !line.trim().is_empty()
        {
            return Some((i + 1, col + 1));
        }
    }
    None
}

fn resolve_scalar(text: &str, style: ScalarStyle) -> Value {
    if style != ScalarStyle::Plain {
        return Value::Str(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" => return Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = text.parse::<i64>()
    {
        return Value::Int(i);
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Int(i);
    }
    let looks_numeric = digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && digits.bytes().all(|b| b.is_ascii_digit() || b".eE+-".contains(&b));
    if looks_numeric && let Ok(f) = text.parse::<f64>() {
        return Value::Float(f);
    }
    Value::Str(text.to_string())
}

#[derive(Default)]
struct Builder {
    /// Open collections, each with its pending mapping key.
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    alias_nodes: usize,
    finished: Option<Node>,
}

struct Frame {
    node: Node,
    anchor: usize,
    pending_key: Option<Key>,
    /// Keys copied in by a `<<` merge; an explicit key replaces them instead of clashing.
    merged: Vec<String>,
}

impl Builder {
    fn open(&mut self, pos: Pos, anchor: usize, value: Value) -> Result<(), Diagnostic> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(Diagnostic::new(pos, format!("nesting deeper than {MAX_DEPTH} levels"))
                .help("a kitt manifest never needs this depth; flatten the structure"));
        }
        self.stack.push(Frame { node: Node { pos, value }, anchor, pending_key: None, merged: Vec::new() });
        Ok(())
    }

    fn close(&mut self) -> Result<Option<Node>, Diagnostic> {
        let Some(frame) = self.stack.pop() else {
            return Ok(None);
        };
        if frame.anchor != 0 {
            self.anchors.insert(frame.anchor, frame.node.clone());
        }
        self.attach(frame.node)?;
        Ok(None)
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), Diagnostic> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.attach(node)
    }

    fn alias(&mut self, id: usize, pos: Pos) -> Result<(), Diagnostic> {
        let Some(target) = self.anchors.get(&id) else {
            return Err(Diagnostic::new(pos, "alias refers to an unknown anchor".to_string()));
        };
        self.alias_nodes += count_nodes(target, MAX_ALIAS_NODES + 1);
        if self.alias_nodes > MAX_ALIAS_NODES {
            return Err(Diagnostic::new(pos, format!("aliases expand to more than {MAX_ALIAS_NODES} nodes"))
                .help("this looks like an alias bomb; write the values out or use fewer aliases"));
        }
        let mut node = target.clone();
        node.pos = pos;
        self.attach(node)
    }

    fn attach(&mut self, node: Node) -> Result<(), Diagnostic> {
        let Some(parent) = self.stack.last_mut() else {
            self.finished = Some(node);
            return Ok(());
        };
        match &mut parent.node.value {
            Value::Seq(items) => items.push(node),
            Value::Map(entries) => match parent.pending_key.take() {
                None => {
                    let name = match node.value {
                        Value::Str(s) => s,
                        Value::Int(i) => i.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Null => "null".to_string(),
                        Value::Seq(_) | Value::Map(_) => {
                            return Err(Diagnostic::new(node.pos, "mapping keys must be plain strings".to_string()));
                        }
                    };
                    if let Some(i) = parent.merged.iter().position(|m| *m == name) {
                        parent.merged.remove(i);
                        entries.retain(|(k, _)| k.name != name);
                    }
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == name) {
                        return Err(Diagnostic::new(
                            node.pos,
                            format!("duplicate key `{name}` (first defined at line {})", first.pos.line),
                        )
                        .help("remove one of the two; YAML does not merge repeated keys"));
                    }
                    parent.pending_key = Some(Key { pos: node.pos, name });
                }
                Some(key) => {
                    if key.name == "<<" {
                        let before = entries.len();
                        merge_into(entries, node)?;
                        parent.merged.extend(entries[before..].iter().map(|(k, _)| k.name.clone()));
                    } else {
                        entries.push((key, node));
                    }
                }
            },
            _ => {}
        }
        Ok(())
    }
}

/// `<<: *base` merge keys: copy the entries the mapping does not set itself.
fn merge_into(entries: &mut Vec<(Key, Node)>, node: Node) -> Result<(), Diagnostic> {
    let sources = match node.value {
        Value::Map(m) => vec![m],
        Value::Seq(items) => items
            .into_iter()
            .filter_map(|n| match n.value {
                Value::Map(m) => Some(m),
                _ => None,
            })
            .collect(),
        _ => {
            return Err(Diagnostic::new(node.pos, "merge key `<<` needs a mapping".to_string()));
        }
    };
    for source in sources {
        for (k, v) in source {
            if !entries.iter().any(|(e, _)| e.name == k.name) {
                entries.push((k, v));
            }
        }
    }
    Ok(())
}

fn count_nodes(node: &Node, cap: usize) -> usize {
    let mut count = 1;
    match &node.value {
        Value::Seq(items) => {
            for n in items {
                count += count_nodes(n, cap);
                if count > cap {
                    break;
                }
            }
        }
        Value::Map(entries) => {
            for (_, n) in entries {
                count += count_nodes(n, cap);
                if count > cap {
                    break;
                }
            }
        }
        _ => {}
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let n = parse("a: 1\nb:\n  c: [x, 2.5]\n").unwrap();
        let Value::Map(m) = &n.value else { panic!() };
        assert_eq!(m[1].0.pos, Pos { line: 2, col: 1 });
        let Value::Map(inner) = &m[1].1.value else { panic!() };
        assert_eq!(inner[0].0.pos, Pos { line: 3, col: 3 });
        assert_eq!(inner[0].1.to_json(), serde_json::json!(["x", 2.5]));
    }

    #[test]
    fn core_schema_not_yaml_1_1() {
        let n = parse("a: yes\nb: 'true'\nc: true\nd: 012\n").unwrap();
        assert_eq!(n.to_json(), serde_json::json!({"a": "yes", "b": "true", "c": true, "d": 12}));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 3, col: 1 });
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
    }

    #[test]
    fn merge_keys_and_aliases() {
        let n = parse("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n").unwrap();
        assert_eq!(n.to_json()["use"], serde_json::json!({"y": 3, "x": 1}));
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut s = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for c in "bcdefghi".chars() {
            s.push_str(&format!(
                "{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = c;
        }
        let e = parse(&s).unwrap_err();
        assert!(e.message.contains("aliases expand"), "{}", e.message);
    }
}
