//! The dashboard, the engine catalog, the models and the settings pages.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use axum::{Extension, http::Uri};
use serde_json::{Value as Json, json};

use super::super::App;
use super::super::api::{blocking, model_list, settings_list};
use super::super::problem::Problem;
use super::super::tokens::{Caller, Scope};
use super::results::row;
use super::shown;
use crate::run::dir::{self, RunStatus};
use crate::store::Filter;

fn status_name(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Unfinished => "unfinished",
        RunStatus::Running => "running",
    }
}

/// A run as the pages list it.
pub(super) fn run_row(info: &dir::RunInfo) -> Json {
    json!({
        "id": info.meta.id, "suite": info.meta.suite, "status": status_name(info.status),
        "created_unix_ns": info.meta.created_unix_ns, "records": info.records,
    })
}

/// How many of each thing, the runs going on, the latest results and the latest failures.
pub(super) async fn dashboard(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Response {
    let data = {
        let app = app.clone();
        blocking(move || {
            let runs = dir::list(&app.cfg.runs_root);
            let count = |s: RunStatus| runs.iter().filter(|r| r.status == s).count();
            let newest = |s: RunStatus, n: usize| -> Vec<Json> {
                runs.iter().rev().filter(|r| r.status == s).take(n).map(run_row).collect()
            };
            let (mut results, mut failed, mut latest, mut failures) = (0, 0, Vec::new(), Vec::new());
            if let Some(store) = app.store()? {
                results = store.count().map_err(Problem::internal)?;
                failed = store.failed_count().map_err(Problem::internal)?;
                let newest_first = Filter { newest_first: true, limit: Some(10), ..Filter::default() };
                latest = store.records(&newest_first).map_err(Problem::internal)?.iter().map(row).collect();
                let failed_only = Filter { failed_only: true, limit: Some(5), ..newest_first };
                failures = store.records(&failed_only).map_err(Problem::internal)?.iter().map(row).collect();
            }
            Ok(json!({
                "counts": {
                    "runs": runs.len(), "running": count(RunStatus::Running), "unfinished": count(RunStatus::Unfinished),
                    "failed": count(RunStatus::Failed), "succeeded": count(RunStatus::Succeeded),
                    "results": results, "failed_results": failed,
                },
                "running": newest(RunStatus::Running, 20),
                "failed_runs": newest(RunStatus::Failed, 5),
                "latest": latest,
                "failures": failures,
                "store": app.cfg.store.is_some(),
            }))
        })
        .await
    };
    shown(&app, &caller, "dashboard", "Dashboard", data)
}

/// An engine template as the pages show it.
fn engine_row(name: &str, e: &crate::catalog::Entry<crate::manifest::template_kind::EngineSpec>) -> Json {
    let s = &e.manifest.spec;
    json!({
        "name": name, "description": e.manifest.metadata.description, "origin": e.origin.to_string(),
        "file": e.manifest.file.display().to_string(), "modes": s.modes(), "image": s.image,
        "default_port": s.default_port, "health": s.health.path,
    })
}

pub(super) async fn engines(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Response {
    let catalog = crate::catalog::Catalog::builtin();
    let rows: Vec<Json> = catalog.engines.iter().map(|(n, e)| engine_row(n, e)).collect();
    shown(&app, &caller, "engines", "Engines", Ok(json!({"engines": rows})))
}

/// One engine template: its fields, params and YAML, and with `?check=1` what `kitt engines
/// check` says of it here (its image or binary).
pub(super) async fn engine(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    UrlPath(name): UrlPath<String>,
    uri: Uri,
) -> Response {
    let catalog = crate::catalog::Catalog::builtin();
    let Some(entry) = catalog.engines.get(&name) else {
        let p = Problem::not_found(format!(
            "no engine template `{}` (see /engines)",
            name.chars().take(64).collect::<String>()
        ));
        return super::error_page(&app, Some(&caller), &p);
    };
    let params: Vec<Json> = entry
        .manifest
        .spec
        .params
        .iter()
        .map(|(k, p)| {
            json!({"name": k, "type": format!("{:?}", p.value.ty).to_lowercase(), "default": p.value.default.as_ref().map(crate::template::scalar_text),
                "description": p.value.description})
        })
        .collect();
    let yaml = crate::catalog::builtin_source(&entry.manifest.file).unwrap_or_default();
    let check = if super::query_pairs(&uri).iter().any(|(k, _)| k == "check") {
        Some(engine_check(&app, &name).await)
    } else {
        None
    };
    let data = json!({"engine": engine_row(&name, entry), "params": params, "yaml": yaml, "check": check});
    shown(&app, &caller, "engine", &format!("Engine {name}"), Ok(data))
}

/// `kitt engines check NAME --output json`, run as a child (it may ask Docker).
async fn engine_check(app: &App, name: &str) -> Json {
    let mut cmd = tokio::process::Command::new(&app.cfg.exe);
    cmd.args(["engines", "check", name, "--output", "json"]).stdin(std::process::Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(std::time::Duration::from_secs(30), cmd.output()).await {
        Ok(Ok(out)) => serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            json!({"ok": false, "what": "check", "detail": String::from_utf8_lossy(&out.stderr).trim().to_string()})
        }),
        Ok(Err(e)) => json!({"ok": false, "what": "check", "detail": e.to_string()}),
        Err(_) => json!({"ok": false, "what": "check", "detail": "no answer within 30 s"}),
    }
}

pub(super) async fn models(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Response {
    let local = {
        let app = app.clone();
        blocking(move || model_list(&app)).await
    };
    let devon = match &app.cfg.devon {
        Some(d) => Some(super::devon::models(d).await),
        None => None,
    };
    let data = local.map(|mut l| {
        l["devon"] = json!(devon);
        l
    });
    shown(&app, &caller, "models", "Models", data)
}

/// The settings in force (the store's keys) and the server's own, each with its source.
pub(super) async fn settings(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Response {
    let data = {
        let app = app.clone();
        let caller = caller.clone();
        blocking(move || {
            let keys: Vec<Json> = settings_list(&app)?
                .into_iter()
                .map(|r| {
                    json!({"key": r.key, "type": r.kind, "value": crate::template::scalar_text(&r.value),
                        "source": r.source.as_str(), "env": r.env, "doc": r.doc, "actor": r.actor,
                        "changed_unix_ns": r.changed_unix_ns, "pinned": r.source.pinned(),
                        "stored": r.stored.is_some()})
                })
                .collect();
            let can_edit = caller.scope.allows(Scope::Admin) && !app.cfg.read_only && app.cfg.store.is_some();
            Ok(json!({"keys": keys, "server": app.cfg.given, "can_edit": can_edit}))
        })
        .await
    };
    shown(&app, &caller, "settings", "Settings", data)
}

/// The agents, with drain and remove for an admin.
pub(super) async fn agents(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Response {
    let data = crate::serve::agents::listing(&app)
        .map(|agents| json!({"agents": agents, "can_admin": caller.scope.allows(Scope::Admin) && !app.cfg.read_only}));
    shown(&app, &caller, "agents", "Agents", data)
}

pub(super) async fn agent_drain(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match crate::serve::agents::drain_agent(&app, &name) {
        Ok(()) => super::render::see_other("/agents"),
        Err(p) => super::render::error_page(&app, Some(&caller), &p),
    }
}

pub(super) async fn agent_remove(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match crate::serve::agents::remove_agent(&app, &name).await {
        Ok(_) => super::render::see_other("/agents"),
        Err(p) => super::render::error_page(&app, Some(&caller), &p),
    }
}

/// `POST /settings/{key}` (admin): the form's `value` into the store, as `kitt settings set`
/// does (`unset=1`: the store's value removed); a pinned key is refused.
pub(super) async fn setting_change(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    UrlPath(key): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let form: std::collections::HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let done = {
        let app = app.clone();
        let actor = caller.name.clone();
        blocking(move || {
            let k = crate::settings::key(&key).map_err(|e| Problem::bad_request(e.to_string()))?;
            let unset = form.get("unset").is_some_and(|v| v == "1");
            let parsed = match (unset, form.get("value")) {
                (true, _) => None,
                (false, Some(v)) => Some(
                    crate::settings::parse(k, v, "given on the Settings page")
                        .map_err(|e| Problem::bad_request(e.to_string()))?,
                ),
                (false, None) => return Err(Problem::bad_request("value: the form sent none")),
            };
            if let Some(r) = settings_list(&app)?.into_iter().find(|r| r.key == k.name).filter(|r| r.source.pinned()) {
                return Err(Problem::new(
                    axum::http::StatusCode::CONFLICT,
                    format!("`{}` is pinned here ({}): the store's value would not be the one in force", k.name, r.env),
                ));
            }
            let Some(location) = &app.cfg.store else {
                return Err(Problem::new(axum::http::StatusCode::CONFLICT, "the results store is turned off"));
            };
            let mut store = crate::store::Store::open(location).map_err(Problem::internal)?;
            let json = parsed.as_ref().map(Json::to_string);
            store.change_setting(k.name, json.as_deref(), &actor).map_err(Problem::internal)?;
            tracing::info!(
                "setting `{}` {} by `{actor}` on the Settings page",
                k.name,
                json.as_deref().unwrap_or("unset")
            );
            Ok(())
        })
        .await
    };
    match done {
        Ok(()) => super::render::see_other("/settings"),
        Err(p) => super::render::error_page(&app, Some(&caller), &p),
    }
}
