//! The template kinds: `Engine`, `Benchmark` and `Reporter`.
//!
//! Engines, benchmarks and reporters are data. A template declares typed `params` (which become
//! part of the suite schema) and holds template trees (strings with `{{…}}`) that the compiler
//! renders per engine group or per cell. Trees stay raw `Node`s here, keeping their positions so
//! that a bad expression points into the template file.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use super::decode::{Cx, Decode, Dur, Fields, Spanned};
use super::diag::Diagnostic;
use super::secret::SecretOr;
use super::suite::PullPolicy;
use super::yaml::{Node, Value};
use crate::string_enum;

/// The type of a template param.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    /// A list of scalars (stop sequences, extra args); a list of lists sweeps it.
    List,
}
string_enum!(ParamType {
    "string" => ParamType::String,
    "integer" => ParamType::Integer,
    "number" => ParamType::Number,
    "boolean" => ParamType::Boolean,
    "list" => ParamType::List,
});

impl ParamType {
    pub fn name(self) -> &'static str {
        match self {
            ParamType::String => "a string",
            ParamType::Integer => "an integer",
            ParamType::Number => "a number",
            ParamType::Boolean => "a boolean",
            ParamType::List => "a list",
        }
    }

    /// Whether a single JSON value has this type (an integer is also a number).
    pub fn accepts(self, v: &serde_json::Value) -> bool {
        match self {
            ParamType::String => v.is_string(),
            ParamType::Integer => v.is_i64() || v.is_u64(),
            ParamType::Number => v.is_number(),
            ParamType::Boolean => v.is_boolean(),
            ParamType::List => v.as_array().is_some_and(|a| a.iter().all(|x| !x.is_array() && !x.is_object())),
        }
    }

    /// The JSON Schema of one value of this type.
    pub fn json_schema(self) -> serde_json::Value {
        match self {
            ParamType::String => serde_json::json!({"type": "string"}),
            ParamType::Integer => serde_json::json!({"type": "integer"}),
            ParamType::Number => serde_json::json!({"type": "number"}),
            ParamType::Boolean => serde_json::json!({"type": "boolean"}),
            ParamType::List => {
                serde_json::json!({"type": "array", "items": {"type": ["string", "number", "integer", "boolean"]}})
            }
        }
    }
}

/// One declared param of a template.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamDecl {
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// The value when neither the suite nor the benchmark sets one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub default: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Smallest accepted value (numbers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    /// Largest accepted value (numbers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
    /// The accepted values, when only some are.
    #[serde(rename = "enum", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vec<serde_json::Value>>")]
    pub choices: Option<Vec<serde_json::Value>>,
    /// The value is a secret (an API key, a password): a suite gives it as `{from_env: NAME}`,
    /// and plans, keys, journals and reports see `secret:<param>` instead (Engine templates only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

impl ParamDecl {
    /// A declaration of only a type (sampling keys, which have no template declaration).
    pub fn of_type(ty: ParamType) -> ParamDecl {
        ParamDecl { ty, default: None, description: None, minimum: None, maximum: None, choices: None, secret: false }
    }

    /// Checks one (non-sweep) value; returns the problem in words.
    pub fn check(&self, v: &serde_json::Value) -> Result<(), String> {
        if !self.ty.accepts(v) {
            return Err(format!("expected {}, found {}", self.ty.name(), json_type(v)));
        }
        if let Some(x) = v.as_f64() {
            if let Some(min) = self.minimum.filter(|m| x < *m) {
                return Err(format!("{x} is below the minimum {min}"));
            }
            if let Some(max) = self.maximum.filter(|m| x > *m) {
                return Err(format!("{x} is above the maximum {max}"));
            }
        }
        if let Some(choices) = &self.choices
            && !choices.contains(v)
        {
            let list: Vec<String> = choices.iter().map(|c| c.to_string()).collect();
            return Err(format!("{v} is not one of {}", list.join(", ")));
        }
        Ok(())
    }

    /// The JSON Schema of a suite value for this param: a value, or a list of values to sweep.
    pub fn suite_schema(&self) -> serde_json::Value {
        if self.secret {
            let mut s = serde_json::json!({
                "type": "object",
                "properties": {"from_env": {"type": "string"}, "prefix": {"type": "string"}},
                "required": ["from_env"],
                "additionalProperties": false,
            });
            if let Some(d) = &self.description {
                s["description"] = format!("{d} (a secret: `{{from_env: NAME}}`)").into();
            }
            return s;
        }
        let mut one = self.ty.json_schema();
        if let Some(c) = &self.choices {
            one["enum"] = serde_json::Value::Array(c.clone());
        }
        if let Some(m) = self.minimum {
            one["minimum"] = m.into();
        }
        if let Some(m) = self.maximum {
            one["maximum"] = m.into();
        }
        let mut s = serde_json::json!({"anyOf": [one.clone(), {"type": "array", "items": one, "minItems": 1}]});
        if let Some(d) = &self.description {
            s["description"] = d.clone().into();
        }
        s
    }
}

/// "a string", "an integer"… for a JSON value.
pub fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(n) if n.is_f64() => "a number",
        serde_json::Value::Number(_) => "an integer",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

impl Decode for ParamDecl {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let ty: Option<ParamType> = f.req(cx, "type");
        let default: Option<Node> = f.opt(cx, "default");
        let d = ParamDecl {
            ty: ty?,
            default: default.as_ref().map(Node::to_json),
            description: f.opt(cx, "description"),
            minimum: f.opt(cx, "minimum"),
            maximum: f.opt(cx, "maximum"),
            choices: f.opt::<Vec<Node>>(cx, "enum").map(|v| v.iter().map(Node::to_json).collect()),
            secret: f.opt(cx, "secret").unwrap_or(false),
        };
        let secret_pos = f.key_pos("secret");
        f.finish(cx);
        if d.secret
            && let Some(pos) = secret_pos
        {
            if d.ty != ParamType::String {
                cx.error(
                    Diagnostic::new(pos, format!("{what} is secret but not a string"))
                        .help("a secret param is `type: string` (its value comes from the environment)"),
                );
            }
            if let Some(node) = &default {
                cx.error(Diagnostic::new(node.pos, format!("{what} is secret and has a default")).help(
                    "remove the default: a secret is never written in a file; suites give it as `{from_env: NAME}`",
                ));
            }
        }
        if let (Some(node), Some(value)) = (&default, &d.default)
            && let Err(problem) = d.check(value)
        {
            cx.error(
                Diagnostic::new(node.pos, format!("default of {what}: {problem}"))
                    .help(format!("write {} as the default", d.ty.name())),
            );
        }
        Some(d)
    }
}

/// `metadata` of every manifest.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The manifest's name: a suite's identity, or the name a template is referred to by.
    pub name: Spanned<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, Spanned<String>>,
}

impl Decode for Metadata {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "`metadata`")?;
        let name: Option<Spanned<String>> = f.req(cx, "name");
        let description = f.opt(cx, "description");
        let labels = f.opt(cx, "labels").unwrap_or_default();
        f.finish(cx);
        let name = name?;
        if name.value.is_empty() || !name.value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            cx.error(
                Diagnostic::new(name.pos, format!("invalid name `{}`", name.value))
                    .help("use letters, digits, `-`, `_` and `.` only"),
            );
        }
        Some(Metadata { name, description, labels })
    }
}

// ---------------------------------------------------------------- Engine

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// Another Engine template this one extends (its keys are the defaults).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<Spanned<String>>,
    /// Container image reference (container mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullPolicy>,
    /// The engine's usual port (documentation; kitt allocates a free port per start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_port: Option<u16>,
    /// Typed params with defaults; available as `params.*`.
    #[serde(default)]
    pub params: BTreeMap<String, Spanned<ParamDecl>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeSpec>,
    pub health: HealthSpec,
    /// Where the server reports its version (an observed fact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<Probe>,
    /// Requests sent once after start (e.g. pulling a model into Ollama).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setup: Vec<HttpCall>,
    /// Restart the engine before retrying a failed step.
    #[serde(default)]
    pub restart_on_retry: bool,
    /// The engine's tokenizer endpoint, for exact prompt lengths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenize: Option<Tokenize>,
    /// The engine's Prometheus endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSpec>,
    /// A template for servers kitt never starts (a hosted API, a gateway): no `container` or
    /// `native`, and every instance must say `endpoint:`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub endpoint_only: bool,
    /// Synthetic prompts must have exact token lengths: with no `tokenize` call here, a model
    /// benchmarked on this template must name its local `tokenizer:`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_tokenizer: bool,
    /// Request headers that carry secrets for this API even where their names do not look secret
    /// (`X-Tenant-Signature`): an endpoint's value for one must be `{from_env: NAME}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_headers: Vec<String>,
    pub api: ApiSpec,
}

impl EngineSpec {
    /// The modes a suite may run this engine in: its container and native sections, and always
    /// an endpoint (a server kitt does not start).
    pub fn modes(&self) -> Vec<&'static str> {
        [self.container.as_ref().map(|_| "container"), self.native.as_ref().map(|_| "native"), Some("endpoint")]
            .into_iter()
            .flatten()
            .collect()
    }
}

impl Decode for EngineSpec {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let base = f.opt(cx, "base");
        let image = f.opt(cx, "image");
        let pull = f.opt(cx, "pull");
        let default_port = f.opt(cx, "default_port");
        let params = f.opt(cx, "params").unwrap_or_default();
        let container = f.opt(cx, "container");
        let native = f.opt(cx, "native");
        let health = f.req(cx, "health");
        let version = f.opt(cx, "version");
        let setup = f.opt(cx, "setup").unwrap_or_default();
        let restart_on_retry = f.opt(cx, "restart_on_retry").unwrap_or(false);
        let tokenize = f.opt(cx, "tokenize");
        let metrics = f.opt(cx, "metrics");
        let endpoint_only = f.opt(cx, "endpoint_only").unwrap_or(false);
        let needs_tokenizer = f.opt(cx, "needs_tokenizer").unwrap_or(false);
        let secret_headers = f.opt(cx, "secret_headers").unwrap_or_default();
        let api = f.req(cx, "api");
        if endpoint_only && (container.is_some() || native.is_some()) {
            let pos = f.key_pos("endpoint_only").unwrap_or(node.pos);
            cx.error(
                Diagnostic::new(pos, format!("{what} is `endpoint_only` but says how to start an engine")).help(
                    "remove `endpoint_only: true` to let kitt start it, or remove the `container`/`native` section",
                ),
            );
        }
        if container.is_none() && native.is_none() && !endpoint_only {
            cx.error(Diagnostic::new(node.pos, format!("{what} has neither `container` nor `native`")).help(
                "say how to start the engine: a `container:` section (with `image:`), a `native:` command, or both; \
                 or `endpoint_only: true` for a server kitt never starts",
            ));
        }
        let (container, image): (Option<ContainerSpec>, Option<String>) = (container, image);
        if let (Some(_), None) = (&container, &image)
            && let Some(pos) = f.key_pos("container")
        {
            cx.error(
                Diagnostic::new(pos, format!("{what} has a `container` section but no `image`"))
                    .help("add `image: REPOSITORY:TAG`"),
            );
        }
        f.finish(cx);
        Some(EngineSpec {
            base,
            image,
            pull,
            default_port,
            params,
            container,
            native,
            health: health?,
            version,
            setup,
            restart_on_retry,
            tokenize,
            metrics,
            endpoint_only,
            needs_tokenizer,
            secret_headers,
            api: api?,
        })
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Arguments after the image (templates; `{when, args}` items are optional groups).
    #[serde(default)]
    pub args: Vec<Arg>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Spanned<SecretOr>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// auto | all | none | device=0,1
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<String>,
    /// Extra `docker run` options (before the image).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<Spanned<String>>,
    /// host (default) or bridge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::manifest::suite::Network>,
    /// Params this mode does not send, each with the reason; an instance that sets one in this
    /// mode is an error.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unused_params: BTreeMap<String, Spanned<String>>,
}

impl Decode for ContainerSpec {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "`container`")?;
        let c = ContainerSpec {
            args: f.opt(cx, "args").unwrap_or_default(),
            env: f.opt(cx, "env").unwrap_or_default(),
            mounts: f.opt(cx, "mounts").unwrap_or_default(),
            gpus: f.opt(cx, "gpus"),
            shm_size: f.opt(cx, "shm_size"),
            extra_args: f.opt(cx, "extra_args").unwrap_or_default(),
            network: f.opt(cx, "network"),
            unused_params: f.opt(cx, "unused_params").unwrap_or_default(),
        };
        f.finish(cx);
        Some(c)
    }
}

/// One item of an argv (container args, native command).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Arg {
    /// One argument (a template string).
    Text(Spanned<String>),
    /// Arguments sent only when `when` is set: rendered, it is not null, false, 0, "" or [].
    /// This is how a param whose value means "the engine's own default" (llama.cpp's
    /// `threads: 0`) stays off the command line: `{when: "{{params.threads}}", args: [-t,
    /// "{{params.threads}}"]}`.
    When(ArgGroup),
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArgGroup {
    /// A template whose value decides whether `args` are sent.
    pub when: Spanned<String>,
    pub args: Vec<Spanned<String>>,
}

impl Arg {
    /// Every template string of the item (the condition first).
    pub fn texts(&self) -> Vec<&Spanned<String>> {
        match self {
            Arg::Text(s) => vec![s],
            Arg::When(g) => std::iter::once(&g.when).chain(&g.args).collect(),
        }
    }
}

impl Decode for Arg {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        match &node.value {
            Value::Map(_) => {
                let mut f = Fields::open(node, cx, "an optional argument group")?;
                let when = f.req(cx, "when");
                let args = f.req(cx, "args");
                f.finish(cx);
                Some(Arg::When(ArgGroup { when: when?, args: args? }))
            }
            _ => Spanned::<String>::decode(node, cx, what).map(Arg::Text),
        }
    }
}

/// Whether a rendered `when` condition holds: not null, false, 0, "" or an empty list.
pub fn truthy(v: Option<&serde_json::Value>) -> bool {
    use serde_json::Value as J;
    match v {
        None | Some(J::Null) | Some(J::Bool(false)) => false,
        Some(J::Number(n)) => n.as_f64() != Some(0.0),
        Some(J::String(s)) => !s.is_empty(),
        Some(J::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub source: Spanned<String>,
    pub target: Spanned<String>,
    #[serde(default = "yes")]
    pub readonly: bool,
}

fn yes() -> bool {
    true
}

impl Decode for Mount {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "a mount")?;
        let source = f.req(cx, "source");
        let target = f.req(cx, "target");
        let readonly = f.opt(cx, "readonly").unwrap_or(true);
        f.finish(cx);
        Some(Mount { source: source?, target: target?, readonly })
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NativeSpec {
    /// argv of the host process (templates; `{when, args}` items are optional groups); never run
    /// through a shell.
    pub command: Vec<Arg>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Spanned<SecretOr>>,
    /// Params this mode does not send, each with the reason; an instance that sets one in this
    /// mode is an error.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unused_params: BTreeMap<String, Spanned<String>>,
}

impl Decode for NativeSpec {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "`native`")?;
        let command = f.req(cx, "command");
        let env = f.opt(cx, "env").unwrap_or_default();
        let unused_params = f.opt(cx, "unused_params").unwrap_or_default();
        f.finish(cx);
        Some(NativeSpec { command: command?, env, unused_params })
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    pub path: String,
    /// Give up after this long (default 300s).
    #[serde(default = "Dur::default")]
    #[schemars(with = "Dur")]
    pub timeout: Dur,
    /// First wait between polls (default 100ms); it doubles up to `max_interval`.
    #[serde(default = "Dur::default")]
    #[schemars(with = "Dur")]
    pub initial_interval: Dur,
    /// Longest wait between polls (default 10s).
    #[serde(default = "Dur::default")]
    #[schemars(with = "Dur")]
    pub max_interval: Dur,
}

impl Decode for HealthSpec {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        use std::time::Duration;
        let mut f = Fields::open(node, cx, "`health`")?;
        let path = f.req(cx, "path");
        let h = HealthSpec {
            path: path?,
            timeout: f.opt(cx, "timeout").unwrap_or(Dur(Duration::from_secs(300))),
            initial_interval: f.opt(cx, "initial_interval").unwrap_or(Dur(Duration::from_millis(100))),
            max_interval: f.opt(cx, "max_interval").unwrap_or(Dur(Duration::from_secs(10))),
        };
        f.finish(cx);
        Some(h)
    }
}

/// A GET whose JSON answer holds a value at a JSON pointer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub path: String,
    /// JSON pointer into the answer, e.g. `/version`.
    pub pointer: String,
}

impl Decode for Probe {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let path = f.req(cx, "path");
        let pointer = f.req(cx, "pointer");
        f.finish(cx);
        Some(Probe { path: path?, pointer: pointer? })
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tokenize {
    pub path: String,
    /// Request body (template; `{{prompt}}` is the text).
    #[schemars(with = "serde_json::Value")]
    pub body: Node,
    /// JSON pointer to the token list in the answer.
    pub tokens: String,
}

impl Decode for Tokenize {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "`tokenize`")?;
        let path = f.req(cx, "path");
        let body = f.req(cx, "body");
        let tokens = f.req(cx, "tokens");
        f.finish(cx);
        Some(Tokenize { path: path?, body: body?, tokens: tokens? })
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    pub path: String,
}

impl Decode for MetricsSpec {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "`metrics`")?;
        let path = f.req(cx, "path");
        f.finish(cx);
        Some(MetricsSpec { path: path? })
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCall {
    #[serde(default = "post")]
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub body: Option<Node>,
}

fn post() -> String {
    "POST".into()
}

impl Decode for HttpCall {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "a setup request")?;
        let method = f.opt(cx, "method").unwrap_or_else(post);
        let path = f.req(cx, "path");
        let body = f.opt(cx, "body");
        f.finish(cx);
        Some(HttpCall { method, path: path?, body })
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiSpec {
    /// Text completion: a `prompt` in, text out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion: Option<ApiCall>,
    /// Chat completion: `messages` in, text out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<ApiCall>,
}

impl Decode for ApiSpec {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "`api`")?;
        let completion = f.opt(cx, "completion");
        let chat = f.opt(cx, "chat");
        let declared = f.key_pos("completion").is_some() || f.key_pos("chat").is_some();
        f.finish(cx);
        if !declared {
            cx.error(Diagnostic::new(node.pos, "`api` declares no call").help("add `completion:` or `chat:`"));
        }
        Some(ApiSpec { completion, chat })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamFormat {
    /// text/event-stream, `data:` lines.
    Sse,
    /// One JSON object per line.
    Ndjson,
    /// One JSON answer.
    None,
}
string_enum!(StreamFormat { "sse" => StreamFormat::Sse, "ndjson" => StreamFormat::Ndjson, "none" => StreamFormat::None });

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiCall {
    #[serde(default = "post")]
    pub method: String,
    pub path: String,
    /// The request body: a typed tree whose string leaves are templates.
    #[schemars(with = "serde_json::Value")]
    pub body: Node,
    pub stream: StreamFormat,
    /// JSON pointer to the generated text in each chunk (or the answer).
    pub text: String,
    /// JSON pointer to reasoning text, which is not content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// The data line that ends the stream (e.g. `[DONE]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<String>,
    /// JSON pointer to a field that is true on the last chunk (NDJSON APIs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsagePointers>,
    /// JSON pointer to the server's own prompt-processing time in milliseconds (llama.cpp:
    /// `/timings/prompt_ms`), to compare with the client's TTFT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_prompt_ms: Option<String>,
}

impl Decode for ApiCall {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let method = f.opt(cx, "method").unwrap_or_else(post);
        let path = f.req(cx, "path");
        let body: Option<Node> = f.req(cx, "body");
        let stream = f.req(cx, "stream");
        let text = f.req(cx, "text");
        let reasoning = f.opt(cx, "reasoning");
        let done = f.opt(cx, "done");
        let done_field = f.opt(cx, "done_field");
        let usage = f.opt(cx, "usage");
        let server_prompt_ms = f.opt(cx, "server_prompt_ms");
        f.finish(cx);
        if let Some(b) = &body
            && !matches!(b.value, Value::Map(_))
        {
            cx.mismatch(b, "a mapping", "`body`");
        }
        Some(ApiCall {
            method,
            path: path?,
            body: body?,
            stream: stream?,
            text: text?,
            reasoning,
            done,
            done_field,
            usage,
            server_prompt_ms,
        })
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsagePointers {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<String>,
    pub completion_tokens: String,
}

impl Decode for UsagePointers {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "`usage`")?;
        let prompt_tokens = f.opt(cx, "prompt_tokens");
        let c = f.req(cx, "completion_tokens");
        f.finish(cx);
        Some(UsagePointers { prompt_tokens, completion_tokens: c? })
    }
}

// ---------------------------------------------------------------- Benchmark

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// Performance: a streaming load generator.
    Load,
    /// Quality: dataset → prompts → answers → score.
    Eval,
}
string_enum!(Mechanism { "load" => Mechanism::Load, "eval" => Mechanism::Eval });

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<Spanned<String>>,
    pub mechanism: Mechanism,
    #[serde(default)]
    pub params: BTreeMap<String, Spanned<ParamDecl>>,
    /// The load description (a template tree, rendered per cell).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::manifest::load::LoadSpec>")]
    pub load: Option<Node>,
    /// The eval description (a template tree).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub eval: Option<Node>,
}

impl Decode for BenchmarkSpec {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let base = f.opt(cx, "base");
        let mechanism: Option<Mechanism> = f.req(cx, "mechanism");
        let params: BTreeMap<String, Spanned<ParamDecl>> = f.opt(cx, "params").unwrap_or_default();
        let load: Option<Node> = f.opt(cx, "load");
        let eval = f.opt(cx, "eval");
        f.finish(cx);
        if mechanism == Some(Mechanism::Load) && load.is_none() {
            cx.error(
                Diagnostic::new(node.pos, format!("{what}: a `load` benchmark needs a `load:` section"))
                    .help("describe the load: `load: {profile: synchronous, requests: 10, prompt: {synthetic: {input_tokens: 128}}}`"),
            );
        }
        for (name, p) in &params {
            if crate::manifest::suite::SAMPLING_KEYS.iter().any(|(k, _)| k == name) {
                continue;
            }
            if ["requests", "duration"].contains(&name.as_str()) && p.value.ty == ParamType::List {
                cx.error(Diagnostic::new(p.pos, format!("param `{name}` cannot be a list")));
            }
        }
        for (name, p) in params.iter().filter(|(_, p)| p.value.secret) {
            cx.error(
                Diagnostic::new(p.pos, format!("param `{name}` of {what} is secret, but benchmark params never reach the engine"))
                    .help("declare the secret on the Engine template, whose params reach the engine's command, environment and requests"),
            );
        }
        Some(BenchmarkSpec { base, mechanism: mechanism?, params, load, eval })
    }
}

// ---------------------------------------------------------------- Reporter

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    /// The versioned result model as JSON (a serializer, not a template).
    Json,
    /// One row per cell (a serializer, not a template).
    Csv,
    /// A handlebars template over the result model.
    Template,
    /// A handlebars template over the result model that writes HTML: values are HTML-escaped and
    /// the plot helpers draw inline SVG.
    Html,
}
string_enum!(ReportFormat {
    "json" => ReportFormat::Json,
    "csv" => ReportFormat::Csv,
    "template" => ReportFormat::Template,
    "html" => ReportFormat::Html,
});

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReporterSpec {
    pub format: ReportFormat,
    /// The template file (format: template), relative to the reporter file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<Spanned<String>>,
    /// The file written under the run's report/ directory (a relative path that stays inside it).
    pub output: Spanned<String>,
}

/// Why a reporter's `output` would leave the run's report directory, if it would.
fn output_outside(output: &str) -> Option<&'static str> {
    use std::path::Component;
    let path = std::path::Path::new(output);
    if output.trim().is_empty() {
        return Some("is empty");
    }
    if path.is_absolute() {
        return Some("is an absolute path");
    }
    path.components().any(|c| c == Component::ParentDir).then_some("leaves the run's report/ directory (`..`)")
}

impl Decode for ReporterSpec {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let format: Option<ReportFormat> = f.req(cx, "format");
        let template: Option<Spanned<String>> = f.opt(cx, "template");
        let output: Option<Spanned<String>> = f.req(cx, "output");
        f.finish(cx);
        if let Some(o) = &output
            && let Some(why) = output_outside(&o.value)
        {
            cx.error(
                Diagnostic::new(o.pos, format!("{what}: `output: {}` {why}", o.value))
                    .help("name a file inside the run's report/ directory, e.g. `output: report.md` or `output: tables/cells.csv`"),
            );
        }
        if let Some(kind @ (ReportFormat::Template | ReportFormat::Html)) = format
            && template.is_none()
        {
            let name = if kind == ReportFormat::Html { "html" } else { "template" };
            cx.error(
                Diagnostic::new(node.pos, format!("{what}: `format: {name}` needs `template:`"))
                    .help("name the handlebars file, e.g. `template: markdown.md.hbs`"),
            );
        }
        Some(ReporterSpec { format: format?, template, output: output? })
    }
}
