//! Metric paths: the short names compare and `--fail-if` use (`ttft.p99`), and where each one
//! is in a result's metrics (docs/metrics.md).

use serde::Serialize;

/// Whether a larger value is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
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

/// Whether lower is better for a metric path outside the key metrics: latencies and errors.
pub fn better(path: &str) -> Better {
    if let Some(k) = KEY_METRICS.iter().find(|k| k.name == path) {
        return k.better;
    }
    let first = path.split('.').next().unwrap_or(path);
    if first.contains("throughput") || first.starts_with("goodput") || first == "ok" {
        Better::Higher
    } else {
        Better::Lower
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_find_their_fields() {
        assert_eq!(pointers("ttft.p99"), ["/ttft_ms/p99"]);
        assert_eq!(pointers("tpot.p90"), ["/tpot/p90", "/tpot_ms/p90"]);
        assert_eq!(pointers("tpot_ms.p90"), ["/tpot_ms/p90"]);
        assert_eq!(pointers("goodput.share"), ["/goodput/share", "/goodput_ms/share"]);
        assert_eq!(better("total_token_throughput"), Better::Higher);
        assert_eq!(better("ttfrt.p50"), Better::Lower);
    }
}
