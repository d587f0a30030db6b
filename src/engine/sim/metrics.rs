//! What the simulator has served, counted exactly, and rendered as the engine it imitates would
//! render it on `GET /metrics` (Prometheus text format 0.0.4).
//!
//! Owns the counters and the per-request [`Flight`] guard that keeps them honest: a request is
//! running from admission until its last token is produced or its client goes away, whichever comes
//! first, so `num_requests_running` returns to zero even for abandoned streams. Counters never feed
//! back into answers (DESIGN "Decisions" 7: answers depend only on seed and body).
//!
//! Names and labels follow vLLM's `vllm/v1/metrics/loggers.py` (`prometheus_client`: counters get a
//! `_total` suffix, labels `model_name`, `engine`) and TGI's `docs/source/reference/metrics.md`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Everything counted since the server started.
#[derive(Default)]
pub(super) struct Counters {
    /// Generation requests received, failed ones included.
    requests: AtomicU64,
    /// Requests answered with a failure (error rate, validation).
    failures: AtomicU64,
    /// Requests admitted to generation, and their prompt tokens.
    admitted: AtomicU64,
    prompt_tokens: AtomicU64,
    /// Tokens sent so far, over all requests (finished or not).
    generation_tokens: AtomicU64,
    /// Requests whose last token was produced, by how they ended, and their tokens.
    finished_length: AtomicU64,
    finished_stop: AtomicU64,
    finished_tokens: AtomicU64,
    running: AtomicU64,
}

/// One admitted request: counts its tokens and, until it ends, one running request.
pub(super) struct Flight {
    counters: Arc<Counters>,
    open: bool,
}

impl Counters {
    pub fn received(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn failed(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    /// A request with `prompt_tokens` starts generating.
    pub fn admit(self: &Arc<Self>, prompt_tokens: u32) -> Flight {
        self.admitted.fetch_add(1, Relaxed);
        self.prompt_tokens.fetch_add(u64::from(prompt_tokens), Relaxed);
        self.running.fetch_add(1, Relaxed);
        Flight { counters: Arc::clone(self), open: true }
    }

    /// vLLM's names (a few of `PrometheusStatLogger`'s), labelled with the served model.
    pub fn render_vllm(&self, model: &str) -> String {
        let labels = format!("model_name=\"{}\",engine=\"0\"", escape_label(model));
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {value}.0\n");
        };
        gauge(
            &mut out,
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            self.get(&self.running),
        );
        gauge(&mut out, "vllm:num_requests_waiting", "Number of requests waiting to be processed.", 0);
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name}_total {help}\n# TYPE {name}_total counter\n{name}_total{{{labels}}} {value}.0\n"
            );
        };
        counter(&mut out, "vllm:prompt_tokens", "Number of prefill tokens processed.", self.get(&self.prompt_tokens));
        counter(
            &mut out,
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            self.get(&self.generation_tokens),
        );
        let name = "vllm:request_success_total";
        let _ = write!(out, "# HELP {name} Count of successfully processed requests.\n# TYPE {name} counter\n");
        for (reason, value) in
            [("stop", &self.finished_stop), ("length", &self.finished_length), ("abort", &AtomicU64::new(0))]
        {
            let _ = writeln!(out, "{name}{{{labels},finished_reason=\"{reason}\"}} {}.0", self.get(value));
        }
        out
    }

    /// TGI's names (`metrics-exporter-prometheus`: no `_total` suffix, histograms as `_sum`/`_count`
    /// with one `+Inf` bucket).
    pub fn render_tgi(&self) -> String {
        let mut out = String::new();
        let counters = [
            ("tgi_request_count", self.get(&self.requests)),
            ("tgi_request_success", self.finished()),
            ("tgi_request_failure", self.get(&self.failures)),
        ];
        for (name, value) in counters {
            let _ = write!(out, "# TYPE {name} counter\n{name} {value}\n");
        }
        for (name, value) in [("tgi_queue_size", 0), ("tgi_batch_current_size", self.get(&self.running))] {
            let _ = write!(out, "# TYPE {name} gauge\n{name} {value}\n");
        }
        let histograms = [
            ("tgi_request_input_length", self.get(&self.prompt_tokens), self.get(&self.admitted)),
            ("tgi_request_generated_tokens", self.get(&self.finished_tokens), self.finished()),
        ];
        for (name, sum, count) in histograms {
            let _ = write!(
                out,
                "# TYPE {name} histogram\n{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}\n"
            );
        }
        out
    }

    fn finished(&self) -> u64 {
        self.get(&self.finished_length) + self.get(&self.finished_stop)
    }

    fn get(&self, counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}

impl Flight {
    /// `n` more tokens went out.
    pub fn sent(&self, n: u32) {
        self.counters.generation_tokens.fetch_add(u64::from(n), Relaxed);
    }

    /// The last token went out: the request succeeded with `total` tokens.
    pub fn finish(&mut self, length: bool, total: u32) {
        if !std::mem::replace(&mut self.open, false) {
            return;
        }
        let reason = if length { &self.counters.finished_length } else { &self.counters.finished_stop };
        reason.fetch_add(1, Relaxed);
        self.counters.finished_tokens.fetch_add(u64::from(total), Relaxed);
        self.counters.running.fetch_sub(1, Relaxed);
    }
}

impl Drop for Flight {
    /// A request dropped before its end (the client went away) stops running without succeeding.
    fn drop(&mut self) {
        if self.open {
            self.counters.running.fetch_sub(1, Relaxed);
        }
    }
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
