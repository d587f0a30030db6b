//! Metric paths: the short names compare and `--fail-if` use (`ttft.p99`), where each one is in
//! a result's metrics (docs/metrics.md), and which way each improves.
//!
//! Directions are an explicit table, not a guess from the name: a metric kitt does not list
//! has no direction, and a test walks every numeric field of real results (load and eval) so
//! that a new metric cannot arrive without one.

use serde::Serialize;

/// Which way a metric improves. Every metric a result has is one of these (a test walks real
/// results and fails on a metric without one): a verdict says `better` or `worse` only for a
/// directed metric; a neutral one (a count, a configured value) can only have `changed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
    /// Informational: requests sent, token counts, configured rates, durations of a fixed load.
    Neutral,
}

/// A metric compare reports by default.
#[derive(Debug, Clone, Copy)]
pub struct KeyMetric {
    /// The name shown and accepted by `--fail-if`.
    pub name: &'static str,
    /// JSON pointer into a result's `metrics`.
    pub pointer: &'static str,
    pub unit: &'static str,
    pub better: Better,
}

/// The key metrics, in the order compare shows them.
pub const KEY_METRICS: &[KeyMetric] = &[
    KeyMetric { name: "ttft.p50", pointer: "/ttft_ms/p50", unit: "ms", better: Better::Lower },
    KeyMetric { name: "ttft.p99", pointer: "/ttft_ms/p99", unit: "ms", better: Better::Lower },
    KeyMetric { name: "itl.p50", pointer: "/itl_ms/p50", unit: "ms", better: Better::Lower },
    KeyMetric { name: "tpot.p50", pointer: "/tpot_ms/p50", unit: "ms", better: Better::Lower },
    KeyMetric { name: "e2e.p50", pointer: "/e2e_ms/p50", unit: "ms", better: Better::Lower },
    KeyMetric { name: "e2e.p99", pointer: "/e2e_ms/p99", unit: "ms", better: Better::Lower },
    KeyMetric { name: "request_throughput", pointer: "/request_throughput", unit: "req/s", better: Better::Higher },
    KeyMetric {
        name: "output_token_throughput",
        pointer: "/output_token_throughput",
        unit: "tok/s",
        better: Better::Higher,
    },
    KeyMetric { name: "error_rate", pointer: "/error_rate", unit: "", better: Better::Lower },
    KeyMetric { name: "accuracy", pointer: "/accuracy", unit: "", better: Better::Higher },
];

/// Where a metric path points: a key metric by name, else each dotted segment is a field (a
/// distribution's name may leave out its `_ms`: `tpot.p90` is `/tpot_ms/p90`).
///
/// Returns the candidate pointers, most specific first; the first one present in a result wins.
pub fn pointers(path: &str) -> Vec<String> {
    if let Some(k) = KEY_METRICS.iter().find(|k| k.name == path) {
        return vec![k.pointer.to_string()];
    }
    let parts: Vec<&str> = path.split('.').collect();
    let plain = format!("/{}", parts.join("/"));
    let mut out = vec![plain];
    if let Some((first, rest)) = parts.split_first()
        && !first.ends_with("_ms")
    {
        let mut p = format!("/{first}_ms");
        for r in rest {
            p.push('/');
            p.push_str(r);
        }
        out.push(p);
    }
    out
}

/// Which way the metric at a dotted path improves (a key metric's name, or a path into a
/// result's metrics, `_ms` optional on a distribution); `None` for a path kitt does not know,
/// which compare shows as neutral.
pub fn direction(path: &str) -> Option<Better> {
    if let Some(k) = KEY_METRICS.iter().find(|k| k.name == path) {
        return Some(k.better);
    }
    let segments: Vec<&str> = path.split('.').collect();
    field(&segments)
}

/// Latency-like distributions: every statistic but `count` is better lower.
const LATENCIES: &[&str] = &[
    "ttft",
    "ttft_first_event",
    "ttfrt",
    "itl",
    "itl_token",
    "tpot",
    "e2e",
    "ttft_minus_server_prompt",
    "schedule_lag",
    "client_queue",
];

/// The statistics of a distribution (docs/metrics.md).
const STATISTICS: &[&str] = &["mean", "min", "max", "stddev", "p50", "p90", "p95", "p99", "p99_9"];

fn is_latency(name: &str) -> bool {
    LATENCIES.contains(&name.strip_suffix("_ms").unwrap_or(name))
}

fn field(s: &[&str]) -> Option<Better> {
    use Better::{Higher, Lower, Neutral};
    Some(match s {
        // A sweep's stages carry the metrics of each stage, and what the stage was.
        ["stages", _, "metrics", rest @ ..] => return field(rest),
        ["stages", _, "profile" | "stage", ..] => Neutral,
        ["eval", rest @ ..] => return eval(rest),
        ["arrivals", "delivered_rate"] => Higher,
        ["arrivals", "offered_rate" | "scheduled"] => Neutral,
        ["arrivals", rest @ ..] => return field(rest),
        ["goodput", "rate" | "requests" | "share"] => Higher,
        ["goodput", "slo", ..] => Neutral,
        ["errors_by_kind", _] => Lower,
        ["cold_vs_warm", "cold_requests" | "e2e_reduction_pct"] => Neutral,
        ["cold_vs_warm", "cold_e2e_ms" | "warm_e2e_ms" | "cold_ttft_ms" | "warm_ttft_ms" | "stable_from"] => Lower,
        [dist, "count"] if is_latency(dist) => Neutral,
        [dist, stat] if is_latency(dist) && STATISTICS.contains(stat) => Lower,
        ["input_tokens" | "output_tokens", _] => Neutral,
        [name] => scalar(name)?,
        _ => return None,
    })
}

fn scalar(name: &str) -> Option<Better> {
    use Better::{Higher, Lower, Neutral};
    Some(match name {
        "request_throughput" | "output_token_throughput" | "total_token_throughput" | "prefill_throughput" => Higher,
        "ok" | "accuracy" | "macro_accuracy" => Higher,
        "errors" | "error_rate" | "error_share" | "unparseable_share" | "stopped_early" => Lower,
        "requests" | "answered" | "duration_s" | "warmup_requests" | "connection_retries" => Neutral,
        _ => return None,
    })
}

/// The eval score (`metrics.eval`, docs/evals.md).
fn eval(s: &[&str]) -> Option<Better> {
    use Better::{Higher, Lower, Neutral};
    Some(match s {
        ["stderr" | "fingerprint"] => Neutral,
        ["counts", "correct"] => Higher,
        ["counts", "incorrect" | "unparseable" | "errors"] => Lower,
        ["counts", "total" | "scored" | "skipped" | "answered"] => Neutral,
        ["groups", _, "accuracy" | "correct"] => Higher,
        ["groups", _, "unparseable" | "errors" | "error_share" | "unparseable_share"] => Lower,
        ["groups", _, "scored" | "stderr" | "answered"] => Neutral,
        // What was evaluated and how: dataset sizes, the context policy, skipped items.
        ["dataset" | "context" | "skipped" | "extract" | "compare", ..] => Neutral,
        [name] => scalar(name)?,
        _ => return None,
    })
}

/// The dotted path of every number in a result's metrics (array elements by index), in order.
pub fn numeric_fields(metrics: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Number(_) => out.push(path.join(".")),
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    path.push(k.clone());
                    walk(v, path, out);
                    path.pop();
                }
            }
            serde_json::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    path.push(i.to_string());
                    walk(v, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(metrics, &mut Vec::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_of_a_real_load_result_has_a_direction() {
        // A real run of the quickstart and sweep examples: every profile, arrivals, goodput.
        let report: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/golden/result.json")).expect("the golden result parses");
        let mut seen = 0;
        for cell in report["cells"].as_array().expect("cells") {
            for path in numeric_fields(&cell["metrics"]) {
                assert!(direction(&path).is_some(), "`{path}` has no direction: add it to compare/metric.rs");
                seen += 1;
            }
        }
        assert!(seen > 500, "walked {seen} numbers");
        assert_eq!(direction("stages.1.metrics.arrivals.delivered_rate"), Some(Better::Higher));
        assert_eq!(direction("arrivals.schedule_lag_ms.p99"), Some(Better::Lower));
        assert_eq!(direction("arrivals.offered_rate"), Some(Better::Neutral));
        assert_eq!(direction("output_tokens.total"), Some(Better::Neutral));
        assert_eq!(direction("ttft_ms.count"), Some(Better::Neutral));
        assert_eq!(direction("no_such_metric"), None);
    }

    #[test]
    fn accuracy_and_errors_point_the_right_way() {
        assert_eq!(direction("accuracy"), Some(Better::Higher));
        assert_eq!(direction("eval.accuracy"), Some(Better::Higher));
        assert_eq!(direction("eval.macro_accuracy"), Some(Better::Higher));
        assert_eq!(direction("eval.groups.anatomy.accuracy"), Some(Better::Higher));
        for lower in ["error_share", "eval.error_share", "errors", "eval.counts.errors", "eval.unparseable_share"] {
            assert_eq!(direction(lower), Some(Better::Lower), "{lower}");
        }
        assert_eq!(direction("eval.counts.scored"), Some(Better::Neutral));
    }

    #[test]
    fn short_names_find_their_fields() {
        assert_eq!(pointers("ttft.p99"), ["/ttft_ms/p99"]);
        assert_eq!(pointers("tpot.p90"), ["/tpot/p90", "/tpot_ms/p90"]);
        assert_eq!(pointers("tpot_ms.p90"), ["/tpot_ms/p90"]);
        assert_eq!(pointers("goodput.share"), ["/goodput/share", "/goodput_ms/share"]);
        assert_eq!(direction("total_token_throughput"), Some(Better::Higher));
        assert_eq!(direction("ttfrt.p50"), Some(Better::Lower));
        assert_eq!(direction("tpot.p90"), Some(Better::Lower));
    }
}
