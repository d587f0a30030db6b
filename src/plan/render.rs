//! Printing a plan: text (a tree per engine group), JSON (the value the executor consumes),
//! Graphviz DOT, and its units (`kitt plan --units`: what an executor places and what each needs).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::unit::Needs;
use super::{Mode, Plan, StepKey, StepKind};

/// What is known about each step from an existing run (for `kitt plan` on a resumable suite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    Pending,
    Reused,
}

/// The plan as indented text; `states` marks reused steps when a resumable run exists.
pub fn text(plan: &Plan, states: &BTreeMap<StepKey, StepState>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "suite `{}` ({}): {} engine group(s), {} cell(s), {} step(s)",
        plan.suite.name,
        plan.suite.file.display(),
        plan.groups.len(),
        plan.cells.len(),
        plan.steps.len()
    );
    let e = &plan.execution;
    let _ = writeln!(
        out,
        "execution: isolation={:?}, max_parallel={}, retries={}, step_timeout={}, on_failure={:?}, max_error_rate={}",
        e.isolation,
        e.max_parallel,
        e.retries,
        humantime::format_duration(e.step_timeout.0),
        e.on_failure,
        e.max_error_rate
    );
    if e.granularity == crate::manifest::suite::Granularity::Cell {
        out.push_str("granularity: cell (each cell on an engine started for it alone)\n");
    }
    out.push_str("templates:\n");
    for t in &plan.templates {
        let _ = writeln!(out, "  {:<9} {:<12} {}", t.kind.to_lowercase(), t.name, t.origin);
    }
    let reused = states.values().filter(|s| **s == StepState::Reused).count();
    if reused > 0 {
        let _ = writeln!(
            out,
            "resume: {reused} step(s) reused from the unfinished run, {} pending",
            plan.steps.len() - reused
        );
    }
    for (gi, g) in plan.groups.iter().enumerate() {
        let steps: Vec<_> = plan.steps.iter().filter(|s| s.group == Some(gi)).collect();
        let how = match &g.mode {
            Mode::Container { image, .. } => format!("container {image}"),
            Mode::Native { argv, .. } => {
                format!("native {}", argv.first().map(String::as_str).unwrap_or(""))
            }
            Mode::Sidecar { image, .. } => format!("sidecar {image}"),
            Mode::Endpoint { url, .. } => format!("endpoint {url}"),
        };
        let _ = writeln!(out, "\nengine group {} [{}, template {}] ({} steps)", g.id, how, g.template, steps.len());
        for s in steps {
            let detail = match s.kind {
                StepKind::Benchmark | StepKind::Collect => s.cell.map(|c| plan.cells[c].label()).unwrap_or_default(),
                StepKind::Warmup => g.warmup.as_ref().map(|w| format!("{} requests", w.requests)).unwrap_or_default(),
                StepKind::Connect => match &g.mode {
                    Mode::Endpoint { url, headers, .. } => {
                        let names: Vec<&str> = headers.keys().map(String::as_str).collect();
                        if names.is_empty() { url.clone() } else { format!("{url} (headers: {})", names.join(", ")) }
                    }
                    Mode::Sidecar { port, .. } => format!("sidecar on 127.0.0.1:{port}, started by Kubernetes"),
                    _ => String::new(),
                },
                StepKind::Start => match &g.mode {
                    Mode::Native { argv, .. } => argv.join(" "),
                    Mode::Container { args, .. } => args.join(" "),
                    Mode::Sidecar { .. } | Mode::Endpoint { .. } => String::new(),
                },
                _ => String::new(),
            };
            let mut flags = Vec::new();
            if s.lease.host {
                flags.push("host lease");
            } else if s.lease.engine {
                flags.push("engine lease");
            }
            if s.service {
                flags.push("service");
            }
            if states.get(&s.key) == Some(&StepState::Reused) {
                flags.push("reused");
            }
            let flags = if flags.is_empty() { String::new() } else { format!("  [{}]", flags.join(", ")) };
            let _ = writeln!(out, "  {:<9} {}  {}{}", s.kind.name(), &s.key[..12], detail, flags);
            // A cell sent by several clients: each shard's share.
            if let (StepKind::Benchmark, Some(cell)) = (s.kind, s.cell.map(|c| &plan.cells[c]))
                && let Some(clients) = &cell.clients
            {
                let min = clients.min.map(|m| format!(", completes with {m} or more")).unwrap_or_default();
                let _ =
                    writeln!(out, "            {} client processes on the host running the cell{min}:", clients.count);
                for k in 0..clients.count {
                    let _ = writeln!(
                        out,
                        "            client shard {k} of {}: {}",
                        clients.count,
                        clients.share(k, cell.load.as_ref())
                    );
                }
            }
        }
    }
    if let Some(r) = plan.steps.iter().find(|s| s.kind == StepKind::Report) {
        let _ = writeln!(out, "\nreport    {}  {}", &r.key[..12], plan.step_label(r));
    }
    out
}

/// One unit as `kitt plan --units --output json` prints it.
#[derive(Debug, Serialize)]
pub struct UnitView<'a> {
    pub id: &'a str,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<[u32; 2]>,
    /// The engine group's id (`engine/model`).
    pub group: &'a str,
    /// The cell's label (cell units and client shards).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
    pub needs: &'a Needs,
    pub steps: Vec<UnitStep<'a>>,
}

#[derive(Debug, Serialize)]
pub struct UnitStep<'a> {
    pub id: usize,
    pub kind: &'static str,
    pub key: &'a str,
    pub label: String,
}

/// The units of `plan`, with their steps spelled out.
pub fn units(plan: &Plan) -> Vec<UnitView<'_>> {
    plan.units
        .iter()
        .map(|u| UnitView {
            id: &u.id,
            kind: u.kind.name(),
            shard: match u.kind {
                super::UnitKind::ClientShard { shard, of } => Some([shard, of]),
                _ => None,
            },
            group: &plan.groups[u.group].id,
            cell: u.cell.map(|c| plan.cells[c].label()),
            needs: &u.needs,
            steps: u
                .steps
                .iter()
                .map(|i| {
                    let s = &plan.steps[*i];
                    UnitStep { id: s.id, kind: s.kind.name(), key: &s.key, label: plan.step_label(s) }
                })
                .collect(),
        })
        .collect()
}

/// The units of `plan` as text: each with what it needs and its steps.
pub fn units_text(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "suite `{}` ({}): {} unit(s) of granularity {}",
        plan.suite.name,
        plan.suite.file.display(),
        plan.units.len(),
        match plan.execution.granularity {
            crate::manifest::suite::Granularity::Group => "group",
            crate::manifest::suite::Granularity::Cell => "cell",
        }
    );
    for u in units(plan) {
        let what = match (&u.cell, u.shard) {
            (Some(c), Some([i, n])) => format!("{} · {c} · shard {}/{n}", u.group, i + 1),
            (Some(c), None) => format!("{} · {c}", u.group),
            (None, _) => u.group.to_string(),
        };
        let _ = writeln!(out, "\nunit {} [{}] {what}", u.id, u.kind);
        let _ = writeln!(
            out,
            "  needs: gpus {}, engine {}, {}",
            u.needs.gpus.describe(),
            u.needs.engine,
            if u.needs.exclusive_host { "the host to itself while measuring" } else { "a shared host" }
        );
        for s in &u.steps {
            let short = s.key.get(..12).unwrap_or(s.key);
            let label = if matches!(s.kind, "benchmark" | "collect") { s.label.as_str() } else { "" };
            let _ = writeln!(out, "  {:<9} {short}  {label}", s.kind);
        }
    }
    if let Some(r) = plan.steps.iter().find(|s| s.kind == StepKind::Report) {
        let _ =
            writeln!(out, "\nafter every unit: report {}  {}", r.key.get(..12).unwrap_or(&r.key), plan.step_label(r));
    }
    out
}

/// Graphviz DOT of the step graph, one cluster per engine group.
pub fn dot(plan: &Plan) -> String {
    let mut out = String::from("digraph plan {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n");
    for (gi, g) in plan.groups.iter().enumerate() {
        let _ = writeln!(out, "  subgraph cluster_{gi} {{\n    label=\"{}\";", escape(&g.id));
        for s in plan.steps.iter().filter(|s| s.group == Some(gi)) {
            let label = match s.cell {
                Some(c) => format!("{}\\n{}", s.kind.name(), escape(&plan.cells[c].label())),
                None => s.kind.name().to_string(),
            };
            let _ = writeln!(out, "    s{} [label=\"{label}\"];", s.id);
        }
        out.push_str("  }\n");
    }
    for s in plan.steps.iter().filter(|s| s.group.is_none()) {
        let _ = writeln!(out, "  s{} [label=\"{}\"];", s.id, s.kind.name());
    }
    for s in &plan.steps {
        for d in &s.deps {
            let _ = writeln!(out, "  s{d} -> s{};", s.id);
        }
    }
    out.push_str("}\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
