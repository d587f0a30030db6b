//! Which proportion test a cell's accuracy gets (`proportion` says why): paired on items when
//! every result on both sides has its items, otherwise on the pooled counts.

use std::collections::BTreeMap;

use super::Group;
use super::items::Items;
use super::proportion::{ProportionTest, Stratum, TestKind, cmh, mcnemar, two_proportion};
use crate::store::Record;

/// Whether a metric is the cell's accuracy (tested as a proportion, not with Welch).
pub fn is_accuracy(name: &str) -> bool {
    matches!(name, "accuracy" | "eval.accuracy")
}

/// The test of B's accuracy against A's; `None` when neither per-item records nor counts are
/// there (the caller falls back to Welch over the per-run values).
pub fn test<'r>(a: &Group<'r>, b: &Group<'r>, items: [&Items; 2]) -> Option<ProportionTest> {
    fn scored<'r>(g: &Group<'r>) -> Vec<&'r Record> {
        g.records.iter().copied().filter(|r| r.metric("/accuracy").is_some()).collect()
    }
    let (ra, rb) = (scored(a), scored(b));
    if ra.is_empty() || rb.is_empty() {
        return None;
    }
    if let Some(t) = paired(&ra, &rb, items) {
        return Some(t);
    }
    let (xa, na) = pooled(&ra)?;
    let (xb, nb) = pooled(&rb)?;
    two_proportion(xa, na, xb, nb)
}

/// McNemar (one answer a side per item) or CMH (repetitions) over the items answered on both
/// sides; `None` unless every result has its items and some item is answered on both sides.
fn paired(ra: &[&Record], rb: &[&Record], items: [&Items; 2]) -> Option<ProportionTest> {
    let mut strata: BTreeMap<&str, Stratum> = BTreeMap::new();
    for (side, records) in [ra, rb].into_iter().enumerate() {
        for r in records {
            for item in items[side].of(r)? {
                let Some(correct) = item.correct else { continue };
                let s = strata.entry(item.id.as_str()).or_default();
                let (answered, right) = if side == 0 {
                    (&mut s.a_answered, &mut s.a_correct)
                } else {
                    (&mut s.b_answered, &mut s.b_correct)
                };
                *answered += 1;
                *right += u64::from(correct);
            }
        }
    }
    strata.retain(|_, s| s.a_answered > 0 && s.b_answered > 0);
    if strata.is_empty() {
        return None;
    }
    let n = strata.len();
    let single = strata.values().all(|s| s.a_answered == 1 && s.b_answered == 1);
    let test = if single {
        let a_only = strata.values().filter(|s| s.a_correct == 1 && s.b_correct == 0).count() as u64;
        let b_only = strata.values().filter(|s| s.a_correct == 0 && s.b_correct == 1).count() as u64;
        mcnemar(a_only, b_only)
    } else {
        let strata: Vec<Stratum> = strata.values().copied().collect();
        // No variance in any item: every answer agrees everywhere, so nothing changed.
        cmh(&strata).unwrap_or(ProportionTest {
            test: TestKind::Cmh,
            p: 1.0,
            statistic: Some(0.0),
            items: None,
            discordant: None,
        })
    };
    Some(ProportionTest { items: Some(n), ..test })
}

/// Correct and answered items summed over a side's results, from each result's counts; the
/// answered count is the one that gives back the result's accuracy (answered items, or scored
/// items where errors count as wrong).
fn pooled(records: &[&Record]) -> Option<(u64, u64)> {
    let (mut correct, mut answered) = (0u64, 0u64);
    for r in records {
        let accuracy = r.metric("/accuracy")?;
        let count = |p: &str| r.metric(p).filter(|v| *v >= 0.0).map(|v| v as u64);
        let right = count("/eval/counts/correct")?;
        let scored = count("/eval/counts/scored");
        let errors = count("/eval/counts/errors").unwrap_or(0);
        let candidates = [count("/eval/counts/answered"), scored.map(|s| s.saturating_sub(errors)), scored];
        let n =
            candidates.into_iter().flatten().find(|&n| n > 0 && (right as f64 / n as f64 - accuracy).abs() < 1e-9)?;
        correct += right;
        answered += n;
    }
    Some((correct, answered))
}
