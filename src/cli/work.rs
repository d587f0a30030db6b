//! `kitt work`: one unit of an existing run, with its outcome as an exit code an executor can
//! act on (0 done, 1 failed or refused, 130 cancelled, 3 lost its claim).

use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use super::apply::{runtime, watch_signals};
use super::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_LOST_CLAIM, Output, print_json};
use crate::cancel::Cancel;
use crate::run::steps::Progress;

/// The unit to run: `--unit`, or the first line of `--unit-file` (clap requires one of them).
pub fn unit_id(unit: Option<String>, file: Option<&Path>) -> Result<String, String> {
    if let Some(u) = unit {
        return Ok(u);
    }
    let Some(file) = file else { return Err("give --unit or --unit-file".into()) };
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("cannot read the unit file {}: {e}", file.display()))?;
    match text.lines().next().map(str::trim) {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(format!("the unit file {} is empty; it holds the id of the unit to run", file.display())),
    }
}

pub fn work(run_dir: &Path, unit: &str, take_over: bool, agent_copy: bool, output: Output, quiet: bool) -> i32 {
    let Some(rt) = runtime() else {
        return EXIT_FAILED;
    };
    rt.block_on(async move {
        let cancel = Cancel::default();
        watch_signals(cancel.clone());
        let o = match crate::run::work::work_opts(run_dir, unit, take_over, agent_copy, &cancel, Arc::new(Progress::default())).await {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILED;
            }
        };
        match output {
            Output::Json => print_json(&json!({
                "run_id": o.run_id, "unit": o.unit, "attempt": o.attempt, "committed": o.committed,
                "duplicates": o.duplicates, "failed_cells": o.failed_cells, "errors": o.errors,
                "interrupted": o.interrupted, "lost_claim": o.lost_claim,
            })),
            Output::Text => {
                for e in &o.errors {
                    eprintln!("error: {e}");
                }
                if !quiet {
                    eprintln!(
                        "unit {} of run {} (attempt {}): {} step(s) committed, {} duplicate(s) discarded, {} failed cell(s)",
                        o.unit, o.run_id, o.attempt, o.committed, o.duplicates, o.failed_cells
                    );
                }
            }
        }
        if o.lost_claim {
            eprintln!("error: unit {} lost its claim; another attempt holds it now", o.unit);
            EXIT_LOST_CLAIM
        } else if o.interrupted {
            EXIT_INTERRUPTED
        } else if o.failed_cells > 0 || !o.errors.is_empty() {
            EXIT_FAILED
        } else {
            0
        }
    })
}
