//! The `slurm` executor: each unit is a task of a Slurm array job running
//! `kitt work --run-dir DIR --unit ID` on whatever node Slurm gives it.
//!
//! Slurm queues, places, allocates GPUs and requeues; kitt keeps the plan, the keys and the
//! journal. The run directory lives under `execution.slurm.shared_dir`, which every node mounts.
//! Units placed together are submitted together: [`UnitExecutor::submit`] only queues a unit, and
//! the next [`UnitExecutor::state`] submits every queued unit as one `sbatch --array=i,j,…%max_jobs`
//! (so Slurm, not the driver, throttles them, and a hundred units are one submission). The
//! argv, the fixed job script and the units list come from `plan::sbatch`.
//!
//! States come from one `squeue` per poll (every `KITT_SLURM_POLL`, default 10 s) for all the
//! run's jobs, never one per unit. Slurm forgets a finished job after `MinJobAge`, so how a unit
//! ended is read from its attempt's journal shard, which is the truth: a job gone from squeue
//! without a finish record is awaited `KITT_SLURM_EXIT_READ_TIMEOUT` (default 120 s, for NFS
//! attribute caches) before it counts as lost. Slurm, not a lease, judges liveness here: a
//! node that stops answering is marked down after `SlurmdTimeout` and its task requeued (the
//! requeued task claims the next attempt itself, see `run::work`), a hung one meets its time
//! limit. A task that Slurm stopped (time limit, an outside `scancel`, node failure without
//! requeue) is lost, and placed again while attempts are left.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{ExecError, UnitExecutor, UnitState};
use crate::plan::Plan;
use crate::plan::sbatch::{self, Submission};
use crate::run::journal::{self, Event};

/// How often squeue is asked (a duration, such as `10s` or `500ms`).
pub const POLL_ENV: &str = "KITT_SLURM_POLL";
/// How long a job gone from squeue is awaited for its finish record (a duration).
pub const EXIT_READ_TIMEOUT_ENV: &str = "KITT_SLURM_EXIT_READ_TIMEOUT";

/// The variables of the submitting kitt that its tasks get: kitt's settings and test hooks,
/// never a secret (those are read on the node: its environment, or `{from_env}` files).
fn forwarded_to_tasks(name: &str) -> bool {
    const PREFIXES: &[&str] = &["KITT_TEST_", "KITT_SLURM_", "KITT_SIM_"];
    const NAMES: &[&str] =
        &["KITT_HOST_LOCK", "KITT_MACHINE_ID", "KITT_OFFLINE", "KITT_CACHE_DIR", "KITT_DOCKER_TIMEOUT", "RUST_LOG"];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

fn env_duration(name: &str, default: Duration) -> Duration {
    std::env::var(name).ok().and_then(|v| humantime::parse_duration(v.trim()).ok()).unwrap_or(default)
}

/// One row of `squeue`: an array task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `ARRAYJOB_TASK`, as `%i` prints an array task.
    pub id: String,
    /// The state (`%T`): PENDING, RUNNING, COMPLETING, COMPLETED, FAILED, TIMEOUT, …
    pub state: String,
    /// Why it waits or ended (`%r`): `None`, `Resources`, `BeginTime`, …
    pub reason: String,
    /// Its node while it runs (`%N`).
    pub node: String,
}

/// The squeue format kitt asks for: explicit fields, `|`-separated (no field holds a `|`).
pub const SQUEUE_FORMAT: &str = "%i|%T|%r|%N";

/// Parses `squeue -h -o SQUEUE_FORMAT` output.
pub fn parse_squeue(out: &str) -> Vec<Row> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.trim().splitn(4, '|');
            let id = f.next()?.trim().to_string();
            let state = f.next()?.trim().to_string();
            let reason = f.next().unwrap_or("").trim().to_string();
            let node = f.next().unwrap_or("").trim().to_string();
            (!id.is_empty()).then_some(Row { id, state, reason, node })
        })
        .collect()
}

/// Asks squeue for every array task of the run `run_id` (its jobs are named `kitt-<run>`).
pub fn squeue(run_id: &str) -> Result<Vec<Row>, String> {
    let out = Command::new("squeue")
        .args(["-h", "-r", "--name", &sbatch::job_name(run_id), "-o", SQUEUE_FORMAT])
        .output()
        .map_err(|e| format!("cannot run squeue: {e}"))?;
    if !out.status.success() {
        return Err(format!("squeue failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(parse_squeue(&String::from_utf8_lossy(&out.stdout)))
}

/// The `--gpus` of a container engine started inside a Slurm job whose GPUs are `job_gpus`
/// (`SLURM_JOB_GPUS`: device minor numbers, such as `0,2`), and a warning when it was narrowed.
/// Containers live outside the job's cgroup and would see every GPU of the node, so what the
/// engine asks (`all`, a count) becomes `device=` of exactly the allocation, by UUID where NVML
/// names them (`uuids`, in the allocation's order), else by index. An engine that asks no GPU
/// gets none; one that names its devices keeps them, with a warning if they are not the job's.
pub fn narrow_gpus(
    requested: Option<&str>,
    job_gpus: &str,
    uuids: Option<Vec<String>>,
) -> (Option<String>, Option<String>) {
    let Some(requested) = requested else { return (None, None) };
    let minors: Vec<&str> = job_gpus.split(',').map(str::trim).filter(|g| !g.is_empty()).collect();
    if minors.is_empty() {
        return (Some(requested.to_string()), None);
    }
    let devices: Vec<String> = match uuids {
        Some(u) if u.len() == minors.len() => u,
        _ => minors.iter().map(|m| m.to_string()).collect(),
    };
    // docker parses `--gpus` as CSV: a list of devices is quoted as one field.
    let value = |d: &[String]| {
        if d.len() == 1 { format!("device={}", d[0]) } else { format!("\"device={}\"", d.join(",")) }
    };
    let allocation = minors.join(",");
    match requested {
        "all" => (
            Some(value(&devices)),
            Some(format!(
                "`gpus: all` narrowed to the Slurm job's GPUs ({allocation}): a container sees every GPU of the node otherwise"
            )),
        ),
        n if n.parse::<usize>().is_ok() => {
            let n: usize = n.parse().unwrap_or(0);
            let warn = (n > devices.len())
                .then(|| format!("`gpus: {n}` asks more GPUs than the Slurm job holds ({allocation}); it gets those"));
            (Some(value(&devices[..n.clamp(1, devices.len())])), warn)
        }
        other => {
            let named = other.trim_matches('"').trim_start_matches("device=");
            let outside = named.split(',').any(|d| !devices.iter().any(|x| x == d) && !minors.contains(&d));
            let warn = outside
                .then(|| format!("`gpus: {other}` names GPUs outside the Slurm job's allocation ({allocation})"));
            (Some(other.to_string()), warn)
        }
    }
}

/// Cancels run `run_id`'s report job (`--detach`), if one waits or runs.
pub fn cancel_report_job(run_id: &str) {
    let name = format!("{}-report", sbatch::job_name(run_id));
    if let Err(e) = Command::new("scancel").args(["--name", &name]).output() {
        tracing::warn!("cannot run scancel for job {name}: {e}");
    }
}

/// Whether a Slurm state is one a job ends in.
fn terminal(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "TIMEOUT"
            | "CANCELLED"
            | "NODE_FAIL"
            | "OUT_OF_MEMORY"
            | "PREEMPTED"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "SPECIAL_EXIT"
    )
}

/// What a unit's newest attempt's journal shard says of how it ended (none while it has no
/// finish record). `cancelled`: kitt asked it to stop; an interrupted attempt nobody here
/// stopped was stopped by Slurm (time limit, an outside scancel) and is lost.
pub fn shard_end(run_dir: &Path, unit: &str, from_attempt: u32, cancelled: bool) -> Option<UnitState> {
    let newest = crate::run::lease::file::newest(&run_dir.join("attempts").join(unit))?;
    if newest < from_attempt {
        return None;
    }
    let last = journal::read(&journal::shard_path(run_dir, unit, newest))
        .ok()
        .and_then(|c| c.records.last().map(|r| r.event.clone()))?;
    Some(match last {
        Event::RunFinished { ok: true, .. } => UnitState::Succeeded,
        Event::RunFinished { failed_cells, .. } => {
            UnitState::Failed(format!("{failed_cells} cell(s) failed; its journal shard says why"))
        }
        Event::RunInterrupted { .. } if cancelled => UnitState::Cancelled,
        Event::RunInterrupted { .. } => {
            UnitState::Lost("Slurm stopped it (its time limit, or a scancel outside kitt)".into())
        }
        Event::RunStopped { reason } => UnitState::Failed(reason),
        _ => return None,
    })
}

/// A unit's submission.
struct Job {
    /// `ARRAYJOB_TASK`.
    id: String,
    /// The attempt the submission was expected to claim (a requeue claims later ones).
    attempt: u32,
    /// When squeue last did not list it (it finished, or Slurm forgot it).
    gone_since: Option<Instant>,
}

pub struct Slurm {
    run_id: String,
    run_dir: PathBuf,
    submission: Submission,
    /// Unit id → its shape's array job and array index (its line in that shape's units list).
    index: HashMap<String, (usize, usize)>,
    queued: Vec<String>,
    /// Why the last submission of queued units failed, per unit.
    refused: HashMap<String, String>,
    jobs: HashMap<String, Job>,
    rows: HashMap<String, Row>,
    polled: Option<Instant>,
    poll: Duration,
    exit_read_timeout: Duration,
    ended: HashMap<String, UnitState>,
    cancelled: HashMap<String, u32>,
    detached: bool,
}

impl Slurm {
    /// The executor of run `run_id` at `run_dir` (under the shared directory), whose tasks run
    /// the kitt binary at `kitt` (a copy every node sees). Writes the job script and units list.
    pub fn new(plan: &Plan, run_id: &str, run_dir: &Path, kitt: &Path) -> Result<Slurm, ExecError> {
        let mut submission = sbatch::submission(plan, run_id, kitt).ok_or_else(|| ExecError::Submit {
            unit: "*".into(),
            reason: "the suite has no `execution.slurm`".into(),
        })?;
        // kitt's own settings reach the tasks by name (Slurm copies their values at submission);
        // nothing else of this environment, and so none of its secrets, goes through Slurm.
        let mut forwarded: Vec<String> = std::env::vars().map(|(k, _)| k).filter(|k| forwarded_to_tasks(k)).collect();
        forwarded.sort();
        submission.forward_env(&forwarded);
        submission.write().map_err(|reason| ExecError::Submit { unit: "*".into(), reason })?;
        let index = submission
            .arrays
            .iter()
            .enumerate()
            .flat_map(|(shape, a)| a.units.iter().enumerate().map(move |(i, u)| (u.clone(), (shape, i))))
            .collect();
        Ok(Slurm {
            run_id: run_id.to_string(),
            run_dir: run_dir.to_path_buf(),
            submission,
            index,
            queued: Vec::new(),
            refused: HashMap::new(),
            jobs: HashMap::new(),
            rows: HashMap::new(),
            polled: None,
            poll: env_duration(POLL_ENV, Duration::from_secs(10)),
            exit_read_timeout: env_duration(EXIT_READ_TIMEOUT_ENV, Duration::from_secs(120)),
            ended: HashMap::new(),
            cancelled: HashMap::new(),
            detached: false,
        })
    }

    /// The executor of run `run_id` at `run_dir`: kitt's running binary is copied into the shared
    /// directory under its build (version and content hash) first, as a `cargo install` on the
    /// login node is not on the nodes.
    pub fn for_run(plan: &Plan, run_id: &str, run_dir: &Path) -> Result<Slurm, ExecError> {
        let slurm = plan.execution.slurm.as_ref().ok_or_else(|| ExecError::Submit {
            unit: "*".into(),
            reason: "the suite has no `execution.slurm`, which the Slurm executor needs".into(),
        })?;
        let kitt = install_kitt(&sbatch::kitt_copy_path(slurm, &crate::run::facts::build_id()))
            .map_err(|reason| ExecError::Submit { unit: "*".into(), reason })?;
        Slurm::new(plan, run_id, run_dir, &kitt)
    }

    /// Leaves every submitted task to Slurm when this executor is dropped (`--detach`): their
    /// job ids are in the run's `executor.json`.
    pub fn detach(&mut self) {
        self.detached = true;
    }

    /// Submits every queued unit as one array job now.
    pub fn flush(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let units = std::mem::take(&mut self.queued);
        // One array job per shape among the queued units.
        let mut shapes: Vec<usize> = units.iter().filter_map(|u| self.index.get(u).map(|(s, _)| *s)).collect();
        shapes.sort_unstable();
        shapes.dedup();
        for shape in shapes {
            let members: Vec<&String> =
                units.iter().filter(|u| self.index.get(*u).is_some_and(|(s, _)| *s == shape)).collect();
            let mut indices: Vec<usize> = members.iter().map(|u| self.index[*u].1).collect();
            indices.sort_unstable();
            let argv = self.submission.argv(shape, &indices);
            match run_sbatch(&argv) {
                Ok(array_job) => {
                    for u in members {
                        let i = self.index[u].1;
                        let attempt = crate::run::lease::file::newest(&self.run_dir.join("attempts").join(u))
                            .map_or(0, |n| n + 1);
                        self.jobs.insert(u.clone(), Job { id: format!("{array_job}_{i}"), attempt, gone_since: None });
                    }
                }
                Err(reason) => {
                    for u in members {
                        self.refused.insert(u.clone(), reason.clone());
                    }
                }
            }
        }
        // The new tasks are asked about at the next state, not a poll later.
        self.polled = None;
    }

    /// Submits a job that runs `kitt runs follow` after every task of the submitted array jobs
    /// ended (`--detach`): it places lost units again and renders the report. Its job id.
    pub fn submit_report_job(&mut self) -> Result<String, ExecError> {
        self.flush();
        let arrays: HashSet<&str> = self.jobs.values().filter_map(|j| j.id.split('_').next()).collect();
        let mut arrays: Vec<&str> = arrays.into_iter().collect();
        arrays.sort_unstable();
        let argv = self.submission.report_argv(&arrays);
        run_sbatch(&argv).map_err(|reason| ExecError::Submit { unit: "report".into(), reason })
    }

    /// A fresh squeue, at most once per poll interval.
    fn refresh(&mut self) {
        if self.polled.is_some_and(|p| p.elapsed() < self.poll) {
            return;
        }
        self.polled = Some(Instant::now());
        match squeue(&self.run_id) {
            Ok(rows) => self.rows = rows.into_iter().map(|r| (r.id.clone(), r)).collect(),
            // Nothing is judged on a failed poll: the rows of the last one stand.
            Err(e) => tracing::warn!("{e}; the run's job states are not refreshed"),
        }
    }

    fn log_path(&self, job: &str) -> PathBuf {
        self.submission.slurm_dir.join(format!("{job}.log"))
    }

    fn scancel(&self, args: &[&str], job: &str) {
        let out = Command::new("scancel").args(args).arg(job).output();
        match out {
            Ok(o) if !o.status.success() => {
                tracing::debug!("scancel {job}: {}", String::from_utf8_lossy(&o.stderr).trim())
            }
            Err(e) => tracing::warn!("cannot run scancel for job {job}: {e}"),
            _ => {}
        }
    }
}

/// Copies the running kitt binary to `to` unless a copy is there (written under a temporary name
/// and renamed, so a node never runs half a binary).
fn install_kitt(to: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt as _;
    if to.is_file() {
        return Ok(to.to_path_buf());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this kitt binary: {e}"))?;
    let dir = to.parent().ok_or_else(|| format!("{} has no parent directory", to.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".kitt-{}.tmp", std::process::id()));
    std::fs::copy(&exe, &tmp)
        .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
        .and_then(|_| std::fs::rename(&tmp, to))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot copy {} to {}: {e}", exe.display(), to.display())
        })?;
    Ok(to.to_path_buf())
}

/// Runs `sbatch --parsable …`; its job id (`--parsable` prints `ID[;CLUSTER]`).
fn run_sbatch(argv: &[String]) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("empty sbatch argv")?;
    let out = Command::new(program).args(args).output().map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!("sbatch refused the job: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("sbatch printed no job id: `{}`", stdout.trim()));
    }
    Ok(id)
}

impl UnitExecutor for Slurm {
    /// Queues the unit: it is submitted, with every unit queued beside it, at the next `state`.
    fn submit(&mut self, unit: &str) -> Result<(), ExecError> {
        if !self.index.contains_key(unit) {
            return Err(ExecError::Submit { unit: unit.into(), reason: "no such unit in the plan".into() });
        }
        self.ended.remove(unit);
        self.cancelled.remove(unit);
        self.refused.remove(unit);
        self.jobs.remove(unit);
        self.queued.push(unit.to_string());
        Ok(())
    }

    /// One array job holds them all, so they are submitted together or not at all.
    fn submit_gang(&mut self, units: &[&str]) -> Result<(), ExecError> {
        for u in units {
            self.submit(u)?;
        }
        self.flush();
        if let Some((u, why)) = units.iter().find_map(|u| self.refused.get(*u).map(|w| (u, w.clone()))) {
            return Err(ExecError::Submit { unit: u.to_string(), reason: why });
        }
        Ok(())
    }

    fn state(&mut self, unit: &str) -> UnitState {
        if let Some(s) = self.ended.get(unit) {
            return s.clone();
        }
        self.flush();
        if let Some(why) = self.refused.remove(unit) {
            let s = UnitState::Failed(why);
            self.ended.insert(unit.to_string(), s.clone());
            return s;
        }
        if !self.jobs.contains_key(unit) {
            return UnitState::Failed(format!("unit {unit} was never submitted"));
        }
        self.refresh();
        let cancelled = self.cancelled.contains_key(unit);
        let (id, attempt) = {
            let job = &self.jobs[unit];
            (job.id.clone(), job.attempt)
        };
        let row = self.rows.get(&id).cloned();
        let state = match row {
            Some(r) if !terminal(&r.state) => {
                if let Some(j) = self.jobs.get_mut(unit) {
                    j.gone_since = None;
                }
                return UnitState::Running;
            }
            Some(r) => match shard_end(&self.run_dir, unit, attempt, cancelled) {
                Some(s) => s,
                None if cancelled => UnitState::Cancelled,
                None => UnitState::Lost(format!(
                    "Slurm job {id} ended {} ({}) without a finish record; its log is {}",
                    r.state,
                    r.reason,
                    self.log_path(&id).display()
                )),
            },
            None => match shard_end(&self.run_dir, unit, attempt, cancelled) {
                Some(s) => s,
                None => {
                    let exit_read_timeout = self.exit_read_timeout;
                    let gone = self.jobs.get_mut(unit).map(|j| *j.gone_since.get_or_insert_with(Instant::now));
                    if gone.is_some_and(|g| g.elapsed() < exit_read_timeout) && !cancelled {
                        return UnitState::Running;
                    }
                    if cancelled {
                        UnitState::Cancelled
                    } else {
                        UnitState::Lost(format!(
                            "Slurm job {id} left the queue without a finish record; its log is {}",
                            self.log_path(&id).display()
                        ))
                    }
                }
            },
        };
        self.ended.insert(unit.to_string(), state.clone());
        state
    }

    /// A queued task is removed; a running one gets SIGTERM (kitt work stops its engine and
    /// journals the interruption), and a second one when asked again.
    fn cancel(&mut self, unit: &str) {
        if let Some(pos) = self.queued.iter().position(|u| u == unit) {
            self.queued.remove(pos);
            self.ended.insert(unit.to_string(), UnitState::Cancelled);
            return;
        }
        let Some(job) = self.jobs.get(unit) else { return };
        *self.cancelled.entry(unit.to_string()).or_default() += 1;
        match self.rows.get(&job.id).map(|r| r.state.as_str()) {
            Some("RUNNING" | "COMPLETING" | "CONFIGURING" | "SUSPENDED") => {
                self.scancel(&["--batch", "--signal=TERM"], &job.id)
            }
            _ => self.scancel(&[], &job.id),
        }
    }

    /// Slurm judges liveness here; a unit abandoned anyway is cancelled outright.
    fn abandon(&mut self, unit: &str, kill: bool) {
        if let Some(job) = self.jobs.get(unit) {
            let id = job.id.clone();
            if kill {
                self.scancel(&["--signal=KILL"], &id);
            }
            self.scancel(&[], &id);
        }
    }

    /// `ARRAYJOB_TASK`; none while the unit is queued here, not yet submitted.
    fn external_id(&self, unit: &str) -> Option<String> {
        self.jobs.get(unit).map(|j| j.id.clone())
    }

    fn adopt(&mut self, unit: &str, attempt: u32, external_id: &str) {
        self.ended.remove(unit);
        self.cancelled.remove(unit);
        self.jobs.insert(unit.to_string(), Job { id: external_id.to_string(), attempt, gone_since: None });
        self.polled = None;
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        // What still runs is stopped: a task gets SIGTERM twice (stop its engine now), a
        // pending one is removed from the queue.
        self.polled = None;
        self.refresh();
        let open: BTreeMap<String, String> = self
            .jobs
            .iter()
            .filter(|(u, _)| !self.ended.contains_key(*u))
            .map(|(u, j)| (u.clone(), j.id.clone()))
            .collect();
        for id in open.values() {
            match self.rows.get(id).map(|r| r.state.as_str()) {
                Some("RUNNING" | "COMPLETING" | "CONFIGURING" | "SUSPENDED") => {
                    self.scancel(&["--batch", "--signal=TERM"], id);
                    self.scancel(&["--batch", "--signal=TERM"], id);
                }
                Some(_) => self.scancel(&[], id),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_gets_exactly_the_jobs_gpus() {
        assert_eq!(narrow_gpus(None, "0,1", None), (None, None), "an engine without GPUs gets none");
        let (g, warn) = narrow_gpus(Some("all"), "1", None);
        assert_eq!(g.as_deref(), Some("device=1"));
        assert!(warn.unwrap().contains("narrowed"));
        let uuids = Some(vec!["GPU-a".to_string(), "GPU-b".to_string()]);
        assert_eq!(narrow_gpus(Some("all"), "2,3", uuids.clone()).0.as_deref(), Some("\"device=GPU-a,GPU-b\""));
        assert_eq!(narrow_gpus(Some("1"), "2,3", uuids.clone()), (Some("device=GPU-a".into()), None));
        let (g, warn) = narrow_gpus(Some("4"), "2,3", None);
        assert_eq!(g.as_deref(), Some("\"device=2,3\""));
        assert!(warn.unwrap().contains("more GPUs"));
        let (g, warn) = narrow_gpus(Some("device=5"), "2,3", None);
        assert_eq!(g.as_deref(), Some("device=5"));
        assert!(warn.unwrap().contains("outside"));
        assert_eq!(narrow_gpus(Some("all"), "", None), (Some("all".into()), None), "outside a GPU job: as asked");
    }

    #[test]
    fn squeue_rows_are_parsed_field_by_field() {
        let out = "12_0|RUNNING|None|node-a\n12_1|PENDING|Resources|\n13_4|PENDING|BeginTime|\n\n";
        let rows = parse_squeue(out);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0],
            Row { id: "12_0".into(), state: "RUNNING".into(), reason: "None".into(), node: "node-a".into() }
        );
        assert_eq!(rows[1].reason, "Resources");
        assert_eq!(rows[2].node, "");
        assert!(terminal("TIMEOUT") && terminal("NODE_FAIL") && !terminal("PENDING") && !terminal("COMPLETING"));
    }
}
