//! Comparisons and aggregates as text tables or markdown (JSON is their serde form).

use std::fmt::Write as _;

use super::proportion::TestKind;
use super::stats::{ALPHA, Summary};
use super::{Aggregate, Basis, Comparison, MetricDelta, ThresholdOutcome, Verdict};

/// A number with as many decimals as its size deserves.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn signed(v: f64) -> String {
    if v > 0.0 { format!("+{}", num(v)) } else { num(v) }
}

/// `mean ± ci95 half-width`, or the single value.
fn summary_text(s: Option<&Summary>) -> String {
    match s {
        None => "-".into(),
        Some(s) => match s.ci_half_width() {
            Some(h) => format!("{} ± {}", num(s.mean), num(h)),
            None => num(s.mean),
        },
    }
}

fn metric_name(m: &MetricDelta) -> String {
    if m.unit.is_empty() { m.name.clone() } else { format!("{} ({})", m.name, m.unit) }
}

fn verdict_text(m: &MetricDelta) -> String {
    match (m.test, m.p, m.verdict) {
        (Some(test), Some(p), Verdict::Better | Verdict::Worse | Verdict::Changed | Verdict::NotSignificant) => {
            format!("{} ({})", m.verdict.text(), test_text(test, p, m.p_adjusted))
        }
        _ => m.verdict.text().to_string(),
    }
}

/// `McNemar p=0.0386, Holm p=0.1157`: the test, its p-value, and the adjusted one where the
/// adjustment changed it.
fn test_text(test: TestKind, p: f64, adjusted: Option<f64>) -> String {
    let test = if test == TestKind::Welch { String::new() } else { format!("{} ", test.text()) };
    match adjusted {
        Some(a) if a != p => format!("{test}{}, Holm {}", p_text(p), p_text(a)),
        _ => format!("{test}{}", p_text(p)),
    }
}

/// `p=0.0123`, or `p<0.0001`.
fn p_text(p: f64) -> String {
    if p < 0.0001 { "p<0.0001".into() } else { format!("p={p:.4}") }
}

fn pct_text(p: Option<f64>) -> String {
    p.map_or("-".into(), |p| format!("{}{p:.1}%", if p > 0.0 { "+" } else { "" }))
}

/// Left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>], indent: &str) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        let _ = writeln!(out, "{indent}{}", line.join("  ").trim_end());
    }
    out
}

fn markdown_table(rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if i == 0 {
            let _ = writeln!(out, "|{}", "---|".repeat(r.len()));
        }
    }
    out
}

fn metric_rows(metrics: &[MetricDelta]) -> Vec<Vec<String>> {
    let mut rows =
        vec![vec!["metric".to_string(), "A".into(), "B".into(), "delta".into(), "delta %".into(), "verdict".into()]];
    for m in metrics {
        rows.push(vec![
            metric_name(m),
            summary_text(m.a.as_ref()),
            summary_text(m.b.as_ref()),
            m.delta.map_or("-".into(), signed),
            pct_text(m.delta_pct),
            verdict_text(m),
        ]);
    }
    rows
}

fn fact_rows(c: &Comparison) -> Vec<Vec<String>> {
    let mut rows = vec![vec!["fact".to_string(), "A".into(), "B".into(), String::new()]];
    for f in &c.facts {
        let b = if f.differs { f.b.join(", ") } else { "(same)".into() };
        rows.push(vec![f.fact.clone(), f.a.join(", "), b, if f.differs { "DIFFERS".into() } else { String::new() }]);
    }
    rows
}

fn threshold_line(o: &ThresholdOutcome) -> Vec<String> {
    let change = match (o.change, o.threshold.contains('%')) {
        (Some(c), true) => pct_text(Some(c)),
        (Some(c), false) => signed(c),
        (None, _) => "-".into(),
    };
    let why = match o.basis {
        Basis::Welch | Basis::Mcnemar | Basis::Cmh | Basis::TwoProportion => {
            let p = match (o.basis.test(), o.p) {
                (Some(test), Some(p)) => test_text(test, p, o.p_adjusted),
                _ => "-".into(),
            };
            if o.crossed && !o.failed {
                format!("crossed but not significant ({p})")
            } else if o.crossed {
                format!("crossed and significant ({p})")
            } else {
                format!("not crossed ({p})")
            }
        }
        Basis::PointEstimate => {
            format!("{} on the point estimate (single run)", if o.crossed { "crossed" } else { "not crossed" })
        }
        Basis::MissingInB => "B has no value where A has one".into(),
        Basis::NotJudged => "not judged: A has no value".into(),
    };
    vec![if o.failed { "FAIL".into() } else { "pass".into() }, o.threshold.clone(), o.cell.clone(), change, why]
}

fn notes(c: &Comparison) -> Vec<String> {
    let mut out = Vec::new();
    if c.single_run {
        out.push(
            "fewer than two runs on a side: no significance verdict is possible for a metric measured per run \
             (`runs: N` in the suite repeats each cell); --fail-if thresholds on it are judged on the point \
             estimate (accuracy is tested on its items)"
                .to_string(),
        );
    }
    if c.family.verdicts > 1 {
        out.push(format!(
            "verdicts are at α = {ALPHA} after Holm's adjustment over the {} tests of this compare (cells × metrics)",
            c.family.verdicts
        ));
    }
    if c.facts.iter().any(|f| f.differs && f.fact == "metrics.schema") {
        out.push("the metric definitions differ (metrics.schema): these numbers do not mean the same".into());
    }
    out
}

/// The comparison as text.
pub fn text(c: &Comparison) -> String {
    let mut out = String::new();
    for (name, s) in [("A", &c.a), ("B", &c.b)] {
        let _ = writeln!(out, "{name}  {}: {} result(s)", s.label, s.results);
    }
    out.push('\n');
    out.push_str(&table(&fact_rows(c), ""));
    for p in &c.pairs {
        let _ = writeln!(out, "\n{}  ({} run(s) vs {}{})", p.label, p.runs[0], p.runs[1], failed_note(p.failed));
        out.push_str(&table(&metric_rows(&p.metrics), "  "));
    }
    for (side, cells) in [("A", &c.only_a), ("B", &c.only_b)] {
        for cell in cells.iter() {
            let _ = writeln!(out, "\nonly in {side}: {cell}");
        }
    }
    if !c.thresholds.is_empty() {
        let _ = writeln!(out, "\nthresholds (α = {ALPHA}, Holm over {} test(s)):", c.family.thresholds);
        let rows: Vec<Vec<String>> = c.thresholds.iter().map(threshold_line).collect();
        out.push_str(&table(&rows, "  "));
    }
    for n in notes(c) {
        let _ = writeln!(out, "\nnote: {n}");
    }
    if !c.thresholds.is_empty() {
        let failed = c.thresholds.iter().filter(|o| o.failed).count();
        let _ = writeln!(
            out,
            "\n{}",
            if failed > 0 { format!("FAILED: {failed} threshold check(s) failed") } else { "thresholds passed".into() }
        );
    }
    out
}

fn failed_note(failed: [usize; 2]) -> String {
    if failed == [0, 0] { String::new() } else { format!("; failed cells: A {}, B {}", failed[0], failed[1]) }
}

/// The comparison as markdown (a CI comment).
pub fn markdown(c: &Comparison) -> String {
    let mut out = String::from("## kitt compare\n\n");
    let _ = writeln!(out, "- **A**: {}, {} results", c.a.label, c.a.results);
    let _ = writeln!(out, "- **B**: {}, {} results\n", c.b.label, c.b.results);
    out.push_str(&markdown_table(&fact_rows(c)));
    for p in &c.pairs {
        let _ = writeln!(out, "\n### {}\n\n{} run(s) vs {}{}\n", p.label, p.runs[0], p.runs[1], failed_note(p.failed));
        out.push_str(&markdown_table(&metric_rows(&p.metrics)));
    }
    for (side, cells) in [("A", &c.only_a), ("B", &c.only_b)] {
        for cell in cells.iter() {
            let _ = writeln!(out, "\nOnly in {side}: {cell}");
        }
    }
    if !c.thresholds.is_empty() {
        let _ = writeln!(out, "\n### Thresholds (α = {ALPHA}, Holm over {} test(s))\n", c.family.thresholds);
        let mut rows =
            vec![vec!["result".to_string(), "threshold".into(), "cell".into(), "change".into(), "why".into()]];
        rows.extend(c.thresholds.iter().map(threshold_line));
        out.push_str(&markdown_table(&rows));
    }
    for n in notes(c) {
        let _ = writeln!(out, "\n> {n}");
    }
    out
}

/// A cell's repetitions summarized, as text.
pub fn aggregate_text(a: &Aggregate, indent: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{indent}{}  ({} run(s){})",
        a.label,
        a.runs,
        if a.failed > 0 { format!(", {} failed", a.failed) } else { String::new() }
    );
    let mut rows =
        vec![vec!["metric".to_string(), "mean".into(), "95% CI".into(), "stddev".into(), "min".into(), "max".into()]];
    for m in &a.metrics {
        let s = &m.summary;
        rows.push(vec![
            if m.unit.is_empty() { m.name.clone() } else { format!("{} ({})", m.name, m.unit) },
            num(s.mean),
            s.ci95.map_or("-".into(), |[lo, hi]| format!("{} – {}", num(lo), num(hi))),
            s.stddev.map_or("-".into(), num),
            num(s.min),
            num(s.max),
        ]);
    }
    out.push_str(&table(&rows, &format!("{indent}  ")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_meaningful_digits() {
        assert_eq!(num(1234.56), "1235");
        assert_eq!(num(123.456), "123.5");
        assert_eq!(num(21.708), "21.71");
        assert_eq!(num(0.01234), "0.0123");
        assert_eq!(num(0.0), "0");
        assert_eq!(signed(2.5), "+2.50");
        assert_eq!(pct_text(Some(-3.04)), "-3.0%");
    }
}
