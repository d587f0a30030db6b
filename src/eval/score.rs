//! Outputs → verdicts → the score: accuracy with its standard error, per group, and the share of
//! answers that could not be read.
//!
//! A request that failed counts as wrong (and is reported as an error) so that a flaky engine
//! can never score higher than a working one; skipped items (too long for the window) are not
//! in the denominator and are listed with their reason. The score is computed in item order from
//! plain counts, so a resumed eval and an uninterrupted one give identical numbers.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::EvalError;
use super::extract::{self, Extractor};
use super::prepare::{ContextInfo, DatasetInfo, Prepared, Skipped};
use super::prompt::Prompt;
use super::spec::Compare;

/// What the generate callback gave for one item: the text, or the error it reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Done {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Correct,
    Incorrect,
    /// No answer could be extracted (counts as wrong).
    Unparseable,
    /// The request failed (counts as wrong).
    Error,
    /// Not sent (see `reason`).
    Skipped,
}

/// One line of items.jsonl.
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
    /// The request's error, or why the item was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Items prepared (sent or skipped).
    pub total: usize,
    /// Items in the denominator: every item sent.
    pub scored: usize,
    pub correct: usize,
    pub incorrect: usize,
    pub unparseable: usize,
    pub errors: usize,
    pub skipped: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupScore {
    pub scored: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub stderr: f64,
    pub unparseable: usize,
}

/// The score of one eval cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalResult {
    /// correct / scored.
    pub accuracy: f64,
    /// Standard error of the accuracy: sqrt(p(1−p)/(n−1)) (the sample standard deviation over
    /// √n, as lm-evaluation-harness reports it); 0 with fewer than 2 items.
    pub stderr: f64,
    /// The mean of the per-group accuracies (MMLU's "macro" average), when items have groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub macro_accuracy: Option<f64>,
    /// unparseable / scored.
    pub unparseable_share: f64,
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
    let Some(raw) = &done.raw else { return (None, Verdict::Error) };
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
    let mut groups: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut records = Vec::with_capacity(counts.total);
    let mut first_error = None;
    for (i, (item, d)) in prepared.items.iter().zip(done).enumerate() {
        let (extracted, verdict) = judge(prepared, i, d);
        counts.scored += 1;
        match verdict {
            Verdict::Correct => counts.correct += 1,
            Verdict::Incorrect => counts.incorrect += 1,
            Verdict::Unparseable => counts.unparseable += 1,
            Verdict::Error => {
                counts.errors += 1;
                first_error.get_or_insert_with(|| d.error.clone().unwrap_or_default());
            }
            Verdict::Skipped => {}
        }
        if let Some(g) = &item.group {
            let e = groups.entry(g.clone()).or_default();
            e.0 += 1;
            e.1 += usize::from(verdict == Verdict::Correct);
            e.2 += usize::from(verdict == Verdict::Unparseable);
        }
        records.push(ItemRecord {
            id: item.id.clone(),
            group: item.group.clone(),
            prompt: Some(item.prompt.clone()),
            shots: Some(item.shots),
            raw: d.raw.clone(),
            extracted,
            expected: item.target.clone(),
            verdict,
            reason: d.error.clone(),
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
            reason: Some(s.reason.clone()),
        });
    }
    if counts.scored > 0 && counts.errors == counts.scored {
        return Err(EvalError::AllFailed { count: counts.errors, first: first_error.unwrap_or_default() });
    }
    let n = counts.scored.max(1) as f64;
    let groups: BTreeMap<String, GroupScore> = groups
        .into_iter()
        .map(|(g, (scored, correct, unparseable))| {
            let accuracy = correct as f64 / scored.max(1) as f64;
            (g, GroupScore { scored, correct, accuracy, stderr: stderr(correct, scored), unparseable })
        })
        .collect();
    let macro_accuracy =
        (!groups.is_empty()).then(|| groups.values().map(|g| g.accuracy).sum::<f64>() / groups.len() as f64);
    let result = EvalResult {
        accuracy: counts.correct as f64 / n,
        stderr: stderr(counts.correct, counts.scored),
        macro_accuracy,
        unparseable_share: counts.unparseable as f64 / n,
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
