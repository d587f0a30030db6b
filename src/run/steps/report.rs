//! report: renders every reporter over all the run's cells — finished ones from their result
//! files, the rest as failed with the reason — and writes them under `report/`, `result.json`
//! (the canonical result model) always.
//!
//! Done when the files are written. It re-runs at the end of every apply, so a resumed run's
//! report covers every attempt.

use super::*;

impl RunExecutor {
    /// The result of every cell: finished ones from their step directories, the rest failed.
    pub fn report(&self) -> RunReport {
        let mut cells = Vec::new();
        // Why an engine never served its cells: the last failure of one of its lifecycle steps.
        let mut engine_failure: HashMap<usize, String> = HashMap::new();
        if let Ok(contents) = crate::run::journal::read(&self.run_dir.join("journal.jsonl")) {
            for r in &contents.records {
                if let crate::run::journal::Event::StepFailed { step, error, will_retry: false, .. } = &r.event
                    && let Some(s) = self.plan.steps.get(*step)
                    && matches!(
                        s.kind,
                        StepKind::Pull | StepKind::Start | StepKind::Connect | StepKind::Setup | StepKind::Warmup
                    )
                    && let Some(g) = s.group
                {
                    engine_failure
                        .insert(g, format!("{} of engine `{}` failed: {error}", s.kind.name(), self.plan.groups[g].id));
                }
            }
        }
        for s in self.plan.steps.iter().filter(|s| s.kind == StepKind::Collect) {
            let Some(ci) = s.cell else { continue };
            let path = self.run_dir.join("steps").join(&s.key).join("result.json");
            let result: Option<CellResult> = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let cell = match result {
                Some(mut r) => {
                    r.provenance.reused = self.reused.contains(&s.key);
                    r
                }
                None => {
                    let bench = s.deps.first().map(|d| &self.plan.steps[*d]);
                    let raw: Option<Json> = bench
                        .and_then(|b| {
                            std::fs::read(self.run_dir.join("steps").join(&b.key).join("benchmark.json")).ok()
                        })
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    let error = raw
                        .as_ref()
                        .and_then(|r| r["error"].as_str().map(String::from))
                        .or_else(|| engine_failure.get(&self.plan.cells[ci].group).cloned())
                        .unwrap_or_else(|| "did not run (see `kitt runs show`)".into());
                    CellResult {
                        schema: RESULT_SCHEMA.into(),
                        cell: self.identity(ci),
                        status: CellStatus::Failed,
                        error: Some(error),
                        metrics: raw.map(|r| r["metrics"].clone()).unwrap_or(Json::Null),
                        resources: None,
                        engine_metrics: None,
                        provenance: Provenance {
                            run_id: self.run_id.clone(),
                            key: bench.map(|b| b.key.clone()).unwrap_or_default(),
                            attempt: 0,
                            reused: false,
                            started_unix_ns: 0,
                            finished_unix_ns: 0,
                            facts: self.facts.clone(),
                            drift: Vec::new(),
                            prompts_exact: false,
                            granularity: self.plan.execution.granularity,
                        },
                    }
                }
            };
            cells.push(cell);
        }
        let failed_cells = cells.iter().filter(|c| c.status == CellStatus::Failed).count();
        RunReport {
            schema: "kitt.report/v1".into(),
            run_id: self.run_id.clone(),
            suite: self.plan.suite.name.clone(),
            suite_file: self.plan.suite.file.to_string_lossy().to_string(),
            kitt_version: env!("CARGO_PKG_VERSION").into(),
            facts: self.facts.clone(),
            hardware: Some(crate::run::fingerprint().clone()),
            repetitions: crate::report::repetitions(&cells),
            cells,
            failed_cells,
        }
    }

    pub(super) fn write_reports(&self) -> Result<Json, StepError> {
        let report = self.report();
        let dir = self.run_dir.join("report");
        // result.json is the canonical result model: always written; reporters add formats.
        let canonical = serde_json::to_vec_pretty(&report).map_err(err)?;
        crate::run::dir::write_atomic(&dir.join("result.json"), &canonical).map_err(err)?;
        let mut files = vec!["result.json".to_string()];
        for r in &self.plan.reporters {
            let bytes = match r.format {
                crate::manifest::template_kind::ReportFormat::Json => {
                    serde_json::to_vec_pretty(&report).map_err(err)?
                }
                crate::manifest::template_kind::ReportFormat::Csv => crate::report::csv(&report).into_bytes(),
                crate::manifest::template_kind::ReportFormat::Template => match &r.template {
                    Some(t) => crate::report::render_template(t, &report)
                        .map_err(|e| err(format!("reporter `{}`: {e}", r.name)))?
                        .into_bytes(),
                    None => continue,
                },
                crate::manifest::template_kind::ReportFormat::Html => match &r.template {
                    Some(t) => crate::report::html::render(t, &report)
                        .map_err(|e| err(format!("reporter `{}`: {e}", r.name)))?
                        .into_bytes(),
                    None => continue,
                },
            };
            if files.contains(&r.output) {
                continue;
            }
            crate::run::dir::write_inside(&dir, &r.output, &bytes)
                .map_err(|e| err(format!("reporter `{}`: cannot write {}: {e}", r.name, r.output)))?;
            files.push(r.output.clone());
        }
        Ok(json!({"files": files}))
    }
}
