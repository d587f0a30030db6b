//! The `load` section of a Benchmark template, decoded after rendering for one cell.
//!
//! Profiles are a closed set of mechanisms; their numbers come from params, so a sweep over
//! `concurrency: [1, 4, 16]` is three renderings of one template.

use schemars::JsonSchema;
use serde::Serialize;

use super::decode::{Cx, Decode, Dur, Fields};
use super::diag::Diagnostic;
use super::yaml::{Node, Value};
use crate::string_enum;

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    /// Which engine call the requests use.
    #[serde(default)]
    pub api: ApiKind,
    pub profile: Profile,
    /// Stop after this many measured requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests: Option<u64>,
    /// Stop after this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<Dur>,
    pub prompt: PromptSpec,
    /// Ask the engine not to stop at end-of-sequence, so every request generates `max_tokens`.
    #[serde(default = "yes")]
    pub ignore_eos: bool,
    /// Open-loop profiles: most requests in flight; an arrival beyond it waits (client queue time,
    /// reported). Default 1024.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrency: Option<u32>,
    /// Service-level objectives: goodput counts the requests that meet all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
    /// Requests sent before the measured window (a count and/or a duration), with prompts of
    /// their own so that they warm the engine without warming a prefix cache for the measured
    /// requests; they are excluded from every metric.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<LoadWarmup>,
    /// Compare the first `cold` requests with the rest (warmup analysis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_requests: Option<u64>,
    /// Closed loops: start the workers one by one, evenly over this long, instead of all at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramp: Option<Dur>,
    /// Deadlines of each measured request; unset: the suite's `execution.request_timeout`. In a
    /// compiled plan this holds the deadlines in force whenever they differ from the defaults
    /// (so they are part of the cell's key), and stays unset at the defaults (keys do not move).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<RequestTimeout>,
}

/// How long one measured (or eval) request may take, by phase. A request past a deadline ends as
/// error `timeout`, naming the deadline, and its connection is dropped; the cell goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequestTimeout {
    /// Send → the first byte of the answer's body (a streamed answer's first event; the whole
    /// answer when it is not streamed). Default 60s.
    #[schemars(with = "super::decode::Deadline")]
    pub first_token: Dur,
    /// Longest silence between two reads of a streamed answer once its body has begun. Default 30s.
    #[schemars(with = "super::decode::Deadline")]
    pub between_events: Dur,
    /// Send → the end of the answer. Default 20m.
    #[schemars(with = "super::decode::Deadline")]
    pub total: Dur,
}

impl Default for RequestTimeout {
    fn default() -> Self {
        use std::time::Duration;
        RequestTimeout {
            first_token: Dur(Duration::from_secs(60)),
            between_events: Dur(Duration::from_secs(30)),
            total: Dur(Duration::from_secs(20 * 60)),
        }
    }
}

impl Decode for RequestTimeout {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let d = RequestTimeout::default();
        let mut f = Fields::open(node, cx, what)?;
        let t = RequestTimeout {
            first_token: f.opt(cx, "first_token").unwrap_or(d.first_token),
            between_events: f.opt(cx, "between_events").unwrap_or(d.between_events),
            total: f.opt(cx, "total").unwrap_or(d.total),
        };
        f.finish(cx);
        for (name, v) in [("first_token", t.first_token), ("between_events", t.between_events), ("total", t.total)] {
            if v.0.is_zero() {
                cx.error(
                    Diagnostic::new(node.pos, format!("{what}: `{name}` must be longer than 0"))
                        .help("a deadline of 0 would fail every request; leave the key out for the default"),
                );
            }
        }
        Some(t)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct LoadWarmup {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<Dur>,
}

impl Decode for LoadWarmup {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "`warmup`")?;
        let w = LoadWarmup { requests: f.opt(cx, "requests"), duration: f.opt(cx, "duration") };
        f.finish(cx);
        if w.requests.is_none() && w.duration.is_none() {
            cx.error(Diagnostic::new(node.pos, "`warmup` needs `requests:` and/or `duration:`"));
        }
        Some(w)
    }
}

/// Latency objectives for goodput, in milliseconds; unset ones do not apply.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpot_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e_ms: Option<f64>,
    /// `sweep`: the least share of requests that must meet every SLO for a rate to count as
    /// sustained (default 0.9); the sweep stops at the first rate below it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attainment: Option<f64>,
}

impl Decode for Slo {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "`slo`")?;
        let slo = Slo {
            ttft_ms: f.opt(cx, "ttft_ms"),
            tpot_ms: f.opt(cx, "tpot_ms"),
            e2e_ms: f.opt(cx, "e2e_ms"),
            attainment: f.opt(cx, "attainment"),
        };
        f.finish(cx);
        if let Some(a) = slo.attainment.filter(|a| !(0.0..=1.0).contains(a)) {
            cx.error(Diagnostic::new(node.pos, format!("`attainment` is a share between 0 and 1, not {a}")));
        }
        Some(slo)
    }
}

fn yes() -> bool {
    true
}

impl Decode for LoadSpec {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let api = f.opt(cx, "api").unwrap_or_default();
        let profile = f.req(cx, "profile");
        let requests: Option<u64> = f.opt(cx, "requests");
        let duration: Option<Dur> = f.opt(cx, "duration");
        let prompt = f.req(cx, "prompt");
        let ignore_eos = f.opt(cx, "ignore_eos").unwrap_or(true);
        let max_concurrency: Option<u32> = f.opt(cx, "max_concurrency");
        let slo = f.opt(cx, "slo");
        let warmup = f.opt(cx, "warmup");
        let cold_requests = f.opt(cx, "cold_requests");
        let ramp: Option<Dur> = f.opt(cx, "ramp");
        let request_timeout = f.opt(cx, "request_timeout");
        f.finish(cx);
        let staged = matches!(profile, Some(Profile::Stages(_)));
        if ramp.is_some() && !matches!(profile, Some(Profile::Concurrency(_) | Profile::Stages(_)) | None) {
            cx.error(Diagnostic::new(
                node.pos,
                format!("{what}: `ramp` applies to `concurrency` profiles (and `concurrency` stages) only"),
            ));
        }
        if max_concurrency == Some(0) {
            cx.error(Diagnostic::new(node.pos, format!("{what}: `max_concurrency` must be at least 1")));
        }
        if requests.is_none() && duration.is_none() && !staged {
            cx.error(
                Diagnostic::new(node.pos, format!("{what}: no stop condition"))
                    .help("set `requests:` (a count), `duration:` (e.g. `30s`), or both"),
            );
        }
        if requests == Some(0) {
            cx.error(Diagnostic::new(node.pos, format!("{what}: `requests` must be at least 1")));
        }
        Some(LoadSpec {
            api,
            profile: profile?,
            requests,
            duration,
            prompt: prompt?,
            ignore_eos,
            max_concurrency,
            slo,
            warmup,
            cold_requests,
            ramp,
            request_timeout,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum ApiKind {
    #[default]
    Completion,
    Chat,
}
string_enum!(ApiKind { "completion" => ApiKind::Completion, "chat" => ApiKind::Chat });

/// How requests arrive.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// One request at a time.
    Synchronous,
    /// A closed loop with N requests in flight.
    Concurrency(u32),
    /// Open loop at a fixed rate (requests per second).
    Constant(f64),
    /// Open loop with gamma-distributed gaps at a mean rate: `burstiness` is the gamma shape
    /// (1 = Poisson, below 1 burstier, above 1 more regular).
    Poisson { rate: f64, burstiness: f64 },
    /// One profile after another, each with its own stop; each stage is reported on its own.
    Stages(Vec<Stage>),
    /// Synchronous, then maximum throughput (a closed loop at `max_concurrency`), then `rates`
    /// constant rates evenly between the two measured throughputs; every stage stops on the
    /// benchmark's `requests`/`duration`. The sweep stops early at the first rate whose error rate
    /// exceeds the budget or whose requests meet the SLOs less often than `slo.attainment`.
    Sweep { rates: u32 },
}

/// One stage of a `stages` profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    pub profile: Profile,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<Dur>,
}

impl Decode for Stage {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, what)?;
        let profile: Option<Profile> = f.req(cx, "profile");
        let requests: Option<u64> = f.opt(cx, "requests");
        let duration: Option<Dur> = f.opt(cx, "duration");
        f.finish(cx);
        if requests.is_none() && duration.is_none() {
            cx.error(
                Diagnostic::new(node.pos, format!("{what}: no stop condition"))
                    .help("give each stage `requests:`, `duration:`, or both"),
            );
        }
        if requests == Some(0) {
            cx.error(Diagnostic::new(node.pos, format!("{what}: `requests` must be at least 1")));
        }
        if matches!(profile, Some(Profile::Stages(_) | Profile::Sweep { .. })) {
            cx.error(Diagnostic::new(
                node.pos,
                format!("{what}: a stage is a single profile, not `stages` or `sweep`"),
            ));
            return None;
        }
        Some(Stage { profile: profile?, requests, duration })
    }
}

impl Profile {
    /// The most requests this profile keeps in flight, when bounded.
    pub fn max_in_flight(&self) -> Option<u32> {
        match self {
            Profile::Synchronous => Some(1),
            Profile::Concurrency(n) => Some(*n),
            Profile::Stages(stages) => stages.iter().map(|s| s.profile.max_in_flight()).sum(),
            _ => None,
        }
    }
}

impl JsonSchema for Profile {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Profile".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`synchronous`, `{concurrency: N}`, `{constant: RATE}`, `{poisson: RATE}`, `{poisson: {rate: RATE, burstiness: SHAPE}}` (requests per second), `{stages: [{profile: P, requests: N, duration: D}, ...]}` or `{sweep: {rates: K}}`.",
            "oneOf": [
                {"const": "synchronous"},
                {"type": "object", "properties": {"concurrency": {"type": ["integer", "string"], "minimum": 1}}, "required": ["concurrency"], "additionalProperties": false},
                {"type": "object", "properties": {"constant": {"type": ["number", "string"], "exclusiveMinimum": 0}}, "required": ["constant"], "additionalProperties": false},
                {"type": "object", "properties": {"poisson": {"anyOf": [
                    {"type": ["number", "string"], "exclusiveMinimum": 0},
                    {"type": "object", "properties": {"rate": {"type": ["number", "string"], "exclusiveMinimum": 0}, "burstiness": {"type": ["number", "string"], "exclusiveMinimum": 0}}, "required": ["rate"], "additionalProperties": false}
                ]}}, "required": ["poisson"], "additionalProperties": false},
                {"type": "object", "properties": {"stages": {"type": "array", "minItems": 1, "items": {
                    "type": "object",
                    "properties": {"profile": {"$ref": "#/$defs/Profile"}, "requests": {"type": ["integer", "string"], "minimum": 1}, "duration": {"type": "string"}},
                    "required": ["profile"], "additionalProperties": false
                }}}, "required": ["stages"], "additionalProperties": false},
                {"type": "object", "properties": {"sweep": {"type": "object", "properties": {"rates": {"type": ["integer", "string"], "minimum": 1}}, "required": ["rates"], "additionalProperties": false}}, "required": ["sweep"], "additionalProperties": false}
            ]
        })
    }
}

/// A positive, finite number (a rate or a shape).
fn rate(node: &Node, cx: &mut Cx) -> Option<f64> {
    let r = f64::decode(node, cx, "rate")?;
    if r <= 0.0 || !r.is_finite() {
        cx.error(Diagnostic::new(node.pos, "a rate must be above 0 requests per second"));
        return None;
    }
    Some(r)
}

impl Decode for Profile {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let help = "write `synchronous`, `{concurrency: N}`, `{constant: RATE}` or `{poisson: RATE}`";
        match &node.value {
            Value::Str(s) if s == "synchronous" => Some(Profile::Synchronous),
            Value::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                match key.name.as_str() {
                    "concurrency" => {
                        let n = u32::decode(value, cx, "`concurrency`")?;
                        if n == 0 {
                            cx.error(Diagnostic::new(value.pos, "`concurrency` must be at least 1"));
                            return None;
                        }
                        Some(Profile::Concurrency(n))
                    }
                    "constant" => Some(Profile::Constant(rate(value, cx)?)),
                    "poisson" => match &value.value {
                        Value::Map(_) => {
                            let mut f = Fields::open(value, cx, "`poisson`")?;
                            let r: Option<Node> = f.req(cx, "rate");
                            let b: Option<Node> = f.opt(cx, "burstiness");
                            f.finish(cx);
                            let burstiness = match b {
                                Some(b) => rate(&b, cx).or_else(|| {
                                    cx.error(Diagnostic::new(
                                        b.pos,
                                        "`burstiness` is a gamma shape above 0 (1 = Poisson)",
                                    ));
                                    None
                                })?,
                                None => 1.0,
                            };
                            Some(Profile::Poisson { rate: rate(&r?, cx)?, burstiness })
                        }
                        _ => Some(Profile::Poisson { rate: rate(value, cx)?, burstiness: 1.0 }),
                    },
                    "stages" => {
                        let stages: Vec<Stage> = Vec::decode(value, cx, "stage")?;
                        if stages.is_empty() {
                            cx.error(Diagnostic::new(value.pos, "`stages` needs at least one stage"));
                            return None;
                        }
                        Some(Profile::Stages(stages))
                    }
                    "sweep" => {
                        let mut f = Fields::open(value, cx, "`sweep`")?;
                        let rates: Option<u32> = f.req(cx, "rates");
                        f.finish(cx);
                        let rates = rates?;
                        if rates == 0 {
                            cx.error(Diagnostic::new(value.pos, "`sweep` needs `rates` of at least 1"));
                            return None;
                        }
                        Some(Profile::Sweep { rates })
                    }
                    other => {
                        cx.error(Diagnostic::new(key.pos, format!("{what}: unknown profile `{other}`")).help(
                            crate::manifest::diag::unknown_help(
                                other,
                                ["concurrency", "constant", "poisson", "stages", "sweep"],
                            ),
                        ));
                        None
                    }
                }
            }
            _ => {
                cx.error(Diagnostic::new(node.pos, format!("{what}: not a load profile")).help(help));
                None
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum PromptSpec {
    /// Generated prompts of exact token lengths.
    Synthetic {
        input_tokens: Length,
        /// Warm prefixes: every prompt starts with one of `groups` shared prefixes of `tokens`
        /// tokens (part of `input_tokens`), so a prefix cache can hit. Without it (the default),
        /// every prompt starts with a word unique to its request: nothing can be cached.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shared_prefix: Option<SharedPrefix>,
    },
    /// Prompts from a file of one's own (ShareGPT JSON, or JSON/JSONL of objects or strings),
    /// in a seeded order; each measured with the engine's tokenizer.
    Dataset(DatasetPrompts),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedPrefix {
    pub tokens: u32,
    #[serde(default = "one_group")]
    pub groups: u32,
}

fn one_group() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetPrompts {
    /// A local file, relative to the suite file.
    pub path: String,
    /// `sharegpt` (the first human turn of each conversation), `jsonl` or `json`.
    #[serde(default)]
    pub format: DatasetFormat,
    /// The field holding the prompt in `jsonl`/`json` objects (default `prompt`; a plain string
    /// entry is the prompt itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    #[default]
    Sharegpt,
    Jsonl,
    Json,
}
string_enum!(DatasetFormat { "sharegpt" => DatasetFormat::Sharegpt, "jsonl" => DatasetFormat::Jsonl, "json" => DatasetFormat::Json });

impl PromptSpec {
    /// Synthetic prompts of `n` tokens, all distinct.
    pub fn fixed(n: u32) -> PromptSpec {
        PromptSpec::Synthetic { input_tokens: Length::Fixed(n), shared_prefix: None }
    }
}

/// Prompt lengths in tokens: one for all, or drawn per request from a seeded distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    Fixed(u32),
    /// Uniform over `[min, max]`.
    Uniform(u32, u32),
    /// Normal, rounded and clamped to at least 1.
    Normal {
        mean: f64,
        stddev: f64,
    },
}

impl Length {
    /// The length of request `index`: depends only on `(seed, index)`.
    pub fn at(&self, seed: u64, index: u64) -> u32 {
        let mut z = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x4c45_4e47;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        match *self {
            Length::Fixed(n) => n,
            Length::Uniform(lo, hi) => lo + (next() % u64::from(hi - lo + 1)) as u32,
            Length::Normal { mean, stddev } => {
                let unit = |v: u64| ((v >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                let (u, v) = (unit(next()), unit(next()));
                let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
                (mean + stddev * z).round().max(1.0) as u32
            }
        }
    }

    /// The nominal length (the mean), for labels.
    pub fn nominal(&self) -> u32 {
        match *self {
            Length::Fixed(n) => n,
            Length::Uniform(lo, hi) => (lo + hi) / 2,
            Length::Normal { mean, .. } => mean.round().max(1.0) as u32,
        }
    }
}

/// Written as it is in a manifest: `N`, `{uniform: [MIN, MAX]}`, `{normal: {mean, stddev}}`.
impl Serialize for Length {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Length::Fixed(n) => s.serialize_u32(n),
            Length::Uniform(lo, hi) => serde_json::json!({"uniform": [lo, hi]}).serialize(s),
            Length::Normal { mean, stddev } => {
                serde_json::json!({"normal": {"mean": mean, "stddev": stddev}}).serialize(s)
            }
        }
    }
}

impl JsonSchema for Length {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Length".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Tokens per prompt: N, `{uniform: [MIN, MAX]}` or `{normal: {mean: M, stddev: S}}`.",
            "anyOf": [
                {"type": ["integer", "string"], "minimum": 1},
                {"type": "object", "properties": {"uniform": {"type": "array", "items": {"type": ["integer", "string"]}, "minItems": 2, "maxItems": 2}}, "required": ["uniform"], "additionalProperties": false},
                {"type": "object", "properties": {"normal": {"type": "object", "properties": {"mean": {"type": ["number", "string"]}, "stddev": {"type": ["number", "string"]}}, "required": ["mean", "stddev"], "additionalProperties": false}}, "required": ["normal"], "additionalProperties": false}
            ]
        })
    }
}

impl Decode for Length {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let positive = |n: u32, pos, cx: &mut Cx| {
            if n == 0 {
                cx.error(Diagnostic::new(pos, format!("{what}: a prompt needs at least 1 token")));
            }
        };
        match &node.value {
            Value::Int(_) => {
                let n = u32::decode(node, cx, what)?;
                positive(n, node.pos, cx);
                Some(Length::Fixed(n))
            }
            Value::Map(entries) if entries.len() == 1 && entries[0].0.name == "uniform" => {
                let v: Vec<u32> = Vec::decode(&entries[0].1, cx, "`uniform`")?;
                match v.as_slice() {
                    [lo, hi] if 1 <= *lo && lo <= hi => Some(Length::Uniform(*lo, *hi)),
                    _ => {
                        cx.error(
                            Diagnostic::new(entries[0].1.pos, "`uniform` takes `[MIN, MAX]` with 1 ≤ MIN ≤ MAX")
                                .help("for example `{uniform: [64, 256]}`"),
                        );
                        None
                    }
                }
            }
            Value::Map(entries) if entries.len() == 1 && entries[0].0.name == "normal" => {
                let mut f = Fields::open(&entries[0].1, cx, "`normal`")?;
                let mean: Option<f64> = f.req(cx, "mean");
                let stddev: Option<f64> = f.req(cx, "stddev");
                f.finish(cx);
                let (mean, stddev) = (mean?, stddev?);
                if mean < 1.0 || stddev < 0.0 {
                    cx.error(Diagnostic::new(entries[0].1.pos, "`normal` needs `mean` ≥ 1 and `stddev` ≥ 0"));
                    return None;
                }
                Some(Length::Normal { mean, stddev })
            }
            _ => {
                cx.error(
                    Diagnostic::new(node.pos, format!("{what}: not a prompt length"))
                        .help("write N, `{uniform: [MIN, MAX]}` or `{normal: {mean: M, stddev: S}}`"),
                );
                None
            }
        }
    }
}

impl Decode for PromptSpec {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        if let Value::Map(entries) = &node.value
            && entries.len() == 1
            && entries[0].0.name == "dataset"
        {
            let d = &entries[0].1;
            let mut f = Fields::open(d, cx, "`dataset`")?;
            let path: Option<String> = f.req(cx, "path");
            let format = f.opt(cx, "format").unwrap_or_default();
            let field = f.opt(cx, "field");
            f.finish(cx);
            return Some(PromptSpec::Dataset(DatasetPrompts { path: path?, format, field }));
        }
        let mut f = Fields::open(node, cx, "`prompt`")?;
        let synthetic = f.req::<Node>(cx, "synthetic");
        f.finish(cx);
        let synthetic = synthetic?;
        let mut s = Fields::open(&synthetic, cx, "`synthetic`")?;
        let input_tokens: Option<Length> = s.req(cx, "input_tokens");
        let prefix: Option<Node> = s.opt(cx, "shared_prefix");
        s.finish(cx);
        let shared_prefix = match prefix {
            Some(p) => {
                let mut pf = Fields::open(&p, cx, "`shared_prefix`")?;
                let tokens: Option<u32> = pf.req(cx, "tokens");
                let groups: u32 = pf.opt(cx, "groups").unwrap_or(1);
                pf.finish(cx);
                let tokens = tokens?;
                if tokens == 0 || groups == 0 {
                    cx.error(Diagnostic::new(p.pos, "`shared_prefix` needs `tokens` and `groups` of at least 1"));
                    return None;
                }
                let input = input_tokens.as_ref().map(Length::nominal).unwrap_or(u32::MAX);
                if tokens >= input {
                    cx.error(
                        Diagnostic::new(
                            p.pos,
                            format!("a shared prefix of {tokens} tokens leaves nothing of a {input}-token prompt"),
                        )
                        .help("the prefix is part of `input_tokens`: make it shorter"),
                    );
                    return None;
                }
                Some(SharedPrefix { tokens, groups })
            }
            None => None,
        };
        Some(PromptSpec::Synthetic { input_tokens: input_tokens?, shared_prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_seeded_and_bounded() {
        let u = Length::Uniform(64, 256);
        let xs: Vec<u32> = (0..2000).map(|i| u.at(7, i)).collect();
        assert!(xs.iter().all(|x| (64..=256).contains(x)));
        assert!(xs.contains(&64) && xs.contains(&256), "both ends are reachable");
        assert_eq!(xs, (0..2000).map(|i| u.at(7, i)).collect::<Vec<_>>());
        let n = Length::Normal { mean: 128.0, stddev: 16.0 };
        let ys: Vec<f64> = (0..4000).map(|i| f64::from(n.at(3, i))).collect();
        let mean = ys.iter().sum::<f64>() / ys.len() as f64;
        let sd = (ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / ys.len() as f64).sqrt();
        assert!((mean - 128.0).abs() < 1.5 && (sd - 16.0).abs() < 1.5, "mean {mean}, sd {sd}");
        assert_eq!(
            Length::Normal { mean: 2.0, stddev: 50.0 }.at(1, 5).max(1),
            Length::Normal { mean: 2.0, stddev: 50.0 }.at(1, 5)
        );
        assert_eq!(Length::Fixed(9).at(1, 2), 9);
    }

    #[test]
    fn lengths_decode_with_positions_on_errors() {
        let parse = |y: &str| {
            let node = crate::manifest::yaml::parse(y).unwrap();
            let mut cx = Cx::default();
            (Length::decode(&node, &mut cx, "`input_tokens`"), cx.errors)
        };
        assert_eq!(parse("128").0, Some(Length::Fixed(128)));
        assert_eq!(parse("{uniform: [8, 16]}").0, Some(Length::Uniform(8, 16)));
        assert_eq!(parse("{normal: {mean: 100, stddev: 5}}").0, Some(Length::Normal { mean: 100.0, stddev: 5.0 }));
        let (_, errors) = parse("{uniform: [16, 8]}");
        assert!(errors[0].message.contains("1 ≤ MIN ≤ MAX"), "{errors:?}");
        let (_, errors) = parse("lots");
        assert!(errors[0].help.as_deref().unwrap().contains("uniform"));
    }
}
