//! Aggregation of repetitions and comparison of two sets of results.
//!
//! Plain data in, plain data out: records (from the store or a run directory; the CLI reads
//! them) become `Aggregate`s and a `Comparison` that the CLI renders as text, markdown or JSON.
//! Cells are matched by identity — model, engine instance, benchmark instance and params — never
//! by step key, which changes with an image. The unit of every measured statistic is the
//! repetition (`runs: N`): its verdict is Welch's t-test over per-run values, and with one run
//! on a side no verdict is possible, which the comparison says instead of guessing. Accuracy is a
//! share of items, tested on the items themselves (`proportion`). Every verdict and every
//! `--fail-if` is judged at α = 0.05 after Holm's adjustment over its family (`family`), so that
//! a compare of many cells and metrics is not wrong somewhere by chance.

pub mod accuracy;
pub mod family;
pub mod items;
mod judge;
pub mod metric;
pub mod proportion;
pub mod render;
pub mod stats;
pub mod threshold;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value as Json;

use crate::report::{CellIdentity, CellStatus};
use crate::store::Record;
use items::Items;
use judge::Evidence;
use metric::{Better, KEY_METRICS};
use proportion::{ProportionTest, TestKind};
use stats::{Summary, Welch};
use threshold::Threshold;

/// What identifies a cell across runs: everything but the run index (and the sampling, which
/// the params already carry where a benchmark overrides it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Identity {
    pub model: String,
    pub engine: String,
    pub engine_template: String,
    pub benchmark: String,
    pub template: String,
    pub params: BTreeMap<String, Json>,
    pub swept: BTreeMap<String, Json>,
}

impl Identity {
    pub fn of(cell: &CellIdentity) -> Identity {
        Identity {
            model: cell.model.clone(),
            engine: cell.engine.clone(),
            engine_template: cell.engine_template.clone(),
            benchmark: cell.benchmark.clone(),
            template: cell.template.clone(),
            params: cell.params.clone(),
            swept: cell.swept.clone(),
        }
    }

    /// The matching key: model, engine instance, benchmark instance and params, as canonical JSON.
    pub fn key(&self) -> String {
        serde_json::json!([self.model, self.engine, self.benchmark, self.params]).to_string()
    }

    /// `engine model benchmark k=v …`.
    pub fn label(&self) -> String {
        crate::store::label(&self.engine, &self.model, &self.benchmark, &self.swept)
    }
}

/// Records that differ only by run index: the repetitions of one cell.
#[derive(Debug, Clone)]
pub struct Group<'a> {
    pub identity: Identity,
    /// `identity.key()`, computed once.
    pub key: String,
    pub records: Vec<&'a Record>,
}

impl Group<'_> {
    /// Per-run values of the metric at any of `pointers` (the first present in each record), over
    /// the runs that succeeded: a failed run's numbers (over its error budget, or cut short by
    /// `step_timeout`) describe no finished measurement.
    pub fn values(&self, pointers: &[String]) -> Vec<f64> {
        self.records
            .iter()
            .filter(|r| r.status != CellStatus::Failed)
            .filter_map(|r| pointers.iter().find_map(|p| r.metric(p)))
            .collect()
    }

    pub fn failed(&self) -> usize {
        self.records.iter().filter(|r| r.status == CellStatus::Failed).count()
    }
}

/// Groups records by identity, in the order each identity first appears.
pub fn group(records: &[Record]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for r in records {
        let identity = Identity::of(&r.cell);
        let key = identity.key();
        match index.get(&key) {
            Some(i) => groups[*i].records.push(r),
            None => {
                index.insert(key.clone(), groups.len());
                groups.push(Group { identity, key, records: vec![r] });
            }
        }
    }
    for g in &mut groups {
        g.records.sort_by_key(|r| (r.cell.run_index, r.id));
    }
    groups
}

/// One metric summarized over a cell's repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct MetricSummary {
    pub name: String,
    pub unit: String,
    #[serde(flatten)]
    pub summary: Summary,
}

/// A cell's repetitions summarized: `kitt results show`.
#[derive(Debug, Clone, Serialize)]
pub struct Aggregate {
    pub label: String,
    pub identity: Identity,
    pub runs: usize,
    pub failed: usize,
    pub run_indexes: Vec<u32>,
    pub result_ids: Vec<i64>,
    pub metrics: Vec<MetricSummary>,
}

pub fn aggregate(group: &Group) -> Aggregate {
    let metrics = KEY_METRICS
        .iter()
        .filter_map(|k| {
            Summary::of(&group.values(&[k.pointer.to_string()])).map(|summary| MetricSummary {
                name: k.name.to_string(),
                unit: k.unit.to_string(),
                summary,
            })
        })
        .collect();
    Aggregate {
        label: group.identity.label(),
        identity: group.identity.clone(),
        runs: group.records.len(),
        failed: group.failed(),
        run_indexes: group.records.iter().map(|r| r.cell.run_index).collect(),
        result_ids: group.records.iter().filter_map(|r| r.id).collect(),
        metrics,
    }
}

/// One side of a comparison.
pub struct Side<'a> {
    /// How the user named it (`run 2026…`, `result 12`, `dir …`).
    pub label: String,
    pub records: &'a [Record],
    /// Per-item outcomes of its eval results (`Items::read`), for the paired accuracy tests.
    pub items: &'a Items,
}

#[derive(Debug, Clone, Serialize)]
pub struct SideInfo {
    pub label: String,
    pub runs: Vec<String>,
    pub results: usize,
}

/// A fact that can make numbers incomparable, with its values on each side.
#[derive(Debug, Clone, Serialize)]
pub struct FactRow {
    pub fact: String,
    pub a: Vec<String>,
    pub b: Vec<String>,
    pub differs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Significantly better (adjusted p < α).
    Better,
    /// Significantly worse.
    Worse,
    /// Significantly different, for a metric with no better direction (a count).
    Changed,
    /// The difference is within the noise of the repetitions.
    NotSignificant,
    /// Fewer than two runs on a side: no test is possible.
    NoVerdict,
    /// The metric is absent on a side.
    Missing,
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::Changed => "changed",
            Verdict::NotSignificant => "not significant",
            Verdict::NoVerdict => "no verdict (1 run)",
            Verdict::Missing => "missing",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricDelta {
    pub name: String,
    pub unit: String,
    pub better: Better,
    pub a: Option<Summary>,
    pub b: Option<Summary>,
    /// Mean of B − mean of A.
    pub delta: Option<f64>,
    /// `delta` in percent of A's mean (absent when A's mean is 0).
    pub delta_pct: Option<f64>,
    /// Welch's test, when it is the test used.
    pub welch: Option<Welch>,
    /// The proportion test, when it is the test used (accuracy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proportion: Option<ProportionTest>,
    /// The test behind the verdict, its raw p-value, and the p-value after Holm's adjustment
    /// over the compare's verdicts (what the verdict is decided on).
    pub test: Option<TestKind>,
    pub p: Option<f64>,
    pub p_adjusted: Option<f64>,
    pub verdict: Verdict,
}

/// A cell matched on both sides.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub label: String,
    pub identity: Identity,
    /// B's identity when it differs from A's (a pairing of the only cell on each side).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b_identity: Option<Identity>,
    pub runs: [usize; 2],
    pub failed: [usize; 2],
    pub metrics: Vec<MetricDelta>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Crossed and significant fails; crossed within the noise passes.
    Welch,
    /// Likewise, with McNemar's test on paired items (accuracy).
    Mcnemar,
    /// Likewise, with the Cochran–Mantel–Haenszel test over items (accuracy, repetitions).
    Cmh,
    /// Likewise, with the two-proportion z-test on counts (accuracy without item records).
    TwoProportion,
    /// Fewer than two runs on a side: the means decide alone.
    PointEstimate,
    /// B has no value where A has one: fails, as nothing shows the threshold holds.
    MissingInB,
    /// A has no value (or neither side has): not judged.
    NotJudged,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThresholdOutcome {
    pub threshold: String,
    pub cell: String,
    /// The change judged: percent or metric units, as the threshold is written.
    pub change: Option<f64>,
    pub crossed: bool,
    /// The test's raw p-value, and after Holm's adjustment over every cell × threshold.
    pub p: Option<f64>,
    pub p_adjusted: Option<f64>,
    pub basis: Basis,
    pub failed: bool,
}

impl Basis {
    fn of(test: TestKind) -> Basis {
        match test {
            TestKind::Welch => Basis::Welch,
            TestKind::Mcnemar => Basis::Mcnemar,
            TestKind::Cmh => Basis::Cmh,
            TestKind::TwoProportion => Basis::TwoProportion,
        }
    }

    /// The test, for a basis that is one.
    pub fn test(self) -> Option<TestKind> {
        match self {
            Basis::Welch => Some(TestKind::Welch),
            Basis::Mcnemar => Some(TestKind::Mcnemar),
            Basis::Cmh => Some(TestKind::Cmh),
            Basis::TwoProportion => Some(TestKind::TwoProportion),
            Basis::PointEstimate | Basis::MissingInB | Basis::NotJudged => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: SideInfo,
    pub b: SideInfo,
    pub alpha: f64,
    /// The multiple-comparison adjustment applied to verdicts and thresholds: `holm`.
    pub correction: &'static str,
    /// Tests in each family: verdicts (cells × metrics) and thresholds (cells × thresholds).
    pub family: Family,
    pub facts: Vec<FactRow>,
    pub pairs: Vec<Pair>,
    /// Cells on one side only.
    pub only_a: Vec<String>,
    pub only_b: Vec<String>,
    /// Whether some pair has fewer than two runs on a side (no verdicts there).
    pub single_run: bool,
    pub thresholds: Vec<ThresholdOutcome>,
    /// Whether some threshold failed.
    pub failed: bool,
}

/// The sizes of the two families of tests Holm's adjustment runs over.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Family {
    pub verdicts: usize,
    pub thresholds: usize,
}

/// Why two sides cannot be compared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompareError {
    #[error("{0} has no results")]
    Empty(String),
    #[error(
        "no cell is on both sides: A has {a}, B has {b}; cells match by model, engine instance, benchmark instance and params"
    )]
    NothingMatches { a: String, b: String },
    #[error("--fail-if `{threshold}`: no result on either side has metric `{metric}`; key metrics: {known}")]
    UnknownMetric { threshold: String, metric: String, known: String },
}

fn side_info(side: &Side) -> SideInfo {
    let runs: BTreeSet<&str> = side.records.iter().map(|r| r.run_id.as_str()).collect();
    SideInfo {
        label: side.label.clone(),
        runs: runs.into_iter().map(String::from).collect(),
        results: side.records.len(),
    }
}

/// Facts whose difference makes numbers incomparable, each with the values seen on each side.
fn facts(a: &[Record], b: &[Record]) -> Vec<FactRow> {
    type Values = BTreeSet<String>;
    let mut rows: Vec<(String, Values, Values)> = Vec::new();
    let mut add = |fact: String, side: usize, value: Option<&str>| {
        let Some(v) = value else { return };
        let i = match rows.iter().position(|(f, _, _)| *f == fact) {
            Some(i) => i,
            None => {
                rows.push((fact, Values::new(), Values::new()));
                rows.len() - 1
            }
        };
        let set = if side == 0 { &mut rows[i].1 } else { &mut rows[i].2 };
        set.insert(v.to_string());
    };
    for (side, records) in [a, b].into_iter().enumerate() {
        for r in records {
            add("machine".into(), side, r.fingerprint.as_deref());
            add("machine.hash".into(), side, r.fingerprint_hash.as_deref());
            add("kitt.version".into(), side, r.fact("kitt.version"));
            add("metrics.schema".into(), side, r.fact("metrics.schema"));
        }
    }
    for (side, records) in [a, b].into_iter().enumerate() {
        for r in records {
            for f in ["engine.version", "engine.image", "engine.image_digest", "engine.image_id"] {
                add(format!("{f} ({})", r.cell.engine), side, r.fact(f));
            }
        }
    }
    rows.into_iter()
        .map(|(fact, a, b)| FactRow { differs: a != b, fact, a: a.into_iter().collect(), b: b.into_iter().collect() })
        .collect()
}

/// The metrics to show for a pair: the key metrics, then those thresholds name.
fn shown_metrics(thresholds: &[Threshold]) -> Vec<(String, Vec<String>, String, Better)> {
    let mut out: Vec<(String, Vec<String>, String, Better)> = KEY_METRICS
        .iter()
        .map(|k| (k.name.to_string(), vec![k.pointer.to_string()], k.unit.to_string(), k.better))
        .collect();
    for t in thresholds {
        if !out.iter().any(|(n, ..)| *n == t.metric) {
            // A path kitt has no direction for is shown neutral: a change, never better or worse.
            let better = metric::direction(&t.metric).unwrap_or(Better::Neutral);
            out.push((t.metric.clone(), metric::pointers(&t.metric), String::new(), better));
        }
    }
    out
}

/// Compares B against A: pairs cells by identity, computes deltas and verdicts for the key
/// metrics and judges every threshold on every pair, then adjusts each family (`judge::adjust`).
///
/// When no identity is on both sides but each side has exactly one cell, those two are paired
/// (comparing two engines' runs of one benchmark), and B's identity is shown beside A's.
pub fn compare(a: &Side, b: &Side, thresholds: &[Threshold]) -> Result<Comparison, CompareError> {
    for side in [a, b] {
        if side.records.is_empty() {
            return Err(CompareError::Empty(side.label.clone()));
        }
    }
    let (ga, gb) = (group(a.records), group(b.records));
    let keys = |g: &[Group]| -> BTreeSet<String> { g.iter().map(|g| g.key.clone()).collect() };
    let (keys_a, keys_b) = (keys(&ga), keys(&gb));
    let by_key: BTreeMap<&str, &Group> = gb.iter().map(|g| (g.key.as_str(), g)).collect();
    let mut matched: Vec<(&Group, &Group)> =
        ga.iter().filter_map(|x| by_key.get(x.key.as_str()).map(|y| (x, *y))).collect();
    let forced = matched.is_empty() && ga.len() == 1 && gb.len() == 1;
    if forced {
        matched.push((&ga[0], &gb[0]));
    }
    if matched.is_empty() {
        let labels = |g: &[Group]| g.iter().map(|g| format!("`{}`", g.identity.label())).collect::<Vec<_>>().join(", ");
        return Err(CompareError::NothingMatches { a: labels(&ga), b: labels(&gb) });
    }
    let unmatched = |mine: &[Group], other: &BTreeSet<String>| -> Vec<String> {
        if forced {
            return Vec::new();
        }
        mine.iter().filter(|g| !other.contains(&g.key)).map(|g| g.identity.label()).collect()
    };
    let shown = shown_metrics(thresholds);
    for t in thresholds {
        let pointers = metric::pointers(&t.metric);
        let present = a.records.iter().chain(b.records).any(|r| pointers.iter().any(|p| r.metric(p).is_some()));
        if !present {
            return Err(CompareError::UnknownMetric {
                threshold: t.text.clone(),
                metric: t.metric.clone(),
                known: KEY_METRICS.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
            });
        }
    }
    let mut pairs = Vec::new();
    let mut outcomes = Vec::new();
    for (x, y) in &matched {
        let label = if forced && x.key != y.key {
            format!("{} vs {}", x.identity.label(), y.identity.label())
        } else {
            x.identity.label()
        };
        let accuracy_test = accuracy::test(x, y, [a.items, b.items]);
        let evidence = |name: &str, p: &[String]| Evidence::new(name, x.values(p), y.values(p), accuracy_test.as_ref());
        let metrics: Vec<MetricDelta> = shown
            .iter()
            .map(|(name, pointers, unit, better)| judge::delta(name, unit, *better, evidence(name, pointers)))
            .collect();
        for t in thresholds {
            outcomes.push(judge::judge(t, &label, &evidence(&t.metric, &metric::pointers(&t.metric))));
        }
        pairs.push(Pair {
            label,
            identity: x.identity.clone(),
            b_identity: (x.identity != y.identity).then(|| y.identity.clone()),
            runs: [x.records.len(), y.records.len()],
            failed: [x.failed(), y.failed()],
            metrics,
        });
    }
    judge::adjust(&mut pairs, &mut outcomes);
    let failed = outcomes.iter().any(|o| o.failed);
    let family = Family {
        verdicts: pairs.iter().flat_map(|p| &p.metrics).filter(|m| m.p.is_some()).count(),
        thresholds: outcomes.iter().filter(|o| o.p.is_some()).count(),
    };
    Ok(Comparison {
        a: side_info(a),
        b: side_info(b),
        alpha: stats::ALPHA,
        correction: "holm",
        family,
        facts: facts(a.records, b.records),
        single_run: pairs.iter().any(|p| p.runs.iter().any(|n| *n < 2) && p.metrics.iter().any(|m| m.test.is_none())),
        only_a: unmatched(&ga, &keys_b),
        only_b: unmatched(&gb, &keys_a),
        pairs,
        thresholds: outcomes,
        failed,
    })
}
