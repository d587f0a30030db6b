//! Open-loop arrival schedules, precomputed from a seed before the window opens.
//!
//! Requests are sent at *absolute* target times (`origin + offset`), never after relative sleeps,
//! so a late wake-up does not push every later request back (vllm#21104: relative sleeps delivered
//! 183.5 of 200 req/s). Inter-arrival gaps are constant, or gamma-distributed with mean `1/rate`:
//! shape 1 is a Poisson process, a shape below 1 is burstier, above 1 more regular.

/// A small, fast, seedable generator (splitmix64): the schedule depends only on the seed.
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Gamma(shape, 1) by Marsaglia and Tsang; shapes below 1 through the boost `U^(1/shape)`.
    fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            return self.gamma(shape + 1.0) * self.unit().powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.unit();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }
}

/// How arrivals are spaced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Spacing {
    /// Exactly `1/rate` apart.
    Constant,
    /// Gamma-distributed gaps of mean `1/rate` with this shape (1 = Poisson).
    Gamma(f64),
}

/// Offsets (ns from the origin) of the arrivals: `count` of them, or `rate × horizon` when only a
/// horizon bounds the run (whichever is fewer when both do). Random gaps are rescaled so that their
/// mean is exactly `1/rate`: the schedule offers exactly the configured rate, and only its shape
/// comes from the seed.
pub(crate) fn schedule(
    rate: f64,
    spacing: Spacing,
    seed: u64,
    count: Option<u64>,
    horizon_ns: Option<u64>,
) -> Vec<u64> {
    let mean_gap = 1e9 / rate;
    let by_horizon = horizon_ns.map(|h| ((h as f64 / mean_gap).ceil() as u64).max(1));
    let n = match (count, by_horizon) {
        (Some(c), Some(h)) => c.min(h),
        (Some(c), None) => c,
        (None, Some(h)) => h,
        (None, None) => 0,
    } as usize;
    let gaps: Vec<f64> = match spacing {
        Spacing::Constant => vec![mean_gap; n.saturating_sub(1)],
        Spacing::Gamma(shape) => {
            let mut rng = SplitMix::new(seed);
            let raw: Vec<f64> = (1..n).map(|_| rng.gamma(shape)).collect();
            let mean = raw.iter().sum::<f64>() / raw.len().max(1) as f64;
            raw.iter().map(|g| if mean > 0.0 { g / mean * mean_gap } else { mean_gap }).collect()
        }
    };
    let mut out = Vec::with_capacity(n);
    let mut t = 0.0f64;
    if n > 0 {
        out.push(0);
    }
    for g in gaps {
        t += g;
        out.push(t.round() as u64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(s: &[u64]) -> Vec<f64> {
        s.windows(2).map(|w| (w[1] - w[0]) as f64).collect()
    }

    #[test]
    fn constant_rate_is_exact() {
        let s = schedule(200.0, Spacing::Constant, 1, Some(1000), None);
        assert_eq!(s.len(), 1000);
        assert_eq!(s[0], 0);
        assert!(gaps(&s).iter().all(|g| (*g - 5_000_000.0).abs() <= 1.0));
        // A horizon bounds it too: 2 s at 200 req/s is 400 arrivals.
        assert_eq!(schedule(200.0, Spacing::Constant, 1, None, Some(2_000_000_000)).len(), 400);
    }

    #[test]
    fn poisson_has_the_mean_rate_and_the_shape() {
        let s = schedule(100.0, Spacing::Gamma(1.0), 7, Some(10_001), None);
        let g = gaps(&s);
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        assert!((mean / 1e7 - 1.0).abs() < 0.01, "mean gap {mean} ns, want 1e7 within 1 %");
        // Exponential gaps: the coefficient of variation is 1.
        let var = g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / g.len() as f64;
        let cv = var.sqrt() / mean;
        assert!((cv - 1.0).abs() < 0.05, "cv {cv}");
        // Same seed, same schedule; another seed, another one.
        assert_eq!(s, schedule(100.0, Spacing::Gamma(1.0), 7, Some(10_001), None));
        assert_ne!(s, schedule(100.0, Spacing::Gamma(1.0), 8, Some(10_001), None));
    }

    /// The Kolmogorov–Smirnov statistic of `sample` against the distribution function `cdf`.
    fn ks_statistic(mut sample: Vec<f64>, cdf: impl Fn(f64) -> f64) -> f64 {
        sample.sort_by(f64::total_cmp);
        let n = sample.len() as f64;
        sample.iter().enumerate().fold(0.0, |d: f64, (i, x)| {
            let f = cdf(*x);
            d.max((i + 1) as f64 / n - f).max(f - i as f64 / n)
        })
    }

    /// P(D ≥ d) for the KS statistic of `n` values: Kolmogorov's limit with Stephens' small-sample
    /// correction, Q(λ) = 2 Σ (−1)^(k−1) exp(−2k²λ²).
    fn ks_p(d: f64, n: usize) -> f64 {
        let sn = (n as f64).sqrt();
        let lambda = (sn + 0.12 + 0.11 / sn) * d;
        if lambda < 0.3 {
            return 1.0;
        }
        let q: f64 = (1..=100)
            .map(|k| {
                let k = f64::from(k);
                2.0 * if k % 2.0 == 1.0 { 1.0 } else { -1.0 } * (-2.0 * k * k * lambda * lambda).exp()
            })
            .sum();
        q.clamp(0.0, 1.0)
    }

    /// Gaps in units of the mean gap `1/rate`.
    fn unit_gaps(rate: f64, spacing: Spacing, seed: u64, n: u64) -> Vec<f64> {
        let mean_gap = 1e9 / rate;
        gaps(&schedule(rate, spacing, seed, Some(n), None)).iter().map(|g| g / mean_gap).collect()
    }

    fn exponential(x: f64) -> f64 {
        1.0 - (-x).exp()
    }

    #[test]
    fn poisson_gaps_pass_a_kolmogorov_smirnov_test_that_constant_gaps_fail() {
        // Against Exp(1) with the configured mean (not the sample's), over several seeds.
        for seed in 1..=5 {
            let g = unit_gaps(50.0, Spacing::Gamma(1.0), seed, 5001);
            let d = ks_statistic(g, exponential);
            assert!(ks_p(d, 5000) > 0.01, "seed {seed}: D = {d}, p = {}", ks_p(d, 5000));
        }
        // The same test rejects constant spacing at the same rate (D = 1 − 1/e) ...
        let g = unit_gaps(50.0, Spacing::Constant, 1, 5001);
        let d = ks_statistic(g, exponential);
        assert!((d - (1.0 - (-1f64).exp())).abs() < 1e-6, "D = {d}");
        assert!(ks_p(d, 5000) < 1e-12, "constant gaps pass as exponential: D = {d}");
        // ... and gaps of the right mean but the wrong shape (gamma 4, cv 0.5).
        let g = unit_gaps(50.0, Spacing::Gamma(4.0), 1, 5001);
        let d = ks_statistic(g, exponential);
        assert!(ks_p(d, 5000) < 1e-12, "gamma(4) gaps pass as exponential: D = {d}");
        // Few arrivals are still exponential: the rescaling to the exact mean only conditions the
        // gaps on their sum (arrivals uniform over the window, as a Poisson process given its count).
        let d = ks_statistic(unit_gaps(50.0, Spacing::Gamma(1.0), 9, 101), exponential);
        assert!(ks_p(d, 100) > 0.01, "100 gaps: D = {d}");
    }

    #[test]
    fn bursty_and_regular_gaps_pass_a_kolmogorov_smirnov_test_against_their_gamma() {
        use crate::compare::stats::gamma_q;
        for shape in [0.25, 0.5, 2.0, 4.0] {
            // Gamma(shape) with mean 1: P(X ≤ x) = 1 − Q(shape, shape · x).
            let cdf = |x: f64| 1.0 - gamma_q(shape, shape * x);
            for seed in 1..=3 {
                let d = ks_statistic(unit_gaps(50.0, Spacing::Gamma(shape), seed, 5001), cdf);
                assert!(ks_p(d, 5000) > 0.01, "shape {shape}, seed {seed}: D = {d}");
            }
            // Against the exponential (a Poisson process), the shape shows.
            let d = ks_statistic(unit_gaps(50.0, Spacing::Gamma(shape), 1, 5001), exponential);
            assert!(ks_p(d, 5000) < 1e-6, "shape {shape} passes as exponential: D = {d}");
            // Constant gaps are not gamma either.
            let d = ks_statistic(unit_gaps(50.0, Spacing::Constant, 1, 5001), cdf);
            assert!(ks_p(d, 5000) < 1e-12, "constant gaps pass as gamma({shape}): D = {d}");
        }
    }

    #[test]
    fn burstiness_is_the_gamma_shape() {
        for shape in [0.25, 4.0] {
            let s = schedule(100.0, Spacing::Gamma(shape), 3, Some(20_001), None);
            let g = gaps(&s);
            let mean = g.iter().sum::<f64>() / g.len() as f64;
            let var = g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / g.len() as f64;
            assert!((mean / 1e7 - 1.0).abs() < 0.03, "shape {shape}: mean {mean}");
            // Gamma(k) gaps have cv² = 1/k.
            let cv2 = var / (mean * mean);
            assert!((cv2 * shape - 1.0).abs() < 0.1, "shape {shape}: cv² {cv2}");
        }
    }
}
