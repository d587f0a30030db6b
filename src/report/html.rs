//! The `html` reporter: one self-contained page, a handlebars template rendered with HTML
//! escaping, plus helpers that draw the plots as inline SVG.
//!
//! The layout is data (reporters/html.html.hbs; copy it, name the copy in a Reporter manifest with
//! `format: html`, and the report is restyled with no Rust change); the plots are mechanism, drawn
//! from the numbers in the result. Every `{{value}}` is HTML-escaped, so a
//! model name or an error message cannot inject markup, and the plot helpers escape every string
//! they place. The page needs no network and no script: CSS is inline, plots are SVG, hover text
//! is SVG `<title>`. Nothing depends on the moment of rendering, so one result always renders to
//! the same bytes.
//!
//! What each plot is drawn from is plots.rs; how it is drawn, svg.rs.

use serde_json::Value as Json;

use super::plots::{eval_plot, latency_plot, load_plot, resource_plot};
use super::{RunReport, report_registry, template_context};

/// Renders an html reporter's template over a run's report.
pub fn render(template: &str, report: &RunReport) -> Result<String, String> {
    render_value(template, serde_json::to_value(report).map_err(|e| e.to_string())?)
}

/// Renders over a report in its JSON form (a `report/result.json` read back, with sections this
/// kitt's types may not know).
pub fn render_value(template: &str, report: Json) -> Result<String, String> {
    let mut hb = report_registry(handlebars::html_escape);
    hb.register_helper("latency_plot", plot_helper(latency_plot));
    hb.register_helper("load_plot", plot_helper(load_plot));
    hb.register_helper("resource_plot", plot_helper(resource_plot));
    hb.register_helper("eval_plot", plot_helper(eval_plot));
    hb.render_template(template, &template_context(report)).map_err(|e| e.to_string())
}

/// A helper `NAME CELLS ARGS…` that writes SVG markup; `CELLS` is a benchmark (its `cells`) or a
/// list of cells. Its output is markup it escaped itself, written the same in `{{…}}` and `{{{…}}}`.
pub(crate) fn plot_helper(f: fn(&[&Json], &[&str]) -> String) -> Box<dyn handlebars::HelperDef + Send + Sync> {
    Box::new(
        move |h: &handlebars::Helper,
              _: &handlebars::Handlebars,
              _: &handlebars::Context,
              _: &mut handlebars::RenderContext,
              out: &mut dyn handlebars::Output|
              -> handlebars::HelperResult {
            let cells: Vec<&Json> = match h.param(0).map(|p| p.value()) {
                Some(Json::Object(b)) => b.get("cells").and_then(Json::as_array).map(|a| a.iter().collect()),
                Some(Json::Array(a)) => Some(a.iter().collect()),
                _ => None,
            }
            .unwrap_or_default();
            let args: Vec<&str> = h.params().iter().skip(1).filter_map(|p| p.value().as_str()).collect();
            out.write(&f(&cells, &args))?;
            Ok(())
        },
    )
}
