//! Rows → items: the field mapping, multiple-choice options (with a seeded shuffle), the expected
//! answer, group filters and the seeded subset.
//!
//! Everything random here is keyed by (seed, item id), never by position or by a shared stream, so
//! an item's options come out the same whether it is evaluated alone, in a subset, or after a
//! resume, and a bigger `sample_size` picks a superset of a smaller one.

use serde_json::{Map, Value as Json};

use super::dataset::parse::{Origin, Row};
use super::error::EvalError;
use super::extract::{self, Extraction, letter, letter_index};
use super::spec::{ChoiceFrom, Compare, EvalSpec, TargetFormat};

/// One question, ready for a prompt.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub id: String,
    pub group: Option<String>,
    /// The row's fields (what templates see under their own names).
    pub fields: Map<String, Json>,
    /// The options, in presentation order (empty when not multiple choice).
    pub choices: Vec<String>,
    /// The expected answer: the correct option's letter, or the target text.
    pub target: String,
    pub origin: Origin,
}

impl Item {
    /// The correct option's text (multiple choice).
    pub fn target_text(&self) -> Option<&str> {
        letter_index(&self.target).and_then(|i| self.choices.get(i)).map(String::as_str)
    }
}

/// Applies an eval's field mapping to rows.
pub(crate) struct Mapper<'a> {
    spec: &'a EvalSpec,
    target_chain: Option<Extraction>,
    compare: Compare,
}

/// A value as text (strings as they are, numbers and booleans as written).
fn text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl<'a> Mapper<'a> {
    pub fn new(spec: &'a EvalSpec) -> Result<Self, EvalError> {
        let target_chain = match spec.fields.target.as_ref().filter(|t| !t.extract.is_empty()) {
            Some(t) => Some(Extraction::new(&t.extract).map_err(EvalError::Spec)?),
            None => None,
        };
        Ok(Mapper { spec, target_chain, compare: spec.compare() })
    }

    /// The item of one row; `label` names its source in ids, `group` is its `{group}` if any.
    pub fn item(&self, row: Row, label: &str, group: Option<&str>) -> Result<Item, EvalError> {
        let Row { mut fields, origin } = row;
        let map = &self.spec.fields;
        if let (Some(g), Some(name)) = (group, &map.group) {
            fields.insert(name.clone(), Json::String(g.to_string()));
        }
        let r = RowView { fields: &fields, origin: &origin };
        let group = match (group, &map.group) {
            (Some(g), _) => Some(g.to_string()),
            (None, Some(name)) => Some(r.text(name)?),
            (None, None) => None,
        };
        let id = match &map.id {
            Some(name) => r.text(name)?,
            None => format!("{label}:{}", origin.number),
        };
        let (choices, target) = match &map.choices {
            None => (Vec::new(), self.plain_target(&r)?),
            Some(spec) => {
                let sep = spec.separator.as_deref();
                let (choices, correct) = match &spec.from {
                    ChoiceFrom::Field(name) => {
                        let choices = r.options(name, sep)?;
                        let correct = self.choice_target(&r, &choices)?;
                        (choices, correct)
                    }
                    ChoiceFrom::Fields(names) => {
                        let choices = names.iter().map(|n| r.text(n)).collect::<Result<Vec<_>, _>>()?;
                        let correct = self.choice_target(&r, &choices)?;
                        (choices, correct)
                    }
                    ChoiceFrom::CorrectIncorrect { correct, incorrect } => {
                        let mut choices = vec![r.text(correct)?];
                        choices.extend(r.options(incorrect, sep)?);
                        (choices, 0)
                    }
                };
                if choices.len() < 2 {
                    return Err(r.bad(format!("{} option(s); multiple choice needs at least 2", choices.len())));
                }
                if spec.shuffle {
                    let order = shuffled(choices.len(), keyed(self.spec.seed, "choices", &id));
                    let new_pos = order.iter().position(|&i| i == correct).unwrap_or(correct);
                    let shuffled: Vec<String> = order.iter().map(|&i| choices[i].clone()).collect();
                    (shuffled, letter(new_pos))
                } else {
                    (choices, letter(correct))
                }
            }
        };
        Ok(Item { id, group, fields, choices, target, origin })
    }

    /// The target of a non-multiple-choice item: the field's text through the target extractors.
    fn plain_target(&self, r: &RowView) -> Result<String, EvalError> {
        let Some(t) = &self.spec.fields.target else {
            return Err(EvalError::Spec("no `fields.target`".into()));
        };
        let raw = r.text(&t.field)?;
        let value = match &self.target_chain {
            Some(chain) => chain
                .apply(&raw, &[])
                .ok_or_else(|| r.bad(format!("none of the target extractors finds an answer in `{}`", short(&raw))))?,
            None => raw.trim().to_string(),
        };
        if self.compare == Compare::Number && extract::parse_number(&value).is_none() {
            return Err(r.bad(format!("the target `{}` is not a number (the eval compares numbers)", short(&value))));
        }
        Ok(if self.compare == Compare::Number { extract::normalize_number(&value) } else { value })
    }

    /// The 0-based index of the correct option, from the target field.
    fn choice_target(&self, r: &RowView, choices: &[String]) -> Result<usize, EvalError> {
        let Some(t) = &self.spec.fields.target else {
            return Err(EvalError::Spec("multiple choice without `fields.target`".into()));
        };
        let v = r.value(&t.field)?;
        let v = match (&self.target_chain, text(&v)) {
            (Some(chain), Some(s)) => Json::String(
                chain.apply(&s, choices).ok_or_else(|| r.bad(format!("no target found in `{}`", short(&s))))?,
            ),
            _ => v,
        };
        let n = choices.len();
        let as_index = |v: &Json| -> Option<usize> {
            match v {
                Json::Number(x) => x.as_u64().map(|x| x as usize),
                Json::String(s) if !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit()) => {
                    s.trim().parse().ok()
                }
                _ => None,
            }
        };
        let as_letter = |v: &Json| v.as_str().and_then(letter_index);
        let as_text = |v: &Json| v.as_str().and_then(|s| choices.iter().position(|c| c.trim() == s.trim()));
        let (index, how) = match t.format {
            TargetFormat::Index => (as_index(&v), "a 0-based index"),
            TargetFormat::Letter => (as_letter(&v), "a letter"),
            TargetFormat::Text => (as_text(&v), "the text of an option"),
            TargetFormat::Auto => (
                as_index(&v).or_else(|| as_letter(&v)).or_else(|| as_text(&v)),
                "an index, a letter or an option's text",
            ),
        };
        match index {
            Some(i) if i < n => Ok(i),
            _ => Err(r.bad(format!("the target `{}` in `{}` is not {how} among {n} options", display(&v), t.field))),
        }
    }
}

/// One row's fields, read with errors that name the row.
struct RowView<'r> {
    fields: &'r Map<String, Json>,
    origin: &'r Origin,
}

impl RowView<'_> {
    fn bad(&self, reason: String) -> EvalError {
        EvalError::Malformed { location: self.origin.to_string(), reason }
    }

    fn value(&self, name: &str) -> Result<Json, EvalError> {
        match self.fields.get(name) {
            Some(Json::Null) | None => {
                let names: Vec<&str> = self.fields.keys().map(String::as_str).take(12).collect();
                Err(self.bad(format!("no field `{name}` (the row has: {})", names.join(", "))))
            }
            Some(v) => Ok(v.clone()),
        }
    }

    fn text(&self, name: &str) -> Result<String, EvalError> {
        let v = self.value(name)?;
        text(&v).ok_or_else(|| self.bad(format!("field `{name}` is {}, expected text", kind(&v))))
    }

    /// A list of options: a list field, or a string field split at `sep`.
    fn options(&self, name: &str, sep: Option<&str>) -> Result<Vec<String>, EvalError> {
        match self.value(name)? {
            Json::Array(items) => items
                .iter()
                .map(|x| text(x).ok_or_else(|| self.bad(format!("an option in `{name}` is {}", kind(x)))))
                .collect(),
            Json::String(s) => match sep {
                Some(sep) => Ok(s.split(sep).map(|o| o.trim().to_string()).filter(|o| !o.is_empty()).collect()),
                None => {
                    Err(self.bad(format!("`{name}` is a string; set `choices.separator` to split it into options")))
                }
            },
            other => Err(self.bad(format!("`{name}` is {}, expected a list of options", kind(&other)))),
        }
    }
}

fn kind(v: &Json) -> &'static str {
    crate::manifest::template_kind::json_type(v)
}

fn display(v: &Json) -> String {
    text(v).unwrap_or_else(|| v.to_string())
}

fn short(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 80 { format!("{}…", one.chars().take(80).collect::<String>()) } else { one }
}

// ---------------------------------------------------------------- seeded choices

/// splitmix64: a small, good generator; all kitt's seeded draws use it.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias worth caring about at these sizes.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
}

/// A seed for one purpose (`salt`) and one key (an item id): FNV-1a of both, mixed with `seed`.
pub(crate) fn keyed(seed: u64, salt: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes().chain([0u8]).chain(key.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Rng::new(h ^ seed).next()
}

/// A seeded permutation of `0..n` (Fisher–Yates).
pub(crate) fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// Keeps `n` items chosen by (seed, id), in their original order.
pub(crate) fn sample(items: Vec<Item>, n: usize, seed: u64) -> Vec<Item> {
    if n >= items.len() {
        return items;
    }
    let mut ranked: Vec<(u64, usize)> =
        items.iter().enumerate().map(|(i, it)| (keyed(seed, "sample", &it.id), i)).collect();
    ranked.sort_unstable();
    let mut keep: Vec<usize> = ranked[..n].iter().map(|(_, i)| *i).collect();
    keep.sort_unstable();
    let mut keep = keep.into_iter().peekable();
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, it)| {
            if keep.peek() == Some(&i) {
                keep.next();
                Some(it)
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_are_permutations_and_depend_on_the_key() {
        let a = shuffled(5, keyed(1, "choices", "q1"));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
        assert_eq!(a, shuffled(5, keyed(1, "choices", "q1")));
        let differ = (0..20).any(|i| shuffled(5, keyed(1, "choices", &format!("q{i}"))) != a);
        assert!(differ);
    }

    #[test]
    fn a_bigger_sample_is_a_superset() {
        let items: Vec<Item> = (0..100)
            .map(|i| Item {
                id: format!("x:{i}"),
                group: None,
                fields: Map::new(),
                choices: vec![],
                target: String::new(),
                origin: Origin { source: "x".into(), number: i, line: true },
            })
            .collect();
        let small: Vec<String> = sample(items.clone(), 10, 7).into_iter().map(|i| i.id).collect();
        let big: Vec<String> = sample(items.clone(), 30, 7).into_iter().map(|i| i.id).collect();
        assert_eq!(small.len(), 10);
        assert!(small.iter().all(|s| big.contains(s)));
        let other: Vec<String> = sample(items, 10, 8).into_iter().map(|i| i.id).collect();
        assert_ne!(small, other);
    }
}
