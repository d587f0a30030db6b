//! The tests behind verdicts and `--fail-if`: per metric the right test (a proportion test for
//! accuracy, Welch's for everything measured per run), then Holm's adjustment over each family
//! (`family`) before anything is called significant.

use super::accuracy;
use super::family::holm;
use super::metric::Better;
use super::proportion::{ProportionTest, TestKind};
use super::stats::{self, ALPHA, Summary, Welch};
use super::threshold::Threshold;
use super::{Basis, MetricDelta, Pair, ThresholdOutcome, Verdict};

/// One metric of one matched cell: the per-run values of each side and the test of B against A.
pub struct Evidence {
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub welch: Option<Welch>,
    pub proportion: Option<ProportionTest>,
}

impl Evidence {
    /// `accuracy_test` is the cell's accuracy test, used when `name` is its accuracy and both
    /// sides have values; otherwise Welch's test over the runs.
    pub fn new(name: &str, a: Vec<f64>, b: Vec<f64>, accuracy_test: Option<&ProportionTest>) -> Evidence {
        let proportion =
            if accuracy::is_accuracy(name) && !a.is_empty() && !b.is_empty() { accuracy_test.cloned() } else { None };
        let welch = if proportion.is_none() { stats::welch(&a, &b) } else { None };
        Evidence { a, b, welch, proportion }
    }

    /// The test performed and its raw p-value.
    fn test(&self) -> Option<(TestKind, f64)> {
        match (&self.proportion, &self.welch) {
            (Some(t), _) => Some((t.test, t.p)),
            (None, Some(w)) => Some((TestKind::Welch, w.p)),
            (None, None) => None,
        }
    }
}

pub fn delta(name: &str, unit: &str, better: Better, e: Evidence) -> MetricDelta {
    let (sa, sb) = (Summary::of(&e.a), Summary::of(&e.b));
    let (delta, delta_pct) = match (&sa, &sb) {
        (Some(x), Some(y)) => {
            let d = y.mean - x.mean;
            let pct = if x.mean != 0.0 {
                Some(d / x.mean.abs() * 100.0)
            } else if d == 0.0 {
                Some(0.0)
            } else {
                None
            };
            (Some(d), pct)
        }
        _ => (None, None),
    };
    let test = e.test();
    let mut m = MetricDelta {
        name: name.into(),
        unit: unit.into(),
        better,
        a: sa,
        b: sb,
        delta,
        delta_pct,
        welch: e.welch,
        proportion: e.proportion,
        test: test.map(|t| t.0),
        p: test.map(|t| t.1),
        p_adjusted: None,
        verdict: Verdict::Missing,
    };
    m.verdict = verdict(&m);
    m
}

/// The verdict from the delta and the family-adjusted p-value (the raw one before adjusting).
fn verdict(m: &MetricDelta) -> Verdict {
    let Some(d) = m.delta else { return Verdict::Missing };
    let Some(p) = m.p_adjusted.or(m.p) else { return Verdict::NoVerdict };
    if p >= ALPHA || d == 0.0 {
        return Verdict::NotSignificant;
    }
    match m.better {
        Better::Neutral => Verdict::Changed,
        Better::Lower if d < 0.0 => Verdict::Better,
        Better::Higher if d > 0.0 => Verdict::Better,
        _ => Verdict::Worse,
    }
}

pub fn judge(t: &Threshold, cell: &str, e: &Evidence) -> ThresholdOutcome {
    let outcome = |change, crossed, p, basis, failed| ThresholdOutcome {
        threshold: t.text.clone(),
        cell: cell.to_string(),
        change,
        crossed,
        p,
        p_adjusted: None,
        basis,
        failed,
    };
    let (Some(sa), Some(sb)) = (Summary::of(&e.a), Summary::of(&e.b)) else {
        let missing_in_b = !e.a.is_empty() && e.b.is_empty();
        let basis = if missing_in_b { Basis::MissingInB } else { Basis::NotJudged };
        return outcome(None, false, None, basis, missing_in_b);
    };
    let change = t.change(sa.mean, sb.mean);
    let crossed = t.crossed(change);
    let shown = change.is_finite().then_some(change);
    match e.test() {
        Some((kind, p)) => outcome(shown, crossed, Some(p), Basis::of(kind), crossed && p < ALPHA),
        None => outcome(shown, crossed, None, Basis::PointEstimate, crossed),
    }
}

/// Holm's adjustment over the verdicts of every pair (one family) and over the threshold
/// outcomes (another); verdicts and failures are decided again on the adjusted p-values.
pub fn adjust(pairs: &mut [Pair], outcomes: &mut [ThresholdOutcome]) {
    let raw: Vec<f64> = pairs.iter().flat_map(|p| p.metrics.iter().filter_map(|m| m.p)).collect();
    let mut adjusted = holm(&raw).into_iter();
    for m in pairs.iter_mut().flat_map(|p| p.metrics.iter_mut()).filter(|m| m.p.is_some()) {
        m.p_adjusted = adjusted.next();
        m.verdict = verdict(m);
    }
    let raw: Vec<f64> = outcomes.iter().filter_map(|o| o.p).collect();
    let mut adjusted = holm(&raw).into_iter();
    for o in outcomes.iter_mut().filter(|o| o.p.is_some()) {
        o.p_adjusted = adjusted.next();
        o.failed = o.crossed && o.p_adjusted.is_some_and(|p| p < ALPHA);
    }
}
