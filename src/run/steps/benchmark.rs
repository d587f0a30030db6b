//! benchmark (load): one cell of a load benchmark (its params and run index), measured with the
//! resource sampler and the engine's Prometheus counters running over exactly its window; staged
//! and sweep profiles run stage after stage in the same step.
//!
//! Done when `benchmark.json` is written and the step is journaled finished; requests.jsonl
//! appears only then (records are spooled to a scratch file until the load is done). A cell cut
//! by `step_timeout` fails as `truncated` and keeps its records apart. On resume it is skipped if
//! its key finished; an interrupted load cell restarts from zero.

use super::*;

impl RunExecutor {
    pub(super) async fn benchmark(&self, step: usize, attempt: u32, cancel: &Cancel) -> Result<Json, StepError> {
        let s = &self.plan.steps[step];
        let ci = s.cell.ok_or_else(|| err("benchmark step without a cell"))?;
        let cell = &self.plan.cells[ci];
        let at = self.at(step)?;
        if cell.eval.is_some() {
            return self.eval_benchmark(step, attempt, cancel).await;
        }
        let (Some(spec), Some(call)) = (&cell.load, &cell.request) else {
            return Err(err(format!("benchmark `{}`: its mechanism is not executable by this kitt", cell.benchmark)));
        };
        let started = unix_ns();
        let expected = if spec.ignore_eos { cell.sampling.get("max_tokens").and_then(Json::as_u64) } else { None };
        let dir = self.step_dir(&s.key)?;
        // Records are appended to a scratch file while the load runs (stage after stage), which
        // becomes requests.jsonl only once the benchmark is done: a retried or interrupted attempt
        // never leaves a partial requests.jsonl, nor appends to one.
        let partial = dir.join(".requests.jsonl.partial");
        let _ = std::fs::remove_file(&partial);
        // A killed attempt may have left its spool behind (a clean one removes its own).
        for stale in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if stale.file_name().to_string_lossy().starts_with(load::SPOOL_PREFIX) {
                let _ = std::fs::remove_file(stale.path());
            }
        }
        let (client, target) = {
            let engines = self.engines.lock().await;
            let e = engines.get(&at.unit);
            (e.map(|e| e.client.clone()), e.map(|e| e.target.clone()).unwrap_or(EngineTarget::None))
        };
        let metrics_path = self.plan.groups[cell.group].metrics_path.clone();
        let interval = self.plan.execution.sample_interval.0;
        // The engine's counters and the resource sampler start where the window opens, after
        // prompt sizing and the benchmark's warmup (the first window, for stages).
        let window = Arc::new(tokio::sync::Mutex::new(Window::default()));
        let window_opens: load::WindowHook = {
            let (window, client, metrics_path, target) =
                (Arc::clone(&window), client.clone(), metrics_path.clone(), target.clone());
            Arc::new(move || {
                let (window, client, metrics_path, target) =
                    (Arc::clone(&window), client.clone(), metrics_path.clone(), target.clone());
                Box::pin(async move {
                    let mut w = window.lock().await;
                    if w.sampler.is_some() {
                        return;
                    }
                    w.before = match (&client, &metrics_path) {
                        (Some(c), Some(p)) => scrape(c, p).await,
                        _ => None,
                    };
                    w.sampler = Some(Sampler::start(target, interval, std::time::Instant::now()));
                })
            })
        };
        // Each cell's prompts come from its own key: two cells never send the same prompts, so an
        // engine's prefix cache cannot make a later cell look faster. A cell sent by several
        // clients takes the key it would have with one: the union of what its clients send is
        // exactly what one client sends.
        let seed_key = match &cell.clients {
            Some(_) => crate::plan::layout::one_client_key(
                &self.plan.groups[cell.group],
                cell,
                self.plan.execution.granularity == crate::manifest::suite::Granularity::Cell,
            ),
            None => s.key.clone(),
        };
        let clients = match cell.clients {
            Some(c) => Some(load::clients::Clients {
                count: c.count,
                min: c.min,
                exe: std::env::current_exe().map_err(|e| err(format!("cannot find kitt's own binary: {e}")))?,
                dir: dir.clone(),
            }),
            None => None,
        };
        let m = Measurement {
            call,
            spec,
            label: cell.label(),
            expected_output_tokens: expected,
            seed: prompt_seed(&seed_key),
            records: Some(partial.clone()),
            index_offset: 0,
            window_opens: Some(window_opens),
            cutoff: Some(step_cutoff(std::time::Instant::now(), self.plan.execution.step_timeout.0)),
            clients,
        };
        // `step.progress` for `kitt serve`, while the load runs (the file goes with the writer).
        let live = crate::run::live::Writer::start(&self.run_dir, &s.key, cell.label(), self.progress.clone());
        let outcome = self.run_load(at, m, cancel).await;
        drop(live);
        let (before, sampler) = {
            let mut w = window.lock().await;
            (w.before.take(), w.sampler.take())
        };
        let (samples, gpu_note) = sampler.map(Sampler::finish).unwrap_or_default();
        let (outcome, mut stages) = match outcome {
            Ok(o) => o,
            // A load that failed before it had a result (a client shard died, the prompts could
            // not be built): the cell's result says why, and has no metrics.
            Err(e) if !e.cancelled && !e.abort => {
                let record = json!({
                    "metrics": Json::Null, "attempt": attempt, "started_unix_ns": started,
                    "finished_unix_ns": unix_ns(), "error": e.message, "status": "failed",
                });
                self.write(dir.join("benchmark.json"), &record)?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let finished = unix_ns();
        let engine_metrics = match (&client, &metrics_path, &before) {
            (Some(c), Some(p), Some(b)) => scrape(c, p).await.map(|a| crate::collect::prom::delta(b, &a)),
            _ => None,
        };
        // Each stage's resources over its own window.
        for stage in stages.iter_mut().flatten() {
            if let Some([from, to]) = stage["window_ms"].as_array().and_then(|w| <[Json; 2]>::try_from(w.clone()).ok())
            {
                let (from, to) = (from.as_f64().unwrap_or(0.0), to.as_f64().unwrap_or(f64::MAX));
                let inside: Vec<_> = samples.iter().filter(|x| x.t_ms >= from && x.t_ms <= to).cloned().collect();
                stage["resources"] =
                    serde_json::to_value(crate::collect::summarize(&inside, interval, None)).unwrap_or(Json::Null);
            }
        }
        let resources = crate::collect::summarize(&samples, interval, gpu_note);
        crate::run::dir::write_atomic(&dir.join("samples.csv"), crate::collect::csv(&samples).as_bytes())
            .map_err(err)?;
        let m = metrics::summarize(&outcome);
        if outcome.truncated {
            // Cut by `step_timeout`: the records are kept for diagnosis, apart from
            // requests.jsonl; the cell fails (`truncated`), is never reused on a resume, and
            // stays out of aggregates and compare.
            // The latest truncated attempt's records (a later one replaces them).
            let kept = dir.join("requests.truncated.jsonl");
            crate::run::dir::rename_durably(&partial, &kept).map_err(err)?;
            let why = format!(
                "truncated: `step_timeout` ({}) passed after {} of its requests; their records are in {}",
                humantime::format_duration(self.plan.execution.step_timeout.0),
                m.requests,
                kept.display()
            );
            let mut m_json = serde_json::to_value(&m).map_err(err)?;
            m_json["truncated"] = json!(true);
            if let Some(c) = &outcome.clients {
                m_json["clients"] = serde_json::to_value(c).map_err(err)?;
            }
            if let Some(stages) = stages {
                m_json["stages"] = Json::Array(stages);
            }
            let record = json!({
                "metrics": m_json, "resources": resources, "engine_metrics": engine_metrics,
                "prompts_exact": outcome.prompts_exact, "attempt": attempt,
                "started_unix_ns": started, "finished_unix_ns": finished, "error": why, "status": "truncated",
            });
            self.write(dir.join("benchmark.json"), &record)?;
            return Err(StepError::truncated(why));
        }
        // The load synced the file; the rename makes it requests.jsonl at once.
        crate::run::dir::rename_durably(&partial, &dir.join("requests.jsonl")).map_err(err)?;
        let error = if m.requests > 0 && m.ok == 0 {
            Some(format!("every request failed ({})", summary_errors(&m)))
        } else if m.error_rate > self.plan.execution.max_error_rate {
            Some(format!(
                "error rate {:.1} % is above the budget of {:.1} % ({})",
                m.error_rate * 100.0,
                self.plan.execution.max_error_rate * 100.0,
                summary_errors(&m)
            ))
        } else {
            None
        };
        let mut m_json = serde_json::to_value(&m).map_err(err)?;
        if let Some(stages) = stages {
            m_json["stages"] = Json::Array(stages);
        }
        // How the client shards sent it: offsets, start errors, send lags, who finished.
        if let Some(c) = &outcome.clients {
            m_json["clients"] = serde_json::to_value(c).map_err(err)?;
        }
        let record = json!({
            "metrics": m_json, "resources": resources, "engine_metrics": engine_metrics,
            "prompts_exact": outcome.prompts_exact, "attempt": attempt,
            "started_unix_ns": started, "finished_unix_ns": finished, "error": error,
        });
        self.write(dir.join("benchmark.json"), &record)?;
        match error {
            Some(e) => Err(err(e)),
            None => {
                Ok(json!({"requests": m.requests, "ok": m.ok, "output_token_throughput": m.output_token_throughput}))
            }
        }
    }

    /// A benchmark's load: one measurement, or stage after stage for `stages` and `sweep`
    /// (then every stage's records in one file, indexed in order, the stages' tallies merged, and
    /// each stage's own metrics).
    pub(super) async fn run_load(
        &self,
        at: At,
        m: Measurement<'_>,
        cancel: &Cancel,
    ) -> Result<(load::LoadOutcome, Option<Vec<Json>>), StepError> {
        if !matches!(m.spec.profile, Profile::Stages(_) | Profile::Sweep { .. }) {
            return Ok((self.measure(at, m, cancel).await?, None));
        }
        let Measurement { call, spec, label, expected_output_tokens, seed, records, window_opens, cutoff, .. } = m;
        let mut stages: Vec<Json> = Vec::new();
        let mut throughputs: Vec<f64> = Vec::new();
        let mut merged: Option<load::LoadOutcome> = None;
        let sweep = matches!(spec.profile, Profile::Sweep { .. });
        // A sweep's cell metrics are one stage's, not a mix of different loads: the highest rate
        // it sustained, or the synchronous stage when it sustained none.
        let mut headline: Option<(usize, load::LoadOutcome)> = None;
        for i in 0.. {
            let Some((name, profile, requests, duration)) = next_stage(spec, i, &throughputs) else { break };
            let sub = LoadSpec {
                profile: profile.clone(),
                requests,
                duration,
                // The benchmark's warmup warms the engine once, before the first stage.
                warmup: if i == 0 { spec.warmup.clone() } else { None },
                ramp: if matches!(profile, Profile::Concurrency(_)) { spec.ramp } else { None },
                ..spec.clone()
            };
            let stage_m = Measurement {
                call,
                spec: &sub,
                label: format!("{label} · {name}"),
                expected_output_tokens,
                // Each stage sends prompts of its own.
                seed: seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                records: records.clone(),
                index_offset: merged.as_ref().map_or(0, |all| all.tally.requests().0),
                window_opens: window_opens.clone(),
                cutoff,
                // The compiler refuses `clients` with staged profiles.
                clients: None,
            };
            let outcome = self.measure(at, stage_m, cancel).await?;
            let truncated = outcome.truncated;
            let sm = metrics::summarize(&outcome);
            throughputs.push(sm.request_throughput);
            let sustained = stage_sustained(spec, &sm, self.plan.execution.max_error_rate);
            // The stage's own window on the benchmark's window clock (that of `samples.csv`).
            let first = merged.as_ref().map_or(outcome.origin, |all| all.origin);
            let start_ms = outcome.origin.saturating_duration_since(first).as_secs_f64() * 1e3;
            let window_ms = [start_ms, start_ms + outcome.window_ns as f64 / 1e6];
            stages.push(json!({"stage": i, "name": name, "profile": profile, "window_ms": window_ms, "metrics": sm}));
            if sweep && (i == 0 || (i >= 2 && sustained.is_ok())) {
                headline = Some((stages.len() - 1, outcome.clone()));
            }
            merged = Some(match merged.take() {
                None => outcome,
                Some(mut all) => {
                    all.tally.merge(&outcome.tally);
                    all.window_ns += outcome.window_ns;
                    all.prompts_exact &= outcome.prompts_exact;
                    all.warmup_requests += outcome.warmup_requests;
                    all
                }
            });
            if truncated {
                if let Some(all) = merged.as_mut() {
                    all.truncated = true;
                }
                break;
            }
            // A sweep stops at the first rate it cannot sustain; the remaining rates are noted.
            if let (Profile::Sweep { rates }, Err(why)) = (&spec.profile, sustained)
                && i >= 2
            {
                let left = (*rates as usize + 2).saturating_sub(i + 1);
                stages.push(json!({"stopped": why, "rates_not_run": left}));
                break;
            }
        }
        let mut all = merged.ok_or_else(|| err("a staged profile ran no stage"))?;
        if let Some((at, mut one)) = headline.filter(|_| !all.truncated) {
            stages[at]["headline"] = json!(true);
            one.warmup_requests = all.warmup_requests;
            return Ok((one, Some(stages)));
        }
        // Schedules of different stages have different origins: the arrival statistics belong to
        // each stage's own metrics, not to the merged window.
        all.open_loop = false;
        Ok((all, Some(stages)))
    }
}

/// When a benchmark step that started at `start` must have its load done: its `step_timeout`
/// less a margin (a tenth of it, at most 5 s) to write what it measured before the scheduler's own
/// timeout ends the step.
pub(super) fn step_cutoff(start: std::time::Instant, step_timeout: Duration) -> std::time::Instant {
    start + step_timeout - (step_timeout / 10).min(Duration::from_secs(5))
}

/// What measures alongside a benchmark's window, started when the window opens.
#[derive(Default)]
pub(super) struct Window {
    /// The engine's counters at the window's start.
    before: Option<crate::collect::prom::Scrape>,
    sampler: Option<Sampler>,
}

/// Stage `i` of a staged profile, given the request throughput of the stages before it:
/// (name, profile, requests, duration). `None` when there is none left.
pub(super) fn next_stage(
    spec: &LoadSpec,
    i: usize,
    throughputs: &[f64],
) -> Option<(String, Profile, Option<u64>, Option<crate::manifest::decode::Dur>)> {
    match &spec.profile {
        Profile::Stages(stages) => {
            let s = stages.get(i)?;
            Some((format!("stage {}", i + 1), s.profile.clone(), s.requests, s.duration))
        }
        Profile::Sweep { rates } => {
            let (profile, name) = match i {
                0 => (Profile::Synchronous, "synchronous".to_string()),
                1 => {
                    let n = spec.max_concurrency.unwrap_or(64);
                    (Profile::Concurrency(n), format!("throughput (concurrency {n})"))
                }
                _ => {
                    let k = i - 1;
                    if k > *rates as usize {
                        return None;
                    }
                    let (lo, hi) = (throughputs[0], throughputs[1]);
                    // Evenly between the synchronous and the maximum throughput, endpoints excluded.
                    let rate = lo + (hi - lo).max(0.0) * k as f64 / (*rates as f64 + 1.0);
                    if rate <= 0.0 {
                        return None;
                    }
                    (Profile::Constant(rate), format!("rate {rate:.2}/s"))
                }
            };
            Some((name, profile, spec.requests, spec.duration))
        }
        _ => None,
    }
}

/// Whether a stage held up: its error rate within the budget and, with SLOs, enough requests
/// meeting them.
pub(super) fn stage_sustained(spec: &LoadSpec, m: &metrics::LoadMetrics, max_error_rate: f64) -> Result<(), String> {
    if m.error_rate > max_error_rate {
        return Err(format!(
            "error rate {:.1} % above the budget of {:.1} %",
            m.error_rate * 100.0,
            max_error_rate * 100.0
        ));
    }
    if let (Some(slo), Some(g)) = (&spec.slo, &m.goodput) {
        let need = slo.attainment.unwrap_or(0.9);
        if g.share < need {
            return Err(format!("{:.1} % of requests met the SLOs, below {:.1} %", g.share * 100.0, need * 100.0));
        }
    }
    Ok(())
}

/// The engine's Prometheus metrics, when it answers.
pub(super) async fn scrape(client: &EngineClient, path: &str) -> Option<crate::collect::prom::Scrape> {
    match client.get(path, Duration::from_secs(5)).await {
        Ok((200, body)) => Some(crate::collect::prom::parse(&body)),
        Ok((code, _)) => {
            tracing::debug!("metrics {path}: HTTP {code}");
            None
        }
        Err(e) => {
            tracing::debug!("metrics {path}: {e}");
            None
        }
    }
}

pub(super) fn summary_errors(m: &metrics::LoadMetrics) -> String {
    m.errors_by_kind.iter().map(|(k, v)| format!("{v}× {k}")).collect::<Vec<_>>().join(", ")
}
