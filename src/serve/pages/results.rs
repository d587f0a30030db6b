//! The results pages: the filtered, keyset-paginated list (with boxes to tick for compare), one
//! result with its percentiles, plots and facts, and its CSV.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

use super::super::App;
use super::super::api::{blocking, instant};
use super::super::problem::Problem;
use super::super::tokens::Caller;
use super::{query_pairs, shown, url_encode};
use crate::store::{Filter, Record};

/// A result as the lists show it.
pub(super) fn row(r: &Record) -> Json {
    let swept: Vec<String> =
        r.cell.swept.iter().map(|(k, v)| format!("{k}={}", crate::template::scalar_text(v))).collect();
    json!({
        "id": r.id, "run_id": r.run_id, "suite": r.suite, "model": r.cell.model, "engine": r.cell.engine,
        "engine_template": r.cell.engine_template, "benchmark": r.cell.benchmark, "swept": swept.join(" "),
        "run_index": r.cell.run_index, "ok": r.status == crate::report::CellStatus::Ok, "error": r.error,
        "throughput": r.metric("/request_throughput"), "ttft_p50": r.metric("/ttft_ms/p50"),
        "e2e_p50": r.metric("/e2e_ms/p50"), "tokens_per_s": r.metric("/output_token_throughput"),
        "accuracy": r.metric("/eval/accuracy").or_else(|| r.metric("/accuracy")),
        "started_unix_ns": r.started_unix_ns, "fingerprint_hash": r.fingerprint_hash,
    })
}

/// The filters a list takes, as given (to fill the form again and build the next page's link).
const FILTERS: &[&str] = &["suite", "engine", "model", "benchmark", "fingerprint", "since", "until"];

pub(super) async fn list(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, uri: Uri) -> Response {
    let q = query_pairs(&uri);
    let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let data = {
        let app = app.clone();
        let parsed = (|| -> Result<Filter, Problem> {
            let newest_first = match get("order").as_deref() {
                None | Some("newest") => true,
                Some("oldest") => false,
                Some(other) => return Err(Problem::bad_request(format!("order: `{other}` is not newest or oldest"))),
            };
            let after = get("after")
                .map(|a| a.parse::<i64>().map_err(|_| Problem::bad_request(format!("after: `{a}` is not a result id"))))
                .transpose()?;
            Ok(Filter {
                suite: get("suite"),
                engine: get("engine"),
                model: get("model"),
                benchmark: get("benchmark"),
                fingerprint: get("fingerprint"),
                since_unix_ns: get("since").map(|s| instant("since", &s)).transpose()?,
                until_unix_ns: get("until").map(|s| instant("until", &s)).transpose()?,
                run_id: get("run"),
                newest_first,
                after_id: after,
                ..Filter::default()
            })
        })();
        let given: Vec<(String, String)> =
            q.iter().filter(|(k, _)| FILTERS.contains(&k.as_str()) || k == "order" || k == "run").cloned().collect();
        blocking(move || {
            let mut filter = parsed?;
            let size = page_size(&app);
            filter.limit = Some(size);
            let (rows, facets) = match app.store()? {
                Some(store) => (
                    store.records(&filter).map_err(Problem::internal)?.iter().map(row).collect::<Vec<_>>(),
                    facets(&app, &store)?,
                ),
                None => (Vec::new(), Default::default()),
            };
            let base: String =
                given.iter().map(|(k, v)| format!("{}={}&", url_encode(k), url_encode(v))).collect::<String>();
            let next = (rows.len() == size as usize)
                .then(|| rows.last().and_then(|r| r["id"].as_i64()))
                .flatten()
                .map(|last| format!("/results?{base}after={last}"));
            let value = |k: &str| given.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let form: serde_json::Map<String, Json> =
                FILTERS.iter().map(|k| (k.to_string(), json!(value(k).unwrap_or_default()))).collect();
            Ok(json!({
                "rows": rows, "facets": facets, "form": form, "next": next,
                "first": if filter.after_id.is_some() { Some(format!("/results?{}", base.trim_end_matches('&'))) } else { None },
                "oldest": !filter.newest_first, "run": value("run"), "page_size": size,
                "store": app.cfg.store.is_some(),
            }))
        })
        .await
    };
    shown(&app, &caller, "results", "Results", data)
}

/// The values the filters can take, read again only when the store's count or last id moved.
fn facets(app: &App, store: &crate::store::Store) -> Result<crate::store::Facets, Problem> {
    let seen = (store.count().map_err(Problem::internal)?, store.last_result_id().map_err(Problem::internal)?);
    let lock = || app.facets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((at, f)) = lock().as_ref()
        && *at == seen
    {
        return Ok(f.clone());
    }
    let f = store.facets().map_err(Problem::internal)?;
    *lock() = Some((seen, f.clone()));
    Ok(f)
}

/// The `page_size` setting in force (50 when it cannot be read).
fn page_size(app: &App) -> u32 {
    super::super::api::settings_list(app)
        .ok()
        .and_then(|s| s.into_iter().find(|r| r.key == "page_size").and_then(|r| r.value.as_u64()))
        .map_or(50, |n| n.clamp(1, u64::from(super::super::api::MAX_PAGE)) as u32)
}

/// The latency metrics a result's percentile table shows.
const LATENCIES: &[(&str, &str)] =
    &[("ttft_ms", "TTFT"), ("itl_ms", "ITL"), ("tpot_ms", "TPOT"), ("e2e_ms", "e2e latency")];

fn record(app: &App, id: &str) -> Result<Record, Problem> {
    let n = id.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        Problem::bad_request(format!("`{}` is not a result id", id.chars().take(64).collect::<String>()))
    })?;
    let store = app.store()?.ok_or_else(|| Problem::not_found(format!("no result {n}: there is no results store")))?;
    store.record(n).map_err(Problem::internal)?.ok_or_else(|| Problem::not_found(format!("no result {n}")))
}

pub(super) async fn show(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let data = {
        let app = app.clone();
        blocking(move || {
            let r = record(&app, &id)?;
            let latencies: Vec<Json> = LATENCIES
                .iter()
                .filter(|(m, _)| r.metrics[*m].is_object())
                .map(|(m, label)| json!({"name": label, "metric": m, "d": r.metrics[*m]}))
                .collect();
            let scalars: Vec<Json> = r
                .metrics
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, v)| v.is_number() || v.is_string() || v.is_boolean())
                        .map(|(k, v)| json!({"name": k, "value": crate::template::scalar_text(v)}))
                        .collect()
                })
                .unwrap_or_default();
            let cell = json!([{"cell": r.cell, "metrics": r.metrics}]);
            Ok(json!({
                "row": row(&r), "latencies": latencies, "scalars": scalars, "cells": cell,
                "facts": r.facts, "params": r.cell.params, "sampling": r.cell.sampling,
                "fingerprint": r.fingerprint, "key": r.key, "finished_unix_ns": r.finished_unix_ns,
            }))
        })
        .await
    };
    shown(&app, &caller, "result", "Result", data)
}

/// Every scalar of a result's metrics, one `path,value` line each (nested objects flattened
/// with `/`).
pub(super) async fn csv(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let made = {
        let app = app.clone();
        blocking(move || {
            let r = record(&app, &id)?;
            let mut lines = vec!["metric,value".to_string()];
            flatten("", &r.metrics, &mut lines);
            Ok((r.id.unwrap_or_default(), lines.join("\n") + "\n"))
        })
        .await
    };
    match made {
        Ok((id, text)) => {
            let mut res = text.into_response();
            let h = res.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"kitt-result-{id}.csv\"")) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            res
        }
        Err(p) => super::error_page(&app, Some(&caller), &p),
    }
}

fn flatten(prefix: &str, v: &Json, out: &mut Vec<String>) {
    match v {
        Json::Object(m) => {
            for (k, v) in m {
                flatten(&format!("{prefix}{}{k}", if prefix.is_empty() { "" } else { "/" }), v, out);
            }
        }
        Json::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}/{i}"), v, out);
            }
        }
        other => {
            let text = crate::template::scalar_text(other);
            let quoted =
                if text.contains([',', '"', '\n']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text };
            out.push(format!("{prefix},{quoted}"));
        }
    }
}
