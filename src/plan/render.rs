//! Printing a plan: text (a tree per engine group), JSON (the value the executor consumes) and
//! Graphviz DOT.

use std::collections::BTreeMap;
use std::fmt::Write as _;

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
                    _ => String::new(),
                },
                StepKind::Start => match &g.mode {
                    Mode::Native { argv, .. } => argv.join(" "),
                    Mode::Container { args, .. } => args.join(" "),
                    Mode::Endpoint { .. } => String::new(),
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
        }
    }
    if let Some(r) = plan.steps.iter().find(|s| s.kind == StepKind::Report) {
        let _ = writeln!(out, "\nreport    {}  {}", &r.key[..12], plan.step_label(r));
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
