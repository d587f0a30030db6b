//! warmup: N untimed requests against the freshly started engine, synchronously, with the
//! template's warmup prompt size, so the first cell does not pay for cold caches.
//!
//! Done when the count is reached (it fails only if every request failed). On resume it re-runs
//! whenever its engine is (re)started, and on a retry of a template with `restart_on_retry`.

use super::*;

impl RunExecutor {
    pub(super) async fn warmup(&self, at: At, cancel: &Cancel) -> Result<Json, StepError> {
        let gi = at.group;
        let g = &self.plan.groups[gi];
        let Some(w) = &g.warmup else {
            return Ok(Json::Null);
        };
        let spec = LoadSpec {
            api: w.api,
            profile: Profile::Synchronous,
            requests: Some(w.requests as u64),
            duration: None,
            prompt: PromptSpec::fixed(w.input_tokens),
            ignore_eos: true,
            max_concurrency: None,
            slo: None,
            warmup: None,
            cold_requests: None,
            ramp: None,
            request_timeout: Some(self.plan.execution.request_timeout),
        };
        let m = Measurement {
            call: &w.request,
            spec: &spec,
            label: format!("warmup {}", g.id),
            expected_output_tokens: None,
            seed: prompt_seed(&g.key),
            records: None,
            index_offset: 0,
            window_opens: None,
            cutoff: None,
            clients: None,
        };
        let outcome = self.measure(at, m, cancel).await?;
        let (requests, ok) = outcome.tally.requests();
        let failed = requests - ok;
        if failed == requests && failed > 0 {
            let detail = outcome.tally.first_error.clone().unwrap_or_default();
            return Err(err(format!("every warmup request failed: {detail}")));
        }
        Ok(json!({"requests": requests, "failed": failed}))
    }
}
