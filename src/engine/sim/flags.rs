//! The flag tables of the engines `--mimic` imitates, and the reading of an engine argv against one.
//!
//! Owns the tables (data in `flags/*.txt`, each saying which engine version and which command or
//! documentation it came from) and the argv reader; never what a flag means to the simulator, which
//! is `mimic`'s. A flag missing from its engine's table is an error, as the engine's own parser makes
//! it one at startup: a template that passed an unknown flag would fail on the real engine while the
//! simulator served on. Presence is not use, so every flag read is reported with its values
//! ([`Parsed`]), for a test to compare with what the template rendered.

use std::sync::LazyLock;

use super::mimic::MimicError;

/// How many values a flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arity {
    Zero,
    One,
    Two,
    /// argparse's `nargs="?"`: a value when the next argument is one.
    Optional,
    /// argparse's `nargs="+"`: every value up to the next flag.
    Many,
}

/// One line of a table: a flag's names and its arity.
#[derive(Debug)]
struct Spec {
    names: Vec<&'static str>,
    arity: Arity,
}

impl Spec {
    /// The name a flag is reported under: its first long name, else its first name.
    fn canonical(&self) -> &'static str {
        self.names.iter().find(|n| n.starts_with("--")).unwrap_or(&self.names[0])
    }
}

/// An engine's flags, as its own command line takes them.
#[derive(Debug)]
pub(super) struct Table {
    /// The `--mimic` value, for messages.
    engine: &'static str,
    /// The engine's program, for messages (`vllm serve`).
    program: &'static str,
    specs: Vec<Spec>,
    /// vLLM's parser takes `--max_model_len` for `--max-model-len`.
    underscores: bool,
}

fn parse_table(
    engine: &'static str,
    program: &'static str,
    underscores: bool,
    text: &'static str,
) -> Result<Table, String> {
    let mut specs = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#')) {
        let mut words: Vec<&'static str> = line.split_whitespace().collect();
        let arity = match words.pop() {
            Some("0") => Arity::Zero,
            Some("1") => Arity::One,
            Some("2") => Arity::Two,
            Some("?") => Arity::Optional,
            Some("+") => Arity::Many,
            other => return Err(format!("{engine} table line {}: arity {other:?} is not 0, 1, 2, ? or +", n + 1)),
        };
        if words.is_empty() {
            return Err(format!("{engine} table line {}: no flag names", n + 1));
        }
        specs.push(Spec { names: words, arity });
    }
    Ok(Table { engine, program, specs, underscores })
}

macro_rules! table {
    ($engine:literal, $program:literal, $underscores:literal, $file:literal) => {
        // The tables are embedded; `every_table_parses` proves each one parses.
        LazyLock::new(|| {
            parse_table($engine, $program, $underscores, include_str!($file)).expect("embedded flag table parses")
        })
    };
}

pub(super) static LLAMA_SERVER: LazyLock<Table> = table!("llama_cpp", "llama-server", false, "flags/llama-server.txt");
pub(super) static VLLM_SERVE: LazyLock<Table> = table!("vllm", "vllm serve", true, "flags/vllm-serve.txt");
pub(super) static TGI_LAUNCHER: LazyLock<Table> =
    table!("tgi", "text-generation-launcher", false, "flags/text-generation-launcher.txt");
pub(super) static OLLAMA_SERVE: LazyLock<Table> = table!("ollama", "ollama serve", false, "flags/ollama-serve.txt");

/// One flag of an engine argv, as the engine understood it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Parsed {
    /// The flag's long name in the engine's table (`--ctx-size` for `-c`).
    pub flag: String,
    /// The name as the argv wrote it (`-c`, `--max_model_len`).
    pub given: String,
    /// Its values, as given.
    pub values: Vec<String>,
}

/// An argv read against a table: its flags and its bare arguments, in order.
#[derive(Debug, Default)]
pub(super) struct Argv {
    pub flags: Vec<Parsed>,
    pub positionals: Vec<String>,
}

impl Argv {
    /// The last value of `flag` (its canonical name), as argparse and clap keep the last one given.
    pub fn last(&self, flag: &str) -> Option<&str> {
        self.flags.iter().rev().find(|p| p.flag == flag).and_then(|p| p.values.last()).map(String::as_str)
    }

    /// Every value of the last `flag` given.
    pub fn all(&self, flag: &str) -> Option<&[String]> {
        self.flags.iter().rev().find(|p| p.flag == flag).map(|p| p.values.as_slice())
    }
}

/// An argument that can be a flag's value: not a flag itself, though a negative number is a value.
fn is_value(arg: &str) -> bool {
    !arg.starts_with('-') || arg == "-" || arg.parse::<f64>().is_ok()
}

impl Table {
    fn lookup(&self, name: &str) -> Option<&Spec> {
        self.specs.iter().find(|s| s.names.contains(&name))
    }

    /// The environment variables in the table (names not starting with `-`), in table order.
    pub fn env_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.specs.iter().flat_map(|s| s.names.iter().copied()).filter(|n| !n.starts_with('-'))
    }

    /// Reads `argv` as the engine's parser would: `--flag value`, `--flag=value`, the arity each flag
    /// has in the table; a flag the table lacks is an error naming it.
    pub fn read(&self, argv: &[String]) -> Result<Argv, MimicError> {
        let mut out = Argv::default();
        let mut at = 0;
        while let Some(arg) = argv.get(at) {
            at += 1;
            if is_value(arg) {
                out.positionals.push(arg.clone());
                continue;
            }
            let (given, inline) = match arg.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (arg.as_str(), None),
            };
            let name = match (self.underscores, given.strip_prefix("--")) {
                (true, Some(long)) => format!("--{}", long.replace('_', "-")),
                _ => given.to_string(),
            };
            let spec = self.lookup(&name).ok_or_else(|| MimicError::UnknownFlag {
                engine: self.engine,
                program: self.program,
                flag: given.to_string(),
            })?;
            let missing = || MimicError::MissingValue { engine: self.engine, flag: given.to_string() };
            let mut values: Vec<String> = inline.map(String::from).into_iter().collect();
            let wanted = match (spec.arity, inline.is_some()) {
                (Arity::Zero, true) => return Err(MimicError::NoValue { engine: self.engine, flag: given.into() }),
                (Arity::Zero, false) | (Arity::One | Arity::Optional, true) => 0,
                (Arity::One, false) => 1,
                (Arity::Two, _) => 2 - values.len(),
                (Arity::Optional, false) => usize::from(argv.get(at).is_some_and(|a| is_value(a))),
                (Arity::Many, _) => argv[at..].iter().take_while(|a| is_value(a)).count().max(1 - values.len()),
            };
            for _ in 0..wanted {
                let value = argv.get(at).filter(|a| is_value(a)).ok_or_else(missing)?;
                values.push(value.clone());
                at += 1;
            }
            out.flags.push(Parsed { flag: spec.canonical().to_string(), given: given.to_string(), values });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn every_table_parses() {
        for table in [&*LLAMA_SERVER, &*VLLM_SERVE, &*TGI_LAUNCHER, &*OLLAMA_SERVE] {
            assert!(table.specs.len() > 10, "{}: {} flags", table.engine, table.specs.len());
        }
        assert!(parse_table("x", "x", false, "--a 3\n").is_err());
        assert!(parse_table("x", "x", false, "1\n").is_err());
    }

    #[test]
    fn an_argv_is_read_with_each_flags_arity() {
        let read = LLAMA_SERVER.read(&argv("-c 512 --metrics -ngl=-1 --control-vector-layer-range 1 4 -s -3")).unwrap();
        let flags: Vec<_> =
            read.flags.iter().map(|p| (p.flag.as_str(), p.given.as_str(), p.values.join(" "))).collect();
        assert_eq!(
            flags,
            [
                ("--ctx-size", "-c", "512".to_string()),
                ("--metrics", "--metrics", String::new()),
                ("--gpu-layers", "-ngl", "-1".into()),
                ("--control-vector-layer-range", "--control-vector-layer-range", "1 4".into()),
                ("--seed", "-s", "-3".into()),
            ]
        );
        let vllm =
            VLLM_SERVE.read(&argv("m --served-model-name a b --max_model_len 8 --enable-chunked-prefill")).unwrap();
        assert_eq!(vllm.positionals, ["m"]);
        assert_eq!(vllm.all("--served-model-name").unwrap(), ["a", "b"]);
        assert_eq!(vllm.last("--max-model-len"), Some("8"));
        assert_eq!(vllm.all("--enable-chunked-prefill").unwrap(), [] as [String; 0]);
    }

    #[test]
    fn a_flag_the_engine_lacks_or_a_missing_value_is_refused() {
        let error = LLAMA_SERVER.read(&argv("-c 512 --max-model-len 9")).unwrap_err().to_string();
        assert_eq!(
            error,
            "--mimic llama_cpp: `--max-model-len` is not a flag of `llama-server` (see `llama-server --help`); \
             drop it or fix its spelling"
        );
        // llama.cpp's parser does not take vLLM's underscores.
        assert!(LLAMA_SERVER.read(&argv("--ctx_size 512")).is_err());
        let error = TGI_LAUNCHER.read(&argv("--port --hostname h")).unwrap_err().to_string();
        assert_eq!(error, "--mimic tgi: `--port` needs a value");
        let error = TGI_LAUNCHER.read(&argv("--trust-remote-code=yes")).unwrap_err().to_string();
        assert_eq!(error, "--mimic tgi: `--trust-remote-code` takes no value");
    }
}
