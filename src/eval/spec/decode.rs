//! Decoding the `eval:` tree: every error at once, with its position, unknown keys rejected.
//!
//! Cross-field rules live here too (a target for every eval, `{group}` with `groups`, chat shots
//! with an assistant turn), so a template that decodes can be prepared.

use std::collections::BTreeMap;

use crate::manifest::decode::{Cx, Decode, Fields};
use crate::manifest::diag::Diagnostic;
use crate::manifest::yaml::{Node, Value};

use super::super::extract::Extractor;
use super::*;

/// A string that may be empty: an empty string (an unset string param) counts as absent.
fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

impl Decode for EvalSpec {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let dataset: Option<DatasetSpec> = f.req(cx, "dataset");
        let fields: FieldMap = f.opt(cx, "fields").unwrap_or_default();
        let groups: Vec<String> = f.opt(cx, "groups").unwrap_or_default();
        let sample_size: Option<u64> = f.opt(cx, "sample_size");
        let seed = f.opt(cx, "seed").unwrap_or_else(default_seed);
        let fewshot: Option<FewShotSpec> = f.opt(cx, "fewshot");
        let prompt: Option<PromptSpec> = f.req(cx, "prompt");
        let generation = f.req(cx, "generation");
        let answer: AnswerSpec = f.opt(cx, "answer").unwrap_or_default();
        let context = f.opt(cx, "context").unwrap_or_default();
        f.finish(cx);
        let (dataset, prompt) = (dataset?, prompt?);
        if fields.choices.is_none() && fields.target.is_none() {
            cx.error(
                Diagnostic::new(node.pos, format!("{what}: no expected answer")).help(
                    "add `fields: {target: FIELD}` (or `fields: {choices: …, target: FIELD}` for multiple choice)",
                ),
            );
        }
        let implied = matches!(&fields.choices, Some(ChoicesSpec { from: ChoiceFrom::CorrectIncorrect { .. }, .. }));
        if implied && fields.target.is_some() {
            cx.error(
                Diagnostic::new(node.pos, format!("{what}: `fields.target` with `choices: {{correct, incorrect}}`"))
                    .help("the correct option is the target; remove `target`"),
            );
        } else if !implied && fields.choices.is_some() && fields.target.is_none() {
            cx.error(
                Diagnostic::new(node.pos, format!("{what}: multiple choice without `fields.target`"))
                    .help("name the field that holds the answer (a letter, an index or the option's text)"),
            );
        }
        if !groups.is_empty() && !dataset.source.per_group() && fields.group.is_none() {
            cx.error(
                Diagnostic::new(
                    node.pos,
                    format!("{what}: `groups` filters on a group, but `fields.group` is not set"),
                )
                .help("name the field that holds each item's group: `fields: {group: subject}`"),
            );
        }
        if dataset.source.per_group() && groups.is_empty() {
            cx.error(
                Diagnostic::new(node.pos, format!("{what}: the dataset source has `{{group}}` but `groups` is empty"))
                    .help("list the groups to load: `groups: [abstract_algebra, anatomy]`"),
            );
        }
        let shots = fewshot.as_ref().is_some_and(|s| s.k > 0);
        match prompt.api {
            ApiKind::Completion => {
                if prompt.template.is_none() {
                    cx.error(
                        Diagnostic::new(node.pos, format!("{what}: a completion prompt needs `prompt.template`"))
                            .help("write the prompt: `template: \"Q: {{question}}\\nA:\"`"),
                    );
                }
            }
            ApiKind::Chat => {
                if prompt.user.is_none() {
                    cx.error(Diagnostic::new(node.pos, format!("{what}: a chat prompt needs `prompt.user`")));
                }
                if shots && prompt.assistant.is_none() {
                    cx.error(
                        Diagnostic::new(node.pos, format!("{what}: chat shots need `prompt.assistant`"))
                            .help("the assistant turn of a shot, e.g. `assistant: \"{{target}}\"`"),
                    );
                }
            }
        }
        Some(EvalSpec {
            dataset,
            fields,
            groups,
            sample_size: sample_size.filter(|n| *n > 0),
            seed,
            fewshot,
            prompt,
            generation: generation?,
            answer,
            context,
            params: BTreeMap::new(),
        })
    }
}

impl Decode for Source {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        match &node.value {
            Value::Str(s) => match Source::parse(s) {
                Ok(src) => Some(src),
                Err(e) => {
                    cx.error(Diagnostic::new(node.pos, format!("{what}: {e}")));
                    None
                }
            },
            Value::Map(_) => {
                let mut f = Fields::open(node, cx, what)?;
                let hf: Option<HfSource> = f.req(cx, "hf");
                f.finish(cx);
                Some(Source::Hf { hf: hf? })
            }
            _ => {
                cx.mismatch(node, "a path, a URL, or `{hf: {dataset, config, split}}`", what);
                None
            }
        }
    }
}

impl Decode for HfSource {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let dataset = f.req(cx, "dataset");
        let config = non_empty(f.opt(cx, "config"));
        let split = non_empty(f.opt(cx, "split"));
        f.finish(cx);
        Some(HfSource { dataset: dataset?, config, split })
    }
}

impl Decode for DatasetSpec {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let source = f.req(cx, "source");
        let split = non_empty(f.opt(cx, "split"));
        let format = f.opt(cx, "format");
        let header = f.opt(cx, "header");
        let columns = f.opt(cx, "columns").unwrap_or_default();
        let records = non_empty(f.opt(cx, "records"));
        let sha_node = f.node("sha256");
        let sha256 = non_empty(f.opt(cx, "sha256")).map(|s| s.to_ascii_lowercase());
        f.finish(cx);
        if let (Some(s), Some(n)) = (&sha256, sha_node)
            && (s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            cx.error(Diagnostic::new(n.pos, format!("{what}: `sha256` must be 64 hexadecimal digits")));
        }
        Some(DatasetSpec { source: source?, split, format, header, columns, records, sha256 })
    }
}

impl Decode for FieldMap {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let m = FieldMap {
            id: non_empty(f.opt(cx, "id")),
            group: non_empty(f.opt(cx, "group")),
            choices: f.opt(cx, "choices"),
            target: f.opt(cx, "target"),
        };
        f.finish(cx);
        Some(m)
    }
}

impl Decode for ChoicesSpec {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let plain = |from| Some(ChoicesSpec { from, separator: None, shuffle: false });
        match &node.value {
            Value::Str(s) => return plain(ChoiceFrom::Field(s.clone())),
            Value::Seq(_) => return plain(ChoiceFrom::Fields(Vec::<String>::decode(node, cx, what)?)),
            _ => {}
        }
        let mut f = Fields::open(node, cx, what)?;
        let field: Option<String> = f.opt(cx, "field");
        let fields: Option<Vec<String>> = f.opt(cx, "fields");
        let correct: Option<String> = f.opt(cx, "correct");
        let incorrect: Option<String> = f.opt(cx, "incorrect");
        let separator = f.opt::<String>(cx, "separator").filter(|s| !s.is_empty());
        let shuffle = f.opt(cx, "shuffle").unwrap_or(false);
        f.finish(cx);
        let from = match (field, fields, correct, incorrect) {
            (Some(field), None, None, None) => ChoiceFrom::Field(field),
            (None, Some(fields), None, None) if !fields.is_empty() => ChoiceFrom::Fields(fields),
            (None, None, Some(correct), Some(incorrect)) => ChoiceFrom::CorrectIncorrect { correct, incorrect },
            _ => {
                cx.error(
                    Diagnostic::new(node.pos, format!("{what}: say where the options are"))
                        .help("write one of `field: F`, `fields: [A, B, C, D]`, or `correct: F` with `incorrect: G`"),
                );
                return None;
            }
        };
        Some(ChoicesSpec { from, separator, shuffle })
    }
}

impl Decode for TargetSpec {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        if let Value::Str(s) = &node.value {
            return Some(TargetSpec { field: s.clone(), format: TargetFormat::Auto, extract: Vec::new() });
        }
        let mut f = Fields::open(node, cx, what)?;
        let field = f.req(cx, "field");
        let format = f.opt(cx, "format").unwrap_or_default();
        let extract = f.opt::<Chain>(cx, "extract").map(|c| c.0).unwrap_or_default();
        f.finish(cx);
        Some(TargetSpec { field: field?, format, extract })
    }
}

/// One extractor or a list of them.
struct Chain(Vec<Extractor>);

impl Decode for Chain {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        match &node.value {
            Value::Seq(_) => {
                let v = Vec::<Extractor>::decode(node, cx, what)?;
                if v.is_empty() {
                    cx.error(Diagnostic::new(node.pos, format!("{what}: the list of extractors is empty")));
                    return None;
                }
                Some(Chain(v))
            }
            _ => Extractor::decode(node, cx, what).map(|e| Chain(vec![e])),
        }
    }
}

impl Decode for FewShotSpec {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let k = f.req(cx, "k");
        let split = non_empty(f.opt(cx, "split"));
        let source_node = f.node("source");
        let source = match source_node {
            Some(n) if matches!(&n.value, Value::Str(s) if s.trim().is_empty()) => None,
            _ => f.opt(cx, "source"),
        };
        let items: Vec<Node> = f.opt(cx, "items").unwrap_or_default();
        let select = f.opt(cx, "select").unwrap_or_default();
        let same_group = f.opt(cx, "same_group").unwrap_or(true);
        let seed = f.opt(cx, "seed");
        f.finish(cx);
        for item in &items {
            if !matches!(item.value, Value::Map(_)) {
                cx.mismatch(item, "a mapping of fields", &format!("a shot in `items` of {what}"));
            }
        }
        let given = [split.is_some(), source.is_some(), !items.is_empty()].iter().filter(|b| **b).count();
        if given > 1 {
            cx.error(
                Diagnostic::new(node.pos, format!("{what}: more than one of `split`, `source` and `items`"))
                    .help("shots come from one place: another split, another source, or inline items"),
            );
        }
        Some(FewShotSpec {
            k: k?,
            split,
            source,
            items: items.iter().map(Node::to_json).collect(),
            select,
            same_group,
            seed,
        })
    }
}

impl Decode for PromptSpec {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let api = f.opt(cx, "api").unwrap_or_default();
        let mut texts: [Option<String>; 4] = Default::default();
        for (slot, key) in texts.iter_mut().zip(ITEM_TEMPLATE_KEYS) {
            let Some(n) = f.node(key) else { continue };
            let Some(text) = String::decode(n, cx, &format!("`{key}` in {what}")) else { continue };
            if let Err(e) = handlebars::Template::compile(&text) {
                cx.error(
                    Diagnostic::new(n.pos, format!("`{key}` in {what}: template syntax: {}", e.reason()))
                        .help("handlebars: `{{field}}`, `{{#each shots}}…{{/each}}`, `{{letter @index}}`"),
                );
            }
            *slot = Some(text);
        }
        f.finish(cx);
        let [template, system, user, assistant] = texts;
        Some(PromptSpec { api, template, system, user, assistant })
    }
}

impl Decode for Generation {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let max_tokens: Option<u32> = f.req(cx, "max_tokens");
        let temperature = f.opt(cx, "temperature");
        let stop: Vec<String> = match f.node("stop") {
            Some(n) if matches!(n.value, Value::Str(_)) => String::decode(n, cx, what).into_iter().collect(),
            _ => f.opt(cx, "stop").unwrap_or_default(),
        };
        f.finish(cx);
        if max_tokens == Some(0) {
            cx.error(Diagnostic::new(node.pos, format!("{what}: `max_tokens` must be at least 1")));
        }
        Some(Generation {
            max_tokens: max_tokens?,
            temperature,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        })
    }
}

impl Decode for AnswerSpec {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let extract = f.opt::<Chain>(cx, "extract").map(|c| c.0).unwrap_or_default();
        let compare = f.opt(cx, "compare");
        f.finish(cx);
        Some(AnswerSpec { extract, compare })
    }
}

impl Decode for ContextSpec {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let window: Option<u32> = f.opt(cx, "window");
        f.finish(cx);
        Some(ContextSpec { window: window.filter(|w| *w > 0) })
    }
}
