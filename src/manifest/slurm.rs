//! `execution.slurm`: what a Slurm array job of a run asks the cluster for.
//!
//! Owns decoding and checking the block; building the `sbatch` argv from it lives in
//! `plan::sbatch`. Every value here ends up as one argv element of `sbatch` (never a shell
//! string), so the checks are about Slurm's meaning, not quoting: names are plain words, a time
//! is one Slurm accepts, and `extra` may add flags but never one that kitt sets itself (a job
//! array, its log paths, its environment, its requeue and signal) — nor an abbreviation of one,
//! since `sbatch` takes any unambiguous prefix of a long option.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Serialize;

use super::decode::{Cx, Decode, Fields, Spanned};
use super::diag::Diagnostic;
use super::yaml::{Node, Value};

/// Flags kitt sets on every `sbatch` it builds (or must not be changed: `export` keeps the login
/// node's environment, and its secrets, out of Slurm's state directory).
pub const OWNED_FLAGS: &[&str] = &[
    "array",
    "dependency",
    "output",
    "error",
    "wrap",
    "export",
    "export-file",
    "chdir",
    "job-name",
    "comment",
    "requeue",
    "no-requeue",
    "signal",
    "parsable",
];

/// Short forms of owned flags, with their long names.
const OWNED_SHORT: &[(&str, &str)] =
    &[("a", "array"), ("d", "dependency"), ("o", "output"), ("e", "error"), ("D", "chdir"), ("J", "job-name")];

/// Flags that have a key of their own in `execution.slurm`.
const KEYED_FLAGS: &[&str] = &["partition", "gres", "time", "account", "constraint"];

/// What the run's array jobs ask Slurm for. Placement only: none of it enters a step's key.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Slurm {
    /// The partition (`--partition`).
    #[schemars(with = "SlurmName")]
    pub partition: Spanned<String>,
    /// Generic resources per array task, `name[:type]:count` (`gpu:1`, `gpu:h100:4`); none when
    /// absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<GresSchema>")]
    pub gres: Option<Spanned<String>>,
    /// Time limit per array task: a Slurm time (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`,
    /// `D-HH:MM:SS`) or a duration (`2h`, `90m`, `1h 30m`), passed to Slurm as `HH:MM:SS` or
    /// `D-HH:MM:SS`. Longer than 2 minutes: kitt asks for SIGTERM 120 s before it.
    #[schemars(with = "SlurmTimeSchema")]
    pub time: Spanned<String>,
    /// The account to charge (`--account`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<SlurmName>")]
    pub account: Option<Spanned<String>>,
    /// One node feature (`--constraint`), such as `h100`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<SlurmName>")]
    pub constraint: Option<Spanned<String>>,
    /// Most array tasks running at once (`--array=0-N%max_jobs`); no limit when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub max_jobs: Option<Spanned<u32>>,
    /// An absolute directory every node sees (NFS, Lustre): runs live under it.
    #[schemars(with = "String", regex(pattern = r"^/"))]
    pub shared_dir: Spanned<PathBuf>,
    /// More `sbatch` flags, each `--flag` or `--flag=value` (`--qos=bench`); never one kitt sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<ExtraFlag>")]
    pub extra: Vec<Spanned<String>>,
    /// The host lock's path on a node (absolute, node-local): the file that keeps two units'
    /// measurements on one node apart. Set it where a job's `/tmp` is private to the job (Slurm's
    /// `job_container/tmpfs`), which would give each job a lock of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", regex(pattern = r"^/"))]
    pub host_lock: Option<Spanned<PathBuf>>,
    /// A file on the nodes (absolute; mode 0600) of `NAME=VALUE` lines where `{from_env: NAME}`
    /// values are read when a node's environment lacks them. Secrets never go through Slurm,
    /// which keeps every job's script and environment in its state directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", regex(pattern = r"^/"))]
    pub secrets_file: Option<Spanned<PathBuf>>,
}

impl Decode for Slurm {
    fn decode(node: &Node, cx: &mut Cx, _: &str) -> Option<Self> {
        let mut f = Fields::open(node, cx, "`execution.slurm`")?;
        let partition: Option<Spanned<String>> = f.req(cx, "partition");
        let gres: Option<Spanned<String>> = f.opt(cx, "gres");
        let time = time_field(&mut f, cx, node);
        let account: Option<Spanned<String>> = f.opt(cx, "account");
        let constraint: Option<Spanned<String>> = f.opt(cx, "constraint");
        let max_jobs: Option<Spanned<u32>> = f.opt(cx, "max_jobs");
        let shared_dir: Option<Spanned<String>> = f.req(cx, "shared_dir");
        let extra: Vec<Spanned<String>> = f.opt(cx, "extra").unwrap_or_default();
        let host_lock: Option<Spanned<String>> = f.opt(cx, "host_lock");
        let secrets_file: Option<Spanned<String>> = f.opt(cx, "secrets_file");
        f.finish(cx);
        let mut ok = true;
        for (key, v) in [("partition", &partition), ("account", &account), ("constraint", &constraint)] {
            if let Some(v) = v {
                ok &= check_name(cx, "`execution.slurm`", key, v);
            }
        }
        if let Some(g) = &gres {
            ok &= check_gres(cx, "`execution.slurm`", g);
        }
        if let Some(m) = max_jobs.as_ref().filter(|m| m.value == 0) {
            cx.error(
                Diagnostic::new(m.pos, "`max_jobs` in `execution.slurm` must be at least 1")
                    .help("write how many array tasks may run at once, or leave `max_jobs` out for no limit"),
            );
            ok = false;
        }
        if let Some(d) = shared_dir.as_ref().filter(|d| !d.value.starts_with('/')) {
            cx.error(
                Diagnostic::new(d.pos, format!("`shared_dir` in `execution.slurm`: `{}` is not absolute", d.value))
                    .help("write the absolute path of a directory every node mounts, such as `/lustre/team/kitt-runs`"),
            );
            ok = false;
        }
        if let Some(d) = shared_dir.as_ref().filter(|d| d.value.contains(|c: char| c == '%' || c.is_control())) {
            cx.error(
                Diagnostic::new(
                    d.pos,
                    format!(
                        "`shared_dir` in `execution.slurm`: `{}` has a `%` or a control character",
                        d.value.escape_debug()
                    ),
                )
                .help("Slurm expands `%` in a job's log path: pick a directory whose path has neither"),
            );
            ok = false;
        }
        for e in &extra {
            ok &= check_extra(cx, e);
        }
        for (key, v, example) in [
            ("host_lock", &host_lock, "a file on the node's own disk, such as `/var/lock/kitt-host.lock`"),
            ("secrets_file", &secrets_file, "a 0600 file every node sees, such as `/home/me/.kitt/secrets`"),
        ] {
            if let Some(h) = v.as_ref().filter(|h| !h.value.starts_with('/') || h.value.ends_with('/')) {
                cx.error(
                    Diagnostic::new(
                        h.pos,
                        format!("`{key}` in `execution.slurm`: `{}` is not an absolute file path", h.value),
                    )
                    .help(format!("write the absolute path of {example}")),
                );
                ok = false;
            }
        }
        let slurm = Slurm {
            partition: partition?,
            gres,
            time: time?,
            account,
            constraint,
            max_jobs,
            shared_dir: shared_dir.map(|d| Spanned::new(d.pos, PathBuf::from(d.value)))?,
            extra,
            host_lock: host_lock.map(|h| Spanned::new(h.pos, PathBuf::from(h.value))),
            secrets_file: secrets_file.map(|h| Spanned::new(h.pos, PathBuf::from(h.value))),
        };
        ok.then_some(slurm)
    }
}

/// What one engine's units ask Slurm for instead of `execution.slurm`'s values (`engines[].slurm`):
/// units of different shapes are different array jobs. Placement only: never in a step's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlurmShape {
    /// Generic resources per task for this engine's units (`gpu:4`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<GresSchema>")]
    pub gres: Option<String>,
    /// One node feature for this engine's units (`h100`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<SlurmName>")]
    pub constraint: Option<String>,
    /// Time limit per task for this engine's units (same forms as `execution.slurm.time`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<SlurmTimeSchema>")]
    pub time: Option<String>,
}

impl Decode for SlurmShape {
    fn decode(node: &Node, cx: &mut Cx, what: &str) -> Option<Self> {
        let block = what.to_string();
        let mut f = Fields::open(node, cx, &block)?;
        let gres: Option<Spanned<String>> = f.opt(cx, "gres");
        let constraint: Option<Spanned<String>> = f.opt(cx, "constraint");
        let time = f.node("time").cloned();
        f.finish(cx);
        let mut ok = true;
        if let Some(g) = &gres {
            ok &= check_gres(cx, &block, g);
        }
        if let Some(c) = &constraint {
            ok &= check_name(cx, &block, "constraint", c);
        }
        let time = match time {
            Some(t) => {
                let v = time_value(cx, &t, &block);
                ok &= v.is_some();
                v
            }
            None => None,
        };
        ok.then(|| SlurmShape {
            gres: gres.map(|g| g.value),
            constraint: constraint.map(|c| c.value),
            time: time.map(|t| t.value),
        })
    }
}

/// `time`, required, normalized to Slurm's form.
fn time_field(f: &mut Fields, cx: &mut Cx, block: &Node) -> Option<Spanned<String>> {
    let Some(node) = f.node("time").filter(|n| n.value != Value::Null).cloned() else {
        cx.error(
            Diagnostic::new(block.pos, "missing key `time` in `execution.slurm`")
                .help("add `time:`, the limit of each array task, such as `time: 2h`"),
        );
        return None;
    };
    time_value(cx, &node, "`execution.slurm`")
}

/// A Slurm time of `node`, normalized (`HH:MM:SS` or `D-HH:MM:SS`), more than 2 minutes.
fn time_value(cx: &mut Cx, node: &Node, block: &str) -> Option<Spanned<String>> {
    let text = match &node.value {
        Value::Str(s) => s.trim().to_string(),
        Value::Int(i) => i.to_string(),
        _ => {
            cx.mismatch(node, "a time such as `2h` or `02:00:00`", &format!("`time` in {block}"));
            return None;
        }
    };
    match slurm_time(&text) {
        Ok(secs) if secs > 120 => Some(Spanned::new(node.pos, format_slurm_time(secs))),
        Ok(_) => {
            cx.error(
                Diagnostic::new(node.pos, format!("`time` in {block}: `{text}` is 2 minutes or less"))
                    .help("kitt asks Slurm for SIGTERM 120 s before the limit: give each task more, such as `2h`"),
            );
            None
        }
        Err(why) => {
            cx.error(
                Diagnostic::new(node.pos, format!("`time` in {block}: `{text}` is not a Slurm time ({why})"))
                    .help("write `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`, or a duration like `2h` or `90m`"),
            );
            None
        }
    }
}

/// Seconds of a Slurm time (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`) or of a
/// duration (`2h`, `90m`, `1h 30m`, whole seconds).
pub fn slurm_time(text: &str) -> Result<u64, String> {
    if text.is_empty() {
        return Err("it is empty".into());
    }
    if text.chars().all(|c| c.is_ascii_digit() || c == ':' || c == '-') {
        return clock_time(text);
    }
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d.subsec_nanos() != 0 {
        return Err("Slurm counts whole seconds".into());
    }
    Ok(d.as_secs())
}

fn clock_time(text: &str) -> Result<u64, String> {
    let number = |s: &str| -> Result<u64, String> {
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) || s.len() > 9 {
            return Err(format!("`{s}` is not a number"));
        }
        s.parse::<u64>().map_err(|e| e.to_string())
    };
    let bounded = |s: &str, max: u64, unit: &str| -> Result<u64, String> {
        let n = number(s)?;
        if n > max { Err(format!("{unit} {n} is over {max}")) } else { Ok(n) }
    };
    let (days, rest) = match text.split_once('-') {
        Some((d, rest)) => (Some(number(d)?), rest),
        None => (None, text),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    Ok(match (days, parts.as_slice()) {
        (None, [m]) => number(m)? * 60,
        (None, [m, s]) => number(m)? * 60 + bounded(s, 59, "seconds")?,
        (None, [h, m, s]) => number(h)? * 3600 + bounded(m, 59, "minutes")? * 60 + bounded(s, 59, "seconds")?,
        (Some(d), [h]) => d * 86400 + bounded(h, 23, "hours")? * 3600,
        (Some(d), [h, m]) => d * 86400 + bounded(h, 23, "hours")? * 3600 + bounded(m, 59, "minutes")? * 60,
        (Some(d), [h, m, s]) => {
            d * 86400 + bounded(h, 23, "hours")? * 3600 + bounded(m, 59, "minutes")? * 60 + bounded(s, 59, "seconds")?
        }
        _ => return Err("too many fields".into()),
    })
}

/// `HH:MM:SS`, or `D-HH:MM:SS` from one day on.
pub fn format_slurm_time(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 { format!("{d}-{h:02}:{m:02}:{s:02}") } else { format!("{h:02}:{m:02}:{s:02}") }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn check_name(cx: &mut Cx, block: &str, key: &str, v: &Spanned<String>) -> bool {
    if is_name(&v.value) {
        return true;
    }
    cx.error(
        Diagnostic::new(v.pos, format!("`{key}` in {block}: `{}` is not a Slurm name", v.value))
            .help("write one name of letters, digits, `_`, `.` or `-`, such as `gpu`"),
    );
    false
}

fn check_gres(cx: &mut Cx, block: &str, g: &Spanned<String>) -> bool {
    let parts: Vec<&str> = g.value.split(':').collect();
    let (names, count) = parts.split_at(parts.len() - 1);
    let problem = if names.is_empty() {
        Some("it has no count".to_string())
    } else if names.len() > 2 {
        Some("it has too many `:`".to_string())
    } else if !names.iter().all(|p| is_name(p)) {
        Some("its name and type are letters, digits, `_`, `.` or `-`".to_string())
    } else {
        let digits = !count[0].is_empty() && count[0].bytes().all(|b| b.is_ascii_digit());
        match count[0].parse::<u64>() {
            Ok(0) if digits => Some("the count must be at least 1".to_string()),
            Ok(_) if digits => None,
            _ => Some(format!("`{}` is not a count", count[0])),
        }
    };
    let Some(problem) = problem else { return true };
    cx.error(
        Diagnostic::new(g.pos, format!("`gres` in {block}: `{}` is not `name[:type]:count` ({problem})", g.value))
            .help("write one resource with a count, such as `gpu:1` or `gpu:h100:4`"),
    );
    false
}

fn check_extra(cx: &mut Cx, e: &Spanned<String>) -> bool {
    let item = e.value.as_str();
    let bad = |cx: &mut Cx, message: String, help: String| {
        cx.error(Diagnostic::new(e.pos, format!("`extra` in `execution.slurm`: {message}")).help(help));
        false
    };
    if let Some(short) = item.strip_prefix('-').filter(|s| !s.starts_with('-')) {
        let letter = short.get(..1).unwrap_or_default();
        if let Some((_, long)) = OWNED_SHORT.iter().find(|(s, _)| *s == letter) {
            return bad(
                cx,
                format!("`{item}` sets `--{long}`, which kitt sets itself"),
                "remove it: kitt builds the job array, its logs and its environment".into(),
            );
        }
    }
    let Some(body) = item.strip_prefix("--") else {
        return bad(
            cx,
            format!("`{item}` is not `--flag` or `--flag=value`"),
            "write each flag as one item in its long form, such as `--qos=bench`".into(),
        );
    };
    let (flag, value) = match body.split_once('=') {
        Some((f, v)) => (f, Some(v)),
        None => (body, None),
    };
    let flag_ok = !flag.is_empty()
        && flag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && flag.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !flag_ok || value.is_some_and(|v| v.chars().any(char::is_control)) {
        return bad(
            cx,
            format!("`{item}` is not `--flag` or `--flag=value`"),
            "write each flag as one item in its long form, with `=` before its value: `--qos=bench`".into(),
        );
    }
    // sbatch takes any unambiguous prefix of a long option: `--arr` is `--array`.
    if let Some(owned) = OWNED_FLAGS.iter().find(|o| o.starts_with(flag)) {
        return bad(
            cx,
            format!("`{item}` sets `--{owned}`, which kitt sets itself"),
            "remove it: kitt builds the job array, its logs, its environment, requeue and signal".into(),
        );
    }
    if let Some(keyed) = KEYED_FLAGS.iter().find(|k| k.starts_with(flag)) {
        return bad(
            cx,
            format!("`{item}` sets `--{keyed}`, which has its own key"),
            format!("write `{keyed}:` in `execution.slurm` instead"),
        );
    }
    true
}

/// A Slurm name in the JSON Schema.
struct SlurmName;
impl JsonSchema for SlurmName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SlurmName".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"})
    }
}

struct GresSchema;
impl JsonSchema for GresSchema {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SlurmGres".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`name[:type]:count` with a count of at least 1: `gpu:1`, `gpu:h100:4`.",
            "type": "string",
            "pattern": "^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?:0*[1-9][0-9]*$"
        })
    }
}

struct SlurmTimeSchema;
impl JsonSchema for SlurmTimeSchema {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SlurmTime".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A Slurm time (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`) or a duration (`2h`, `90m`).",
            "anyOf": [
                {"type": "string", "pattern": "^\\s*(([0-9]+-)?[0-9]+(:[0-9]+){0,2}|([0-9]+\\s*(s|m|h|d|sec|min|hour|hours|days|secs|mins)\\s*)+)\\s*$"},
                {"type": "integer", "minimum": 3}
            ]
        })
    }
}

struct ExtraFlag;
impl JsonSchema for ExtraFlag {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SbatchFlag".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Every prefix of a flag kitt sets or has a key for, since sbatch takes abbreviations.
        let mut prefixes: Vec<&str> =
            OWNED_FLAGS.iter().chain(KEYED_FLAGS).flat_map(|f| (1..=f.len()).map(move |n| &f[..n])).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        let pattern = format!("^--(?!(?:{})(?:=|$))[A-Za-z0-9][A-Za-z0-9-]*(=.*)?$", prefixes.join("|"));
        schemars::json_schema!({
            "description": "`--flag` or `--flag=value`; never a flag kitt sets (array, dependency, output, error, wrap, export, chdir, job-name, comment, requeue, signal) or one with a key of its own.",
            "type": "string",
            "pattern": pattern
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        for (text, want) in [
            ("90", "01:30:00"),
            ("90:30", "01:30:30"),
            ("02:00:00", "02:00:00"),
            ("1-12", "1-12:00:00"),
            ("1-12:30", "1-12:30:00"),
            ("2-00:00:05", "2-00:00:05"),
            ("2h", "02:00:00"),
            ("90m", "01:30:00"),
            ("1h 30m", "01:30:00"),
            ("36h", "1-12:00:00"),
        ] {
            assert_eq!(slurm_time(text).map(format_slurm_time).as_deref(), Ok(want), "{text}");
        }
        for bad in ["", "1:2:3:4", "1-24", "10:60", "1-2:3:4:5", "a:b", "1.5s", "soon", "-5"] {
            assert!(slurm_time(bad).is_err(), "{bad} accepted");
        }
    }
}
