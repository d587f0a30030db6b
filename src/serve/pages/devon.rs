//! DEVON, the model manager kitt tests models from: its UI embedded on the Devon page (the
//! page's content policy allows exactly DEVON's origin as a frame), its models on the Models
//! page, and `/api/v1/devon/status`.
//!
//! DEVON's HTTP API (FastAPI): `GET /api/v1/models` → `{count, models: [{source, model_id, path,
//! size_bytes, downloaded_at, files}]}`, asked with `Authorization: Bearer <key>` when the key's
//! environment variable is set (DEVON asks for one only when it has `DEVON_API_KEY`), and
//! FastAPI's own `GET /openapi.json`, whose `info.version` is DEVON's version. Nothing here
//! writes to DEVON.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

use super::super::problem::Problem;
use super::super::tokens::Caller;
use super::super::{App, Devon};
use crate::engine::client::EngineClient;

/// How long DEVON gets to answer one request.
const TIMEOUT: Duration = Duration::from_secs(3);

fn client(devon: &Devon) -> Result<EngineClient, String> {
    let mut headers = Vec::new();
    if let Some(key) = std::env::var(&devon.token_env).ok().filter(|k| !k.is_empty()) {
        headers.push(("authorization".to_string(), format!("Bearer {key}")));
    }
    EngineClient::new(&devon.origin, headers, 1).map_err(|e| e.to_string())
}

/// DEVON's models, or why there are none: `{ok, models, error}`.
pub(super) async fn models(devon: &Devon) -> Json {
    let fetched = async {
        let c = client(devon)?;
        let (status, body) = c.get("/api/v1/models", TIMEOUT).await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("DEVON answered {status} to GET /api/v1/models"));
        }
        let v: Json = serde_json::from_str(&body).map_err(|e| format!("DEVON's model list is not JSON: {e}"))?;
        let models = v["models"].as_array().cloned().ok_or("DEVON's model list has no `models`")?;
        Ok::<_, String>(models)
    }
    .await;
    match fetched {
        Ok(models) => {
            let rows: Vec<Json> = models
                .iter()
                .map(|m| {
                    let id = m["model_id"].as_str().unwrap_or_default();
                    // The quick test's model name: the repository's last part (`Qwen2.5-7B`).
                    let name = id.rsplit('/').next().unwrap_or(id);
                    let path = m["path"].as_str().unwrap_or_default();
                    let quick =
                        format!("/quicktest?model={}&model_path={}", super::url_encode(name), super::url_encode(path));
                    json!({"source": m["source"], "model_id": id, "path": path, "size_bytes": m["size_bytes"],
                        "downloaded_at": m["downloaded_at"], "files": m["files"].as_array().map_or(0, Vec::len),
                        "quicktest": quick})
                })
                .collect();
            json!({"ok": true, "models": rows, "error": null, "origin": devon.origin})
        }
        Err(e) => json!({"ok": false, "models": [], "error": e, "origin": devon.origin}),
    }
}

/// Whether DEVON answers, and its version.
async fn status(devon: &Devon) -> Json {
    let c = match client(devon) {
        Ok(c) => c,
        Err(e) => {
            return json!({"configured": true, "url": devon.origin, "reachable": false, "version": null, "error": e});
        }
    };
    let (reachable, version, error) = match c.get("/openapi.json", TIMEOUT).await {
        Ok((200, body)) => {
            let version =
                serde_json::from_str::<Json>(&body).ok().and_then(|v| v["info"]["version"].as_str().map(String::from));
            (true, version, None)
        }
        Ok((status, _)) => (true, None, Some(format!("GET /openapi.json answered {status}"))),
        Err(e) => (false, None, Some(e.to_string())),
    };
    json!({"configured": true, "url": devon.origin, "reachable": reachable, "version": version, "error": error})
}

/// `GET /api/v1/devon/status`.
pub(crate) async fn status_route(State(app): State<Arc<App>>) -> Result<Response, Problem> {
    let value = match &app.cfg.devon {
        Some(d) => status(d).await,
        None => json!({"configured": false, "url": null, "reachable": false, "version": null,
            "error": "no DEVON configured (kitt serve --devon-url URL)"}),
    };
    Ok(axum::Json(value).into_response())
}

/// The Devon page: DEVON's UI in a frame, and its status.
pub(super) async fn page(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Response {
    let Some(devon) = &app.cfg.devon else {
        let p =
            Problem::not_found("no DEVON is configured: start kitt serve with --devon-url URL (or $KITT_DEVON_URL)");
        return super::error_page(&app, Some(&caller), &p);
    };
    let data = json!({"status": status(devon).await, "origin": devon.origin});
    let mut res = super::page(&app, Some(&caller), "devon", "Devon", data);
    let csp = format!("{}; frame-src {}", super::CSP, devon.origin);
    if let Ok(v) = HeaderValue::from_str(&csp) {
        res.headers_mut().insert("content-security-policy", v);
    }
    res
}
