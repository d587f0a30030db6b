//! Rendering: the template registry (built once), the layout's data and the error page.

use std::sync::LazyLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use handlebars::Handlebars;
use serde_json::{Value as Json, json};

use super::super::App;
use super::super::problem::Problem;
use super::super::tokens::Caller;
use super::TEMPLATES;

/// The registry: the report helpers (`fixed`, `percent`, `bytes`, `params`, `join`), the html
/// report's plots, and the pages' own helpers, in strict mode with HTML escaping.
pub(super) fn registry() -> Result<Handlebars<'static>, String> {
    let mut hb = crate::report::report_registry(handlebars::html_escape);
    hb.set_strict_mode(true);
    hb.register_helper("time", Box::new(time_helper));
    hb.register_helper("ms", Box::new(ms_helper));
    hb.register_helper("enc", Box::new(enc_helper));
    hb.register_helper("latency_plot", crate::report::html::plot_helper(crate::report::plots::latency_plot));
    hb.register_helper("load_plot", crate::report::html::plot_helper(crate::report::plots::load_plot));
    hb.register_helper("overlay", Box::new(overlay_helper));
    hb.register_helper("standalone_style", Box::new(standalone_style));
    for (name, text) in TEMPLATES {
        hb.register_template_string(name, *text).map_err(|e| format!("template {name}: {e}"))?;
    }
    Ok(hb)
}

static REGISTRY: LazyLock<Result<Handlebars<'static>, String>> = LazyLock::new(registry);

/// `time NS`: a wall-clock time in nanoseconds since the epoch, as UTC to the second; `-` when
/// absent or 0.
fn time_helper(
    h: &handlebars::Helper,
    r: &Handlebars,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    let text = match h.param(0).and_then(|p| p.value().as_u64()).filter(|n| *n > 0) {
        Some(ns) => {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
            humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").replace('Z', " UTC")
        }
        None => "-".into(),
    };
    out.write(&r.get_escape_fn()(&text))?;
    Ok(())
}

/// `ms NS`: a duration in nanoseconds as seconds or milliseconds; `-` when absent.
fn ms_helper(
    h: &handlebars::Helper,
    r: &Handlebars,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    let text = match h.param(0).and_then(|p| p.value().as_f64()) {
        Some(ns) if ns >= 1e9 => format!("{:.2} s", ns / 1e9),
        Some(ns) => format!("{:.0} ms", ns / 1e6),
        None => "-".into(),
    };
    out.write(&r.get_escape_fn()(&text))?;
    Ok(())
}

/// `overlay SIDES KIND [METRIC]`: an overlaid plot of the compare page, as SVG the plot code
/// escaped itself. `SIDES` is a list of `{label, cells}`; `KIND` is `latency` (METRIC: a
/// distribution), `load` (METRIC against the swept param), `ttft_throughput` or `eval`.
fn overlay_helper(
    h: &handlebars::Helper,
    _: &Handlebars,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    use crate::report::plots::{Overlay, overlay_eval, overlay_latency, overlay_load, overlay_ttft_throughput};
    let sides: Vec<Overlay> = h
        .param(0)
        .and_then(|p| p.value().as_array())
        .map(|a| {
            a.iter()
                .map(|s| Overlay {
                    label: crate::template::scalar_text(&s["label"]),
                    cells: s["cells"].as_array().map(|c| c.iter().collect()).unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let arg = |i: usize| h.param(i).and_then(|p| p.value().as_str()).unwrap_or_default();
    let svg = match arg(1) {
        "latency" => overlay_latency(&sides, arg(2)),
        "load" => overlay_load(&sides, arg(2)),
        "ttft_throughput" => overlay_ttft_throughput(&sides),
        "eval" => overlay_eval(&sides),
        other => return Err(handlebars::RenderErrorReason::Other(format!("overlay: unknown kind `{other}`")).into()),
    };
    out.write(&svg)?;
    Ok(())
}

/// `standalone_style`: the pages' stylesheet as a `<style>` element, for a page saved as one file
/// (the compare page's download), which no content policy covers. The text is the binary's own.
fn standalone_style(
    _: &handlebars::Helper,
    _: &Handlebars,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    out.write("<style>\n")?;
    out.write(super::STYLESHEET)?;
    out.write("</style>")?;
    Ok(())
}

/// `enc TEXT`: percent-encoded for a URL's query or path (then HTML-escaped like any value).
fn enc_helper(
    h: &handlebars::Helper,
    r: &Handlebars,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    let text = h.param(0).map(|p| crate::template::scalar_text(p.value())).unwrap_or_default();
    out.write(&r.get_escape_fn()(&super::url_encode(&text).replace('/', "%2F")))?;
    Ok(())
}

/// The navigation, with the page shown marked.
fn nav(app: &App, active: &str) -> Json {
    let mut items = vec![
        ("dashboard", "/", "Dashboard"),
        ("runs", "/runs", "Runs"),
        ("results", "/results", "Results"),
        ("compare", "/compare", "Compare"),
        ("engines", "/engines", "Engines"),
        ("models", "/models", "Models"),
        ("quicktest", "/quicktest", "Quick Test"),
    ];
    if app.cfg.devon.is_some() {
        items.push(("devon", "/devon", "Devon"));
    }
    items.push(("agents", "/agents", "Agents"));
    items.push(("settings", "/settings", "Settings"));
    items.into_iter().map(|(id, href, label)| json!({"href": href, "label": label, "active": id == active})).collect()
}

/// A page: `template` rendered inside the layout with `data` as `page`, and what every page
/// shows (`site`: the navigation, who is looking, the `--insecure` banner, the version).
pub(crate) fn page(app: &App, caller: Option<&Caller>, template: &str, title: &str, data: Json) -> Response {
    render(app, caller, template, title, data, false)
}

/// A page as one file to keep (a download): its stylesheet inline, no script, no navigation.
pub(crate) fn standalone(app: &App, caller: &Caller, template: &str, title: &str, data: Json) -> Response {
    render(app, Some(caller), template, title, data, true)
}

fn render(app: &App, caller: Option<&Caller>, template: &str, title: &str, data: Json, standalone: bool) -> Response {
    let site = json!({
        "standalone": standalone,
        "title": title,
        "version": env!("CARGO_PKG_VERSION"),
        "insecure": app.cfg.insecure,
        "read_only": app.cfg.read_only,
        "nav": if caller.is_some() && !standalone { nav(app, template) } else { json!([]) },
        "who": super::who(app, caller),
    });
    let context = json!({"site": site, "page": data});
    let html = match REGISTRY.as_ref() {
        Ok(hb) => hb.render(template, &context),
        Err(e) => return Problem::internal(e).into_response(),
    };
    match html {
        Ok(html) => {
            let mut res = html.into_response();
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            res
        }
        Err(e) => Problem::internal(format!("page {template}: {e}")).into_response(),
    }
}

/// A problem as a page, with its status.
pub(crate) fn error_page(app: &App, caller: Option<&Caller>, problem: &Problem) -> Response {
    let title = problem.status.canonical_reason().unwrap_or("Error");
    let data = json!({"status": problem.status.as_u16(), "title": title, "detail": problem.detail});
    let mut res = page(app, caller, "error", title, data);
    *res.status_mut() = problem.status;
    res
}

/// A page of `data`, or the problem that stopped it as an error page.
pub(crate) fn shown(app: &App, caller: &Caller, template: &str, title: &str, data: Result<Json, Problem>) -> Response {
    match data {
        Ok(data) => page(app, Some(caller), template, title, data),
        Err(p) => error_page(app, Some(caller), &p),
    }
}

/// A 303 to `to` (after a form).
pub(crate) fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}
