//! What the html report's plots are drawn from: cells of the result (as JSON) → series and bars.
//!
//! Each `*_plot` function is a handlebars helper of the `html` format (html.rs registers them): it
//! takes a benchmark's cells and the helper's arguments and returns SVG (svg.rs draws it), or
//! nothing when there is nothing to draw. They read JSON, not Rust types, so a section a result
//! may carry (an eval's `eval`) is drawn where present and simply absent otherwise. They never
//! invent a number: a latency curve goes through the percentiles the result recorded, a load
//! plot through the measured cells or stages, and the captions say which.

use serde_json::Value as Json;

use super::svg::{Bar, BarChart, BarGroup, Format, LineChart, Series, XAxis};

fn text(v: &Json) -> String {
    crate::template::scalar_text(v)
}

fn params_text(v: &Json) -> String {
    match v {
        Json::Object(m) => m.iter().map(|(k, v)| format!("{k}={}", text(v))).collect::<Vec<_>>().join(" "),
        Json::Null => String::new(),
        other => text(other),
    }
}

/// `ttft_ms/p50` → `TTFT p50`.
fn metric_name(metric: &str) -> String {
    let mut parts = metric.trim_start_matches('/').split('/');
    let base = match parts.next().unwrap_or_default() {
        "ttft_ms" => "TTFT",
        "ttft_first_event_ms" => "TTFT (first event)",
        "ttfrt_ms" => "time to first reasoning token",
        "itl_ms" => "ITL",
        "itl_token_ms" => "ITL per token",
        "tpot_ms" => "TPOT",
        "e2e_ms" => "e2e latency",
        "request_throughput" => "requests/s",
        "output_token_throughput" => "output tokens/s",
        "total_token_throughput" => "total tokens/s",
        "prefill_throughput" => "prefill tokens/s",
        "error_rate" => "error rate",
        other => other,
    };
    std::iter::once(base.to_string()).chain(parts.map(|p| p.replace('_', "."))).collect::<Vec<_>>().join(" ")
}

/// The unit of a metric's values, for an axis.
fn metric_unit(metric: &str) -> &'static str {
    let base = metric.trim_start_matches('/').split('/').next().unwrap_or_default();
    match base {
        _ if base.ends_with("_ms") => "ms",
        "request_throughput" => "requests/s",
        "output_token_throughput" | "total_token_throughput" | "prefill_throughput" => "tokens/s",
        "error_rate" => "share",
        _ => "",
    }
}

fn value(metrics: &Json, metric: &str) -> Option<f64> {
    metrics.pointer(&format!("/{}", metric.trim_start_matches('/'))).and_then(Json::as_f64)
}

/// A short name for each cell: what tells it apart from the others of its benchmark.
fn cell_labels(cells: &[&Json]) -> Vec<String> {
    let varies = |key: &str| {
        let mut v: Vec<String> = cells.iter().map(|c| text(&c["cell"][key])).collect();
        v.sort();
        v.dedup();
        v.len() > 1
    };
    let (engines, models, runs) = (varies("engine"), varies("model"), varies("run_index"));
    cells
        .iter()
        .map(|c| {
            let id = &c["cell"];
            let mut parts = Vec::new();
            if engines {
                parts.push(text(&id["engine"]));
            }
            if models {
                parts.push(text(&id["model"]));
            }
            let swept = params_text(&id["swept"]);
            if !swept.is_empty() {
                parts.push(swept);
            }
            if runs {
                parts.push(format!("run {}", text(&id["run_index"])));
            }
            if parts.is_empty() {
                parts.push(format!("{} · {}", text(&id["engine"]), text(&id["model"])));
            }
            parts.join(" · ")
        })
        .collect()
}

/// The stages of a staged cell that have metrics (not the note of a sweep that stopped).
fn stages(cell: &Json) -> Vec<&Json> {
    cell["metrics"]["stages"]
        .as_array()
        .map(|a| a.iter().filter(|s| s["metrics"].is_object()).collect())
        .unwrap_or_default()
}

/// Percentiles a latency curve is drawn through: (field, label, quantile); max is drawn at the
/// end of the axis.
const PERCENTILES: [(&str, &str, f64); 7] = [
    ("min", "min", 0.0),
    ("p50", "p50", 0.5),
    ("p90", "p90", 0.9),
    ("p95", "p95", 0.95),
    ("p99", "p99", 0.99),
    ("p99_9", "p99.9", 0.999),
    ("max", "max", 1.0),
];

/// Position of quantile `q` on a tail axis: log10(1/(1−q)), so p90, p99 and p99.9 are evenly
/// spaced; the max (q = 1) half a decade past p99.9.
fn quantile_x(q: f64) -> f64 {
    if q >= 1.0 { 3.5 } else { -(1.0 - q).log10() }
}

fn percentile_points(dist: &Json) -> Vec<(f64, f64)> {
    PERCENTILES.iter().filter_map(|(field, _, q)| dist[*field].as_f64().map(|v| (quantile_x(*q), v))).collect()
}

/// `latency_plot BENCHMARK METRIC`: a latency distribution (`ttft_ms`, `itl_ms`, `e2e_ms`, …) by
/// percentile, one line per cell, or per stage of a staged cell.
pub(crate) fn latency_plot(cells: &[&Json], args: &[&str]) -> String {
    let metric = args.first().copied().unwrap_or("ttft_ms");
    let mut series = Vec::new();
    let mut staged = false;
    for (c, label) in cells.iter().zip(cell_labels(cells)) {
        let st = stages(c);
        if st.is_empty() {
            series.push((label, percentile_points(&c["metrics"][metric])));
        } else {
            staged = true;
            for s in st {
                series.push((format!("{label} · {}", text(&s["name"])), percentile_points(&s["metrics"][metric])));
            }
        }
    }
    let series: Vec<Series> = series
        .into_iter()
        .filter(|(_, p)| !p.is_empty())
        .enumerate()
        .map(|(i, (label, points))| Series { label, points, color: i, dashed: false })
        .collect();
    let mut caption = "Drawn through each distribution's min, p50, p90, p95, p99, p99.9 and max (HDR histogram, \
                       3 significant digits; min and max exact), successful requests only; x is log-scaled in \
                       1/(1 − q)."
        .to_string();
    if staged {
        caption.push_str(" A staged cell has a line per stage.");
    }
    LineChart {
        title: format!("{} by percentile", metric_name(metric)),
        caption,
        x_label: "percentile".into(),
        y_label: metric_unit(metric).into(),
        x_axis: XAxis::Labeled(PERCENTILES.iter().map(|(_, label, q)| (quantile_x(*q), label.to_string())).collect()),
        series,
    }
    .render()
}

/// The swept numeric param the cells spread over (the first by name with two values or more).
fn load_param(cells: &[&Json]) -> Option<String> {
    let mut keys: Vec<&String> =
        cells.iter().filter_map(|c| c["cell"]["swept"].as_object()).flat_map(|m| m.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .find(|k| {
            let values: Option<Vec<f64>> = cells.iter().map(|c| c["cell"]["swept"][k.as_str()].as_f64()).collect();
            values.is_some_and(|mut v| {
                v.sort_by(f64::total_cmp);
                v.dedup();
                v.len() > 1
            })
        })
        .cloned()
}

/// `load_plot BENCHMARK METRIC…`: metrics against load, a line per cell and metric (the second
/// metric dashed). Load is the swept param (concurrency, rate, …) for cells swept over one, the
/// offered rate of each stage for staged cells; nothing is drawn for a benchmark with neither.
pub(crate) fn load_plot(cells: &[&Json], args: &[&str]) -> String {
    let metrics: Vec<&str> = if args.is_empty() { vec!["request_throughput"] } else { args.to_vec() };
    let name = |label: &str, k: usize| {
        let m = metric_name(metrics[k]);
        match (label.is_empty(), metrics.len()) {
            (true, _) => m,
            (false, 1) => label.to_string(),
            (false, _) => format!("{label} · {m}"),
        }
    };
    let labels = cell_labels(cells);
    let mut series = Vec::new();
    let (x_label, caption);
    if cells.iter().any(|c| stages(c).len() > 1) {
        for (i, (c, label)) in cells.iter().zip(&labels).enumerate() {
            let st = stages(c);
            for (k, metric) in metrics.iter().enumerate() {
                let mut points: Vec<(f64, f64)> = st
                    .iter()
                    .filter_map(|s| {
                        let m = &s["metrics"];
                        let offered = value(m, "arrivals/offered_rate").or_else(|| value(m, "request_throughput"))?;
                        Some((offered, value(m, metric)?))
                    })
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                series.push(Series { label: name(label, k), points, color: i, dashed: k > 0 });
            }
        }
        x_label = "offered load (requests/s)".to_string();
        caption = "A point per stage. Offered load: the scheduled rate of an open-loop stage (constant, poisson), \
                   the achieved rate of a closed-loop one (synchronous, concurrency)."
            .to_string();
    } else {
        let Some(param) = load_param(cells) else { return String::new() };
        // A line per cell identity apart from the load param and the run index.
        let varies = |key: &str| cells.iter().any(|c| c["cell"][key] != cells[0]["cell"][key]);
        let (engines, models) = (varies("engine"), varies("model"));
        // (line label, [(x, [metric values of each run])]).
        type Runs = Vec<(f64, Vec<Vec<f64>>)>;
        let mut lines: Vec<(String, Runs)> = Vec::new();
        let mut repeated = false;
        for c in cells {
            let id = &c["cell"];
            let Some(x) = id["swept"][param.as_str()].as_f64() else { continue };
            let mut parts = Vec::new();
            if engines {
                parts.push(text(&id["engine"]));
            }
            if models {
                parts.push(text(&id["model"]));
            }
            let mut others = id["swept"].clone();
            if let Some(m) = others.as_object_mut() {
                m.remove(&param);
            }
            let others = params_text(&others);
            if !others.is_empty() {
                parts.push(others);
            }
            let key = parts.join(" · ");
            let at = match lines.iter_mut().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    lines.push((key, Vec::new()));
                    lines.len() - 1
                }
            };
            let ys: Vec<f64> = metrics.iter().map(|m| value(&c["metrics"], m).unwrap_or(f64::NAN)).collect();
            let by_x = &mut lines[at].1;
            match by_x.iter_mut().find(|(v, _)| *v == x) {
                Some((_, runs)) => {
                    repeated = true;
                    runs.push(ys);
                }
                None => by_x.push((x, vec![ys])),
            }
        }
        for (i, (label, by_x)) in lines.iter().enumerate() {
            for k in 0..metrics.len() {
                let mut points: Vec<(f64, f64)> = by_x
                    .iter()
                    .filter_map(|(x, runs)| {
                        let ys: Vec<f64> = runs.iter().map(|r| r[k]).filter(|y| y.is_finite()).collect();
                        (!ys.is_empty()).then(|| (*x, ys.iter().sum::<f64>() / ys.len() as f64))
                    })
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                series.push(Series { label: name(label, k), points, color: i, dashed: k > 0 });
            }
        }
        caption = if repeated {
            format!("A point per value of `{param}`: the mean of its runs.")
        } else {
            format!("A point per value of `{param}`.")
        };
        x_label = param;
    }
    let names: Vec<String> = metrics.iter().map(|m| metric_name(m)).collect();
    let mut units: Vec<&str> = metrics.iter().map(|m| metric_unit(m)).filter(|u| !u.is_empty()).collect();
    units.dedup();
    LineChart {
        title: format!("{} vs {}", names.join(" and "), x_label.split(" (").next().unwrap_or_default()),
        caption,
        x_label,
        y_label: units.join(", "),
        x_axis: XAxis::Linear,
        series,
    }
    .render()
}

/// One side of an overlaid plot (the compare page's): its label and its cells (JSON with
/// `cell` and `metrics`, as results serialize).
pub(crate) struct Overlay<'a> {
    pub label: String,
    pub cells: Vec<&'a Json>,
}

/// The label of each cell of each side: the side's, and what tells the cell apart when the
/// side has several.
fn overlay_labels(sides: &[Overlay]) -> Vec<Vec<String>> {
    sides
        .iter()
        .map(|side| {
            if side.cells.len() == 1 {
                vec![side.label.clone()]
            } else {
                cell_labels(&side.cells).into_iter().map(|l| format!("{} · {l}", side.label)).collect()
            }
        })
        .collect()
}

/// A latency distribution by percentile, overlaid: a line per side (per cell of a side that
/// has several), each its own colour.
pub(crate) fn overlay_latency(sides: &[Overlay], metric: &str) -> String {
    let mut series = Vec::new();
    for (side, labels) in sides.iter().zip(overlay_labels(sides)) {
        for (c, label) in side.cells.iter().zip(labels) {
            let points = percentile_points(&c["metrics"][metric]);
            if !points.is_empty() {
                series.push(Series { label, points, color: series.len(), dashed: false });
            }
        }
    }
    LineChart {
        title: format!("{} by percentile", metric_name(metric)),
        caption: "A line per result, drawn through the percentiles each recorded (successful requests only); x is \
                  log-scaled in 1/(1 − q)."
            .into(),
        x_label: "percentile".into(),
        y_label: metric_unit(metric).into(),
        x_axis: XAxis::Labeled(PERCENTILES.iter().map(|(_, label, q)| (quantile_x(*q), label.to_string())).collect()),
        series,
    }
    .render()
}

/// `metric` against load, overlaid: a line per side through its cells, at the swept param
/// its cells spread over (concurrency, rate…), runs averaged. Nothing when no side spreads
/// over one.
pub(crate) fn overlay_load(sides: &[Overlay], metric: &str) -> String {
    let all: Vec<&Json> = sides.iter().flat_map(|s| s.cells.iter().copied()).collect();
    let Some(param) = load_param(&all) else { return String::new() };
    let mut series = Vec::new();
    for side in sides {
        let mut by_x: Vec<(f64, Vec<f64>)> = Vec::new();
        for c in &side.cells {
            let (Some(x), Some(y)) = (c["cell"]["swept"][param.as_str()].as_f64(), value(&c["metrics"], metric)) else {
                continue;
            };
            match by_x.iter_mut().find(|(v, _)| *v == x) {
                Some((_, ys)) => ys.push(y),
                None => by_x.push((x, vec![y])),
            }
        }
        let mut points: Vec<(f64, f64)> =
            by_x.into_iter().map(|(x, ys)| (x, ys.iter().sum::<f64>() / ys.len() as f64)).collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        series.push(Series { label: side.label.clone(), points, color: series.len(), dashed: false });
    }
    LineChart {
        title: format!("{} vs {param}", metric_name(metric)),
        caption: format!("A line per side, a point per value of `{param}` (the mean of its runs)."),
        x_label: param,
        y_label: metric_unit(metric).into(),
        x_axis: XAxis::Linear,
        series,
    }
    .render()
}

/// TTFT p50 against output token throughput, overlaid: a point per cell, a line per side.
pub(crate) fn overlay_ttft_throughput(sides: &[Overlay]) -> String {
    let mut series = Vec::new();
    for side in sides {
        let mut points: Vec<(f64, f64)> = side
            .cells
            .iter()
            .filter_map(|c| {
                Some((value(&c["metrics"], "output_token_throughput")?, value(&c["metrics"], "ttft_ms/p50")?))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        series.push(Series { label: side.label.clone(), points, color: series.len(), dashed: false });
    }
    LineChart {
        title: "TTFT p50 vs output tokens/s".into(),
        caption: "A point per cell: what a token stream costs in time to first token as throughput grows.".into(),
        x_label: "output tokens/s".into(),
        y_label: "ms".into(),
        x_axis: XAxis::Linear,
        series,
    }
    .render()
}

/// Accuracy per subject, a bar per side (`eval_plot` over the sides' cells, labelled by side).
pub(crate) fn overlay_eval(sides: &[Overlay]) -> String {
    let labelled: Vec<Json> = sides
        .iter()
        .flat_map(|s| {
            s.cells.iter().map(|c| {
                let mut c = (*c).clone();
                if !c["eval"].is_object() && c["metrics"]["eval"].is_object() {
                    c["eval"] = c["metrics"]["eval"].clone();
                }
                c["cell"]["engine"] = Json::String(s.label.clone());
                c
            })
        })
        .collect();
    let refs: Vec<&Json> = labelled.iter().collect();
    eval_plot(&refs, &[])
}

/// `resource_plot BENCHMARK QUANTITY`: peak and mean of one sampled resource per cell:
/// `engine_mem_mib`, `engine_cpu_pct`, `host_mem_used_mib`, `host_cpu_pct`, or per GPU
/// `gpu_memory_used_mib`, `gpu_utilization_pct`, `gpu_power_w`, `gpu_temperature_c`,
/// `gpu_sm_clock_mhz`.
pub(crate) fn resource_plot(cells: &[&Json], args: &[&str]) -> String {
    let quantity = args.first().copied().unwrap_or("engine_mem_mib");
    let (title, unit) = match quantity {
        "engine_mem_mib" => ("Engine memory", "MiB"),
        "engine_cpu_pct" => ("Engine CPU", "% of one core"),
        "host_mem_used_mib" => ("Host memory in use", "MiB"),
        "host_cpu_pct" => ("Host CPU", "% of all cores"),
        "gpu_memory_used_mib" => ("GPU memory in use", "MiB"),
        "gpu_utilization_pct" => ("GPU utilisation", "%"),
        "gpu_power_w" => ("GPU power", "W"),
        "gpu_temperature_c" => ("GPU temperature", "°C"),
        "gpu_sm_clock_mhz" => ("GPU SM clock", "MHz"),
        other => (other, ""),
    };
    let mut intervals: Vec<String> = Vec::new();
    let groups: Vec<BarGroup> = cells
        .iter()
        .zip(cell_labels(cells))
        .map(|(c, label)| {
            let r = &c["resources"];
            if let Some(i) = r["interval_ms"].as_f64() {
                intervals.push(if i.fract() == 0.0 { format!("{i:.0}") } else { super::svg::number(i) });
            }
            let series: Vec<(String, &Json)> = match quantity.strip_prefix("gpu_") {
                Some(field) => r["gpus"]
                    .as_array()
                    .map(|g| g.iter().map(|g| (format!("GPU {} ", text(&g["index"])), &g[field])).collect())
                    .unwrap_or_default(),
                None => vec![(String::new(), &r[quantity])],
            };
            let bars = series
                .into_iter()
                .filter(|(_, pm)| pm.is_object())
                .flat_map(|(prefix, pm)| {
                    [("peak", 0), ("mean", 1)].map(|(which, color)| Bar {
                        label: format!("{prefix}{which}"),
                        value: pm[which].as_f64().unwrap_or(f64::NAN),
                        color,
                        note: unit.to_string(),
                    })
                })
                .collect();
            BarGroup { label, bars }
        })
        .collect();
    intervals.sort();
    intervals.dedup();
    let every = match intervals.as_slice() {
        [one] => format!("every {one} ms"),
        _ => "at each cell's interval".to_string(),
    };
    BarChart {
        title: format!("{title} ({unit})"),
        caption: format!("Peak and mean of the samples taken {every} during each cell's measuring window."),
        x_label: unit.to_string(),
        groups,
        max: None,
        format: Format::Plain,
        legend: vec![("peak".into(), 0), ("mean".into(), 1)],
    }
    .render()
}

/// A cell's eval score (`template_context` moves a `metrics.eval` there), when it has an accuracy.
fn eval_of(cell: &Json) -> Option<&Json> {
    Some(&cell["eval"]).filter(|e| e["accuracy"].is_number())
}

fn score_note(s: &Json) -> String {
    let mut parts = Vec::new();
    if let Some(e) = s["stderr"].as_f64() {
        parts.push(format!("± {:.1} %", e * 100.0));
    }
    let correct = s["correct"].as_u64().or_else(|| s["counts"]["correct"].as_u64());
    let scored = s["scored"].as_u64().or_else(|| s["counts"]["scored"].as_u64());
    if let (Some(c), Some(n)) = (correct, scored) {
        parts.push(format!("{c}/{n} correct"));
    }
    parts.join(", ")
}

/// `eval_plot BENCHMARK`: accuracy overall and per group (subject), a bar per cell; nothing when
/// no cell has an eval score.
pub(crate) fn eval_plot(cells: &[&Json], _: &[&str]) -> String {
    let scored: Vec<(&Json, &Json)> = cells.iter().filter_map(|c| eval_of(c).map(|e| (*c, e))).collect();
    if scored.is_empty() {
        return String::new();
    }
    let labels = cell_labels(&scored.iter().map(|(c, _)| *c).collect::<Vec<_>>());
    let subjects: Vec<String> = {
        let mut s: Vec<String> =
            scored.iter().filter_map(|(_, e)| e["groups"].as_object()).flat_map(|g| g.keys().cloned()).collect();
        s.sort();
        s.dedup();
        s
    };
    let bar = |i: usize, s: &Json| Bar {
        label: if scored.len() > 1 { labels[i].clone() } else { String::new() },
        value: s["accuracy"].as_f64().unwrap_or(f64::NAN),
        color: i,
        note: score_note(s),
    };
    let mut groups = vec![BarGroup {
        label: "overall".into(),
        bars: scored.iter().enumerate().map(|(i, (_, e))| bar(i, e)).collect(),
    }];
    for subject in &subjects {
        groups.push(BarGroup {
            label: subject.clone(),
            bars: scored
                .iter()
                .enumerate()
                .filter(|(_, (_, e))| e["groups"][subject.as_str()].is_object())
                .map(|(i, (_, e))| bar(i, &e["groups"][subject.as_str()]))
                .collect(),
        });
    }
    let legend =
        if scored.len() > 1 { labels.iter().cloned().enumerate().map(|(i, l)| (l, i)).collect() } else { vec![] };
    BarChart {
        title: if subjects.is_empty() { "Accuracy".into() } else { "Accuracy per subject".into() },
        caption: "Accuracy = correct / answered (an unparseable answer counts as wrong; a failed generation is not \
                  an answer and is counted apart); hover a bar for its standard error and counts."
            .into(),
        x_label: "accuracy".into(),
        groups,
        max: Some(1.0),
        format: Format::Percent,
        legend,
    }
    .render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cell(engine: &str, swept: Json, metrics: Json) -> Json {
        json!({"cell": {"engine": engine, "model": "m", "swept": swept, "run_index": 0}, "metrics": metrics})
    }

    #[test]
    fn an_overlay_draws_a_line_per_side_labelled_by_side() {
        let a = cell("sim", json!({}), json!({"ttft_ms": {"p50": 10.0, "p99": 20.0}}));
        let b = cell("sim", json!({}), json!({"ttft_ms": {"p50": 12.0, "p99": 30.0}}));
        let sides =
            [Overlay { label: "#1 <a>".into(), cells: vec![&a] }, Overlay { label: "#2".into(), cells: vec![&b] }];
        let svg = overlay_latency(&sides, "ttft_ms");
        assert_eq!(svg.matches("<g class=\"series\">").count(), 2, "{svg}");
        assert!(svg.contains("#1 &lt;a&gt;") && !svg.contains("<a>"), "{svg}");
        assert_eq!(overlay_load(&sides, "request_throughput"), "", "no swept param: nothing to draw");
    }

    #[test]
    fn metric_names_read_like_the_docs() {
        assert_eq!(metric_name("ttft_ms/p50"), "TTFT p50");
        assert_eq!(metric_name("e2e_ms/p99_9"), "e2e latency p99.9");
        assert_eq!(metric_unit("tpot_ms/p50"), "ms");
        assert_eq!(metric_unit("output_token_throughput"), "tokens/s");
    }

    #[test]
    fn labels_name_only_what_differs() {
        let a = cell("sim", json!({"concurrency": 1}), json!({}));
        let b = cell("vllm", json!({"concurrency": 4}), json!({}));
        assert_eq!(cell_labels(&[&a, &b]), ["sim · concurrency=1", "vllm · concurrency=4"]);
        let c = cell("sim", json!({}), json!({}));
        assert_eq!(cell_labels(&[&c]), ["sim · m"]);
    }

    #[test]
    fn load_is_the_swept_param_with_runs_averaged() {
        let cells: Vec<Json> = [(1, 0, 10.0), (1, 1, 12.0), (4, 0, 40.0)]
            .iter()
            .map(|(c, run, rps)| {
                let mut x = cell("sim", json!({"concurrency": c}), json!({"request_throughput": rps}));
                x["cell"]["run_index"] = json!(run);
                x
            })
            .collect();
        let refs: Vec<&Json> = cells.iter().collect();
        assert_eq!(load_param(&refs).as_deref(), Some("concurrency"));
        let svg = load_plot(&refs, &["request_throughput"]);
        assert!(svg.contains("the mean of its runs"), "{svg}");
        assert!(svg.contains(": 11.00 at concurrency = 1"), "the two runs at concurrency 1 averaged: {svg}");
        // One value of the param is no load axis.
        assert_eq!(load_plot(&refs[..1], &["request_throughput"]), "");
    }

    #[test]
    fn stages_are_placed_at_their_offered_rate() {
        let c = cell(
            "sim",
            json!({}),
            json!({"stages": [
                {"name": "synchronous", "metrics": {"request_throughput": 50.0}},
                {"name": "rate", "metrics": {"request_throughput": 90.0, "arrivals": {"offered_rate": 100.0}}},
                {"stopped": "error budget", "rates_not_run": 1}
            ]}),
        );
        let svg = load_plot(&[&c], &["request_throughput"]);
        assert!(svg.contains("offered load (requests/s) = 50.00") && svg.contains("offered load (requests/s) = 100.0"));
        assert_eq!(svg.matches("<circle").count(), 2, "the stop note is no stage: {svg}");
    }

    #[test]
    fn eval_accuracy_per_subject_where_present_and_nothing_otherwise() {
        let plain = cell("sim", json!({}), json!({"requests": 3}));
        assert_eq!(eval_plot(&[&plain], &[]), "");
        let mut scored = plain.clone();
        scored["eval"] = json!({
            "accuracy": 0.5, "stderr": 0.1, "counts": {"scored": 4, "correct": 2},
            "groups": {"algebra": {"accuracy": 1.0, "scored": 2, "correct": 2, "stderr": 0.0},
                       "<b>law</b>": {"accuracy": 0.0, "scored": 2, "correct": 0, "stderr": 0.0}}
        });
        let svg = eval_plot(&[&scored, &plain], &[]);
        assert!(svg.contains("Accuracy per subject"), "{svg}");
        assert!(svg.contains("overall: 50.0 % (± 10.0 %, 2/4 correct)"), "{svg}");
        assert!(svg.contains("algebra: 100.0 %") && svg.contains("&lt;b&gt;law&lt;/b&gt;"), "{svg}");
        assert!(!svg.contains("<b>"));
    }
}
