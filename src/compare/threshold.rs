//! `--fail-if` thresholds: `METRIC OP VALUE`, e.g. `ttft.p99 > +5%` or `error_rate > 0.01`.
//!
//! The value is a change of B against A: with `%` relative to A's mean, without it in the
//! metric's own unit. A threshold is crossed when the change of the means is beyond it; whether
//! crossing fails the comparison depends on the repetitions (see `compare`).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
}

/// How far B may move from A.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// Percent of A's mean.
    Percent(f64),
    /// In the metric's unit.
    Absolute(f64),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Threshold {
    /// As written.
    pub text: String,
    pub metric: String,
    pub op: Op,
    pub bound: Bound,
}

/// A threshold that does not parse: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdError {
    pub text: String,
    /// Character offset of the problem in `text`.
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for ThresholdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid --fail-if: {}", self.message)?;
        writeln!(f, "  {}", self.text)?;
        write!(f, "  {}^", " ".repeat(self.column))?;
        write!(f, "\n  expected METRIC OP VALUE, e.g. \"ttft.p99 > +5%\" or \"error_rate > 0.01\"")
    }
}

impl std::error::Error for ThresholdError {}

impl Threshold {
    pub fn parse(text: &str) -> Result<Threshold, ThresholdError> {
        let err = |column: usize, message: &str| ThresholdError {
            text: text.to_string(),
            column,
            message: message.to_string(),
        };
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        let skip_space = |i: &mut usize| {
            while *i < chars.len() && chars[*i].is_whitespace() {
                *i += 1;
            }
        };
        skip_space(&mut i);
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
            i += 1;
        }
        let metric: String = chars[start..i].iter().collect();
        if metric.is_empty() {
            return Err(err(i, "expected a metric path such as `ttft.p99`"));
        }
        if metric.starts_with('.') || metric.ends_with('.') || metric.contains("..") {
            return Err(err(start, "a metric path is names joined by single dots"));
        }
        skip_space(&mut i);
        let op_at = i;
        let next = chars.get(i + 1).copied();
        let op = match (chars.get(i), next) {
            (Some('>'), Some('=')) => Op::Ge,
            (Some('<'), Some('=')) => Op::Le,
            (Some('>'), _) => Op::Gt,
            (Some('<'), _) => Op::Lt,
            _ => return Err(err(op_at, "expected a comparison: >, >=, < or <=")),
        };
        i += if matches!(op, Op::Ge | Op::Le) { 2 } else { 1 };
        skip_space(&mut i);
        let value_at = i;
        let rest: String = chars[i..].iter().collect();
        let rest = rest.trim_end();
        if rest.is_empty() {
            return Err(err(value_at, "expected a value: a change such as +5% or an amount such as 20"));
        }
        let (number, percent) = match rest.strip_suffix('%') {
            Some(n) => (n.trim_end(), true),
            None => (rest, false),
        };
        let value: f64 = number
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| err(value_at, "expected a number, optionally signed, optionally ending in %"))?;
        let bound = if percent { Bound::Percent(value) } else { Bound::Absolute(value) };
        Ok(Threshold { text: text.trim().to_string(), metric, op, bound })
    }

    /// The change of B against A this threshold judges: percent of A, or the difference.
    /// A relative change from zero is infinite in B's direction (or zero when B is zero too).
    pub fn change(&self, a: f64, b: f64) -> f64 {
        match self.bound {
            Bound::Absolute(_) => b - a,
            Bound::Percent(_) if a == 0.0 => {
                if b == 0.0 {
                    0.0
                } else {
                    f64::INFINITY.copysign(b)
                }
            }
            Bound::Percent(_) => (b - a) / a.abs() * 100.0,
        }
    }

    /// Whether a change is beyond the threshold.
    pub fn crossed(&self, change: f64) -> bool {
        let bound = match self.bound {
            Bound::Percent(v) | Bound::Absolute(v) => v,
        };
        match self.op {
            Op::Gt => change > bound,
            Op::Ge => change >= bound,
            Op::Lt => change < bound,
            Op::Le => change <= bound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_that_parse() {
        let t = Threshold::parse("ttft.p99 > +5%").unwrap();
        assert_eq!((t.metric.as_str(), t.op, t.bound), ("ttft.p99", Op::Gt, Bound::Percent(5.0)));
        let t = Threshold::parse("request_throughput<=-3.5 %").unwrap();
        assert_eq!((t.op, t.bound), (Op::Le, Bound::Percent(-3.5)));
        let t = Threshold::parse(" error_rate >= 0.01 ").unwrap();
        assert_eq!((t.op, t.bound, t.text.as_str()), (Op::Ge, Bound::Absolute(0.01), "error_rate >= 0.01"));
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = Threshold::parse("ttft.p99 >> 5%").unwrap_err();
        assert_eq!(e.column, 10);
        assert_eq!(
            e.to_string(),
            "invalid --fail-if: expected a number, optionally signed, optionally ending in %\n  ttft.p99 >> 5%\n            ^\n  expected METRIC OP VALUE, e.g. \"ttft.p99 > +5%\" or \"error_rate > 0.01\""
        );
        assert_eq!(Threshold::parse("ttft.p99 = 5").unwrap_err().column, 9);
        assert_eq!(Threshold::parse("> 5").unwrap_err().message, "expected a metric path such as `ttft.p99`");
        assert_eq!(Threshold::parse("ttft. > 5").unwrap_err().column, 0);
        assert_eq!(Threshold::parse("ttft.p99 >").unwrap_err().column, 10);
    }

    #[test]
    fn changes_and_crossings() {
        let t = Threshold::parse("ttft.p99 > +5%").unwrap();
        assert!((t.change(100.0, 110.0) - 10.0).abs() < 1e-9);
        assert!(t.crossed(10.0) && !t.crossed(5.0));
        assert_eq!(t.change(0.0, 0.0), 0.0);
        assert!(t.crossed(t.change(0.0, 1.0)));
        let t = Threshold::parse("request_throughput < -5%").unwrap();
        assert!(t.crossed(t.change(100.0, 90.0)) && !t.crossed(t.change(100.0, 99.0)));
        let t = Threshold::parse("error_rate > 0.01").unwrap();
        assert!(t.crossed(t.change(0.0, 0.02)) && !t.crossed(t.change(0.0, 0.005)));
    }
}
