//! Results and reports.
//!
//! One documented, versioned result model (`CellResult`, `RunReport`; schema in
//! schemas/result.schema.json) that every reporter and the results store read. `json` and `csv`
//! are serializers in code, never string templates; the terminal summary is a view of the same
//! model.

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub mod html;
pub(crate) mod plots;
mod svg;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// Version of the result model; bump on any incompatible change.
pub const RESULT_SCHEMA: &str = "kitt.result/v1";
/// Version of the metric definitions (docs/metrics.md); an observed fact of every run.
pub const METRICS_SCHEMA_VERSION: u32 = 1;

/// What identifies a cell across runs (not its key, which changes with an image).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct CellIdentity {
    pub model: String,
    pub engine: String,
    pub engine_template: String,
    pub benchmark: String,
    pub template: String,
    pub params: BTreeMap<String, Json>,
    pub swept: BTreeMap<String, Json>,
    pub run_index: u32,
    pub sampling: BTreeMap<String, Json>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CellStatus {
    Ok,
    /// The cell ran but broke its error budget, or could not run.
    Failed,
}

/// Where a result came from and what was observed while producing it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Provenance {
    pub run_id: String,
    /// The benchmark step's key.
    pub key: String,
    /// 0 for the first try, n for the n-th retry.
    pub attempt: u32,
    /// Finished by an earlier kitt process of this run and reused on resume.
    pub reused: bool,
    pub started_unix_ns: u64,
    pub finished_unix_ns: u64,
    /// Observed facts: kitt and metrics versions, the machine, the engine's reported version.
    pub facts: BTreeMap<String, String>,
    /// Facts that changed during the run, accepted with `--accept-drift`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    /// Whether every prompt had exactly the requested token count (engine tokenizer).
    pub prompts_exact: bool,
    /// What the cell was measured as part of: its engine group (after its siblings, on one
    /// engine) or itself alone (`cell`: on an engine started for it). Results older than the
    /// field were all `group`.
    #[serde(default)]
    pub granularity: crate::manifest::suite::Granularity,
}

/// The result of one cell.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct CellResult {
    pub schema: String,
    pub cell: CellIdentity,
    pub status: CellStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The load metrics (see docs/metrics.md for every definition).
    pub metrics: Json,
    /// Host, engine and GPU resources sampled during the measuring window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::collect::ResourceSummary>,
    /// What the engine's own Prometheus metrics say changed during the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_metrics: Option<crate::collect::prom::Delta>,
    pub provenance: Provenance,
}

/// The report of a whole run: `report/result.json`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunReport {
    pub schema: String,
    pub run_id: String,
    pub suite: String,
    pub suite_file: String,
    pub kitt_version: String,
    pub facts: BTreeMap<String, String>,
    /// The machine the run measured on (`kitt fingerprint`; docs/hardware.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<crate::fingerprint::Fingerprint>,
    pub cells: Vec<CellResult>,
    pub failed_cells: usize,
    /// Cells repeated with `runs: N` (N ≥ 2): their key metrics over the repetitions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repetitions: Vec<Repetitions>,
}

/// One cell's repetitions summarized: mean, sample stddev, min, max and a Student-t 95 %
/// confidence interval of each key metric (`kitt compare` tests differences between such sets).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Repetitions {
    pub engine: String,
    pub model: String,
    pub benchmark: String,
    pub swept: BTreeMap<String, Json>,
    /// Successful repetitions summarized (failed ones are left out).
    pub runs: usize,
    /// By metric name (`ttft.p50`, `request_throughput`, `accuracy`, …): `{n, mean, stddev, min,
    /// max, ci95}`.
    pub metrics: BTreeMap<String, Json>,
}

/// The repetitions of every cell that ran more than once.
pub fn repetitions(cells: &[CellResult]) -> Vec<Repetitions> {
    let mut groups: Vec<(String, Vec<&CellResult>)> = Vec::new();
    for c in cells.iter().filter(|c| c.status == CellStatus::Ok) {
        let key = crate::compare::Identity::of(&c.cell).key();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(c),
            None => groups.push((key, vec![c])),
        }
    }
    let pointers = crate::compare::metric::KEY_METRICS
        .iter()
        .map(|k| (k.name, k.pointer))
        .chain(std::iter::once(("accuracy", "/accuracy")));
    let pointers: Vec<(&str, &str)> = pointers.collect();
    groups
        .into_iter()
        .filter(|(_, v)| v.len() >= 2)
        .map(|(_, v)| {
            let metrics = pointers
                .iter()
                .filter_map(|(name, ptr)| {
                    let values: Vec<f64> =
                        v.iter().filter_map(|c| c.metrics.pointer(ptr).and_then(Json::as_f64)).collect();
                    let s = crate::compare::stats::Summary::of(&values)?;
                    Some((name.to_string(), serde_json::to_value(s).ok()?))
                })
                .collect();
            Repetitions {
                engine: v[0].cell.engine.clone(),
                model: v[0].cell.model.clone(),
                benchmark: v[0].cell.benchmark.clone(),
                swept: v[0].cell.swept.clone(),
                runs: v.len(),
                metrics,
            }
        })
        .collect()
}

/// The JSON Schema of `RunReport`, pretty, ending in a newline.
pub fn schema() -> String {
    let s = schemars::schema_for!(RunReport);
    let mut v = serde_json::to_value(s).unwrap_or(Json::Null);
    v["$id"] = "https://kitt.dev/schemas/result.schema.json".into();
    v["title"] = format!("kitt run report ({RESULT_SCHEMA})").into();
    let mut text = serde_json::to_string_pretty(&v).unwrap_or_default();
    text.push('\n');
    text
}

fn metric(m: &Json, path: &str) -> Option<f64> {
    m.pointer(path).and_then(Json::as_f64)
}

/// Columns of the CSV report and the terminal table: (header, JSON pointer into metrics).
const COLUMNS: &[(&str, &str)] = &[
    ("requests", "/requests"),
    ("errors", "/errors"),
    ("error_rate", "/error_rate"),
    ("duration_s", "/duration_s"),
    ("req_per_s", "/request_throughput"),
    ("output_tok_per_s", "/output_token_throughput"),
    ("ttft_p50_ms", "/ttft_ms/p50"),
    ("ttft_p99_ms", "/ttft_ms/p99"),
    ("itl_p50_ms", "/itl_ms/p50"),
    ("itl_p99_ms", "/itl_ms/p99"),
    ("tpot_p50_ms", "/tpot_ms/p50"),
    ("e2e_p50_ms", "/e2e_ms/p50"),
    ("e2e_p99_ms", "/e2e_ms/p99"),
    ("output_tokens", "/output_tokens/total"),
];

fn params_text(p: &BTreeMap<String, Json>) -> String {
    p.iter().map(|(k, v)| format!("{k}={}", crate::template::scalar_text(v))).collect::<Vec<_>>().join(" ")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// One row per cell (a serializer: every field escaped, numbers unformatted).
pub fn csv(report: &RunReport) -> String {
    let mut out = String::from("model,engine,benchmark,template,params,run_index,status,reused");
    for (h, _) in COLUMNS {
        out.push(',');
        out.push_str(h);
    }
    out.push('\n');
    for c in &report.cells {
        let fields = [
            c.cell.model.clone(),
            c.cell.engine.clone(),
            c.cell.benchmark.clone(),
            c.cell.template.clone(),
            params_text(&c.cell.params),
            c.cell.run_index.to_string(),
            format!("{:?}", c.status).to_lowercase(),
            c.provenance.reused.to_string(),
        ];
        out.push_str(&fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
        for (_, ptr) in COLUMNS {
            out.push(',');
            if let Some(v) = metric(&c.metrics, ptr) {
                out.push_str(&v.to_string());
            }
        }
        out.push('\n');
    }
    out
}

/// Percentile `p` of latency `name` as the summary shows it: from the schedule in open-loop cells,
/// `≥ ` where it is only a lower bound, `-` when absent.
fn latency(m: &Json, name: &str, p: &str, digits: usize) -> String {
    let d = m.pointer(&format!("/from_schedule/{name}")).filter(|d| d.is_object()).or_else(|| m.get(name));
    let Some(v) = d.and_then(|d| d.get(p)).and_then(Json::as_f64) else { return "-".into() };
    let bound = d
        .and_then(|d| d.pointer("/censored/lower_bounds"))
        .and_then(Json::as_array)
        .is_some_and(|b| b.iter().any(|x| x == p));
    format!("{}{v:.digits$}", if bound { "≥ " } else { "" })
}

/// What a reader of a cell's numbers must know before trusting them, one sentence each: the
/// client limited the schedule, the engine's counts disagree with the tokenizer's, connections
/// were resent on, requests timed out, answers stopped early, or the cell was cut short.
pub fn warnings(m: &Json) -> Vec<String> {
    let mut out = Vec::new();
    let n = |p: &str| m.pointer(p).and_then(Json::as_u64).unwrap_or(0);
    if m.pointer("/arrivals/client_limited").and_then(Json::as_bool) == Some(true) {
        out.push(
            "the client could not keep the schedule (schedule lag or a wait for a `max_concurrency` slot above its bound): \
             send-based latencies understate what users would see; read the from-schedule ones"
                .to_string(),
        );
    }
    if m.get("usage_agrees").and_then(Json::as_bool) == Some(false) {
        out.push("the engine's `usage` token counts disagree with the tokenizer's count of the answers".to_string());
    }
    if let retries @ 1.. = n("/connection_retries") {
        out.push(format!(
            "{retries} request(s) were resent once on a new connection (the engine had closed an idle kept-alive connection)"
        ));
    }
    if let timeouts @ 1.. = n("/errors_by_kind/timeout") {
        out.push(format!("{timeouts} request(s) timed out at a deadline; their latencies enter as lower bounds (≥)"));
    }
    if let early @ 1.. = n("/stopped_early") {
        out.push(format!(
            "{early} request(s) generated fewer tokens than asked although told not to stop; its speed is not comparable"
        ));
    }
    if m.get("truncated").and_then(Json::as_bool) == Some(true) {
        out.push("the cell was cut short by `step_timeout`: its numbers are partial".to_string());
    }
    out
}

/// The human summary table printed at the end of `kitt apply`.
pub fn summary(report: &RunReport) -> String {
    let mut rows: Vec<[String; 10]> = vec![[
        "engine".into(),
        "model".into(),
        "cell".into(),
        "status".into(),
        "ok/total".into(),
        "req/s".into(),
        "out tok/s".into(),
        "TTFT p50/p99 ms".into(),
        "ITL p50 ms".into(),
        "e2e p50 ms".into(),
    ]];
    let f = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| format!("{v:.d$}"));
    // Cells measured after a change accepted with `--accept-drift`, and what changed.
    let mut drifted: Vec<String> = Vec::new();
    for c in &report.cells {
        let m = &c.metrics;
        let mut cell = c.cell.benchmark.clone();
        for (k, v) in &c.cell.swept {
            let _ = write!(cell, " {k}={}", crate::template::scalar_text(v));
        }
        let _ = write!(cell, " #{}", c.cell.run_index);
        let mut status = match (c.status, c.provenance.reused) {
            (CellStatus::Ok, true) => "ok (reused)".to_string(),
            (CellStatus::Ok, false) => "ok".to_string(),
            (CellStatus::Failed, _) => "FAILED".to_string(),
        };
        if !c.provenance.drift.is_empty() {
            status.push_str(" (drift)");
            drifted.push(format!("{} {cell}: {}", c.cell.engine, c.provenance.drift.join("; ")));
        }
        rows.push([
            c.cell.engine.clone(),
            c.cell.model.clone(),
            cell,
            status,
            format!("{}/{}", f(metric(m, "/ok"), 0), f(metric(m, "/requests"), 0)),
            f(metric(m, "/request_throughput"), 2),
            f(metric(m, "/output_token_throughput"), 1),
            format!("{}/{}", latency(m, "ttft_ms", "p50", 1), latency(m, "ttft_ms", "p99", 1)),
            f(metric(m, "/itl_ms/p50"), 2),
            latency(m, "e2e_ms", "p50", 1),
        ]);
    }
    let widths: Vec<usize> = (0..10).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (ri, r) in rows.iter().enumerate() {
        let line: Vec<String> = r.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if ri == 0 {
            let _ = writeln!(out, "{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
        }
    }
    for r in &report.repetitions {
        let mut label = r.benchmark.clone();
        for (k, v) in &r.swept {
            let _ = write!(label, " {k}={}", crate::template::scalar_text(v));
        }
        let show = |name: &str, digits: usize| {
            let m = r.metrics.get(name)?;
            let (mean, sd) = (m["mean"].as_f64()?, m["stddev"].as_f64().unwrap_or(0.0));
            let ci = m["ci95"].as_array().and_then(|c| Some((c.first()?.as_f64()?, c.get(1)?.as_f64()?)));
            Some(match ci {
                Some((lo, hi)) => {
                    format!("{name} {mean:.digits$} ± {sd:.digits$} (95 % CI {lo:.digits$}–{hi:.digits$})")
                }
                None => format!("{name} {mean:.digits$}"),
            })
        };
        let parts: Vec<String> =
            [show("ttft.p50", 2), show("request_throughput", 2), show("accuracy", 3)].into_iter().flatten().collect();
        let _ = writeln!(out, "REPEATED {} {} × {} runs: {}", r.engine, label, r.runs, parts.join(", "));
    }
    for c in &report.cells {
        let Some(e) = c.metrics.get("eval") else { continue };
        let pct = |p: &str| e.pointer(p).and_then(Json::as_f64).map_or("-".into(), |v| format!("{:.1} %", v * 100.0));
        let _ = writeln!(
            out,
            "EVAL {} {} #{}: accuracy {} ± {} over {} answered items{}, unparseable {}, errors {} ({} of items sent)",
            c.cell.engine,
            c.cell.benchmark,
            c.cell.run_index,
            pct("/accuracy"),
            pct("/stderr"),
            e.pointer("/counts/scored").and_then(Json::as_u64).unwrap_or(0),
            e.get("macro_accuracy")
                .and_then(Json::as_f64)
                .map_or(String::new(), |m| format!(" (macro {:.1} %)", m * 100.0)),
            pct("/unparseable_share"),
            e.pointer("/counts/errors").and_then(Json::as_u64).unwrap_or(0),
            pct("/error_share"),
        );
    }
    for d in &drifted {
        let _ = writeln!(out, "DRIFT {d} (accepted with --accept-drift)");
    }
    for c in &report.cells {
        for w in warnings(&c.metrics) {
            let _ = writeln!(out, "WARNING {} {} #{}: {w}", c.cell.engine, c.cell.benchmark, c.cell.run_index);
        }
    }
    if report.cells.iter().any(|c| c.metrics.get("from_schedule").is_some()) {
        let _ = writeln!(
            out,
            "open-loop cells: TTFT and e2e are measured from each request's scheduled send time (docs/metrics.md)"
        );
    }
    if report.cells.iter().any(|c| {
        ["/ttft_ms", "/e2e_ms"].iter().any(|p| c.metrics.pointer(p).is_some_and(|d| d.get("censored").is_some()))
    }) {
        let _ = writeln!(
            out,
            "≥: a lower bound; requests cut at their deadline are in the latencies at the time they were cut"
        );
    }
    for c in report.cells.iter().filter(|c| c.status == CellStatus::Failed) {
        let _ = writeln!(
            out,
            "FAILED {} {}: {}",
            c.cell.engine,
            c.cell.benchmark,
            c.error.as_deref().unwrap_or("unknown error")
        );
    }
    out
}

/// A handlebars helper that writes the text `f` makes of its parameters, escaped like any
/// `{{value}}` (HTML-escaped in an html reporter unless written `{{{…}}}`; as is in a template one).
fn text_helper(f: fn(&handlebars::Helper) -> String) -> Box<dyn handlebars::HelperDef + Send + Sync> {
    Box::new(
        move |h: &handlebars::Helper,
              r: &handlebars::Handlebars,
              _: &handlebars::Context,
              rc: &mut handlebars::RenderContext,
              out: &mut dyn handlebars::Output|
              -> handlebars::HelperResult {
            let text = f(h);
            if rc.is_disable_escape() {
                out.write(&text)?;
            } else {
                out.write(&r.get_escape_fn()(&text))?;
            }
            Ok(())
        },
    )
}

/// `fixed VALUE DIGITS`: a number with that many decimals, `-` when absent.
fn fixed(h: &handlebars::Helper) -> String {
    let digits = h.param(1).and_then(|p| p.value().as_u64()).unwrap_or(2) as usize;
    h.param(0).and_then(|p| p.value().as_f64()).map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// `percent SHARE DIGITS`: a share (0.25) as a percentage (`25.0 %`), `-` when absent.
fn percent(h: &handlebars::Helper) -> String {
    let digits = h.param(1).and_then(|p| p.value().as_u64()).unwrap_or(1) as usize;
    h.param(0).and_then(|p| p.value().as_f64()).map_or_else(|| "-".to_string(), |v| format!("{:.digits$} %", v * 100.0))
}

/// `bytes N`: a byte count in binary units (`23.5 GiB`), `-` when absent.
fn bytes(h: &handlebars::Helper) -> String {
    let Some(mut v) = h.param(0).and_then(|p| p.value().as_f64()) else { return "-".to_string() };
    let mut unit = 0;
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{v} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// `params MAP`: `k=v k2=v2`; a scalar as itself (a stage's `synchronous` profile).
fn params(h: &handlebars::Helper) -> String {
    match h.param(0).map(|p| p.value()) {
        Some(Json::Object(m)) => {
            m.iter().map(|(k, v)| format!("{k}={}", crate::template::scalar_text(v))).collect::<Vec<_>>().join(" ")
        }
        Some(v @ (Json::String(_) | Json::Number(_) | Json::Bool(_))) => crate::template::scalar_text(v),
        _ => String::new(),
    }
}

/// `join LIST SEPARATOR`: the items of a list as text (`", "` by default).
fn join(h: &handlebars::Helper) -> String {
    let sep = h.param(1).and_then(|p| p.value().as_str()).unwrap_or(", ");
    match h.param(0).map(|p| p.value()) {
        Some(Json::Array(items)) => items.iter().map(crate::template::scalar_text).collect::<Vec<_>>().join(sep),
        _ => String::new(),
    }
}

/// A registry with the report helpers; `escape` is the escaping of `{{value}}` output.
pub(crate) fn report_registry(escape: fn(&str) -> String) -> handlebars::Handlebars<'static> {
    let mut hb = handlebars::Handlebars::new();
    hb.register_escape_fn(escape);
    hb.register_helper("fixed", text_helper(fixed));
    hb.register_helper("percent", text_helper(percent));
    hb.register_helper("bytes", text_helper(bytes));
    hb.register_helper("params", text_helper(params));
    hb.register_helper("join", text_helper(join));
    hb
}

/// What a report template sees: the report's own fields (a `RunReport` as JSON), `cell_count`,
/// `benchmarks` (the cells grouped by benchmark instance, in order: `name`, `template`, `cells`,
/// and whether any of its cells `has_stages`, `has_resources`, `has_engine_metrics`,
/// `has_eval`), and the distinct `engines` (`name`, `template`) and `models` (names) in order of
/// appearance. A cell's eval score is its `eval` (also when a result keeps it in `metrics.eval`).
fn template_context(mut data: Json) -> Json {
    let mut benchmarks: Vec<Json> = Vec::new();
    let mut engines: Vec<Json> = Vec::new();
    let mut models: Vec<Json> = Vec::new();
    if let Some(cells) = data["cells"].as_array_mut() {
        for c in cells.iter_mut().filter(|c| !c["eval"].is_object() && c["metrics"]["eval"].is_object()) {
            c["eval"] = c["metrics"]["eval"].clone();
        }
    }
    let mut all_warnings: Vec<Json> = Vec::new();
    if let Some(cells) = data["cells"].as_array_mut() {
        for c in cells.iter_mut() {
            let w = warnings(&c["metrics"]);
            for text in &w {
                let id = &c["cell"];
                all_warnings.push(serde_json::json!({
                    "engine": id["engine"], "model": id["model"], "benchmark": id["benchmark"],
                    "swept": id["swept"], "run_index": id["run_index"], "text": text,
                }));
            }
            c["warnings"] = serde_json::json!(w);
        }
    }
    data["warnings"] = Json::Array(all_warnings);
    let cells = data["cells"].as_array().cloned().unwrap_or_default();
    for cell in &cells {
        let id = &cell["cell"];
        match benchmarks.iter_mut().find(|b| b["name"] == id["benchmark"]) {
            Some(b) => b["cells"].as_array_mut().map_or((), |a| a.push(cell.clone())),
            None => benchmarks
                .push(serde_json::json!({"name": id["benchmark"], "template": id["template"], "cells": [cell]})),
        }
        if !engines.iter().any(|e| e["name"] == id["engine"]) {
            engines.push(serde_json::json!({"name": id["engine"], "template": id["engine_template"]}));
        }
        if !models.contains(&id["model"]) {
            models.push(id["model"].clone());
        }
    }
    for b in &mut benchmarks {
        let cells = b["cells"].as_array().cloned().unwrap_or_default();
        let any = |f: &dyn Fn(&Json) -> bool| Json::Bool(cells.iter().any(f));
        b["has_stages"] = any(&|c| c["metrics"]["stages"].as_array().is_some_and(|s| !s.is_empty()));
        b["has_resources"] = any(&|c| c["resources"].is_object());
        b["has_engine_metrics"] = any(&|c| c["engine_metrics"].is_object());
        b["has_eval"] = any(&|c| c["eval"].is_object());
    }
    data["cell_count"] = cells.len().into();
    data["benchmarks"] = Json::Array(benchmarks);
    data["engines"] = Json::Array(engines);
    data["models"] = Json::Array(models);
    data
}

/// Renders a templated reporter over the result model.
///
/// The template sees what `template_context` builds. Helpers: `fixed VALUE DIGITS` (a number
/// with that many decimals, `-` when absent), `percent SHARE DIGITS`, `bytes N`, `params MAP`
/// (`k=v k2=v2`) and `join LIST SEP`. Output is not escaped (a template reporter writes any
/// text format; the `html` format escapes, see `html::render`). Missing values render empty
/// rather than failing: a failed cell has no latencies, and the report must still be written.
pub fn render_template(template: &str, report: &RunReport) -> Result<String, String> {
    let data = serde_json::to_value(report).map_err(|e| e.to_string())?;
    report_registry(handlebars::no_escape).render_template(template, &template_context(data)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_escapes_fields() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
