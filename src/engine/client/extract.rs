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
    Tree(Value),
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
            Leaf::Tree(v) => v.clone(),
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
            tree => Leaf::Tree(tree.clone()),
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

/// Reference tokens of a pointer followed token by token; deeper pointers are resolved in the
/// decoded subtree at this depth.
const MAX_TOKENS: usize = 12;

/// JSON pointers (RFC 6901) split into their reference tokens once, before any event is read.
pub(crate) struct Pointers<'p> {
    slots: [Option<Split<'p>>; SLOTS],
}

#[derive(Clone, Copy)]
struct Split<'p> {
    raw: &'p str,
    /// Tokens followed one by one (at most `MAX_TOKENS`).
    len: usize,
    tokens: [&'p str; MAX_TOKENS],
    /// Where token `d`'s `/` is in `raw` (`raw.len()` past the last).
    starts: [usize; MAX_TOKENS + 1],
    /// Token `d` as an array index.
    index: [Option<usize>; MAX_TOKENS],
    /// Token `d` has `~` escapes (`~0`, `~1`), so a key is compared with it decoded.
    tilde: [bool; MAX_TOKENS],
}

impl<'p> Split<'p> {
    fn new(raw: &'p str) -> Option<Self> {
        let mut split = Split {
            raw,
            len: 0,
            tokens: [""; MAX_TOKENS],
            starts: [raw.len(); MAX_TOKENS + 1],
            index: [None; MAX_TOKENS],
            tilde: [false; MAX_TOKENS],
        };
        if raw.is_empty() {
            return Some(split);
        }
        let mut at = 0;
        while split.len < MAX_TOKENS && at < raw.len() {
            let rest = raw[at..].strip_prefix('/')?;
            let token = rest.split('/').next().unwrap_or_default();
            split.starts[split.len] = at;
            split.tokens[split.len] = token;
            split.index[split.len] = token.parse().ok();
            split.tilde[split.len] = token.contains('~');
            split.len += 1;
            at += 1 + token.len();
        }
        split.starts[split.len] = at;
        Some(split)
    }

    /// The pointer from token `d` on (`""` when it ends at `d`).
    fn rest(&self, d: usize) -> &'p str {
        &self.raw[self.starts[d]..]
    }
}

impl<'p> Pointers<'p> {
    /// `None` slots are not looked up; a pointer that does not start with `/` (nor is empty)
    /// never resolves.
    pub(crate) fn new(pointers: &[Option<&'p str>; SLOTS]) -> Self {
        Pointers { slots: pointers.map(|p| p.and_then(Split::new)) }
    }

    /// Where each slot starts: at the document, depth 0.
    fn start(&self) -> Live {
        self.slots.map(|s| if s.is_some() { 0 } else { ELSEWHERE })
    }
}

/// The values at `pointers` in the JSON document `json`. The whole document is checked against the
/// JSON grammar (RFC 8259) whether or not a pointer enters a part of it; a later duplicate key
/// wins, as with serde_json.
pub(crate) fn pick<'de>(json: &'de [u8], pointers: &Pointers<'_>) -> Result<[Option<Leaf<'de>>; SLOTS], SyntaxError> {
    let mut out: [Option<Leaf<'de>>; SLOTS] = Default::default();
    let mut s = Scan { b: json, i: 0, depth: 0, p: pointers };
    s.ws();
    s.value(pointers.start(), &mut out)?;
    s.ws();
    if s.i < json.len() {
        return Err(s.err("trailing characters"));
    }
    Ok(out)
}

/// A cursor over one JSON document.
struct Scan<'de, 'p> {
    b: &'de [u8],
    i: usize,
    depth: u32,
    p: &'p Pointers<'p>,
}

/// Per slot, how many of its pointer's tokens lead to the value at hand (`ELSEWHERE`: none do).
type Live = [u8; SLOTS];
const ELSEWHERE: u8 = u8::MAX;

/// A string's contents: `b[start..end]`, with or without backslash escapes.
struct Span {
    start: usize,
    end: usize,
    escaped: bool,
}

impl<'de> Scan<'de, '_> {
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

    /// Whether some slot's pointer ends at (or, past `MAX_TOKENS`, goes on inside) this value.
    fn ends_here(&self, live: &Live) -> bool {
        live.iter().zip(&self.p.slots).any(|(d, s)| matches!(s, Some(s) if usize::from(*d) == s.len))
    }

    /// One value; `live` says which pointers lead here.
    fn value(&mut self, live: Live, out: &mut [Option<Leaf<'de>>; SLOTS]) -> Result<(), SyntaxError> {
        if self.ends_here(&live) {
            return self.capture(live, out);
        }
        match self.peek() {
            Some(b'{') if live.iter().any(|d| *d != ELSEWHERE) => self.object(live, out),
            Some(b'[') if live.iter().any(|d| *d != ELSEWHERE) => self.array(live, out),
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

    fn object(&mut self, live: Live, out: &mut [Option<Leaf<'de>>; SLOTS]) -> Result<(), SyntaxError> {
        if self.open(b'}')? {
            return Ok(());
        }
        loop {
            let key = self.key()?;
            let mut child = [ELSEWHERE; SLOTS];
            let mut any = false;
            for (slot, &d) in live.iter().enumerate() {
                if d != ELSEWHERE
                    && let Some(split) = &self.p.slots[slot]
                    && self.key_is(&key, split.tokens[usize::from(d)], split.tilde[usize::from(d)])
                {
                    child[slot] = d + 1;
                    any = true;
                }
            }
            if any {
                self.value(child, out)?
            } else {
                self.skip()?
            }
            if self.item_end(b'}', true)? {
                return Ok(());
            }
        }
    }

    fn array(&mut self, live: Live, out: &mut [Option<Leaf<'de>>; SLOTS]) -> Result<(), SyntaxError> {
        let mut wanted = [None; SLOTS];
        for (slot, &d) in live.iter().enumerate() {
            if d != ELSEWHERE
                && let Some(split) = &self.p.slots[slot]
                && let Some(index) = split.index[usize::from(d)]
            {
                wanted[slot] = Some((index, d + 1));
            }
        }
        if self.open(b']')? {
            return Ok(());
        }
        let mut index = 0usize;
        loop {
            let mut child = [ELSEWHERE; SLOTS];
            let mut any = false;
            for (slot, w) in wanted.iter().enumerate() {
                if let Some((i, next)) = w
                    && *i == index
                {
                    child[slot] = *next;
                    any = true;
                }
            }
            if any {
                self.value(child, out)?
            } else {
                self.skip()?
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
    fn capture(&mut self, live: Live, out: &mut [Option<Leaf<'de>>; SLOTS]) -> Result<(), SyntaxError> {
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
                Leaf::Tree(tree)
            }
        };
        for (slot, &d) in live.iter().enumerate() {
            let (true, Some(split)) = (d != ELSEWHERE, &self.p.slots[slot]) else { continue };
            match (split.rest(usize::from(d)), &leaf) {
                ("", _) => out[slot] = Some(leaf.clone()),
                (rest, Leaf::Tree(tree)) => out[slot] = tree.pointer(rest).map(Leaf::from_json),
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
    fn string(&mut self) -> Result<Span, SyntaxError> {
        self.i += 1; // `"`
        let start = self.i;
        let mut escaped = false;
        loop {
            // Runs of plain characters are skipped at memchr's speed; the control characters JSON
            // forbids are looked for over the whole run at once.
            let Some(run) = memchr::memchr2(b'"', b'\\', &self.b[self.i..]) else {
                self.i = self.b.len();
                return Err(self.err("unterminated string"));
            };
            let plain = &self.b[self.i..self.i + run];
            if plain.iter().fold(false, |bad, &c| bad | (c < 0x20)) {
                self.i += plain.iter().position(|&c| c < 0x20).unwrap_or(0);
                return Err(self.err("control character in a string"));
            }
            self.i += run;
            match self.b[self.i] {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 1..self.i + 5);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(self.err("invalid \\u escape"));
                            }
                            self.i += 5;
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                _ => unreachable!("memchr2 stops at a quote or a backslash"),
            }
        }
        let end = self.i;
        self.i += 1; // `"`
        if !self.b[start..end].is_ascii() && std::str::from_utf8(&self.b[start..end]).is_err() {
            return Err(SyntaxError { at: start, what: "invalid UTF-8 in a string" });
        }
        Ok(Span { start, end, escaped })
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

    /// Whether the key at `span` is the one reference token `token` names (`tilde`: it has `~`
    /// escapes).
    fn key_is(&self, span: &Span, token: &str, tilde: bool) -> bool {
        if !span.escaped && !tilde {
            return &self.b[span.start..span.end] == token.as_bytes();
        }
        self.text(span).is_ok_and(|key| token_is(token, &key))
    }
}

/// Whether reference token `token` names the object key `key` (`~1` is `/`, `~0` is `~`).
fn token_is(token: &str, key: &str) -> bool {
    if token.contains('~') { token.replace("~1", "/").replace("~0", "~") == key } else { token == key }
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
        assert_eq!(Leaf::Tree(json!({"m": 1})).to_text(), r#"{"m":1}"#);
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
