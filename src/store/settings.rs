//! The settings the store keeps: one row per key set (`settings`) and one row per change
//! (`settings_history`), written together in one transaction. Values are JSON text; what a key
//! means and which values it takes is `crate::settings`'s business, never the store's.

use std::collections::BTreeMap;

use super::backend::{Tx, Value};
use super::{Store, StoreError, now_ns};

/// A key's value as the store has it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredSetting {
    /// The value as JSON text.
    pub value: String,
    pub changed_unix_ns: u64,
    /// Who changed it (a user name, or a token's name).
    pub actor: String,
}

/// One change to a setting; `value: None` is an unset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SettingChange {
    pub key: String,
    pub value: Option<String>,
    pub changed_unix_ns: u64,
    pub actor: String,
}

pub(super) fn history_insert(tx: &mut dyn Tx, c: &SettingChange) -> Result<u64, StoreError> {
    tx.execute(
        "INSERT INTO settings_history (key, value, changed_unix_ns, actor) VALUES (?, ?, ?, ?)
         ON CONFLICT (key, changed_unix_ns, actor) DO NOTHING",
        &[
            Value::text(&c.key),
            Value::opt_text(c.value.as_deref()),
            Value::u64(c.changed_unix_ns),
            Value::text(&c.actor),
        ],
    )
}

pub(super) fn put_setting(tx: &mut dyn Tx, key: &str, s: &StoredSetting) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO settings (key, value, changed_unix_ns, actor) VALUES (?, ?, ?, ?)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, changed_unix_ns = excluded.changed_unix_ns,
         actor = excluded.actor",
        &[Value::text(key), Value::text(&s.value), Value::u64(s.changed_unix_ns), Value::text(&s.actor)],
    )?;
    Ok(())
}

impl Store {
    /// Every key set in the store.
    pub fn settings(&self) -> Result<BTreeMap<String, StoredSetting>, StoreError> {
        self.select("SELECT key, value, changed_unix_ns, actor FROM settings ORDER BY key", &[])?
            .iter()
            .map(|r| {
                Ok((r.text(0)?, StoredSetting { value: r.text(1)?, changed_unix_ns: r.u64(2)?, actor: r.text(3)? }))
            })
            .collect()
    }

    /// Sets `key` to `value` (JSON text), or removes it (`None`), and records the change with
    /// its time and `actor`; returns the value it had.
    pub fn change_setting(
        &mut self,
        key: &str,
        value: Option<&str>,
        actor: &str,
    ) -> Result<Option<StoredSetting>, StoreError> {
        let change = SettingChange {
            key: key.to_string(),
            value: value.map(str::to_string),
            changed_unix_ns: now_ns(),
            actor: actor.to_string(),
        };
        self.write(|tx| {
            tx.lock(&format!("setting {key}"))?;
            let before = tx
                .query("SELECT value, changed_unix_ns, actor FROM settings WHERE key = ?", &[Value::text(key)])?
                .first()
                .map(|r| {
                    Ok::<_, StoreError>(StoredSetting {
                        value: r.text(0)?,
                        changed_unix_ns: r.u64(1)?,
                        actor: r.text(2)?,
                    })
                })
                .transpose()?;
            match &change.value {
                Some(v) => put_setting(
                    tx,
                    key,
                    &StoredSetting {
                        value: v.clone(),
                        changed_unix_ns: change.changed_unix_ns,
                        actor: change.actor.clone(),
                    },
                )?,
                None => {
                    tx.execute("DELETE FROM settings WHERE key = ?", &[Value::text(key)])?;
                }
            }
            history_insert(tx, &change)?;
            Ok(before)
        })
    }

    /// Every change, oldest first (of one key, or of all).
    pub fn settings_history(&self, key: Option<&str>) -> Result<Vec<SettingChange>, StoreError> {
        let (sql, params) = match key {
            Some(k) => ("WHERE key = ? ", vec![Value::text(k)]),
            None => ("", vec![]),
        };
        self.select(
            &format!(
                "SELECT key, value, changed_unix_ns, actor FROM settings_history {sql}ORDER BY changed_unix_ns, id"
            ),
            &params,
        )?
        .iter()
        .map(|r| {
            Ok(SettingChange { key: r.text(0)?, value: r.opt_text(1)?, changed_unix_ns: r.u64(2)?, actor: r.text(3)? })
        })
        .collect()
    }
}
