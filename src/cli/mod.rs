//! The command line: clap definitions, output formatting, and the one place errors are rendered.
//!
//! Data goes to stdout (text or `--output json`), diagnostics and progress to stderr. Exit codes:
//! 0 success, 1 failed run or invalid input, 2 usage error, 3 a `kitt compare --fail-if` threshold
//! failed, 130 interrupted.

mod agent;
pub mod apply;
pub(crate) mod compare;
mod engines;
pub mod fingerprint;
mod gc;
pub(crate) mod remote;
pub(crate) mod results;
pub(crate) mod runs;
pub mod serve;
mod settings;
mod work;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::catalog::{self, Catalog};
use crate::manifest::diag::Diagnostic;
use crate::manifest::{self, Kind};
use crate::plan::{self, render};

/// Exit code of a run that failed or of invalid input.
pub const EXIT_FAILED: i32 = 1;
/// Exit code of a usage error.
pub const EXIT_USAGE: i32 = 2;
/// Exit code after Ctrl-C or SIGTERM.
pub const EXIT_INTERRUPTED: i32 = 130;
/// Exit code of a `kitt work` attempt whose claim was taken from it (it committed nothing more).
pub const EXIT_LOST_CLAIM: i32 = 3;

#[derive(Debug, Parser)]
#[command(name = "kitt", version, about = "Declarative test harness for LLM inference engines")]
pub struct Cli {
    /// Less output (no progress display).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The Docker context for container engines (DOCKER_HOST and DOCKER_CONTEXT work too).
    #[arg(long, global = true, env = "KITT_DOCKER_CONTEXT")]
    pub docker_context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum PlanOutput {
    #[default]
    Text,
    Json,
    Dot,
    /// The `sbatch` argv and job script of each array job (needs `execution.slurm`); nothing is
    /// submitted.
    Sbatch,
    /// The same as JSON.
    SbatchJson,
    /// The Kubernetes objects of a run (needs `execution.kubernetes`): ServiceAccount, Role,
    /// RoleBinding, and per engine group a units ConfigMap and an Indexed Job, as YAML
    /// documents; nothing is applied.
    K8s,
    /// The same as a JSON `List`.
    K8sJson,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests (suites and templates): every error, with file:line:column.
    Validate {
        /// Manifest files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show what `apply` would run: the step graph with keys; nothing is executed.
    Plan {
        suite: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        output: PlanOutput,
        /// Where runs live, to mark the steps an unfinished run would reuse.
        #[arg(long)]
        runs_dir: Option<PathBuf>,
        /// Show the units the plan is cut into (what an executor places), their steps and what
        /// each needs, instead of the step graph (text or json).
        #[arg(long)]
        units: bool,
    },
    /// Run a suite (or resume its unfinished run): start engines, benchmark, report.
    Apply {
        suite: PathBuf,
        #[command(flatten)]
        flags: apply::RunFlags,
        #[command(flatten)]
        placement: apply::PlacementFlags,
        /// Run the suite on a `kitt serve` instead (its URL): the suite and its suite-local
        /// templates are uploaded as a bundle, under the `run` token in $KITT_SERVER_TOKEN; the
        /// run lives on the server (which needs --allow-suite-upload).
        #[arg(long, value_name = "URL", conflicts_with_all = ["resume", "runs_dir", "store", "executor", "detach"])]
        server: Option<String>,
        /// A CA to trust for --server (a server's `--tls-self-signed` ca.pem).
        #[arg(long, value_name = "FILE", requires = "server")]
        server_ca: Option<PathBuf>,
    },
    /// Run one unit of an existing run (its uncommitted steps): what executors place. Exits 0
    /// done, 1 failed or refused, 130 cancelled, 3 lost its claim.
    Work {
        /// The run directory (`.kitt/runs/RUN`), created by `kitt apply`.
        #[arg(long)]
        run_dir: PathBuf,
        /// The unit's id (`kitt plan SUITE --units` lists them).
        #[arg(long, required_unless_present = "unit_file", conflicts_with = "unit_file")]
        unit: Option<String>,
        /// A file holding the unit's id (a Kubernetes pod's units list entry for its index).
        #[arg(long, value_name = "FILE")]
        unit_file: Option<PathBuf>,
        /// Where no driver judges leases (a Kubernetes retry pod): an earlier attempt held on
        /// another machine whose lease does not move for a whole lease is marked expired, and
        /// this attempt takes the unit.
        #[arg(long)]
        take_over_silent: bool,
        /// The run directory is a `kitt agent`'s copy of a run on a server: its suite (a copy
        /// beside it) must give the server's plan.json unit for unit and key for key, though
        /// the plan names other paths.
        #[arg(long, hide = true)]
        agent_copy: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Run a ready suite on one model and engine given as flags (a suite built in memory).
    Run(apply::RunArgs),
    /// Runs in the runs directory.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Write the JSON Schemas of the manifest kinds (or print the Suite schema).
    Schema {
        /// Directory to write `<kind>.schema.json` files into.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Which kind to print when --out is not given.
        #[arg(long, default_value = "suite")]
        kind: String,
    },
    /// The engine template catalog.
    Engines {
        #[command(subcommand)]
        command: EnginesCommand,
    },
    /// Stop engine processes and remove containers that a killed kitt left behind (never a live
    /// kitt's; another machine's containers only with --foreign).
    Gc(gc::GcArgs),
    /// Run kitt's OpenAI-compatible engine simulator.
    Sim(crate::engine::sim::SimArgs),
    /// One client shard of a cell sent from several clients (`benchmarks[].clients`): started
    /// by the cell's coordinator over a pipe, never by hand.
    #[command(hide = true)]
    ClientShard {
        /// This shard's number, from 0.
        #[arg(long)]
        shard: u32,
        /// How many shards the cell has.
        #[arg(long)]
        of: u32,
        /// Where to spool its records instead of the path its job names (a shard on another
        /// host than its coordinator's).
        #[arg(long)]
        spool: Option<std::path::PathBuf>,
    },
    /// One client shard of a cell, run by another agent and relayed through the server: started
    /// by the cell's coordinator on an agent, never by hand.
    #[command(hide = true)]
    ClientRelay {
        #[arg(long)]
        shard: u32,
        #[arg(long)]
        of: u32,
        /// One try of one cell (its shards go to distinct agents).
        #[arg(long)]
        gang: String,
        /// Where the shard's records go on this host.
        #[arg(long)]
        spool: std::path::PathBuf,
    },
    /// The machine (GPUs, CPU, memory, storage, OS): its identity string; -v for every field.
    Fingerprint(fingerprint::FingerprintArgs),
    /// The results store: every finished run's cell results (list, show, export, import).
    Results {
        #[command(subcommand)]
        command: results::ResultsCommand,
    },
    /// Compare two runs (run ids, result ids or run directories): deltas, verdicts, --fail-if gates.
    Compare(compare::CompareArgs),
    /// Settings kept in the results store: list (with each value's source), get, set, unset, history.
    Settings(settings::SettingsArgs),
    /// The REST API (/api/v1, OpenAPI, live events) over the runs and the store; `serve token`
    /// manages who may call it.
    Serve(serve::ServeArgs),
    /// This host as a remote agent of a `kitt serve`: it pulls units and runs them.
    Agent(agent::AgentArgs),
    /// The agents of a `kitt serve`: list, drain, remove.
    Agents(agent::AgentsArgs),
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Every run, oldest first, with its status.
    List {
        #[arg(long)]
        runs_dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// One run: each unit (state, attempts, host, pid, cells) and each step, and where it stands.
    Show {
        run: String,
        #[arg(long)]
        runs_dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Watch a run to its end; if nothing drives it (a detached driver died), drive it here:
    /// adopt the units that still run, place the rest, report.
    Follow {
        run: String,
        #[arg(long)]
        runs_dir: Option<PathBuf>,
        /// The results store the finished run is indexed into (as for `kitt apply`).
        #[arg(long, value_name = "PATH")]
        store: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Stop a run: its driver and every unit, wherever they run; `kitt apply` resumes it later.
    Cancel {
        run: String,
        #[arg(long)]
        runs_dir: Option<PathBuf>,
        /// How long to wait for everything to stop.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnginesCommand {
    /// List the built-in engine templates.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Whether an engine can run here: its image (container mode) or its binary (--native).
    Check {
        name: String,
        /// Check the native binary (the template's `binary` param) instead of the image.
        #[arg(long)]
        native: bool,
        /// A binary to check instead of the template's default.
        #[arg(long)]
        binary: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Prepare an engine: pull its image, or build one locally.
    Setup {
        name: String,
        /// Build the image here instead of pulling it (llama_cpp: a CPU llama-server from source,
        /// with a tiny test model).
        #[arg(long)]
        local_build: bool,
        /// Where to link the built binary and model (`bin/`, `models/`), for native mode.
        #[arg(long, default_value = ".kitt/llama.cpp")]
        link: PathBuf,
    },
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    // A server's log is its audit trail: who started, cancelled or made what (kitt::serve at info).
    init_logging(cli.verbose, cli.quiet, matches!(cli.command, Command::Serve(_)));
    if let Some(c) = &cli.docker_context {
        crate::docker::set_context(c);
    }
    match cli.command {
        Command::Validate { files, output } => validate(&files, output),
        Command::Plan { suite, output, runs_dir, units } => plan_cmd(&suite, output, runs_dir.as_deref(), units),
        Command::Apply { suite, flags, placement, server: Some(server), server_ca } => {
            remote::apply(&suite, &server, server_ca.as_deref(), flags.fresh, placement.detach, flags.output)
        }
        Command::Apply { suite, flags, placement, .. } => apply::apply(&suite, &flags, &placement, cli.quiet),
        Command::Run(args) => apply::run_from_flags(&args, cli.quiet),
        Command::Work { run_dir, unit, unit_file, take_over_silent, agent_copy, output } => {
            match work::unit_id(unit, unit_file.as_deref()) {
                Ok(unit) => work::work(&run_dir, &unit, take_over_silent, agent_copy, output, cli.quiet),
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_FAILED
                }
            }
        }
        Command::Runs { command: RunsCommand::List { runs_dir, output } } => runs::list(runs_dir.as_deref(), output),
        Command::Runs { command: RunsCommand::Show { run, runs_dir, output } } => {
            runs::show(runs_dir.as_deref(), &run, output)
        }
        Command::Runs { command: RunsCommand::Follow { run, runs_dir, store, output } } => {
            runs::follow(runs_dir.as_deref(), &run, store.as_deref(), output, cli.quiet)
        }
        Command::Runs { command: RunsCommand::Cancel { run, runs_dir, wait, output } } => {
            runs::cancel(runs_dir.as_deref(), &run, wait, output)
        }
        Command::Schema { out, kind } => schema(out.as_deref(), &kind),
        Command::Engines { command: EnginesCommand::List { output } } => engines_list(output, cli.verbose > 0),
        Command::Engines { command: EnginesCommand::Check { name, native, binary, output } } => {
            engines_check(&name, native, binary.as_deref(), output)
        }
        Command::Engines { command: EnginesCommand::Setup { name, local_build, link } } => {
            engines::setup(&name, local_build, &link)
        }
        Command::Gc(args) => gc::gc(&args),
        Command::Sim(args) => sim(args),
        Command::ClientShard { shard, of, spool } => crate::bench::load::clients::shard::main(shard, of, spool),
        Command::ClientRelay { shard, of, gang, spool } => crate::agent::relay::relay_main(shard, of, &gang, spool),
        Command::Fingerprint(args) => fingerprint::fingerprint(&args, cli.verbose > 0),
        Command::Results { command } => results::run(command),
        Command::Compare(args) => compare::compare(&args),
        Command::Settings(args) => settings::run(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Agent(args) => agent::agent(&args, cli.quiet),
        Command::Agents(args) => agent::agents(&args),
    }
}

fn init_logging(verbose: u8, quiet: bool, serve: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) if serve => "warn,kitt::serve=info",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Prints diagnostics on stderr, compiler style, reading each file's source to show the line.
pub fn report(diags: &[Diagnostic]) {
    let mut err = std::io::stderr().lock();
    for d in diags {
        let source = d.file.as_deref().and_then(read_source);
        let _ = write!(err, "{}", d.render(source.as_deref()));
        let _ = writeln!(err);
    }
    let n = diags.len();
    let _ = writeln!(err, "{n} error{}", if n == 1 { "" } else { "s" });
}

fn read_source(path: &Path) -> Option<String> {
    if let Some(s) = catalog::builtin_source(path) {
        return Some(s.to_string());
    }
    std::fs::read_to_string(path).ok()
}

pub(crate) fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot serialize output: {e}"),
    }
}

/// Validates one manifest file of any kind.
pub fn validate_file(path: &Path) -> Result<String, Vec<Diagnostic>> {
    let raw = manifest::read_raw(path)?;
    match raw.kind {
        Kind::Suite => {
            // Parsed once: the envelope told the kind, the same tree decodes the suite.
            let suite = raw.decode::<manifest::SuiteSpec>()?;
            let plan = plan::compile::check_with_catalog(&suite, path)?;
            let summary =
                format!("Suite `{}`: {} cell(s), {} step(s)", plan.suite.name, plan.cells.len(), plan.steps.len());
            // A large plan and its tree take milliseconds to free: not on the way to the answer.
            std::thread::spawn(move || drop((plan, suite, raw)));
            Ok(summary)
        }
        _ => {
            let checked = manifest::validate::template_file(&raw)?;
            Ok(format!("{} `{}`", checked.kind.name(), checked.name))
        }
    }
}

fn validate(files: &[PathBuf], output: Output) -> i32 {
    let mut all = Vec::new();
    let mut results = Vec::new();
    for f in files {
        match validate_file(f) {
            Ok(summary) => {
                if output == Output::Text {
                    println!("ok  {}: {summary}", f.display());
                }
                results.push(serde_json::json!({"file": f, "ok": true, "summary": summary}));
            }
            Err(diags) => {
                results.push(serde_json::json!({"file": f, "ok": false, "errors": diags}));
                all.extend(diags);
            }
        }
    }
    if output == Output::Json {
        print_json(&results);
    }
    if all.is_empty() {
        0
    } else {
        report(&all);
        EXIT_FAILED
    }
}

fn plan_cmd(suite: &Path, output: PlanOutput, runs_dir: Option<&Path>, units: bool) -> i32 {
    if matches!(output, PlanOutput::Sbatch | PlanOutput::SbatchJson) {
        if units {
            eprintln!("error: --output sbatch lists the units itself; drop --units");
            return EXIT_USAGE;
        }
        return plan_sbatch(suite, output == PlanOutput::SbatchJson);
    }
    if matches!(output, PlanOutput::K8s | PlanOutput::K8sJson) {
        if units {
            eprintln!("error: --output k8s lists the units itself; drop --units");
            return EXIT_USAGE;
        }
        return plan_k8s(suite, output == PlanOutput::K8sJson);
    }
    match plan::compile::compile_file(suite) {
        Ok(plan) if units => match output {
            PlanOutput::Text => {
                print!("{}", render::units_text(&plan));
                0
            }
            PlanOutput::Json => {
                print_json(&render::units(&plan));
                0
            }
            PlanOutput::Dot | PlanOutput::Sbatch | PlanOutput::SbatchJson | PlanOutput::K8s | PlanOutput::K8sJson => {
                eprintln!("error: --units prints text or json; drop --units for the step graph in dot");
                EXIT_USAGE
            }
        },
        Ok(plan) => {
            let mut states = BTreeMap::new();
            let resumes = crate::run::pending_resume(&plan, runs_dir);
            if let Some((run, reused)) = &resumes {
                if output == PlanOutput::Text {
                    println!("unfinished run {run}: `kitt apply` resumes it");
                }
                for s in &plan.steps {
                    let state =
                        if reused.contains(&s.key) { render::StepState::Reused } else { render::StepState::Pending };
                    states.insert(s.key.clone(), state);
                }
            }
            match output {
                PlanOutput::Text => print!("{}", render::text(&plan, &states)),
                PlanOutput::Json => {
                    print_json(&plan_json(&plan, resumes.as_ref().map(|(run, _)| run.as_str()), &states))
                }
                PlanOutput::Dot => print!("{}", render::dot(&plan)),
                PlanOutput::Sbatch | PlanOutput::SbatchJson | PlanOutput::K8s | PlanOutput::K8sJson => {}
            }
            0
        }
        Err(diags) => {
            report(&diags);
            EXIT_FAILED
        }
    }
}

/// `kitt plan --output sbatch`: the array jobs a Slurm run of `suite` would submit.
fn plan_sbatch(suite: &Path, json: bool) -> i32 {
    let plan = match plan::compile::compile_file(suite) {
        Ok(plan) => plan,
        Err(diags) => {
            report(&diags);
            return EXIT_FAILED;
        }
    };
    let Some(jobs) = plan::sbatch::jobs(&plan, plan::sbatch::RUN_PLACEHOLDER) else {
        eprintln!(
            "error: {}: the suite has no `execution.slurm`, which --output sbatch needs\n  = help: add `execution: {{slurm: {{partition: …, time: 2h, shared_dir: /shared/kitt-runs}}}}` (docs/manifest.md)",
            suite.display()
        );
        return EXIT_FAILED;
    };
    if json {
        print_json(&serde_json::json!({"run": plan::sbatch::RUN_PLACEHOLDER, "jobs": jobs}));
    } else {
        print!("{}", plan::sbatch::text(&plan, &jobs));
    }
    0
}

/// `kitt plan --output k8s`: the Kubernetes objects a run of `suite` would create.
fn plan_k8s(suite: &Path, json: bool) -> i32 {
    let plan = match plan::compile::compile_file(suite) {
        Ok(plan) => plan,
        Err(diags) => {
            report(&diags);
            return EXIT_FAILED;
        }
    };
    let Some(objects) = plan::k8s::objects(&plan, plan::k8s::RUN_PLACEHOLDER) else {
        eprintln!(
            "error: {}: the suite has no `execution.kubernetes`, which --output k8s needs\n  = help: add `execution: {{kubernetes: {{namespace: …, image: …/kitt@sha256:…, runs_claim: …}}}}` (docs/executors.md)",
            suite.display()
        );
        return EXIT_FAILED;
    };
    if json {
        print_json(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects}));
    } else {
        print!("{}", plan::k8s::yaml(&plan, &objects));
    }
    0
}

/// The plan as JSON; with an unfinished run to resume, the same marks as the text: a top-level
/// `resume` (`{run, reused, pending}`) and each step's `state` (`reused` or `pending`).
fn plan_json(
    plan: &plan::Plan,
    run: Option<&str>,
    states: &BTreeMap<plan::StepKey, render::StepState>,
) -> serde_json::Value {
    let mut value = serde_json::to_value(plan).unwrap_or_default();
    let Some(run) = run else { return value };
    let state_of = |key: &serde_json::Value| match key.as_str().and_then(|k| states.get(k)) {
        Some(render::StepState::Reused) => "reused",
        _ => "pending",
    };
    if let Some(steps) = value.get_mut("steps").and_then(serde_json::Value::as_array_mut) {
        for step in steps {
            let state = state_of(&step["key"]);
            step["state"] = state.into();
        }
    }
    let reused = states.values().filter(|s| **s == render::StepState::Reused).count();
    value["resume"] = serde_json::json!({"run": run, "reused": reused, "pending": plan.steps.len() - reused});
    value
}

fn schema(out: Option<&Path>, kind: &str) -> i32 {
    let catalog = Catalog::builtin();
    match out {
        Some(dir) => {
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("error: cannot create {}: {e}", dir.display());
                return EXIT_FAILED;
            }
            let mut files: Vec<(String, String)> = Kind::ALL
                .iter()
                .map(|k| (manifest::schema::file_name(*k), manifest::schema::generate(*k, catalog)))
                .collect();
            files.push(("result.schema.json".into(), crate::report::schema()));
            files.push(("fingerprint.schema.json".into(), crate::fingerprint::schema()));
            for (name, text) in files {
                let path = dir.join(name);
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return EXIT_FAILED;
                }
                eprintln!("wrote {}", path.display());
            }
            0
        }
        None => match Kind::ALL.into_iter().find(|k| k.name().eq_ignore_ascii_case(kind)) {
            Some(k) => {
                print!("{}", manifest::schema::generate(k, catalog));
                0
            }
            None => {
                eprintln!("error: unknown kind `{kind}`; expected suite, engine, benchmark or reporter");
                EXIT_USAGE
            }
        },
    }
}

fn engines_list(output: Output, verbose: bool) -> i32 {
    let catalog = Catalog::builtin();
    let rows: Vec<serde_json::Value> = catalog
        .engines
        .iter()
        .map(|(name, e)| {
            let s = &e.manifest.spec;
            let modes = s.modes();
            // What each mode leaves out, and why (`kitt engines list -v`); the sampling keys each API carries.
            let unused: BTreeMap<&str, BTreeMap<&String, String>> = crate::catalog::reach::offered(s)
                .into_iter()
                .map(|m| {
                    let reasons = s
                        .params
                        .keys()
                        .filter_map(|p| crate::catalog::reach::unused_reason(s, m, p).map(|r| (p, r)))
                        .collect();
                    (m.name(), reasons)
                })
                .collect();
            let sampling: BTreeMap<&str, _> = [("completion", &s.api.completion), ("chat", &s.api.chat)]
                .into_iter()
                .filter_map(|(n, c)| c.as_ref().map(|c| (n, crate::catalog::reach::sampling_slots(c))))
                .collect();
            // Whether the image is here: null when Docker cannot say.
            let present = s.image.as_ref().and_then(|i| crate::docker::image_id(i).ok()).map(|id| id.is_some());
            serde_json::json!({
                "name": name,
                "description": e.manifest.metadata.description,
                "source": e.manifest.file,
                "image": s.image,
                "image_present": present,
                "default_port": s.default_port,
                "modes": modes,
                "params": s.params.keys().collect::<Vec<_>>(),
                "unused_params": unused,
                "sampling": sampling,
            })
        })
        .collect();
    match output {
        Output::Json => print_json(&rows),
        Output::Text => {
            println!("{:<10} {:<26} {:<52} {:<8} source", "name", "modes", "image", "here");
            for r in &rows {
                let modes: Vec<&str> =
                    r["modes"].as_array().map(|a| a.iter().filter_map(|m| m.as_str()).collect()).unwrap_or_default();
                let here = match r["image_present"].as_bool() {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None if r["image"].is_null() => "-",
                    None => "?",
                };
                println!(
                    "{:<10} {:<26} {:<52} {:<8} {}",
                    r["name"].as_str().unwrap_or(""),
                    modes.join(","),
                    r["image"].as_str().unwrap_or("-"),
                    here,
                    r["source"].as_str().unwrap_or("")
                );
                if verbose {
                    println!(
                        "    params: {}",
                        r["params"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|p| p.as_str()).collect::<Vec<_>>().join(", "))
                            .unwrap_or_default()
                    );
                    for (mode, reasons) in r["unused_params"].as_object().into_iter().flatten() {
                        for (p, why) in reasons.as_object().into_iter().flatten() {
                            println!("    {mode}: `{p}` not sent: {}", why.as_str().unwrap_or(""));
                        }
                    }
                    for (api, keys) in r["sampling"].as_object().into_iter().flatten() {
                        let keys: Vec<&str> =
                            keys.as_array().into_iter().flatten().filter_map(|k| k.as_str()).collect();
                        println!("    {api} API carries: {}", keys.join(", "));
                    }
                }
            }
        }
    }
    0
}

/// Finds `program` the way the engine will be started: a path as is, a bare name on PATH.
fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

fn engines_check(name: &str, native: bool, binary: Option<&str>, output: Output) -> i32 {
    let catalog = Catalog::builtin();
    let Some(entry) = catalog.engines.get(name) else {
        let help = manifest::diag::unknown_help(name, catalog.engines.keys().map(String::as_str));
        eprintln!("error: unknown engine template `{name}`; {help}");
        return EXIT_FAILED;
    };
    let spec = &entry.manifest.spec;
    let (ok, what, detail) = if native || spec.container.is_none() {
        let default = spec.params.get("binary").and_then(|p| p.value.default.as_ref()).and_then(|d| d.as_str());
        let first = spec.native.as_ref().and_then(|n| n.command.first()).and_then(|c| match c {
            crate::manifest::template_kind::Arg::Text(t) => Some(t.value.clone()),
            crate::manifest::template_kind::Arg::When(_) => None,
        });
        let program = binary.or(default).map(String::from).or_else(|| match first {
            // The simulator is kitt itself.
            Some(c) if c == "{{kitt.exe}}" => std::env::current_exe().ok().map(|p| p.to_string_lossy().to_string()),
            Some(c) if !c.contains("{{") => Some(c),
            _ => None,
        });
        match program {
            Some(p) => match find_program(&p) {
                Some(found) => (true, format!("native binary `{p}`"), found.display().to_string()),
                None => (
                    false,
                    format!("native binary `{p}`"),
                    "not found: install it, put it on PATH, or set `params: {binary: /path/to/it}`".into(),
                ),
            },
            None => (false, "native binary".to_string(), format!("template `{name}` has no native command")),
        }
    } else {
        let image = spec.image.clone().unwrap_or_default();
        match crate::docker::image_id(&image) {
            Ok(Some(id)) => (true, format!("image `{image}`"), format!("{id}{}", gpu_runtime())),
            Ok(None) => (false, format!("image `{image}`"), "not present locally".into()),
            Err(e) => (false, format!("image `{image}`"), format!("Docker is not usable: {e}")),
        }
    };
    match output {
        Output::Json => print_json(&serde_json::json!({"engine": name, "ok": ok, "what": what, "detail": detail})),
        Output::Text => println!("{} {name}: {what}: {detail}", if ok { "ok  " } else { "FAIL" }),
    }
    if ok { 0 } else { EXIT_FAILED }
}

/// What `gpus: auto` will do here.
fn gpu_runtime() -> &'static str {
    if crate::docker::nvidia_runtime() {
        "; NVIDIA runtime present (gpus: auto passes --gpus all)"
    } else {
        "; no NVIDIA runtime (gpus: auto runs without GPUs)"
    }
}

fn sim(args: crate::engine::sim::SimArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return EXIT_FAILED;
        }
    };
    if let Some(line) = crate::engine::sim::startup_report(&args) {
        // Data, not a log line: what the imitated engine would have understood (docs/engines.md).
        eprintln!("{line}");
    }
    let result = rt.block_on(crate::engine::sim::serve(args, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    }));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: simulator: {e}");
            EXIT_FAILED
        }
    }
}
