//! Results and reports.
//!
//! One documented, versioned result model (`CellResult`, `RunReport`; schema in
//! schemas/result.schema.json) that every reporter and the results store read. `json` and `csv`
//! are serializers in code, never string templates; the terminal summary is a view of the same
//! model.

use std::collections::BTreeMap;
use std::fmt::Write as _;

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
    for c in &report.cells {
        let m = &c.metrics;
        let mut cell = c.cell.benchmark.clone();
        for (k, v) in &c.cell.swept {
            let _ = write!(cell, " {k}={}", crate::template::scalar_text(v));
        }
        let _ = write!(cell, " #{}", c.cell.run_index);
        let status = match (c.status, c.provenance.reused) {
            (CellStatus::Ok, true) => "ok (reused)".to_string(),
            (CellStatus::Ok, false) => "ok".to_string(),
            (CellStatus::Failed, _) => "FAILED".to_string(),
        };
        rows.push([
            c.cell.engine.clone(),
            c.cell.model.clone(),
            cell,
            status,
            format!("{}/{}", f(metric(m, "/ok"), 0), f(metric(m, "/requests"), 0)),
            f(metric(m, "/request_throughput"), 2),
            f(metric(m, "/output_token_throughput"), 1),
            format!("{}/{}", f(metric(m, "/ttft_ms/p50"), 1), f(metric(m, "/ttft_ms/p99"), 1)),
            f(metric(m, "/itl_ms/p50"), 2),
            f(metric(m, "/e2e_ms/p50"), 1),
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
    for c in &report.cells {
        if let Some(n) = c.metrics.pointer("/stopped_early").and_then(Json::as_u64).filter(|n| *n > 0) {
            let _ = writeln!(
                out,
                "WARNING {} {}: {n} request(s) generated fewer tokens than asked although told not to stop; its speed is not comparable",
                c.cell.engine, c.cell.benchmark
            );
        }
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

/// A handlebars helper that writes the text `f` makes of its parameters.
fn text_helper(f: fn(&handlebars::Helper) -> String) -> Box<dyn handlebars::HelperDef + Send + Sync> {
    Box::new(
        move |h: &handlebars::Helper,
              _: &handlebars::Handlebars,
              _: &handlebars::Context,
              _: &mut handlebars::RenderContext,
              out: &mut dyn handlebars::Output|
              -> handlebars::HelperResult {
            out.write(&f(h))?;
            Ok(())
        },
    )
}

/// `fixed VALUE DIGITS`: a number with that many decimals, `-` when absent.
fn fixed(h: &handlebars::Helper) -> String {
    let digits = h.param(1).and_then(|p| p.value().as_u64()).unwrap_or(2) as usize;
    h.param(0).and_then(|p| p.value().as_f64()).map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// `params MAP`: `k=v k2=v2`.
fn params(h: &handlebars::Helper) -> String {
    match h.param(0).map(|p| p.value()) {
        Some(Json::Object(m)) => {
            m.iter().map(|(k, v)| format!("{k}={}", crate::template::scalar_text(v))).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    }
}

/// Renders a templated reporter over the result model.
///
/// The template sees the `RunReport` fields, `cell_count`, and `benchmarks`: the cells grouped
/// by benchmark instance, in order. Helpers: `fixed VALUE DIGITS` (a number with that many decimals, `-` when
/// absent) and `params MAP` (`k=v k2=v2`). Missing values render empty rather than failing: a
/// failed cell has no latencies, and the report must still be written.
pub fn render_template(template: &str, report: &RunReport) -> Result<String, String> {
    let mut hb = handlebars::Handlebars::new();
    hb.register_escape_fn(handlebars::no_escape);
    hb.register_helper("fixed", text_helper(fixed));
    hb.register_helper("params", text_helper(params));
    let mut benchmarks: Vec<Json> = Vec::new();
    for c in &report.cells {
        let cell = serde_json::to_value(c).map_err(|e| e.to_string())?;
        match benchmarks.iter_mut().find(|b| b["name"] == c.cell.benchmark.as_str()) {
            Some(b) => b["cells"].as_array_mut().map_or((), |a| a.push(cell)),
            None => benchmarks
                .push(serde_json::json!({"name": c.cell.benchmark, "template": c.cell.template, "cells": [cell]})),
        }
    }
    let mut data = serde_json::to_value(report).map_err(|e| e.to_string())?;
    data["benchmarks"] = Json::Array(benchmarks);
    data["cell_count"] = report.cells.len().into();
    hb.render_template(template, &data).map_err(|e| e.to_string())
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
