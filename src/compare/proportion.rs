//! Tests of a change in accuracy: a share of items answered right, not a measurement with
//! run-to-run noise.
//!
//! Welch's test over per-run accuracies is the wrong tool: at temperature 0 the runs agree
//! exactly (no spread, so any change looks certain), and with one run a side there is no test
//! at all. What varies is which items each side gets right, and both sides answer the same
//! items, so the paired tests come first:
//!
//! - one run a side: **McNemar's exact test** on the items answered on both sides — only the
//!   discordant items (right in A only, right in B only) carry evidence, and under no change
//!   each is equally likely to fall either way (a two-sided binomial test at ½);
//! - repetitions (`runs: N`): the **Cochran–Mantel–Haenszel** test with each item a stratum
//!   (a 2 × 2 table of side × right/wrong over the item's runs), no continuity correction; with
//!   one run a side it is McNemar's χ² statistic;
//! - no per-item records on a side (an imported result without its run directory): the
//!   **two-proportion z-test** on the correct and answered counts pooled over runs, which
//!   ignores the pairing and so is conservative.
//!
//! An item whose generation failed (an error) or that was skipped is not an answer and is left
//! out of the paired tests on both sides.

use serde::Serialize;

use super::stats::{binomial_half_cdf, chi2_1_p, normal_two_sided_p};

/// The test behind a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TestKind {
    /// Welch's t-test over per-run values.
    Welch,
    /// McNemar's exact test on paired items (one run a side).
    Mcnemar,
    /// Cochran–Mantel–Haenszel over items as strata (repetitions).
    Cmh,
    /// Two-proportion z-test on pooled counts (no per-item records).
    TwoProportion,
}

impl TestKind {
    pub fn text(self) -> &'static str {
        match self {
            TestKind::Welch => "Welch",
            TestKind::Mcnemar => "McNemar",
            TestKind::Cmh => "CMH",
            TestKind::TwoProportion => "two-proportion z",
        }
    }
}

/// The outcome of a proportion test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProportionTest {
    pub test: TestKind,
    /// Two-sided p-value (before the family's adjustment).
    pub p: f64,
    /// CMH's χ² or the two-proportion z; absent for McNemar's exact test.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statistic: Option<f64>,
    /// Items answered on both sides (paired tests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<usize>,
    /// McNemar: items right in A only, and right in B only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discordant: Option<[u64; 2]>,
}

/// McNemar's exact test: `a_only` items right in A and wrong in B, `b_only` the reverse.
/// p = min(1, 2 · P(X ≤ min(a_only, b_only))) for X ~ Binomial(a_only + b_only, ½).
pub fn mcnemar(a_only: u64, b_only: u64) -> ProportionTest {
    let n = a_only + b_only;
    let p = if n == 0 { 1.0 } else { (2.0 * binomial_half_cdf(a_only.min(b_only), n)).min(1.0) };
    ProportionTest { test: TestKind::Mcnemar, p, statistic: None, items: None, discordant: Some([a_only, b_only]) }
}

/// One item's answers over the runs of each side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stratum {
    pub a_answered: u64,
    pub a_correct: u64,
    pub b_answered: u64,
    pub b_correct: u64,
}

/// The Cochran–Mantel–Haenszel test over strata; `None` when no stratum has any variance
/// (every item answered the same way everywhere: nothing to test, and nothing changed).
pub fn cmh(strata: &[Stratum]) -> Option<ProportionTest> {
    let (mut diff, mut var) = (0.0, 0.0);
    for s in strata {
        let (na, nb) = (s.a_answered as f64, s.b_answered as f64);
        let t = na + nb;
        if s.a_answered == 0 || s.b_answered == 0 || t < 2.0 {
            continue;
        }
        let right = (s.a_correct + s.b_correct) as f64;
        diff += s.b_correct as f64 - nb * right / t;
        var += na * nb * right * (t - right) / (t * t * (t - 1.0));
    }
    if var <= 0.0 {
        return None;
    }
    let chi2 = diff * diff / var;
    Some(ProportionTest {
        test: TestKind::Cmh,
        p: chi2_1_p(chi2),
        statistic: Some(chi2),
        items: None,
        discordant: None,
    })
}

/// The pooled two-proportion z-test of `b_correct / b_n` against `a_correct / a_n`; `None`
/// without an answer on a side.
pub fn two_proportion(a_correct: u64, a_n: u64, b_correct: u64, b_n: u64) -> Option<ProportionTest> {
    if a_n == 0 || b_n == 0 {
        return None;
    }
    let (na, nb) = (a_n as f64, b_n as f64);
    let pooled = (a_correct + b_correct) as f64 / (na + nb);
    let se = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    let d = b_correct as f64 / nb - a_correct as f64 / na;
    let (z, p) = if se > 0.0 {
        let z = d / se;
        (z, normal_two_sided_p(z))
    } else {
        // All right or all wrong on both sides: the same share, no change.
        (0.0, 1.0)
    };
    Some(ProportionTest { test: TestKind::TwoProportion, p, statistic: Some(z), items: None, discordant: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1e-300)
    }

    #[test]
    fn mcnemar_matches_the_hand_computed_binomial() {
        // 10 items right in A only, 2 in B only: P(X ≤ 2 | n = 12) = (1 + 12 + 66) / 2¹² = 79/4096,
        // two-sided 158/4096 = 0.038574…
        let t = mcnemar(10, 2);
        assert!(close(t.p, 158.0 / 4096.0, 1e-12), "{t:?}");
        assert_eq!(t.discordant, Some([10, 2]));
        // Symmetric in the sides.
        assert!(close(mcnemar(2, 10).p, t.p, 1e-12));
        // 5 against 1: 2 · (1 + 6) / 64 = 0.21875, not significant.
        assert!(close(mcnemar(5, 1).p, 0.21875, 1e-12));
        // Equal discordant counts, or none: no evidence.
        assert_eq!(mcnemar(3, 3).p, 1.0);
        assert_eq!(mcnemar(0, 0).p, 1.0);
        // All 8 discordant items one way: 2 / 2⁸.
        assert!(close(mcnemar(0, 8).p, 2.0 / 256.0, 1e-12));
    }

    #[test]
    fn cmh_with_one_run_a_side_is_mcnemars_chi_square() {
        // 10 items right on both sides, 5 right in A only, 1 right in B only, 4 wrong on both.
        let mut strata = Vec::new();
        let one = |a: bool, b: bool| Stratum {
            a_answered: 1,
            a_correct: u64::from(a),
            b_answered: 1,
            b_correct: u64::from(b),
        };
        strata.extend(std::iter::repeat_n(one(true, true), 10));
        strata.extend(std::iter::repeat_n(one(true, false), 5));
        strata.extend(std::iter::repeat_n(one(false, true), 1));
        strata.extend(std::iter::repeat_n(one(false, false), 4));
        let t = cmh(&strata).unwrap();
        // McNemar's χ² without correction: (5 − 1)² / (5 + 1).
        assert!(close(t.statistic.unwrap(), 16.0 / 6.0, 1e-12), "{t:?}");
        assert!(close(t.p, chi2_1_p(16.0 / 6.0), 1e-12));
        // Concordant items alone have no variance: nothing to test.
        assert_eq!(cmh(&strata[..10]), None);
    }

    #[test]
    fn cmh_over_repetitions_finds_a_consistent_gain() {
        // Three runs a side; 30 items B gets right in every run that A gets right in one of
        // three; 70 items both always get right.
        let mut strata = vec![Stratum { a_answered: 3, a_correct: 1, b_answered: 3, b_correct: 3 }; 30];
        strata.extend(vec![Stratum { a_answered: 3, a_correct: 3, b_answered: 3, b_correct: 3 }; 70]);
        let t = cmh(&strata).unwrap();
        // Per item: E[b] = 3·4/6 = 2, Var = 3·3·4·2/(36·5) = 0.4; Σ(b − E) = 30, Σ Var = 12.
        assert!(close(t.statistic.unwrap(), 900.0 / 12.0, 1e-12), "{t:?}");
        assert!(t.p < 1e-10);
    }

    #[test]
    fn two_proportions_match_the_reference() {
        // 140/200 against 160/200: pooled 0.75, se = √(0.75·0.25·0.01), z = 0.1 / se.
        let t = two_proportion(140, 200, 160, 200).unwrap();
        let z = 0.1 / (0.75f64 * 0.25 * 0.01).sqrt();
        assert!(close(t.statistic.unwrap(), z, 1e-12), "{t:?}");
        // erfc(z/√2) for z = 2.3094010767585
        assert!(close(t.p, 0.020921335337794, 1e-9), "{t:?}");
        assert_eq!(two_proportion(200, 200, 200, 200).unwrap().p, 1.0);
        assert_eq!(two_proportion(0, 0, 1, 2), None);
    }
}
