//! The runs pages: the list, and one run live — its units, its step tree per engine with states
//! and timings, the running cell's counters, the log tail, and the cancel and resume forms. The
//! page is whole without JavaScript (reload to see more); web/assets/app.js follows the run's
//! event stream and updates it in place.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use serde_json::{Value as Json, json};

use super::super::App;
use super::super::api::{blocking, cancel_run, resume_run, run_dir};
use super::super::problem::Problem;
use super::super::tokens::Caller;
use super::catalog::run_row;
use super::{error_page, see_other, shown};
use crate::run::journal::{Event, Record};

/// The lines of the driver's log a run page shows.
const LOG_LINES: usize = 40;
/// The bytes of the log read for them, from its end.
const LOG_BYTES: u64 = 64 * 1024;

pub(super) async fn list(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Response {
    let data = {
        let app = app.clone();
        blocking(move || {
            let runs: Vec<Json> = crate::run::dir::list(&app.cfg.runs_root).iter().rev().map(run_row).collect();
            Ok(json!({"runs": runs}))
        })
        .await
    };
    shown(&app, &caller, "runs", "Runs", data)
}

/// When each step last started and ended (wall clock, ns), by key.
fn timings(records: &[Record]) -> HashMap<&str, (Option<u64>, Option<u64>)> {
    let mut out: HashMap<&str, (Option<u64>, Option<u64>)> = HashMap::new();
    for r in records {
        match &r.event {
            Event::StepStarted { key, .. } => {
                out.insert(key, (Some(r.unix_ns), None));
            }
            Event::StepFinished { key, .. } | Event::StepFailed { key, .. } | Event::StepSkipped { key, .. } => {
                out.entry(key).or_default().1 = Some(r.unix_ns);
            }
            _ => {}
        }
    }
    out
}

/// The last `LOG_LINES` lines of the file at `path`, if it is there.
fn tail(path: &std::path::Path) -> Vec<String> {
    use std::io::{Read as _, Seek as _};
    let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
    let len = f.metadata().map_or(0, |m| m.len());
    if f.seek(std::io::SeekFrom::Start(len.saturating_sub(LOG_BYTES))).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_LINES)..].iter().map(|l| l.to_string()).collect()
}

fn run_data(app: &App, id: &str) -> Result<Json, Problem> {
    let info = run_dir(app, id)?;
    let path = info.path.clone();
    let row = run_row(&info);
    let shown = crate::cli::runs::shown(info).map_err(Problem::internal)?;
    let records = crate::run::journal::read_run(&path).map_err(Problem::internal)?;
    let times = timings(&records);
    let plan: Json =
        std::fs::read(path.join("plan.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Json::Null);
    let group_of: HashMap<&str, Option<u64>> = plan["steps"]
        .as_array()
        .map(|s| s.iter().map(|s| (s["key"].as_str().unwrap_or_default(), s["group"].as_u64())).collect())
        .unwrap_or_default();
    // The step tree: a branch per engine group, in plan order, then the run's own steps.
    let mut branches: Vec<(Option<u64>, Vec<Json>)> = Vec::new();
    for s in &shown.steps {
        let key = s["key"].as_str().unwrap_or_default();
        let (started, ended) = times.get(key).copied().unwrap_or_default();
        let mut step = s.clone();
        step["started_unix_ns"] = json!(started);
        step["took_ns"] = json!(started.zip(ended).map(|(a, b)| b.saturating_sub(a)));
        let group = group_of.get(key).copied().flatten();
        match branches.iter_mut().find(|(g, _)| *g == group) {
            Some((_, steps)) => steps.push(step),
            None => branches.push((group, vec![step])),
        }
    }
    branches.sort_by_key(|(g, _)| g.map_or(u64::MAX, |g| g));
    let tree: Vec<Json> = branches
        .into_iter()
        .map(|(g, steps)| {
            let name = match g {
                Some(g) => plan["groups"][g as usize]["id"].as_str().unwrap_or("engine").to_string(),
                None => "run".to_string(),
            };
            json!({"name": name, "steps": steps})
        })
        .collect();
    let progress: Vec<Json> = crate::run::live::list(&path)
        .into_iter()
        .filter_map(|(_, _, p)| crate::run::live::read(&p))
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .collect();
    let status = row["status"].as_str().unwrap_or_default().to_string();
    Ok(json!({
        "run": row,
        "suite_file": shown.info.meta.file.display().to_string(),
        "executor": shown.executor.as_ref().map(|e| e.executor),
        "cancel_requested": shown.cancel_requested,
        "units": shown.units,
        "tree": tree,
        "progress": progress.first(),
        "log": tail(&path.join("driver.log")),
        "running": status == "running",
        "resumable": status == "unfinished",
        "ended": status == "succeeded" || status == "failed",
    }))
}

pub(super) async fn show(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let data = {
        let app = app.clone();
        blocking(move || run_data(&app, &id)).await
    };
    shown(&app, &caller, "run", "Run", data)
}

pub(super) async fn cancel(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    match cancel_run(&app, id.clone(), &caller).await {
        Ok(_) => see_other(&format!("/runs/{id}")),
        Err(p) => error_page(&app, Some(&caller), &p),
    }
}

pub(super) async fn resume(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    match resume_run(&app, id.clone(), &caller).await {
        Ok(v) => see_other(&format!("/runs/{}", v["run_id"].as_str().unwrap_or(&id))),
        Err(p) => error_page(&app, Some(&caller), &p),
    }
}
