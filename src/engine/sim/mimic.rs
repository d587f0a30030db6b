//! `--mimic`: the simulator as the program of a container image, reading the command line and
//! environment the real engine would get, so kitt's built-in templates run through Docker with
//! their real container arguments.
//!
//! Owns the translation of an engine's own argv and environment into what the sim serves
//! ([`Served`]: API, listen address, model names, context limits) and nothing else. The argv is read
//! against the engine's real flag table (`flags`): a flag the engine lacks is refused, as the
//! engine refuses it, and every flag read is kept with its values ([`Served::parsed`], printed at
//! startup as one JSON line on stderr, [`report`]) so a test can compare what a template sent with
//! what the engine would have understood. Of those, only what decides where the sim listens and what
//! it calls its model is used, with each engine's own defaults:
//! - llama.cpp (`llama-server`): `-m/--model`, `-a/--alias` (comma-separated names), `--host`
//!   (127.0.0.1), `--port` (8080), `-c/--ctx-size` (0: the model's own; the sim's `--max-model-len`).
//! - vLLM (`vllm serve [MODEL]` or the image's entrypoint): `--model`, `--served-model-name` (one or
//!   more names), `--host` (default all interfaces), `--port` (8000), `--max-model-len`; `--flag=value`
//!   and underscores (`--max_model_len`) as vLLM's argument parser accepts them.
//! - TGI (`text-generation-launcher`): `--model-id`, `--hostname` (0.0.0.0), `--port`/`-p` (3000),
//!   `--max-input-tokens`, `--max-total-tokens`, and the launcher's environment variables for them
//!   (`MODEL_ID`, `PORT`, …; a flag wins). `HOSTNAME` is not read: Docker sets it to the container's
//!   name, which is no address to listen on.
//! - Ollama (`ollama serve`): `OLLAMA_HOST` (`[scheme://]host[:port]`, default 127.0.0.1:11434),
//!   parsed as Ollama's `envconfig.Host` parses it; the other `OLLAMA_*` settings it knows are reported.

use super::flags::{Argv, LLAMA_SERVER, OLLAMA_SERVE, Parsed, TGI_LAUNCHER, VLLM_SERVE};
use super::{SimApi, SimArgs};

/// An engine whose command line `kitt sim --mimic` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mimic {
    /// llama.cpp's `llama-server` (OpenAI-compatible, with `/props`); implies `--api openai`.
    #[value(name = "llama_cpp", alias = "llama-cpp")]
    LlamaCpp,
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
            Mimic::LlamaCpp | Mimic::Vllm => SimApi::Openai,
            Mimic::Tgi => SimApi::Tgi,
            Mimic::Ollama => SimApi::Ollama,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mimic::LlamaCpp => "llama_cpp",
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
    /// Context length: vLLM's `max_model_len`, TGI's `max_total_tokens`, llama.cpp's `n_ctx`.
    pub max_model_len: u32,
    /// TGI's `max_input_tokens`.
    pub max_input_tokens: u32,
    /// Every engine flag read, in argv order, with its values (empty without `--mimic`).
    pub parsed: Vec<Parsed>,
    /// The engine's environment variables that were set and read, in table order.
    pub env: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MimicError {
    #[error("--mimic {engine}: `{flag}` needs a value")]
    MissingValue { engine: &'static str, flag: String },
    #[error("--mimic {engine}: `{flag}` takes no value")]
    NoValue { engine: &'static str, flag: String },
    #[error(
        "--mimic {engine}: `{flag}` is not a flag of `{program}` (see `{program} --help`); drop it or fix its spelling"
    )]
    UnknownFlag { engine: &'static str, program: &'static str, flag: String },
    #[error("--mimic {engine}: `{arg}` is not an argument `{program}` takes; only flags follow {takes}")]
    Unexpected { engine: &'static str, program: &'static str, arg: String, takes: &'static str },
    #[error("--mimic {engine}: `{flag} {value}` is not {what}")]
    BadValue { engine: &'static str, flag: String, value: String, what: &'static str },
    #[error("--mimic {mimic} implies `--api {implied}`; drop `--api {api}`")]
    ApiConflict { mimic: &'static str, api: &'static str, implied: &'static str },
    #[error("--mimic ollama imitates `ollama serve` only, not `ollama {0}`")]
    OllamaCommand(String),
    #[error("engine arguments after `--` need `--mimic llama_cpp|vllm|tgi|ollama` to say whose they are")]
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
            parsed: Vec::new(),
            env: Vec::new(),
        });
    };
    if let Some(api) = args.api
        && api != mimic.api()
    {
        return Err(MimicError::ApiConflict { mimic: mimic.name(), api: api.name(), implied: mimic.api().name() });
    }
    let mut served = match mimic {
        Mimic::LlamaCpp => llama_cpp(&args.engine_args, args.max_model_len)?,
        Mimic::Vllm => vllm(&args.engine_args, args.max_model_len)?,
        Mimic::Tgi => tgi(&args.engine_args, env, args.max_model_len)?,
        Mimic::Ollama => ollama(&args.engine_args, env, args.max_model_len)?,
    };
    if mimic == Mimic::Ollama {
        served.models = args.models.clone();
    }
    Ok(served)
}

/// The startup report of a `--mimic` sim: one JSON line with every flag read and its values, and
/// the engine's environment variables that were read (`{"mimic":…,"args":[{"flag","given","values"}],"env":{…}}`).
pub fn report(mimic: Mimic, served: &Served) -> String {
    let env: serde_json::Map<String, serde_json::Value> =
        served.env.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    serde_json::json!({"mimic": mimic.name(), "args": served.parsed, "env": env}).to_string()
}

fn number<T: std::str::FromStr>(
    engine: &'static str,
    flag: &str,
    value: &str,
    what: &'static str,
) -> Result<T, MimicError> {
    value.parse().map_err(|_| bad(engine, flag, value, what))
}

fn bad(engine: &'static str, flag: &str, value: &str, what: &'static str) -> MimicError {
    MimicError::BadValue { engine, flag: flag.into(), value: value.into(), what }
}

/// A port flag's value, or `default`.
fn port(engine: &'static str, read: &Argv, default: u16) -> Result<u16, MimicError> {
    read.last("--port").map_or(Ok(default), |p| number(engine, "--port", p, "a port"))
}

/// No bare argument where the engine takes none.
fn no_positionals(
    engine: &'static str,
    program: &'static str,
    read: &Argv,
    takes: &'static str,
) -> Result<(), MimicError> {
    match read.positionals.first() {
        Some(arg) => Err(MimicError::Unexpected { engine, program, arg: arg.clone(), takes }),
        None => Ok(()),
    }
}

/// vLLM's `--max-model-len`: a number, or with a `k`/`m` (×1000) or `K`/`M` (×1024) suffix.
fn context_length(flag: &str, value: &str) -> Result<u32, MimicError> {
    let (digits, scale) = match value.char_indices().last() {
        Some((i, 'k')) => (&value[..i], 1_000),
        Some((i, 'K')) => (&value[..i], 1_024),
        Some((i, 'm')) => (&value[..i], 1_000_000),
        Some((i, 'M')) => (&value[..i], 1_048_576),
        _ => (value, 1),
    };
    let what = "a context length";
    let n: u32 = number("vllm", flag, digits, what)?;
    n.checked_mul(scale).filter(|n| *n > 0).ok_or_else(|| bad("vllm", flag, value, what))
}

fn llama_cpp(argv: &[String], default_context: u32) -> Result<Served, MimicError> {
    let read = LLAMA_SERVER.read(argv)?;
    no_positionals("llama_cpp", "llama-server", &read, "the program")?;
    let root = read.last("--model").unwrap_or(DEFAULT_MODEL).to_string();
    // `--alias a,b`: several names; without one, llama-server names the model by its file.
    let mut models: Vec<String> =
        read.last("--alias").map(|a| a.split(',').map(str::trim).map(String::from).collect()).unwrap_or_default();
    if models.is_empty() {
        models.push(root.clone());
    }
    // `-c 0`, the default, takes the model's own context length: here the sim's.
    let context = match read.last("--ctx-size") {
        Some(c) => number::<u32>("llama_cpp", "--ctx-size", c, "a context size")?,
        None => 0,
    };
    let context = if context == 0 { default_context } else { context };
    Ok(Served {
        api: SimApi::Openai,
        host: read.last("--host").unwrap_or("127.0.0.1").to_string(),
        port: port("llama_cpp", &read, 8080)?,
        models,
        root,
        max_model_len: context,
        max_input_tokens: context.saturating_sub(1).max(1),
        parsed: read.flags,
        env: Vec::new(),
    })
}

fn vllm(argv: &[String], default_context: u32) -> Result<Served, MimicError> {
    // `vllm serve MODEL …` (the native command); the image's entrypoint already says `vllm serve`.
    let argv = argv.strip_prefix(&["serve".to_string()]).unwrap_or(argv);
    let read = VLLM_SERVE.read(argv)?;
    // One bare argument: the model (`model_tag`).
    if let Some(extra) = read.positionals.get(1) {
        return Err(MimicError::Unexpected {
            engine: "vllm",
            program: "vllm serve",
            arg: extra.clone(),
            takes: "the model",
        });
    }
    let root = read.last("--model").or(read.positionals.first().map(String::as_str)).unwrap_or(DEFAULT_MODEL);
    let root = root.to_string();
    let mut names = read.all("--served-model-name").map(<[String]>::to_vec).unwrap_or_default();
    if names.is_empty() {
        names.push(root.clone());
    }
    let context = match read.last("--max-model-len") {
        Some(value) => context_length("--max-model-len", value)?,
        None => default_context,
    };
    Ok(Served {
        api: SimApi::Openai,
        // vLLM's default host (none) listens on every interface.
        host: read.last("--host").unwrap_or("0.0.0.0").to_string(),
        port: port("vllm", &read, 8000)?,
        models: names,
        root,
        max_model_len: context,
        max_input_tokens: context.saturating_sub(1).max(1),
        parsed: read.flags,
        env: Vec::new(),
    })
}

fn tgi(argv: &[String], env: &dyn Fn(&str) -> Option<String>, default_context: u32) -> Result<Served, MimicError> {
    let read = TGI_LAUNCHER.read(argv)?;
    no_positionals("tgi", "text-generation-launcher", &read, "the program")?;
    // The launcher's clap reads each flag from its environment variable when the flag is absent.
    let read_env: Vec<(String, String)> =
        ["MODEL_ID", "PORT", "MAX_INPUT_TOKENS", "MAX_INPUT_LENGTH", "MAX_TOTAL_TOKENS"]
            .into_iter()
            .filter_map(|name| env(name).map(|v| (name.to_string(), v)))
            .collect();
    let from_env = |name: &str| read_env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let flag_or_env = |flag: &str, var: &str| read.last(flag).or_else(|| from_env(var));
    let port = match flag_or_env("--port", "PORT") {
        Some(p) => number("tgi", "--port", p, "a port")?,
        None => 3000,
    };
    let max_total = match flag_or_env("--max-total-tokens", "MAX_TOTAL_TOKENS") {
        Some(t) => number::<u32>("tgi", "--max-total-tokens", t, "a token count")?.max(2),
        None => default_context.max(2),
    };
    let max_input = flag_or_env("--max-input-tokens", "MAX_INPUT_TOKENS")
        .or_else(|| flag_or_env("--max-input-length", "MAX_INPUT_LENGTH"));
    // TGI's default input limit leaves room for one new token.
    let max_input = match max_input {
        Some(i) => number("tgi", "--max-input-tokens", i, "a token count")?,
        None => max_total - 1,
    };
    let model = flag_or_env("--model-id", "MODEL_ID").unwrap_or(DEFAULT_MODEL).to_string();
    let host = read.last("--hostname").unwrap_or("0.0.0.0").to_string();
    Ok(Served {
        api: SimApi::Tgi,
        host,
        port,
        models: vec![model.clone()],
        root: model,
        max_model_len: max_total,
        max_input_tokens: max_input,
        parsed: read.flags,
        env: read_env,
    })
}

fn ollama(argv: &[String], env: &dyn Fn(&str) -> Option<String>, context: u32) -> Result<Served, MimicError> {
    let rest = match argv {
        [] => &[][..],
        [serve, rest @ ..] if serve == "serve" => rest,
        [other, ..] => return Err(MimicError::OllamaCommand(other.clone())),
    };
    let read = OLLAMA_SERVE.read(rest)?;
    if let Some(extra) = read.positionals.first() {
        return Err(MimicError::OllamaCommand(format!("serve {extra}")));
    }
    let read_env: Vec<(String, String)> =
        OLLAMA_SERVE.env_names().filter_map(|name| env(name).map(|v| (name.to_string(), v))).collect();
    let host = read_env.iter().find(|(k, _)| k == "OLLAMA_HOST").map_or("", |(_, v)| v.as_str());
    let (host, port) = ollama_host(host);
    Ok(Served {
        api: SimApi::Ollama,
        host,
        port,
        models: Vec::new(),
        root: String::new(),
        max_model_len: context,
        max_input_tokens: context.saturating_sub(1).max(1),
        parsed: read.flags,
        env: read_env,
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
