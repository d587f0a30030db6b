//! The PostgreSQL backend, for a store that many writers on many hosts share (SQLite's WAL does
//! not work on network filesystems). Its schema version is the one row of `kitt_schema`.
//!
//! Decisions: the synchronous `postgres` client, since the store's callers are synchronous; that
//! client runs its own small runtime and panics when called from inside another one, so every
//! call made on a tokio thread (`kitt apply` indexes its run there) moves to a scoped thread
//! first ([`off_runtime`]). Concurrent writers are serialised where they would race: the
//! migration under one advisory lock (many processes opening a new database upgrade it once),
//! each run's rows under an advisory lock on its run id (as SQLite's write lock does for all);
//! a transaction that PostgreSQL aborts for a deadlock or a serialization failure is retried
//! whole. No TLS: connect over a Unix socket or a trusted network.

use std::collections::HashMap;
use std::error::Error as StdError;

use bytes::BytesMut;
use postgres::error::SqlState;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls, Statement};

use super::StoreError;
use super::backend::{Backend, Row, Tx, Value, Work, numbered};
use super::schema::{MIGRATIONS, VERSION};

/// The advisory lock key migrations hold ("kitt" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b69_7474;
/// How many times a write transaction PostgreSQL aborted (deadlock, serialization) is tried.
const TRIES: usize = 5;

/// Runs `f` where the synchronous client may block: on this thread, or on a scoped one when this
/// thread is inside a tokio runtime.
fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| s.spawn(f).join()).unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Value::Text(s) => s.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn row(r: &postgres::Row) -> Result<Row, StoreError> {
    let mut values = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        values.push(match *c.type_() {
            Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map_or(Value::Null, Value::Int),
            Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map_or(Value::Null, |v| Value::Int(v.into())),
            Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map_or(Value::Null, |v| Value::Int(v.into())),
            Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map_or(Value::Null, |v| Value::Int(v.into())),
            _ => r.try_get::<_, Option<String>>(i)?.map_or(Value::Null, Value::Text),
        });
    }
    Ok(Row(values))
}

fn params(values: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// A prepared statement for `sql` (`?` placeholders), prepared once per connection.
fn statement(
    client: &mut impl postgres::GenericClient,
    cache: &mut HashMap<String, Statement>,
    sql: &str,
) -> Result<Statement, StoreError> {
    if let Some(s) = cache.get(sql) {
        return Ok(s.clone());
    }
    let s = client.prepare(&numbered(sql))?;
    cache.insert(sql.to_string(), s.clone());
    Ok(s)
}

/// The version of the store in this database; `None` when it has none (a new database).
fn current_version(client: &mut impl postgres::GenericClient) -> Result<Option<u32>, StoreError> {
    let exists: bool = client.query_one("SELECT to_regclass('kitt_schema') IS NOT NULL", &[])?.try_get(0)?;
    if !exists {
        return Ok(None);
    }
    let v = client.query_opt("SELECT version FROM kitt_schema", &[])?.map(|r| r.try_get::<_, i32>(0)).transpose()?;
    Ok(Some(v.unwrap_or(0).max(0) as u32))
}

/// Brings the store to [`VERSION`]; refuses a store written by a newer kitt.
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    match current_version(client)? {
        Some(v) if v == VERSION => return Ok(()),
        Some(found) if found > VERSION => return Err(StoreError::Newer { found, supported: VERSION }),
        _ => {}
    }
    let mut t = client.transaction()?;
    // Every opener waits here for the one upgrading; after it, the version is current.
    t.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    t.batch_execute("CREATE TABLE IF NOT EXISTS kitt_schema (version INTEGER NOT NULL)")?;
    let found = match t.query_opt("SELECT version FROM kitt_schema", &[])? {
        Some(r) => r.try_get::<_, i32>(0)?.max(0) as u32,
        None => {
            t.execute("INSERT INTO kitt_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    if found > VERSION {
        return Err(StoreError::Newer { found, supported: VERSION });
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        t.batch_execute(m.postgres).map_err(|e| StoreError::Migration { to: i as u32 + 1, reason: pg_message(&e) })?;
    }
    t.execute("UPDATE kitt_schema SET version = $1", &[&(VERSION as i32)])?;
    t.commit()?;
    Ok(())
}

/// The server's message for a database error (the client's own text says only "db error").
fn pg_message(e: &postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string())
}

fn retryable(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres(p)
        if matches!(p.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE))
}

struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

pub(super) struct Postgres {
    /// Always `Some` until `drop` takes it to close the connection off any runtime.
    conn: Option<Conn>,
}

impl Postgres {
    /// Connects to `dsn` and creates or upgrades its store.
    pub(super) fn open(dsn: &str) -> Result<Postgres, StoreError> {
        Postgres::connect(dsn, |_| true).map(|p| p.expect("`create` said yes, so connect opened it"))
    }

    /// Connects to `dsn`; `None` when the database has no store yet (a reader never creates one).
    pub(super) fn open_existing(dsn: &str) -> Result<Option<Postgres>, StoreError> {
        Postgres::connect(dsn, |found| found.is_some())
    }

    /// Connects, and migrates when `open(version found)` says so (else `None`).
    fn connect(dsn: &str, open: impl FnOnce(Option<u32>) -> bool + Send) -> Result<Option<Postgres>, StoreError> {
        let config: postgres::Config = dsn.parse().map_err(|e: postgres::Error| StoreError::Dsn(e.to_string()))?;
        off_runtime(move || {
            let mut client = config.connect(NoTls)?;
            if !open(current_version(&mut client)?) {
                return Ok(None);
            }
            migrate(&mut client)?;
            Ok(Some(Postgres { conn: Some(Conn { client, statements: HashMap::new() }) }))
        })
    }

    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        self.conn.as_mut().ok_or_else(|| StoreError::Dsn("the connection is closed".into()))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Closing blocks on the client's runtime, which may not be dropped inside another.
            off_runtime(move || drop(conn));
        }
    }
}

struct PgTx<'a, 'b> {
    tx: &'a mut postgres::Transaction<'b>,
    statements: &'a mut HashMap<String, Statement>,
}

impl Tx for PgTx<'_, '_> {
    fn execute(&mut self, sql: &str, values: &[Value]) -> Result<u64, StoreError> {
        let s = statement(self.tx, self.statements, sql)?;
        Ok(self.tx.execute(&s, &params(values))?)
    }

    fn query(&mut self, sql: &str, values: &[Value]) -> Result<Vec<Row>, StoreError> {
        let s = statement(self.tx, self.statements, sql)?;
        self.tx.query(&s, &params(values))?.iter().map(row).collect()
    }

    fn lock(&mut self, key: &str) -> Result<(), StoreError> {
        self.tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])?;
        Ok(())
    }
}

impl Backend for Postgres {
    fn version(&mut self) -> Result<u32, StoreError> {
        let conn = self.conn()?;
        off_runtime(|| current_version(&mut conn.client)).map(|v| v.unwrap_or(0))
    }

    fn query(&mut self, sql: &str, values: &[Value]) -> Result<Vec<Row>, StoreError> {
        let Conn { client, statements } = self.conn()?;
        off_runtime(|| {
            let s = statement(client, statements, sql)?;
            client.query(&s, &params(values))?.iter().map(row).collect()
        })
    }

    fn write(&mut self, work: &mut Work<'_>) -> Result<(), StoreError> {
        let Conn { client, statements } = self.conn()?;
        off_runtime(|| {
            let mut tries = 0;
            loop {
                tries += 1;
                let attempt = (|| {
                    let mut tx = client.transaction()?;
                    work(&mut PgTx { tx: &mut tx, statements })?;
                    tx.commit()?;
                    Ok(())
                })();
                match attempt {
                    Err(e) if tries < TRIES && retryable(&e) => continue,
                    other => return other,
                }
            }
        })
    }
}
