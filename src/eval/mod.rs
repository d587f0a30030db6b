//! The `eval` mechanism: quality benchmarks as data.
//!
//! A Benchmark template with `mechanism: eval` has an `eval:` section: a dataset (local file,
//! URL, or the Hugging Face rows API, cached and checksummed), a field mapping, few-shot
//! examples, item templates (handlebars), generation params, answer extraction and scoring.
//! MMLU, GSM8K, TruthfulQA and HellaSwag are four such templates (`suites/benchmarks/`); a new eval
//! is a new YAML file (docs/evals.md). This module is a library: it never talks to an engine
//! (the executor's `generate` callback does) and never decides where run files live (the executor
//! passes paths).
//!
//! # How the executor drives it
//!
//! ```text
//! plan compile (per cell)      let spec: EvalSpec = eval::compile(&template.spec.eval_node, &cell_ctx)?;
//!                              // cell_ctx is the context `load:` renders over: {params, sampling,
//!                              // model, engine, run}; errors are Diagnostics positioned in the
//!                              // template file (add `.in_file(template_file)`). `spec` is
//!                              // Serialize: put it in the cell and its key.
//! benchmark step (engine up)   let mut opts = PrepareOptions::from_env(suite_dir);
//!                              opts.context_window = engine_ctx_len;         // if known
//!                              opts.counter = TokenCounter::Engine(count);   // /tokenize, if any
//!                              opts.cancel = cancel.clone();
//!                              let prepared = eval::prepare(&spec, &opts).await?;
//!                              let ropts = RunOptions::new(step_dir.join("eval-checkpoint.json"),
//!                                                          concurrency, cancel.clone());
//!                              match eval::run(&prepared, |req: Request| client_send(req), &ropts,
//!                                              |p: &Progress| bar.set(p.done, p.total)).await? {
//!                                  EvalOutcome::Finished { result, items, .. } => {
//!                                      eval::write_items(&step_dir.join("items.jsonl"), &items)?;
//!                                      // result: EvalResult (Serialize) goes into result.json
//!                                  }
//!                                  EvalOutcome::Interrupted { .. } => { /* step interrupted; rerun resumes */ }
//!                              }
//! ```
//!
//! Signatures:
//! - `pub fn compile(node: &Node, ctx: &serde_json::Value) -> Result<EvalSpec, Vec<Diagnostic>>`
//! - `pub async fn prepare(spec: &EvalSpec, opts: &PrepareOptions) -> Result<Prepared, EvalError>`
//! - `pub async fn run<G, F, E>(prepared: &Prepared, generate: G, opts: &RunOptions,
//!   progress: impl FnMut(&Progress)) -> Result<EvalOutcome, EvalError>`
//!   where `G: Fn(Request) -> F, F: Future<Output = Result<String, E>>, E: Into<Failure>`
//! - `pub fn write_items(path: &Path, items: &[ItemRecord]) -> Result<(), EvalError>`
//!
//! `generate` sends `Request { prompt: Prompt::Text | Prompt::Messages, max_tokens, temperature,
//! stop, .. }` through the engine's completion or chat call (`prepared.spec.prompt.api` says
//! which; `Prompt::Text` goes in as `prompt`, `Prompt::Messages` as `messages`), with these three
//! values over the cell's other sampling values, `ignore_eos` off, and returns the generated
//! content text (reasoning excluded), or a [`Failure`] (its kind, e.g. `http_500`, and detail; a
//! plain `String` converts to one). A failure is not an answer: it is counted in
//! `result.counts.errors` and `result.error_share` (apply `max_error_rate` to the share), is left
//! out of the accuracy, and the next `run` over the same checkpoint asks that item again; all
//! requests failing is `EvalError::AllFailed`. Requests are never retried within one `run`.
//! `EvalOutcome::Finished { result: Box<EvalResult>, items: Vec<ItemRecord>, resumed, retried }`;
//! the checkpoint is only valid for the same prepared eval (same fingerprint), so keep it per
//! step, under the step's key, and delete it only when the step's result is written (a finished
//! checkpoint re-scores without requests, apart from the items that failed).
//!
//! Also for the executor: `EvalSpec` derives `JsonSchema` (for the Benchmark schema's `eval`),
//! `spec.groups`, `spec.sample_size` and `prepared.dataset` say what was evaluated, and
//! `default_cache_dir()` is where datasets are cached (`kitt gc` may want to know).
//!
//! Item templates (`prompt.template|system|user|assistant`) and inline shots
//! (`fewshot.items`) are *not* rendered by `compile`: they are rendered per item by `prepare`,
//! over the item's fields, `choices`, `target`, `group`, `shots` and `params`.

mod dataset;
mod error;
mod extract;
pub(crate) mod items;
mod prepare;
mod prompt;
mod run;
mod score;
mod spec;

use serde_json::Value as Json;

use crate::manifest::decode::{Cx, Decode};
use crate::manifest::diag::Diagnostic;
use crate::manifest::yaml::{Key, Node, Value};
use crate::template::Renderer;

pub use dataset::SourceInfo;
pub use error::EvalError;
pub use extract::{Extractor, letter};
pub use prepare::{
    ContextInfo, CountFn, DEFAULT_WINDOW, DatasetInfo, HF_ENDPOINT, PrepareOptions, Prepared, PreparedItem, Skipped,
    TokenCounter, default_cache_dir, prepare,
};
pub use prompt::{Message, Prompt};
pub use run::{EvalOutcome, Progress, Request, RunOptions, run};
pub use score::{Counts, EvalResult, Failure, GroupScore, ItemRecord, Verdict, write_items};
pub use spec::{
    AnswerSpec, ChoiceFrom, ChoicesSpec, Compare, ContextSpec, DatasetSpec, EvalSpec, FewShotSpec, FieldMap, Format,
    Generation, HfSource, PromptSpec, Select, Source, TargetFormat, TargetSpec,
};

/// Renders the `eval:` tree of a Benchmark template over one cell's context and decodes it.
///
/// Every leaf renders like a `load:` tree (typed single expressions, strict variables, unset
/// sampling leaves left out) except the item templates and inline shots, which stay as written.
/// `params` from the context are kept in the spec for item templates.
pub fn compile(node: &Node, ctx: &Json) -> Result<EvalSpec, Vec<Diagnostic>> {
    let renderer = Renderer::default();
    let mut errors = Vec::new();
    let rendered = render_tree(&renderer, node, ctx, &[], &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut spec = from_node(&rendered)?;
    if let Some(Json::Object(params)) = ctx.get("params") {
        spec.params = params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    Ok(spec)
}

/// Decodes an already rendered `eval:` tree (for specs built in code or from JSON with
/// `Node::from_json`).
pub fn from_node(node: &Node) -> Result<EvalSpec, Vec<Diagnostic>> {
    let mut cx = Cx::default();
    let spec = EvalSpec::decode(node, &mut cx, "`eval`");
    match spec {
        Some(s) if cx.errors.is_empty() => Ok(s),
        _ => Err(cx.errors),
    }
}

/// Whether the subtree at `path` (keys from the `eval:` root) is kept as written.
fn kept_raw(path: &[&str]) -> bool {
    match path {
        ["prompt", key] => spec::ITEM_TEMPLATE_KEYS.contains(key),
        ["fewshot", "items"] => true,
        _ => false,
    }
}

fn render_tree(r: &Renderer, node: &Node, ctx: &Json, path: &[&str], errors: &mut Vec<Diagnostic>) -> Node {
    if kept_raw(path) {
        return node.clone();
    }
    match &node.value {
        Value::Map(entries) if path.len() < 2 => {
            let entries: Vec<(Key, Node)> = entries
                .iter()
                .map(|(k, v)| {
                    let mut p = path.to_vec();
                    p.push(k.name.as_str());
                    (k.clone(), render_tree(r, v, ctx, &p, errors))
                })
                .collect();
            Node { pos: node.pos, value: Value::Map(entries) }
        }
        _ => r.render_node(node, ctx).unwrap_or_else(|d| {
            errors.push(d);
            node.clone()
        }),
    }
}

#[cfg(test)]
mod tests;
