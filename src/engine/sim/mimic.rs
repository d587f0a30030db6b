//! `--mimic`: the simulator as the program of a container image, reading the command line and
//! environment the real engine would get, so kitt's built-in templates run through Docker with
//! their real container arguments.
//!
//! Owns the translation of an engine's own argv and environment into what the sim serves
//! ([`Served`]: API, listen address, model names, context limits) and nothing else. Parsing is
//! lenient on purpose: the engines take hundreds of flags (GPU memory, parallelism, dtype) that mean
//! nothing to a simulator, so a flag that is not understood is accepted and ignored, its value with
//! it, and listed once at startup. Only what decides where the sim listens and what it calls its
//! model is read, with each engine's own defaults:
//! - vLLM (`vllm serve [MODEL]` or the image's entrypoint): `--model`, `--served-model-name` (one or
//!   more names), `--host` (default all interfaces), `--port` (8000), `--max-model-len`; `--flag=value`
//!   and underscores (`--max_model_len`) as vLLM's argument parser accepts them.
//! - TGI (`text-generation-launcher`): `--model-id`, `--hostname` (0.0.0.0), `--port`/`-p` (3000),
//!   `--max-input-tokens`, `--max-total-tokens`, and the launcher's environment variables for them
//!   (`MODEL_ID`, `PORT`, …; a flag wins). `HOSTNAME` is not read: Docker sets it to the container's
//!   name, which is no address to listen on.
//! - Ollama (`ollama serve`): `OLLAMA_HOST` (`[scheme://]host[:port]`, default 127.0.0.1:11434),
//!   parsed as Ollama's `envconfig.Host` parses it.

use super::{SimApi, SimArgs};

/// An engine whose command line `kitt sim --mimic` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mimic {
    /// vLLM's OpenAI-compatible server (`vllm serve`); implies `--api openai`.
    Vllm,
    /// Hugging Face text-generation-inference (`text-generation-launcher`); implies `--api tgi`.
    Tgi,
    /// Ollama (`ollama serve`, configured by `OLLAMA_HOST`); implies `--api ollama`.
    Ollama,
}

impl Mimic {
    fn api(self) -> SimApi {
        match self {
            Mimic::Vllm => SimApi::Openai,
            Mimic::Tgi => SimApi::Tgi,
            Mimic::Ollama => SimApi::Ollama,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mimic::Vllm => "vllm",
            Mimic::Tgi => "tgi",
            Mimic::Ollama => "ollama",
        }
    }
}

/// What the simulator serves, once `--mimic` has read the engine's argv and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub api: SimApi,
    pub host: String,
    pub port: u16,
    /// The names requests may use; the first names the answers. Ollama: the models pulled from the
    /// start (`--models`).
    pub models: Vec<String>,
    /// What the model was loaded from (vLLM's `root`): the `--model` path, else the first name.
    pub root: String,
    /// Context length: vLLM's `max_model_len`, TGI's `max_total_tokens`.
    pub max_model_len: u32,
    /// TGI's `max_input_tokens`.
    pub max_input_tokens: u32,
    /// Engine arguments accepted and ignored, as given (`--dtype auto`).
    pub ignored: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MimicError {
    #[error("--mimic {engine}: `{flag}` needs a value")]
    MissingValue { engine: &'static str, flag: String },
    #[error("--mimic {engine}: `{flag} {value}` is not {what}")]
    BadValue { engine: &'static str, flag: String, value: String, what: &'static str },
    #[error("--mimic {mimic} implies `--api {implied}`; drop `--api {api}`")]
    ApiConflict { mimic: &'static str, api: &'static str, implied: &'static str },
    #[error("--mimic ollama imitates `ollama serve` only, not `ollama {0}`")]
    OllamaCommand(String),
    #[error("engine arguments after `--` need `--mimic vllm|tgi|ollama` to say whose they are")]
    NoMimic,
}

/// The model name when neither kitt's flags nor the engine's argv name one.
const DEFAULT_MODEL: &str = "sim";

/// Resolves `args` (and, with `--mimic`, the engine argv after `--` and `env`, the process
/// environment in `kitt sim`) into what the simulator serves.
pub fn resolve(args: &SimArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Served, MimicError> {
    let Some(mimic) = args.mimic else {
        if !args.engine_args.is_empty() {
            return Err(MimicError::NoMimic);
        }
        let api = args.api.unwrap_or(SimApi::Openai);
        let models = match (api, &args.model) {
            (SimApi::Ollama, model) => args.models.iter().chain(model).cloned().collect(),
            (_, model) => vec![model.clone().unwrap_or_else(|| DEFAULT_MODEL.into())],
        };
        return Ok(Served {
            api,
            host: args.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
            port: args.port.unwrap_or(8000),
            root: models.first().cloned().unwrap_or_default(),
            models,
            max_model_len: args.max_model_len,
            max_input_tokens: args.max_model_len.saturating_sub(1).max(1),
            ignored: Vec::new(),
        });
    };
    if let Some(api) = args.api
        && api != mimic.api()
    {
        return Err(MimicError::ApiConflict { mimic: mimic.name(), api: api.name(), implied: mimic.api().name() });
    }
    let mut served = match mimic {
        Mimic::Vllm => vllm(&args.engine_args, args.max_model_len)?,
        Mimic::Tgi => tgi(&args.engine_args, env, args.max_model_len)?,
        Mimic::Ollama => ollama(&args.engine_args, env, args.max_model_len)?,
    };
    if mimic == Mimic::Ollama {
        served.models = args.models.clone();
    }
    Ok(served)
}

/// A flag and what follows it, read off an argv one at a time.
struct Flags<'a> {
    engine: &'static str,
    argv: &'a [String],
    at: usize,
    ignored: Vec<String>,
}

/// One item of an engine argv.
enum Item<'a> {
    /// `--name` (underscores turned into dashes), with the value written as `--name=value`.
    Flag(String, Option<&'a str>),
    Bare(&'a str),
}

impl<'a> Flags<'a> {
    fn new(engine: &'static str, argv: &'a [String]) -> Self {
        Flags { engine, argv, at: 0, ignored: Vec::new() }
    }

    fn next(&mut self) -> Option<Item<'a>> {
        let arg = self.argv.get(self.at)?;
        self.at += 1;
        if !arg.starts_with('-') || arg == "-" {
            return Some(Item::Bare(arg));
        }
        let (name, value) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (arg.as_str(), None),
        };
        let name = if name.starts_with("--") { name.replace('_', "-") } else { name.to_string() };
        Some(Item::Flag(name, value))
    }

    /// The next argument, when it is not itself a flag.
    fn peek_value(&self) -> Option<&'a str> {
        self.argv.get(self.at).map(String::as_str).filter(|a| !a.starts_with('-'))
    }

    /// The value of `flag`: inline (`--port=8000`) or the next argument.
    fn value(&mut self, flag: &str, inline: Option<&'a str>) -> Result<&'a str, MimicError> {
        if let Some(value) = inline {
            return Ok(value);
        }
        let value =
            self.peek_value().ok_or_else(|| MimicError::MissingValue { engine: self.engine, flag: flag.into() })?;
        self.at += 1;
        Ok(value)
    }

    /// Every value up to the next flag (vLLM's `nargs="+"`).
    fn values(&mut self, flag: &str, inline: Option<&'a str>) -> Result<Vec<String>, MimicError> {
        let mut values = vec![self.value(flag, inline)?.to_string()];
        if inline.is_none() {
            while let Some(value) = self.peek_value() {
                values.push(value.to_string());
                self.at += 1;
            }
        }
        Ok(values)
    }

    /// An unknown flag: ignored, with the value that follows it if any.
    fn ignore(&mut self, flag: String, inline: Option<&'a str>) {
        let value = inline.or_else(|| {
            let next = self.peek_value();
            self.at += usize::from(next.is_some());
            next
        });
        self.ignored.push(match value {
            Some(value) => format!("{flag} {value}"),
            None => flag,
        });
    }

    fn number<T: std::str::FromStr>(&self, flag: &str, value: &str, what: &'static str) -> Result<T, MimicError> {
        value.parse().map_err(|_| self.bad(flag, value, what))
    }

    fn bad(&self, flag: &str, value: &str, what: &'static str) -> MimicError {
        MimicError::BadValue { engine: self.engine, flag: flag.into(), value: value.into(), what }
    }
}

/// vLLM's `--max-model-len`: a number, or with a `k`/`m` (×1000) or `K`/`M` (×1024) suffix.
fn context_length(flags: &Flags, flag: &str, value: &str) -> Result<u32, MimicError> {
    let (digits, scale) = match value.char_indices().last() {
        Some((i, 'k')) => (&value[..i], 1_000),
        Some((i, 'K')) => (&value[..i], 1_024),
        Some((i, 'm')) => (&value[..i], 1_000_000),
        Some((i, 'M')) => (&value[..i], 1_048_576),
        _ => (value, 1),
    };
    let what = "a context length";
    let n: u32 = flags.number(flag, digits, what)?;
    n.checked_mul(scale).filter(|n| *n > 0).ok_or_else(|| flags.bad(flag, value, what))
}

fn vllm(argv: &[String], default_context: u32) -> Result<Served, MimicError> {
    let mut flags = Flags::new("vllm", argv);
    let (mut model, mut names, mut host, mut port) = (None, Vec::new(), None, 8000);
    let mut context = default_context;
    // `vllm serve MODEL …` (the native command); the image's entrypoint already says `vllm serve`.
    if argv.first().is_some_and(|a| a == "serve") {
        flags.at = 1;
    }
    if let Some(positional) = flags.peek_value() {
        model = Some(positional.to_string());
        flags.at += 1;
    }
    while let Some(item) = flags.next() {
        match item {
            Item::Bare(arg) => flags.ignored.push(arg.to_string()),
            Item::Flag(flag, inline) => match flag.as_str() {
                "--model" => model = Some(flags.value(&flag, inline)?.to_string()),
                "--served-model-name" => names = flags.values(&flag, inline)?,
                "--host" => host = Some(flags.value(&flag, inline)?.to_string()),
                "--port" => {
                    let value = flags.value(&flag, inline)?;
                    port = flags.number(&flag, value, "a port")?;
                }
                "--max-model-len" => {
                    let value = flags.value(&flag, inline)?;
                    context = context_length(&flags, &flag, value)?;
                }
                _ => flags.ignore(flag, inline),
            },
        }
    }
    let root = model.unwrap_or_else(|| DEFAULT_MODEL.into());
    if names.is_empty() {
        names.push(root.clone());
    }
    Ok(Served {
        api: SimApi::Openai,
        // vLLM's default host (none) listens on every interface.
        host: host.unwrap_or_else(|| "0.0.0.0".into()),
        port,
        models: names,
        root,
        max_model_len: context,
        max_input_tokens: context.saturating_sub(1).max(1),
        ignored: flags.ignored,
    })
}

fn tgi(argv: &[String], env: &dyn Fn(&str) -> Option<String>, default_context: u32) -> Result<Served, MimicError> {
    let mut flags = Flags::new("tgi", argv);
    // The launcher's clap reads each flag from its environment variable when the flag is absent.
    let mut model = env("MODEL_ID");
    let mut host = None;
    let mut port = env("PORT");
    let mut max_input = env("MAX_INPUT_TOKENS").or_else(|| env("MAX_INPUT_LENGTH"));
    let mut max_total = env("MAX_TOTAL_TOKENS");
    while let Some(item) = flags.next() {
        match item {
            Item::Bare(arg) => flags.ignored.push(arg.to_string()),
            Item::Flag(flag, inline) => match flag.as_str() {
                "--model-id" => model = Some(flags.value(&flag, inline)?.to_string()),
                "--hostname" => host = Some(flags.value(&flag, inline)?.to_string()),
                "--port" | "-p" => port = Some(flags.value(&flag, inline)?.to_string()),
                "--max-input-tokens" | "--max-input-length" => {
                    max_input = Some(flags.value(&flag, inline)?.to_string())
                }
                "--max-total-tokens" => max_total = Some(flags.value(&flag, inline)?.to_string()),
                _ => flags.ignore(flag, inline),
            },
        }
    }
    let port = match port {
        Some(p) => flags.number("--port", &p, "a port")?,
        None => 3000,
    };
    let max_total = match max_total {
        Some(t) => flags.number::<u32>("--max-total-tokens", &t, "a token count")?.max(2),
        None => default_context.max(2),
    };
    // TGI's default input limit leaves room for one new token.
    let max_input = match max_input {
        Some(i) => flags.number("--max-input-tokens", &i, "a token count")?,
        None => max_total - 1,
    };
    let model = model.unwrap_or_else(|| DEFAULT_MODEL.into());
    Ok(Served {
        api: SimApi::Tgi,
        host: host.unwrap_or_else(|| "0.0.0.0".into()),
        port,
        models: vec![model.clone()],
        root: model,
        max_model_len: max_total,
        max_input_tokens: max_input,
        ignored: flags.ignored,
    })
}

fn ollama(argv: &[String], env: &dyn Fn(&str) -> Option<String>, context: u32) -> Result<Served, MimicError> {
    match argv {
        [] => {}
        [serve, rest @ ..] if serve == "serve" => {
            if let Some(extra) = rest.first() {
                return Err(MimicError::OllamaCommand(format!("serve {extra}")));
            }
        }
        [other, ..] => return Err(MimicError::OllamaCommand(other.clone())),
    }
    let (host, port) = ollama_host(env("OLLAMA_HOST").as_deref().unwrap_or(""));
    Ok(Served {
        api: SimApi::Ollama,
        host,
        port,
        models: Vec::new(),
        root: String::new(),
        max_model_len: context,
        max_input_tokens: context.saturating_sub(1).max(1),
        ignored: Vec::new(),
    })
}

/// `OLLAMA_HOST` as Ollama reads it (`envconfig.Host`): quotes and spaces trimmed, an optional
/// scheme (`http://` defaults the port to 80, `https://` to 443, none to 11434), an optional path,
/// and a port that is not one falls back to the default.
fn ollama_host(value: &str) -> (String, u16) {
    let value = value.trim().trim_matches(['"', '\'']);
    let (default_port, hostport) = match value.split_once("://") {
        Some(("https", rest)) => (443, rest),
        Some((_, rest)) => (80, rest),
        None => (11434, value),
    };
    let hostport = hostport.split('/').next().unwrap_or("");
    let (host, port) = match hostport.rsplit_once(':') {
        // `[::1]:8080`, `127.0.0.1:8080`, `:8080`; a bare IPv6 address has more than one colon.
        Some((host, port)) if host.starts_with('[') || !host.contains(':') => {
            (host.trim_matches(['[', ']']).to_string(), port.parse().unwrap_or(default_port))
        }
        _ => (hostport.trim_matches(['[', ']']).to_string(), default_port),
    };
    // An empty host (`:8080`) listens on every interface, as Go's `net.Listen` does; no value at all
    // is Ollama's loopback default.
    let host = match (host.is_empty(), hostport.is_empty()) {
        (true, true) => "127.0.0.1".to_string(),
        (true, false) => "0.0.0.0".to_string(),
        (false, _) => host,
    };
    (host, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_host_is_read_as_ollama_reads_it() {
        let cases = [
            ("", ("127.0.0.1", 11434)),
            ("127.0.0.1:9000", ("127.0.0.1", 9000)),
            (" \"0.0.0.0:9000\" ", ("0.0.0.0", 9000)),
            (":9000", ("0.0.0.0", 9000)),
            ("0.0.0.0", ("0.0.0.0", 11434)),
            ("http://example.com", ("example.com", 80)),
            ("https://example.com:8443/ollama", ("example.com", 8443)),
            ("[::1]:9000", ("::1", 9000)),
            ("::1", ("::1", 11434)),
            ("127.0.0.1:notaport", ("127.0.0.1", 11434)),
        ];
        for (value, (host, port)) in cases {
            assert_eq!(ollama_host(value), (host.to_string(), port), "OLLAMA_HOST={value:?}");
        }
    }
}
