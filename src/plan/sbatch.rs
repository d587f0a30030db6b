//! The `sbatch` submissions a plan would make on Slurm (`kitt plan SUITE --output sbatch`).
//!
//! Plain data only: this module builds each array job's argv (a `Vec<String>`, handed to
//! `sbatch` as it is, never joined into a command line that a shell runs), the fixed job script
//! and the units list that maps an array index to a unit id. It submits nothing; the Slurm
//! executor that will submit these is not written yet.
//!
//! The job script holds no suite text and no secret (Slurm keeps scripts in its state
//! directory): it reads its unit id from the units list by `$SLURM_ARRAY_TASK_ID` and execs
//! `kitt work`. Until engines can ask for resources of their own, every unit has the one shape
//! of `execution.slurm`, so a plan has one array job.

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
    let units: Vec<String> = plan.units.iter().map(|u| u.id.clone()).collect();
    if units.is_empty() {
        return Some(Vec::new());
    }
    Some(vec![array_job(slurm, run, 0, units)])
}

/// The directory of run `run` under the shared directory.
pub fn run_dir(slurm: &Slurm, run: &str) -> PathBuf {
    slurm.shared_dir.value.join(run)
}

/// Where kitt's binary is copied for the nodes (under its content hash at submission).
pub fn kitt_path(slurm: &Slurm) -> PathBuf {
    slurm.shared_dir.value.join("bin/kitt-BUILD")
}

fn array_job(slurm: &Slurm, run: &str, shape: usize, units: Vec<String>) -> ArrayJob {
    let dir = run_dir(slurm, run);
    let slurm_dir = dir.join("slurm");
    let script_path = slurm_dir.join(format!("job-{shape}.sh"));
    let units_path = slurm_dir.join(format!("units-{shape}.txt"));
    let last = units.len() - 1;
    let array = match &slurm.max_jobs {
        Some(m) => format!("--array=0-{last}%{}", m.value),
        None => format!("--array=0-{last}"),
    };
    let mut argv: Vec<String> = vec![
        "sbatch".into(),
        "--parsable".into(),
        array,
        "--requeue".into(),
        "--signal=B:TERM@120".into(),
        "--export=NONE".into(),
        "--comment".into(),
        format!("kitt:{run}"),
        "--job-name".into(),
        format!("kitt-{run}"),
        "--output".into(),
        slurm_dir.join("%A_%a.log").display().to_string(),
        "--partition".into(),
        slurm.partition.value.clone(),
    ];
    if let Some(g) = &slurm.gres {
        argv.extend(["--gres".into(), g.value.clone()]);
    }
    argv.extend(["--time".into(), slurm.time.value.clone()]);
    if let Some(a) = &slurm.account {
        argv.extend(["--account".into(), a.value.clone()]);
    }
    if let Some(c) = &slurm.constraint {
        argv.extend(["--constraint".into(), c.value.clone()]);
    }
    argv.extend(slurm.extra.iter().map(|e| e.value.clone()));
    argv.push(script_path.display().to_string());
    let script = script(&kitt_path(slurm), &dir, &units_path);
    ArrayJob { argv, script_path, script, units_path, units }
}

/// The fixed job script: array index → unit id → `exec kitt work`.
fn script(kitt: &Path, run_dir: &Path, units: &Path) -> String {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    format!(
        "#!/bin/sh\n\
         # Written by kitt: runs one unit of a run; it holds no suite text and no secret.\n\
         set -eu\n\
         : \"${{SLURM_ARRAY_TASK_ID:?kitt: run this script as a task of a Slurm array job}}\"\n\
         unit=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {units})\n\
         if [ -z \"$unit\" ]; then echo \"kitt: no unit at array index $SLURM_ARRAY_TASK_ID\" >&2; exit 1; fi\n\
         exec {kitt} work --run-dir {run_dir} --unit \"$unit\"\n",
        units = q(units),
        kitt = q(kitt),
        run_dir = q(run_dir),
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
