//! One pass over a streamed event's JSON that picks out the values at a few JSON pointers.
//!
//! Owns pointer lookup on the hot path. Decoding every chunk into a `serde_json::Value` allocates a
//! map per object and a string per field just to read two or three of them; here the document is
//! walked once with serde, subtrees no pointer enters are skipped with `IgnoredAny` (still checked
//! for syntax, so a malformed event is an error), and strings without escapes are borrowed from the
//! input. The values are read only after the event's arrival was stamped (DESIGN "Traps": never
//! timestamp after decoding).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
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

/// The values at `pointers` (RFC 6901; `None` slots are not looked up) in the JSON document `json`.
pub(crate) fn pick<'de>(
    json: &'de [u8],
    pointers: &[Option<&str>; SLOTS],
) -> Result<[Option<Leaf<'de>>; SLOTS], serde_json::Error> {
    let mut out: [Option<Leaf<'de>>; SLOTS] = Default::default();
    let mut de = serde_json::Deserializer::from_slice(json);
    Walk { live: *pointers, out: &mut out }.deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}

/// Splits `/a/b` into the first reference token and the rest (`a`, `/b`).
fn first_token(pointer: &str) -> Option<(&str, &str)> {
    let p = pointer.strip_prefix('/')?;
    Some(match p.find('/') {
        Some(i) => (&p[..i], &p[i..]),
        None => (p, ""),
    })
}

/// The object key reference token `token` names (`~1` is `/`, `~0` is `~`).
fn key_of(token: &str) -> Cow<'_, str> {
    if token.contains('~') { Cow::Owned(token.replace("~1", "/").replace("~0", "~")) } else { Cow::Borrowed(token) }
}

/// A subtree and, per slot, the part of its pointer still to follow (`Some("")`: this very value).
struct Walk<'a, 'de, 'p> {
    live: [Option<&'p str>; SLOTS],
    out: &'a mut [Option<Leaf<'de>>; SLOTS],
}

impl<'de> DeserializeSeed<'de> for Walk<'_, 'de, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if !self.live.contains(&Some("")) {
            return d.deserialize_any(self);
        }
        // Some pointer ends here: take the value whole and resolve any deeper ones inside it.
        let leaf = Leaf::deserialize(d)?;
        for (slot, rest) in self.live.iter().enumerate() {
            match (rest, &leaf) {
                (Some(""), _) => self.out[slot] = Some(leaf.clone()),
                (Some(rest), Leaf::Tree(tree)) => {
                    self.out[slot] = tree.pointer(rest).map(Leaf::from_json);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for Walk<'_, 'de, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Each pointer's next key, split off once per object rather than once per key: this loop
        // runs for every key of every event.
        let mut wanted: [Option<(Cow<'_, str>, &str)>; SLOTS] = Default::default();
        for (w, rest) in wanted.iter_mut().zip(self.live) {
            *w = rest.and_then(first_token).map(|(token, rest)| (key_of(token), rest));
        }
        while let Some(Key(key)) = map.next_key()? {
            let mut child = [None; SLOTS];
            let mut found = false;
            for (slot, w) in wanted.iter().enumerate() {
                if let Some((name, rest)) = w
                    && *name == key
                {
                    child[slot] = Some(*rest);
                    found = true;
                }
            }
            if !found {
                map.next_value::<IgnoredAny>()?;
            } else {
                map.next_value_seed(Walk { live: child, out: &mut *self.out })?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut wanted = [None; SLOTS];
        for (slot, rest) in self.live.iter().enumerate() {
            if let Some((token, rest)) = rest.and_then(first_token)
                && let Ok(index) = token.parse::<usize>()
            {
                wanted[slot] = Some((index, rest));
            }
        }
        let mut index = 0usize;
        loop {
            let mut child = [None; SLOTS];
            for (slot, w) in wanted.iter().enumerate() {
                if let Some((i, rest)) = w
                    && *i == index
                {
                    child[slot] = Some(*rest);
                }
            }
            let more = if child.iter().all(Option::is_none) {
                seq.next_element::<IgnoredAny>()?.is_some()
            } else {
                seq.next_element_seed(Walk { live: child, out: &mut *self.out })?.is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }

    // A scalar where the pointer wanted to go deeper: the pointer does not resolve.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Leaf<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Leaf<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Leaf<'de>, E> {
                Ok(Leaf::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Leaf<'de>, E> {
                Ok(Leaf::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Leaf<'de>, E> {
                Ok(Leaf::Str(Cow::Owned(s)))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Leaf<'de>, E> {
                Ok(Leaf::Int(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Leaf<'de>, E> {
                Ok(u64::try_from(n).map_or(Leaf::Float(n as f64), Leaf::Int))
            }
            fn visit_f64<E: de::Error>(self, f: f64) -> Result<Leaf<'de>, E> {
                Ok(Leaf::Float(f))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Leaf<'de>, E> {
                Ok(Leaf::Bool(b))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Leaf<'de>, E> {
                Ok(Leaf::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Leaf<'de>, A::Error> {
                Value::deserialize(MapAccessDeserializer::new(map)).map(Leaf::Tree)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Leaf<'de>, A::Error> {
                Value::deserialize(SeqAccessDeserializer::new(seq)).map(Leaf::Tree)
            }
        }
        d.deserialize_any(V)
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
        let out = pick(text.as_bytes(), &slots).unwrap();
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
        let more = ["", "/n", "/done", "/choices/0/text/deeper", "/nope", "/choices/x"];
        let expected: Vec<Option<Value>> = more.iter().map(|p| doc.pointer(p).cloned()).collect();
        assert_eq!(pick_all(&doc, &more), expected);
    }

    #[test]
    fn strings_without_escapes_are_borrowed_and_syntax_is_checked() {
        let text = br#"{"skip": {"deep": [1, 2, {"x": "y"}]}, "t": "plain"}"#;
        let out = pick(text, &[Some("/t"), None, None, None, None, None, None]).unwrap();
        assert!(matches!(&out[0], Some(Leaf::Str(Cow::Borrowed("plain")))));
        assert!(pick(br#"{"skip": [1, 2,], "t": "x"}"#, &[Some("/t"), None, None, None, None, None, None]).is_err());
        assert!(pick(br#"{"t": "x"} trailing"#, &[Some("/t"), None, None, None, None, None, None]).is_err());
        assert_eq!(Leaf::Float(16.0).as_count(), Some(16));
        assert_eq!(Leaf::Float(1.5).as_count(), None);
    }

    #[test]
    fn leaves_render_as_text() {
        assert_eq!(Leaf::Tree(json!({"m": 1})).to_text(), r#"{"m":1}"#);
        assert_eq!(Leaf::Str("boom".into()).to_text(), "boom");
    }
}
