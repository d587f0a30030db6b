//! Decoding and cell-time rendering of `eval:` trees.

use serde_json::json;

use super::*;
use crate::manifest::yaml::parse;

fn ctx() -> Json {
    json!({
        "params": {"k": 3, "n": 0, "src": "data/{split}.csv", "subjects": ["a", "b"], "sha": ""},
        "sampling": {},
        "model": {"name": "m", "served_name": "m"},
        "engine": {"name": "e", "template": "sim"},
        "run": {"index": 0},
    })
}

const TREE: &str = r#"
dataset: {source: "{{params.src}}", split: test, columns: [q, "choices[]", "choices[]", answer], sha256: "{{params.sha}}"}
fields: {group: subject, choices: choices, target: answer}
groups: "{{params.subjects}}"
sample_size: "{{params.n}}"
fewshot: {k: "{{params.k}}", split: dev, items: []}
prompt:
  template: "{{#each shots}}{{q}} {{target}}\n{{/each}}{{q}} ({{params.k}} shots)"
generation: {max_tokens: 2, temperature: "{{sampling.temperature}}"}
"#;

#[test]
fn params_render_typed_and_item_templates_stay_as_written() {
    let spec = compile(&parse(TREE).unwrap(), &ctx()).unwrap();
    assert_eq!(spec.dataset.source, Source::Local("data/{split}.csv".into()));
    assert_eq!(spec.dataset.sha256, None, "an empty sha256 param means none");
    assert_eq!(spec.groups, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(spec.sample_size, None, "0 means all");
    assert_eq!(spec.fewshot.as_ref().unwrap().k, 3);
    assert_eq!(
        spec.prompt.template.as_deref(),
        Some("{{#each shots}}{{q}} {{target}}\n{{/each}}{{q}} ({{params.k}} shots)")
    );
    // An unset sampling value is left out, not sent as null.
    assert_eq!(spec.generation.temperature, None);
    assert_eq!(spec.params["k"], json!(3));
    assert_eq!(spec.compare(), Compare::Letter);
    assert_eq!(spec.extractors(), vec![Extractor::FirstLetter]);
}

#[test]
fn errors_point_into_the_template() {
    let tree = "dataset: {source: \"{{params.nope}}\"}\nfields: {target: a}\nprompt: {template: x}\ngeneration: {max_tokens: 1}\n";
    let errs = compile(&parse(tree).unwrap(), &ctx()).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!((errs[0].pos.line, errs[0].pos.col), (1, 19));
    assert!(errs[0].message.contains("params.nope"), "{}", errs[0].message);

    let tree = "dataset: {source: x.csv, sha256: abc}\nfields: {target: a, choises: b}\nprompt: {template: \"{{#each x}}\"}\ngeneration: {max_tokens: 0}\nanswer: {extract: [first_letter, {regex: \"(\"}]}\n";
    let errs = compile(&parse(tree).unwrap(), &ctx()).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(|d| format!("{}: {}", d.pos, d.message)).collect();
    let expect = [
        "1:34: `dataset` in `eval`: `sha256` must be 64 hexadecimal digits",
        "2:21: unknown key `choises` in `fields` in `eval`",
        "3:20: `template` in `prompt` in `eval`: template syntax",
        "`max_tokens` must be at least 1",
        "5:42: `extract` in `answer` in `eval`: invalid regular expression",
    ];
    for e in expect {
        assert!(msgs.iter().any(|m| m.contains(e)), "missing `{e}` in {msgs:#?}");
    }
    assert!(errs.iter().any(|d| d.help.as_deref().is_some_and(|h| h.contains("choices"))), "{errs:#?}");
}

#[test]
fn the_spec_must_say_what_the_answer_is() {
    let tree = "dataset: {source: \"x/{group}.csv\"}\nfields: {choices: [A, B]}\nprompt: {api: chat, user: \"{{q}}\"}\nfewshot: {k: 1, split: dev, source: y.csv}\ngeneration: {max_tokens: 1}\n";
    let errs = from_node(&parse(tree).unwrap()).unwrap_err();
    let all: String = errs.iter().map(|d| d.message.clone()).collect::<Vec<_>>().join("\n");
    assert!(all.contains("multiple choice without `fields.target`"), "{all}");
    assert!(all.contains("`{group}` but `groups` is empty"), "{all}");
    assert!(all.contains("chat shots need `prompt.assistant`"), "{all}");
    assert!(all.contains("more than one of `split`, `source` and `items`"), "{all}");
    let tree = "dataset: {source: x.csv}\nfields: {target: a}\ngroups: [g]\nprompt: {template: x}\ngeneration: {max_tokens: 1}\n";
    let errs = from_node(&parse(tree).unwrap()).unwrap_err();
    assert!(errs[0].message.contains("`fields.group` is not set"), "{errs:?}");
}

#[test]
fn sources_parse() {
    assert_eq!(
        Source::parse("hf://cais/mmlu?config=all&split=test").unwrap(),
        Source::Hf {
            hf: HfSource { dataset: "cais/mmlu".into(), config: Some("all".into()), split: Some("test".into()) }
        }
    );
    assert_eq!(Source::parse("https://x.org/a.csv").unwrap(), Source::Url("https://x.org/a.csv".into()));
    assert_eq!(Source::parse("./a.csv").unwrap(), Source::Local("./a.csv".into()));
    assert!(Source::parse("ftp://x/a.csv").unwrap_err().contains("unknown scheme"));
    assert!(Source::parse("hf://x?revision=1").unwrap_err().contains("only `config=` and `split=`"));
}

#[test]
fn the_spec_serializes_as_it_is_written() {
    let spec = compile(&parse(TREE).unwrap(), &ctx()).unwrap();
    let mut v = serde_json::to_value(&spec).unwrap();
    assert_eq!(v["fields"]["choices"], json!({"field": "choices", "shuffle": false}));
    // `params` are set by `compile` from the cell, never written in a template.
    assert_eq!(v.as_object_mut().unwrap().remove("params").unwrap()["k"], json!(3));
    // Decoding the serialized form gives the same spec (the plan can carry it as JSON).
    let again = from_node(&Node::from_json(&v, crate::manifest::diag::Pos::START)).unwrap();
    assert_eq!(EvalSpec { params: spec.params.clone(), ..again }, spec);
}
