//! Laying out the step graph of compiled engine groups and cells, with their keys.
//!
//! Per engine group: pull (container) → start, or connect (endpoint) → setup → warmup →
//! benchmark + collect per cell → stop; then one report after everything. With host isolation
//! one engine group runs at a time, in suite order (a group's start waits for the previous stop).

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use super::*;
use crate::manifest::load::LoadSpec;
use crate::manifest::suite::Isolation;

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
    request: &'a Option<RequestTemplate>,
    /// An eval cell's rendered eval (absent for load cells, whose keys it leaves unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    eval: &'a Option<crate::eval::EvalSpec>,
}

/// Lays out the step DAG: per group pull → start → setup → warmup → benchmark → collect → stop,
/// then one report after everything.
pub(crate) fn layout(
    groups: &[EngineGroup],
    cells: &[Cell],
    isolation: Isolation,
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
    for (gi, g) in groups.iter().enumerate() {
        let gk = |kind: &str| maybe_key(keys, &json!({"kind": kind, "group": g.key}));
        let mut ready: Vec<usize> = Vec::new();
        let mut start = None;
        if let Mode::Container { image, pull, .. } = &g.mode {
            let pk = maybe_key(keys, &json!({"kind": "pull", "image": image, "policy": pull}));
            ready = vec![push(&mut steps, StepKind::Pull, pk, Some(gi), None, vec![])];
        }
        if matches!(g.mode, Mode::Endpoint { .. }) {
            // Nothing to start or stop: check the server and record what it says about itself.
            ready = vec![push(&mut steps, StepKind::Connect, gk("connect"), Some(gi), None, ready.clone())];
        } else {
            let mut deps = ready.clone();
            if isolation == Isolation::Host {
                deps.extend(previous_stop);
            }
            let s = push(&mut steps, StepKind::Start, gk("start"), Some(gi), None, deps);
            start = Some(s);
            ready = vec![s];
        }
        if !g.setup.is_empty() {
            ready = vec![push(&mut steps, StepKind::Setup, gk("setup"), Some(gi), None, ready.clone())];
        }
        if g.warmup.is_some() {
            ready = vec![push(&mut steps, StepKind::Warmup, gk("warmup"), Some(gi), None, ready.clone())];
        }
        let mut collects = Vec::new();
        for (ci, cell) in cells.iter().enumerate().filter(|(_, c)| c.group == gi) {
            let bkey = maybe_key(
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
                },
            );
            let ckey = maybe_key(keys, &json!({"kind": "collect", "benchmark": bkey}));
            let b = push(&mut steps, StepKind::Benchmark, bkey, Some(gi), Some(ci), ready.clone());
            collects.push(push(&mut steps, StepKind::Collect, ckey, Some(gi), Some(ci), vec![b]));
        }
        if let Some(s) = start {
            let mut deps = vec![s];
            deps.extend(&collects);
            let stop = push(&mut steps, StepKind::Stop, gk("stop"), Some(gi), None, deps);
            previous_stop = Some(stop);
            all_ends.push(stop);
        } else {
            all_ends.extend(&collects);
        }
    }
    let names: Vec<&str> = reporters.iter().map(|r| r.name.as_str()).collect();
    let rk = maybe_key(keys, &json!({"kind": "report", "reporters": names}));
    push(&mut steps, StepKind::Report, rk, None, None, all_ends);
    steps
}

/// A step's key, or nothing when the plan is only checked (`kitt validate` needs the steps, not
/// their keys, and hashing is the largest part of compiling a large suite).
fn maybe_key(keys: bool, v: &impl serde::Serialize) -> StepKey {
    if keys { key_of(v) } else { String::new() }
}
