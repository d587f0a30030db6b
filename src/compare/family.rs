//! Multiple comparisons: one compare tests many hypotheses at once — every matched cell times
//! every metric shown, and for `--fail-if` every cell times every threshold — so a verdict at
//! α = 0.05 per test would call some of them significant by chance almost every time (twenty
//! independent tests of pure noise flag at least one in 64 % of compares).
//!
//! kitt adjusts each family with Holm–Bonferroni, which bounds the family-wise error rate (the
//! chance of *any* false verdict) at α under any dependence between the tests: the metrics of
//! one cell are strongly correlated (p50 and p99 of one run), so a method that assumes
//! independence would not do. It is uniformly more powerful than plain Bonferroni. A false
//! discovery rate method (Benjamini–Hochberg) would flag more, but a CI gate that fails on noise
//! one time in twenty per family is what this is meant to stop.

/// Holm–Bonferroni adjusted p-values, in the order given: with the p-values sorted ascending,
/// the i-th (from 0) becomes `max over j ≤ i of min(1, (m − j) · p_j)`. A test is significant in
/// the family when its adjusted p-value is below α. NaN is treated as 1 (no evidence).
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let clean = |v: f64| if v.is_nan() { 1.0 } else { v.clamp(0.0, 1.0) };
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&x, &y| clean(p[x]).total_cmp(&clean(p[y])));
    let mut out = vec![1.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        let scaled = ((m - rank) as f64 * clean(p[i])).min(1.0);
        running = running.max(scaled);
        out[i] = running;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::proportion::mcnemar;
    use crate::compare::stats::{ALPHA, welch};

    #[test]
    fn holm_matches_the_hand_computed_example() {
        // Sorted 0.01, 0.02, 0.03, 0.5 → 4·0.01, 3·0.02, 2·0.03 (raised to the running max), 0.5.
        let adj = holm(&[0.03, 0.5, 0.01, 0.02]);
        let want = [0.06, 0.5, 0.04, 0.06];
        for (a, w) in adj.iter().zip(want) {
            assert!((a - w).abs() < 1e-12, "{adj:?}");
        }
        assert_eq!(holm(&[0.2, f64::NAN]), vec![0.4, 1.0]);
        assert_eq!(holm(&[]), Vec::<f64>::new());
        assert_eq!(holm(&[0.04]), vec![0.04], "a family of one is not adjusted");
    }

    /// A seeded generator (xorshift64*) for the calibration test.
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
    }

    /// A compare of many cells where nothing changed: each cell has three runs a side of a
    /// latency (Welch) and 200 items answered with the same 70 % chance on both sides (McNemar).
    /// Returns the family's raw p-values.
    fn null_family(g: &mut Rng, cells: usize) -> Vec<f64> {
        let mut p = Vec::new();
        for _ in 0..cells {
            let a: Vec<f64> = (0..3).map(|_| 100.0 + 3.0 * g.normal()).collect();
            let b: Vec<f64> = (0..3).map(|_| 100.0 + 3.0 * g.normal()).collect();
            p.push(welch(&a, &b).map_or(1.0, |w| w.p));
            let (mut a_only, mut b_only) = (0u64, 0u64);
            for _ in 0..200 {
                let skill = g.uniform();
                let (ra, rb) = (g.uniform() < 0.5 + 0.4 * skill, g.uniform() < 0.5 + 0.4 * skill);
                a_only += u64::from(ra && !rb);
                b_only += u64::from(rb && !ra);
            }
            p.push(mcnemar(a_only, b_only).p);
        }
        p
    }

    #[test]
    fn holm_keeps_family_wise_false_positives_at_alpha_where_raw_p_values_do_not() {
        let mut g = Rng(0x853c_49e6_748f_ea9b);
        let trials = 400;
        let (mut raw_flagged, mut holm_flagged) = (0, 0);
        for _ in 0..trials {
            let p = null_family(&mut g, 12);
            raw_flagged += usize::from(p.iter().any(|p| *p < ALPHA));
            holm_flagged += usize::from(holm(&p).iter().any(|p| *p < ALPHA));
        }
        let raw = raw_flagged as f64 / trials as f64;
        let adjusted = holm_flagged as f64 / trials as f64;
        assert!(adjusted <= 0.08, "family-wise false positives with Holm: {adjusted}");
        assert!(raw >= 0.30, "family-wise false positives without a correction: {raw}");
    }
}
