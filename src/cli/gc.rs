//! `kitt gc`: stops the engine processes and removes the containers that a killed kitt left
//! behind. What it may touch is decided in `run::pidfile` and `docker::owner`; this file only
//! scopes the sweep and prints what it did.

use std::path::PathBuf;

use serde_json::json;

use super::{Output, print_json};
use crate::docker::{Scope, Sweep};

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Only the runs under this runs directory (also from $KITT_RUNS_DIR). Engine processes are
    /// always looked for under a runs directory (default ./.kitt/runs); containers are looked
    /// for on the whole Docker daemon unless a runs directory or a run is given.
    #[arg(long)]
    runs_dir: Option<PathBuf>,
    /// Only this run (its id): its engine processes and containers.
    #[arg(long)]
    run: Option<String>,
    /// Also remove the containers owned by kitt on another machine that shares this Docker
    /// daemon (listed first). Without it they are only counted: only their own machine can tell
    /// whether their kitt is alive.
    #[arg(long)]
    foreign: bool,
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

/// Which containers `args` reach.
fn scope(args: &GcArgs) -> Scope {
    if let Some(run) = &args.run {
        return Scope::Run(run.clone());
    }
    match args.runs_dir.clone().or_else(|| std::env::var_os("KITT_RUNS_DIR").map(PathBuf::from)) {
        Some(dir) => Scope::RunsDir(dir),
        None => Scope::All,
    }
}

pub fn gc(args: &GcArgs) -> i32 {
    let root = crate::run::dir::runs_root(args.runs_dir.as_deref());
    let stopped = crate::run::pidfile::sweep(&root, args.run.as_deref());
    let swept: Sweep = crate::docker::sweep(&scope(args), args.foreign);
    let code = if swept.failed.is_empty() { 0 } else { 1 };
    if args.output == Output::Json {
        print_json(&json!({"processes": stopped, "containers": swept}));
        return code;
    }
    for p in &stopped {
        println!("stopped {p}");
    }
    if args.foreign {
        for c in &swept.foreign {
            println!(
                "foreign container {} of run {}: kitt pid {} on machine {} (Docker host {})",
                c.name, c.run, c.pid, c.machine, c.docker_host
            );
        }
    }
    for c in &swept.removed {
        println!("removed container {} ({})", c.name, c.reason);
    }
    for c in &swept.failed {
        eprintln!("cannot remove container {} ({}): {}", c.name, c.reason, c.error.as_deref().unwrap_or("?"));
    }
    if !args.foreign && !swept.foreign.is_empty() {
        let names: Vec<&str> = swept.foreign.iter().map(|c| c.name.as_str()).collect();
        eprintln!(
            "left {} container(s) owned by kitt on another machine ({}): only that machine can tell whether \
             their kitt is alive; `kitt gc --foreign` lists and removes them",
            names.len(),
            names.join(", ")
        );
    }
    if stopped.is_empty() && swept.removed.is_empty() && swept.failed.is_empty() && swept.foreign.is_empty() {
        eprintln!("nothing to clean up");
    }
    code
}
