//! `prepare`: spec → the exact requests of an eval, before any is sent.
//!
//! Loads the dataset (and the shot pool), maps rows to items, filters and samples them, picks
//! shots, renders prompts and applies the context policy. The outcome is deterministic for a
//! given spec, data and token counter, and is fingerprinted: a checkpoint written for other
//! prompts is refused instead of being mixed into a score.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use super::dataset::fetch::{Fetcher, hex};
use super::dataset::parse::{Origin, Row};
use super::dataset::{self, Location, SourceInfo};
use super::error::EvalError;
use super::extract::Extraction;
use super::items::{Item, Mapper, Rng, keyed, sample};
use super::prompt::{Builder, Prompt};
use super::spec::{EvalSpec, FewShotSpec, Select};
use crate::cancel::Cancel;

/// The context window assumed when neither the engine nor the spec gives one.
pub const DEFAULT_WINDOW: u32 = 4096;

/// The public rows API of the Hugging Face datasets server.
pub const HF_ENDPOINT: &str = "https://datasets-server.huggingface.co";

/// Counts the tokens of a prompt with the engine's tokenizer (`/tokenize`), supplied by the
/// executor. The future must not borrow the prompt.
pub type CountFn = Arc<dyn Fn(Prompt) -> Pin<Box<dyn Future<Output = Result<u32, String>> + Send>> + Send + Sync>;

/// How prompt lengths are measured for the context policy.
#[derive(Clone, Default)]
pub enum TokenCounter {
    /// [`Prompt::estimate_tokens`]: characters / 3 (+4 per chat message), an over-estimate.
    #[default]
    Estimate,
    /// The engine's own tokenizer.
    Engine(CountFn),
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenCounter::Estimate => "Estimate",
            TokenCounter::Engine(_) => "Engine",
        })
    }
}

/// What `prepare` needs besides the spec.
#[derive(Clone)]
pub struct PrepareOptions {
    /// Relative local sources resolve here (the suite file's directory).
    pub base_dir: PathBuf,
    /// The dataset cache ([`default_cache_dir`]).
    pub cache_dir: PathBuf,
    /// Use only the cache; a missing entry is an error listing every missing source.
    pub offline: bool,
    /// The datasets-server base URL ([`HF_ENDPOINT`]; tests point it at a local server).
    pub hf_endpoint: String,
    /// Sent as a bearer token to the datasets server (gated datasets). A secret: never logged.
    pub hf_token: Option<String>,
    /// The engine's context window, when the executor knows it.
    pub context_window: Option<u32>,
    pub counter: TokenCounter,
    pub cancel: Cancel,
}

impl PrepareOptions {
    /// Options from the environment: `KITT_CACHE_DIR`/`XDG_CACHE_HOME` for the cache,
    /// `KITT_OFFLINE=1` for offline mode, `HF_TOKEN`, `KITT_HF_ENDPOINT`.
    pub fn from_env(base_dir: impl Into<PathBuf>) -> PrepareOptions {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        PrepareOptions {
            base_dir: base_dir.into(),
            cache_dir: default_cache_dir(),
            offline: var("KITT_OFFLINE").is_some_and(|v| v != "0" && v != "false"),
            hf_endpoint: var("KITT_HF_ENDPOINT").unwrap_or_else(|| HF_ENDPOINT.to_string()),
            hf_token: var("HF_TOKEN"),
            context_window: None,
            counter: TokenCounter::Estimate,
            cancel: Cancel::default(),
        }
    }
}

/// `$KITT_CACHE_DIR/datasets`, else `$XDG_CACHE_HOME/kitt/datasets`, else `~/.cache/kitt/datasets`.
pub fn default_cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = var("KITT_CACHE_DIR") {
        return d.join("datasets");
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return d.join("kitt").join("datasets");
    }
    match var("HOME") {
        Some(h) => h.join(".cache").join("kitt").join("datasets"),
        None => PathBuf::from(".kitt").join("cache").join("datasets"),
    }
}

/// One item to send.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreparedItem {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub prompt: Prompt,
    /// Shots in the prompt (fewer than `k` when the pool or the window had fewer).
    pub shots: u32,
    /// Prompt length by the token counter.
    pub prompt_tokens: u32,
    /// The options, in the order shown (multiple choice).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// The expected answer (a letter for multiple choice).
    pub target: String,
}

/// An item not sent, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub reason: String,
}

/// What was read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetInfo {
    pub sources: Vec<SourceInfo>,
    /// What `dataset.sha256` is compared with.
    pub sha256: String,
    /// Rows read, items after the group filter, and items kept by `sample_size`.
    pub rows: usize,
    pub filtered: usize,
    pub sampled: usize,
    /// Where shots came from (`inline`, `dataset`, or the sources read).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shot_sources: Vec<SourceInfo>,
}

/// How the context policy was applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContextInfo {
    pub window: u32,
    /// `engine`, `spec`, or `default`.
    pub window_from: &'static str,
    /// `engine` (the engine's tokenizer) or `estimate`.
    pub counter: &'static str,
    pub shots_requested: u32,
    /// Items that got fewer shots than requested (small pool or the window).
    pub fewer_shots: usize,
}

/// An eval ready to run.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub spec: EvalSpec,
    pub items: Vec<PreparedItem>,
    pub skipped: Vec<Skipped>,
    pub dataset: DatasetInfo,
    pub context: ContextInfo,
    /// sha256 of the spec and every item's id, prompt and target.
    pub fingerprint: String,
    pub(crate) extraction: Extraction,
}

/// Loads, maps, filters, samples, picks shots and renders prompts. See the module docs.
pub async fn prepare(spec: &EvalSpec, opts: &PrepareOptions) -> Result<Prepared, EvalError> {
    let fetcher =
        Fetcher::new(&opts.cache_dir, opts.offline, &opts.hf_endpoint, opts.hf_token.as_deref(), &opts.cancel);
    let ds = &spec.dataset;
    let resources = dataset::resolve(&ds.source, ds.split.as_deref(), &spec.groups, &opts.base_dir)?;
    let fewshot = spec.fewshot.as_ref().filter(|f| f.k > 0);
    let shot_resources = match fewshot {
        Some(f) if f.items.is_empty() && (f.split.is_some() || f.source.is_some()) => {
            let source = f.source.as_ref().unwrap_or(&ds.source);
            let split = f.split.as_deref().or(ds.split.as_deref());
            Some(dataset::resolve(source, split, &spec.groups, &opts.base_dir)?)
        }
        _ => None,
    };
    if opts.offline {
        let mut missing = dataset::missing_offline(&fetcher, &resources);
        missing.extend(shot_resources.as_deref().map(|r| dataset::missing_offline(&fetcher, r)).unwrap_or_default());
        if !missing.is_empty() {
            return Err(EvalError::Offline { missing, cache: opts.cache_dir.clone() });
        }
    }
    let described = describe(&resources);
    let loaded = dataset::load(ds, resources, &fetcher, true).await?;
    let rows = loaded.rows.len();
    if rows == 0 {
        let split = ds.split.as_deref().map(|s| format!(", split `{s}`")).unwrap_or_default();
        return Err(EvalError::Empty { why: format!("{described}{split} has no rows") });
    }
    let mapper = Mapper::new(spec)?;
    let mut items = Vec::with_capacity(rows);
    for (row, r) in loaded.rows {
        let res = &loaded.resources[r];
        items.push(mapper.item(row, &res.label, res.group.as_deref())?);
    }
    if !spec.groups.is_empty() && !ds.source.per_group() {
        let before = items.len();
        let mut present: Vec<String> = items.iter().filter_map(|i| i.group.clone()).collect();
        items.retain(|i| i.group.as_ref().is_some_and(|g| spec.groups.contains(g)));
        if items.is_empty() {
            present.sort();
            present.dedup();
            let shown: Vec<&str> = present.iter().take(20).map(String::as_str).collect();
            return Err(EvalError::Empty {
                why: format!(
                    "none of the {before} items of {described} is in the groups [{}] (groups present: {})",
                    spec.groups.join(", "),
                    if shown.is_empty() { "none".to_string() } else { shown.join(", ") }
                ),
            });
        }
    }
    let filtered = items.len();
    let pool_self = fewshot.is_some_and(|f| f.items.is_empty() && shot_resources.is_none());
    let self_pool = if pool_self { items.clone() } else { Vec::new() };
    if let Some(n) = spec.sample_size {
        items = sample(items, usize::try_from(n).unwrap_or(usize::MAX), spec.seed);
    }
    let sampled = items.len();
    let (pool, shot_sources) = match (fewshot, shot_resources) {
        (None, _) => (Vec::new(), Vec::new()),
        (Some(f), _) if !f.items.is_empty() => (inline_shots(&mapper, f)?, Vec::new()),
        (Some(_), Some(res)) => {
            let loaded = dataset::load(ds, res, &fetcher, false).await?;
            let mut pool = Vec::with_capacity(loaded.rows.len());
            for (row, r) in loaded.rows {
                let res = &loaded.resources[r];
                pool.push(mapper.item(row, &res.label, res.group.as_deref())?);
            }
            (pool, loaded.sources)
        }
        (Some(_), None) => (self_pool, Vec::new()),
    };
    let builder = Builder::new(spec)?;
    let (window, window_from) = match (opts.context_window, spec.context.window) {
        (Some(e), Some(s)) => (e.min(s), if e < s { "engine" } else { "spec" }),
        (Some(e), None) => (e, "engine"),
        (None, Some(s)) => (s, "spec"),
        (None, None) => (DEFAULT_WINDOW, "default"),
    };
    let shots = Shots::new(fewshot, spec.seed, &pool, &items, pool_self);
    let pool_ctx: Vec<Map<String, Json>> = pool.iter().map(|p| builder.context(p)).collect();
    let max_tokens = u64::from(spec.generation.max_tokens);
    let k = fewshot.map_or(0, |f| f.k);
    let mut prepared = Vec::with_capacity(items.len());
    let mut skipped = Vec::new();
    let mut fewer = 0;
    for (n, item) in items.iter().enumerate() {
        if n % 256 == 0 && opts.cancel.is_cancelled() {
            return Err(EvalError::Cancelled);
        }
        let ctx = builder.context(item);
        let chosen = shots.pick(item);
        let mut used = chosen.len();
        loop {
            let shot_ctx: Vec<&Map<String, Json>> = chosen[..used].iter().map(|&j| &pool_ctx[j]).collect();
            let prompt = builder
                .build(&ctx, &shot_ctx)
                .map_err(|reason| EvalError::Item { item: format!("{} ({})", item.id, item.origin), reason })?;
            let tokens = count(&opts.counter, &prompt).await?;
            if u64::from(tokens) + max_tokens <= u64::from(window) {
                if (used as u32) < k {
                    fewer += 1;
                }
                prepared.push(PreparedItem {
                    id: item.id.clone(),
                    group: item.group.clone(),
                    prompt,
                    shots: used as u32,
                    prompt_tokens: tokens,
                    choices: item.choices.clone(),
                    target: item.target.clone(),
                });
                break;
            }
            if used == 0 {
                skipped.push(Skipped {
                    id: item.id.clone(),
                    group: item.group.clone(),
                    reason: format!(
                        "too long: the prompt without shots is {tokens} tokens, which with max_tokens {max_tokens} exceeds the context window of {window}"
                    ),
                });
                break;
            }
            used -= 1;
        }
    }
    if prepared.is_empty() {
        return Err(EvalError::Empty {
            why: format!(
                "all {} items were skipped: {}",
                skipped.len(),
                skipped.first().map_or("", |s| s.reason.as_str())
            ),
        });
    }
    let extraction = Extraction::new(&spec.extractors()).map_err(EvalError::Spec)?;
    let fingerprint = fingerprint(spec, &prepared);
    let counter = match opts.counter {
        TokenCounter::Estimate => "estimate",
        TokenCounter::Engine(_) => "engine",
    };
    Ok(Prepared {
        spec: spec.clone(),
        items: prepared,
        skipped,
        dataset: DatasetInfo { sources: loaded.sources, sha256: loaded.sha256, rows, filtered, sampled, shot_sources },
        context: ContextInfo { window, window_from, counter, shots_requested: k, fewer_shots: fewer },
        fingerprint,
        extraction,
    })
}

fn describe(resources: &[dataset::Resource]) -> String {
    match resources {
        [one] => one.location.to_string(),
        many => {
            let local = many.iter().all(|r| matches!(r.location, Location::Local(_)));
            let kind = if local { "files" } else { "sources" };
            format!("{} {kind} ({} … {})", many.len(), many[0].location, many[many.len() - 1].location)
        }
    }
}

fn inline_shots(mapper: &Mapper, f: &FewShotSpec) -> Result<Vec<Item>, EvalError> {
    let source: Arc<str> = Arc::from("fewshot.items");
    f.items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let fields = v.as_object().cloned().unwrap_or_default();
            let row = Row { fields, origin: Origin { source: source.clone(), number: i as u64, line: false } };
            mapper.item(row, "fewshot", None)
        })
        .collect()
}

async fn count(counter: &TokenCounter, prompt: &Prompt) -> Result<u32, EvalError> {
    match counter {
        TokenCounter::Estimate => Ok(prompt.estimate_tokens()),
        TokenCounter::Engine(f) => f(prompt.clone()).await.map_err(EvalError::Counter),
    }
}

/// Shot selection over a pool.
struct Shots<'a> {
    spec: Option<&'a FewShotSpec>,
    seed: u64,
    pool: &'a [Item],
    /// Candidate pool indices per item group (pool items without a group fit every group).
    by_group: HashMap<Option<String>, Vec<usize>>,
    all: Vec<usize>,
    /// The pool is the eval's own items: never show an item its own answer.
    exclude_self: bool,
}

impl<'a> Shots<'a> {
    fn new(spec: Option<&'a FewShotSpec>, seed: u64, pool: &'a [Item], items: &[Item], exclude_self: bool) -> Self {
        let mut by_group = HashMap::new();
        if spec.is_some_and(|f| f.same_group) {
            for it in items {
                by_group.entry(it.group.clone()).or_insert_with(|| {
                    (0..pool.len()).filter(|&j| pool[j].group.is_none() || pool[j].group == it.group).collect()
                });
            }
        }
        let seed = spec.and_then(|f| f.seed).unwrap_or(seed);
        Shots { spec, seed, pool, by_group, all: (0..pool.len()).collect(), exclude_self }
    }

    fn pick(&self, item: &Item) -> Vec<usize> {
        let Some(f) = self.spec else { return Vec::new() };
        let cands = self.by_group.get(&item.group).unwrap_or(&self.all);
        let ok = |j: usize| !(self.exclude_self && self.pool[j].id == item.id);
        let k = f.k as usize;
        match f.select {
            Select::First => cands.iter().copied().filter(|&j| ok(j)).take(k).collect(),
            Select::Random => {
                let available = cands.iter().filter(|&&j| ok(j)).count();
                let want = k.min(available);
                let mut rng = Rng::new(keyed(self.seed, "shots", &item.id));
                let mut out: Vec<usize> = Vec::with_capacity(want);
                while out.len() < want {
                    let j = cands[rng.below(cands.len())];
                    if ok(j) && !out.contains(&j) {
                        out.push(j);
                    }
                }
                out
            }
        }
    }
}

/// sha256 over the spec and each item's id, prompt, options and target.
fn fingerprint(spec: &EvalSpec, items: &[PreparedItem]) -> String {
    struct Hasher(Sha256);
    impl std::io::Write for Hasher {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hasher(Sha256::new());
    // Writing JSON into a hasher cannot fail: the writer never errors and the values are plain data.
    let _ = serde_json::to_writer(&mut h, &("kitt-eval-1", spec));
    for it in items {
        let _ = serde_json::to_writer(&mut h, &(&it.id, &it.prompt, &it.choices, &it.target));
    }
    hex(&h.0.finalize())
}
