//! Units: the plan cut into the pieces an executor places.
//!
//! A unit is, by default, one engine group — its lifecycle steps (pull … stop) and its cells,
//! measured one after another on one engine — or, with `execution.granularity: cell`, one cell
//! on an engine started for it alone. A third kind, a client shard (one share of one cell's
//! load, sent from another process or host), is part of the type so that executors are written
//! against it from the start; the compiler does not create it yet.
//!
//! A unit's id is derived from its steps' keys only (sha256 of the sorted keys), never from its
//! position: an edited suite keeps the ids of the units it did not change, so a resumed run or a
//! fleet finds them again. The run's report step belongs to no unit: it runs after all of them.
//! A unit names what it needs (GPUs, the machine to itself) so that an executor can place it
//! without reading the engine's mode.

use serde::Serialize;

use super::{EngineGroup, Mode, Step, StepKind, key_of};
use crate::manifest::suite::{Execution, Granularity, Isolation};

/// One piece of the plan that one attempt runs from start to end.
#[derive(Debug, Clone, Serialize)]
pub struct Unit {
    /// Short sha256 of the sorted keys of its steps: stable across edits that leave them alone.
    pub id: String,
    #[serde(flatten)]
    pub kind: UnitKind,
    /// Its engine group.
    pub group: usize,
    /// Its cell (cell units and client shards).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell: Option<usize>,
    /// Its steps, in plan order.
    pub steps: Vec<usize>,
    pub needs: Needs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum UnitKind {
    /// An engine group with all its cells.
    Group,
    /// One cell on an engine of its own.
    Cell,
    /// Share `shard` (of `of`) of one cell's load, sent by one client; the shards' request
    /// records together are the cell's.
    ClientShard { shard: u32, of: u32 },
}

impl UnitKind {
    pub fn name(self) -> &'static str {
        match self {
            UnitKind::Group => "group",
            UnitKind::Cell => "cell",
            UnitKind::ClientShard { .. } => "client_shard",
        }
    }
}

/// What a unit needs from the machine that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Needs {
    pub gpus: Gpus,
    /// The machine to itself while it measures (`execution.isolation: host`).
    pub exclusive_host: bool,
    /// How its engine runs: `container` needs Docker, `native` the engine's binary, `endpoint`
    /// only a route to the server, `sidecar` the engine's container beside kitt in one pod.
    pub engine: &'static str,
}

/// The GPUs a unit's engine asks for, from its container `gpus` setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Gpus {
    /// None asked for (`gpus: none`, or an engine kitt does not start in a container).
    None,
    /// Every GPU the machine has, if it has any (`gpus: auto`).
    Auto,
    /// Every GPU of the machine (`gpus: all`).
    All,
    /// These devices (`gpus: "device=0,1"`).
    Devices(Vec<String>),
    /// This many, wherever the cluster places them (a sidecar's `nvidia.com/gpu`).
    Count(u32),
}

impl Gpus {
    fn of(g: &EngineGroup) -> Gpus {
        let gpus = match &g.mode {
            Mode::Container { gpus, .. } => gpus,
            Mode::Sidecar { gpus: 0, .. } => return Gpus::None,
            Mode::Sidecar { gpus, .. } => return Gpus::Count(*gpus),
            _ => return Gpus::None,
        };
        match gpus.as_str() {
            "none" => Gpus::None,
            "auto" => Gpus::Auto,
            "all" => Gpus::All,
            other => {
                let list = other.strip_prefix("device=").unwrap_or(other);
                Gpus::Devices(list.split(',').map(|d| d.trim().to_string()).filter(|d| !d.is_empty()).collect())
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Gpus::None => "none".into(),
            Gpus::Auto => "auto (all, if any)".into(),
            Gpus::All => "all".into(),
            Gpus::Devices(d) => format!("devices {}", d.join(",")),
            Gpus::Count(n) => format!("{n}"),
        }
    }
}

/// Cuts the laid-out steps into units by `execution.granularity`. Every step but the report
/// belongs to exactly one unit.
pub(crate) fn cut(groups: &[EngineGroup], steps: &[Step], execution: &Execution, keys: bool) -> Vec<Unit> {
    let report = |s: &&Step| s.kind != StepKind::Report;
    let mut units: Vec<Unit> = Vec::new();
    match execution.granularity {
        Granularity::Group => {
            for (gi, _) in groups.iter().enumerate() {
                let mine: Vec<usize> =
                    steps.iter().filter(report).filter(|s| s.group == Some(gi)).map(|s| s.id).collect();
                units.push(unit(UnitKind::Group, gi, None, mine, groups, steps, execution, keys));
            }
        }
        Granularity::Cell => {
            // The layout emits each cell's chain contiguously, from its first lifecycle step to
            // its stop (or, for an endpoint, its collect).
            let mut current: Vec<usize> = Vec::new();
            let mut cell = None;
            for s in steps.iter().filter(report) {
                current.push(s.id);
                cell = cell.or(s.cell);
                let ends = s.kind == StepKind::Stop
                    || (s.kind == StepKind::Collect && s.group.is_some_and(|g| groups[g].mode.connects()));
                if ends {
                    let gi = s.group.unwrap_or_default();
                    let ids = std::mem::take(&mut current);
                    units.push(unit(UnitKind::Cell, gi, cell.take(), ids, groups, steps, execution, keys));
                }
            }
        }
    }
    units
}

#[allow(clippy::too_many_arguments)]
fn unit(
    kind: UnitKind,
    group: usize,
    cell: Option<usize>,
    ids: Vec<usize>,
    groups: &[EngineGroup],
    steps: &[Step],
    execution: &Execution,
    keys: bool,
) -> Unit {
    let id = if keys {
        let mut sorted: Vec<&str> = ids.iter().map(|i| steps[*i].key.as_str()).collect();
        sorted.sort_unstable();
        key_of(&serde_json::json!({"unit": sorted}))[..16].to_string()
    } else {
        String::new()
    };
    let g = &groups[group];
    Unit {
        id,
        kind,
        group,
        cell,
        steps: ids,
        needs: Needs {
            gpus: Gpus::of(g),
            exclusive_host: execution.isolation == Isolation::Host,
            engine: g.mode.name(),
        },
    }
}
