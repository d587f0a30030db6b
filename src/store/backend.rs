//! The one interface both databases implement: run a statement, read rows, run a write
//! transaction. The store's logic (`mod.rs`, `settings.rs`, `export.rs`) is written once against
//! it; `sqlite.rs` and `postgres.rs` are the only files that know which database they talk to.
//!
//! Decisions: statements are written with `?` placeholders (SQLite's) and PostgreSQL's backend
//! numbers them (`$1`, …); values are the three kinds the store's columns use (integer, text,
//! null), so neither backend has to guess a type; a write is a closure run inside one
//! transaction, so a backend can retry it whole when its database asks for that.

use super::StoreError;

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl Value {
    pub(crate) fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into())
    }

    pub(crate) fn opt_text(s: Option<&str>) -> Value {
        s.map_or(Value::Null, Value::text)
    }

    /// A time or count stored as a signed 64-bit integer (saturating: no stored time is that late).
    pub(crate) fn u64(v: u64) -> Value {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }

    pub(crate) fn json(v: &impl serde::Serialize) -> Value {
        Value::Text(serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
    }
}

/// One row of a result set, read by column position.
#[derive(Debug, Clone)]
pub(crate) struct Row(pub(crate) Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value, StoreError> {
        self.0.get(i).ok_or_else(|| StoreError::Column { column: i, expected: "a column" })
    }

    pub(crate) fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.at(i)? {
            Value::Text(s) => Ok(s.clone()),
            _ => Err(StoreError::Column { column: i, expected: "text" }),
        }
    }

    /// Text without a copy.
    pub(crate) fn str(&self, i: usize) -> Result<&str, StoreError> {
        match self.at(i)? {
            Value::Text(s) => Ok(s),
            _ => Err(StoreError::Column { column: i, expected: "text" }),
        }
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.at(i)? {
            Value::Int(v) => Ok(*v),
            _ => Err(StoreError::Column { column: i, expected: "an integer" }),
        }
    }

    /// A non-negative integer (times, counts); a negative one reads as 0.
    pub(crate) fn u64(&self, i: usize) -> Result<u64, StoreError> {
        Ok(self.int(i)?.max(0) as u64)
    }
}

/// Statements inside one write transaction.
pub(crate) trait Tx {
    /// Runs a statement; the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// Makes other transactions that lock the same `key` wait for this one (SQLite's write
    /// transactions already exclude each other: nothing to do there).
    fn lock(&mut self, key: &str) -> Result<(), StoreError>;
}

/// The work of one write transaction; it may run more than once (a retry starts it afresh).
pub(crate) type Work<'a> = dyn FnMut(&mut dyn Tx) -> Result<(), StoreError> + Send + 'a;

/// One open connection to a store's database, at the current schema version.
pub(crate) trait Backend: Send {
    /// The schema version the database is at.
    fn version(&mut self) -> Result<u32, StoreError>;
    /// A read outside any write transaction.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// Runs `work` in one write transaction: all of it commits, or none of it.
    fn write(&mut self, work: &mut Work<'_>) -> Result<(), StoreError>;
}

/// `sql` with its `?` placeholders numbered `$1`, `$2`, … (PostgreSQL's form); a `?` inside a
/// quoted literal or identifier is left alone.
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (None, '?') => {
                n += 1;
                out.push_str(&format!("${n}"));
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_literals() {
        assert_eq!(
            numbered("SELECT a FROM t WHERE b LIKE ? ESCAPE '\\' AND c = '?' AND d = ?"),
            "SELECT a FROM t WHERE b LIKE $1 ESCAPE '\\' AND c = '?' AND d = $2"
        );
    }
}
