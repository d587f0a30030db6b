//! Item templates → prompts: a completion text or chat messages, with the item's shots.
//!
//! Handlebars in strict mode (a variable the item lacks is an error naming the item, never an
//! empty string), without HTML escaping. Helpers: `letter N` (0 → `A`), `replace S FROM TO`,
//! `trim S`. Rendering is pure: the same item and shots give the same prompt, which is what
//! lets a resumed eval check its checkpoint against the prompts.

use handlebars::{Handlebars, handlebars_helper};
use serde::Serialize;
use serde_json::{Map, Value as Json};

use super::error::EvalError;
use super::items::Item;
use super::spec::EvalSpec;
use crate::manifest::load::ApiKind;

/// What is sent: a completion prompt or chat messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Messages(Vec<Message>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Prompt {
    /// kitt's token estimate when no tokenizer is at hand: one token per 3 characters (English
    /// text averages about 4 per token, so this over-counts and errs towards dropping a shot),
    /// plus 4 tokens per chat message for the chat template's markers.
    pub fn estimate_tokens(&self) -> u32 {
        let chars = |s: &str| s.chars().count() as u64;
        let n = match self {
            Prompt::Text(t) => chars(t).div_ceil(3),
            Prompt::Messages(m) => m.iter().map(|m| chars(&m.content).div_ceil(3) + 4).sum(),
        };
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The text of a completion prompt, or the messages joined (for logs and estimates).
    pub fn text(&self) -> String {
        match self {
            Prompt::Text(t) => t.clone(),
            Prompt::Messages(m) => {
                m.iter().map(|m| format!("{}: {}", m.role, m.content)).collect::<Vec<_>>().join("\n")
            }
        }
    }
}

handlebars_helper!(letter_helper: |i: u64| super::extract::letter(i as usize));
handlebars_helper!(replace_helper: |s: str, from: str, to: str| s.replace(from, to));
handlebars_helper!(trim_helper: |s: str| s.trim().to_string());

/// The compiled item templates of one eval.
pub(crate) struct Builder {
    hb: Handlebars<'static>,
    api: ApiKind,
    params: Json,
    has_system: bool,
}

impl Builder {
    pub fn new(spec: &EvalSpec) -> Result<Builder, EvalError> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        hb.register_helper("letter", Box::new(letter_helper));
        hb.register_helper("replace", Box::new(replace_helper));
        hb.register_helper("trim", Box::new(trim_helper));
        let p = &spec.prompt;
        for (name, text) in
            [("template", &p.template), ("system", &p.system), ("user", &p.user), ("assistant", &p.assistant)]
        {
            if let Some(t) = text {
                hb.register_template_string(name, t)
                    .map_err(|e| EvalError::Spec(format!("`prompt.{name}`: template syntax: {}", e.reason())))?;
            }
        }
        Ok(Builder {
            hb,
            api: p.api,
            params: serde_json::to_value(&spec.params).unwrap_or(Json::Null),
            has_system: p.system.is_some(),
        })
    }

    /// What templates see for one item (or shot): its fields, then `id`, `group`, `choices`,
    /// `target`, `target_text` and `params` over any fields of the same names.
    pub fn context(&self, item: &Item) -> Map<String, Json> {
        let mut ctx = item.fields.clone();
        ctx.insert("id".into(), item.id.clone().into());
        ctx.insert("group".into(), item.group.clone().map_or(Json::Null, Json::String));
        if !item.choices.is_empty() {
            ctx.insert("choices".into(), item.choices.clone().into());
            ctx.insert("target_text".into(), item.target_text().unwrap_or_default().into());
        }
        ctx.insert("target".into(), item.target.clone().into());
        ctx.insert("params".into(), self.params.clone());
        ctx
    }

    /// The prompt of an item (its context from [`Builder::context`]) with these shots.
    pub fn build(&self, item: &Map<String, Json>, shots: &[&Map<String, Json>]) -> Result<Prompt, String> {
        let mut root = item.clone();
        root.insert("shots".into(), Json::Array(shots.iter().map(|s| Json::Object((*s).clone())).collect()));
        let root = Json::Object(root);
        let render = |name: &str, ctx: &Json| {
            self.hb.render(name, ctx).map_err(|e| format!("`prompt.{name}`: {}", render_reason(&e)))
        };
        match self.api {
            ApiKind::Completion => Ok(Prompt::Text(render("template", &root)?)),
            ApiKind::Chat => {
                let mut messages = Vec::with_capacity(2 * shots.len() + 2);
                let msg = |role: &str, content: String| Message { role: role.into(), content };
                if self.has_system {
                    messages.push(msg("system", render("system", &root)?));
                }
                for shot in shots {
                    let ctx = Json::Object((*shot).clone());
                    messages.push(msg("user", render("user", &ctx)?));
                    messages.push(msg("assistant", render("assistant", &ctx)?));
                }
                messages.push(msg("user", render("user", &root)?));
                Ok(Prompt::Messages(messages))
            }
        }
    }
}

fn render_reason(e: &handlebars::RenderError) -> String {
    match e.reason() {
        handlebars::RenderErrorReason::MissingVariable(Some(v)) => {
            format!(
                "the item has no `{v}` (template variables are the row's fields, `choices`, `target`, `group`, `shots`, `params`)"
            )
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::dataset::parse::Origin;

    fn spec(template: &str) -> EvalSpec {
        let yaml = format!(
            "dataset: {{source: x.csv}}\nfields: {{choices: [A, B], target: answer}}\nprompt:\n  template: {}\ngeneration: {{max_tokens: 1}}\n",
            serde_json::to_string(template).unwrap()
        );
        let node = crate::manifest::yaml::parse(&yaml).unwrap();
        crate::eval::from_node(&node).unwrap()
    }

    fn item(q: &str, choices: &[&str], target: &str) -> Item {
        let mut fields = Map::new();
        fields.insert("question".into(), q.into());
        fields.insert("subject".into(), "high_school_physics".into());
        Item {
            id: q.into(),
            group: Some("high_school_physics".into()),
            fields,
            choices: choices.iter().map(|s| s.to_string()).collect(),
            target: target.into(),
            origin: Origin { source: "x".into(), number: 1, line: true },
        }
    }

    #[test]
    fn completion_prompt_with_shots_letters_and_helpers() {
        let b = Builder::new(&spec(
            "About {{replace group \"_\" \" \"}}.\n\n{{#each shots}}{{question}}\n{{#each choices}}{{letter @index}}. {{this}}\n{{/each}}Answer: {{target}}\n\n{{/each}}{{question}}\n{{#each choices}}{{letter @index}}. {{this}}\n{{/each}}Answer:",
        ))
        .unwrap();
        let shot = b.context(&item("1+1?", &["2", "3"], "A"));
        let it = b.context(&item("2+2?", &["5", "4"], "B"));
        let p = b.build(&it, &[&shot]).unwrap();
        assert_eq!(
            p,
            Prompt::Text(
                "About high school physics.\n\n1+1?\nA. 2\nB. 3\nAnswer: A\n\n2+2?\nA. 5\nB. 4\nAnswer:".into()
            )
        );
        let none = b.build(&it, &[]).unwrap();
        assert_eq!(none.text(), "About high school physics.\n\n2+2?\nA. 5\nB. 4\nAnswer:");
    }

    #[test]
    fn a_missing_variable_is_an_error_not_an_empty_string() {
        let b = Builder::new(&spec("{{question}} {{nope}}")).unwrap();
        let e = b.build(&b.context(&item("q", &["a", "b"], "A")), &[]).unwrap_err();
        assert!(e.contains("no `nope`"), "{e}");
    }

    #[test]
    fn the_estimate_over_counts_english() {
        assert_eq!(Prompt::Text("abcdefg".into()).estimate_tokens(), 3);
        let m = Prompt::Messages(vec![Message { role: "user".into(), content: "abc".into() }]);
        assert_eq!(m.estimate_tokens(), 5);
    }
}
