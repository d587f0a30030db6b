//! Compiling a suite into a plan: resolve templates, type params, expand the matrix, render,
//! and lay out the step graph with keys.
//!
//! Every semantic error is collected (not just the first), each with the file and position of
//! the text that caused it; `kitt validate` is this function with the plan thrown away.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use super::layout::layout;
use super::*;
use crate::catalog::{Catalog, Entry};
use crate::manifest::decode::{Cx, Decode, Spanned};
use crate::manifest::diag::{Diagnostic, Pos, unknown_help};
use crate::manifest::load::{ApiKind, LoadSpec, RequestTimeout};
use crate::manifest::secret::{SecretOr, check_inline};
use crate::manifest::suite::{BenchmarkInstance, ClientCounts, EngineInstance, Model, Network, SAMPLING_KEYS};
use crate::manifest::template_kind::{ApiCall, Arg, EngineSpec, Mechanism, ParamDecl, ParamType, truthy};
use crate::manifest::yaml::{Node, Value};
use crate::manifest::{self, Kind, Suite, SuiteSpec};
use crate::template::{Renderer, env_placeholder, env_placeholders, placeholder};

mod modes;
mod sampling;
mod sidecar;

/// Reads and decodes a suite file.
pub fn load_suite(path: &Path) -> Result<Suite, Vec<Diagnostic>> {
    let raw = manifest::read_raw(path)?;
    raw.expect_kind(Kind::Suite)?;
    raw.decode::<SuiteSpec>()
}

/// Reads a suite file, builds its catalog and compiles it.
pub fn compile_file(path: &Path) -> Result<Plan, Vec<Diagnostic>> {
    let suite = load_suite(path)?;
    compile_with_catalog(&suite, path)
}

/// Compiles suite text that has no file of its own (`kitt run`); `path` names it and its
/// directory anchors relative paths.
pub fn compile_source(source: &str, path: &Path) -> Result<Plan, Vec<Diagnostic>> {
    let raw = manifest::parse_raw(source, path)?;
    raw.expect_kind(Kind::Suite)?;
    let suite = raw.decode::<SuiteSpec>()?;
    compile_with_catalog(&suite, path)
}

/// Builds the suite's catalog (its local templates included) and compiles it.
pub fn compile_with_catalog(suite: &Suite, path: &Path) -> Result<Plan, Vec<Diagnostic>> {
    let dir = suite_dir(path);
    let catalog = Catalog::with_local(&dir, &suite.spec.templates, path)?;
    compile(suite, &catalog)
}

/// Checks a suite as [`compile_with_catalog`] does, without deriving step keys (`kitt validate`
/// needs every error and the plan's shape, not its keys): the steps' keys are empty.
pub fn check_with_catalog(suite: &Suite, path: &Path) -> Result<Plan, Vec<Diagnostic>> {
    let dir = suite_dir(path);
    let catalog = Catalog::with_local(&dir, &suite.spec.templates, path)?;
    compile_inner(suite, &catalog, false)
}

/// The absolute directory of a suite file.
pub fn suite_dir(path: &Path) -> PathBuf {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf())
}

/// Suite identity: canonical path of its file + metadata.name.
pub fn suite_identity(path: &Path, name: &str) -> String {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    key_of(&json!({"suite": canonical.to_string_lossy(), "name": name}))
}

struct Compiler<'a> {
    suite: &'a Suite,
    catalog: &'a Catalog,
    renderer: Renderer,
    errors: Vec<Diagnostic>,
    /// Derive step keys (off for `kitt validate`).
    keys: bool,
    /// The engine group's request templates rendered so far, by (chat API, `ignore_eos`, the
    /// cell's sampling as JSON): cells that differ only in load params share one rendering.
    requests: HashMap<(bool, bool, String), std::sync::Arc<RequestTemplate>>,
}

/// One engine instance after its sweeps are expanded.
struct EngineVariant<'a> {
    instance: &'a EngineInstance,
    template: &'a Entry<EngineSpec>,
    name: String,
    params: BTreeMap<String, Json>,
    /// The instance's `sampling`: a value replaces the suite's, `None` unsets it.
    sampling: Vec<(String, Option<Json>, Pos)>,
}

/// One benchmark instance × one combination of swept values.
struct BenchVariant<'a> {
    instance: &'a BenchmarkInstance,
    entry: &'a Entry<crate::manifest::template_kind::BenchmarkSpec>,
    params: BTreeMap<String, Json>,
    swept: BTreeMap<String, Json>,
    sampling: BTreeMap<String, Json>,
    /// Sampling keys the instance's params set, where.
    explicit: BTreeMap<String, Pos>,
    /// Client processes of its cells (1: this process).
    clients: u32,
}

/// Compiles a decoded suite against a catalog.
pub fn compile(suite: &Suite, catalog: &Catalog) -> Result<Plan, Vec<Diagnostic>> {
    compile_inner(suite, catalog, true)
}

fn compile_inner(suite: &Suite, catalog: &Catalog, keys: bool) -> Result<Plan, Vec<Diagnostic>> {
    let mut c =
        Compiler { suite, catalog, renderer: Renderer::default(), errors: Vec::new(), keys, requests: HashMap::new() };
    let plan = c.run();
    let mut errors = c.errors;
    for e in &mut errors {
        e.file.get_or_insert_with(|| suite.file.clone());
    }
    manifest::sort(&mut errors);
    match plan {
        Some(plan) if errors.is_empty() => Ok(plan),
        _ => Err(errors),
    }
}

impl<'a> Compiler<'a> {
    fn err(&mut self, d: Diagnostic) {
        self.errors.push(d);
    }

    fn run(&mut self) -> Option<Plan> {
        let spec = &self.suite.spec;
        self.check_unique("model", spec.models.iter().map(|m| &m.name));
        self.check_unique("engine", spec.engines.iter().map(|e| &e.name));
        self.check_unique("benchmark", spec.benchmarks.iter().map(|b| &b.name));
        if spec.runs == 0 {
            // The decoder refuses `runs: 0` at its position; a suite built in memory may not.
            self.err(Diagnostic::new(Pos::START, "`runs` must be at least 1"));
        }
        for (what, list) in
            [("models", spec.models.len()), ("engines", spec.engines.len()), ("benchmarks", spec.benchmarks.len())]
        {
            if list == 0 {
                self.err(
                    Diagnostic::new(Pos::START, format!("the suite lists no {what}"))
                        .help(format!("add at least one entry under `{what}:`")),
                );
            }
        }
        let reporters = self.reporters();
        let engines = self.engine_variants();
        let benches = self.bench_variants();

        let mut groups = Vec::new();
        let mut cells = Vec::new();
        let mut exclude_hits = vec![0usize; spec.matrix.exclude.len()];
        for ev in &engines {
            for model in &spec.models {
                let Some(group) = self.group(ev, model) else {
                    continue;
                };
                let gi = groups.len();
                let ectx = self.engine_context(ev, model);
                self.requests.clear();
                for bv in &benches {
                    for run_index in 0..spec.runs {
                        let excluded = self.excluded(model, ev, bv, &mut exclude_hits);
                        if excluded {
                            continue;
                        }
                        if let Some(cell) = self.cell(gi, &ectx, ev, model, bv, run_index) {
                            cells.push(cell);
                        }
                    }
                }
                groups.push(group);
            }
        }
        for (hits, ex) in exclude_hits.iter().zip(&spec.matrix.exclude) {
            if *hits == 0 {
                self.err(Diagnostic::new(ex.pos, "this matrix exclude matches no cell").help(
                    "check the model, engine and benchmark names and param values; remove the entry if it is stale",
                ));
            }
        }
        if !self.errors.is_empty() {
            return None;
        }
        // Deadlines in force, kept in the cell (and its key) only where they differ from the
        // defaults: a suite that sets none keeps the keys it always had.
        for load in cells.iter_mut().filter_map(|c| c.load.as_mut()) {
            let t = load.request_timeout.unwrap_or(spec.execution.request_timeout);
            load.request_timeout = (t != RequestTimeout::default()).then_some(t);
        }
        let steps =
            layout(&groups, &cells, spec.execution.isolation, spec.execution.granularity, &reporters, self.keys);
        let units = unit::cut(&groups, &steps, &spec.execution, self.keys);
        let mut templates: Vec<TemplateRef> = Vec::new();
        for (kind, name) in spec
            .engines
            .iter()
            .map(|e| (Kind::Engine, &e.template.value))
            .chain(spec.benchmarks.iter().map(|b| (Kind::Benchmark, &b.template.value)))
            .chain(reporters.iter().map(|r| (Kind::Reporter, &r.name)))
        {
            if templates.iter().any(|t| t.kind == kind.name() && &t.name == name) {
                continue;
            }
            if let Some(origin) = self.catalog.origin_of(kind, name) {
                // A suite-local file, shown the way the suite file was named (not absolute).
                let origin = match origin {
                    crate::catalog::Origin::Local { file, overrides } => {
                        let dir = suite_dir(&self.suite.file);
                        let shown = match (file.strip_prefix(&dir), self.suite.file.parent()) {
                            (Ok(rel), Some(parent)) => parent.join(rel),
                            _ => file.clone(),
                        };
                        let o = crate::catalog::Origin::Local { file: shown, overrides: *overrides };
                        o.to_string()
                    }
                    builtin => builtin.to_string(),
                };
                templates.push(TemplateRef { kind: kind.name().to_string(), name: name.clone(), origin });
            }
        }
        let file = self.suite.file.clone();
        Some(Plan {
            format: PLAN_FORMAT,
            suite: SuiteRef {
                name: self.suite.metadata.name.value.clone(),
                identity: suite_identity(&file, &self.suite.metadata.name.value),
                dir: suite_dir(&file),
                file,
            },
            execution: spec.execution.clone(),
            groups,
            cells,
            steps,
            units,
            reporters,
            templates,
        })
    }

    fn check_unique<'s>(&mut self, what: &str, names: impl Iterator<Item = &'s Spanned<String>>) {
        let mut seen: std::collections::HashMap<&str, Pos> = std::collections::HashMap::new();
        for n in names {
            if let Some(first) = seen.get(n.value.as_str()) {
                let line = first.line;
                self.err(
                    Diagnostic::new(n.pos, format!("duplicate {what} name `{}` (first used at line {line})", n.value))
                        .help(format!("{what} names must be unique in a suite; rename one")),
                );
            } else {
                seen.insert(&n.value, n.pos);
            }
        }
    }

    fn reporters(&mut self) -> Vec<ReporterRef> {
        let mut out = Vec::new();
        for r in &self.suite.spec.reporters {
            match self.catalog.reporters.get(&r.value) {
                Some(entry) => {
                    let spec = &entry.manifest.spec;
                    let template = match crate::catalog::reporter_template(entry) {
                        Ok(t) => t,
                        Err(d) => {
                            self.err(d);
                            None
                        }
                    };
                    if let Some(text) = &template {
                        // A template that does not parse is found now, not after a long run.
                        if let Err(e) = handlebars::Template::compile(text) {
                            let file = entry.manifest.spec.template.as_ref().map_or(String::new(), |t| t.value.clone());
                            self.err(
                                Diagnostic::new(
                                    r.pos,
                                    format!("reporter `{}`: its template `{file}` does not parse: {e}", r.value),
                                )
                                .help("fix the handlebars syntax in the template file"),
                            );
                        }
                    }
                    out.push(ReporterRef {
                        name: r.value.clone(),
                        format: spec.format,
                        output: spec.output.value.clone(),
                        template,
                    });
                }
                None => {
                    let help = unknown_help(&r.value, self.catalog.reporters.keys().map(String::as_str));
                    self.err(Diagnostic::new(r.pos, format!("unknown reporter `{}`", r.value)).help(help));
                }
            }
        }
        out
    }

    /// Types an instance's params against the template's declarations (plus, for benchmarks,
    /// the sampling keys) and returns each set param with its values (several when swept).
    fn typed_params(
        &mut self,
        params: Option<&Node>,
        decls: &BTreeMap<String, Spanned<ParamDecl>>,
        with_sampling: bool,
        what: &str,
    ) -> Vec<(String, Vec<Json>, bool)> {
        let Some(Node { value: Value::Map(entries), .. }) = params else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, node) in entries {
            let sampling_ty = with_sampling.then(|| SAMPLING_KEYS.iter().find(|(k, _)| *k == key.name)).flatten();
            let decl: ParamDecl = match (decls.get(&key.name), sampling_ty) {
                (Some(d), _) => d.value.clone(),
                (None, Some((_, ty))) => ParamDecl::of_type(*ty),
                (None, None) => {
                    let mut names: Vec<&str> = decls.keys().map(String::as_str).collect();
                    if with_sampling {
                        names.extend(SAMPLING_KEYS.iter().map(|(k, _)| *k));
                    }
                    let help = if names.is_empty() {
                        format!("{what} declares no params")
                    } else {
                        unknown_help(&key.name, names)
                    };
                    self.err(Diagnostic::new(key.pos, format!("unknown param `{}` for {what}", key.name)).help(help));
                    continue;
                }
            };
            if decl.secret {
                // An invalid one has been reported: it stands in redacted, so that it is not also
                // reported as unset.
                let v = self.secret_param(&key.name, node, what);
                let v = v.unwrap_or_else(|| Json::String(format!("secret:{}", key.name)));
                out.push((key.name.clone(), vec![v], false));
                continue;
            }
            let value = node.to_json();
            let sweep = match (&value, decl.ty) {
                (Json::Array(items), ParamType::List) => items.iter().all(Json::is_array) && !items.is_empty(),
                (Json::Array(_), _) => true,
                _ => false,
            };
            let values = if sweep { value.as_array().cloned().unwrap_or_default() } else { vec![value] };
            if sweep && values.is_empty() {
                self.err(
                    Diagnostic::new(node.pos, format!("param `{}`: an empty list sweeps nothing", key.name))
                        .help("give at least one value"),
                );
                continue;
            }
            let mut ok = true;
            for (i, v) in values.iter().enumerate() {
                if let Err(problem) = decl.check(v) {
                    let pos = match (&node.value, sweep) {
                        (Value::Seq(items), true) => items.get(i).map_or(node.pos, |n| n.pos),
                        _ => node.pos,
                    };
                    let help = match decl.ty {
                        ParamType::List => "a list param takes a list; a list of lists sweeps it".to_string(),
                        t => format!("write {} (or a list of them to sweep)", t.name()),
                    };
                    self.err(Diagnostic::new(pos, format!("param `{}` for {what}: {problem}", key.name)).help(help));
                    ok = false;
                }
            }
            if ok {
                out.push((key.name.clone(), values, sweep));
            }
        }
        out
    }

    /// A secret param's value: `{from_env: NAME}` becomes the late-bound placeholder
    /// `{{from_env.NAME}}` (after its prefix), bound from the environment only when the engine
    /// starts; anything written inline is an error.
    fn secret_param(&mut self, name: &str, node: &Node, what: &str) -> Option<Json> {
        let mut cx = Cx::default();
        let value = SecretOr::decode(node, &mut cx, &format!("secret param `{name}`"));
        self.errors.extend(cx.errors);
        match value? {
            SecretOr::Plain(_) => {
                self.err(
                    Diagnostic::new(node.pos, format!("secret param `{name}` of {what} is written inline")).help(format!(
                        "read it from the environment instead: `{name}: {{from_env: MY_VAR}}` (secrets never enter plans, keys, journals or reports)"
                    )),
                );
                None
            }
            SecretOr::FromEnv { from_env, prefix } => {
                let valid = from_env.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && from_env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    self.err(
                        Diagnostic::new(node.pos, format!("`{from_env}` is not an environment variable name"))
                            .help("use letters, digits and `_`, not starting with a digit: `{from_env: MY_API_KEY}`"),
                    );
                    return None;
                }
                Some(Json::String(format!("{}{}", prefix.unwrap_or_default(), env_placeholder(&from_env))))
            }
        }
    }

    fn engine_variants(&mut self) -> Vec<EngineVariant<'a>> {
        let mut out = Vec::new();
        for inst in &self.suite.spec.engines {
            let Some(template) = self.catalog.engines.get(&inst.template.value) else {
                let help = unknown_help(&inst.template.value, self.catalog.engines.keys().map(String::as_str));
                self.err(
                    Diagnostic::new(inst.template.pos, format!("unknown engine template `{}`", inst.template.value))
                        .help(help),
                );
                continue;
            };
            let mut cx = Cx::default();
            for (name, v) in &inst.env {
                check_inline(name, &v.value, false, v.pos, &mut cx);
            }
            if let Some(ep) = &inst.endpoint {
                let declared = &template.manifest.spec.secret_headers;
                for (name, v) in &ep.headers {
                    let secret = declared.iter().any(|h| h.eq_ignore_ascii_case(name));
                    check_inline(name, &v.value, secret, v.pos, &mut cx);
                }
                if !(ep.url.value.starts_with("http://") || ep.url.value.starts_with("https://")) {
                    cx.error(
                        Diagnostic::new(ep.url.pos, format!("endpoint URL `{}` is not http(s)", ep.url.value))
                            .help("write it as `http://host:port` or `https://host:port`"),
                    );
                }
            }
            let modes = [inst.container.is_some(), inst.native.is_some(), inst.endpoint.is_some()];
            if modes.iter().filter(|m| **m).count() > 1 {
                cx.error(
                    Diagnostic::new(
                        inst.name.pos,
                        format!("engine `{}` sets more than one of `container`, `native`, `endpoint`", inst.name.value),
                    )
                    .help("choose one way to run it"),
                );
            }
            if inst.native.is_some()
                && template.manifest.spec.native.is_none()
                && inst.native.as_ref().is_some_and(|n| n.command.is_none())
            {
                cx.error(
                    Diagnostic::new(
                        inst.name.pos,
                        format!("engine template `{}` has no native command", inst.template.value),
                    )
                    .help("give one: `native: {command: [BINARY, ARGS…]}`"),
                );
            }
            if template.manifest.spec.endpoint_only && inst.endpoint.is_none() {
                cx.error(
                    Diagnostic::new(
                        inst.name.pos,
                        format!(
                            "engine template `{}` starts no server: it talks to one that already runs",
                            inst.template.value
                        ),
                    )
                    .help("add `endpoint: {url: http://HOST:PORT}` to this engine"),
                );
            }
            if inst.container.is_some() && template.manifest.spec.container.is_none() {
                cx.error(Diagnostic::new(
                    inst.name.pos,
                    format!("engine template `{}` has no container section", inst.template.value),
                ));
            }
            self.errors.extend(cx.errors);
            self.check_mode_keys(inst, &template.manifest.spec);
            let sampling = self.engine_sampling(inst);
            let what = format!("engine template `{}`", inst.template.value);
            let set = self.typed_params(inst.params.as_ref(), &template.manifest.spec.params, false, &what);
            let Some(base) =
                self.resolve_params(&template.manifest.spec.params, &set, &BTreeMap::new(), &what, inst.name.pos)
            else {
                continue;
            };
            for combo in combinations(&set) {
                let mut params = base.clone();
                let mut label = Vec::new();
                for (k, v, swept) in &combo {
                    params.insert(k.clone(), v.clone());
                    if *swept {
                        label.push(format!("{k}={}", crate::template::scalar_text(v)));
                    }
                }
                let name = if label.is_empty() {
                    inst.name.value.clone()
                } else {
                    format!("{}[{}]", inst.name.value, label.join(","))
                };
                out.push(EngineVariant { instance: inst, template, name, params, sampling: sampling.clone() });
            }
        }
        out
    }

    /// The value of every declared param: the instance's, else the suite's sampling value (for
    /// sampling keys), else the template default; a param with none of them is an error.
    fn resolve_params(
        &mut self,
        decls: &BTreeMap<String, Spanned<ParamDecl>>,
        set: &[(String, Vec<Json>, bool)],
        sampling: &BTreeMap<String, Json>,
        what: &str,
        pos: Pos,
    ) -> Option<BTreeMap<String, Json>> {
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (name, decl) in decls {
            if let Some((_, values, _)) = set.iter().find(|(k, _, _)| k == name) {
                out.insert(name.clone(), values[0].clone());
            } else if let Some(v) = sampling.get(name) {
                out.insert(name.clone(), v.clone());
            } else if let Some(d) = &decl.value.default {
                out.insert(name.clone(), d.clone());
            } else {
                let help = if decl.value.secret {
                    format!("set it from the environment: `params: {{{name}: {{from_env: MY_VAR}}}}`")
                } else {
                    format!("set it: `params: {{{name}: …}}`")
                };
                self.err(
                    Diagnostic::new(pos, format!("param `{name}` of {what} has no default and is not set")).help(help),
                );
                ok = false;
            }
        }
        ok.then_some(out)
    }

    fn bench_variants(&mut self) -> Vec<BenchVariant<'a>> {
        let mut out = Vec::new();
        let suite_sampling: BTreeMap<String, Json> = self.suite.spec.sampling.to_map().into_iter().collect();
        for inst in &self.suite.spec.benchmarks {
            let Some(entry) = self.catalog.benchmarks.get(&inst.template.value) else {
                let help = unknown_help(&inst.template.value, self.catalog.benchmarks.keys().map(String::as_str));
                self.err(
                    Diagnostic::new(inst.template.pos, format!("unknown benchmark template `{}`", inst.template.value))
                        .help(help),
                );
                continue;
            };
            let what = format!("benchmark template `{}`", inst.template.value);
            let set = self.typed_params(inst.params.as_ref(), &entry.manifest.spec.params, true, &what);
            let explicit: BTreeMap<String, Pos> = match inst.params.as_ref() {
                Some(Node { value: Value::Map(entries), .. }) => entries
                    .iter()
                    .filter(|(k, _)| SAMPLING_KEYS.iter().any(|(s, _)| *s == k.name))
                    .map(|(k, _)| (k.name.clone(), k.pos))
                    .collect(),
                _ => BTreeMap::new(),
            };
            let Some(base) =
                self.resolve_params(&entry.manifest.spec.params, &set, &suite_sampling, &what, inst.name.pos)
            else {
                continue;
            };
            for combo in combinations(&set) {
                let mut params = base.clone();
                let mut swept = BTreeMap::new();
                for (k, v, is_swept) in &combo {
                    params.insert(k.clone(), v.clone());
                    if *is_swept {
                        swept.insert(k.clone(), v.clone());
                    }
                }
                // Sampling: suite values, overridden by any sampling key among the params.
                let mut sampling = suite_sampling.clone();
                for (k, _) in SAMPLING_KEYS {
                    if let Some(v) = params.get(*k) {
                        sampling.insert((*k).to_string(), v.clone());
                    }
                }
                // `clients` as a list is one more axis: its value tells sibling cells apart as a
                // swept param's does (in labels, results and compare).
                let axis = matches!(inst.clients.as_ref().map(|c| &c.value), Some(ClientCounts::Many(_)));
                let counts = inst.clients.as_ref().map_or(vec![1], |c| c.value.values());
                for clients in counts {
                    let mut swept = swept.clone();
                    if axis {
                        swept.insert("clients".into(), json!(clients));
                    }
                    out.push(BenchVariant {
                        instance: inst,
                        entry,
                        params: params.clone(),
                        swept,
                        sampling: sampling.clone(),
                        explicit: explicit.clone(),
                        clients,
                    });
                }
            }
        }
        out
    }

    fn model_context(&self, model: &Model) -> Json {
        let served = model.served_name.as_ref().unwrap_or(&model.name).value.clone();
        // `auto`: the name the endpoint serves, looked up at run time (an observed fact).
        let served = if served == "auto" { placeholder("model.served_name") } else { served };
        let mut m = json!({"name": model.name.value, "served_name": served});
        if let Some(p) = &model.path {
            let path = Path::new(&p.value);
            let dir = path
                .parent()
                .map(|d| d.to_string_lossy().to_string())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| ".".into());
            let file = path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
            m["path"] = p.value.clone().into();
            m["dir"] = dir.into();
            m["file"] = file.into();
        }
        m
    }

    fn engine_context(&self, ev: &EngineVariant, model: &Model) -> Json {
        // Where the engine listens: inside a bridge-networked container only 0.0.0.0 is reachable.
        // A sidecar is probed by the kubelet on the pod's address, not on 127.0.0.1.
        let sidecar = self.suite.spec.execution.kubernetes.is_some() && ev.instance.endpoint.is_none();
        let bind_host = if network_of(ev) == Network::Bridge || sidecar { "0.0.0.0" } else { "127.0.0.1" };
        json!({
            "bind_host": bind_host,
            "model": self.model_context(model),
            "engine": {"name": ev.name, "template": ev.instance.template.value},
            "params": ev.params,
            "run": {"id": placeholder("run.id")},
            "port": placeholder("port"),
            "kitt": {"exe": placeholder("kitt.exe")},
        })
    }

    /// A render error, rewritten when it is a model without a path.
    fn render_error(&self, d: Diagnostic, file: &Path, model: &Model, template: &str) -> Diagnostic {
        let needs_path = ["model.path", "model.dir", "model.file"]
            .iter()
            .any(|v| d.message == format!("unknown template variable `{v}`"));
        if needs_path && model.path.is_none() {
            return Diagnostic::new(model.name.pos, format!("engine template `{template}` needs a model file, but model `{}` has no `path`", model.name.value))
                .help("add `path:` to the model (a file or directory relative to the suite), or use an engine that needs none")
                .in_file(&self.suite.file);
        }
        d.in_file(file)
    }

    fn group(&mut self, ev: &EngineVariant, model: &Model) -> Option<EngineGroup> {
        let ctx = self.engine_context(ev, model);
        let spec = &ev.template.manifest.spec;
        let tfile = ev.template.manifest.file.clone();
        let inst = ev.instance;
        if inst.endpoint.is_none()
            && let Some(s) = model.served_name.as_ref().filter(|s| s.value == "auto")
        {
            self.errors.push(
                Diagnostic::new(
                    s.pos,
                    format!("`served_name: auto` asks the server, but engine `{}` is not an endpoint", inst.name.value),
                )
                .help("write the served model name, or use `endpoint:` for a server that is already running")
                .in_file(&self.suite.file),
            );
        }
        let r = &self.renderer;
        let mut errors: Vec<Diagnostic> = Vec::new();
        let mut gpu_errors: Vec<Diagnostic> = Vec::new();
        let mut text = |s: &Spanned<String>, file: &Path| -> String {
            r.render_text(&s.value, &ctx, s.pos).unwrap_or_else(|d| {
                errors.push(d.in_file(file));
                String::new()
            })
        };
        let mut when_errors: Vec<Diagnostic> = Vec::new();
        let mut when = |s: &Spanned<String>, file: &Path| -> bool {
            match r.render_str(&s.value, &ctx, s.pos) {
                Ok(v) => truthy(v.as_ref()),
                Err(d) => {
                    when_errors.push(d.in_file(file));
                    false
                }
            }
        };
        let suite_file = self.suite.file.clone();
        let env_of = |env: &BTreeMap<String, Spanned<SecretOr>>,
                      file: &Path,
                      text: &mut dyn FnMut(&Spanned<String>, &Path) -> String|
         -> BTreeMap<String, SecretOr> {
            env.iter()
                .map(|(k, v)| {
                    let value = match &v.value {
                        SecretOr::Plain(s) => SecretOr::Plain(text(&Spanned::new(v.pos, s.clone()), file)),
                        other => other.clone(),
                    };
                    (k.clone(), value)
                })
                .collect()
        };
        let mode = if let Some(ep) = &inst.endpoint {
            Mode::Endpoint {
                url: ep.url.value.trim_end_matches('/').to_string(),
                headers: ep.headers.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect(),
                ca_file: ep.ca_file.as_ref().map(|c| c.value.clone()),
                insecure: ep.insecure,
                skip_health: ep.skip_health,
            }
        } else if inst.native.is_some() || (spec.container.is_none() && inst.container.is_none()) {
            let native = inst.native.clone().unwrap_or_default();
            let (command, file) = match (&native.command, &spec.native) {
                (Some(c), _) => (c.clone(), suite_file.clone()),
                (None, Some(n)) => (n.command.clone(), tfile.clone()),
                (None, None) => (Vec::new(), tfile.clone()),
            };
            let argv = argv_of(&command, &file, &mut text, &mut when);
            let mut env = spec.native.as_ref().map(|n| env_of(&n.env, &tfile, &mut text)).unwrap_or_default();
            env.extend(env_of(&inst.env, &suite_file, &mut text));
            Mode::Native { argv, env, cwd: native.cwd.map(|c| c.value) }
        } else {
            let c = spec.container.as_ref();
            let over = inst.container.clone().unwrap_or_default();
            let image = inst.image.as_ref().map(|i| i.value.clone()).or_else(|| spec.image.clone()).unwrap_or_default();
            let args: Vec<String> = match &over.args {
                Some(a) => argv_of(a, &suite_file, &mut text, &mut when),
                None => c.map(|c| argv_of(&c.args, &tfile, &mut text, &mut when)).unwrap_or_default(),
            };
            let mut env = c.map(|c| env_of(&c.env, &tfile, &mut text)).unwrap_or_default();
            env.extend(env_of(&inst.env, &suite_file, &mut text));
            let mounts = c
                .map(|c| {
                    c.mounts
                        .iter()
                        .map(|m| MountRef {
                            source: text(&m.source, &tfile),
                            target: text(&m.target, &tfile),
                            readonly: m.readonly,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let gpus = over
                .gpus
                .clone()
                .or_else(|| c.and_then(|c| c.gpus.clone()))
                .unwrap_or_else(|| Spanned::new(inst.name.pos, "auto".to_string()));
            if !valid_gpus(&gpus.value) {
                gpu_errors.push(
                    Diagnostic::new(gpus.pos, format!("`gpus: {}` is not a GPU request", gpus.value))
                        .help("write `auto` (GPUs when the NVIDIA runtime is present), `all`, `none`, or `device=0,1`")
                        .in_file(&suite_file),
                );
            }
            let gpus = gpus.value;
            let mut extra_args: Vec<String> =
                c.map(|c| c.extra_args.iter().map(|s| text(s, &tfile)).collect()).unwrap_or_default();
            extra_args.extend(over.extra_args.iter().map(|s| text(s, &suite_file)));
            Mode::Container {
                image,
                pull: inst.pull.as_ref().map(|p| p.value).or(spec.pull).unwrap_or(PullPolicy::IfNotPresent),
                args,
                env,
                mounts,
                gpus,
                shm_size: over.shm_size.clone().or_else(|| c.and_then(|c| c.shm_size.clone())),
                extra_args,
                network: network_of(ev),
            }
        };
        errors.append(&mut gpu_errors);
        errors.append(&mut when_errors);
        let mode = match &self.suite.spec.execution.kubernetes {
            Some(k) => sidecar::sidecar(mode, k, spec.default_port, inst).unwrap_or_else(|d| {
                errors.push(d.in_file(&suite_file));
                // Never used: the group is dropped because of the error.
                Mode::Native { argv: Vec::new(), env: BTreeMap::new(), cwd: None }
            }),
            None => mode,
        };
        let mut setup = Vec::new();
        for call in &spec.setup {
            let body = call
                .body
                .as_ref()
                .and_then(|b| r.render(b, &ctx).map_err(|d| errors.push(d.in_file(&tfile))).ok().flatten());
            // Setup bodies are sent as rendered, with no late binding: a secret there would be
            // sent as its placeholder.
            if let (Some(b), Some(node)) = (&body, &call.body)
                && b.to_string().contains("{{from_env.")
            {
                errors.push(
                    Diagnostic::new(node.pos, format!("a setup call of engine template `{}` sends a secret param", inst.template.value))
                        .help("send secrets through the engine's command, `env:` or request bodies; setup calls carry no secrets")
                        .in_file(&tfile),
                );
            }
            setup.push(HttpRequest { method: call.method.clone(), path: call.path.clone(), body });
        }
        let tokenize = spec.tokenize.as_ref().map(|t| HttpRequest {
            method: "POST".into(),
            path: t.path.clone(),
            body: {
                let mut tctx = ctx.clone();
                tctx["prompt"] = placeholder("prompt").into();
                r.render(&t.body, &tctx).map_err(|d| errors.push(d.in_file(&tfile))).ok().flatten()
            },
        });
        // Warmup uses the suite's sampling with a short, fixed output.
        let warmup_req = self.suite.spec.warmup.requests;
        let warmup = if warmup_req > 0 {
            let mut sampling: BTreeMap<String, Json> = self.suite.spec.sampling.to_map().into_iter().collect();
            for (k, v, _) in &ev.sampling {
                match v {
                    Some(v) => sampling.insert(k.clone(), v.clone()),
                    None => sampling.remove(k),
                };
            }
            sampling.insert("max_tokens".into(), json!(16));
            // The completion call when the engine has one, else chat (decoding guarantees one).
            let (api, call) = match (&spec.api.completion, &spec.api.chat) {
                (Some(c), _) => (ApiKind::Completion, c),
                (None, Some(c)) => (ApiKind::Chat, c),
                (None, None) => unreachable_api(),
            };
            match self.request(&ctx, &sampling, true, call) {
                Ok(request) => Some(Warmup { requests: warmup_req, input_tokens: 32, api, request }),
                Err(d) => {
                    errors.push(d.in_file(&tfile));
                    None
                }
            }
        } else {
            None
        };
        let errors: Vec<Diagnostic> =
            errors.into_iter().map(|d| self.render_error(d, &tfile, model, &inst.template.value)).collect();
        let had_errors = !errors.is_empty();
        for d in errors {
            if !self.errors.contains(&d) {
                self.errors.push(d);
            }
        }
        if had_errors {
            return None;
        }
        if let Some(shape) = &inst.slurm
            && self.suite.spec.execution.slurm.is_none()
        {
            let d = Diagnostic::new(shape.pos, format!("`slurm` of engine `{}` needs `execution.slurm`", inst.name.value))
                .help("add `execution: {slurm: {partition: …, time: 2h, shared_dir: /shared/kitt-runs}}`, or remove the engine's `slurm`");
            if !self.errors.contains(&d) {
                self.errors.push(d);
            }
        }
        let served = model.served_name.as_ref().unwrap_or(&model.name).value.clone();
        let model_ref = ModelRef {
            name: model.name.value.clone(),
            path: model.path.as_ref().map(|p| p.value.clone()),
            served_name: served,
            tokenizer: model.tokenizer.as_ref().map(|t| t.value.clone()),
        };
        let health = Health {
            path: spec.health.path.clone(),
            timeout: spec.health.timeout,
            initial_interval: spec.health.initial_interval,
            max_interval: spec.health.max_interval,
        };
        // Plans, keys and reports see `secret:<param>`; the rendered mode keeps the placeholder.
        let (params, secrets) = redact(&ev.params, &spec.params);
        let key = if !self.keys {
            String::new()
        } else {
            key_of(&json!({
            "kind": "engine",
            "template": inst.template.value,
            "engine": ev.name,
            "model": model_ref,
            "params": params,
            "mode": mode_for_key(&mode),
            "health": health,
            "setup": setup,
            "warmup": warmup,
            }))
        };
        Some(EngineGroup {
            id: format!("{}/{}", ev.name, model.name.value),
            engine: ev.name.clone(),
            template: inst.template.value.clone(),
            model: model_ref,
            params,
            secrets,
            mode,
            health,
            version: spec.version.clone(),
            setup,
            warmup,
            tokenize,
            tokenize_pointer: spec.tokenize.as_ref().map(|t| t.tokens.clone()),
            metrics_path: spec.metrics.as_ref().map(|m| m.path.clone()),
            restart_on_retry: spec.restart_on_retry,
            slurm: inst.slurm.as_ref().map(|s| s.value.clone()),
            key,
        })
    }

    /// Renders an engine call for one sampling configuration.
    fn request(
        &self,
        engine_ctx: &Json,
        sampling: &BTreeMap<String, Json>,
        ignore_eos: bool,
        call: &ApiCall,
    ) -> Result<RequestTemplate, Diagnostic> {
        // The per-cell variables over the engine's context, which is shared and never cloned.
        let mut top = serde_json::Map::new();
        for (k, _) in SAMPLING_KEYS {
            top.insert((*k).to_string(), sampling.get(*k).cloned().unwrap_or(Json::Null));
        }
        top.insert("sampling".into(), json!(sampling));
        top.insert("ignore_eos".into(), ignore_eos.into());
        top.insert("prompt".into(), placeholder("prompt").into());
        top.insert("messages".into(), placeholder("messages").into());
        let top = Json::Object(top);
        let layers = crate::template::Layers { top: &top, base: engine_ctx };
        let body = self.renderer.render_layered(&call.body, layers)?.unwrap_or(Json::Null);
        Ok(RequestTemplate {
            method: call.method.clone(),
            path: call.path.clone(),
            body,
            stream: call.stream,
            text: call.text.clone(),
            reasoning: call.reasoning.clone(),
            done: call.done.clone(),
            done_field: call.done_field.clone(),
            usage: call.usage.clone(),
            server_prompt_ms: call.server_prompt_ms.clone(),
        })
    }

    fn excluded(&self, model: &Model, ev: &EngineVariant, bv: &BenchVariant, hits: &mut [usize]) -> bool {
        let mut any = false;
        for (i, ex) in self.suite.spec.matrix.exclude.iter().enumerate() {
            let m = ex.model.as_ref().is_none_or(|m| m.value == model.name.value);
            let e = ex.engine.as_ref().is_none_or(|e| e.value == ev.instance.name.value || e.value == ev.name);
            let b = ex.benchmark.as_ref().is_none_or(|b| b.value == bv.instance.name.value);
            let p = ex.params.iter().all(|(k, v)| {
                let want = v.value.to_json();
                bv.params.get(k).or_else(|| ev.params.get(k)) == Some(&want)
            });
            if m && e && b && p {
                hits[i] += 1;
                any = true;
            }
        }
        any
    }

    fn cell(
        &mut self,
        gi: usize,
        ectx: &Json,
        ev: &EngineVariant,
        model: &Model,
        bv: &BenchVariant,
        run_index: u32,
    ) -> Option<Cell> {
        let spec = &bv.entry.manifest.spec;
        let bfile = bv.entry.manifest.file.clone();
        let mut cell = Cell {
            group: gi,
            model: model.name.value.clone(),
            engine: ev.name.clone(),
            benchmark: bv.instance.name.value.clone(),
            template: bv.instance.template.value.clone(),
            params: BTreeMap::new(),
            swept: bv.swept.clone(),
            run_index,
            sampling: BTreeMap::new(),
            load: None,
            request: None,
            eval: None,
            clients: (bv.clients > 1)
                .then(|| CellClients { count: bv.clients, min: bv.instance.clients_min.as_ref().map(|m| m.value) }),
        };
        let (params, sampling, origins) = self.cell_sampling(ev, bv);
        cell.params = params;
        cell.sampling = sampling;
        let ctx = json!({
            "params": cell.params,
            "sampling": cell.sampling,
            "model": self.model_context(model),
            "engine": {"name": ev.name, "template": ev.instance.template.value},
            "run": {"index": run_index},
        });
        if spec.mechanism == Mechanism::Eval {
            if let (Some(c), Some(at)) = (&cell.clients, &bv.instance.clients) {
                let d = Diagnostic::new(
                    at.pos,
                    format!(
                        "`clients: {}` of benchmark `{}`: an eval benchmark sends its items from one client",
                        c.count, bv.instance.name.value
                    ),
                )
                .help("remove `clients` (it applies to load benchmarks)");
                if !self.errors.contains(&d) {
                    self.err(d);
                }
                return None;
            }
            return self.eval_cell(cell, &ctx, ectx, ev, model, bv);
        }
        let load_node = spec.load.as_ref()?;
        let rendered = match self.renderer.render_node(load_node, &ctx) {
            Ok(n) => n,
            Err(d) => {
                let d = d.in_file(&bfile);
                if !self.errors.contains(&d) {
                    self.err(d);
                }
                return None;
            }
        };
        let mut cx = Cx::default();
        let load = LoadSpec::decode(&rendered, &mut cx, &format!("`load` of benchmark `{}`", bv.instance.name.value));
        if !cx.errors.is_empty() {
            for d in cx.errors {
                let d = d.in_file(&bfile);
                if !self.errors.contains(&d) {
                    self.err(d);
                }
            }
            return None;
        }
        let load = load?;
        if let (Some(c), Some(at)) = (&cell.clients, &bv.instance.clients)
            && let Err(why) = shardable(&load, c.count)
        {
            let d = Diagnostic::new(
                at.pos,
                format!("`clients: {}` of benchmark `{}`: {why}", c.count, bv.instance.name.value),
            )
            .help(
                "remove `clients`, or use a `concurrency`, `constant` or `poisson` profile with room for every client",
            );
            if !self.errors.contains(&d) {
                self.err(d);
            }
            return None;
        }
        let espec = &ev.template.manifest.spec;
        if espec.needs_tokenizer
            && espec.tokenize.is_none()
            && model.tokenizer.is_none()
            && matches!(load.prompt, crate::manifest::load::PromptSpec::Synthetic { .. })
        {
            let d = Diagnostic::new(
                model.name.pos,
                format!(
                    "model `{}` needs a `tokenizer:` for engine `{}`: its template `{}` has no tokenize call, and synthetic prompts of exact lengths need one",
                    model.name.value, ev.name, ev.instance.template.value
                ),
            )
            .help("add `tokenizer: path/to/tokenizer.json` (the model's Hugging Face tokenizer file) to the model");
            if !self.errors.contains(&d) {
                self.err(d);
            }
            return None;
        }
        let api = &ev.template.manifest.spec.api;
        let call = match load.api {
            ApiKind::Completion => api.completion.as_ref(),
            ApiKind::Chat => api.chat.as_ref(),
        };
        let Some(call) = call else {
            let kind = if load.api == ApiKind::Chat { "chat" } else { "completion" };
            let d = Diagnostic::new(
                bv.instance.name.pos,
                format!(
                    "benchmark `{}` uses the `{kind}` API, which engine template `{}` does not declare",
                    bv.instance.name.value, ev.instance.template.value
                ),
            )
            .help("use a benchmark with the other `api:`, or add the call to the engine template");
            if !self.errors.contains(&d) {
                self.err(d);
            }
            return None;
        };
        if !self.check_slots(&cell.sampling, &origins, call, load.api, ev) {
            return None;
        }
        let memo =
            (load.api == ApiKind::Chat, load.ignore_eos, serde_json::to_string(&cell.sampling).unwrap_or_default());
        let req = match self.requests.get(&memo) {
            Some(req) => req.clone(),
            None => match self.request(ectx, &cell.sampling, load.ignore_eos, call) {
                Ok(req) => self.requests.entry(memo).or_insert(std::sync::Arc::new(req)).clone(),
                Err(d) => {
                    let d = self.render_error(d, &ev.template.manifest.file, model, &ev.instance.template.value);
                    if !self.errors.contains(&d) {
                        self.err(d);
                    }
                    return None;
                }
            },
        };
        cell.request = Some(req);
        cell.load = Some(load);
        Some(cell)
    }

    /// An `eval` cell: the eval rendered over the cell's context, and the engine call its
    /// requests go through, rendered with the eval's generation values over the suite's sampling.
    fn eval_cell(
        &mut self,
        mut cell: Cell,
        ctx: &Json,
        ectx: &Json,
        ev: &EngineVariant,
        model: &Model,
        bv: &BenchVariant,
    ) -> Option<Cell> {
        let bfile = bv.entry.manifest.file.clone();
        let Some(node) = bv.entry.manifest.spec.eval.as_ref() else {
            self.err(
                Diagnostic::new(
                    bv.instance.template.pos,
                    format!("benchmark template `{}` has `mechanism: eval` but no `eval:`", bv.instance.template.value),
                )
                .in_file(&bfile),
            );
            return None;
        };
        let spec = match crate::eval::compile(node, ctx) {
            Ok(s) => s,
            Err(ds) => {
                for d in ds {
                    let d = d.in_file(&bfile);
                    if !self.errors.contains(&d) {
                        self.err(d);
                    }
                }
                return None;
            }
        };
        let api = &ev.template.manifest.spec.api;
        let call = match spec.prompt.api {
            ApiKind::Completion => api.completion.as_ref(),
            ApiKind::Chat => api.chat.as_ref(),
        };
        let Some(call) = call else {
            let kind = if spec.prompt.api == ApiKind::Chat { "chat" } else { "completion" };
            let d = Diagnostic::new(
                bv.instance.name.pos,
                format!(
                    "eval `{}` uses the `{kind}` API, which engine template `{}` does not declare",
                    bv.instance.name.value, ev.instance.template.value
                ),
            );
            if !self.errors.contains(&d) {
                self.err(d);
            }
            return None;
        };
        let mut sampling = cell.sampling.clone();
        let g = &spec.generation;
        sampling.insert("max_tokens".into(), json!(g.max_tokens));
        if let Some(t) = g.temperature {
            sampling.insert("temperature".into(), json!(t));
        }
        if !g.stop.is_empty() {
            sampling.insert("stop".into(), json!(g.stop));
        }
        let (_, _, origins) = self.cell_sampling(ev, bv);
        if !self.check_slots(&sampling, &origins, call, spec.prompt.api, ev) {
            return None;
        }
        match self.request(ectx, &sampling, false, call) {
            Ok(req) => cell.request = Some(std::sync::Arc::new(req)),
            Err(d) => {
                let d = self.render_error(d, &ev.template.manifest.file, model, &ev.instance.template.value);
                if !self.errors.contains(&d) {
                    self.err(d);
                }
                return None;
            }
        }
        cell.sampling = sampling;
        cell.eval = Some(spec);
        Some(cell)
    }
}

/// An argv rendered: each text item, and each `{when, args}` group whose condition holds.
fn argv_of(
    items: &[Arg],
    file: &Path,
    text: &mut dyn FnMut(&Spanned<String>, &Path) -> String,
    when: &mut dyn FnMut(&Spanned<String>, &Path) -> bool,
) -> Vec<String> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Arg::Text(s) => out.push(text(s, file)),
            Arg::When(g) => {
                if when(&g.when, file) {
                    out.extend(g.args.iter().map(|s| text(s, file)));
                }
            }
        }
    }
    out
}

/// Where a cell's sampling value was set, for an error about a value no request can carry.
#[derive(Debug, Clone, Copy)]
enum SamplingOrigin {
    Suite(Pos),
    Engine(Pos),
    Benchmark(Pos),
    /// The benchmark template's default (or an eval's generation settings).
    Template(Pos),
}

fn unreachable_api() -> ! {
    // EngineSpec decoding rejects an `api` without any call, so a catalog entry always has one.
    panic!("engine template without an api call passed decoding")
}

/// Every combination of the swept values, in declaration order (the first param varies slowest).
/// Whether `load` can be dealt to `clients` client processes; why not, if it cannot.
///
/// `stages` and `sweep` choose each stage from the merged result of the one before (a sweep's
/// rates come from its measured throughputs), so they would need a merge between stages: they
/// run from one client. A synchronous loop is one request at a time; a closed loop needs a
/// worker per client, and an open loop an in-flight slot per client.
fn shardable(load: &crate::manifest::load::LoadSpec, clients: u32) -> Result<(), String> {
    use crate::manifest::load::Profile;
    match &load.profile {
        Profile::Stages(_) | Profile::Sweep { .. } => Err(
            "`stages` and `sweep` choose each stage from the merged result of the one before; they run from one client"
                .into(),
        ),
        Profile::Synchronous => Err("a synchronous profile sends one request at a time, from one client".into()),
        Profile::Concurrency(c) if *c < clients => {
            Err(format!("concurrency {c} cannot be split over {clients} clients (each needs a worker)"))
        }
        Profile::Constant(_) | Profile::Poisson { .. } if load.max_concurrency.is_some_and(|m| m < clients) => {
            Err(format!(
                "`max_concurrency` {} cannot be split over {clients} clients (each needs a slot)",
                load.max_concurrency.unwrap_or_default()
            ))
        }
        _ => Ok(()),
    }
}

fn combinations(set: &[(String, Vec<Json>, bool)]) -> Vec<Vec<(String, Json, bool)>> {
    let mut out: Vec<Vec<(String, Json, bool)>> = vec![Vec::new()];
    for (name, values, swept) in set {
        let mut next = Vec::with_capacity(out.len() * values.len());
        for prefix in &out {
            for v in values {
                let mut c = prefix.clone();
                c.push((name.clone(), v.clone(), *swept));
                next.push(c);
            }
        }
        out = next;
    }
    out
}

/// The mode as it enters the group's key: a sidecar's port is placement, like the port of an
/// engine kitt starts.
fn mode_for_key(mode: &Mode) -> Json {
    let mut v = serde_json::to_value(mode).unwrap_or_default();
    if let Some(s) = v.get_mut("sidecar").and_then(Json::as_object_mut) {
        s.remove("port");
    }
    v
}

/// The network a container engine uses: the instance's choice, else the template's, else host.
fn network_of(ev: &EngineVariant) -> Network {
    let i = ev.instance;
    let container = i.container.is_some()
        || (ev.template.manifest.spec.container.is_some() && i.native.is_none() && i.endpoint.is_none());
    if !container {
        return Network::Host;
    }
    let over = ev.instance.container.as_ref().and_then(|c| c.network);
    over.or_else(|| ev.template.manifest.spec.container.as_ref().and_then(|c| c.network)).unwrap_or_default()
}

/// `auto`, `all`, `none`, `device=…` or a GPU count, as `docker run --gpus` takes them.
fn valid_gpus(g: &str) -> bool {
    matches!(g, "auto" | "all" | "none")
        || g.strip_prefix("device=").is_some_and(|d| !d.is_empty() && d.split(',').all(|x| !x.trim().is_empty()))
        || g.parse::<u32>().is_ok_and(|n| n > 0)
}

/// `params` as plans, keys and reports see them: a secret param's value is `secret:<param>`;
/// and each secret param's environment variable (names only).
fn redact(
    params: &BTreeMap<String, Json>,
    decls: &BTreeMap<String, Spanned<ParamDecl>>,
) -> (BTreeMap<String, Json>, BTreeMap<String, String>) {
    let mut shown = params.clone();
    let mut secrets = BTreeMap::new();
    for name in decls.iter().filter(|(_, d)| d.value.secret).map(|(name, _)| name) {
        if let Some(v) = shown.get_mut(name) {
            if let Some(var) = v.as_str().and_then(|s| env_placeholders(s).next()) {
                secrets.insert(name.clone(), var.to_string());
            }
            *v = Json::String(format!("secret:{name}"));
        }
    }
    (shown, secrets)
}
