//! The OpenAPI 3.1 document of `/api/v1`, generated from the route table (`api::ROUTES`), the
//! same table the router is built from. `kitt serve openapi` prints it; docs/openapi.json is
//! that output, checked in, and a test fails when it is stale.

use serde_json::{Map, Value, json};

use super::api::{Param, ROUTES};

fn param_schema(p: &Param) -> Value {
    json!({"type": p.kind})
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
            .map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(r.query.iter().map(|p| {
            json!({"name": p.name, "in": "query", "required": false, "description": p.doc, "schema": param_schema(p)})
        }));
        let mut responses = Map::new();
        let ok_status =
            if r.writes && r.method == axum::http::Method::POST && !r.path.ends_with("cancel") { "201" } else { "200" };
        let ok_body = if r.path.ends_with("/events") {
            json!({"text/event-stream": {"schema": {"type": "string"}}})
        } else {
            json!({"application/json": {"schema": {"type": "object"}}})
        };
        responses.insert(ok_status.into(), json!({"description": "Success.", "content": ok_body}));
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
            let props: Map<String, Value> =
                r.body.iter().map(|p| (p.name.to_string(), json!({"type": p.kind, "description": p.doc}))).collect();
            let required: Vec<&str> = r.body.iter().filter(|p| p.kind != "boolean").map(|p| p.name).collect();
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {
                "type": "object", "properties": props, "required": required, "additionalProperties": false,
            }}}});
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
