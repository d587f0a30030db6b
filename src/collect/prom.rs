//! Prometheus text exposition format: enough to scrape an engine's `/metrics` before and after a
//! measuring window and report what changed.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A scrape: every sample by its series (`name{labels}` exactly as exposed), and each metric
/// family's declared type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
    pub types: BTreeMap<String, String>,
}

/// Parses the text format. Comments other than `# TYPE`, blank lines and lines that are not
/// samples are skipped; timestamps after the value are ignored.
pub fn parse(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut f = rest.split_whitespace();
            if let (Some(name), Some(ty)) = (f.next(), f.next()) {
                s.types.insert(name.to_string(), ty.to_string());
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The series ends at the closing brace (label values may hold spaces) or the first space.
        let end = match line.find('{') {
            Some(open) if line[..open].find(' ').is_none() => match closing_brace(line, open) {
                Some(close) => close + 1,
                None => continue,
            },
            _ => match line.find(char::is_whitespace) {
                Some(e) => e,
                None => continue,
            },
        };
        let (series, rest) = line.split_at(end);
        let Some(value) = rest.split_whitespace().next().and_then(parse_value) else { continue };
        s.samples.insert(series.to_string(), value);
    }
    s
}

fn closing_brace(line: &str, open: usize) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(open + i),
            _ => {}
        }
    }
    None
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

/// The family a series belongs to, for its type: `vllm:x_bucket{le="1"}` → `vllm:x`.
fn family(series: &str) -> &str {
    let name = series.split('{').next().unwrap_or(series);
    for suffix in ["_bucket", "_count", "_sum", "_total", "_created"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return base;
        }
    }
    name
}

/// What changed between two scrapes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Delta {
    /// Counters (and histogram/summary counts and sums): after − before, for series that moved.
    /// A counter that went down was reset (the engine restarted): its after value is reported.
    pub counters: BTreeMap<String, f64>,
    /// Gauges at the end of the window, with their value before it.
    pub gauges: BTreeMap<String, [f64; 2]>,
}

/// The change over a window. Histogram buckets are left out (their `_count`/`_sum` stay).
pub fn delta(before: &Scrape, after: &Scrape) -> Delta {
    let mut d = Delta::default();
    for (series, &now) in &after.samples {
        if series.contains("_bucket{") || !now.is_finite() {
            continue;
        }
        let name = series.split('{').next().unwrap_or(series);
        let ty = after.types.get(family(series)).or_else(|| after.types.get(name)).map(String::as_str);
        let counter = match ty {
            Some("counter" | "histogram" | "summary") => true,
            Some(_) => false,
            None => name.ends_with("_total") || name.ends_with("_count") || name.ends_with("_sum"),
        };
        let was = before.samples.get(series).copied().unwrap_or(0.0);
        if counter {
            let change = if now >= was { now - was } else { now };
            if change != 0.0 {
                d.counters.insert(series.clone(), change);
            }
        } else {
            d.gauges.insert(series.clone(), [was, now]);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="m a"} 100.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m a"} 0.0
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="1.0",model_name="m a"} 3.0
vllm:e2e_request_latency_seconds_count{model_name="m a"} 3.0
vllm:e2e_request_latency_seconds_sum{model_name="m a"} 1.5
llamacpp:tokens_predicted_total 40 1700000000000
"#;

    #[test]
    fn parses_labels_with_spaces_types_and_timestamps() {
        let s = parse(BEFORE);
        assert_eq!(s.samples[r#"vllm:prompt_tokens_total{model_name="m a"}"#], 100.0);
        assert_eq!(s.samples["llamacpp:tokens_predicted_total"], 40.0);
        assert_eq!(s.types["vllm:e2e_request_latency_seconds"], "histogram");
        assert_eq!(s.samples.len(), 6);
    }

    #[test]
    fn deltas_of_counters_and_the_end_values_of_gauges() {
        let after = BEFORE
            .replace("} 100.0", "} 164.0")
            .replace("running{model_name=\"m a\"} 0.0", "running{model_name=\"m a\"} 2.0")
            .replace("_count{model_name=\"m a\"} 3.0", "_count{model_name=\"m a\"} 7.0")
            .replace("predicted_total 40", "predicted_total 12");
        let d = delta(&parse(BEFORE), &parse(&after));
        assert_eq!(d.counters[r#"vllm:prompt_tokens_total{model_name="m a"}"#], 64.0);
        assert_eq!(d.counters[r#"vllm:e2e_request_latency_seconds_count{model_name="m a"}"#], 4.0);
        assert!(!d.counters.keys().any(|k| k.contains("_bucket")));
        assert!(!d.counters.keys().any(|k| k.contains("_sum")), "an unchanged sum is not reported");
        assert_eq!(d.counters["llamacpp:tokens_predicted_total"], 12.0, "a reset counter reports its new value");
        assert_eq!(d.gauges[r#"vllm:num_requests_running{model_name="m a"}"#], [0.0, 2.0]);
    }
}
