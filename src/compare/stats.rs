//! Statistics over repetitions: summaries with a Student-t confidence interval, Welch's t-test,
//! and the distribution functions the proportion tests (`proportion`) need.
//!
//! The unit is the repetition: each run of a cell gives one value per metric (its p99, its
//! throughput), and these few values are what is summarized and tested — never the thousands of
//! requests inside a run, which are not independent of each other. The t distribution is
//! computed here (regularized incomplete beta by continued fraction, about sixty lines; the
//! incomplete gamma function likewise for χ² and normal tails) rather than by a statistics
//! crate: these are the only functions kitt needs from one. Tests pin them against reference
//! values.

use serde::Serialize;

/// Significance level of every verdict.
pub const ALPHA: f64 = 0.05;

/// Mean, spread and 95 % confidence interval of one metric over repetitions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n − 1); absent for a single value.
    pub stddev: Option<f64>,
    pub min: f64,
    pub max: f64,
    /// Student-t 95 % confidence interval of the mean; absent for a single value.
    pub ci95: Option<[f64; 2]>,
}

impl Summary {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = mean(values);
        let (stddev, ci95) = if n >= 2 {
            let sd = variance(values, mean).sqrt();
            let half = t_quantile(0.975, (n - 1) as f64) * sd / (n as f64).sqrt();
            (Some(sd), Some([mean - half, mean + half]))
        } else {
            (None, None)
        };
        Some(Summary {
            n,
            mean,
            stddev,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            ci95,
        })
    }

    /// Half the width of the confidence interval.
    pub fn ci_half_width(&self) -> Option<f64> {
        self.ci95.map(|[lo, hi]| (hi - lo) / 2.0)
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample variance (n − 1).
fn variance(v: &[f64], mean: f64) -> f64 {
    v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64
}

/// Welch's unequal-variances t-test of `b` against `a`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Welch {
    /// `(mean b − mean a) / standard error`; absent when both sides have no spread.
    pub t: Option<f64>,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
}

impl Welch {
    pub fn significant(&self) -> bool {
        self.p < ALPHA
    }
}

/// `None` unless each side has at least two values (a variance).
pub fn welch(a: &[f64], b: &[f64]) -> Option<Welch> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (ma, mb) = (mean(a), mean(b));
    let (va, vb) = (variance(a, ma) / na, variance(b, mb) / nb);
    let se2 = va + vb;
    if se2 == 0.0 {
        // No spread on either side: identical values are no change, different ones are certain.
        let p = if ma == mb { 1.0 } else { 0.0 };
        return Some(Welch { t: None, df: na + nb - 2.0, p });
    }
    let t = (mb - ma) / se2.sqrt();
    let df = se2 * se2 / (va * va / (na - 1.0) + vb * vb / (nb - 1.0));
    Some(Welch { t: Some(t), df, p: t_two_sided_p(t, df) })
}

/// P(|T| ≥ |t|) for Student's t with `df` degrees of freedom.
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    inc_beta(df / 2.0, 0.5, df / (df + t * t)).clamp(0.0, 1.0)
}

/// The `p` quantile of Student's t with `df` degrees of freedom, for `p` in (0.5, 1).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    let tail = 2.0 * (1.0 - p);
    let mut hi = 1.0;
    while t_two_sided_p(hi, df) > tail && hi < 1e12 {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if t_two_sided_p(mid, df) > tail {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// P(χ²₁ ≥ x): the p-value of a one-degree-of-freedom χ² statistic.
pub fn chi2_1_p(x: f64) -> f64 {
    if x <= 0.0 { 1.0 } else { gamma_q(0.5, x / 2.0).clamp(0.0, 1.0) }
}

/// P(|Z| ≥ |z|) for a standard normal Z.
pub fn normal_two_sided_p(z: f64) -> f64 {
    chi2_1_p(z * z)
}

/// P(X ≤ k) for X ~ Binomial(n, 1/2).
pub fn binomial_half_cdf(k: u64, n: u64) -> f64 {
    if k >= n {
        return 1.0;
    }
    // P(X ≤ k) = I_{1/2}(n − k, k + 1).
    inc_beta((n - k) as f64, (k + 1) as f64, 0.5)
}

/// The regularized upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a), for a > 0.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let front = (a * x.ln() - x - ln_gamma(a)).exp();
    if x < a + 1.0 {
        // The series of P(a, x) converges fast below the mean.
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        1.0 - front * sum
    } else {
        // The continued fraction of Q(a, x) (modified Lentz) above it.
        const TINY: f64 = 1e-300;
        let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / guard(b);
        let mut h = d;
        for i in 1..1000 {
            let an = -f64::from(i) * (f64::from(i) - a);
            b += 2.0;
            d = 1.0 / guard(an * d + b);
            c = guard(b + an / c);
            let step = d * c;
            h *= step;
            if (step - 1.0).abs() < 1e-16 {
                break;
            }
        }
        front * h
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine terms; relative error below 1e-13).
pub fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let pi = std::f64::consts::PI;
    if x < 0.5 {
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let a = C[0] + C.iter().enumerate().skip(1).map(|(i, c)| c / (x + i as f64)).sum::<f64>();
    0.5 * (2.0 * pi).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function I_x(a, b).
fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    // The continued fraction converges fast on this side of the mean; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let mut c = 1.0;
    let mut d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0));
    let mut h = d;
    for m in 1..=500 {
        let m = f64::from(m);
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 / guard(1.0 + even * d);
        c = guard(1.0 + even / c);
        h *= d * c;
        let odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 / guard(1.0 + odd * d);
        c = guard(1.0 + odd / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1e-300)
    }

    #[test]
    fn t_quantiles_match_the_table() {
        // Reference values: scipy.stats.t.ppf(0.975, df).
        for (df, q) in [
            (1.0, 12.706204736174694),
            (2.0, 4.302652729749462),
            (4.0, 2.7764451051977934),
            (9.0, 2.262157162798205),
            (30.0, 2.0422724563012378),
            (7.5, 2.333039626864974),
        ] {
            let got = t_quantile(0.975, df);
            assert!(close(got, q, 1e-9), "df {df}: {got} vs {q}");
        }
    }

    #[test]
    fn two_sided_p_values_match_the_reference() {
        // scipy.stats.t.sf(t, df) * 2.
        assert!(close(t_two_sided_p(2.0, 3.0), 0.13932596855884305, 1e-9));
        assert!(close(t_two_sided_p(0.5, 100.0), 0.6181735658308866, 1e-9));
        assert_eq!(t_two_sided_p(0.0, 5.0), 1.0);
    }

    #[test]
    fn chi2_normal_and_binomial_tails_match_the_reference() {
        // erfc(√(x/2)), erfc(|z|/√2), and mpmath.gammainc(a, x, inf, regularized=True).
        assert!(close(chi2_1_p(3.841458820694124), 0.05, 1e-9));
        assert!(close(chi2_1_p(0.5), 0.4795001221869535, 1e-9));
        assert!(close(chi2_1_p(20.0), 7.744216431044074e-06, 1e-8));
        assert!(close(normal_two_sided_p(1.959963984540054), 0.05, 1e-9));
        assert!(close(normal_two_sided_p(-3.0), 0.0026997960632601913, 1e-9));
        assert!(close(gamma_q(4.0, 2.5), 0.7575761331330659, 1e-9));
        assert!(close(gamma_q(0.25, 0.1), 0.391661154271034, 1e-9));
        assert_eq!(chi2_1_p(0.0), 1.0);
        // Binomial(12, 1/2): P(X ≤ 2) = (1 + 12 + 66) / 4096.
        assert!(close(binomial_half_cdf(2, 12), 79.0 / 4096.0, 1e-12));
        assert!(close(binomial_half_cdf(0, 1), 0.5, 1e-12));
        assert_eq!(binomial_half_cdf(5, 5), 1.0);
    }

    #[test]
    fn welch_matches_the_reference() {
        // scipy.stats.ttest_ind(a, b, equal_var=False), signs flipped: kitt tests b against a.
        let a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4];
        let b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4];
        let w = welch(&a, &b).unwrap();
        assert!(close(w.t.unwrap(), 2.455356398286006, 1e-9), "{w:?}");
        assert!(close(w.df, 24.988529290231416, 1e-9), "{w:?}");
        assert!(close(w.p, 0.021378001462866992, 1e-7), "{w:?}");
        let w = welch(&[100.0, 101.0, 99.0], &[110.0, 111.5, 109.0]).unwrap();
        assert!(close(w.p, 0.0005127165637602618, 1e-7), "{w:?}");
        assert!(close(w.df, 3.8059405940594067, 1e-9), "{w:?}");
        let w = welch(&[100.0, 101.0, 99.0], &[100.5, 99.5, 100.0]).unwrap();
        assert_eq!(w.p, 1.0);
    }

    #[test]
    fn welch_needs_two_values_a_side_and_handles_no_spread() {
        assert_eq!(welch(&[1.0], &[2.0, 3.0]), None);
        assert_eq!(welch(&[0.0, 0.0], &[0.0, 0.0]).unwrap().p, 1.0);
        assert_eq!(welch(&[0.0, 0.0], &[1.0, 1.0]).unwrap().p, 0.0);
    }

    #[test]
    fn summary_interval_uses_student_t() {
        let s = Summary::of(&[10.0, 12.0, 14.0]).unwrap();
        assert_eq!((s.n, s.mean, s.min, s.max), (3, 12.0, 10.0, 14.0));
        assert_eq!(s.stddev, Some(2.0));
        let half = 4.302652729749462 * 2.0 / 3f64.sqrt();
        let [lo, hi] = s.ci95.unwrap();
        assert!(close(lo, 12.0 - half, 1e-9) && close(hi, 12.0 + half, 1e-9), "{s:?}");
        let one = Summary::of(&[5.0]).unwrap();
        assert_eq!((one.stddev, one.ci95), (None, None));
        assert_eq!(Summary::of(&[]), None);
    }

    /// A seeded normal generator (xorshift + Box–Muller) for the calibration test.
    struct Normal(u64);
    impl Normal {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn sample(&mut self, mean: f64, sd: f64) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            mean + sd * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    #[test]
    fn the_false_positive_rate_is_alpha_and_a_real_shift_is_found() {
        let mut g = Normal(0x9e37_79b9_7f4a_7c15);
        let trials = 4000;
        let mut noise_flagged = 0;
        let mut shift_found = 0;
        for _ in 0..trials {
            let a: Vec<f64> = (0..3).map(|_| g.sample(100.0, 2.0)).collect();
            let same: Vec<f64> = (0..3).map(|_| g.sample(100.0, 2.0)).collect();
            let shifted: Vec<f64> = (0..3).map(|_| g.sample(110.0, 2.0)).collect();
            noise_flagged += usize::from(welch(&a, &same).unwrap().significant());
            shift_found += usize::from(welch(&a, &shifted).unwrap().significant());
        }
        // Welch's test is slightly conservative at n = 3: the rate sits at or just under 5 %.
        let rate = noise_flagged as f64 / trials as f64;
        assert!((0.02..=0.065).contains(&rate), "false positive rate {rate}");
        let power = shift_found as f64 / trials as f64;
        assert!(power > 0.9, "power {power} against a 10 % shift with 2 % noise");
    }
}
