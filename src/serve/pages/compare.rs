//! `/compare?ids=A,B,…`: results or runs side by side. The first is the baseline; each other is
//! compared against it by the `kitt compare` engine (deltas, tests, Holm-adjusted verdicts,
//! differing facts), and the plots overlay every side: a line per result.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;
use serde_json::{Value as Json, json};

use super::super::App;
use super::super::api::{blocking, valid_id};
use super::super::problem::Problem;
use super::super::tokens::Caller;
use super::{query_pairs, shown};
use crate::compare::{Side, Verdict, compare, items::Items};
use crate::store::Record;

/// The most sides one page compares.
const MAX_SIDES: usize = 8;

fn verdict_class(v: Verdict) -> &'static str {
    match v {
        Verdict::Better => "better",
        Verdict::Worse => "worse",
        Verdict::Changed => "changed",
        _ => "neutral",
    }
}

/// One side: its label, the records the compare engine weighs (a result's repetitions), and the
/// records drawn (a result alone; a run's every result).
struct Resolved {
    label: String,
    records: Vec<Record>,
    drawn: Vec<Record>,
}

fn resolve(app: &App, spec: &str) -> Result<Resolved, Problem> {
    let store = app.store()?;
    let (label, records) =
        crate::cli::compare::resolve(spec, store.as_deref(), &app.cfg.runs_root).map_err(Problem::not_found)?;
    let drawn = match (spec.parse::<i64>(), &store) {
        (Ok(id), Some(store)) => store.record(id).map_err(Problem::internal)?.into_iter().collect(),
        _ => records.clone(),
    };
    Ok(Resolved { label, records, drawn })
}

/// The deltas and verdicts of `b` against `a`, as the page shows them.
fn versus(a: &Resolved, b: &Resolved) -> Json {
    let items = [Items::read(&a.records), Items::read(&b.records)];
    let sa = Side { label: a.label.clone(), records: &a.records, items: &items[0] };
    let sb = Side { label: b.label.clone(), records: &b.records, items: &items[1] };
    match compare(&sa, &sb, &[]) {
        Ok(c) => {
            let pairs: Vec<Json> = c
                .pairs
                .iter()
                .map(|p| {
                    let metrics: Vec<Json> = p
                        .metrics
                        .iter()
                        .filter(|m| m.a.is_some() || m.b.is_some())
                        .map(|m| {
                            json!({
                                "name": m.name, "unit": m.unit,
                                "a": m.a.as_ref().map(|s| s.mean), "b": m.b.as_ref().map(|s| s.mean),
                                "delta": m.delta, "delta_pct": m.delta_pct, "p": m.p_adjusted,
                                "verdict": m.verdict.text(), "class": verdict_class(m.verdict),
                            })
                        })
                        .collect();
                    json!({"label": p.label, "runs": p.runs, "failed": p.failed, "metrics": metrics})
                })
                .collect();
            let facts: Vec<Json> = c
                .facts
                .iter()
                .filter(|f| f.differs)
                .map(|f| json!({"fact": f.fact, "a": f.a.join(", "), "b": f.b.join(", ")}))
                .collect();
            json!({
                "a": a.label, "b": b.label, "pairs": pairs, "facts": facts, "only_a": c.only_a, "only_b": c.only_b,
                "single_run": c.single_run, "alpha": c.alpha, "error": null,
            })
        }
        Err(e) => json!({"a": a.label, "b": b.label, "pairs": [], "facts": [], "only_a": [], "only_b": [],
            "single_run": false, "alpha": 0.05, "error": e.to_string()}),
    }
}

pub(super) async fn show(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, uri: Uri) -> Response {
    let pairs = query_pairs(&uri);
    let download = pairs.iter().any(|(k, _)| k == "download");
    let ids: Vec<String> = pairs
        .into_iter()
        .filter(|(k, _)| k == "ids")
        .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect::<Vec<_>>())
        .collect();
    let data = {
        let app = app.clone();
        blocking(move || {
            if ids.len() < 2 {
                return Ok(json!({"ids": ids.join(","), "sides": [], "versus": [], "drawn": [], "empty": true}));
            }
            if ids.len() > MAX_SIDES {
                return Err(Problem::bad_request(format!("ids: {} of them; at most {MAX_SIDES}", ids.len())));
            }
            if let Some(bad) = ids.iter().find(|i| !valid_id(i)) {
                return Err(Problem::bad_request(format!(
                    "ids: `{}` is not a result id or a run id",
                    bad.chars().take(64).collect::<String>()
                )));
            }
            let sides: Vec<Resolved> = ids.iter().map(|i| resolve(&app, i)).collect::<Result<_, _>>()?;
            let versus: Vec<Json> = sides[1..].iter().map(|b| versus(&sides[0], b)).collect();
            let drawn: Vec<Json> = sides
                .iter()
                .map(|s| {
                    let cells: Vec<Json> =
                        s.drawn.iter().map(|r| json!({"cell": r.cell, "metrics": r.metrics})).collect();
                    json!({"label": s.label, "cells": cells})
                })
                .collect();
            let listed: Vec<Json> = sides
                .iter()
                .zip(&ids)
                .map(|(s, id)| json!({"id": id, "label": s.label, "results": s.records.len()}))
                .collect();
            Ok(json!({"ids": ids.join(","), "sides": listed, "versus": versus, "drawn": drawn, "empty": false}))
        })
        .await
    };
    match data {
        Ok(d) if download && d["empty"] == false => {
            let mut res = super::standalone(&app, &caller, "compare", "Compare", d);
            res.headers_mut().insert(
                axum::http::header::CONTENT_DISPOSITION,
                axum::http::HeaderValue::from_static("attachment; filename=\"kitt-compare.html\""),
            );
            res
        }
        other => shown(&app, &caller, "compare", "Compare", other),
    }
}
