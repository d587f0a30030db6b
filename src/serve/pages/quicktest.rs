//! Quick Test: a form that builds a suite the way `kitt run -m MODEL -e ENGINE -s SUITE` does
//! (the suite's benchmarks, this model and engine), with the runs and sampling given. "Show
//! suite" prints the YAML it would run; "Launch" validates it (errors with line:column in that
//! YAML) and starts it as an ordinary detached run, then goes to its live page.
//!
//! Only a suite built from the form runs, from a ready suite or one under a `--suites-dir`:
//! no text a user typed becomes a template, so the form starts nothing a `run` token could not
//! start through `POST /api/v1/runs`. The suite is kept, content-addressed, under
//! `<runs dir>/.quicktest/<sha256>/`, where resume finds it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value as Json, json};
use sha2::{Digest as _, Sha256};

use super::super::App;
use super::super::api::{apply_detached, blocking};
use super::super::problem::Problem;
use super::super::tokens::Caller;
use super::{page, query_pairs, see_other};

/// Where quick tests' suites are kept.
pub fn dir(app: &App) -> PathBuf {
    app.cfg.runs_root.join(".quicktest")
}

/// The sampling fields the form offers.
const SAMPLING: &[&str] = &["temperature", "top_p", "max_tokens", "seed"];

/// What the form holds.
#[derive(Debug, Clone, Default)]
struct Form {
    model: String,
    model_path: String,
    engine: String,
    suite: String,
    runs: String,
    sampling: Vec<(&'static str, String)>,
}

impl Form {
    fn from_pairs(pairs: &[(String, String)]) -> Form {
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        Form {
            model: get("model"),
            model_path: get("model_path"),
            engine: if get("engine").is_empty() { "sim".into() } else { get("engine") },
            suite: if get("suite").is_empty() { "quick".into() } else { get("suite") },
            runs: get("runs"),
            sampling: SAMPLING.iter().map(|k| (*k, get(k))).collect(),
        }
    }

    fn json(&self) -> Json {
        let mut v = json!({
            "model": self.model, "model_path": self.model_path, "engine": self.engine, "suite": self.suite,
            "runs": self.runs,
        });
        for (k, val) in &self.sampling {
            v[*k] = json!(val);
        }
        v
    }
}

/// The suites the form offers: the ready ones (`quick`, …) and each suite file under a
/// `--suites-dir` (by its path there).
fn suites(app: &App) -> Vec<String> {
    let mut out: Vec<String> = crate::cli::apply::READY_SUITES.iter().map(|(n, _)| n.to_string()).collect();
    for root in &app.cfg.suites_dirs {
        let mut files: Vec<String> = std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .filter_map(|p| p.strip_prefix(root).ok().map(|r| r.to_string_lossy().into_owned()))
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

/// A value as typed: a number when it reads as one (so the schema judges numbers), else text.
fn typed(text: &str) -> Json {
    serde_json::from_str::<serde_json::Number>(text.trim()).map_or_else(|_| json!(text), Json::Number)
}

/// The suite the form describes, as YAML, and the directory its relative paths resolve from.
fn build(app: &App, form: &Form) -> Result<(String, Option<PathBuf>), Problem> {
    let (text, source_dir) = match crate::cli::apply::READY_SUITES.iter().find(|(n, _)| *n == form.suite) {
        Some((_, text)) => (text.to_string(), None),
        None => {
            let path = super::super::api::allowed_suite(app, &form.suite)?;
            let text = std::fs::read_to_string(&path).map_err(|e| Problem::internal(format!("{}: {e}", form.suite)))?;
            (text, path.parent().map(Path::to_path_buf))
        }
    };
    let node = crate::manifest::yaml::parse(&text).map_err(|d| {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, format!("suite {}: {}", form.suite, d.headline()))
    })?;
    let mut suite = node.to_json();
    let name = if form.model.trim().is_empty() { "model" } else { form.model.trim() };
    let mut model = json!({"name": name});
    if !form.model_path.trim().is_empty() {
        model["path"] = json!(form.model_path.trim());
    }
    suite["spec"]["models"] = json!([model]);
    suite["spec"]["engines"] = json!([{"name": form.engine, "template": form.engine}]);
    if !form.runs.trim().is_empty() {
        suite["spec"]["runs"] = typed(&form.runs);
    }
    for (k, v) in &form.sampling {
        if !v.trim().is_empty() {
            if !suite["spec"]["sampling"].is_object() {
                suite["spec"]["sampling"] = json!({});
            }
            suite["spec"]["sampling"][*k] = typed(v);
        }
    }
    // Suite-local templates of a suite under a suites directory are found where they are.
    if let (Some(dir), Some(list)) = (&source_dir, suite["spec"]["templates"].as_array_mut()) {
        for t in list.iter_mut() {
            if let Some(rel) = t.as_str().filter(|p| Path::new(p).is_relative()) {
                *t = json!(dir.join(rel).to_string_lossy());
            }
        }
    }
    let label: String = format!("quicktest-{name}-{}", form.engine)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
        .take(100)
        .collect();
    suite["metadata"]["name"] = json!(label);
    suite["metadata"]["description"] = json!(format!("Quick Test of the web pages, from {}", form.suite));
    let yaml = crate::manifest::emit::to_yaml(&json!({
        "apiVersion": suite["apiVersion"], "kind": "Suite", "metadata": suite["metadata"], "spec": suite["spec"],
    }));
    Ok((yaml, source_dir))
}

/// The YAML's lines, numbered, with the lines that have errors marked; the errors as
/// `line:col: message` (and help).
fn checked(yaml: &str, errors: &[crate::manifest::diag::Diagnostic]) -> (Vec<Json>, Vec<Json>) {
    let lines = yaml
        .lines()
        .enumerate()
        .map(|(i, l)| json!({"n": i + 1, "text": l, "bad": errors.iter().any(|d| d.pos.line == i + 1)}))
        .collect();
    let errs = errors.iter().map(|d| json!({"at": d.pos.to_string(), "message": d.message, "help": d.help})).collect();
    (lines, errs)
}

fn form_page(
    app: &App,
    caller: &Caller,
    form: &Form,
    yaml: Option<&str>,
    errors: Vec<Json>,
    lines: Vec<Json>,
) -> Response {
    let engines: Vec<&String> = crate::catalog::Catalog::builtin().engines.keys().collect();
    let data = json!({
        "form": form.json(), "engines": engines, "suites": suites(app), "yaml": yaml, "lines": lines,
        "errors": errors, "can_launch": !app.cfg.read_only && caller.scope.allows(super::super::tokens::Scope::Run),
    });
    page(app, Some(caller), "quicktest", "Quick Test", data)
}

/// The form (`?model=…` fills it; `?show=1` also prints the suite it would run).
pub(super) async fn form(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, uri: Uri) -> Response {
    let pairs = query_pairs(&uri);
    let form = Form::from_pairs(&pairs);
    if !pairs.iter().any(|(k, _)| k == "show") {
        return form_page(&app, &caller, &form, None, Vec::new(), Vec::new());
    }
    let built = {
        let (app, form) = (app.clone(), form.clone());
        blocking(move || {
            let (yaml, _) = build(&app, &form)?;
            let errors = match crate::plan::compile::compile_source(&yaml, &dir(&app).join("suite.yaml")) {
                Ok(_) => Vec::new(),
                Err(d) => d,
            };
            Ok((yaml, errors))
        })
        .await
    };
    match built {
        Ok((yaml, errors)) => {
            let (lines, errs) = checked(&yaml, &errors);
            form_page(&app, &caller, &form, Some(&yaml), errs, lines)
        }
        Err(p) => form_page(
            &app,
            &caller,
            &form,
            None,
            vec![json!({"at": "", "message": p.detail, "help": null})],
            Vec::new(),
        ),
    }
}

/// Launch: validate, keep the suite, start it detached, go to its page.
pub(super) async fn launch(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: String,
) -> Response {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let form = Form::from_pairs(&pairs);
    let prepared = {
        let (app, form) = (app.clone(), form.clone());
        blocking(move || {
            let (yaml, _) = build(&app, &form)?;
            let digest: String = Sha256::digest(yaml.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
            let place = dir(&app).join(&digest[..32]);
            let path = place.join("suite.yaml");
            if let Err(errors) = crate::plan::compile::compile_source(&yaml, &path) {
                return Ok((yaml, Err(errors)));
            }
            std::fs::create_dir_all(&place).map_err(Problem::internal)?;
            if !path.is_file() {
                let tmp = place.join(".suite.yaml.tmp");
                std::fs::write(&tmp, &yaml).map_err(Problem::internal)?;
                std::fs::rename(&tmp, &path).map_err(Problem::internal)?;
            }
            Ok((yaml, Ok(path)))
        })
        .await
    };
    let problem = |p: Problem| {
        let mut res = form_page(
            &app,
            &caller,
            &form,
            None,
            vec![json!({"at": "", "message": p.detail, "help": null})],
            Vec::new(),
        );
        *res.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        res
    };
    match prepared {
        Ok((yaml, Err(errors))) => {
            let (lines, errs) = checked(&yaml, &errors);
            let mut res = form_page(&app, &caller, &form, Some(&yaml), errs, lines);
            *res.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            res
        }
        Ok((_, Ok(path))) => match apply_detached(&app, &path, true, None, &caller).await {
            Ok(v) => match v["run_id"].as_str() {
                Some(id) => see_other(&format!("/runs/{}", super::url_encode(id))),
                None => problem(Problem::internal("kitt apply --detach named no run")),
            },
            Err(p) => problem(p),
        },
        Err(p) => problem(p),
    }
}
