//! Writing manifests back as YAML (`kitt run --print-suite`), in block style a person would
//! write, so a suite built from flags can be committed as it is.

use serde_json::Value as Json;

/// Block-style YAML for a JSON value (a mapping at the top).
pub fn to_yaml(value: &Json) -> String {
    let mut out = String::new();
    block(value, 0, &mut out);
    out
}

fn scalar(v: &Json) -> String {
    match v {
        Json::String(s) => {
            let plain = !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./+".contains(c))
                && !s.starts_with(['-', '.', '+'])
                && crate::manifest::yaml::parse(s).ok().is_some_and(|n| n.to_json() == *v);
            if plain { s.clone() } else { Json::String(s.clone()).to_string() }
        }
        Json::Array(a) if a.is_empty() => "[]".into(),
        Json::Object(o) if o.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

fn inline(v: &Json) -> bool {
    match v {
        Json::Array(a) => a.is_empty() || a.iter().all(|x| !x.is_array() && !x.is_object()),
        Json::Object(o) => o.is_empty(),
        _ => true,
    }
}

fn flow(v: &Json) -> String {
    match v {
        Json::Array(a) => format!("[{}]", a.iter().map(scalar).collect::<Vec<_>>().join(", ")),
        other => scalar(other),
    }
}

fn block(v: &Json, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Json::Object(map) => {
            for (k, val) in map {
                if inline(val) {
                    out.push_str(&format!("{pad}{}: {}\n", scalar(&Json::String(k.clone())), flow(val)));
                } else {
                    out.push_str(&format!("{pad}{}:\n", scalar(&Json::String(k.clone()))));
                    block(val, indent + 2, out);
                }
            }
        }
        Json::Array(items) => {
            for item in items {
                if inline(item) {
                    out.push_str(&format!("{pad}- {}\n", flow(item)));
                } else {
                    let mut inner = String::new();
                    block(item, indent + 2, &mut inner);
                    // The first line of the item goes after the dash.
                    let trimmed = inner.trim_start_matches(' ');
                    out.push_str(&format!("{pad}- {trimmed}"));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_parser() {
        let v = serde_json::json!({
            "apiVersion": "kitt/v1",
            "spec": {"models": [{"name": "tiny", "path": "./m x.gguf"}], "runs": 2, "flag": "true", "empty": "",
                     "engines": [{"name": "e", "params": {"concurrency": [1, 4]}}], "n": "12"}
        });
        let text = to_yaml(&v);
        let back = crate::manifest::yaml::parse(&text).unwrap().to_json();
        assert_eq!(back, v, "{text}");
    }
}
