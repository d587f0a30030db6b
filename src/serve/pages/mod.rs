//! The web pages of `kitt serve`: server-rendered HTML over the same data as `/api/v1`.
//!
//! Every page is a handlebars template embedded in the binary (web/templates/, strict mode: a
//! template that names a field the page does not give fails its test, not a user's page) and
//! rendered with HTML escaping; no template uses the unescaped `{{{…}}}` form (a test greps
//! them), and the plot helpers escape every string they place. Pages work without JavaScript:
//! forms are plain GET and POST forms, plots are inline SVG with SVG `<title>` hover text. The
//! one script, web/assets/app.js, adds what needs one: the live run view (the run's SSE stream)
//! and small conveniences. Nothing is loaded from outside the binary, and the content policy is
//! `default-src 'self'` with no inline script or style, so a value that slipped through
//! escaping could still run nothing.
//!
//! Pages share the API's tokens: the login cookie (or a bearer token) with `read` scope shows
//! them, `run` scope starts, cancels and resumes runs; a page asked for without either goes to
//! `/login` and comes back after it.

mod catalog;
mod compare;
mod devon;
pub mod quicktest;
mod render;
mod results;
mod runs;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value as Json, json};

use super::App;
use super::problem::Problem;
use super::tokens::{Caller, Scope};

pub(crate) use devon::status_route as devon_status;
pub(crate) use render::{error_page, page, see_other, shown, standalone};

/// The content policy of every answer but the Devon page's.
pub const CSP: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// The pages' stylesheet.
const STYLESHEET: &str = include_str!("../../../web/assets/app.css");

/// The files pages load, embedded: (path, content type, bytes).
const ASSETS: &[(&str, &str, &str)] = &[
    ("/assets/app.css", "text/css; charset=utf-8", STYLESHEET),
    ("/assets/app.js", "text/javascript; charset=utf-8", include_str!("../../../web/assets/app.js")),
    ("/assets/icon.svg", "image/svg+xml", include_str!("../../../web/assets/icon.svg")),
];

/// The templates, embedded: (name, text). `layout` is the partial every page renders inside.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("layout", include_str!("../../../web/templates/layout.hbs")),
    ("login", include_str!("../../../web/templates/login.hbs")),
    ("error", include_str!("../../../web/templates/error.hbs")),
    ("dashboard", include_str!("../../../web/templates/dashboard.hbs")),
    ("runs", include_str!("../../../web/templates/runs.hbs")),
    ("run", include_str!("../../../web/templates/run.hbs")),
    ("results", include_str!("../../../web/templates/results.hbs")),
    ("result", include_str!("../../../web/templates/result.hbs")),
    ("compare", include_str!("../../../web/templates/compare.hbs")),
    ("engines", include_str!("../../../web/templates/engines.hbs")),
    ("engine", include_str!("../../../web/templates/engine.hbs")),
    ("models", include_str!("../../../web/templates/models.hbs")),
    ("quicktest", include_str!("../../../web/templates/quicktest.hbs")),
    ("settings", include_str!("../../../web/templates/settings.hbs")),
    ("devon", include_str!("../../../web/templates/devon.hbs")),
    ("agents", include_str!("../../../web/templates/agents.hbs")),
];

/// How a page is guarded: who may see it (`read`) or use it (`run`, for forms that change
/// something).
#[derive(Clone)]
struct Guard {
    app: Arc<App>,
    scope: Scope,
}

/// A page route: the login cookie or a bearer token of `scope`; without one, to `/login` and
/// back. A POST with the cookie must come from this server's own pages (its `Origin`), and a
/// read-only server takes none.
async fn guard(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let back = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    let to_login = || {
        let next: String = url_encode(&back);
        (StatusCode::SEE_OTHER, [(header::LOCATION, format!("/login?next={next}"))]).into_response()
    };
    let (token, by_cookie) = match super::presented(&req) {
        Ok(Some(t)) => t,
        Ok(None) | Err(_) => return to_login(),
    };
    let ip = super::peer(&req);
    if g.app.auth_limit.limited(ip) {
        return render::error_page(&g.app, None, &super::AuthLimit::refusal());
    }
    let Some(caller) = g.app.keyring.check(&token) else {
        g.app.auth_limit.failed(ip);
        return to_login();
    };
    let post = !matches!(*req.method(), Method::GET | Method::HEAD);
    let refuse =
        |status: StatusCode, detail: String| render::error_page(&g.app, Some(&caller), &Problem::new(status, detail));
    if !caller.scope.allows(g.scope) {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("this needs a `{}` token; `{}` is a `{}` token", g.scope.name(), caller.name, caller.scope.name()),
        );
    }
    if post && g.app.cfg.read_only {
        return refuse(
            StatusCode::FORBIDDEN,
            "the server is read-only (kitt serve --read-only): it changes nothing".into(),
        );
    }
    if post && by_cookie && !super::same_origin(&req, g.app.cfg.tls.is_some()) {
        return refuse(
            StatusCode::FORBIDDEN,
            "a form sent with the login cookie must come from this server's pages".into(),
        );
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string's pairs, decoded, in order (repeated names kept: `ids=1&ids=2`). Empty
/// values are left out: an empty filter field of a form means no filter.
pub(crate) fn query_pairs(uri: &axum::http::Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
        .collect()
}

async fn asset(uri: axum::http::Uri) -> Response {
    let path = if uri.path() == "/favicon.ico" { "/assets/icon.svg" } else { uri.path() };
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, kind, body)) => {
            let mut res = (*body).into_response();
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            res
        }
        None => Problem::not_found(format!("no asset {path}")).into_response(),
    }
}

/// The login page (401 with `error`).
pub(crate) fn login_page(app: &App, next: &str, error: Option<&str>) -> Response {
    let status = if error.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    let data = json!({"next": next, "action": format!("/login?next={}", url_encode(next)), "error": error});
    let mut res = page(app, None, "login", "Log in", data);
    *res.status_mut() = status;
    res
}

/// The pages' routes, each behind its guard, and the assets (open: they hold nothing secret).
pub fn router(app: Arc<App>) -> Router<Arc<App>> {
    let read = Guard { app: app.clone(), scope: Scope::Read };
    let run = Guard { app: app.clone(), scope: Scope::Run };
    let admin = Guard { app: app.clone(), scope: Scope::Admin };
    let guarded = |r: axum::routing::MethodRouter<Arc<App>>, g: &Guard| {
        r.route_layer(axum::middleware::from_fn_with_state(g.clone(), guard))
    };
    let mut router = Router::new()
        .route("/", guarded(get(catalog::dashboard), &read))
        .route("/runs", guarded(get(runs::list), &read))
        .route("/runs/{id}", guarded(get(runs::show), &read))
        .route("/runs/{id}/cancel", guarded(post(runs::cancel), &run))
        .route("/runs/{id}/resume", guarded(post(runs::resume), &run))
        .route("/results", guarded(get(results::list), &read))
        .route("/results/{id}", guarded(get(results::show), &read))
        .route("/results/{id}/csv", guarded(get(results::csv), &read))
        .route("/compare", guarded(get(compare::show), &read))
        .route("/engines", guarded(get(catalog::engines), &read))
        .route("/engines/{name}", guarded(get(catalog::engine), &read))
        .route("/models", guarded(get(catalog::models), &read))
        .route("/quicktest", guarded(get(quicktest::form), &read).merge(guarded(post(quicktest::launch), &run)))
        .route("/settings", guarded(get(catalog::settings), &read))
        .route("/settings/{key}", guarded(post(catalog::setting_change), &admin))
        .route("/devon", guarded(get(devon::page), &read))
        .route("/agents", guarded(get(catalog::agents), &read))
        .route("/agents/{name}/drain", guarded(post(catalog::agent_drain), &admin))
        .route("/agents/{name}/remove", guarded(post(catalog::agent_remove), &admin))
        .route("/favicon.ico", get(asset));
    for (path, _, _) in ASSETS {
        router = router.route(path, get(asset));
    }
    router
}

/// Who is looking, for the layout: the token's name and what it may do.
pub(crate) fn who(app: &App, caller: Option<&Caller>) -> Json {
    match caller {
        Some(c) => json!({
            "name": c.name, "scope": c.scope.name(),
            "can_run": c.scope.allows(Scope::Run) && !app.cfg.read_only,
        }),
        None => json!({"name": null, "scope": null, "can_run": false}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles_and_none_writes_unescaped_output() {
        let hb = render::registry().expect("the templates compile");
        for (name, text) in TEMPLATES {
            assert!(hb.has_template(name), "{name}");
            assert!(!text.contains("{{{"), "{name} uses `{{{{{{`: output must be escaped");
            assert!(!text.contains("<script>") && !text.contains(" style="), "{name}: inline script or style");
        }
    }

    #[test]
    fn a_login_goes_back_only_to_a_path_of_this_server() {
        assert_eq!(crate::serve::local_path(Some("/runs/x?y=1")), "/runs/x?y=1");
        for bad in ["//evil.example/", "https://evil.example/", "/\\evil", "runs", ""] {
            assert_eq!(crate::serve::local_path(Some(bad)), "/", "{bad}");
        }
        assert_eq!(url_encode("/runs/a b?c=d&e"), "/runs/a%20b%3Fc%3Dd%26e");
    }
}
