//! Per-item outcomes of eval cells, for the paired accuracy tests (`proportion`).
//!
//! An eval cell's benchmark step writes `items.jsonl` in its step directory
//! (`<run dir>/steps/<key>/items.jsonl`, one line per item: `id`, `verdict`, …). The CLI reads
//! them here, next to the records, so that `compare` itself stays a function of plain data. A
//! result whose run directory or items file is gone simply has no items, and its accuracy is
//! tested on counts instead.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;

use crate::store::Record;

/// One item of one result: answered right, answered wrong, or not answered (its generation
/// failed, or it was skipped), which leaves it out of the paired tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemOutcome {
    pub id: String,
    /// `None` when the item has no answer.
    pub correct: Option<bool>,
}

/// Item outcomes by result: (run id, step key) → items in file order.
#[derive(Debug, Clone, Default)]
pub struct Items(BTreeMap<(String, String), Vec<ItemOutcome>>);

impl Items {
    /// Reads the items file of every record that has an accuracy; records without one are left
    /// out (a missing file is not an error: the comparison falls back to counts).
    pub fn read(records: &[Record]) -> Items {
        let mut out = BTreeMap::new();
        for r in records.iter().filter(|r| r.metric("/accuracy").is_some()) {
            // The run directory's layout (`run::dir`): a step's outputs are under steps/<key>/.
            let path = r.run_dir.join("steps").join(&r.key).join("items.jsonl");
            if let Some(items) = read_file(&path) {
                out.insert((r.run_id.clone(), r.key.clone()), items);
            }
        }
        Items(out)
    }

    /// The items of one record.
    pub fn of(&self, r: &Record) -> Option<&[ItemOutcome]> {
        self.0.get(&(r.run_id.clone(), r.key.clone())).map(Vec::as_slice)
    }

    pub fn insert(&mut self, run_id: &str, key: &str, items: Vec<ItemOutcome>) {
        self.0.insert((run_id.to_string(), key.to_string()), items);
    }
}

fn read_file(path: &Path) -> Option<Vec<ItemOutcome>> {
    let text = std::fs::read_to_string(path).ok()?;
    parse(&text)
}

/// The items of an items.jsonl text; `None` if a line is not an item (a truncated or foreign
/// file is not evidence).
pub fn parse(text: &str) -> Option<Vec<ItemOutcome>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Json>(l).ok().and_then(outcome))
        .collect()
}

fn outcome(v: Json) -> Option<ItemOutcome> {
    let id = match &v["id"] {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        _ => return None,
    };
    let verdict = v["verdict"].as_str()?;
    // An error marker on the item (whatever its verdict says) means no answer was generated.
    let errored = matches!(&v["error"], Json::Bool(true) | Json::String(_) | Json::Object(_));
    let correct = match verdict {
        _ if errored => None,
        "error" | "skipped" => None,
        "correct" => Some(true),
        _ => Some(false),
    };
    Some(ItemOutcome { id, correct })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_skips_are_not_answers() {
        let text = r#"{"id":"q1","expected":"A","verdict":"correct"}
{"id":"q2","expected":"B","verdict":"incorrect","extracted":"C"}
{"id":"q3","expected":"B","verdict":"unparseable"}
{"id":"q4","expected":"B","verdict":"error","reason":"http_500"}
{"id":"q5","expected":"B","verdict":"skipped","reason":"too long"}
{"id":7,"expected":"B","verdict":"incorrect","error":"timeout"}
"#;
        let items = parse(text).unwrap();
        let got: Vec<(&str, Option<bool>)> = items.iter().map(|i| (i.id.as_str(), i.correct)).collect();
        assert_eq!(
            got,
            [("q1", Some(true)), ("q2", Some(false)), ("q3", Some(false)), ("q4", None), ("q5", None), ("7", None)]
        );
        assert_eq!(parse("{\"id\":\"q1\"}\n"), None, "a line without a verdict is not an item");
        assert_eq!(parse("not json\n"), None);
    }
}
