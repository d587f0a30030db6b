//! benchmark (eval): one cell of an eval benchmark — dataset, prompts, generation through the
//! engine with bounded concurrency, answer extraction and scoring.
//!
//! Done when `benchmark.json` (and items.jsonl) are written. Progress is checkpointed in the step
//! directory every few answers, so on resume an interrupted eval goes on from its last
//! checkpoint rather than from zero; a finished key is skipped.

use super::*;

impl RunExecutor {
    /// An eval cell: prepare the items (dataset, shots, prompts, context policy), answer them
    /// through the engine with bounded concurrency, checkpointing in the step directory so an
    /// interrupted eval resumes where it stopped, and score them.
    pub(super) async fn eval_benchmark(&self, step: usize, attempt: u32, cancel: &Cancel) -> Result<Json, StepError> {
        use crate::eval::{EvalOutcome, Prompt, RunOptions, TokenCounter};
        let s = &self.plan.steps[step];
        let ci = s.cell.ok_or_else(|| err("benchmark step without a cell"))?;
        let cell = &self.plan.cells[ci];
        let g = &self.plan.groups[cell.group];
        let (Some(spec), Some(call)) = (&cell.eval, &cell.request) else {
            return Err(err(format!("benchmark `{}` has no eval", cell.benchmark)));
        };
        let started = unix_ns();
        let (client, served) = self.engine_handle(self.at(step)?).await?;
        let mut call = (**call).clone();
        if let Some(name) = &served {
            call.body = bind_late(&call.body, &[("model.served_name", json!(name))]);
        }
        let mut opts = crate::eval::PrepareOptions::from_env(&self.plan.suite.dir);
        opts.cancel = cancel.clone();
        // The engine's context window, where its template has one, for the context policy.
        opts.context_window = ["ctx_size", "max_model_len", "num_ctx", "max_total_tokens"]
            .iter()
            .find_map(|k| g.params.get(*k).and_then(Json::as_u64))
            .map(|n| n as u32);
        if let Some(mut t) = self.tokenizer(g)? {
            if let Some(name) = &served {
                t.bind(&[("model.served_name", json!(name))]);
            }
            let c = client.clone();
            opts.counter = TokenCounter::Engine(Arc::new(move |prompt: Prompt| {
                let (c, t) = (c.clone(), t.clone());
                Box::pin(async move { t.count(&c, &prompt.text()).await.map(|n| n as u32) })
            }));
        }
        let prepared =
            crate::eval::prepare(spec, &opts).await.map_err(|e| err(format!("eval `{}`: {e}", cell.benchmark)))?;
        let dir = self.step_dir(&s.key)?;
        let concurrency = cell.params.get("concurrency").and_then(Json::as_u64).unwrap_or(8).max(1) as usize;
        let mut ropts = RunOptions::new(dir.join("eval-checkpoint.json"), concurrency, cancel.clone());
        // About twenty checkpoints per eval (at most every 50 answers): a kill loses little.
        ropts.checkpoint_every = (prepared.items.len() / 20).clamp(1, 50);
        self.progress.requests.store(0, Ordering::Relaxed);
        self.progress.requests_total.store(prepared.items.len() as u64, Ordering::Relaxed);
        if let Ok(mut l) = self.progress.label.lock() {
            *l = cell.label();
        }
        let origin = std::time::Instant::now();
        let deadlines: crate::engine::client::Deadlines = self.plan.execution.request_timeout.into();
        let generate = |req: crate::eval::Request| {
            let (client, call) = (client.clone(), call.clone());
            async move {
                let body = match req.prompt {
                    Prompt::Text(text) => bind_late(&call.body, &[("prompt", json!(text))]),
                    Prompt::Messages(messages) => bind_late(&call.body, &[("messages", json!(messages))]),
                };
                let mut record = crate::engine::client::RequestRecord::default();
                client.send_within(&call, body.to_string().as_bytes(), origin, &deadlines, &mut record).await;
                match record.error {
                    None => Ok(record.text),
                    Some(kind) => {
                        let detail = record.error_detail.unwrap_or_else(|| kind.to_string());
                        Err(crate::eval::Failure::new(kind.to_string(), detail))
                    }
                }
            }
        };
        self.progress.errors.store(0, Ordering::Relaxed);
        let (done, errors) = (self.progress.requests.clone(), self.progress.errors.clone());
        // `step.progress` for `kitt serve` while the eval runs (the file goes with the writer).
        let live = crate::run::live::Writer::start(&self.run_dir, &s.key, cell.label(), self.progress.clone());
        let outcome = crate::eval::run(&prepared, generate, &ropts, |p| {
            done.store(p.done as u64, Ordering::Relaxed);
            errors.store(p.errors as u64, Ordering::Relaxed);
        })
        .await
        .map_err(|e| err(format!("eval `{}`: {e}", cell.benchmark)));
        drop(live);
        let outcome = outcome?;
        let (result, items) = match outcome {
            EvalOutcome::Finished { result, items, .. } => (result, items),
            EvalOutcome::Interrupted { .. } => return Err(StepError::cancelled()),
        };
        crate::eval::write_items(&dir.join("items.jsonl"), &items).map_err(err)?;
        // Failed generations are not answers: the accuracy is over the answered items, and the
        // error budget judges the share that failed (a retry or resume asks those items again).
        let c = &result.counts;
        let sent = c.scored + c.errors;
        let metrics = json!({
            "requests": sent, "ok": c.scored, "errors": c.errors, "error_rate": result.error_share,
            "accuracy": result.accuracy, "eval": result,
        });
        let error = (result.error_share > self.plan.execution.max_error_rate).then(|| {
            format!(
                "{} of {} eval generations failed ({:.1} %), above the budget of {:.1} %; \
                 `kitt apply --resume {} --rerun-failed {}` asks only those items again",
                c.errors,
                sent,
                result.error_share * 100.0,
                self.plan.execution.max_error_rate * 100.0,
                self.run_id,
                self.plan.suite.file.display()
            )
        });
        let record = json!({
            "metrics": metrics, "attempt": attempt, "prompts_exact": false,
            "started_unix_ns": started, "finished_unix_ns": unix_ns(), "error": error,
        });
        self.write(dir.join("benchmark.json"), &record)?;
        match error {
            Some(e) => Err(err(e)),
            None => Ok(json!({"items": c.total, "accuracy": result.accuracy})),
        }
    }
}
