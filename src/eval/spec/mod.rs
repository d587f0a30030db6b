//! The `eval:` section of a Benchmark template, decoded after rendering for one cell.
//!
//! Owns the shape of an eval as data: where the items come from, how a row becomes an item, how
//! a prompt is built, what is generated and how the output is judged. It never loads or sends
//! anything. Decoding follows the manifest decoder (every error at once, with positions, unknown
//! keys rejected) so a broken custom eval points into its template file like any other template.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value as Json;

use crate::manifest::load::ApiKind;
use crate::string_enum;

use super::extract::Extractor;

mod decode;

/// One eval: dataset → items → prompts → generation → extraction → score.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    pub dataset: DatasetSpec,
    /// How a dataset row becomes an item.
    #[serde(default)]
    pub fields: FieldMap,
    /// Only items of these groups (MMLU subjects); a source with `{group}` loads one file each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Evaluate a seeded subset of this many items (0 or absent: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_size: Option<u64>,
    /// Seeds the subset, random shots and shuffled choices (default 1234).
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fewshot: Option<FewShotSpec>,
    pub prompt: PromptSpec,
    pub generation: Generation,
    #[serde(default)]
    pub answer: AnswerSpec,
    #[serde(default)]
    pub context: ContextSpec,
    /// The benchmark's params, visible to item templates as `params.*` (set by `compile`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub params: BTreeMap<String, Json>,
}

fn default_seed() -> u64 {
    1234
}

/// Where rows come from and how to read them.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// A local path (relative to the suite file), an `http(s)://` URL, `hf://DATASET?config=C&split=S`,
    /// or `{hf: {dataset, config, split}}`. `{split}` and `{group}` are substituted.
    pub source: Source,
    /// The split: substituted for `{split}`, and the Hugging Face split when the source names none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// csv | jsonl | json; by default from the file extension (Hugging Face rows need none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// CSV: whether the first row names the columns (default: true unless `columns` is given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<bool>,
    /// CSV without a header: the column names. A name ending in `[]` collects its columns into
    /// one list (`[question, "choices[]", "choices[]", answer]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// JSON: a JSON pointer to the array of records (default: the document is the array).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<String>,
    /// The expected sha256 of the data (see docs/evals.md for what it covers per source kind).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A dataset source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Source {
    /// A file on this machine (relative paths resolve against the suite's directory).
    Local(String),
    /// An `http://` or `https://` URL, downloaded once into the cache.
    Url(String),
    /// The Hugging Face datasets-server rows API, paged, cached as JSONL.
    Hf { hf: HfSource },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HfSource {
    /// `owner/name`, e.g. `cais/mmlu`.
    pub dataset: String,
    /// The dataset's config (default `default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// The split (default: the dataset's `split`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
}

impl Source {
    /// Parses a source string: `hf://…`, a URL, or a path.
    pub fn parse(text: &str) -> Result<Source, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the source is empty".into());
        }
        if let Some(rest) = text.strip_prefix("hf://") {
            let (dataset, query) = rest.split_once('?').unwrap_or((rest, ""));
            if dataset.is_empty() {
                return Err(format!("`{text}` names no dataset; write `hf://OWNER/NAME?config=C&split=S`"));
            }
            let mut hf = HfSource { dataset: dataset.to_string(), config: None, split: None };
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("config", v)) => hf.config = Some(v.to_string()),
                    Some(("split", v)) => hf.split = Some(v.to_string()),
                    _ => return Err(format!("`{pair}` in `{text}`: only `config=` and `split=` are known")),
                }
            }
            return Ok(Source::Hf { hf });
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            if let Some((_, fragment)) = text.split_once('#')
                && let Some(hash) = fragment.strip_prefix("sha256=")
                && !(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(format!("`{text}`: `#sha256=` must be followed by 64 hexadecimal digits"));
            }
            return Ok(Source::Url(text.to_string()));
        }
        if text.contains("://") {
            return Err(format!("`{text}`: unknown scheme; use a path, http(s)://, or hf://"));
        }
        Ok(Source::Local(text.to_string()))
    }

    /// Whether `{group}` appears in the source (one file per group).
    pub fn per_group(&self) -> bool {
        match self {
            Source::Local(s) | Source::Url(s) => s.contains("{group}"),
            Source::Hf { hf } => {
                hf.dataset.contains("{group}")
                    || [&hf.config, &hf.split].iter().any(|v| v.as_deref().is_some_and(|v| v.contains("{group}")))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Jsonl,
    Json,
}
string_enum!(Format { "csv" => Format::Csv, "jsonl" => Format::Jsonl, "json" => Format::Json });

/// Which row fields are the item's id, group, choices and expected answer. Every row field is
/// also visible to the prompt templates under its own name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldMap {
    /// A field that identifies the row (default: its position in the source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The field that groups items (per-group accuracy); set from `{group}` for per-group sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Multiple choice: where the options come from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub choices: Option<ChoicesSpec>,
    /// The expected answer (not needed with `choices: {correct, incorrect}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChoicesSpec {
    #[serde(flatten)]
    pub from: ChoiceFrom,
    /// Split string fields into options at this separator (e.g. `"; "`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// Shuffle the options per item (seeded by the eval's seed and the item's id).
    #[serde(default)]
    pub shuffle: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChoiceFrom {
    /// One field holding the options (a list, or a string split at `separator`).
    Field(String),
    /// One field per option, in order.
    Fields(Vec<String>),
    /// The correct option first, then the incorrect ones (a list or a string split at
    /// `separator`); the target is the correct option's letter.
    #[serde(untagged)]
    CorrectIncorrect { correct: String, incorrect: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub field: String,
    /// How a multiple-choice target is written: a letter, a 0-based index, the option's text,
    /// or `auto` (an integer or digits: index; one capital letter: letter; else text).
    #[serde(default)]
    pub format: TargetFormat,
    /// Extractors applied to the field's text, the first that matches wins (GSM8K: after `#### `).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extract: Vec<Extractor>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetFormat {
    #[default]
    Auto,
    Letter,
    Index,
    Text,
}
string_enum!(TargetFormat {
    "auto" => TargetFormat::Auto,
    "letter" => TargetFormat::Letter,
    "index" => TargetFormat::Index,
    "text" => TargetFormat::Text,
});

/// Few-shot examples put before each item.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FewShotSpec {
    /// Shots per item (fewer when the pool has fewer, or when the context window needs it).
    pub k: u32,
    /// Shots from this split of the dataset's source (`{split}` substituted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Shots from another source (read with the dataset's options).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// Shots written inline (objects with the same fields as rows). Never rendered as templates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<Json>,
    /// `first` (the pool's order) or `random` (seeded per item).
    #[serde(default)]
    pub select: Select,
    /// Only shots of the item's own group (default true).
    #[serde(default = "yes")]
    pub same_group: bool,
    /// Seed for `random` (default: the eval's seed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Select {
    #[default]
    First,
    Random,
}
string_enum!(Select { "first" => Select::First, "random" => Select::Random });

/// Item templates: handlebars, rendered per item over its fields, `choices`, `target`, `group`,
/// `shots` and `params` (helpers: `letter`, `replace`, `trim`).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// `completion` (one text, `template`) or `chat` (`system`, `user`, `assistant` turns).
    #[serde(default)]
    pub api: ApiKind,
    /// Completion: the whole prompt, shots included (`{{#each shots}}…{{/each}}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Chat: the system message (optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Chat: one user turn, rendered for each shot and for the item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Chat: a shot's answer turn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assistant: Option<String>,
}

/// The keys of `prompt` that are item templates (rendered per item, not per cell).
pub const ITEM_TEMPLATE_KEYS: &[&str] = &["template", "system", "user", "assistant"];

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    pub max_tokens: u32,
    /// Unset: the engine's default (a suite's `sampling.temperature` usually sets it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// How the generated text is judged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerSpec {
    /// Extractors tried in order; the first that finds an answer wins. Default: `first_letter`
    /// with choices, else `exact`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extract: Vec<Extractor>,
    /// How the extracted answer meets the target. Default: `letter` with choices, `number` when
    /// the last extractor is `number`, else `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare: Option<Compare>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    Letter,
    /// Numerically equal after stripping `$` and thousands separators.
    Number,
    /// Equal after trimming.
    Text,
    /// Equal after trimming, ignoring case.
    TextNocase,
}
string_enum!(Compare {
    "letter" => Compare::Letter,
    "number" => Compare::Number,
    "text" => Compare::Text,
    "text_nocase" => Compare::TextNocase,
});

/// The context-length policy: shots are dropped (last first) until prompt + `max_tokens` fits
/// the window; an item that does not fit even without shots is skipped and counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextSpec {
    /// The model's context window in tokens. The engine's, when the executor knows it, wins if
    /// smaller; with neither, 4096.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<u32>,
}

impl EvalSpec {
    /// Whether items are multiple choice.
    pub fn multiple_choice(&self) -> bool {
        self.fields.choices.is_some()
    }

    /// The extractors in effect (the default when none is written).
    pub fn extractors(&self) -> Vec<Extractor> {
        if !self.answer.extract.is_empty() {
            return self.answer.extract.clone();
        }
        if self.multiple_choice() { vec![Extractor::FirstLetter] } else { vec![Extractor::Exact] }
    }

    /// The comparison in effect.
    pub fn compare(&self) -> Compare {
        if let Some(c) = self.answer.compare {
            return c;
        }
        if self.multiple_choice() {
            Compare::Letter
        } else if matches!(self.extractors().last(), Some(Extractor::Number)) {
            Compare::Number
        } else {
            Compare::Text
        }
    }
}
