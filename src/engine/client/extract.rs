//! One pass over a streamed event's JSON that picks out the values at a few JSON pointers.
//!
//! Owns pointer lookup on the hot path. Decoding every chunk into a `serde_json::Value` allocates a
//! map per object and a string per field just to read two or three of them; here a small scanner
//! walks the bytes once, checking the whole document against the JSON grammar (so a malformed
//! event is an error), matching keys against the pointers' tokens without decoding them, and
//! borrowing strings without escapes from the input. Nothing is allocated unless a string has
//! escapes or a pointer ends at an object or an array (decoded by serde_json). The values are read only after the event's arrival was stamped (DESIGN "Traps": never
//! timestamp after decoding).

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

/// How many pointers one pass can look up.
pub(crate) const SLOTS: usize = 7;

/// The value found at one pointer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Leaf<'de> {
    Str(Cow<'de, str>),
    Int(u64),
    Float(f64),
    Bool(bool),
    Null,
    /// An object or an array, decoded whole.
    Tree(Box<Value>),
}

impl Leaf<'_> {
    /// A non-negative whole number (usage counts), whatever its JSON spelling.
    pub(crate) fn as_count(&self) -> Option<u64> {
        match self {
            Leaf::Int(n) => Some(*n),
            Leaf::Float(f) if *f >= 0.0 && f.fract() == 0.0 && *f < u64::MAX as f64 => Some(*f as u64),
            _ => None,
        }
    }

    /// The value as display text: strings as they are, anything else as JSON.
    pub(crate) fn to_text(&self) -> String {
        match self {
            Leaf::Str(s) => s.to_string(),
            other => other.to_json().to_string(),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Leaf::Str(s) => Value::String(s.to_string()),
            Leaf::Int(n) => Value::from(*n),
            Leaf::Float(f) => Value::from(*f),
            Leaf::Bool(b) => Value::Bool(*b),
            Leaf::Null => Value::Null,
            Leaf::Tree(v) => (**v).clone(),
        }
    }

    fn from_json(v: &Value) -> Leaf<'static> {
        match v {
            Value::String(s) => Leaf::Str(Cow::Owned(s.clone())),
            Value::Number(n) => match n.as_u64() {
                Some(u) => Leaf::Int(u),
                None => Leaf::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::Bool(b) => Leaf::Bool(*b),
            Value::Null => Leaf::Null,
            tree => Leaf::Tree(Box::new(tree.clone())),
        }
    }
}

/// Why an event is not valid JSON, and where (a byte offset into the event).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub(crate) at: usize,
    pub(crate) what: &'static str,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for SyntaxError {}

/// Nesting deeper than this is refused (serde_json's own limit), so no event can overflow the stack.
const MAX_DEPTH: u32 = 128;

/// JSON pointers (RFC 6901) compiled once, before any event is read, into a tree of the paths
/// they follow: a value in a document is at one node of it (or at none, and is only checked), and
/// an object key or array index leads to the next node by one lookup, whatever the number of
/// pointers. Pointers that share a prefix (`/usage/prompt_tokens`, `/usage/completion_tokens`)
/// share its nodes.
pub(crate) struct Pointers {
    /// `nodes[0]` is the document itself.
    nodes: Vec<Node>,
}

#[derive(Default)]
struct Node {
    /// Slots whose pointer ends at this node's value (a bit per slot).
    ends: u8,
    /// Every slot whose pointer ends here or goes on below, with the rest of the pointer from here
    /// (`""` for those that end here): resolved in the decoded value when this node's value is an
    /// object or an array some pointer ends at.
    through: Vec<(usize, String)>,
    /// The next node by object key (the reference token decoded: `~1` is `/`, `~0` is `~`).
    keys: Vec<Key>,
    /// The next node by array index.
    indices: Vec<(usize, u32)>,
}

/// An object key a pointer follows, and the node it leads to.
struct Key {
    bytes: Box<[u8]>,
    /// The key's first eight bytes (zero-padded): most keys are told apart by these alone.
    head: u64,
    child: u32,
}

impl Key {
    #[inline]
    fn is(&self, raw: &[u8], head: u64) -> bool {
        self.head == head && self.bytes.len() == raw.len() && (raw.len() <= 8 || self.bytes[8..] == raw[8..])
    }
}

/// The first eight bytes of `raw`, zero-padded, as one word.
#[inline]
fn head_word(raw: &[u8]) -> u64 {
    raw.iter().take(8).enumerate().fold(0, |w, (i, &c)| w | u64::from(c) << (8 * i))
}

impl Pointers {
    /// `None` slots are not looked up; a pointer that does not start with `/` (nor is empty)
    /// never resolves.
    pub(crate) fn new(pointers: &[Option<&str>; SLOTS]) -> Self {
        let mut nodes = vec![Node::default()];
        for (slot, pointer) in pointers.iter().enumerate() {
            let Some(pointer) = *pointer else { continue };
            if !pointer.is_empty() && !pointer.starts_with('/') {
                continue;
            }
            let mut node = 0;
            let mut rest = pointer;
            loop {
                nodes[node].through.push((slot, rest.to_string()));
                let Some(after) = rest.strip_prefix('/') else {
                    nodes[node].ends |= 1 << slot;
                    break;
                };
                let (token, next) = after.find('/').map_or((after, ""), |at| after.split_at(at));
                let key = token.replace("~1", "/").replace("~0", "~");
                let head = head_word(key.as_bytes());
                let child = match nodes[node].keys.iter().find(|k| k.is(key.as_bytes(), head)) {
                    Some(k) => k.child,
                    None => {
                        let child = nodes.len() as u32;
                        nodes.push(Node::default());
                        nodes[node].keys.push(Key { bytes: key.into_bytes().into_boxed_slice(), head, child });
                        if let Some(index) = array_index(token) {
                            nodes[node].indices.push((index, child));
                        }
                        child
                    }
                };
                node = child as usize;
                rest = next;
            }
        }
        Pointers { nodes }
    }
}

/// A reference token as an array index, as serde_json reads one: digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() > 1) {
        return None;
    }
    token.parse().ok()
}

/// The values at `pointers` in the JSON document `json`. The whole document is checked against the
/// JSON grammar (RFC 8259) whether or not a pointer enters a part of it; a later duplicate key
/// wins, as with serde_json.
#[cfg(test)]
pub(crate) fn pick<'de>(json: &'de [u8], pointers: &Pointers) -> Result<[Option<Leaf<'de>>; SLOTS], SyntaxError> {
    let mut out: [Option<Leaf<'de>>; SLOTS] = Default::default();
    pick_into(json, pointers, &mut out)?;
    Ok(out)
}

/// [`pick`] into `out` (the hot path: no array of values moves), whose slots start empty.
pub(crate) fn pick_into<'de>(
    json: &'de [u8],
    pointers: &Pointers,
    out: &mut [Option<Leaf<'de>>; SLOTS],
) -> Result<(), SyntaxError> {
    let mut s = Scan { b: json, i: 0, depth: 0, p: pointers };
    s.ws();
    s.value(0, out)?;
    s.ws();
    if s.i < json.len() {
        return Err(s.err("trailing characters"));
    }
    Ok(())
}

/// A cursor over one JSON document.
struct Scan<'de, 'p> {
    b: &'de [u8],
    i: usize,
    depth: u32,
    p: &'p Pointers,
}

/// A string's contents: `b[start..end]`, with or without backslash escapes.
struct Span {
    start: usize,
    end: usize,
    escaped: bool,
}

/// Eight bytes at once: a byte `0x01` in every lane, and the high bit of every lane.
const LANES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Where in the eight bytes of `w` (little-endian) the first byte is that ends a run of plain
/// string characters: a quote, a backslash or a control character (a non-ASCII byte does not:
/// UTF-8 is checked per string); `None` if none does. Each test marks the high bit of a matching
/// lane; a lane above a match may be marked too (a borrow), never one below, so the lowest mark is
/// exact.
#[inline]
fn run_stop(w: u64) -> Option<usize> {
    let zero_in = |x: u64| x.wrapping_sub(LANES) & !x & HIGH;
    let quote = zero_in(w ^ (LANES * u64::from(b'"')));
    let backslash = zero_in(w ^ (LANES * u64::from(b'\\')));
    let control = w.wrapping_sub(LANES * 0x20) & !w & HIGH;
    let marks = quote | backslash | control;
    (marks != 0).then(|| marks.trailing_zeros() as usize / 8)
}

impl<'de> Scan<'de, '_> {
    #[cold]
    #[inline(never)]
    fn err(&self, what: &'static str) -> SyntaxError {
        SyntaxError { at: self.i, what }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), SyntaxError> {
        if self.peek() == Some(byte) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    /// One value, at `node` of the pointers' tree.
    fn value(&mut self, node: u32, out: &mut [Option<Leaf<'de>>; SLOTS]) -> Result<(), SyntaxError> {
        let n = &self.p.nodes[node as usize];
        if n.ends != 0 {
            return self.capture(node, out);
        }
        match self.peek() {
            Some(b'{') if !n.keys.is_empty() => self.object(node, out),
            Some(b'[') if !n.indices.is_empty() => self.array(node, out),
            _ => self.skip(),
        }
    }

    /// Steps into the object or array at the cursor (its `close` is `}` or `]`); whether it is
    /// empty (then it is already stepped over).
    fn open(&mut self, close: u8) -> Result<bool, SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.i += 1;
        self.ws();
        self.item_end(close, false)
    }

    /// Before the first item (`after_item` false) or after an item of a container closed by
    /// `close`: whether the container ends here (`close` is stepped over). After an item, `,` goes
    /// on to the next one and anything else is an error.
    fn item_end(&mut self, close: u8, after_item: bool) -> Result<bool, SyntaxError> {
        if after_item {
            self.ws();
        }
        match self.peek() {
            Some(b',') if after_item => {
                self.i += 1;
                self.ws();
                Ok(false)
            }
            Some(c) if c == close => {
                self.i += 1;
                self.depth -= 1;
                Ok(true)
            }
            _ if !after_item => Ok(false),
            _ => Err(self.err(if close == b'}' { "expected `,` or `}`" } else { "expected `,` or `]`" })),
        }
    }

    /// An object key and its `:`; the key's span.
    #[inline(always)]
    fn key(&mut self) -> Result<Span, SyntaxError> {
        if self.peek() != Some(b'"') {
            return Err(self.err("expected a key"));
        }
        let key = self.string()?;
        self.ws();
        self.expect(b':', "expected `:`")?;
        self.ws();
        Ok(key)
    }

    fn object(&mut self, node: u32, out: &mut [Option<Leaf<'de>>; SLOTS]) -> Result<(), SyntaxError> {
        if self.open(b'}')? {
            return Ok(());
        }
        let keys = &self.p.nodes[node as usize].keys;
        loop {
            let key = self.key()?;
            match self.child_by_key(keys, &key) {
                Some(child) => self.value(child, out)?,
                None => self.skip()?,
            }
            if self.item_end(b'}', true)? {
                return Ok(());
            }
        }
    }

    /// The node the key at `span` leads to, if a pointer follows it.
    #[inline]
    fn child_by_key(&self, keys: &[Key], span: &Span) -> Option<u32> {
        if !span.escaped {
            let raw = &self.b[span.start..span.end];
            let head = head_word(raw);
            return keys.iter().find(|k| k.is(raw, head)).map(|k| k.child);
        }
        let key = self.text(span).ok()?;
        let head = head_word(key.as_bytes());
        keys.iter().find(|k| k.is(key.as_bytes(), head)).map(|k| k.child)
    }

    fn array(&mut self, node: u32, out: &mut [Option<Leaf<'de>>; SLOTS]) -> Result<(), SyntaxError> {
        if self.open(b']')? {
            return Ok(());
        }
        let indices = &self.p.nodes[node as usize].indices;
        let mut index = 0usize;
        loop {
            match indices.iter().find(|(i, _)| *i == index) {
                Some(&(_, child)) => self.value(child, out)?,
                None => self.skip()?,
            }
            if self.item_end(b']', true)? {
                return Ok(());
            }
            index += 1;
        }
    }

    /// Checks one value against the grammar and steps over it.
    fn skip(&mut self) -> Result<(), SyntaxError> {
        match self.peek() {
            Some(b'{') => self.skip_container(b'}'),
            Some(b'[') => self.skip_container(b']'),
            Some(b'"') => self.string().map(drop),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number_syntax().map(drop),
            Some(_) => Err(self.err("expected a value")),
            None => Err(self.err("unexpected end")),
        }
    }

    /// Steps over an object (`close` is `}`) or an array (`]`) no pointer enters.
    fn skip_container(&mut self, close: u8) -> Result<(), SyntaxError> {
        if self.open(close)? {
            return Ok(());
        }
        loop {
            if close == b'}' {
                self.key()?;
            }
            self.skip()?;
            if self.item_end(close, true)? {
                return Ok(());
            }
        }
    }

    /// A value some pointer ends at: scalars are read in place; objects and arrays are decoded
    /// whole (rare: no built-in template points at one) and deeper pointers resolved inside.
    fn capture(&mut self, node: u32, out: &mut [Option<Leaf<'de>>; SLOTS]) -> Result<(), SyntaxError> {
        let start = self.i;
        let leaf = match self.peek() {
            Some(b'"') => {
                let span = self.string()?;
                self.string_leaf(&span)?
            }
            Some(b't') => self.literal(b"true").map(|()| Leaf::Bool(true))?,
            Some(b'f') => self.literal(b"false").map(|()| Leaf::Bool(false))?,
            Some(b'n') => self.literal(b"null").map(|()| Leaf::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => {
                self.skip()?;
                let tree: Value =
                    serde_json::from_slice(&self.b[start..self.i]).map_err(|_| self.err("invalid value"))?;
                Leaf::Tree(Box::new(tree))
            }
        };
        for (slot, rest) in &self.p.nodes[node as usize].through {
            match (rest.as_str(), &leaf) {
                ("", _) => out[*slot] = Some(leaf.clone()),
                (rest, Leaf::Tree(tree)) => out[*slot] = tree.pointer(rest).map(Leaf::from_json),
                _ => {}
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), SyntaxError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    /// A number by the JSON grammar, read as an unsigned integer when it is one that fits, else
    /// as a float (what serde_json gives for the same text).
    fn number(&mut self) -> Result<Leaf<'de>, SyntaxError> {
        let start = self.i;
        let integer = self.number_syntax()?;
        // Only ASCII digits and signs were consumed.
        let text = std::str::from_utf8(&self.b[start..self.i]).unwrap_or_default();
        if integer && let Ok(n) = text.parse::<u64>() {
            return Ok(Leaf::Int(n));
        }
        Ok(Leaf::Float(text.parse::<f64>().unwrap_or(f64::NAN)))
    }

    /// Steps over a number by the JSON grammar; whether it is a non-negative integer.
    fn number_syntax(&mut self) -> Result<bool, SyntaxError> {
        let digits = |s: &mut Self| {
            let from = s.i;
            while let Some(b'0'..=b'9') = s.peek() {
                s.i += 1;
            }
            s.i - from
        };
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let int_start = self.i;
        match digits(self) {
            0 => return Err(self.err("invalid number")),
            n if n > 1 && self.b[int_start] == b'0' => return Err(SyntaxError { at: int_start, what: "leading zero" }),
            _ => {}
        }
        let mut integer = !negative;
        if self.peek() == Some(b'.') {
            self.i += 1;
            integer = false;
            if digits(self) == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err(self.err("invalid number"));
            }
        }
        Ok(integer)
    }

    /// A string at the cursor (`"` included): its span, checked for escapes, control characters
    /// and UTF-8.
    #[inline(always)]
    fn string(&mut self) -> Result<Span, SyntaxError> {
        let b = self.b;
        let start = self.i + 1; // after `"`
        let mut i = start;
        let mut escaped = false;
        // The high bits of every byte passed over: any set means UTF-8 to check.
        let mut high = 0u64;
        loop {
            // Runs of plain characters go by eight bytes at a time, up to the byte that ends them.
            while let Some(word) = b.get(i..i + 8) {
                let w = u64::from_le_bytes(word.try_into().unwrap_or_default());
                high |= w; // bytes past the stop may be marked too: that only costs a UTF-8 check
                match run_stop(w) {
                    Some(at) => {
                        i += at;
                        break;
                    }
                    None => i += 8,
                }
            }
            let Some(&c) = b.get(i) else {
                self.i = b.len();
                return Err(self.err("unterminated string"));
            };
            match c {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            let hex = b.get(i + 2..i + 6);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                self.i = i + 1;
                                return Err(self.err("invalid \\u escape"));
                            }
                            i += 6;
                        }
                        _ => {
                            self.i = i + 1;
                            return Err(self.err("invalid escape"));
                        }
                    }
                }
                0..0x20 => {
                    self.i = i;
                    return Err(self.err("control character in a string"));
                }
                _ => {
                    high |= u64::from(c) << 56;
                    i += 1;
                }
            }
        }
        self.i = i + 1; // `"`
        if high & HIGH != 0 && std::str::from_utf8(&b[start..i]).is_err() {
            return Err(SyntaxError { at: start, what: "invalid UTF-8 in a string" });
        }
        Ok(Span { start, end: i, escaped })
    }

    /// The text of a string span: borrowed when it has no escapes.
    fn text(&self, span: &Span) -> Result<Cow<'de, str>, SyntaxError> {
        let b: &'de [u8] = self.b;
        if !span.escaped {
            // Checked by `string`.
            return Ok(Cow::Borrowed(std::str::from_utf8(&b[span.start..span.end]).unwrap_or_default()));
        }
        // With the quotes, the span is a JSON string literal; lone surrogates are refused there.
        serde_json::from_slice::<String>(&b[span.start - 1..span.end + 1])
            .map(Cow::Owned)
            .map_err(|_| SyntaxError { at: span.start, what: "invalid \\u escape" })
    }

    fn string_leaf(&self, span: &Span) -> Result<Leaf<'de>, SyntaxError> {
        self.text(span).map(Leaf::Str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pick_all(doc: &Value, pointers: &[&str]) -> Vec<Option<Value>> {
        let mut slots = [None; SLOTS];
        for (slot, p) in slots.iter_mut().zip(pointers) {
            *slot = Some(*p);
        }
        let text = doc.to_string();
        let out = pick(text.as_bytes(), &Pointers::new(&slots)).unwrap();
        out[..pointers.len()].iter().map(|l| l.as_ref().map(Leaf::to_json)).collect()
    }

    #[test]
    fn agrees_with_serde_json_pointer() {
        let doc = json!({"choices": [{"text": "a\"b", "delta": {"content": "x"}}, {"text": "second"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 16.0}, "a/b": {"~k": [1, [2, 3]]},
            "done": true, "n": null});
        let pointers = [
            "/choices/0/text",
            "/choices/1/text",
            "/usage",
            "/usage/completion_tokens",
            "/a~1b/~0k/1/0",
            "/choices/2/text",
        ];
        let expected: Vec<Option<Value>> = pointers.iter().map(|p| doc.pointer(p).cloned()).collect();
        assert_eq!(pick_all(&doc, &pointers), expected);
        let more = ["", "/n", "/done", "/choices/0/text/deeper", "/nope", "/choices/x", "no-slash"];
        let expected: Vec<Option<Value>> = more.iter().map(|p| doc.pointer(p).cloned()).collect();
        assert_eq!(pick_all(&doc, &more), expected);
    }

    #[test]
    fn pointers_deeper_than_the_token_limit_resolve_too() {
        let mut doc = json!({"leaf": 5});
        for i in 0..20 {
            doc = json!({ format!("k{i}"): [doc] });
        }
        let path: String = (0..20).rev().map(|i| format!("/k{i}/0")).collect();
        let pointers = [format!("{path}/leaf"), path.clone(), format!("{path}/nope")];
        let refs: Vec<&str> = pointers.iter().map(String::as_str).collect();
        let expected: Vec<Option<Value>> = refs.iter().map(|p| doc.pointer(p).cloned()).collect();
        assert_eq!(expected[0], Some(json!(5)));
        assert_eq!(pick_all(&doc, &refs), expected);
    }

    #[test]
    fn strings_without_escapes_are_borrowed_and_syntax_is_checked() {
        let text = br#"{"skip": {"deep": [1, 2, {"x": "y"}]}, "t": "plain"}"#;
        let out = pick(text, &Pointers::new(&[Some("/t"), None, None, None, None, None, None])).unwrap();
        assert!(matches!(&out[0], Some(Leaf::Str(Cow::Borrowed("plain")))));
        assert!(
            pick(br#"{"skip": [1, 2,], "t": "x"}"#, &Pointers::new(&[Some("/t"), None, None, None, None, None, None]))
                .is_err()
        );
        assert!(
            pick(br#"{"t": "x"} trailing"#, &Pointers::new(&[Some("/t"), None, None, None, None, None, None])).is_err()
        );
        assert_eq!(Leaf::Float(16.0).as_count(), Some(16));
        assert_eq!(Leaf::Float(1.5).as_count(), None);
    }

    #[test]
    fn leaves_render_as_text() {
        assert_eq!(Leaf::Tree(Box::new(json!({"m": 1}))).to_text(), r#"{"m":1}"#);
        assert_eq!(Leaf::Str("boom".into()).to_text(), "boom");
    }

    #[test]
    fn the_grammar_is_json_and_nothing_else() {
        let deep_ok = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        let deep_bad = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let docs: Vec<&[u8]> = vec![
            br#"{"a": [1, -2.5e+3, 0, 0.0, 1E9, true, false, null, "x\"\\\/\b\f\n\r\t\u00e9"], "b": {}}"#,
            b" \t\r\n[ ] ",
            br#""caf\u00e9 \u00e9t\u00e9""#,
            "\"h\u{e9}llo \u{1f600}\"".as_bytes(),
            deep_ok.as_bytes(),
            b"",
            b"   ",
            b"01",
            b"-",
            b"1.",
            b".5",
            b"1e",
            b"1e+",
            b"+1",
            b"[1,]",
            br#"{"a":1,}"#,
            br#"{"a" 1}"#,
            br#"{a:1}"#,
            br#"{"a":1}}"#,
            b"tru",
            b"nul",
            b"\"abc",
            b"\"a\x01b\"",
            b"\"\xff\"",
            br#""\x""#,
            br#""\u12G4""#,
            b"[1 2]",
            b"{\"a\":}",
            deep_bad.as_bytes(),
        ];
        let pointers = [Some("/a/0"), Some("/b"), Some("/x/y"), None, None, None, None];
        for doc in docs {
            let want = serde_json::from_slice::<Value>(doc).is_ok();
            for p in [pointers, [None; SLOTS]] {
                assert_eq!(pick(doc, &Pointers::new(&p)).is_ok(), want, "{}", String::from_utf8_lossy(doc));
            }
        }
        let e = pick(b"{\"a\": [1, 2,]}", &Pointers::new(&pointers)).unwrap_err();
        assert_eq!((e.at, e.to_string().as_str()), (12, "expected a value at byte 12"));
    }

    /// Strings are scanned eight bytes at a time: a quote, an escape, a control character or a
    /// non-ASCII byte at every offset of a word, and every length around a word's, read as
    /// serde_json reads them.
    #[test]
    fn strings_read_alike_at_every_offset() {
        let specials: [&[u8]; 8] = [b"\"", b"\\\"", b"\\n", b"\\u00e9", b"\x01", b"\x1f", "é".as_bytes(), b"\xff"];
        let pointers = Pointers::new(&[Some("/s"), None, None, None, None, None, None]);
        for len in 0..20 {
            for at in 0..=len {
                for special in specials {
                    let mut text = b"a".repeat(len);
                    text.splice(at..at, special.iter().copied());
                    let mut doc = br#"{"s": ""#.to_vec();
                    doc.extend_from_slice(&text);
                    doc.extend_from_slice(br#"", "t": 1}"#);
                    let want = serde_json::from_slice::<Value>(&doc).ok();
                    let got = pick(&doc, &pointers);
                    let shown = String::from_utf8_lossy(&doc);
                    assert_eq!(got.is_ok(), want.is_some(), "{shown}");
                    if let (Ok(got), Some(want)) = (got, want) {
                        assert_eq!(got[0].as_ref().map(Leaf::to_json).as_ref(), want.pointer("/s"), "{shown}");
                    }
                }
            }
        }
    }

    #[test]
    fn numbers_and_escaped_keys_read_as_serde_json_reads_them() {
        let doc = json!({"n": [0, 7, 18446744073709551615u64, -3, 2.5, 1e3], "k\"ey": "v", "é": "accent"});
        let got = pick_all(&doc, &["/n/0", "/n/2", "/n/4", "/n/5", "/k\"ey", "/é"]);
        let want: Vec<Option<Value>> =
            ["/n/0", "/n/2", "/n/4", "/n/5", "/k\"ey", "/é"].iter().map(|p| doc.pointer(p).cloned()).collect();
        assert_eq!(got, want);
        // Negative numbers are no counts: they read as floats.
        let text = doc.to_string();
        let out = pick(text.as_bytes(), &Pointers::new(&[Some("/n/3"), None, None, None, None, None, None])).unwrap();
        assert_eq!(out[0], Some(Leaf::Float(-3.0)));
        // A later duplicate key wins.
        let out = pick(
            br#"{"t": "first", "t": "second"}"#,
            &Pointers::new(&[Some("/t"), None, None, None, None, None, None]),
        )
        .unwrap();
        assert_eq!(out[0], Some(Leaf::Str("second".into())));
    }
}
