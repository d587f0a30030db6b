//! Outputs → verdicts → the score: accuracy with its standard error, per group, and the share of
//! answers that could not be read.
//!
//! A failed generation is not an answer: it says nothing about the model, so it is neither right
//! nor wrong. Accuracy is over the items answered; failures are counted apart (`errors`,
//! `error_share`) and the suite's `max_error_rate` decides whether the cell stands, so a flaky
//! engine can neither score higher nor quietly lower the score. Skipped items (too long for the
//! window) are in neither and are listed with their reason. The score is computed in item order
//! from plain counts, so a resumed eval and an uninterrupted one give identical numbers.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::EvalError;
use super::extract::{self, Extractor};
use super::prepare::{ContextInfo, DatasetInfo, Prepared, Skipped};
use super::prompt::Prompt;
use super::spec::Compare;

/// Why a generation failed: a short kind that groups failures (`http_500`, `timeout`, `connect`,
/// … as the engine client names them) and the detail for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: String,
    pub detail: String,
}

impl Failure {
    /// The kind of a failure given only as text.
    pub const UNKNOWN_KIND: &'static str = "generation";

    pub fn new(kind: impl Into<String>, detail: impl Into<String>) -> Failure {
        Failure { kind: kind.into(), detail: detail.into() }
    }
}

impl From<String> for Failure {
    fn from(detail: String) -> Failure {
        Failure::new(Failure::UNKNOWN_KIND, detail)
    }
}

impl From<&str> for Failure {
    fn from(detail: &str) -> Failure {
        Failure::new(Failure::UNKNOWN_KIND, detail)
    }
}

/// What the generate callback gave for one item: the text (an answer, final) or a failure (not
/// an answer: the item is asked again by the next attempt).
pub(crate) type Done = Result<String, Failure>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Correct,
    Incorrect,
    /// No answer could be extracted (counts as wrong).
    Unparseable,
    /// The generation failed: not an answer, neither right nor wrong.
    Error,
    /// Not sent (see `reason`).
    Skipped,
}

/// One line of items.jsonl. `id` names the item across runs of the same eval (paired comparisons
/// match on it); `correct` is present exactly when the item was answered, and `error` (the
/// failure's kind) exactly when its generation failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemRecord {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Prompt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shots: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extracted: Option<String>,
    pub expected: String,
    pub verdict: Verdict,
    /// Whether the answer is right (unparseable is wrong); absent when there is no answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
    /// The failure's kind (`http_500`, `timeout`, …) when the generation failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The failure's detail, or why the item was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Items prepared (sent or skipped).
    pub total: usize,
    /// Items answered: the denominator of the accuracy (`correct + incorrect + unparseable`).
    pub scored: usize,
    pub correct: usize,
    pub incorrect: usize,
    pub unparseable: usize,
    /// Items whose generation failed (not answers; not in `scored`).
    pub errors: usize,
    pub skipped: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupScore {
    /// Items answered.
    pub scored: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub stderr: f64,
    pub unparseable: usize,
    pub errors: usize,
}

/// The score of one eval cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalResult {
    /// correct / scored: over the items answered (failed generations are not in it).
    pub accuracy: f64,
    /// Standard error of the accuracy: sqrt(p(1−p)/(n−1)) (the sample standard deviation over
    /// √n, as lm-evaluation-harness reports it); 0 with fewer than 2 items.
    pub stderr: f64,
    /// The mean of the per-group accuracies (MMLU's "macro" average), when items have groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub macro_accuracy: Option<f64>,
    /// unparseable / scored.
    pub unparseable_share: f64,
    /// errors / items sent (`scored + errors`): what the suite's `max_error_rate` is checked
    /// against.
    pub error_share: f64,
    pub counts: Counts,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, GroupScore>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// How answers were read and compared.
    pub extract: Vec<Extractor>,
    pub compare: Compare,
    pub dataset: DatasetInfo,
    pub context: ContextInfo,
    /// The prepared eval's fingerprint (spec, prompts, targets).
    pub fingerprint: String,
}

/// The verdict on one item and the answer extracted.
pub(crate) fn judge(prepared: &Prepared, index: usize, done: &Done) -> (Option<String>, Verdict) {
    let item = &prepared.items[index];
    let Ok(raw) = done else { return (None, Verdict::Error) };
    match prepared.extraction.apply(raw, &item.choices) {
        None => (None, Verdict::Unparseable),
        Some(x) => {
            let ok = extract::matches(prepared.spec.compare(), &x, &item.target);
            (Some(x), if ok { Verdict::Correct } else { Verdict::Incorrect })
        }
    }
}

fn stderr(correct: usize, n: usize) -> f64 {
    if n < 2 {
        return 0.0;
    }
    let p = correct as f64 / n as f64;
    (p * (1.0 - p) / (n as f64 - 1.0)).sqrt()
}

/// The score and the item records of a finished eval; `done[i]` is item i's outcome.
pub(crate) fn score(prepared: &Prepared, done: &[Done]) -> Result<(EvalResult, Vec<ItemRecord>), EvalError> {
    let mut counts = Counts { total: prepared.items.len() + prepared.skipped.len(), ..Counts::default() };
    let mut groups: BTreeMap<String, GroupScore> = BTreeMap::new();
    let mut records = Vec::with_capacity(counts.total);
    let mut first_error = None;
    for (i, (item, d)) in prepared.items.iter().zip(done).enumerate() {
        let (extracted, verdict) = judge(prepared, i, d);
        match verdict {
            Verdict::Correct => counts.correct += 1,
            Verdict::Incorrect => counts.incorrect += 1,
            Verdict::Unparseable => counts.unparseable += 1,
            Verdict::Error => counts.errors += 1,
            Verdict::Skipped => {}
        }
        let answered = verdict != Verdict::Error;
        counts.scored += usize::from(answered);
        if let Some(g) = &item.group {
            let e = groups.entry(g.clone()).or_insert_with(|| GroupScore {
                scored: 0,
                correct: 0,
                accuracy: 0.0,
                stderr: 0.0,
                unparseable: 0,
                errors: 0,
            });
            e.scored += usize::from(answered);
            e.correct += usize::from(verdict == Verdict::Correct);
            e.unparseable += usize::from(verdict == Verdict::Unparseable);
            e.errors += usize::from(!answered);
        }
        let (raw, failure) = match d {
            Ok(raw) => (Some(raw.clone()), None),
            Err(f) => {
                first_error.get_or_insert_with(|| f.detail.clone());
                (None, Some(f))
            }
        };
        records.push(ItemRecord {
            id: item.id.clone(),
            group: item.group.clone(),
            prompt: Some(item.prompt.clone()),
            shots: Some(item.shots),
            raw,
            extracted,
            expected: item.target.clone(),
            verdict,
            correct: answered.then_some(verdict == Verdict::Correct),
            error: failure.map(|f| f.kind.clone()),
            reason: failure.map(|f| f.detail.clone()),
        });
    }
    for s in &prepared.skipped {
        counts.skipped += 1;
        records.push(ItemRecord {
            id: s.id.clone(),
            group: s.group.clone(),
            prompt: None,
            shots: None,
            raw: None,
            extracted: None,
            expected: String::new(),
            verdict: Verdict::Skipped,
            correct: None,
            error: None,
            reason: Some(s.reason.clone()),
        });
    }
    if counts.errors > 0 && counts.scored == 0 {
        return Err(EvalError::AllFailed { count: counts.errors, first: first_error.unwrap_or_default() });
    }
    for g in groups.values_mut() {
        g.accuracy = g.correct as f64 / g.scored.max(1) as f64;
        g.stderr = stderr(g.correct, g.scored);
    }
    let macro_accuracy = {
        let answered: Vec<f64> = groups.values().filter(|g| g.scored > 0).map(|g| g.accuracy).collect();
        (!answered.is_empty()).then(|| answered.iter().sum::<f64>() / answered.len() as f64)
    };
    let n = counts.scored.max(1) as f64;
    let sent = counts.scored + counts.errors;
    let result = EvalResult {
        accuracy: counts.correct as f64 / n,
        stderr: stderr(counts.correct, counts.scored),
        macro_accuracy,
        unparseable_share: counts.unparseable as f64 / n,
        error_share: if sent > 0 { counts.errors as f64 / sent as f64 } else { 0.0 },
        groups,
        skipped: prepared.skipped.clone(),
        extract: prepared.spec.extractors(),
        compare: prepared.spec.compare(),
        dataset: prepared.dataset.clone(),
        context: prepared.context.clone(),
        fingerprint: prepared.fingerprint.clone(),
        counts,
    };
    Ok((result, records))
}

/// Writes items.jsonl (one [`ItemRecord`] a line) atomically.
pub fn write_items(path: &Path, items: &[ItemRecord]) -> Result<(), EvalError> {
    let mut out = Vec::with_capacity(items.len() * 256);
    for it in items {
        serde_json::to_writer(&mut out, it).map_err(|e| EvalError::io(path, e))?;
        out.push(b'\n');
    }
    super::dataset::fetch::write_atomic(path, &out)
}

#[cfg(test)]
mod tests {
    use super::stderr;

    #[test]
    fn stderr_is_the_sample_standard_error() {
        // 3 of 4: p = 0.75, sample variance = 4/3 · 0.1875 = 0.25, stderr = sqrt(0.25 / 4) = 0.25.
        assert!((stderr(3, 4) - 0.25).abs() < 1e-12);
        assert_eq!(stderr(1, 1), 0.0);
        assert_eq!(stderr(0, 10), 0.0);
    }
}
