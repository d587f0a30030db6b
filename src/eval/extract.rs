//! Answer extraction and comparison: from a model's raw output to a verdict.
//!
//! Owns the extraction modes and what "equal" means for each comparison. Extraction is strict on
//! purpose: an output that does not clearly state an answer is *unparseable* (reported as a share),
//! never guessed at, so a model cannot score by rambling through every letter.

use regex::Regex;
use schemars::JsonSchema;
use serde::Serialize;

use crate::manifest::decode::{Cx, Decode, Fields};
use crate::manifest::diag::Diagnostic;
use crate::manifest::yaml::{Node, Value};

use super::spec::Compare;

/// One extraction mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Extractor {
    /// The first letter of the output (after blanks and `(`, `[`, `*`, quotes), when it is one
    /// of the options' letters and not the start of a word.
    FirstLetter,
    /// The last number in the output, `$` and thousands separators stripped.
    Number,
    /// The whole output, trimmed.
    Exact,
    /// The option whose text the output is (or starts with), as its letter.
    ChoiceText,
    /// A capture group of a regular expression (the first match, or the last with `last: true`).
    #[serde(untagged)]
    Regex {
        regex: String,
        #[serde(default = "one")]
        group: usize,
        #[serde(default)]
        last: bool,
    },
}

fn one() -> usize {
    1
}

impl Decode for Extractor {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        if let Value::Str(s) = &node.value {
            return match s.as_str() {
                "first_letter" => Some(Extractor::FirstLetter),
                "number" => Some(Extractor::Number),
                "exact" => Some(Extractor::Exact),
                "choice_text" => Some(Extractor::ChoiceText),
                "regex" => {
                    cx.error(
                        Diagnostic::new(node.pos, format!("{what}: `regex` needs a pattern"))
                            .help("write `{regex: \"The answer is (.+)\"}` with one capture group"),
                    );
                    None
                }
                other => {
                    cx.error(Diagnostic::new(node.pos, format!("{what}: unknown extractor `{other}`")).help(
                        crate::manifest::diag::unknown_help(
                            other,
                            ["first_letter", "number", "exact", "choice_text", "regex"],
                        ),
                    ));
                    None
                }
            };
        }
        let mut f = Fields::open(node, cx, what)?;
        let pattern_node = f.node("regex");
        let pattern: Option<String> = f.req(cx, "regex");
        let group: usize = f.opt::<u32>(cx, "group").map_or(1, |g| g as usize);
        let last = f.opt(cx, "last").unwrap_or(false);
        f.finish(cx);
        let pattern = pattern?;
        let pos = pattern_node.map_or(node.pos, |n| n.pos);
        match Regex::new(&pattern) {
            Ok(re) if re.captures_len() > group => {}
            Ok(_) => {
                cx.error(
                    Diagnostic::new(pos, format!("{what}: the pattern has no capture group {group}"))
                        .help("put the answer in parentheses: `The answer is (\\d+)`"),
                );
            }
            Err(e) => cx.error(Diagnostic::new(pos, format!("{what}: invalid regular expression: {e}"))),
        }
        Some(Extractor::Regex { regex: pattern, group, last })
    }
}

/// A chain of extractors with their regular expressions compiled.
#[derive(Debug, Clone)]
pub struct Extraction {
    steps: Vec<Step>,
}

#[derive(Debug, Clone)]
enum Step {
    FirstLetter,
    Number,
    Exact,
    ChoiceText,
    Regex { re: Regex, group: usize, last: bool },
}

impl Extraction {
    /// Compiles a chain; a bad pattern is reported in words (decoding already checked it).
    pub fn new(chain: &[Extractor]) -> Result<Extraction, String> {
        let steps = chain
            .iter()
            .map(|e| {
                Ok(match e {
                    Extractor::FirstLetter => Step::FirstLetter,
                    Extractor::Number => Step::Number,
                    Extractor::Exact => Step::Exact,
                    Extractor::ChoiceText => Step::ChoiceText,
                    Extractor::Regex { regex, group, last } => Step::Regex {
                        re: Regex::new(regex).map_err(|e| format!("regex `{regex}`: {e}"))?,
                        group: *group,
                        last: *last,
                    },
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Extraction { steps })
    }

    /// The answer found in `text` by the first extractor that finds one. `choices` are the
    /// item's options (empty when not multiple choice).
    pub fn apply(&self, text: &str, choices: &[String]) -> Option<String> {
        self.steps.iter().find_map(|s| match s {
            Step::FirstLetter => first_letter(text, choices.len()),
            Step::Number => last_number(text),
            Step::Exact => Some(text.trim().to_string()).filter(|t| !t.is_empty()),
            Step::ChoiceText => choice_text(text, choices),
            Step::Regex { re, group, last } => regex_capture(re, *group, *last, text),
        })
    }
}

/// `A`, `B`, … for a 0-based option index (past `Z`: `[26]`, never reached by real datasets).
pub fn letter(index: usize) -> String {
    match u8::try_from(index).ok().filter(|i| *i < 26) {
        Some(i) => char::from(b'A' + i).to_string(),
        None => format!("[{index}]"),
    }
}

/// The 0-based index of a letter answer.
pub fn letter_index(s: &str) -> Option<usize> {
    let mut chars = s.trim().chars();
    let c = chars.next()?;
    (chars.next().is_none() && c.is_ascii_uppercase()).then(|| (c as u8 - b'A') as usize)
}

fn first_letter(text: &str, n_choices: usize) -> Option<String> {
    let t = text.trim_start_matches(|c: char| c.is_whitespace() || "([*\"'".contains(c));
    let mut chars = t.chars();
    let c = chars.next()?;
    let next_is_word = chars.next().is_some_and(|n| n.is_alphanumeric());
    let limit = if n_choices == 0 { 26 } else { n_choices };
    let ok = c.is_ascii_uppercase() && ((c as u8 - b'A') as usize) < limit && !next_is_word;
    ok.then(|| c.to_string())
}

fn number_regex() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    // Thousands groups (`1,234,567.5`) or plain digits; an optional sign and dollar sign.
    RE.get_or_init(|| {
        Regex::new(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?").unwrap_or_else(|e| unreachable_regex(&e))
    })
}

fn unreachable_regex(e: &regex::Error) -> ! {
    // The pattern above is a literal checked by the tests; it cannot fail to compile.
    panic!("built-in number pattern: {e}")
}

fn last_number(text: &str) -> Option<String> {
    let m = number_regex().find_iter(text).last()?;
    Some(normalize_number(m.as_str()))
}

/// `$1,234.50` → `1234.50`; `-$5` → `-5`.
pub fn normalize_number(s: &str) -> String {
    s.trim().chars().filter(|c| !matches!(c, '$' | ',' | ' ')).collect::<String>().trim_end_matches('.').to_string()
}

fn normalize_text(s: &str) -> String {
    let lower = s.trim().to_lowercase();
    let collapsed = lower.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.trim_end_matches('.').trim().to_string()
}

fn choice_text(text: &str, choices: &[String]) -> Option<String> {
    let out = normalize_text(text);
    if out.is_empty() {
        return None;
    }
    let normalized: Vec<String> = choices.iter().map(|c| normalize_text(c)).collect();
    if let Some(i) = normalized.iter().position(|c| *c == out) {
        return Some(letter(i));
    }
    // The output starts with exactly one option (the longest wins when one option prefixes another).
    let mut best: Option<(usize, usize)> = None;
    let mut tie = false;
    for (i, c) in normalized.iter().enumerate() {
        if c.is_empty() || !out.starts_with(c.as_str()) {
            continue;
        }
        match best {
            Some((_, len)) if len > c.len() => {}
            Some((_, len)) if len == c.len() => tie = true,
            _ => {
                best = Some((i, c.len()));
                tie = false;
            }
        }
    }
    if tie { None } else { best.map(|(i, _)| letter(i)) }
}

fn regex_capture(re: &Regex, group: usize, last: bool, text: &str) -> Option<String> {
    let caps = if last { re.captures_iter(text).last() } else { re.captures(text) }?;
    let s = caps.get(group)?.as_str().trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Whether an extracted answer meets the target.
pub fn matches(compare: Compare, extracted: &str, target: &str) -> bool {
    match compare {
        Compare::Letter => {
            let e = extracted.trim();
            e.eq_ignore_ascii_case(target.trim())
        }
        Compare::Number => match (parse_number(extracted), parse_number(target)) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
            _ => false,
        },
        Compare::Text => extracted.trim() == target.trim(),
        Compare::TextNocase => extracted.trim().to_lowercase() == target.trim().to_lowercase(),
    }
}

/// A number as written in an answer (`$1,234`, `18.00`, `-3`).
pub fn parse_number(s: &str) -> Option<f64> {
    normalize_number(s).parse::<f64>().ok().filter(|x| x.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(e: Vec<Extractor>) -> Extraction {
        Extraction::new(&e).unwrap()
    }

    fn abcd() -> Vec<String> {
        ["Paris", "London", "Rome", "Berlin"].map(String::from).to_vec()
    }

    #[test]
    fn first_letter_takes_a_standalone_option_letter() {
        let x = chain(vec![Extractor::FirstLetter]);
        let c = abcd();
        assert_eq!(x.apply(" B", &c).as_deref(), Some("B"));
        assert_eq!(x.apply("B. London", &c).as_deref(), Some("B"));
        assert_eq!(x.apply("(C) Rome", &c).as_deref(), Some("C"));
        assert_eq!(x.apply("\n **D**", &c).as_deref(), Some("D"));
        assert_eq!(x.apply("A", &c).as_deref(), Some("A"));
        // A word that starts with a letter is not an answer; neither is a letter past the options.
        assert_eq!(x.apply("Because B", &c), None);
        assert_eq!(x.apply("Answer: B", &c), None);
        assert_eq!(x.apply("E", &c), None);
        assert_eq!(x.apply("b", &c), None);
        assert_eq!(x.apply("", &c), None);
        // Without options any capital letter counts.
        assert_eq!(x.apply("E)", &[]).as_deref(), Some("E"));
    }

    #[test]
    fn number_takes_the_last_number_without_dollars_or_commas() {
        let x = chain(vec![Extractor::Number]);
        assert_eq!(x.apply("She has 3 apples, then 5. So $1,234.50 in total.", &[]).as_deref(), Some("1234.50"));
        assert_eq!(x.apply("The answer is -$5.", &[]).as_deref(), Some("-5"));
        assert_eq!(x.apply("18", &[]).as_deref(), Some("18"));
        assert_eq!(x.apply("1,2,3 go", &[]).as_deref(), Some("3"));
        assert_eq!(x.apply("no digits here", &[]), None);
        assert!(matches(Compare::Number, "18.00", "18"));
        assert!(matches(Compare::Number, "$1,000", "1000"));
        assert!(!matches(Compare::Number, "17", "18"));
        assert!(!matches(Compare::Number, "eighteen", "18"));
    }

    #[test]
    fn regex_takes_a_capture_group_and_chains_fall_through() {
        let x = chain(vec![
            Extractor::Regex { regex: r"####\s*(\S+)".into(), group: 1, last: false },
            Extractor::Regex { regex: r"The answer is \$?(-?[\d,.]+)".into(), group: 1, last: true },
            Extractor::Number,
        ]);
        assert_eq!(x.apply("work\n#### 72", &[]).as_deref(), Some("72"));
        assert_eq!(x.apply("The answer is 3. The answer is 4", &[]).as_deref(), Some("4"));
        assert_eq!(x.apply("so 3 + 4 = 7 apples", &[]).as_deref(), Some("7"));
        assert_eq!(x.apply("nothing", &[]), None);
    }

    #[test]
    fn exact_and_text_comparisons() {
        let x = chain(vec![Extractor::Exact]);
        assert_eq!(x.apply("  yes \n", &[]).as_deref(), Some("yes"));
        assert_eq!(x.apply("   ", &[]), None);
        assert!(matches(Compare::Text, " yes", "yes"));
        assert!(!matches(Compare::Text, "Yes", "yes"));
        assert!(matches(Compare::TextNocase, "Yes", "yes"));
        assert!(matches(Compare::Letter, "b", "B"));
    }

    #[test]
    fn choice_text_finds_the_option_the_output_names() {
        let x = chain(vec![Extractor::ChoiceText]);
        let c = abcd();
        assert_eq!(x.apply("rome.", &c).as_deref(), Some("C"));
        assert_eq!(x.apply("  Berlin, the capital", &c).as_deref(), Some("D"));
        assert_eq!(x.apply("Madrid", &c), None);
        let overlapping = ["New", "New York"].map(String::from).to_vec();
        assert_eq!(x.apply("New York City", &overlapping).as_deref(), Some("B"));
    }

    #[test]
    fn letters_round_trip() {
        assert_eq!(letter(0), "A");
        assert_eq!(letter(3), "D");
        assert_eq!(letter_index("D"), Some(3));
        assert_eq!(letter_index("DD"), None);
        assert_eq!(letter_index("d"), None);
    }

    #[test]
    fn a_regex_without_a_group_is_a_decode_error() {
        let node = crate::manifest::yaml::parse("{regex: \"answer is \\\\d+\"}").unwrap();
        let mut cx = Cx::default();
        let e = Extractor::decode(&node, &mut cx, "`extract`");
        assert!(e.is_some());
        assert_eq!(cx.errors.len(), 1, "{:?}", cx.errors);
        assert!(cx.errors[0].message.contains("no capture group 1"), "{}", cx.errors[0].message);
        let node = crate::manifest::yaml::parse("firstletter").unwrap();
        let mut cx = Cx::default();
        assert!(Extractor::decode(&node, &mut cx, "`extract`").is_none());
        assert!(cx.errors[0].help.as_deref().unwrap_or("").contains("first_letter"), "{:?}", cx.errors);
    }
}
