//! `kitt apply`, `kitt run` and `kitt runs`: driving runs from the command line, with a live
//! progress display on stderr and the summary on stdout.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use serde_json::{Value as Json, json};

use super::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Output, print_json, report};
use crate::cancel::Cancel;
use crate::plan::{self, Plan};
use crate::run::{self, ApplyOptions, steps::Progress};

#[derive(Debug, Args)]
pub struct RunFlags {
    /// Where runs live (default: $KITT_RUNS_DIR, else ./.kitt/runs).
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    /// Start a new run even if this suite has an unfinished one.
    #[arg(long, conflicts_with = "resume")]
    pub fresh: bool,
    /// Resume this run (an id from `kitt runs list`).
    #[arg(long)]
    pub resume: Option<String>,
    /// Continue a resume although observed facts changed (kitt build, machine, engine version,
    /// served model, model file); every cell measured after the change is marked.
    #[arg(long)]
    pub accept_drift: bool,
    /// Resuming, run the cells that failed in earlier attempts again (they stay failed otherwise).
    #[arg(long)]
    pub rerun_failed: bool,
    /// Fingerprint model files by hashing them whole (slow for large files) instead of by their
    /// size and first and last MiB.
    #[arg(long)]
    pub verify_models: bool,
    /// The results store a finished run is indexed into (default: $KITT_STORE, else
    /// $XDG_DATA_HOME/kitt/results.db, else ~/.local/share/kitt/results.db; a SQLite path or a
    /// `postgres://` URL; `off` skips it).
    #[arg(long, value_name = "PATH|URL")]
    pub store: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

/// Where `kitt apply` runs the units of its plan (placement only: never part of a step's key).
#[derive(Debug, Args)]
pub struct PlacementFlags {
    /// `local`: this process runs every step; `processes`: each unit runs as a child
    /// `kitt work` process, and this one runs the report over what they committed; `slurm`: each
    /// unit is a task of a Slurm array job (`execution.slurm`), the run under its `shared_dir`.
    /// (Default: the suite's `execution.executor`, else `local`.)
    #[arg(long, value_enum)]
    pub executor: Option<crate::exec::ExecutorKind>,
    /// With `--executor processes`: at most this many units at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: u32,
    /// With `--executor processes`: at most this many attempts of one unit. A unit whose
    /// `kitt work` died, or stopped renewing its lease, is placed again as a new attempt that
    /// runs only what no earlier attempt committed (`execution.retries` counts retries of a
    /// step within one attempt).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Start the run and return: a driver in the background places the units, merges and
    /// reports (its log: RUN_DIR/driver.log). `kitt runs follow RUN` watches it, `kitt runs
    /// cancel RUN` stops it. Needs an executor that runs units outside this process.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Model: a name, or a path to a model file (its stem becomes the name).
    #[arg(short, long)]
    pub model: String,
    /// Engine template (sim, llama_cpp, vllm, tgi, ollama, or a template of yours).
    #[arg(short, long)]
    pub engine: String,
    /// Suite whose benchmarks to run: quick, standard, performance, memory, or a suite file (whose
    /// relative paths stay relative to its own directory; a relative `-m` path to this one).
    #[arg(short, long, default_value = "quick")]
    pub suite: String,
    /// Print the suite built from these flags (YAML) instead of running it.
    #[arg(long)]
    pub print_suite: bool,
    #[command(flatten)]
    pub flags: RunFlags,
}

/// The ready suites, embedded so `kitt run -s quick` works from any directory.
pub(crate) const READY_SUITES: &[(&str, &str)] = &[
    ("quick", include_str!("../../suites/quick.yaml")),
    ("standard", include_str!("../../suites/standard.yaml")),
    ("performance", include_str!("../../suites/performance.yaml")),
    ("memory", include_str!("../../suites/memory.yaml")),
];

pub(super) fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

/// First Ctrl-C/SIGTERM/SIGHUP cancels gracefully, the second makes cleanup urgent. SIGHUP (a
/// closed terminal, a dropped SSH session) is a request to stop like the others: left to its
/// default it would kill kitt without stopping the engines. The terminal may be gone, so what is
/// said about it is written without failing.
pub(super) fn watch_signals(cancel: Cancel) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).ok();
        let mut hangup = signal(SignalKind::hangup()).ok();
        let say = |text: &str| {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "{text}");
        };
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => { if r.is_err() { return; } }
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
                _ = async { match hangup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            if cancel.is_cancelled() {
                say("\ninterrupted again: stopping engines now");
                cancel.escalate();
                return;
            }
            say("\ninterrupting: no new steps; stopping engines (Ctrl-C again to skip graceful waits)");
            cancel.escalate();
        }
    });
}

/// A progress display on stderr while the run goes, hidden when stderr is not a terminal.
fn spawn_progress(plan: &Plan, progress: Arc<Progress>, quiet: bool) -> Option<tokio::task::JoinHandle<()>> {
    // Test hook: SIGKILL ourselves once the running benchmark completed this many requests.
    let kill_at: Option<u64> = std::env::var("KITT_TEST_KILL_IN_BENCHMARK").ok().and_then(|v| v.parse().ok());
    let show = !quiet && std::io::stderr().is_terminal();
    if !show && kill_at.is_none() {
        return None;
    }
    let total = plan.steps.len() as u64;
    Some(tokio::spawn(async move {
        let bars = show.then(|| {
            let multi = indicatif::MultiProgress::new();
            let steps = multi.add(indicatif::ProgressBar::new(total));
            steps.set_style(
                indicatif::ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} steps {elapsed} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            steps.set_prefix("run");
            let cell = multi.add(indicatif::ProgressBar::new(0));
            cell.set_style(
                indicatif::ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} requests {per_sec} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            cell.set_prefix("cell");
            (multi, steps, cell)
        });
        let mut tick = tokio::time::interval(Duration::from_millis(if kill_at.is_some() { 2 } else { 100 }));
        loop {
            tick.tick().await;
            let done = progress.requests.load(Ordering::Relaxed);
            if let Some(n) = kill_at {
                let label = progress.label.lock().map(|l| l.clone()).unwrap_or_default();
                if done >= n && !label.starts_with("warmup") {
                    // SAFETY: raising SIGKILL on ourselves (test hook).
                    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                }
            }
            if let Some((_, steps, cell)) = &bars {
                steps.set_position(progress.steps_done.load(Ordering::Relaxed));
                if let Ok(note) = progress.note.lock() {
                    steps.set_message(note.clone());
                }
                cell.set_length(progress.requests_total.load(Ordering::Relaxed));
                cell.set_position(done);
                if let Ok(l) = progress.label.lock() {
                    cell.set_message(l.clone());
                }
            }
        }
    }))
}

/// Runs a compiled plan and prints the outcome; returns the exit code. `follow`: driving a run
/// another driver left (`kitt runs follow`), whose cancel request stands.
pub(super) fn drive(
    plan: Plan,
    flags: &RunFlags,
    placement: Option<&PlacementFlags>,
    quiet: bool,
    follow: bool,
) -> i32 {
    let executor =
        placement.and_then(|p| p.executor).or(plan.execution.executor.as_ref().map(|x| x.value)).unwrap_or_default();
    // On Slurm the nodes read secrets (their environment, or `secrets_file`), never the driver.
    let unset = if executor == crate::exec::ExecutorKind::Slurm { Vec::new() } else { unset_secrets(&plan) };
    if !unset.is_empty() {
        for e in &unset {
            eprintln!("error: {e}");
        }
        return EXIT_FAILED;
    }
    let Some(rt) = runtime() else {
        return EXIT_FAILED;
    };
    let mut runs_dir = flags.runs_dir.clone();
    if executor == crate::exec::ExecutorKind::Slurm {
        let Some(slurm) = &plan.execution.slurm else {
            eprintln!(
                "error: {}: the Slurm executor needs `execution.slurm` in the suite\n  = help: add `execution: {{slurm: {{partition: …, time: 2h, shared_dir: /shared/kitt-runs}}}}` (docs/executors.md)",
                plan.suite.file.display()
            );
            return EXIT_USAGE;
        };
        // Every node sees the run only under the shared directory.
        let shared = &slurm.shared_dir.value;
        match &runs_dir {
            Some(d) if d != shared => {
                eprintln!(
                    "error: --runs-dir {} is not `execution.slurm.shared_dir` ({}): Slurm runs live in the directory every node mounts\n  = help: drop --runs-dir",
                    d.display(),
                    shared.display()
                );
                return EXIT_USAGE;
            }
            _ => runs_dir = Some(shared.clone()),
        }
    }
    let opts = ApplyOptions {
        runs_dir,
        fresh: flags.fresh,
        resume: flags.resume.clone(),
        accept_drift: flags.accept_drift,
        rerun_failed: flags.rerun_failed,
        verify_models: flags.verify_models,
        executor,
        workers: placement.map_or(1, |p| p.workers as usize),
        max_attempts: placement.map_or(3, |p| p.max_attempts),
        detach: placement.is_some_and(|p| p.detach),
        keep_cancel_request: follow,
    };
    if opts.detach && opts.executor == crate::exec::ExecutorKind::Local {
        eprintln!(
            "error: --detach needs an executor that runs units outside this process (`--executor processes`); the local executor runs them in `kitt apply` itself"
        );
        return EXIT_USAGE;
    }
    let output = flags.output;
    rt.block_on(async move {
        let cancel = Cancel::default();
        watch_signals(cancel.clone());
        let progress = Arc::new(Progress::default());
        let display = spawn_progress(&plan, progress.clone(), quiet || output == Output::Json);
        let result = run::apply(plan, &opts, &cancel, progress).await;
        if let Some(d) = display {
            d.abort();
        }
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILED;
            }
        };
        if outcome.resumed && !quiet {
            eprintln!("resumed run {} ({} finished step(s) reused)", outcome.run_id, outcome.reused_steps);
        }
        if let Some(job) = &outcome.report_job {
            return detached_on_slurm(&outcome, job, flags.output, quiet);
        }
        if outcome.detached {
            return detach(&outcome, flags, quiet);
        }
        let stored = outcome.report.as_ref().map_or(Json::Null, |r| {
            super::results::index_finished(flags.store.as_deref(), r, &outcome.run_dir, quiet || output == Output::Json)
        });
        match output {
            Output::Json => print_json(&json!({
                "run_id": outcome.run_id, "run_dir": outcome.run_dir, "resumed": outcome.resumed,
                "reused_steps": outcome.reused_steps, "failed_cells": outcome.failed_cells,
                "interrupted": outcome.interrupted, "errors": outcome.errors, "report": outcome.report,
                "store": stored,
            })),
            Output::Text => {
                if let Some(r) = &outcome.report {
                    print!("{}", crate::report::summary(r));
                }
                for e in &outcome.errors {
                    eprintln!("error: {e}");
                }
                eprintln!("run {} in {}", outcome.run_id, outcome.run_dir.display());
            }
        }
        if outcome.interrupted {
            eprintln!("interrupted; run the same command again to resume");
            EXIT_INTERRUPTED
        } else if outcome.failed_cells > 0 || !outcome.errors.is_empty() {
            EXIT_FAILED
        } else {
            0
        }
    })
}

/// `--detach` on Slurm: the units and the report job that drives the rest are submitted.
fn detached_on_slurm(outcome: &run::ApplyOutcome, report_job: &str, output: Output, quiet: bool) -> i32 {
    let dir = outcome.run_dir.display();
    match output {
        Output::Json => print_json(&json!({
            "run_id": outcome.run_id, "run_dir": outcome.run_dir, "detached": true, "report_job": report_job,
        })),
        Output::Text if !quiet => eprintln!(
            "run {} submitted to Slurm; report job {report_job} drives the rest\n  kitt runs show {dir}     # units, jobs, nodes\n  kitt runs follow {dir}   # watch it\n  kitt runs cancel {dir}   # stop it",
            outcome.run_id
        ),
        Output::Text => {}
    }
    0
}

/// Hands a prepared run to a background driver (`kitt runs follow`, in a session of its own so
/// that no terminal signal reaches it; its output goes to RUN_DIR/driver.log) and returns once it
/// holds the run.
fn detach(outcome: &run::ApplyOutcome, flags: &RunFlags, quiet: bool) -> i32 {
    use std::os::unix::process::CommandExt as _;
    let log_path = outcome.run_dir.join("driver.log");
    let log = match std::fs::OpenOptions::new().create(true).append(true).open(&log_path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", log_path.display());
            return EXIT_FAILED;
        }
    };
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot find this kitt binary to run the driver: {e}");
            return EXIT_FAILED;
        }
    };
    let root = outcome.run_dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut cmd = std::process::Command::new(program);
    cmd.args(["runs", "follow", &outcome.run_id, "--runs-dir"]).arg(&root);
    if let Some(store) = &flags.store {
        cmd.arg("--store").arg(store);
    }
    cmd.stdin(std::process::Stdio::null());
    match log.try_clone() {
        Ok(out) => {
            cmd.stdout(out).stderr(log);
        }
        Err(_) => {
            cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        }
    }
    // SAFETY: setsid(2) is async-signal-safe; the child only execs after it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot start the run's driver: {e}");
            return EXIT_FAILED;
        }
    };
    let lock = run::runlock::lock_path(&outcome.run_dir);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = run::runlock::RunLock::holder(&lock)
            && l.owner.pid == child.id()
        {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            // It may have finished the whole run already (nothing was left to measure).
            if status.success() {
                break;
            }
            eprintln!("error: the run's driver ended at once ({status}): {}", log.trim_end());
            return EXIT_FAILED;
        }
        if std::time::Instant::now() > deadline {
            eprintln!(
                "error: the run's driver (pid {}) did not take the run within 30 s; see {}",
                child.id(),
                log_path.display()
            );
            return EXIT_FAILED;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match flags.output {
        Output::Json => print_json(&json!({
            "run_id": outcome.run_id, "run_dir": outcome.run_dir, "detached": true, "driver_pid": child.id(),
            "log": log_path,
        })),
        Output::Text if !quiet => eprintln!(
            "run {} detached: driver pid {}, log {}\n  kitt runs follow {id}   # watch it\n  kitt runs cancel {id}   # stop it",
            outcome.run_id,
            child.id(),
            log_path.display(),
            id = outcome.run_id
        ),
        Output::Text => {}
    }
    0
}

/// Every secret param whose environment variable is not set, checked before anything starts (an
/// engine started with a placeholder for its key would fail later and less clearly).
fn unset_secrets(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for g in &plan.groups {
        for (param, var) in &g.secrets {
            match crate::secrets::lookup(var) {
                Ok(Some(_)) => {}
                Ok(None) => out.push(format!(
                    "engine `{}`: secret param `{param}` reads the environment variable `{var}`, which is not set; export it and run again",
                    g.id
                )),
                Err(e) => out.push(e),
            }
        }
    }
    out.dedup();
    out
}

pub fn apply(suite: &Path, flags: &RunFlags, placement: &PlacementFlags, quiet: bool) -> i32 {
    match plan::compile::compile_file(suite) {
        Ok(plan) => drive(plan, flags, Some(placement), quiet, false),
        Err(diags) => {
            report(&diags);
            EXIT_FAILED
        }
    }
}

/// The suite `kitt run` builds: the named suite's benchmarks, with this model and engine.
pub fn suite_from_flags(args: &RunArgs) -> Result<(String, PathBuf), String> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    // The directory the built suite's relative paths resolve against: a suite file's own (its
    // templates, answer keys and data sit beside it), the working directory for a ready suite.
    let (text, base, dir) = match READY_SUITES.iter().find(|(n, _)| *n == args.suite) {
        Some((name, text)) => (text.to_string(), format!("suites/{name}.yaml"), cwd.clone()),
        None => {
            let text = std::fs::read_to_string(&args.suite).map_err(|e| {
                format!("cannot read suite `{}`: {e} (ready suites: quick, standard, performance)", args.suite)
            })?;
            let dir = cwd.join(Path::new(&args.suite).parent().unwrap_or(Path::new("")));
            (text, args.suite.clone(), dir)
        }
    };
    let node = crate::manifest::yaml::parse(&text).map_err(|d| d.headline())?;
    let mut suite = node.to_json();
    let looks_like_path = args.model.contains('/') || args.model.ends_with(".gguf") || Path::new(&args.model).exists();
    let model = if looks_like_path {
        let stem = Path::new(&args.model)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "model".into());
        // A model path on the command line is the working directory's, wherever the suite file is.
        let path = if dir != cwd && Path::new(&args.model).is_relative() {
            cwd.join(&args.model).to_string_lossy().to_string()
        } else {
            args.model.clone()
        };
        json!({"name": stem, "path": path})
    } else {
        json!({"name": args.model})
    };
    let model_name = model["name"].as_str().unwrap_or("model").to_string();
    suite["spec"]["models"] = json!([model]);
    suite["spec"]["engines"] = json!([{"name": args.engine, "template": args.engine}]);
    let suite_name = suite["metadata"]["name"].as_str().unwrap_or("suite").to_string();
    let name: String = format!("{suite_name}-{model_name}-{}", args.engine)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
        .collect();
    suite["metadata"]["name"] = Json::String(name.clone());
    suite["metadata"]["description"] =
        Json::String(format!("built by `kitt run -m {} -e {} -s {}` from {base}", args.model, args.engine, args.suite));
    let mut yaml = String::from("# yaml-language-server: $schema=https://kitt.dev/schemas/suite.schema.json\n");
    yaml.push_str(&crate::manifest::emit::to_yaml(&json!({
        "apiVersion": suite["apiVersion"], "kind": "Suite", "metadata": suite["metadata"], "spec": suite["spec"],
    })));
    Ok((yaml, dir.join(format!("{name}.yaml"))))
}

pub fn run_from_flags(args: &RunArgs, quiet: bool) -> i32 {
    let (yaml, path) = match suite_from_flags(args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    if args.print_suite {
        print!("{yaml}");
        return 0;
    }
    match plan::compile::compile_source(&yaml, &path) {
        // `kitt run`'s suite lives only in memory, where a `kitt work` child could not compile it.
        Ok(plan) => drive(plan, &args.flags, None, quiet, false),
        Err(diags) => {
            report(&diags);
            EXIT_FAILED
        }
    }
}
