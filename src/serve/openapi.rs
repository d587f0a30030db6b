//! The OpenAPI 3.1 document of `/api/v1`, generated from the route table (`routes::ROUTES`), the
//! same table the router is built from. `kitt serve openapi` prints it; docs/openapi.json is
//! that output, checked in, and a test fails when it is stale.

use serde_json::{Map, Value, json};

use super::routes::{Param, ROUTES};

fn param_schema(p: &Param) -> Value {
    if p.schema.starts_with('{') {
        // The table's schemas are literals; a test (the document's freshness) parses each.
        serde_json::from_str(p.schema).unwrap_or(Value::Null)
    } else {
        json!({"type": p.schema})
    }
}

/// Path parameters (`{id}`) of a route's path.
fn path_params(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect()
}

fn operation_id(method: &str, path: &str) -> String {
    let words: Vec<String> = path
        .trim_start_matches("/api/v1/")
        .split('/')
        .map(|s| s.trim_matches(|c| c == '{' || c == '}').replace(['.', '-'], "_"))
        .collect();
    format!("{method}_{}", words.join("_"))
}

/// The whole document.
pub fn document() -> Value {
    let problem = json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}});
    let mut paths: Map<String, Value> = Map::new();
    for r in ROUTES {
        let method = r.method.as_str().to_ascii_lowercase();
        let mut params: Vec<Value> = path_params(r.path)
            .into_iter()
            .map(|n| {
                let schema: Value = serde_json::from_str(super::routes::id_schema(r.path)).unwrap_or(Value::Null);
                json!({"name": n, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        params.extend(r.query.iter().map(|p| {
            json!({"name": p.name, "in": "query", "required": p.required, "description": p.doc, "schema": param_schema(p)})
        }));
        let mut responses = Map::new();
        let agent_route = r.path.starts_with("/api/v1/agent/");
        let ok_status = if r.writes
            && r.method == axum::http::Method::POST
            && !r.path.ends_with("cancel")
            && !r.path.ends_with("/drain")
            && !r.path.ends_with("/exec")
            && !agent_route
        {
            "201"
        } else {
            "200"
        };
        let ok_body = if r.path.ends_with("/install.sh") {
            json!({"text/x-shellscript": {"schema": {"type": "string"}}})
        } else if r.path.ends_with("/agent/build")
            || (r.path.ends_with("/spool") && r.method == axum::http::Method::GET)
        {
            json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}})
        } else if r.path.ends_with("/events") && !agent_route {
            json!({"text/event-stream": {"schema": {"type": "string"}}})
        } else if r.path.contains("/steps/") && !agent_route {
            json!({"text/plain": {"schema": {"type": "string"}}})
        } else {
            json!({"application/json": {"schema": {"type": "object"}}})
        };
        responses.insert(ok_status.into(), json!({"description": "Success.", "content": ok_body}));
        if r.path == "/api/v1/agent/claim" {
            responses.insert("204".into(), json!({"description": "No unit for this agent within the wait."}));
        }
        if r.path.starts_with("/api/v1/agent/steps/") {
            responses.insert("201".into(), json!({"description": "Committed.", "content": ok_body}));
        }
        responses.insert(
            "4XX".into(),
            json!({"description": "A bad request, a missing or weak token, or an unknown id.", "content": problem}),
        );
        responses.insert("5XX".into(), json!({"description": "A failure on the server.", "content": problem}));
        let mut op = json!({
            "operationId": operation_id(&method, r.path),
            "summary": r.summary,
            "parameters": params,
            "responses": responses,
            "x-kitt-scope": r.scope.map(|s| s.name()),
            "x-kitt-writes": r.writes,
        });
        op["security"] = match r.scope {
            Some(_) => json!([{"bearer": []}, {"cookie": []}]),
            None => json!([]),
        };
        if r.writes {
            op["description"] = "Refused with 403 when the server is read-only (`kitt serve --read-only`).".into();
        }
        if !r.body.is_empty() {
            let props: Map<String, Value> = r
                .body
                .iter()
                .map(|p| {
                    let mut schema = param_schema(p);
                    schema["description"] = p.doc.into();
                    (p.name.to_string(), schema)
                })
                .collect();
            let required: Vec<&str> = r.body.iter().filter(|p| p.required).map(|p| p.name).collect();
            let mut schema = json!({
                "type": "object", "properties": props, "required": required, "additionalProperties": false,
            });
            if r.path == "/api/v1/tokens" {
                // An agent token's name is its agent's.
                schema["if"] = json!({"properties": {"scope": {"const": "agent"}}, "required": ["scope"]});
                schema["then"] = json!({"properties": {"name": {"pattern": "^[a-z0-9-]{1,63}$"}}});
            }
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema}}});
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "kitt",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST API of `kitt serve` (docs/serve.md).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "A token from `kitt serve token create`."},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "kitt_token", "description": "Set by /login."},
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"}, "title": {"type": "string"},
                        "status": {"type": "integer"}, "detail": {"type": "string"},
                    },
                    "required": ["type", "title", "status", "detail"],
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_in_the_route_table_is_json_and_every_path_parameter_has_one() {
        for r in ROUTES {
            for p in r.query.iter().chain(r.body) {
                assert!(param_schema(p).is_object(), "{} {}: {}", r.path, p.name, p.schema);
            }
            assert!(serde_json::from_str::<Value>(super::super::routes::id_schema(r.path)).unwrap().is_object());
        }
        assert!(regex::Regex::new(super::super::routes::SINCE_PATTERN).is_ok());
        let doc = document();
        assert_eq!(
            doc["paths"].as_object().unwrap().values().map(|m| m.as_object().unwrap().len()).sum::<usize>(),
            ROUTES.len()
        );
    }
}
