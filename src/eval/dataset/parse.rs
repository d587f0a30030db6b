//! Bytes → rows: CSV (with or without a header), JSONL and JSON, every row keeping where it came
//! from so that a bad one is reported as `FILE:LINE`.

use std::sync::Arc;

use serde_json::{Map, Value as Json};

use super::super::error::EvalError;
use super::super::spec::Format;

/// Where a row came from: a source label and a line (CSV, JSONL) or record number (JSON, HF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub source: Arc<str>,
    pub number: u64,
    pub line: bool,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line {
            write!(f, "{}:{}", self.source, self.number)
        } else {
            write!(f, "{} record {}", self.source, self.number)
        }
    }
}

/// One dataset row: its fields by name.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub fields: Map<String, Json>,
    pub origin: Origin,
}

/// How to read one file.
pub(crate) struct ParseOptions<'a> {
    pub format: Format,
    pub header: Option<bool>,
    pub columns: &'a [String],
    pub records: Option<&'a str>,
}

/// Parses `bytes` read from `source` (a path or URL, for messages).
pub(crate) fn parse(bytes: &[u8], source: &str, opts: &ParseOptions) -> Result<Vec<Row>, EvalError> {
    let source: Arc<str> = Arc::from(source);
    match opts.format {
        Format::Csv => csv_rows(bytes, source, opts),
        Format::Jsonl => jsonl_rows(bytes, source, true),
        Format::Json => json_rows(bytes, source, opts.records),
    }
}

fn malformed(origin: &Origin, reason: impl Into<String>) -> EvalError {
    EvalError::Malformed { location: origin.to_string(), reason: reason.into() }
}

fn csv_rows(bytes: &[u8], source: Arc<str>, opts: &ParseOptions) -> Result<Vec<Row>, EvalError> {
    let header = opts.header.unwrap_or(opts.columns.is_empty());
    if header && !opts.columns.is_empty() {
        return Err(EvalError::Spec(format!(
            "{source}: `columns` names the columns of a CSV without a header; with `header: true` the header names them"
        )));
    }
    if !header && opts.columns.is_empty() {
        return Err(EvalError::Spec(format!(
            "{source}: a CSV without a header needs `columns: [NAME, …]` (one name per column)"
        )));
    }
    // Lines from byte offsets: the reader's own line count skips blank lines.
    let newlines: Vec<usize> = bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i).collect();
    // A record's position is where the reader resumed, before any blank lines it then skipped.
    let line_at = |byte: u64| {
        let mut b = usize::try_from(byte).unwrap_or(bytes.len());
        while b < bytes.len() && matches!(bytes[b], b'\n' | b'\r') {
            b += 1;
        }
        newlines.partition_point(|&nl| nl < b) as u64 + 1
    };
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
    let mut names: Vec<String> = opts.columns.to_vec();
    let mut rows = Vec::new();
    let mut first = true;
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| line_at(p.byte()));
            malformed(&Origin { source: source.clone(), number: line, line: true }, format!("not CSV: {e}"))
        })?;
        let line = record.position().map_or(0, |p| line_at(p.byte()));
        let origin = Origin { source: source.clone(), number: line, line: true };
        if first && header {
            first = false;
            names = record.iter().map(|s| s.trim().to_string()).collect();
            continue;
        }
        first = false;
        if record.len() == 1 && record.get(0).is_some_and(|f| f.trim().is_empty()) {
            continue; // a blank line
        }
        if record.len() != names.len() {
            return Err(malformed(
                &origin,
                format!("{} fields, expected {} ({})", record.len(), names.len(), names.join(", ")),
            ));
        }
        let mut fields = Map::new();
        for (name, value) in names.iter().zip(record.iter()) {
            match name.strip_suffix("[]") {
                Some(list) => {
                    let slot = fields.entry(list.to_string()).or_insert_with(|| Json::Array(Vec::new()));
                    if let Json::Array(items) = slot {
                        items.push(Json::String(value.to_string()));
                    }
                }
                None => {
                    fields.insert(name.clone(), Json::String(value.to_string()));
                }
            }
        }
        rows.push(Row { fields, origin });
    }
    Ok(rows)
}

/// JSON lines; `lines` says whether positions are lines (files) or 0-based records (HF rows).
pub(crate) fn jsonl_rows(bytes: &[u8], source: Arc<str>, lines: bool) -> Result<Vec<Row>, EvalError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count() as u64 + 1;
        malformed(&Origin { source: source.clone(), number: line, line: true }, "not UTF-8 text")
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = if lines { i as u64 + 1 } else { i as u64 };
        let origin = Origin { source: source.clone(), number, line: lines };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Json>(line) {
            Ok(Json::Object(fields)) => rows.push(Row { fields, origin }),
            Ok(other) => return Err(malformed(&origin, format!("expected a JSON object, found {}", kind(&other)))),
            Err(e) => return Err(malformed(&origin, format!("not JSON: {e}"))),
        }
    }
    Ok(rows)
}

fn json_rows(bytes: &[u8], source: Arc<str>, records: Option<&str>) -> Result<Vec<Row>, EvalError> {
    let whole = Origin { source: source.clone(), number: 1, line: true };
    let doc: Json = serde_json::from_slice(bytes).map_err(|e| {
        malformed(&Origin { source: source.clone(), number: e.line() as u64, line: true }, format!("not JSON: {e}"))
    })?;
    let list = match records {
        Some(p) => doc.pointer(p).ok_or_else(|| malformed(&whole, format!("no value at `records: {p}`")))?,
        None => &doc,
    };
    let Json::Array(items) = list else {
        let hint = if records.is_none() { "; name the array with `records: /POINTER`" } else { "" };
        return Err(malformed(&whole, format!("expected an array of records, found {}{hint}", kind(list))));
    };
    let mut rows = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let origin = Origin { source: source.clone(), number: i as u64, line: false };
        match item {
            Json::Object(fields) => rows.push(Row { fields: fields.clone(), origin }),
            other => return Err(malformed(&origin, format!("expected a JSON object, found {}", kind(other)))),
        }
    }
    Ok(rows)
}

fn kind(v: &Json) -> &'static str {
    crate::manifest::template_kind::json_type(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts<'a>(format: Format, header: Option<bool>, columns: &'a [String]) -> ParseOptions<'a> {
        ParseOptions { format, header, columns, records: None }
    }

    #[test]
    fn csv_without_header_collects_list_columns() {
        let cols: Vec<String> =
            ["question", "choices[]", "choices[]", "answer"].iter().map(|s| s.to_string()).collect();
        let data = b"What?,\"yes, indeed\",no,A\n\nWhy?,\"x\ny\",y,B\nHow?,z,w,C\n";
        let rows = parse(data, "t.csv", &opts(Format::Csv, None, &cols)).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].fields["choices"], serde_json::json!(["yes, indeed", "no"]));
        assert_eq!(rows[1].origin.to_string(), "t.csv:3");
        assert_eq!(rows[2].origin.to_string(), "t.csv:5", "a quoted newline is a line too");
    }

    #[test]
    fn a_short_csv_row_names_its_line() {
        let data = b"q,a\nfine,1\nshort\n";
        let e = parse(data, "d/x.csv", &opts(Format::Csv, Some(true), &[])).unwrap_err();
        assert_eq!(e.to_string(), "d/x.csv:3: 1 fields, expected 2 (q, a)");
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let e = parse(b"{\"a\":1}\n[1]\n", "x.jsonl", &opts(Format::Jsonl, None, &[])).unwrap_err();
        assert_eq!(e.to_string(), "x.jsonl:2: expected a JSON object, found a list");
        let e = parse(b"{\"a\":1}\n\n{oops\n", "x.jsonl", &opts(Format::Jsonl, None, &[])).unwrap_err();
        assert!(e.to_string().starts_with("x.jsonl:3: not JSON"), "{e}");
    }

    #[test]
    fn json_records_by_pointer() {
        let data = br#"{"data": [{"q": "a"}, {"q": "b"}]}"#;
        let o = ParseOptions { format: Format::Json, header: None, columns: &[], records: Some("/data") };
        assert_eq!(parse(data, "x.json", &o).unwrap().len(), 2);
        let e = parse(data, "x.json", &opts(Format::Json, None, &[])).unwrap_err();
        assert!(e.to_string().contains("records: /POINTER"), "{e}");
    }
}
