//! collect: assembles the cell's result — its benchmark's metrics, the window's resource samples
//! and engine-metric deltas, and provenance (run, attempt, observed facts, drift) — into
//! `result.json`.
//!
//! Done when the result is attached. On resume it goes with its benchmark: reused when both
//! finished, re-run when the benchmark re-runs.

use super::*;

impl RunExecutor {
    pub(super) fn identity(&self, ci: usize) -> CellIdentity {
        let c = &self.plan.cells[ci];
        CellIdentity {
            model: c.model.clone(),
            engine: c.engine.clone(),
            engine_template: self.plan.groups[c.group].template.clone(),
            benchmark: c.benchmark.clone(),
            template: c.template.clone(),
            params: c.params.clone(),
            swept: c.swept.clone(),
            run_index: c.run_index,
            sampling: c.sampling.clone(),
        }
    }

    pub(super) async fn collect(&self, step: usize) -> Result<Json, StepError> {
        let s = &self.plan.steps[step];
        let ci = s.cell.ok_or_else(|| err("collect step without a cell"))?;
        let bench_step =
            s.deps.first().map(|d| &self.plan.steps[*d]).ok_or_else(|| err("collect step without its benchmark"))?;
        let path = self.run_dir.join("steps").join(&bench_step.key).join("benchmark.json");
        let raw: Json = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| err(format!("cannot read {}", path.display())))?;
        let gi = self.plan.cells[ci].group;
        let mut facts = self.facts.clone();
        if let Some(e) = self.engines.lock().await.get(&self.at(step)?.unit) {
            facts.extend(e.facts.clone());
        }
        let mut drift = self.run_drift.clone();
        drift.extend(self.drift.lock().ok().and_then(|d| d.get(&gi).cloned()).unwrap_or_default());
        let result = CellResult {
            schema: RESULT_SCHEMA.into(),
            cell: self.identity(ci),
            status: CellStatus::Ok,
            error: None,
            metrics: raw["metrics"].clone(),
            resources: serde_json::from_value(raw["resources"].clone()).ok(),
            engine_metrics: serde_json::from_value(raw["engine_metrics"].clone()).ok(),
            provenance: Provenance {
                run_id: self.run_id.clone(),
                key: bench_step.key.clone(),
                attempt: raw["attempt"].as_u64().unwrap_or(0) as u32,
                reused: false,
                started_unix_ns: raw["started_unix_ns"].as_u64().unwrap_or(0),
                finished_unix_ns: raw["finished_unix_ns"].as_u64().unwrap_or(0),
                facts,
                drift,
                prompts_exact: raw["prompts_exact"].as_bool().unwrap_or(false),
                granularity: self.plan.execution.granularity,
            },
        };
        self.write(self.step_dir(&s.key)?.join("result.json"), &result)?;
        Ok(json!({"status": "ok"}))
    }
}
