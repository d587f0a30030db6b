//! `execution.agents`: which `kitt agent` hosts may take a run's units (`executor: agents`).
//! Placement only: none of it enters a step's key.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use super::decode::{Cx, Decode, Dur, Fields, Spanned};
use super::diag::Diagnostic;
use super::yaml::Node;

/// What a run asks of the agents that take its units.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentsBlock {
    /// Labels an agent's token must have, all of them (`kitt serve token create --labels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub select: BTreeMap<String, Spanned<String>>,
    /// Labels an agent must have, all of them, to take a cell's client shards (a cell with
    /// `clients: N` against an `endpoint` runs its shards on other agents; default: any agent
    /// with a free slot).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub clients_select: BTreeMap<String, Spanned<String>>,
    /// A glob (`*`) the agent's hardware fingerprint, hash or identity, must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub fingerprint: Option<Spanned<String>>,
    /// Every unit of the run on agents of one fingerprint (the first agent's), so that its
    /// numbers compare (default true).
    #[serde(default = "yes")]
    pub same_fingerprint: bool,
    /// GPUs each unit takes on its agent (default 0: the engine's own `--gpus` decide).
    #[serde(default)]
    pub gpus: u32,
    /// How long an agent's silence is borne before its unit is placed again (default 45s; at
    /// least 3 heartbeats).
    #[serde(default = "default_lease")]
    #[schemars(with = "super::decode::Dur")]
    pub lease: Dur,
    /// Attempts per unit before it fails (default 3).
    #[serde(default = "three")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
}

fn yes() -> bool {
    true
}

fn three() -> u32 {
    3
}

fn default_lease() -> Dur {
    Dur(std::time::Duration::from_secs(45))
}

impl Default for AgentsBlock {
    fn default() -> Self {
        AgentsBlock {
            select: BTreeMap::new(),
            clients_select: BTreeMap::new(),
            fingerprint: None,
            same_fingerprint: true,
            gpus: 0,
            lease: default_lease(),
            max_attempts: 3,
        }
    }
}

fn label_ok(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl Decode for AgentsBlock {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let d = AgentsBlock::default();
        let mut f = Fields::open(node, cx, "`execution.agents`")?;
        let select: Option<BTreeMap<String, Spanned<String>>> = f.opt(cx, "select");
        let clients_select: Option<BTreeMap<String, Spanned<String>>> = f.opt(cx, "clients_select");
        let lease: Option<Spanned<Dur>> = f.opt(cx, "lease");
        let max_attempts: Option<Spanned<u32>> = f.opt(cx, "max_attempts");
        let b = AgentsBlock {
            select: select.unwrap_or_default(),
            clients_select: clients_select.unwrap_or_default(),
            fingerprint: f.opt(cx, "fingerprint"),
            same_fingerprint: f.opt(cx, "same_fingerprint").unwrap_or(d.same_fingerprint),
            gpus: f.opt(cx, "gpus").unwrap_or(d.gpus),
            lease: lease.as_ref().map_or(d.lease, |l| l.value),
            max_attempts: max_attempts.as_ref().map_or(d.max_attempts, |m| m.value),
        };
        f.finish(cx);
        let mut ok = true;
        for (field, k, v) in b
            .select
            .iter()
            .map(|(k, v)| ("select", k, v))
            .chain(b.clients_select.iter().map(|(k, v)| ("clients_select", k, v)))
        {
            if !label_ok(k) || !label_ok(&v.value) {
                ok = false;
                cx.error(
                    Diagnostic::new(v.pos, format!("`{field}` in `execution.agents`: `{k}: {}` is not a label", v.value))
                        .help("labels are 1 to 63 of a-z, 0-9, `.`, `_`, `-`, as `kitt serve token create --labels` takes them"),
                );
            }
        }
        if let Some(l) = lease.filter(|l| l.value.0 < std::time::Duration::from_secs(3)) {
            ok = false;
            cx.error(
                Diagnostic::new(l.pos, "`lease` in `execution.agents` must be at least 3s")
                    .help("a lease spans several heartbeats; the default is 45s"),
            );
        }
        if let Some(m) = max_attempts.filter(|m| !(1..=100).contains(&m.value)) {
            ok = false;
            cx.error(Diagnostic::new(m.pos, "`max_attempts` in `execution.agents` must be 1 to 100"));
        }
        ok.then_some(b)
    }
}
