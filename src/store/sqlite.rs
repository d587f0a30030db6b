//! The SQLite backend: one file, WAL, a busy timeout, and every write in an IMMEDIATE
//! transaction, so several kitt processes writing at once wait for each other instead of failing
//! or losing rows. Its schema version is the file's `user_version`.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;
use super::backend::{Backend, Row, Tx, Value, Work};
use super::schema::{MIGRATIONS, VERSION};

/// How long a writer waits for another one before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether SQLite said another connection holds the lock.
fn busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

fn rows(conn: &Connection, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
    let mut q = conn.prepare(sql)?;
    let width = q.column_count();
    let mut rows = q.query(rusqlite::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Real(v) => Value::Text(v.to_string()),
                ValueRef::Text(t) | ValueRef::Blob(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            });
        }
        out.push(Row(values));
    }
    Ok(out)
}

pub(super) struct Sqlite {
    conn: Connection,
}

impl Sqlite {
    /// Opens (creating it and its directory if needed) and upgrades the store file at `path`.
    pub(super) fn open(path: &Path) -> Result<Sqlite, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.to_path_buf(), e))?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Switching a new file to WAL while another process does the same can answer "locked"
        // at once, without the busy handler (SQLite takes that lock without waiting): retry
        // within the busy timeout.
        let deadline = Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(5);
        loop {
            let setup = (|| -> Result<(), StoreError> {
                // WAL lets readers go on while one process writes; set before anything else touches it.
                conn.pragma_update_and_check(None, "journal_mode", "wal", |_| Ok(()))?;
                conn.pragma_update(None, "synchronous", "normal")?;
                migrate(&mut conn)
            })();
            match setup {
                Err(StoreError::Sqlite(e)) if busy(&e) && Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
                Ok(()) => break,
            }
        }
        Ok(Sqlite { conn })
    }
}

impl Sqlite {
    /// Opens the store file at `path` read-only; `immutable` where its directory is not
    /// writable, since WAL readers otherwise need to create the `-shm` file beside it.
    pub(super) fn open_read_only(path: &Path) -> Result<Sqlite, StoreError> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let writable = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            // SAFETY: access(2) on a NUL-terminated path; it only reads the string.
            .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0);
        Sqlite::open_read_only_as(path, !writable)
    }

    /// Opens the store file read-only: `immutable` (SQLite then takes no locks and makes no
    /// files) or `mode=ro`.
    pub(super) fn open_read_only_as(path: &Path, immutable: bool) -> Result<Sqlite, StoreError> {
        use rusqlite::OpenFlags;
        let mut encoded = String::new();
        for b in path.as_os_str().as_encoded_bytes() {
            match b {
                b'?' | b'#' | b'%' | 0x80.. => encoded.push_str(&format!("%{b:02X}")),
                _ => encoded.push(char::from(*b)),
            }
        }
        let uri = if immutable { format!("file:{encoded}?immutable=1") } else { format!("file:{encoded}?mode=ro") };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(uri, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(Sqlite { conn })
    }
}

fn version(conn: &Connection) -> Result<u32, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// Brings the store to [`VERSION`]; refuses a store written by a newer kitt.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    if version(conn)? == VERSION {
        return Ok(());
    }
    // IMMEDIATE takes the write lock before reading the version, so two processes opening an
    // old store at once upgrade it once: the second waits, then sees the new version.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = version(&tx)?;
    if found > VERSION {
        return Err(StoreError::Newer { found, supported: VERSION });
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(m.sqlite).map_err(|e| StoreError::Migration { to: i as u32 + 1, reason: e.to_string() })?;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    Ok(())
}

struct SqliteTx<'a>(rusqlite::Transaction<'a>);

impl Tx for SqliteTx<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        Ok(self.0.prepare(sql)?.execute(rusqlite::params_from_iter(params))? as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        rows(&self.0, sql, params)
    }

    fn lock(&mut self, _key: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

impl Backend for Sqlite {
    fn version(&mut self) -> Result<u32, StoreError> {
        version(&self.conn)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        rows(&self.conn, sql, params)
    }

    fn write(&mut self, work: &mut Work<'_>) -> Result<(), StoreError> {
        let mut tx = SqliteTx(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?);
        work(&mut tx)?;
        tx.0.commit()?;
        Ok(())
    }
}
