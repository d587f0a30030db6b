//! `kitt work`: one unit of an existing run, with its outcome as an exit code an executor can
//! act on (0 done, 1 failed or refused, 130 cancelled, 3 lost its claim).

use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use super::apply::{runtime, watch_signals};
use super::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_LOST_CLAIM, Output, print_json};
use crate::cancel::Cancel;
use crate::run::steps::Progress;

pub fn work(run_dir: &Path, unit: &str, output: Output, quiet: bool) -> i32 {
    let Some(rt) = runtime() else {
        return EXIT_FAILED;
    };
    rt.block_on(async move {
        let cancel = Cancel::default();
        watch_signals(cancel.clone());
        let o = match crate::run::work::work(run_dir, unit, &cancel, Arc::new(Progress::default())).await {
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
