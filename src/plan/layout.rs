//! Laying out the step graph of compiled engine groups and cells, with their keys.
//!
//! Per engine group: pull (container) → start, or connect (endpoint) → setup → warmup →
//! benchmark + collect per cell → stop; then one report after everything. With host isolation
//! one engine group runs at a time, in suite order (a group's start waits for the previous stop).
//!
//! With `execution.granularity: cell` every cell gets that whole chain for itself: its engine
//! is pulled, started, set up, warmed up and stopped for it alone. Those lifecycle steps are keyed
//! by their cell too, and the cell's benchmark key records the granularity, since a cell measured
//! on a fresh engine is a different measurement from one measured after its siblings.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use super::*;
use crate::manifest::load::LoadSpec;
use crate::manifest::suite::{Granularity, Isolation};

/// What a benchmark step's key hashes (field order is part of the key format).
#[derive(serde::Serialize)]
struct BenchmarkKey<'a> {
    kind: &'static str,
    group: &'a str,
    model: &'a str,
    engine: &'a str,
    benchmark: &'a str,
    template: &'a str,
    params: &'a BTreeMap<String, Json>,
    run_index: u32,
    sampling: &'a BTreeMap<String, Json>,
    load: &'a Option<LoadSpec>,
    request: &'a Option<std::sync::Arc<RequestTemplate>>,
    /// An eval cell's rendered eval (absent for load cells, whose keys it leaves unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    eval: &'a Option<crate::eval::EvalSpec>,
    /// `cell` when the cell runs on an engine of its own (absent for groups, whose keys it
    /// leaves unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    granularity: Option<Granularity>,
    /// Client processes, when more than one (absent for one client, whose keys it leaves
    /// unchanged): where the load comes from changes what is measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    clients: Option<crate::plan::CellClients>,
}

/// Lays out the step DAG: per group pull → start → setup → warmup → benchmark → collect → stop,
/// then one report after everything.
pub(crate) fn layout(
    groups: &[EngineGroup],
    cells: &[Cell],
    isolation: Isolation,
    granularity: Granularity,
    reporters: &[ReporterRef],
    keys: bool,
) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let push = |steps: &mut Vec<Step>,
                kind: StepKind,
                key: StepKey,
                group: Option<usize>,
                cell: Option<usize>,
                deps: Vec<usize>|
     -> usize {
        let id = steps.len();
        let measures = kind.measures();
        steps.push(Step {
            id,
            kind,
            key,
            group,
            cell,
            deps,
            service: kind == StepKind::Start,
            lease: Lease {
                engine: measures && isolation != Isolation::None,
                host: measures && isolation == Isolation::Host,
            },
        });
        id
    };
    let mut previous_stop: Option<usize> = None;
    let mut all_ends = Vec::new();
    let by_cell = granularity == Granularity::Cell;
    for (gi, g) in groups.iter().enumerate() {
        let mut chain = |steps: &mut Vec<Step>, cells: &[(usize, &Cell)]| {
            // The cell a per-cell lifecycle belongs to, by its benchmark key.
            let bkeys: Vec<StepKey> = cells.iter().map(|(_, c)| benchmark_key(keys, g, c, by_cell)).collect();
            let lifecycle = |kind: &str| match (by_cell, bkeys.first()) {
                (true, Some(b)) => maybe_key(keys, &json!({"kind": kind, "group": g.key, "cell": b})),
                _ => maybe_key(keys, &json!({"kind": kind, "group": g.key})),
            };
            let mut ready: Vec<usize> = Vec::new();
            let mut start = None;
            if let Mode::Container { image, pull, .. } = &g.mode {
                let pk = maybe_key(keys, &json!({"kind": "pull", "image": image, "policy": pull}));
                ready = vec![push(steps, StepKind::Pull, pk, Some(gi), None, vec![])];
            }
            if g.mode.connects() {
                // Nothing to start or stop: check the server and record what it says about itself.
                ready = vec![push(steps, StepKind::Connect, lifecycle("connect"), Some(gi), None, ready.clone())];
            } else {
                let mut deps = ready.clone();
                if isolation == Isolation::Host {
                    deps.extend(previous_stop);
                }
                let s = push(steps, StepKind::Start, lifecycle("start"), Some(gi), None, deps);
                start = Some(s);
                ready = vec![s];
            }
            if !g.setup.is_empty() {
                ready = vec![push(steps, StepKind::Setup, lifecycle("setup"), Some(gi), None, ready.clone())];
            }
            if g.warmup.is_some() {
                ready = vec![push(steps, StepKind::Warmup, lifecycle("warmup"), Some(gi), None, ready.clone())];
            }
            let mut collects = Vec::new();
            for ((ci, _), bkey) in cells.iter().zip(bkeys.iter().cloned()) {
                let ckey = maybe_key(keys, &json!({"kind": "collect", "benchmark": bkey}));
                let b = push(steps, StepKind::Benchmark, bkey, Some(gi), Some(*ci), ready.clone());
                collects.push(push(steps, StepKind::Collect, ckey, Some(gi), Some(*ci), vec![b]));
            }
            if let Some(s) = start {
                let mut deps = vec![s];
                deps.extend(&collects);
                let stop = push(steps, StepKind::Stop, lifecycle("stop"), Some(gi), None, deps);
                previous_stop = Some(stop);
                all_ends.push(stop);
            } else {
                all_ends.extend(&collects);
            }
        };
        let mine: Vec<(usize, &Cell)> = cells.iter().enumerate().filter(|(_, c)| c.group == gi).collect();
        if by_cell {
            for one in &mine {
                chain(&mut steps, std::slice::from_ref(one));
            }
        } else {
            chain(&mut steps, &mine);
        }
    }
    let names: Vec<&str> = reporters.iter().map(|r| r.name.as_str()).collect();
    let rk = maybe_key(keys, &json!({"kind": "report", "reporters": names}));
    push(&mut steps, StepKind::Report, rk, None, None, all_ends);
    steps
}

/// A benchmark step's key: its cell, its group and, when the cell has an engine of its own, the
/// granularity.
fn benchmark_key(keys: bool, g: &EngineGroup, cell: &Cell, by_cell: bool) -> StepKey {
    maybe_key(
        keys,
        &BenchmarkKey {
            kind: "benchmark",
            group: &g.key,
            model: &cell.model,
            engine: &cell.engine,
            benchmark: &cell.benchmark,
            template: &cell.template,
            params: &cell.params,
            run_index: cell.run_index,
            sampling: &cell.sampling,
            load: &cell.load,
            request: &cell.request,
            eval: &cell.eval,
            granularity: by_cell.then_some(Granularity::Cell),
            clients: cell.clients,
        },
    )
}

/// The key a benchmark step would have with one client: its prompts and schedule come from it,
/// so a cell sent by several clients sends exactly what the one-client cell sends.
pub(crate) fn one_client_key(g: &EngineGroup, cell: &Cell, by_cell: bool) -> StepKey {
    let one = Cell { clients: None, ..cell.clone() };
    benchmark_key(true, g, &one, by_cell)
}

/// A step's key, or nothing when the plan is only checked (`kitt validate` needs the steps, not
/// their keys, and hashing is the largest part of compiling a large suite).
fn maybe_key(keys: bool, v: &impl serde::Serialize) -> StepKey {
    if keys { key_of(v) } else { String::new() }
}
