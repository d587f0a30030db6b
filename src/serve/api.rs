//! The `/api/v1` handlers (their table is `routes::ROUTES`). They read the same run
//! directories and store as the CLI, and start, resume and cancel runs by running the same `kitt` commands a user would (`kitt apply
//! --detach`, `kitt runs cancel`): a run started here is an ordinary run that outlives the server.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::App;
use super::problem::{Json, Problem, Query};
use super::tokens::{Caller, Scope};
use crate::run::dir;

/// The largest page of results one request gets.
pub const MAX_PAGE: u32 = 1000;
/// The page size when none is asked for.
pub const DEFAULT_PAGE: u32 = 100;
/// The largest suite accepted in a request body.
pub const MAX_SUITE_BYTES: usize = 1 << 20;

type Answer = Result<Response, Problem>;

fn ok(value: JsonValue) -> Answer {
    Ok(axum::Json(value).into_response())
}

/// Runs blocking work (the store, run directories) off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f).await.map_err(Problem::internal)?
}

pub(super) async fn health() -> Answer {
    ok(json!({"status": "ok"}))
}

pub(super) async fn version(State(app): State<Arc<App>>) -> Answer {
    ok(json!({
        "kitt": env!("CARGO_PKG_VERSION"),
        "store_schema": crate::store::VERSION,
        "read_only": app.cfg.read_only,
    }))
}

pub(super) async fn openapi() -> Answer {
    ok(super::openapi::document())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResultsQuery {
    suite: Option<String>,
    engine: Option<String>,
    model: Option<String>,
    fingerprint: Option<String>,
    since: Option<String>,
    until: Option<String>,
    benchmark: Option<String>,
    run: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

/// A `since` or `until` of a listing: a date, a UTC time or a duration ago.
pub(super) fn instant(name: &str, text: &str) -> Result<u64, Problem> {
    static FORM: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(super::routes::SINCE_PATTERN).ok());
    if !FORM.as_ref().is_some_and(|re| re.is_match(text)) {
        return Err(Problem::bad_request(format!(
            "{name}: expected a date (2026-11-01), a UTC time (2026-11-01T12:00:00Z) or a duration ago (7d, 12h)"
        )));
    }
    crate::cli::results::parse_since(text).map_err(|e| Problem::bad_request(format!("{name}: {e}")))
}

pub(super) async fn results(State(app): State<Arc<App>>, Query(q): Query<ResultsQuery>) -> Answer {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(Problem::bad_request(format!("limit: {limit} is not between 1 and {MAX_PAGE}")));
    }
    let since = q.since.as_deref().map(|s| instant("since", s)).transpose()?;
    let until = q.until.as_deref().map(|s| instant("until", s)).transpose()?;
    if let Some(run) = q.run.as_deref().filter(|r| !valid_id(r)) {
        return Err(Problem::bad_request(format!("run: `{}` is not a run id", clip(run))));
    }
    if q.after.is_some_and(|a| a < 0) {
        return Err(Problem::bad_request("after: not below 0"));
    }
    let filter = crate::store::Filter {
        suite: q.suite,
        engine: q.engine,
        model: q.model,
        fingerprint: q.fingerprint,
        since_unix_ns: since,
        until_unix_ns: until,
        benchmark: q.benchmark,
        run_id: q.run,
        after_id: q.after,
        limit: Some(limit),
        ..crate::store::Filter::default()
    };
    // Written straight from the stored JSON (`Store::records_json`): the hot route.
    let body = blocking(move || {
        let mut body = Vec::with_capacity(64 * 1024);
        body.extend_from_slice(b"{\"results\":");
        let (count, last) = match app.store()? {
            Some(store) => store.records_json(&filter, &mut body).map_err(Problem::internal)?,
            None => {
                body.extend_from_slice(b"[]");
                (0, None)
            }
        };
        let next = if count == limit as usize { last } else { None };
        body.extend_from_slice(
            format!(",\"next\":{}}}", next.map_or("null".to_string(), |n| n.to_string())).as_bytes(),
        );
        Ok(body)
    })
    .await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn result_id(id: &str) -> Result<i64, Problem> {
    id.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Problem::bad_request(format!("id: `{}` is not a result id (a positive integer)", clip(id))))
}

/// At most 64 characters of what a caller sent, for an error message.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

pub(super) async fn result(State(app): State<Arc<App>>, UrlPath(id): UrlPath<String>) -> Answer {
    let n = result_id(&id)?;
    let value = blocking(move || {
        let store = app.store()?.ok_or_else(|| Problem::not_found(format!("no result {n}: the store is empty")))?;
        let record =
            store.record(n).map_err(Problem::internal)?.ok_or_else(|| Problem::not_found(format!("no result {n}")))?;
        let key = crate::compare::Identity::of(&record.cell).key();
        let reps: Vec<crate::store::Record> = store
            .run_records(&record.run_id)
            .map_err(Problem::internal)?
            .into_iter()
            .filter(|r| crate::compare::Identity::of(&r.cell).key() == key)
            .collect();
        let aggregate = crate::compare::group(&reps).first().map(crate::compare::aggregate);
        Ok(json!({"result": record, "repetitions": aggregate}))
    })
    .await?;
    ok(value)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CompareQuery {
    a: String,
    b: String,
}

pub(super) async fn compare(State(app): State<Arc<App>>, Query(q): Query<CompareQuery>) -> Answer {
    for (name, spec) in [("a", &q.a), ("b", &q.b)] {
        // Ids only: a path would let a caller read any directory on the server.
        if !valid_id(spec) {
            return Err(Problem::bad_request(format!("{name}: `{}` is not a run id or a result id", clip(spec))));
        }
    }
    let value = blocking(move || {
        let store = app.store()?;
        let mut sides = Vec::new();
        for spec in [&q.a, &q.b] {
            sides.push(
                crate::cli::compare::resolve(spec, store.as_deref(), &app.cfg.runs_root).map_err(Problem::not_found)?,
            );
        }
        let items = [crate::compare::items::Items::read(&sides[0].1), crate::compare::items::Items::read(&sides[1].1)];
        let a = crate::compare::Side { label: sides[0].0.clone(), records: &sides[0].1, items: &items[0] };
        let b = crate::compare::Side { label: sides[1].0.clone(), records: &sides[1].1, items: &items[1] };
        let comparison = crate::compare::compare(&a, &b, &[]).map_err(|e| Problem::bad_request(e.to_string()))?;
        serde_json::to_value(&comparison).map_err(Problem::internal)
    })
    .await?;
    ok(value)
}

/// A run id or another name that may become one path component: letters, digits, `-`, `_`,
/// `.`, not starting with a dot, at most 128 characters.
pub(super) fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The directory of run `id`, which must be inside the runs directory (a symlink out of it is
/// refused).
pub(super) fn run_dir(app: &App, id: &str) -> Result<dir::RunInfo, Problem> {
    if !valid_id(id) {
        return Err(Problem::bad_request(format!("id: `{}` is not a run id", clip(id))));
    }
    let missing = || Problem::not_found(format!("no run `{id}` (see /api/v1/runs)"));
    let root = app.cfg.runs_root.canonicalize().map_err(|_| missing())?;
    let path = root.join(id).canonicalize().map_err(|_| missing())?;
    if path.parent() != Some(root.as_path()) {
        return Err(Problem::bad_request(format!("id: run `{id}` leads out of the runs directory")));
    }
    dir::info(&path).ok_or_else(missing)
}

pub(super) async fn runs(State(app): State<Arc<App>>) -> Answer {
    let list = blocking(move || Ok(dir::list(&app.cfg.runs_root))).await?;
    ok(json!({"runs": list}))
}

pub(super) async fn run(State(app): State<Arc<App>>, UrlPath(id): UrlPath<String>) -> Answer {
    let value = blocking(move || {
        let info = run_dir(&app, &id)?;
        let shown = crate::cli::runs::shown(info).map_err(Problem::internal)?;
        Ok(shown.json())
    })
    .await?;
    ok(value)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JournalQuery {
    shard: Option<String>,
    after: Option<u64>,
}

pub(super) async fn journal(
    State(app): State<Arc<App>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<JournalQuery>,
) -> Answer {
    let shard = q.shard.unwrap_or_else(|| "journal".into());
    if !valid_id(&shard) {
        return Err(Problem::bad_request(format!("shard: `{}` is not a shard name", clip(&shard))));
    }
    let value = blocking(move || {
        let info = run_dir(&app, &id)?;
        let shards = super::events::shards(&info.path);
        let Some(path) = shards.iter().find(|(name, _)| *name == shard).map(|(_, p)| p.clone()) else {
            return Err(Problem::not_found(format!("run `{id}` has no journal shard `{shard}`")));
        };
        let contents = crate::run::journal::read(&path).map_err(Problem::internal)?;
        let after = q.after.unwrap_or(0);
        let records: Vec<_> = contents.records.into_iter().filter(|r| q.after.is_none() || r.seq > after).collect();
        let names: Vec<String> = shards.into_iter().map(|(n, _)| n).collect();
        Ok(json!({"run": id, "shard": shard, "shards": names, "records": records}))
    })
    .await?;
    ok(value)
}

/// Runs this kitt binary with `args` and returns its exit status, stdout and stderr.
async fn kitt(app: &App, args: &[&std::ffi::OsStr]) -> Result<(bool, String, String), Problem> {
    let mut cmd = tokio::process::Command::new(&app.cfg.exe);
    cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(false);
    cmd.env("NO_COLOR", "1").env("KITT_RUNS_DIR", &app.cfg.runs_root);
    match &app.cfg.store_flag {
        Some(s) => cmd.env("KITT_STORE", s),
        None => cmd.env("KITT_STORE", "off"),
    };
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .map_err(|_| Problem::internal("kitt did not answer within 120 s"))?
        .map_err(|e| Problem::internal(format!("cannot run {}: {e}", app.cfg.exe.display())))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The suite `rel` inside one of the server's suite directories.
pub(super) fn allowed_suite(app: &App, rel: &str) -> Result<PathBuf, Problem> {
    if app.cfg.suites_dirs.is_empty() {
        return Err(Problem::forbidden(
            "this server starts no runs from suite files: it was started without --suites-dir",
        ));
    }
    let path = Path::new(rel);
    if rel.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Problem::bad_request(format!(
            "suite: `{}` must be a relative path without `..` inside a suites directory",
            clip(rel)
        )));
    }
    for root in &app.cfg.suites_dirs {
        if let Ok(p) = root.join(path).canonicalize()
            && p.starts_with(root)
            && p.is_file()
        {
            return Ok(p);
        }
    }
    Err(Problem::not_found(format!("suite: no `{}` in the server's suite directories", clip(rel))))
}

/// What a started or resumed run's `kitt apply --detach` said (its JSON, with `started_by`), or
/// why it refused.
fn started(ok: bool, stdout: &str, stderr: &str, caller: &Caller) -> Result<JsonValue, Problem> {
    if !ok {
        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, stderr.trim_end().to_string()));
    }
    let mut value: JsonValue = serde_json::from_str(stdout).map_err(Problem::internal)?;
    value["started_by"] = caller.name.clone().into();
    tracing::info!("run {} started by token `{}`", value["run_id"].as_str().unwrap_or_default(), caller.name);
    Ok(value)
}

/// 201 with a started run's JSON.
pub(super) fn created(value: JsonValue) -> Answer {
    Ok((StatusCode::CREATED, axum::Json(value)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartBody {
    suite: String,
    #[serde(default)]
    fresh: bool,
}

pub(super) async fn start_run(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(body): Json<StartBody>,
) -> Answer {
    let suite = allowed_suite(&app, &body.suite)?;
    created(apply_detached(&app, &suite, body.fresh, None, &caller).await?)
}

/// The executor a suite names (`execution.executor`), when it reads.
fn suite_executor(suite: &Path) -> Option<crate::exec::ExecutorKind> {
    let raw = crate::manifest::read_raw(suite).ok()?;
    let spec = raw.decode::<crate::manifest::SuiteSpec>().ok()?;
    spec.spec.execution.executor.map(|x| x.value)
}

/// `kitt apply SUITE --executor processes --detach` (resuming `resume`): a run that outlives
/// the server.
pub(super) async fn apply_detached(
    app: &App,
    suite: &Path,
    fresh: bool,
    resume: Option<&str>,
    caller: &Caller,
) -> Result<JsonValue, Problem> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["apply".as_ref(), suite.as_os_str()];
    // A suite placed on agents stays there; every other runs as processes here.
    let executor =
        if suite_executor(suite) == Some(crate::exec::ExecutorKind::Agents) { "agents" } else { "processes" };
    args.extend(["--executor", executor, "--detach", "--output", "json", "-q"].map(std::ffi::OsStr::new));
    if fresh {
        args.push("--fresh".as_ref());
    }
    if let Some(run) = resume {
        args.extend([std::ffi::OsStr::new("--resume"), std::ffi::OsStr::new(run)]);
    }
    let (done, out, err) = kitt(app, &args).await?;
    started(done, &out, &err, caller)
}

pub(super) async fn resume(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Answer {
    created(resume_run(&app, id, &caller).await?)
}

/// Resumes the unfinished run `id` (`kitt apply SUITE --resume RUN --detach`) when its suite is
/// one this server may start: under a suites directory, an uploaded bundle, or a quick test.
pub(super) async fn resume_run(app: &Arc<App>, id: String, caller: &Caller) -> Result<JsonValue, Problem> {
    let info = {
        let app = app.clone();
        blocking(move || run_dir(&app, &id)).await?
    };
    match info.status {
        dir::RunStatus::Running => {
            return Err(Problem::new(StatusCode::CONFLICT, format!("run `{}` is running", info.meta.id)));
        }
        dir::RunStatus::Succeeded | dir::RunStatus::Failed => {
            return Err(Problem::new(StatusCode::CONFLICT, format!("run `{}` has ended", info.meta.id)));
        }
        dir::RunStatus::Unfinished => {}
    }
    let suite = info.meta.file.canonicalize().unwrap_or_else(|_| info.meta.file.clone());
    let under = |d: PathBuf| d.canonicalize().is_ok_and(|d| suite.starts_with(d));
    let uploaded = app.cfg.allow_suite_upload && under(super::bundle::bundles_dir(app));
    let quick = under(super::pages::quicktest::dir(app));
    if !uploaded && !quick && !app.cfg.suites_dirs.iter().any(|d| suite.starts_with(d)) {
        return Err(Problem::forbidden(format!(
            "run `{}`'s suite is not inside the server's suite directories",
            info.meta.id
        )));
    }
    apply_detached(app, &suite, false, Some(&info.meta.id), caller).await
}

pub(super) async fn cancel(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Answer {
    ok(cancel_run(&app, id, &caller).await?)
}

/// Stops the run `id` and its units (`kitt runs cancel RUN`).
pub(super) async fn cancel_run(app: &Arc<App>, id: String, caller: &Caller) -> Result<JsonValue, Problem> {
    let info = {
        let app = app.clone();
        blocking(move || run_dir(&app, &id)).await?
    };
    tracing::info!("run {} cancelled by token `{}`", info.meta.id, caller.name);
    let args: Vec<&std::ffi::OsStr> =
        ["runs", "cancel", &info.meta.id, "--wait", "60s", "--output", "json"].map(std::ffi::OsStr::new).to_vec();
    let (done, out, err) = kitt(app, &args).await?;
    if !done {
        return Err(Problem::new(StatusCode::CONFLICT, err.trim_end().to_string()));
    }
    if out.trim().is_empty() {
        Ok(json!({"run_id": info.meta.id, "detail": err.trim_end()}))
    } else {
        serde_json::from_str(&out).map_err(Problem::internal)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SuiteBody {
    suite: String,
}

/// Writes a suite sent in a body into a fresh directory, for the compiler to read.
fn suite_file(text: &str) -> Result<(tempfile::TempDir, PathBuf), Problem> {
    if text.len() > MAX_SUITE_BYTES {
        return Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, format!("suite: over {MAX_SUITE_BYTES} bytes")));
    }
    let dir = tempfile::tempdir().map_err(Problem::internal)?;
    let path = dir.path().join("suite.yaml");
    std::fs::write(&path, text).map_err(Problem::internal)?;
    Ok((dir, path))
}

pub(super) async fn validate(Json(body): Json<SuiteBody>) -> Answer {
    let value = blocking(move || {
        let (_dir, path) = suite_file(&body.suite)?;
        Ok(match crate::cli::validate_file(&path) {
            Ok(summary) => json!({"ok": true, "summary": summary}),
            Err(diags) => json!({"ok": false, "errors": diags}),
        })
    })
    .await?;
    ok(value)
}

pub(super) async fn plan(Json(body): Json<SuiteBody>) -> Answer {
    let value = blocking(move || {
        let (_dir, path) = suite_file(&body.suite)?;
        Ok(match crate::plan::compile::compile_file(&path) {
            Ok(plan) => json!({"ok": true, "plan": plan}),
            Err(diags) => json!({"ok": false, "errors": diags}),
        })
    })
    .await?;
    ok(value)
}

pub(super) async fn engines() -> Answer {
    let catalog = crate::catalog::Catalog::builtin();
    let rows: Vec<JsonValue> = catalog
        .engines
        .iter()
        .map(|(name, e)| {
            let s = &e.manifest.spec;
            let modes = s.modes();
            json!({
                "name": name, "description": e.manifest.metadata.description, "image": s.image,
                "default_port": s.default_port, "modes": modes, "params": s.params.keys().collect::<Vec<_>>(),
            })
        })
        .collect();
    ok(json!({"engines": rows}))
}

/// The models this server knows: those with results in the store, and those the suites under
/// its suite directories name (with the model's local file: its format and size).
pub(super) async fn models(State(app): State<Arc<App>>) -> Answer {
    ok(blocking(move || model_list(&app)).await?)
}

/// Every model the server knows (`models` below), as `/api/v1/models` answers.
pub(super) fn model_list(app: &App) -> Result<JsonValue, Problem> {
    let stored = match app.store()? {
        Some(s) => s.models().map_err(Problem::internal)?,
        None => Vec::new(),
    };
    let mut models: std::collections::BTreeMap<String, JsonValue> = stored
        .into_iter()
        .map(|m| {
            let name = m.model.clone();
            (
                name,
                json!({"name": m.model, "results": m.results, "engines": m.engines,
                "last_result_unix_ns": m.last_unix_ns, "suites": [], "local": []}),
            )
        })
        .collect();
    for (suite_file, model) in suite_models(&app.cfg.suites_dirs) {
        let entry = models.entry(model.name.value.clone()).or_insert_with(|| {
            json!({"name": model.name.value, "results": 0, "engines": [], "last_result_unix_ns": null, "suites": [], "local": []})
        });
        let dir = suite_file.parent().unwrap_or(Path::new("."));
        let local = model.path.as_ref().map(|p| model_file(&dir.join(&p.value)));
        let rel = app
            .cfg
            .suites_dirs
            .iter()
            .find_map(|root| suite_file.strip_prefix(root).ok())
            .unwrap_or(&suite_file)
            .to_string_lossy()
            .into_owned();
        if let Some(list) = entry["suites"].as_array_mut() {
            list.push(json!({
                "suite": rel,
                "path": model.path.as_ref().map(|p| p.value.clone()),
                "served_name": model.served_name.as_ref().map(|p| p.value.clone()),
                "file": local,
            }));
        }
    }
    let dirs: Vec<String> = settings_list(app)?
        .into_iter()
        .find(|r| r.key == "model_dirs")
        .and_then(|r| serde_json::from_value(r.value).ok())
        .unwrap_or_default();
    for (name, path) in dir_models(&dirs) {
        let entry = models.entry(name.clone()).or_insert_with(|| {
            json!({"name": name, "results": 0, "engines": [], "last_result_unix_ns": null, "suites": [], "local": []})
        });
        if let Some(list) = entry["local"].as_array_mut() {
            list.push(json!({"path": path.display().to_string(), "file": model_file(&path)}));
        }
    }
    Ok(json!({"models": models.into_values().collect::<Vec<_>>()}))
}

/// The models in the `model_dirs` directories (the setting): each `.gguf` or `.safetensors`
/// file by its stem, and each directory holding one by its name, at most `MAX_SUITE_FILES`.
fn dir_models(dirs: &[String]) -> Vec<(String, PathBuf)> {
    let is_model = |p: &Path| {
        p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf") || e.eq_ignore_ascii_case("safetensors"))
    };
    let mut out = Vec::new();
    for dir in dirs {
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let name = if p.is_file() && is_model(&p) {
                p.file_stem()
            } else if p.is_dir() && std::fs::read_dir(&p).into_iter().flatten().flatten().any(|e| is_model(&e.path())) {
                p.file_name()
            } else {
                None
            };
            if let Some(n) = name.map(|n| n.to_string_lossy().into_owned())
                && out.len() < MAX_SUITE_FILES
            {
                out.push((n, p));
            }
        }
    }
    out
}

/// The suites a model listing reads at most (a suites directory is a place for suites, not a
/// file system to crawl).
const MAX_SUITE_FILES: usize = 500;

/// Every model of every suite (`*.yaml`, `*.yml`, two levels deep) under the suite directories
/// that reads as a suite; other files are skipped.
fn suite_models(roots: &[PathBuf]) -> Vec<(PathBuf, crate::manifest::suite::Model)> {
    let mut files = Vec::new();
    let mut dirs: Vec<(PathBuf, u32)> = roots.iter().map(|r| (r.clone(), 0)).collect();
    while let Some((dir, depth)) = dirs.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() && depth < 2 {
                dirs.push((path, depth + 1));
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") && files.len() < MAX_SUITE_FILES {
                files.push(path);
            }
        }
    }
    let mut out = Vec::new();
    for file in files {
        let Ok(raw) = crate::manifest::read_raw(&file) else { continue };
        if raw.kind != crate::manifest::Kind::Suite {
            continue;
        }
        let Ok(suite) = raw.decode::<crate::manifest::suite::SuiteSpec>() else { continue };
        out.extend(suite.spec.models.into_iter().map(|m| (file.clone(), m)));
    }
    out
}

/// A model's local file or directory: whether it is there, its format and its size in bytes.
fn model_file(path: &Path) -> JsonValue {
    let Ok(meta) = std::fs::metadata(path) else { return json!({"exists": false}) };
    let ext = |p: &Path, e: &str| p.extension().is_some_and(|x| x.eq_ignore_ascii_case(e));
    if meta.is_file() {
        let format = if ext(path, "gguf") {
            "gguf"
        } else if ext(path, "safetensors") {
            "safetensors"
        } else {
            "file"
        };
        return json!({"exists": true, "format": format, "size_bytes": meta.len()});
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| e.path()).collect();
    let size: u64 =
        entries.iter().filter_map(|p| std::fs::metadata(p).ok()).filter(|m| m.is_file()).map(|m| m.len()).sum();
    let format = if entries.iter().any(|p| ext(p, "safetensors")) {
        "safetensors"
    } else if entries.iter().any(|p| ext(p, "gguf")) {
        "gguf"
    } else {
        "directory"
    };
    json!({"exists": true, "format": format, "size_bytes": size})
}

pub(super) async fn settings(State(app): State<Arc<App>>) -> Answer {
    let resolved = blocking(move || settings_list(&app)).await?;
    ok(json!({"settings": resolved}))
}

/// Every setting in force and where it comes from.
pub(super) fn settings_list(app: &App) -> Result<Vec<crate::settings::Resolved>, Problem> {
    let stored = match app.store()? {
        Some(s) => s.settings().map_err(Problem::internal)?,
        None => Default::default(),
    };
    crate::settings::resolve(&Default::default(), &|v| std::env::var(v).ok(), &stored).map_err(Problem::internal)
}

pub(super) async fn fingerprint() -> Answer {
    let fp = blocking(|| Ok(crate::run::fingerprint().clone())).await?;
    ok(serde_json::to_value(fp).map_err(Problem::internal)?)
}

pub(super) async fn tokens(State(app): State<Arc<App>>) -> Answer {
    let list = blocking(move || app.keyring.entries().map_err(Problem::internal)).await?;
    ok(json!({"tokens": list}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenBody {
    name: String,
    scope: Scope,
}

pub(super) async fn token_create(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(body): Json<TokenBody>,
) -> Answer {
    let (token, entry) = blocking(move || {
        super::tokens::create(app.keyring.path(), &body.name, body.scope).map_err(|e| match e {
            super::tokens::TokenError::BadName(_) | super::tokens::TokenError::BadAgentName(_) => {
                Problem::bad_request(format!("name: {e}"))
            }
            e => Problem::internal(e),
        })
    })
    .await?;
    tracing::info!("token `{}` ({}) made by `{}`", entry.name, entry.scope.name(), caller.name);
    Ok((StatusCode::CREATED, axum::Json(json!({"token": token, "entry": entry}))).into_response())
}

pub(super) async fn token_revoke(State(app): State<Arc<App>>, UrlPath(id): UrlPath<String>) -> Answer {
    if !valid_id(&id) {
        return Err(Problem::bad_request(format!("id: `{}` is not a token id or name", clip(&id))));
    }
    let done = blocking(move || {
        super::tokens::revoke(app.keyring.path(), &id).map_err(|e| match e {
            super::tokens::TokenError::Unknown(_) => Problem::not_found(e.to_string()),
            e => Problem::internal(e),
        })
    })
    .await?;
    ok(json!({"revoked": done}))
}

/// The most bytes of a step's file one request reads.
pub const MAX_FILE_CHUNK: u64 = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileQuery {
    offset: Option<u64>,
    limit: Option<u64>,
}

/// A file a step wrote (`steps/KEY/FILE`: its engine log, requests, samples, result), as text,
/// a chunk at a time; `x-kitt-file-size` says how long it is. Only files inside the run's
/// directory: names are plain, and a symlink out of it is refused.
pub(super) async fn step_file(
    State(app): State<Arc<App>>,
    UrlPath((id, key, file)): UrlPath<(String, String, String)>,
    Query(q): Query<FileQuery>,
) -> Answer {
    for (name, value) in [("key", &key), ("file", &file)] {
        if !valid_id(value) {
            return Err(Problem::bad_request(format!("{name}: `{}` is not a plain name", clip(value))));
        }
    }
    let limit = q.limit.unwrap_or(MAX_FILE_CHUNK);
    if limit == 0 || limit > MAX_FILE_CHUNK {
        return Err(Problem::bad_request(format!("limit: {limit} is not between 1 and {MAX_FILE_CHUNK}")));
    }
    let (bytes, size) = blocking(move || {
        use std::io::{Read as _, Seek as _};
        let info = run_dir(&app, &id)?;
        let missing = || Problem::not_found(format!("run `{id}` has no step file `{key}/{file}`"));
        let path = info.path.join("steps").join(&key).join(&file).canonicalize().map_err(|_| missing())?;
        if !path.starts_with(&info.path) {
            return Err(Problem::bad_request(format!("file: `{key}/{file}` leads out of the run's directory")));
        }
        let mut f = std::fs::File::open(&path).map_err(|_| missing())?;
        let size = f.metadata().map_err(Problem::internal)?.len();
        f.seek(std::io::SeekFrom::Start(q.offset.unwrap_or(0))).map_err(Problem::internal)?;
        let mut bytes = Vec::new();
        f.take(limit).read_to_end(&mut bytes).map_err(Problem::internal)?;
        Ok((bytes, size))
    })
    .await?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
            ("x-kitt-file-size".parse().map_err(Problem::internal)?, size.to_string()),
        ],
        bytes,
    )
        .into_response())
}
