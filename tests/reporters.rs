//! The built-in reporters over one fixed result set, as golden files; HTML escaping; the HTML
//! report in a real headless browser; a reporter of one's own with `format: html`.
//!
//! tests/golden/result.json is a real run of examples/quickstart.yaml and examples/sweep.yaml on
//! the simulator, merged into one report, with by hand: a fixed run id and times, a GPU in the
//! fingerprint and in the sampled resources, a failed cell, a reused cell and engine metrics.
//! `KITT_UPDATE_GOLDEN=1 cargo nextest run --test reporters` rewrites the golden files; review
//! the diff (the HTML golden opens in a browser).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kitt::report::RunReport;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn fixture() -> RunReport {
    let text = std::fs::read_to_string(golden_dir().join("result.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn builtin_text(path: &str) -> &'static str {
    kitt::catalog::BUILTIN_TEXTS.iter().find(|(p, _)| *p == path).map(|(_, t)| *t).unwrap()
}

fn html(report: &RunReport) -> String {
    kitt::report::html::render(builtin_text("reporters/html.html.hbs"), report).unwrap()
}

fn markdown(report: &RunReport) -> String {
    kitt::report::render_template(builtin_text("reporters/markdown.md.hbs"), report).unwrap()
}

/// Compares `actual` with the golden file `name`, or rewrites it under `KITT_UPDATE_GOLDEN=1`.
fn check_golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("KITT_UPDATE_GOLDEN").is_some_and(|v| v != "0") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; create it with KITT_UPDATE_GOLDEN=1", path.display()));
    if expected != actual {
        let line = expected.lines().zip(actual.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "{name} differs from its golden file at line {}:\n  golden: {}\n  actual: {}\n\
             if the change is intended, run with KITT_UPDATE_GOLDEN=1 and review the diff",
            line + 1,
            expected.lines().nth(line).unwrap_or("<end>"),
            actual.lines().nth(line).unwrap_or("<end>"),
        );
    }
}

#[test]
fn json_reporter_matches_its_golden_file() {
    // The fixture is the json reporter's own output: reading it and writing it again gives the
    // same bytes, so a change to the result model shows here.
    let mut json = serde_json::to_string_pretty(&fixture()).unwrap();
    json.push('\n');
    check_golden("result.json", &json);
}

#[test]
fn csv_reporter_matches_its_golden_file() {
    check_golden("results.csv", &kitt::report::csv(&fixture()));
}

#[test]
fn markdown_reporter_matches_its_golden_file() {
    let md = markdown(&fixture());
    // The parts the reporter promises: suite, hardware, a table per benchmark, stages, failures.
    for part in [
        "## Suite",
        "## Hardware",
        "| GPUs | NVIDIA H100 80GB HBM3 79.6 GiB (driver 550.90.07, CUDA 12.4) |",
        "## tput (throughput)",
        "| sim | tiny | concurrency=4 | 0 | ok | 32/32 |",
        "| sim | 0 | synchronous | synchronous | 30/30 |",
        "## Failures",
    ] {
        assert!(md.contains(part), "missing {part:?}:\n{md}");
    }
    check_golden("report.md", &md);
}

#[test]
fn html_reporter_matches_its_golden_file() {
    let report = fixture();
    let page = html(&report);
    assert_eq!(page, html(&report), "rendering is deterministic");
    check_golden("report.html", &page);
}

#[test]
fn golden_files_hold_no_paths_of_this_machine_or_times_of_this_run() {
    let root = env!("CARGO_MANIFEST_DIR");
    for name in ["result.json", "results.csv", "report.md", "report.html"] {
        let text = std::fs::read_to_string(golden_dir().join(name)).unwrap();
        for bad in [root, "/tmp/", "/home/", "/root/", "/work/"] {
            assert!(!text.contains(bad), "{name} contains {bad:?}");
        }
    }
    // Nothing in the page depends on the moment it was rendered: the same report, rendered
    // twice with time passing between, is the same bytes (and the golden test pins them).
    let a = html(&fixture());
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(a, html(&fixture()));
}

/// The page stands alone: no script, no external resource of any kind.
#[test]
fn html_report_is_one_self_contained_file() {
    let page = html(&fixture());
    let lower = page.to_lowercase();
    for bad in ["<script", "<link", "<img", "<iframe", "@import", "url(", "src=", "javascript:"] {
        assert!(!lower.contains(bad), "the page has {bad:?}");
    }
    let external: Vec<&str> = lower
        .match_indices("http")
        .map(|(i, _)| &page[i..(i + 40).min(page.len())])
        .filter(|s| !s.starts_with("http://www.w3.org/2000/svg"))
        .collect();
    assert!(external.is_empty(), "external references: {external:?}");
    // Every benchmark of the fixture gets its latency plots, and the swept one its load plots.
    assert!(page.contains("TTFT by percentile") && page.contains("ITL by percentile"));
    assert!(page.contains("e2e latency by percentile"));
    assert!(page.contains("requests/s vs concurrency") && page.contains("requests/s vs offered load"));
    assert!(page.contains("p50, p90, p95, p99, p99.9 and max"), "the plot says what it is drawn from");
    assert!(page.contains("GPU memory in use (MiB)") && page.contains("Engine memory (MiB)"));
    assert!(page.contains("NVIDIA H100 80GB HBM3"), "the hardware fingerprint");
    assert!(!page.contains("Accuracy"), "no eval section in a result without one");
}

/// Every string a result carries, made hostile; none of them may reach the page as markup.
fn hostile(report: &mut RunReport) {
    const X: &str = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>";
    report.suite = format!("suite{X}");
    report.suite_file = format!("a{X}.yaml");
    report.run_id = format!("run{X}");
    report.facts.insert(format!("fact{X}"), format!("value{X}"));
    if let Some(h) = report.hardware.as_mut() {
        h.identity = format!("id{X}");
        h.hardware.cpu.model = format!("cpu{X}");
        h.hardware.cpu.flags.push(format!("flag{X}"));
        h.hardware.gpus[0].name = format!("gpu{X}");
        h.hardware.os.name = format!("os{X}");
        h.gpu_note = Some(format!("note{X}"));
    }
    for c in &mut report.cells {
        c.cell.model = format!("model{X}");
        c.cell.engine = format!("engine{X}");
        c.cell.benchmark = format!("{}{X}", c.cell.benchmark);
        c.cell.template = format!("template{X}");
        c.cell.swept.insert(format!("k{X}"), format!("v{X}").into());
        c.cell.params.insert(format!("p{X}"), format!("v{X}").into());
        if c.error.is_some() {
            c.error = Some(format!("error{X}"));
        }
        c.provenance.drift.push(format!("drift{X}"));
        if let Some(stages) = c.metrics.get_mut("stages").and_then(|s| s.as_array_mut()) {
            for s in stages {
                s["name"] = format!("stage{X}").into();
            }
        }
        if let Some(m) = c.engine_metrics.as_mut() {
            m.counters.insert(format!("counter{X}"), 1.0);
        }
    }
}

#[test]
fn html_escapes_every_string_from_the_result() {
    let mut report = fixture();
    hostile(&mut report);
    let page = html(&report);
    let lower = page.to_lowercase();
    assert!(!lower.contains("<script"), "a script tag got through");
    assert!(!lower.contains("<img"), "an img tag got through");
    assert!(!page.contains("\"'>"), "a string closed an attribute");
    assert!(page.contains("model&lt;script&gt;alert(1)&lt;/script&gt;"), "the model name is shown, escaped");
    // Escaped in the plots too: the legend and hover text of the SVG.
    let svg_start = page.find("<svg").unwrap();
    assert!(page[svg_start..].contains("&lt;script&gt;"));
    // Every plot is still one well-formed SVG element.
    assert_eq!(page.matches("<svg").count(), page.matches("</svg>").count());
    assert_eq!(page.matches("<table").count(), page.matches("</table>").count());
}

#[test]
fn html_shows_eval_accuracy_per_subject_when_the_result_has_it() {
    let mut value = serde_json::to_value(fixture()).unwrap();
    value["cells"][3]["eval"] = serde_json::json!({
        "accuracy": 0.625, "stderr": 0.0915, "unparseable_share": 0.0,
        "counts": {"total": 8, "scored": 8, "correct": 5, "incorrect": 3, "unparseable": 0, "errors": 0, "skipped": 0},
        "groups": {
            "abstract_algebra": {"scored": 4, "correct": 3, "accuracy": 0.75, "stderr": 0.25, "unparseable": 0},
            "college_<b>physics</b>": {"scored": 4, "correct": 2, "accuracy": 0.5, "stderr": 0.2887, "unparseable": 0}
        }
    });
    let page = kitt::report::html::render_value(builtin_text("reporters/html.html.hbs"), value).unwrap();
    assert!(page.contains("<h3>Accuracy</h3>") && page.contains("62.5 %"), "the accuracy table");
    assert!(page.contains("Accuracy per subject"), "the plot");
    assert!(page.contains("abstract_algebra: 75.0 % (± 25.0 %, 3/4 correct)"));
    assert!(page.contains("college_&lt;b&gt;physics&lt;/b&gt;") && !page.contains("<b>physics"));
}

// ---- the page in a real browser ----

fn browser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
        .iter()
        .flat_map(|b| std::env::split_paths(&path).map(move |d| d.join(b)))
        .find(|p| p.is_file())
}

/// Runs the browser headless on `args`, killing it after a minute; (stdout, stderr).
fn headless(browser: &Path, args: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let profile = format!("--user-data-dir={}", dir.path().join("profile").display());
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(browser)
        .args(["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--enable-logging=stderr", "--v=0"])
        .arg(profile)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} {args:?} ran over a minute", browser.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (std::fs::read_to_string(out).unwrap(), std::fs::read_to_string(err).unwrap())
}

/// Console messages and uncaught errors in a browser's log (the page has no script, so any
/// console message at all is a fault: a blocked resource, a parse error, a script that got in).
fn console_errors(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught")).collect()
}

/// A plot in a DOM: its title, the `d` of each line's path, the width of each bar.
struct Plot {
    title: String,
    lines: Vec<String>,
    bars: Vec<f64>,
}

/// Every `<svg>` of a DOM.
fn plots(dom: &str) -> Vec<Plot> {
    let attr =
        |s: &str, name: &str| s.split(name).nth(1).and_then(|d| d.split('"').next()).unwrap_or_default().to_string();
    dom.split("<svg")
        .skip(1)
        .map(|svg| {
            let svg = svg.split("</svg>").next().unwrap_or_default();
            Plot {
                title: svg.split("<title>").nth(1).and_then(|t| t.split("</title>").next()).unwrap_or_default().into(),
                lines: svg.split("<g class=\"series\">").skip(1).map(|g| attr(g, " d=\"")).collect(),
                bars: svg
                    .split("<rect class=\"bar\"")
                    .skip(1)
                    .map(|r| attr(r, " width=\"").parse().unwrap_or(0.0))
                    .collect(),
            }
        })
        .collect()
}

#[test]
fn html_report_renders_in_a_headless_browser_with_its_plots() {
    let Some(browser) = browser() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "no chromium on PATH: CI installs it (.ci/run: apt-get install -y --no-install-recommends chromium)"
            );
        }
        eprintln!(
            "SKIPPED html_report_renders_in_a_headless_browser_with_its_plots: no chromium on PATH \
             (apt-get install -y --no-install-recommends chromium)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = |name: &str| format!("file://{}", dir.path().join(name).display());

    // The detector itself: a page with a console error and an uncaught one is caught.
    std::fs::write(
        dir.path().join("bad.html"),
        "<!DOCTYPE html><p>x</p><script>console.error('boom'); nope();</script>",
    )
    .unwrap();
    let (_, err) = headless(&browser, &["--dump-dom", &url("bad.html")]);
    assert_eq!(console_errors(&err).len(), 2, "the console check must see errors:\n{err}");

    let mut hostile_report = fixture();
    hostile(&mut hostile_report);
    for (name, report) in [("report.html", fixture()), ("hostile.html", hostile_report)] {
        std::fs::write(dir.path().join(name), html(&report)).unwrap();
        let (dom, err) = headless(&browser, &["--dump-dom", &url(name)]);
        assert!(console_errors(&err).is_empty(), "{name}: console errors:\n{err}");
        assert!(dom.contains("</html>"), "{name}: no DOM:\n{dom}\n{err}");
        assert!(!dom.to_lowercase().contains("<script"), "{name}: a script element in the DOM");
        assert!(!dom.to_lowercase().contains("<img"), "{name}: an img element in the DOM");
        let plots = plots(&dom);
        assert!(plots.len() >= 15, "{name}: only {} plots in the DOM", plots.len());
        for p in &plots {
            assert!(!p.lines.is_empty() || !p.bars.is_empty(), "{name}: plot {:?} is empty", p.title);
            for d in &p.lines {
                assert!(d.starts_with('M') && d.contains(" L"), "{name}: plot {:?} has a line {d:?}", p.title);
            }
            assert!(p.bars.iter().any(|w| *w > 0.0) || p.bars.is_empty(), "{name}: plot {:?}: no bar shows", p.title);
        }
        // Every plot kind made it into the page.
        for kind in ["TTFT by percentile", "requests/s vs concurrency", "TTFT p50 and TTFT p99 vs offered load"] {
            assert!(plots.iter().any(|p| p.title == kind), "{name}: no plot {kind:?}");
        }
        assert!(plots.iter().any(|p| p.title.starts_with("Engine CPU") && !p.bars.is_empty()), "{name}: no bars");
    }

    // A screenshot: the page paints. KITT_SCREENSHOT_DIR keeps it for a person to look at.
    let keep = std::env::var_os("KITT_SCREENSHOT_DIR").map(PathBuf::from);
    let shot = keep.clone().unwrap_or_else(|| dir.path().to_path_buf()).join("report.png");
    let shot_arg = format!("--screenshot={}", shot.display());
    let (_, err) =
        headless(&browser, &["--hide-scrollbars", "--window-size=1400,6000", &shot_arg, &url("report.html")]);
    assert!(console_errors(&err).is_empty(), "console errors while painting:\n{err}");
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}):\n{err}"));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 50_000, "a blank screenshot? {} bytes", png.len());
}

// ---- a reporter of one's own ----

#[test]
fn a_user_html_reporter_is_a_manifest_and_a_template_with_the_plot_helpers() {
    let d = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = d.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        "templates/page.yaml",
        "apiVersion: kitt/v1\nkind: Reporter\nmetadata: {name: page}\nspec: {format: html, template: page.html.hbs, output: page.html}\n",
    );
    write(
        "templates/page.html.hbs",
        "<!DOCTYPE html><title>{{suite}}</title>{{#each benchmarks}}<h2>{{name}}</h2>{{{load_plot this \"output_token_throughput\"}}}{{/each}}\n",
    );
    write(
        "suite.yaml",
        r#"apiVersion: kitt/v1
kind: Suite
metadata: {name: mine}
spec:
  models: [{name: "tiny<b>"}]
  engines: [{name: s, template: sim, params: {ttft_ms: 1, itl_ms: 0}}]
  benchmarks: [{name: t, template: throughput, params: {concurrency: [1, 2], requests: 4, max_tokens: 4, input_tokens: 8}}]
  warmup: {requests: 0}
  templates: [./templates/]
  reporters: [json, html, page]
"#,
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kitt"))
        .arg("apply")
        .arg(d.path().join("suite.yaml"))
        .env("KITT_RUNS_DIR", d.path().join("runs"))
        .env("KITT_HOST_LOCK", d.path().join("host.lock"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = std::fs::read_dir(d.path().join("runs")).unwrap().next().unwrap().unwrap().path();
    let page = std::fs::read_to_string(run.join("report/page.html")).unwrap();
    assert!(page.starts_with("<!DOCTYPE html><title>mine</title><h2>t</h2><svg"), "{page}");
    assert!(page.contains("output tokens/s vs concurrency"), "{page}");
    // The built-in html reporter ran beside it, and escaped the model name.
    let builtin = std::fs::read_to_string(run.join("report/report.html")).unwrap();
    assert!(builtin.contains("tiny&lt;b&gt;") && !builtin.contains("tiny<b>"));
    // `format: html` without a template is an error that says what is missing.
    write(
        "templates/page.yaml",
        "apiVersion: kitt/v1\nkind: Reporter\nmetadata: {name: page}\nspec: {format: html, output: page.html}\n",
    );
    let errors = kitt::plan::compile::compile_file(&d.path().join("suite.yaml")).unwrap_err();
    assert!(errors.iter().any(|e| e.message.contains("`format: html` needs `template:`")), "{errors:?}");
}
