//! The `sbatch` submissions a plan would make on Slurm (`kitt plan SUITE --output sbatch`).
//!
//! Plain data only: this module builds each array job's argv (a `Vec<String>`, handed to
//! `sbatch` as it is, never joined into a command line that a shell runs), the fixed job script
//! and the units list that maps an array index to a unit id. It submits nothing: the Slurm
//! executor (`exec::slurm`) submits what it builds.
//!
//! The job script holds no suite text and no secret (Slurm keeps scripts in its state
//! directory): it reads its unit id from the units list by `$SLURM_ARRAY_TASK_ID` and execs
//! `kitt work`. Units of one resource shape (`execution.slurm`, an engine's `slurm` in its
//! place, and one task per client shard where a cell sends from several clients) share one array
//! job (the Slurm executor submits the units it places together as one, and lost ones again as
//! another).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Plan;
use crate::manifest::slurm::Slurm;

/// What stands for the run id in a plan: `kitt apply` creates the run.
pub const RUN_PLACEHOLDER: &str = "RUN";

/// One array job: its argv, its script and the units its array indexes name.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ArrayJob {
    /// `sbatch` and its arguments, the job script's path last.
    pub argv: Vec<String>,
    /// Where the job script is written, under the run directory.
    pub script_path: PathBuf,
    pub script: String,
    /// Where the units list is written: line `i` (from 0) is array index `i`'s unit id.
    pub units_path: PathBuf,
    pub units: Vec<String>,
}

/// The submissions of `plan` for run `run`, or `None` when it has no `execution.slurm`.
pub fn jobs(plan: &Plan, run: &str) -> Option<Vec<ArrayJob>> {
    let slurm = plan.execution.slurm.as_ref()?;
    let s = submission(plan, run, &kitt_path(slurm))?;
    Some(
        s.arrays
            .iter()
            .enumerate()
            .map(|(shape, a)| {
                let all: Vec<usize> = (0..a.units.len()).collect();
                ArrayJob {
                    argv: s.argv(shape, &all),
                    script_path: a.script_path.clone(),
                    script: a.script.clone(),
                    units_path: a.units_path.clone(),
                    units: a.units.clone(),
                }
            })
            .collect(),
    )
}

/// The directory of run `run` under the shared directory.
pub fn run_dir(slurm: &Slurm, run: &str) -> PathBuf {
    slurm.shared_dir.value.join(run)
}

/// Where kitt's binary is copied for the nodes (under its content hash at submission).
pub fn kitt_path(slurm: &Slurm) -> PathBuf {
    slurm.shared_dir.value.join("bin/kitt-BUILD")
}

/// The path of the copy of the kitt build `build` (its version and content hash) every node runs.
pub fn kitt_copy_path(slurm: &Slurm, build: &str) -> PathBuf {
    slurm.shared_dir.value.join("bin").join(format!("kitt-{build}"))
}

/// The name of run `run`'s array jobs (squeue finds them by it).
pub fn job_name(run: &str) -> String {
    format!("kitt-{run}")
}

/// What submitting units of one run takes: per resource shape (`execution.slurm`, or an engine's
/// `slurm` in its place) one array job's options, job script and units list (array index → unit
/// id), and the report job's script.
#[derive(Debug, Clone)]
pub struct Submission {
    pub slurm_dir: PathBuf,
    /// One per shape, in the order the plan's units first use them.
    pub arrays: Vec<Shape>,
    report_path: PathBuf,
    report_script: String,
    /// Options the report job shares with the units' jobs (partition, account, time, extra).
    report_options: Vec<String>,
    max_jobs: Option<u32>,
}

/// The array job of one resource shape.
#[derive(Debug, Clone)]
pub struct Shape {
    pub script_path: PathBuf,
    pub script: String,
    pub units_path: PathBuf,
    pub units: Vec<String>,
    /// Every option but `--array` (between `sbatch --parsable` and the script).
    options: Vec<String>,
}

/// The submission of `plan`'s units for run `run`, whose tasks run the kitt binary at `kitt`.
pub fn submission(plan: &Plan, run: &str, kitt: &Path) -> Option<Submission> {
    let slurm = plan.execution.slurm.as_ref()?;
    let dir = run_dir(slurm, run);
    let slurm_dir = dir.join("slurm");
    let report_path = slurm_dir.join("report.sh");
    let mut common: Vec<String> = vec![
        "--requeue".into(),
        "--signal=B:TERM@120".into(),
        "--export=NONE".into(),
        "--comment".into(),
        format!("kitt:{run}"),
        "--job-name".into(),
        job_name(run),
        "--output".into(),
        slurm_dir.join("%A_%a.log").display().to_string(),
        // A requeued task appends to its log instead of erasing the lost one's.
        "--open-mode=append".into(),
        // The submitting directory may not exist on the nodes; the run's does.
        "--chdir".into(),
        dir.display().to_string(),
    ];
    // A node is the boundary of `isolation: host`: no other job shares it.
    if plan.execution.isolation == crate::manifest::suite::Isolation::Host {
        common.push("--exclusive".into());
    }
    common.extend(["--partition".into(), slurm.partition.value.clone()]);
    // Shapes in the order the units first use them; each unit's engine may replace values, and
    // a unit whose cells send from several clients has a task for each.
    type Key<'a> = (Option<&'a crate::manifest::slurm::SlurmShape>, u32, bool);
    let mut shapes: Vec<Key> = Vec::new();
    let mut members: Vec<Vec<String>> = Vec::new();
    for u in &plan.units {
        let tasks = client_tasks(plan, u);
        // Whether its tasks may spread over nodes: only shards of an engine reached over the
        // network may (units without shards share a shape whatever their engine mode).
        let spread = tasks > 1 && plan.groups[u.group].mode.connects();
        let shape = (plan.groups[u.group].slurm.as_ref(), tasks, spread);
        let i = shapes.iter().position(|s| *s == shape).unwrap_or_else(|| {
            shapes.push(shape);
            members.push(Vec::new());
            shapes.len() - 1
        });
        members[i].push(u.id.clone());
    }
    let env = node_env(slurm);
    let arrays = shapes
        .into_iter()
        .zip(members)
        .enumerate()
        .map(|(i, ((shape, tasks, spread), units))| {
            let mut options = common.clone();
            if tasks > 1 {
                // One task per client shard (each a job step of its own); on the engine's node,
                // unless the engine is reached over the network (an endpoint).
                options.push(format!("--ntasks={tasks}"));
                if !spread {
                    options.push("--nodes=1".into());
                }
            }
            let gres = shape.and_then(|s| s.gres.clone()).or_else(|| slurm.gres.as_ref().map(|g| g.value.clone()));
            if let Some(g) = gres {
                options.extend(["--gres".into(), g]);
            }
            let time = shape.and_then(|s| s.time.clone()).unwrap_or_else(|| slurm.time.value.clone());
            options.extend(["--time".into(), time]);
            if let Some(a) = &slurm.account {
                options.extend(["--account".into(), a.value.clone()]);
            }
            let constraint =
                shape.and_then(|s| s.constraint.clone()).or_else(|| slurm.constraint.as_ref().map(|c| c.value.clone()));
            if let Some(c) = constraint {
                options.extend(["--constraint".into(), c]);
            }
            options.extend(slurm.extra.iter().map(|e| e.value.clone()));
            let units_path = slurm_dir.join(format!("units-{i}.txt"));
            Shape {
                script_path: slurm_dir.join(format!("job-{i}.sh")),
                script: script(kitt, &dir, &units_path, &env, tasks),
                units_path,
                units,
                options,
            }
        })
        .collect();
    let mut report_options = vec![
        "--export=NONE".to_string(),
        "--comment".into(),
        format!("kitt:{run}"),
        "--job-name".into(),
        format!("kitt-{run}-report"),
        "--output".into(),
        slurm_dir.join("report-%j.log").display().to_string(),
        "--open-mode=append".into(),
        "--chdir".into(),
        dir.display().to_string(),
        "--partition".into(),
        slurm.partition.value.clone(),
        "--time".into(),
        slurm.time.value.clone(),
    ];
    if let Some(a) = &slurm.account {
        report_options.extend(["--account".into(), a.value.clone()]);
    }
    report_options.extend(slurm.extra.iter().map(|e| e.value.clone()));
    let runs_root = slurm.shared_dir.value.clone();
    Some(Submission {
        report_script: report_script(kitt, run, &runs_root),
        slurm_dir,
        arrays,
        report_path,
        report_options,
        max_jobs: slurm.max_jobs.as_ref().map(|m| m.value),
    })
}

/// Slurm's `--array` list of `indices` (ascending): runs as ranges, `%max_jobs` last.
pub fn array_spec(indices: &[usize], max_jobs: Option<u32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        let mut end = start;
        while i + 1 < indices.len() && indices[i + 1] == end + 1 {
            i += 1;
            end = indices[i];
        }
        parts.push(if end == start { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    let mut spec = parts.join(",");
    if let Some(m) = max_jobs {
        spec.push_str(&format!("%{m}"));
    }
    spec
}

impl Submission {
    /// `sbatch` and its arguments for one array job of shape `shape`'s units at `indices`.
    pub fn argv(&self, shape: usize, indices: &[usize]) -> Vec<String> {
        let a = &self.arrays[shape];
        let mut argv = vec!["sbatch".to_string(), "--parsable".into()];
        argv.push(format!("--array={}", array_spec(indices, self.max_jobs)));
        argv.extend(a.options.iter().cloned());
        argv.push(a.script_path.display().to_string());
        argv
    }

    /// `sbatch` and its arguments for the report job, which waits for every task of `arrays`.
    pub fn report_argv(&self, arrays: &[&str]) -> Vec<String> {
        let mut argv = vec!["sbatch".to_string(), "--parsable".into()];
        if !arrays.is_empty() {
            argv.push(format!("--dependency=afterany:{}", arrays.join(":")));
        }
        argv.extend(self.report_options.iter().cloned());
        argv.push(self.report_path.display().to_string());
        argv
    }

    /// Passes these environment variables of the submitting kitt to the tasks by name (never
    /// their values through Slurm): `--export=NAME,…` instead of `--export=NONE`.
    pub fn forward_env(&mut self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let export = format!("--export={}", names.join(","));
        let options = self.arrays.iter_mut().flat_map(|a| a.options.iter_mut());
        for o in options.chain(self.report_options.iter_mut()) {
            if o == "--export=NONE" {
                *o = export.clone();
            }
        }
    }

    /// Writes the job scripts and the units lists into the run's `slurm/` directory.
    pub fn write(&self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(&self.slurm_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.slurm_dir.display()))?;
        let mut files: Vec<(&PathBuf, String, u32)> = Vec::new();
        for a in &self.arrays {
            let mut list = a.units.join("\n");
            list.push('\n');
            files.push((&a.units_path, list, 0o644));
            files.push((&a.script_path, a.script.clone(), 0o755));
        }
        files.push((&self.report_path, self.report_script.clone(), 0o755));
        for (path, text, mode) in files {
            crate::run::dir::write_atomic(path, text.as_bytes())
                .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// Paths the job script exports for `kitt work` on the node (paths, never secrets).
fn node_env(slurm: &Slurm) -> Vec<(&'static str, &Path)> {
    let mut env = Vec::new();
    if let Some(h) = &slurm.host_lock {
        env.push(("KITT_HOST_LOCK", h.value.as_path()));
    }
    if let Some(f) = &slurm.secrets_file {
        env.push((crate::secrets::FILE_ENV, f.value.as_path()));
    }
    env
}

/// The most client shards any cell of unit `u` sends from (1: it sends from this process).
fn client_tasks(plan: &Plan, u: &super::Unit) -> u32 {
    u.steps
        .iter()
        .filter_map(|s| plan.steps[*s].cell)
        .filter_map(|c| plan.cells[c].clients.map(|c| c.count))
        .max()
        .unwrap_or(1)
}

/// The fixed job script: array index → unit id → `exec kitt work`.
fn script(kitt: &Path, run_dir: &Path, units: &Path, env: &[(&str, &Path)], client_tasks: u32) -> String {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let mut lock: String = env.iter().map(|(name, path)| format!("export {name}={}\n", q(path))).collect();
    if client_tasks > 1 {
        lock.push_str(&format!("export {}={client_tasks}\n", crate::bench::load::clients::SLURM_TASKS_ENV));
    }
    format!(
        "#!/bin/sh\n\
         # Written by kitt: runs one unit of a run; it holds no suite text and no secret.\n\
         set -eu\n\
         : \"${{SLURM_ARRAY_TASK_ID:?kitt: run this script as a task of a Slurm array job}}\"\n\
         unit=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {units})\n\
         if [ -z \"$unit\" ]; then echo \"kitt: no unit at array index $SLURM_ARRAY_TASK_ID\" >&2; exit 1; fi\n\
         {lock}exec {kitt} work --run-dir {run_dir} --unit \"$unit\"\n",
        units = q(units),
        kitt = q(kitt),
        run_dir = q(run_dir),
    )
}

/// The report job's script: `kitt runs follow` drives what is left of the run and reports it into
/// the run directory only (a node's store may sit on NFS, where SQLite's WAL does not work):
/// `kitt results import` indexes it.
fn report_script(kitt: &Path, run: &str, runs_root: &Path) -> String {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    format!(
        "#!/bin/sh\n\
         # Written by kitt: after the run's tasks ended, places lost units again and writes the report.\n\
         exec {kitt} runs follow {run} --runs-dir {root} --store off\n",
        kitt = q(kitt),
        run = shell_quote(run),
        root = q(runs_root),
    )
}

/// `word` as one POSIX shell word: as it is when it is plain, else single-quoted.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '%' | '@' | ','));
    if plain { word.to_string() } else { format!("'{}'", word.replace('\'', "'\\''")) }
}

/// The submissions as text: per array job its units, the argv as one shell-quoted line, and the
/// job script.
pub fn text(plan: &Plan, jobs: &[ArrayJob]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# suite `{}`: {} unit(s) in {} array job(s); nothing is submitted.\n\
         # `{RUN_PLACEHOLDER}` stands for the run id and `kitt-BUILD` for kitt's content hash, both made at submission.",
        plan.suite.name,
        plan.units.len(),
        jobs.len()
    );
    for (i, job) in jobs.iter().enumerate() {
        let _ = writeln!(out, "\n# array job {}: units list {}", i + 1, job.units_path.display());
        for (index, unit) in job.units.iter().enumerate() {
            let _ = writeln!(out, "#   {index:>3}  {unit}");
        }
        let line: Vec<String> = job.argv.iter().map(|a| shell_quote(a)).collect();
        let _ = writeln!(out, "{}", line.join(" "));
        let _ = writeln!(out, "\n# job script {}", job.script_path.display());
        out.push_str(&job.script);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(shell_quote("--qos=bench"), "--qos=bench");
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }
}
