//! `kitt fingerprint`: the machine, as results record it.
//!
//! Text prints the identity string alone (for `$(kitt fingerprint)`); `-v` prints every field;
//! `--output json` prints the whole [`Fingerprint`] (schemas/fingerprint.schema.json). The
//! Docker daemon is asked only when its answer is shown (`-v` or JSON), with a deadline.

use std::time::Duration;

use super::{Output, print_json};
use crate::fingerprint::{Fingerprint, Hardware};

/// How long the Docker daemon has to answer.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub struct FingerprintArgs {
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Do not ask the Docker daemon for its version and runtimes.
    #[arg(long)]
    pub no_docker: bool,
}

pub fn fingerprint(args: &FingerprintArgs, verbose: bool) -> i32 {
    let mut fp = Fingerprint::detect();
    if !args.no_docker && (verbose || args.output == Output::Json) {
        fp.probe_docker(DOCKER_TIMEOUT);
    }
    match args.output {
        Output::Json => print_json(&fp),
        Output::Text if verbose => print!("{}", details(&fp)),
        Output::Text => println!("{}", fp.identity),
    }
    0
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn or_dash(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

/// Every field, one per line.
fn details(fp: &Fingerprint) -> String {
    let Hardware { environment, gpus, driver_version, cuda_version, cpu, memory, storage, os, system } = &fp.hardware;
    let mut rows: Vec<(String, String)> = vec![
        ("identity".into(), fp.identity.clone()),
        ("hash".into(), fp.hash.clone()),
        ("environment".into(), environment.name().into()),
    ];
    if gpus.is_empty() {
        rows.push(("gpus".into(), "none".into()));
    }
    for (i, g) in gpus.iter().enumerate() {
        let memory = g.memory_bytes.map(gib).unwrap_or_else(|| "memory unknown".into());
        let unified = if g.unified_memory { " (unified with system memory)" } else { "" };
        let cc = g.compute_capability.as_deref().map(|c| format!(", compute capability {c}")).unwrap_or_default();
        rows.push((format!("gpu {i}"), format!("{}, {memory}{unified}{cc}", g.name)));
    }
    if let Some(note) = &fp.gpu_note {
        rows.push(("gpu note".into(), note.clone()));
    }
    rows.push(("driver".into(), or_dash(driver_version.as_deref()).into()));
    rows.push(("cuda".into(), or_dash(cuda_version.as_deref()).into()));
    rows.push((
        "cpu".into(),
        format!(
            "{} ({}), {} socket(s), {} cores, {} threads",
            cpu.model, cpu.architecture, cpu.sockets, cpu.physical_cores, cpu.logical_cores
        ),
    ));
    rows.push(("cpu flags".into(), if cpu.flags.is_empty() { "-".into() } else { cpu.flags.join(" ") }));
    let speed = memory.speed_mts.map(|s| format!(", {s} MT/s")).unwrap_or_default();
    rows.push(("memory".into(), format!("{}, type {}{speed}", gib(memory.total_bytes), memory.kind)));
    let vendor = storage.vendor.as_deref().map(|v| format!("{v} ")).unwrap_or_default();
    rows.push((
        "storage".into(),
        format!("{}: {vendor}{}, {}, {}", storage.device, storage.model, storage.kind.name(), gib(storage.size_bytes)),
    ));
    rows.push(("os".into(), format!("{}, kernel {}", os.name, os.kernel)));
    rows.push(("system".into(), or_dash(system.as_deref()).into()));
    if let Some(d) = &fp.docker {
        let text = match (&d.server_version, &d.note) {
            (Some(v), _) => format!("{v}, nvidia runtime: {}", if d.nvidia_runtime { "yes" } else { "no" }),
            (None, Some(note)) => note.clone(),
            (None, None) => "-".into(),
        };
        rows.push(("docker".into(), text));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.into_iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
}
