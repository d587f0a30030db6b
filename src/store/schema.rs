//! The store's schema as an ordered list of migrations, numbered by SQLite's `user_version`.
//!
//! Migration `i` (0-based) takes a store from version `i` to `i + 1`; a store is upgraded by
//! running every migration past its version in one write transaction, so a kill or an error
//! leaves it at its old version, never half-upgraded. A migration is never edited once shipped:
//! a change of layout is a new entry at the end. Version 1 is the first layout (results only);
//! version 2 adds the observed facts, the fingerprint and the `runs` table, and backfills
//! `runs` from the rows a version-1 store already has (re-import a run to fill its facts).

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Every migration in order; the store's version is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: one row per cell result.
    "CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        cell_key TEXT NOT NULL,
        suite TEXT NOT NULL,
        model TEXT NOT NULL,
        engine TEXT NOT NULL,
        engine_template TEXT NOT NULL,
        benchmark TEXT NOT NULL,
        benchmark_template TEXT NOT NULL,
        params TEXT NOT NULL,
        run_index INTEGER NOT NULL,
        status TEXT NOT NULL,
        metrics TEXT NOT NULL,
        started_unix_ns INTEGER NOT NULL,
        finished_unix_ns INTEGER NOT NULL,
        run_dir TEXT NOT NULL,
        UNIQUE (run_id, cell_key)
    );",
    // 2: engine facts, the machine, and one row per run.
    "ALTER TABLE results ADD COLUMN swept TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE results ADD COLUMN sampling TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE results ADD COLUMN error TEXT;
    ALTER TABLE results ADD COLUMN facts TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE results ADD COLUMN engine_image TEXT;
    ALTER TABLE results ADD COLUMN engine_image_id TEXT;
    ALTER TABLE results ADD COLUMN engine_image_digest TEXT;
    ALTER TABLE results ADD COLUMN engine_version TEXT;
    ALTER TABLE results ADD COLUMN fingerprint TEXT;
    ALTER TABLE results ADD COLUMN fingerprint_hash TEXT;
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        suite TEXT NOT NULL,
        suite_file TEXT NOT NULL DEFAULT '',
        kitt_version TEXT NOT NULL DEFAULT '',
        fingerprint TEXT,
        fingerprint_hash TEXT,
        hardware TEXT,
        facts TEXT NOT NULL DEFAULT '{}',
        started_unix_ns INTEGER NOT NULL,
        indexed_unix_ns INTEGER NOT NULL,
        run_dir TEXT NOT NULL
    );
    INSERT INTO runs (run_id, suite, started_unix_ns, indexed_unix_ns, run_dir)
        SELECT run_id, MIN(suite), COALESCE(MIN(NULLIF(started_unix_ns, 0)), 0), 0, MIN(run_dir)
        FROM results GROUP BY run_id;
    CREATE INDEX results_run ON results (run_id);
    CREATE INDEX results_cell ON results (model, engine, benchmark);
    CREATE INDEX runs_started ON runs (started_unix_ns);",
];

/// The version this kitt writes.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

fn version(conn: &Connection) -> Result<u32, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// Brings the store to [`VERSION`]; refuses a store written by a newer kitt.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql).map_err(|e| StoreError::Migration { to: i as u32 + 1, source: e })?;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    Ok(())
}
