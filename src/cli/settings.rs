//! `kitt settings`: the settings in force and where each comes from, and changes to the ones the
//! store keeps (with their history).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{Value as Json, json};

use super::{EXIT_FAILED, Output, print_json};
use crate::settings::{self, Resolved, SettingError};
use crate::store::{self, Store};

#[derive(Debug, Args)]
pub struct SettingsArgs {
    #[command(subcommand)]
    pub command: SettingsCommand,
    /// The store the settings are kept in: a SQLite file or a postgres:// URL (default:
    /// $KITT_STORE, else the default results store).
    #[arg(long, global = true, value_name = "PATH|URL")]
    pub store: Option<PathBuf>,
    /// Pin a setting for this command (KEY=VALUE): it wins over KITT_SETTING_<KEY> and the store.
    #[arg(long, global = true, value_name = "KEY=VALUE")]
    pub pin: Vec<String>,
    #[arg(long, global = true, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// Every setting: its value in force and where it comes from (flag, env, store, default).
    List,
    /// One setting's value in force.
    Get { key: String },
    /// Keep a value in the store (refused while a flag or KITT_SETTING_<KEY> pins the key).
    Set { key: String, value: String },
    /// Remove the store's value: the default (or a pin) applies again.
    Unset { key: String },
    /// Every change made in the store, oldest first: when, by whom, to what.
    History { key: Option<String> },
}

fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("error: {e}");
    EXIT_FAILED
}

fn time_text(ns: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns)).to_string()
}

fn value_text(v: &Json) -> String {
    match v {
        Json::Null => "-".into(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The store's location, or an error when it is off (`set` needs one; reads go on without).
fn location(flag: Option<&Path>) -> Option<store::Location> {
    store::location(flag)
}

fn resolved(args: &SettingsArgs, store: Option<&Store>) -> Result<Vec<Resolved>, i32> {
    let pins = settings::pins(&args.pin).map_err(fail)?;
    let stored = match store {
        Some(s) => s.settings().map_err(|e| fail(format!("results store {}: {e}", s.location())))?,
        None => Default::default(),
    };
    settings::resolve(&pins, &|v| std::env::var(v).ok(), &stored).map_err(fail)
}

pub fn run(args: &SettingsArgs) -> i32 {
    match &args.command {
        SettingsCommand::List | SettingsCommand::Get { .. } | SettingsCommand::History { .. } => read(args),
        SettingsCommand::Set { key, value } => change(args, key, Some(value)),
        SettingsCommand::Unset { key } => change(args, key, None),
    }
    .unwrap_or_else(|code| code)
}

fn read(args: &SettingsArgs) -> Result<i32, i32> {
    let store = match location(args.store.as_deref()) {
        Some(loc) => Store::open_existing(&loc).map_err(|e| fail(format!("results store {loc}: {e}")))?,
        None => None,
    };
    match &args.command {
        SettingsCommand::History { key } => {
            if let Some(k) = key {
                settings::key(k).map_err(fail)?;
            }
            let changes = match &store {
                Some(s) => s.settings_history(key.as_deref()).map_err(fail)?,
                None => Vec::new(),
            };
            match args.output {
                Output::Json => print_json(&changes),
                Output::Text => {
                    for c in &changes {
                        let v = c.value.as_deref().map_or("(unset)".to_string(), |v| {
                            serde_json::from_str::<Json>(v).map_or(v.to_string(), |j| value_text(&j))
                        });
                        println!("{}  {}  {} = {v}", time_text(c.changed_unix_ns), c.actor, c.key);
                    }
                }
            }
        }
        SettingsCommand::Get { key } => {
            let name = settings::key(key).map_err(fail)?.name;
            let all = resolved(args, store.as_ref())?;
            let Some(r) = all.into_iter().find(|r| r.key == name) else {
                return Err(fail(format!("unknown setting `{key}`")));
            };
            match args.output {
                Output::Json => print_json(&r),
                Output::Text => println!("{}", value_text(&r.value)),
            }
        }
        _ => {
            let all = resolved(args, store.as_ref())?;
            match args.output {
                Output::Json => print_json(&all),
                Output::Text => {
                    let width = all.iter().map(|r| r.key.len()).max().unwrap_or(0);
                    let vwidth = all.iter().map(|r| value_text(&r.value).len()).max().unwrap_or(0);
                    for r in &all {
                        let how = match (&r.source, &r.actor, r.changed_unix_ns) {
                            (settings::Source::Store, Some(a), Some(t)) => format!("store ({a}, {})", time_text(t)),
                            (settings::Source::Env, ..) => format!("env ({})", r.env),
                            (s, ..) => s.as_str().to_string(),
                        };
                        let locked = if r.source.pinned() { "  (pinned)" } else { "" };
                        println!("{:width$}  {:vwidth$}  {how}{locked}", r.key, value_text(&r.value));
                    }
                }
            }
        }
    }
    Ok(0)
}

fn change(args: &SettingsArgs, key: &str, value: Option<&String>) -> Result<i32, i32> {
    let k = settings::key(key).map_err(fail)?;
    let parsed = value.map(|v| settings::parse(k, v, "given to `kitt settings set`")).transpose().map_err(fail)?;
    let Some(loc) = location(args.store.as_deref()) else {
        return Err(fail("the results store is turned off (KITT_STORE=off): give --store PATH|URL"));
    };
    let mut store = Store::open(&loc).map_err(|e| fail(format!("results store {loc}: {e}")))?;
    // A pinned key is locked: the store's value would not be the one in force.
    let before = resolved(args, Some(&store))?.into_iter().find(|r| r.key == k.name);
    if let Some(r) = before.as_ref().filter(|r| r.source.pinned()) {
        let by = if r.source == settings::Source::Env { r.env.clone() } else { format!("--pin {}", k.name) };
        return Err(fail(SettingError::Pinned { key: k.name.to_string(), by }));
    }
    let actor = settings::actor();
    let json = parsed.as_ref().map(Json::to_string);
    store.change_setting(k.name, json.as_deref(), &actor).map_err(|e| fail(format!("results store {loc}: {e}")))?;
    let was = before.map_or(Json::Null, |r| r.value);
    let now = match &parsed {
        Some(v) => v.clone(),
        None => serde_json::from_str(k.default).unwrap_or(Json::Null),
    };
    // Announced on stderr, so that a log of who changed what is a redirect away.
    eprintln!("{}: {} → {} (by {actor}, in {loc})", k.name, value_text(&was), value_text(&now));
    if args.output == Output::Json {
        print_json(&json!({"key": k.name, "value": now, "was": was, "actor": actor, "stored": parsed.is_some()}));
    }
    Ok(0)
}
