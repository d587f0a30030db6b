//! One measured load against a running engine: the request template bound to what was learned
//! at run time (served model name, tokenizer), the load generator run with live progress. Shared
//! by warmup (untimed) and benchmark (timed) steps; prompt seeds come from step keys so that the
//! prompts depend only on the plan.

use super::*;

impl RunExecutor {
    /// The tokenizer of a group: the model's local tokenizer.json when it names one (loaded once
    /// per run), else the engine's tokenize call, else none.
    pub(super) fn tokenizer(&self, g: &EngineGroup) -> Result<Option<Tokenizer>, StepError> {
        if let Some(file) = &g.model.tokenizer {
            let path = self.plan.suite.dir.join(file);
            let mut cache = self.local_tokenizers.lock().map_err(|_| err("tokenizer cache poisoned"))?;
            if let Some(t) = cache.get(&path) {
                return Ok(Some(t.clone()));
            }
            let t = Tokenizer::from_file(&path).map_err(|e| err(format!("model `{}`: {e}", g.model.name)))?;
            cache.insert(path, t.clone());
            return Ok(Some(t));
        }
        Ok(match (&g.tokenize, &g.tokenize_pointer) {
            (Some(req), Some(pointer)) => Some(Tokenizer::engine(req.clone(), pointer.clone())),
            _ => None,
        })
    }

    pub(super) async fn measure(
        &self,
        at: At,
        m: Measurement<'_>,
        cancel: &Cancel,
    ) -> Result<load::LoadOutcome, StepError> {
        let Measurement {
            call,
            spec,
            label,
            expected_output_tokens,
            seed,
            records,
            index_offset,
            window_opens,
            cutoff,
            clients,
        } = m;
        let g = &self.plan.groups[at.group];
        let (client, served) = self.engine_handle(at).await?;
        let mut call = call.clone();
        if let Some(name) = served {
            call.body = bind_late(&call.body, &[("model.served_name", json!(name))]);
        }
        let mut tokenize = self.tokenizer(g)?;
        if let (Some(t), Some(name)) = (tokenize.as_mut(), self.served_name(at).await) {
            t.bind(&[("model.served_name", json!(name))]);
        }
        self.progress.requests.store(0, Ordering::Relaxed);
        self.progress.errors.store(0, Ordering::Relaxed);
        self.progress.requests_total.store(spec.requests.unwrap_or(0), Ordering::Relaxed);
        if let Ok(mut l) = self.progress.label.lock() {
            *l = label;
        }
        let mut load = spec.clone();
        // A dataset path is relative to the suite file.
        if let PromptSpec::Dataset(d) = &mut load.prompt {
            d.path = self.plan.suite.dir.join(&d.path).to_string_lossy().to_string();
        }
        let input = load::LoadInput {
            client,
            call,
            load,
            api: spec.api,
            tokenize,
            seed,
            progress: self.progress.requests.clone(),
            errors: self.progress.errors.clone(),
            cancel: cancel.clone(),
            expected_output_tokens,
            records,
            index_offset,
            window_opens,
            cutoff,
            clients,
        };
        load::run(input).await.map_err(|e| match e {
            load::LoadError::Cancelled => StepError::cancelled(),
            other => err(other),
        })
    }
}

/// One measured load: what to send and how to judge it.
pub(super) struct Measurement<'a> {
    pub(super) call: &'a crate::plan::RequestTemplate,
    pub(super) spec: &'a LoadSpec,
    pub(super) label: String,
    /// `max_tokens` when the engine was told not to stop early.
    pub(super) expected_output_tokens: Option<u64>,
    /// Prompt seed: the prompts depend only on it.
    pub(super) seed: u64,
    /// Where the request records are appended, if they are kept.
    pub(super) records: Option<PathBuf>,
    /// Added to the recorded request indices (stages after the first).
    pub(super) index_offset: u64,
    /// Awaited right before each window opens (after prompt sizing and warmup).
    pub(super) window_opens: Option<load::WindowHook>,
    /// When the step must end by (its `step_timeout`, less a margin).
    pub(super) cutoff: Option<std::time::Instant>,
    /// The client processes that send it, when more than this one.
    pub(super) clients: Option<load::clients::Clients>,
}

/// A prompt seed from a key (hex): stable across runs and resumes, different between cells.
pub(super) fn prompt_seed(key: &str) -> u64 {
    u64::from_str_radix(&key[..key.len().min(16)], 16).unwrap_or(0)
}
