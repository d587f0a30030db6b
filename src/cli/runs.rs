//! `kitt runs`: list the runs, show one (steps and units), follow one (watch it, or drive it when
//! nothing does), cancel one (wherever its driver and units run).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use super::apply::{PlacementFlags, RunFlags};
use super::{EXIT_FAILED, EXIT_INTERRUPTED, Output, print_json};
use crate::run::{self, dir, journal, runlock::RunLock, units};

pub fn list(runs_dir: Option<&Path>, output: Output) -> i32 {
    let root = dir::runs_root(runs_dir);
    let runs = dir::list(&root);
    match output {
        Output::Json => print_json(&runs),
        Output::Text => {
            if runs.is_empty() {
                eprintln!("no runs under {}", root.display());
            }
            println!("{:<24} {:<12} {:<24} {:>7}  created", "run", "status", "suite", "records");
            for r in &runs {
                let created = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_nanos(r.meta.created_unix_ns),
                );
                println!(
                    "{:<24} {:<12} {:<24} {:>7}  {created}",
                    r.meta.id,
                    status_name(r.status),
                    r.meta.suite,
                    r.records
                );
            }
        }
    }
    0
}

fn status_name(status: dir::RunStatus) -> String {
    serde_json::to_value(status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn find(runs_dir: Option<&Path>, id: &str) -> Result<dir::RunInfo, i32> {
    let root = dir::runs_root(runs_dir);
    dir::info(&root.join(id)).ok_or_else(|| {
        eprintln!("error: no run `{id}` under {} (see `kitt runs list`)", root.display());
        EXIT_FAILED
    })
}

fn read_plan(run_dir: &Path) -> Json {
    std::fs::read(run_dir.join("plan.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Json::Null)
}

/// A step's label for people: its cell (engine, benchmark, swept values, run) or its group.
fn step_label(plan: &Json, step: &Json) -> String {
    match (step["cell"].as_u64(), step["group"].as_u64()) {
        (Some(c), _) => {
            let cell = &plan["cells"][c as usize];
            let swept: Vec<String> = cell["swept"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k}={}", crate::template::scalar_text(v))).collect())
                .unwrap_or_default();
            format!(
                "{} {} {} run={}",
                cell["engine"].as_str().unwrap_or(""),
                cell["benchmark"].as_str().unwrap_or(""),
                swept.join(" "),
                cell["run_index"]
            )
        }
        (None, Some(g)) => plan["groups"][g as usize]["id"].as_str().unwrap_or("").to_string(),
        _ => String::new(),
    }
}

/// The last word on each step, by key: its state and what it said.
fn step_states(records: &[journal::Record]) -> HashMap<String, (String, Option<String>)> {
    let mut last = HashMap::new();
    for r in records {
        let (key, state, detail) = match &r.event {
            journal::Event::StepStarted { key, .. } => (key, "running", None),
            journal::Event::StepFinished { key, .. } => (key, "done", None),
            journal::Event::StepFailed { key, error, will_retry, .. } => {
                (key, if *will_retry { "retrying" } else { "failed" }, Some(error.clone()))
            }
            journal::Event::StepSkipped { key, reason, .. } => (key, "skipped", Some(reason.clone())),
            _ => continue,
        };
        // A measured step committed by one attempt stays done whatever a racing one said.
        if last.get(key).is_some_and(|(s, _): &(String, Option<String>)| s == "done") {
            continue;
        }
        last.insert(key.clone(), (state.to_string(), detail));
    }
    last
}

/// One run as data: its directory's status, executor, units and steps (`kitt runs show --output
/// json`, and the server's `/api/v1/runs/{id}`).
pub(crate) struct Shown {
    pub info: dir::RunInfo,
    pub executor: Option<crate::exec::state::ExecutorState>,
    pub cancel_requested: bool,
    pub units: Vec<units::UnitStatus>,
    pub steps: Vec<Json>,
    pub records: usize,
}

impl Shown {
    pub(crate) fn json(&self) -> Json {
        json!({
            "run": self.info, "executor": self.executor.as_ref().map(|e| e.executor),
            "cancel_requested": self.cancel_requested, "units": self.units, "steps": self.steps,
        })
    }
}

/// Reads what `kitt runs show` shows about the run at `info`.
pub(crate) fn shown(info: dir::RunInfo) -> Result<Shown, journal::JournalError> {
    let plan = read_plan(&info.path);
    // Every attempt's records: the driver's journal and each `kitt work` shard.
    let records = journal::read_run(&info.path)?;
    let last = step_states(&records);
    let steps: Vec<Json> = plan["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    let key = s["key"].as_str().unwrap_or_default();
                    let (state, detail) = last.get(key).cloned().unwrap_or(("pending".into(), None));
                    let mut step = json!({"id": s["id"], "kind": s["kind"], "key": key, "label": step_label(&plan, s), "state": state, "detail": detail});
                    // A cell sent by several clients: how each shard did.
                    if s["kind"] == "benchmark"
                        && let Some(clients) = client_shards(&info.path, key)
                    {
                        step["clients"] = clients;
                    }
                    step
                })
                .collect()
        })
        .unwrap_or_default();
    let mut units = units::statuses(&info.path, &plan, &records);
    let executor = crate::exec::state::ExecutorState::load(&info.path).ok().flatten();
    if executor.as_ref().is_some_and(|e| e.executor == crate::exec::ExecutorKind::Slurm) {
        slurm_jobs(&info.meta.id, &mut units);
    }
    let cancel_requested = run::cancel_request_path(&info.path).exists();
    Ok(Shown { info, executor, cancel_requested, units, steps, records: records.len() })
}

pub fn show(runs_dir: Option<&Path>, id: &str, output: Output) -> i32 {
    let info = match find(runs_dir, id) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let shown = match shown(info) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let Shown { info, executor, cancel_requested, units, steps, records } = &shown;
    match output {
        Output::Json => print_json(&shown.json()),
        Output::Text => {
            println!(
                "run {} of suite `{}` ({}): {}{}, {} journal records",
                info.meta.id,
                info.meta.suite,
                info.meta.file.display(),
                status_name(info.status),
                if *cancel_requested { " (cancel requested)" } else { "" },
                records
            );
            if let Some(e) = &executor {
                println!(
                    "executor {}: {} worker(s), at most {} attempt(s) per unit",
                    serde_json::to_value(e.executor)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    e.workers,
                    e.max_attempts
                );
            }
            println!("units:");
            println!(
                "  {:<14} {:<7} {:<10} {:>8} {:>7}  {:<16} {:>8}  {:<12}",
                "unit", "kind", "state", "attempts", "cells", "host", "pid", "job"
            );
            for u in units {
                let detail = u.detail.as_deref().map(|d| format!("  ({d})")).unwrap_or_default();
                let job = u.job.as_ref().map_or_else(
                    || u.external_id.as_deref().filter(|_| u.pid.is_none()).unwrap_or("-").to_string(),
                    |j| format!("{} {}", j.id, j.state),
                );
                println!(
                    "  {:<14} {:<7} {:<10} {:>8} {:>7}  {:<16} {:>8}  {job:<12}{detail}",
                    u.id,
                    u.kind,
                    u.state,
                    u.attempts,
                    format!("{}/{}", u.cells_done, u.cells),
                    u.host.as_deref().unwrap_or("-"),
                    u.pid.map_or("-".to_string(), |p| p.to_string()),
                );
            }
            println!("steps:");
            for s in steps {
                let detail = s["detail"].as_str().map(|d| format!("  ({d})")).unwrap_or_default();
                let key = s["key"].as_str().unwrap_or("");
                println!(
                    "  {:<9} {:<9} {}  {}{detail}",
                    s["kind"].as_str().unwrap_or(""),
                    s["state"].as_str().unwrap_or(""),
                    &key[..12.min(key.len())],
                    s["label"].as_str().unwrap_or("")
                );
                if let Some(c) = s.get("clients") {
                    print_client_shards(c);
                }
            }
        }
    }
    0
}

/// The `clients` block of a benchmark step's result, when several clients sent it.
fn client_shards(run: &Path, key: &str) -> Option<Json> {
    if key.is_empty() || key.contains(['/', '.']) {
        return None;
    }
    let raw = std::fs::read(run.join("steps").join(key).join("benchmark.json")).ok()?;
    let v: Json = serde_json::from_slice(&raw).ok()?;
    v["metrics"].get("clients").cloned()
}

/// Each client shard of a step: host, clock offset, start error, send lag, requests.
fn print_client_shards(c: &Json) {
    let ms = |v: &Json| v.as_f64().map_or("-".to_string(), |x| format!("{x:.3} ms"));
    println!(
        "            {} of {} client shards finished{}; largest start error {}",
        c["completed"],
        c["count"],
        if c["complete"] == false { " (the metrics cover only those)" } else { "" },
        ms(&c["start_error_max_ms"])
    );
    for sh in c["shards"].as_array().into_iter().flatten() {
        let lag = match (&sh["send_lag_ms"]["p50"], &sh["send_lag_ms"]["p99"]) {
            (Json::Null, _) | (_, Json::Null) => String::new(),
            (p50, p99) => format!(", send lag p50 {} p99 {}", ms(p50), ms(p99)),
        };
        let error = sh["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default();
        // Where it ran: another agent, a Slurm step, or the core it was pinned to.
        let placed = match (sh["agent"].as_str(), sh["slurm_step"].as_str(), sh["core"].as_u64()) {
            (Some(agent), _, _) => format!(", agent {agent}"),
            (None, Some(step), _) => format!(", Slurm step {step}"),
            (None, None, Some(core)) => format!(", core {core}"),
            _ => String::new(),
        };
        println!(
            "            shard {} on {} (pid {}{placed}): {}{error}; clock offset {} (rtt {}), start error {}{lag}, {} requests",
            sh["shard"],
            sh["host"].as_str().unwrap_or("-"),
            sh["pid"],
            sh["status"].as_str().unwrap_or("-"),
            ms(&sh["clock_offset_ms"]),
            ms(&sh["clock_rtt_ms"]),
            ms(&sh["start_error_ms"]),
            sh["requests"]
        );
    }
}

/// Each unit's Slurm job as squeue sees it now (one squeue for the whole run). A unit whose job
/// waits in the queue (first, or after a requeue) is `queued`, with Slurm's reason.
fn slurm_jobs(run_id: &str, units: &mut [units::UnitStatus]) {
    let rows = match crate::exec::slurm::squeue(run_id) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("warning: {e}; Slurm job states are not shown");
            return;
        }
    };
    for u in units.iter_mut() {
        let Some(id) = &u.external_id else { continue };
        let Some(row) = rows.iter().find(|r| &r.id == id) else { continue };
        u.job = Some(units::JobState {
            id: row.id.clone(),
            state: row.state.clone(),
            reason: row.reason.clone(),
            node: (!row.node.is_empty()).then(|| row.node.clone()),
        });
        if matches!(u.state.as_str(), "done" | "failed") {
            continue;
        }
        match row.state.as_str() {
            "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" => {
                u.state = "queued".into();
                u.detail = Some(format!("Slurm: {} ({})", row.state, row.reason));
            }
            "RUNNING" | "CONFIGURING" | "COMPLETING" => {
                u.state = "running".into();
                u.detail = None;
                if !row.node.is_empty() {
                    u.host = Some(row.node.clone());
                }
            }
            _ => {}
        }
    }
}

/// `kitt runs follow`: while another kitt drives the run, prints its steps as they end; once none
/// does (a detached driver finished, or died), prints the outcome or drives the rest itself:
/// it adopts the units that still run, places the others, merges and reports.
pub fn follow(runs_dir: Option<&Path>, id: &str, store: Option<&Path>, output: Output, quiet: bool) -> i32 {
    let info = match find(runs_dir, id) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let plan_json = read_plan(&info.path);
    let mut said: HashMap<String, String> = HashMap::new();
    let mut watching = false;
    loop {
        let Some(now) = dir::info(&info.path) else {
            eprintln!("error: run {id} is gone from {}", info.path.display());
            return EXIT_FAILED;
        };
        match now.status {
            dir::RunStatus::Running => {
                if !watching && !quiet {
                    if let Some(l) = RunLock::holder(&run::runlock::lock_path(&info.path)) {
                        eprintln!("following run {id}, driven by pid {} on {}", l.owner.pid, l.host);
                    }
                    watching = true;
                }
                if !quiet && let Ok(records) = journal::read_run(&info.path) {
                    say_progress(&plan_json, &records, &mut said);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            dir::RunStatus::Succeeded | dir::RunStatus::Failed => {
                let report = std::fs::read(info.path.join("report").join("result.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<crate::report::RunReport>(&b).ok());
                // A Slurm report job writes the run directory only (a node's store may sit on NFS):
                // the run reaches this machine's store here.
                let slurm = crate::exec::state::ExecutorState::load(&info.path)
                    .ok()
                    .flatten()
                    .is_some_and(|e| e.executor == crate::exec::ExecutorKind::Slurm);
                if slurm && let Some(r) = &report {
                    super::results::index_finished(store, r, &info.path, quiet || output == Output::Json);
                }
                match (output, &report) {
                    (Output::Json, _) => print_json(&json!({
                        "run_id": id, "run_dir": info.path, "status": now.status, "report": report,
                    })),
                    (Output::Text, Some(r)) => print!("{}", crate::report::summary(r)),
                    (Output::Text, None) => {}
                }
                eprintln!("run {id} {} ({})", status_name(now.status), info.path.display());
                return if now.status == dir::RunStatus::Succeeded { 0 } else { EXIT_FAILED };
            }
            dir::RunStatus::Unfinished if run::cancel_request_path(&info.path).exists() => {
                eprintln!(
                    "run {id} was cancelled (`kitt runs cancel`); `kitt apply {}` resumes it",
                    info.meta.file.display()
                );
                return EXIT_INTERRUPTED;
            }
            dir::RunStatus::Unfinished => return drive_rest(runs_dir, &info, store, output, quiet),
        }
    }
}

/// Prints each step that reached a new end since the last call.
fn say_progress(plan: &Json, records: &[journal::Record], said: &mut HashMap<String, String>) {
    let states = step_states(records);
    for s in plan["steps"].as_array().into_iter().flatten() {
        let key = s["key"].as_str().unwrap_or_default();
        let Some((state, detail)) = states.get(key) else { continue };
        if state == "running" || said.get(key) == Some(state) {
            continue;
        }
        said.insert(key.to_string(), state.clone());
        let detail = detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
        eprintln!("  {:<9} {:<8} {}{detail}", s["kind"].as_str().unwrap_or(""), state, step_label(plan, s));
    }
}

/// Drives an unfinished run that nothing drives, with the executor it was placed by.
fn drive_rest(runs_dir: Option<&Path>, info: &dir::RunInfo, store: Option<&Path>, output: Output, quiet: bool) -> i32 {
    let plan = match run::work::open_run(&info.path) {
        Ok((_, plan)) => plan,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let recorded = match crate::exec::state::ExecutorState::load(&info.path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let placement = PlacementFlags {
        executor: Some(recorded.as_ref().map_or_else(Default::default, |r| r.executor)),
        workers: recorded.as_ref().map_or(1, |r| r.workers as u32),
        max_attempts: recorded.as_ref().map_or(3, |r| r.max_attempts),
        detach: false,
    };
    let flags = RunFlags {
        runs_dir: runs_dir.map(Path::to_path_buf),
        fresh: false,
        resume: Some(info.meta.id.clone()),
        accept_drift: false,
        rerun_failed: false,
        verify_models: false,
        store: store.map(Path::to_path_buf),
        output,
    };
    if !quiet {
        eprintln!("nothing drives run {}: driving it here", info.meta.id);
    }
    super::apply::drive(plan, &flags, Some(&placement), quiet, true)
}

/// `kitt runs cancel`: asks the run's driver to stop (a request file every driver watches, and
/// SIGTERM to a driver on this machine), stops units no driver watches, and waits until every
/// unit and the driver have ended.
pub fn cancel(runs_dir: Option<&Path>, id: &str, wait: Duration, output: Output) -> i32 {
    let info = match find(runs_dir, id) {
        Ok(i) => i,
        Err(code) => return code,
    };
    if matches!(info.status, dir::RunStatus::Succeeded | dir::RunStatus::Failed) {
        eprintln!("run {id} has ended ({}); nothing to cancel", status_name(info.status));
        return 0;
    }
    let request = json!({"by": dir::holder_description(), "unix_ns": journal::unix_ns()});
    if let Err(e) = dir::write_atomic(&run::cancel_request_path(&info.path), request.to_string().as_bytes()) {
        eprintln!("error: cannot write the cancel request into {}: {e}", info.path.display());
        return EXIT_FAILED;
    }
    let lock = run::runlock::lock_path(&info.path);
    let deadline = Instant::now() + wait;
    if let Some(l) = RunLock::holder(&lock)
        && !crate::run::pidfile::foreign(&l.owner)
        && let Ok(pid) = i32::try_from(l.owner.pid)
    {
        // SAFETY: kill(2) on the process that holds the run lock, identified by pid and start time.
        if crate::run::pidfile::still_running(&l.owner) {
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    // A driver stops its own units; wait for it to let go of the run first.
    while RunLock::is_held(&lock) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Units no driver watches (it died, or was detached and gone): stop them here.
    let mut stopped = Vec::new();
    if let Ok(Some(recorded)) = crate::exec::state::ExecutorState::load(&info.path) {
        let program = std::env::current_exe().unwrap_or_else(|_| "kitt".into());
        let mut exec: Box<dyn crate::exec::UnitExecutor> = match recorded.executor {
            crate::exec::ExecutorKind::Processes | crate::exec::ExecutorKind::Local => {
                Box::new(crate::exec::processes::Processes::new(program, info.path.clone()))
            }
            crate::exec::ExecutorKind::Agents => {
                let agents = run::work::open_agent_copy(&info.path).map_err(|e| e.to_string()).and_then(|(_, plan)| {
                    crate::exec::agents::Agents::for_run(
                        &info.meta.id,
                        &info.path,
                        crate::exec::agents::Wanted::of(&plan),
                    )
                });
                match agents {
                    Ok(a) => Box::new(a),
                    Err(e) => {
                        eprintln!("error: cannot stop the run's agent units: {e}");
                        return EXIT_FAILED;
                    }
                }
            }
            crate::exec::ExecutorKind::Slurm => {
                // The job that would drive the rest after the units must not.
                crate::exec::slurm::cancel_report_job(&info.meta.id);
                let slurm = run::work::open_run(&info.path).map_err(|e| e.to_string()).and_then(|(_, plan)| {
                    crate::exec::slurm::Slurm::for_run(&plan, &info.meta.id, &info.path).map_err(|e| e.to_string())
                });
                match slurm {
                    Ok(s) => Box::new(s),
                    Err(e) => {
                        eprintln!("error: cannot stop the run's Slurm jobs: {e}");
                        return EXIT_FAILED;
                    }
                }
            }
        };
        let mut running = Vec::new();
        for (unit, sub) in &recorded.units {
            exec.adopt(unit, sub.attempt, &sub.external_id);
            if exec.state(unit) == crate::exec::UnitState::Running {
                exec.cancel(unit);
                running.push(unit.clone());
            }
        }
        while running.iter().any(|u| exec.state(u) == crate::exec::UnitState::Running) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        stopped = running;
    }
    let plan = read_plan(&info.path);
    let records = journal::read_run(&info.path).unwrap_or_default();
    let statuses = units::statuses(&info.path, &plan, &records);
    let still: Vec<&units::UnitStatus> = statuses.iter().filter(|u| u.state == "running").collect();
    let driver_left = RunLock::is_held(&lock);
    match output {
        Output::Json => print_json(&json!({
            "run_id": id, "stopped_units": stopped, "units": statuses, "driver_running": driver_left,
        })),
        Output::Text => {
            for u in &statuses {
                println!("  {:<14} {:<10} {}/{} cells", u.id, u.state, u.cells_done, u.cells);
            }
        }
    }
    if driver_left || !still.is_empty() {
        eprintln!(
            "error: run {id} did not stop within {}: {} unit(s) still run{}; run `kitt runs cancel {id}` again",
            humantime::format_duration(wait),
            still.len(),
            if driver_left { ", and its driver holds the run" } else { "" }
        );
        return EXIT_FAILED;
    }
    eprintln!("run {id} cancelled; `kitt apply {}` resumes it", info.meta.file.display());
    0
}
