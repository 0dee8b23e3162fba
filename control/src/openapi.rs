//! The machine-readable description of the JSON API (OpenAPI 3.1), served at
//! `/api/v1/openapi.json`. [`OPERATIONS`] is the one list of endpoints; a
//! test reads the router's source and fails when the two disagree.

use axum::Json;
use serde_json::{Value, json};

/// One endpoint: method, path under `/api/v1`, summary, request body and
/// success answer (schema names under `components.schemas`).
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub request: Option<&'static str>,
    pub status: u16,
    pub response: Option<&'static str>,
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    request: Option<&'static str>,
    status: u16,
    response: Option<&'static str>,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        request,
        status,
        response,
    }
}

pub const OPERATIONS: &[Operation] = &[
    op(
        "post",
        "/session",
        "Sign in with Bitbucket credentials; sets the session cookie",
        Some("Credentials"),
        200,
        Some("SessionUser"),
    ),
    op(
        "get",
        "/session",
        "Who is signed in",
        None,
        200,
        Some("SessionUser"),
    ),
    op("delete", "/session", "Sign out", None, 204, None),
    op("get", "/openapi.json", "This description", None, 200, None),
    op(
        "get",
        "/nodes",
        "Agents and whether they are connected",
        None,
        200,
        Some("NodeList"),
    ),
    op(
        "get",
        "/repositories",
        "Repositories the agents are configured with",
        None,
        200,
        Some("RepositoryList"),
    ),
    op(
        "get",
        "/repositories/{name}/branches",
        "Branches of a repository, listed live by its agent",
        None,
        200,
        Some("BranchList"),
    ),
    op(
        "get",
        "/environments",
        "Environments",
        None,
        200,
        Some("EnvironmentList"),
    ),
    op(
        "post",
        "/environments",
        "Create an environment",
        Some("EnvironmentBody"),
        201,
        Some("Environment"),
    ),
    op(
        "get",
        "/environments/{name}",
        "One environment (secrets by name only)",
        None,
        200,
        Some("Environment"),
    ),
    op(
        "put",
        "/environments/{name}",
        "Update an environment; secrets merge, null removes one",
        Some("EnvironmentBody"),
        200,
        Some("Environment"),
    ),
    op(
        "delete",
        "/environments/{name}",
        "Delete an environment no template or sandbox uses",
        None,
        204,
        None,
    ),
    op(
        "get",
        "/templates",
        "Sandbox templates",
        None,
        200,
        Some("TemplateList"),
    ),
    op(
        "post",
        "/templates",
        "Create a template",
        Some("TemplateBody"),
        201,
        Some("Template"),
    ),
    op(
        "get",
        "/templates/{name}",
        "One template",
        None,
        200,
        Some("Template"),
    ),
    op(
        "put",
        "/templates/{name}",
        "Update a template",
        Some("TemplateBody"),
        200,
        Some("Template"),
    ),
    op(
        "delete",
        "/templates/{name}",
        "Delete a template no sandbox uses",
        None,
        204,
        None,
    ),
    op(
        "post",
        "/templates/{name}/sandboxes",
        "Create a sandbox from the template",
        Some("SandboxBody"),
        201,
        Some("Sandbox"),
    ),
    op(
        "get",
        "/sandboxes",
        "Sandboxes",
        None,
        200,
        Some("SandboxList"),
    ),
    op(
        "post",
        "/sandboxes",
        "Create a sandbox; ports are allocated",
        Some("SandboxBody"),
        201,
        Some("Sandbox"),
    ),
    op(
        "get",
        "/sandboxes/{name}",
        "One sandbox",
        None,
        200,
        Some("Sandbox"),
    ),
    op(
        "put",
        "/sandboxes/{name}",
        "Update a sandbox",
        Some("SandboxBody"),
        200,
        Some("Sandbox"),
    ),
    op(
        "delete",
        "/sandboxes/{name}",
        "Remove the sandbox's containers, delete it, release its ports",
        None,
        200,
        Some("Deleted"),
    ),
    op(
        "post",
        "/sandboxes/{name}/clone",
        "Clone a sandbox with new ports",
        Some("NameBody"),
        201,
        Some("Sandbox"),
    ),
    op(
        "post",
        "/sandboxes/{name}/deploy",
        "Deploy the gateway and branch services, or those named",
        Some("DeployBody"),
        201,
        Some("DeploymentList"),
    ),
    op(
        "get",
        "/sandboxes/{name}/environment",
        "The layered environment: which value wins and from where",
        None,
        200,
        Some("ResolvedEnvironment"),
    ),
    op(
        "get",
        "/sandboxes/{name}/routes",
        "Route overrides, live from the gateway",
        None,
        200,
        Some("Routes"),
    ),
    op(
        "put",
        "/sandboxes/{name}/routes/{service}",
        "Route a service to the sandbox or to OCP",
        Some("RouteBody"),
        200,
        Some("Routes"),
    ),
    op(
        "get",
        "/deployments",
        "Deployment history; filters sandbox, repository, user, state, limit",
        None,
        200,
        Some("DeploymentList"),
    ),
    op(
        "post",
        "/deployments",
        "Deploy a branch of a service into a sandbox",
        Some("DeploymentBody"),
        201,
        Some("Deployment"),
    ),
    op(
        "get",
        "/deployments/{id}",
        "One deployment with its stages",
        None,
        200,
        Some("Deployment"),
    ),
    op(
        "delete",
        "/deployments/{id}",
        "Remove its container if running, delete it and its log",
        None,
        204,
        None,
    ),
    op(
        "get",
        "/deployments/{id}/logs",
        "The whole log so far (text/plain)",
        None,
        200,
        None,
    ),
    op(
        "post",
        "/deployments/{id}/restart",
        "Restart the deployment's container",
        None,
        200,
        Some("Deployment"),
    ),
    op(
        "post",
        "/deployments/{id}/stop",
        "Stop the deployment's container",
        None,
        200,
        Some("Deployment"),
    ),
    op(
        "get",
        "/ws/deployments/{id}",
        "WebSocket: the deployment, then its log lines, as JSON messages",
        None,
        101,
        None,
    ),
    op(
        "get",
        "/audit",
        "The audit trail; filters user, sandbox, repository, action, limit",
        None,
        200,
        Some("AuditList"),
    ),
];

fn string() -> Value {
    json!({"type": "string"})
}

fn map_of(v: Value) -> Value {
    json!({"type": "object", "additionalProperties": v})
}

fn list_of(name: &str) -> Value {
    json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}})
}

fn schemas() -> Value {
    let layer_props = json!({
        "variables": map_of(string()),
        "secrets": map_of(json!({"type": ["string", "null"]})),
        "files": map_of(string()),
    });
    let service_spec = json!({"oneOf": [
        {"type": "object", "required": ["branch"], "properties": {
            "branch": string(), "port": {"type": "integer"}, "route": {"enum": ["sandbox", "ocp"]}}},
        {"type": "object", "required": ["use_ocp"], "properties": {"use_ocp": {"const": true}}}
    ]});
    let mut body_props = layer_props.clone();
    body_props["name"] = string();
    let mut sandbox_body = body_props.clone();
    sandbox_body["template"] = json!({"type": ["string", "null"]});
    sandbox_body["environment"] = json!({"type": ["string", "null"]});
    sandbox_body["gateway"] = json!({"type": "object", "required": ["branch"], "properties": {"branch": string(), "port": {"type": "integer"}}});
    sandbox_body["services"] = map_of(service_spec);
    let mut template_body = sandbox_body.clone();
    template_body.as_object_mut().map(|o| o.remove("template"));
    let shown = json!({
        "variables": map_of(string()),
        "secrets": {"type": "array", "items": string(), "description": "names only: secrets are write-only"},
        "files": map_of(string()),
    });
    let with = |mut base: Value, extra: Value| {
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        json!({"type": "object", "properties": base})
    };
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": string()}},
        "Credentials": {"type": "object", "required": ["username", "password"],
            "properties": {"username": string(), "password": string()}},
        "SessionUser": {"type": "object", "properties": {"user": {"type": "object", "properties": {"username": string()}}}},
        "NodeList": {"type": "array", "items": {"type": "object", "properties": {
            "name": string(), "kind": string(), "connected": {"type": "boolean"}, "last_seen": string(),
            "address": string(), "version": string(), "repositories": {"type": "array", "items": string()}}}},
        "RepositoryList": {"type": "array", "items": {"type": "object", "properties": {
            "name": string(), "node": string(), "kind": {"enum": ["micro", "gateway", "infra"]}}}},
        "BranchList": {"type": "array", "items": {"type": "object", "properties": {
            "name": string(), "commit": string()}}},
        "EnvironmentBody": {"type": "object", "properties": body_props},
        "Environment": with(shown.clone(), json!({"name": string(), "created_at": string(), "updated_at": string()})),
        "EnvironmentList": list_of("Environment"),
        "TemplateBody": {"type": "object", "properties": template_body},
        "Template": with(shown.clone(), json!({"name": string(), "environment": {"type": ["string", "null"]},
            "gateway": {"type": "object"}, "services": map_of(json!({"type": "object"}))})),
        "TemplateList": list_of("Template"),
        "SandboxBody": {"type": "object", "properties": sandbox_body},
        "Sandbox": with(shown, json!({"name": string(), "template": {"type": ["string", "null"]},
            "environment": {"type": ["string", "null"]},
            "gateway": {"type": "object", "properties": {"branch": string(), "port": {"type": "integer"}}},
            "services": map_of(json!({"type": "object"})), "status": string(), "gateway_url": string(),
            "created_by": string()})),
        "SandboxList": list_of("Sandbox"),
        "Deleted": {"type": "object", "properties": {"deleted": string(), "warnings": {"type": "array", "items": string()}}},
        "NameBody": {"type": "object", "required": ["name"], "properties": {"name": string()}},
        "DeployBody": {"type": "object", "properties": {"services": {"type": "array", "items": string()}}},
        "ResolvedEnvironment": {"type": "object", "properties": {
            "environment": {"type": ["string", "null"]}, "template": {"type": ["string", "null"]},
            "variables": map_of(json!({"type": "object", "properties": {"value": string(), "from": string()}})),
            "secrets": map_of(json!({"type": "object", "properties": {"from": string()}})),
            "files": map_of(json!({"type": "object", "properties": {"content": string(), "from": string()}}))}},
        "Routes": map_of(json!({"type": "object", "properties": {
            "mode": {"enum": ["sandbox", "ocp"]}, "target": {"type": ["string", "null"]},
            "ocp_default": {"type": ["string", "null"]}, "wanted": {"enum": ["sandbox", "ocp"]},
            "live": {"type": "boolean"}}})),
        "RouteBody": {"type": "object", "required": ["mode"], "properties": {"mode": {"enum": ["sandbox", "ocp"]}}},
        "DeploymentBody": {"type": "object", "required": ["sandbox", "repository", "branch"], "properties": {
            "sandbox": string(), "repository": string(), "branch": string(),
            "environment": string(), "port": {"type": "integer"}}},
        "Deployment": {"type": "object", "properties": {
            "id": string(), "sandbox": string(), "repository": string(), "branch": string(),
            "node": string(), "user": string(),
            "state": {"enum": ["QUEUED", "RUNNING", "FAILED", "STOPPED"]}, "port": {"type": "integer"},
            "environment": {"type": ["string", "null"]},
            "stages": {"type": "array", "items": {"type": "object", "properties": {
                "name": string(), "status": {"enum": ["pending", "running", "completed", "failed"]},
                "started_at": {"type": ["string", "null"]}, "completed_at": {"type": ["string", "null"]}}}},
            "started_at": {"type": ["string", "null"]}, "completed_at": {"type": ["string", "null"]}}},
        "DeploymentList": list_of("Deployment"),
        "AuditList": {"type": "array", "items": {"type": "object", "properties": {
            "id": string(), "at": string(), "user": string(), "action": string(),
            "outcome": {"enum": ["ok", "error"]}, "error": string(),
            "sandbox": {"type": ["string", "null"]}, "repository": {"type": ["string", "null"]},
            "branch": {"type": ["string", "null"]}, "environment": {"type": ["string", "null"]},
            "deployment": {"type": ["string", "null"]}, "detail": string()}}},
    })
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|p| p.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for o in OPERATIONS {
        let mut responses = serde_json::Map::new();
        let ok = match o.response {
            Some(schema) => json!({"description": "success", "content": {"application/json":
                {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}),
            None => json!({"description": "success"}),
        };
        responses.insert(o.status.to_string(), ok);
        responses.insert(
            "4XX".into(),
            json!({"description": "bad input (the message names the field), unauthenticated, \
                not found, conflict or body too large",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
        let mut operation = json!({
            "summary": o.summary,
            "operationId": format!("{} {}", o.method, o.path),
            "parameters": path_params(o.path),
            "responses": responses,
        });
        if let Some(schema) = o.request {
            operation["requestBody"] = json!({"required": true, "content": {"application/json":
                {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        }
        let entry = paths.entry(o.path.to_owned()).or_insert_with(|| json!({}));
        entry[o.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "SDP, the Sandbox Deployment Platform", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/api/v1"}],
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"session": {"type": "apiKey", "in": "cookie", "name": crate::SESSION_COOKIE}},
        },
        "security": [{"session": []}],
        "paths": paths,
    })
}

/// `GET /api/v1/openapi.json`: public, so tools can read it before signing in.
pub async fn serve() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every `(method, path)` the router in `api.rs` registers, read from
    /// its source: each `.route("path", get(..).post(..))` call.
    fn router_routes() -> BTreeSet<(String, String)> {
        let src = include_str!("api.rs");
        let mut out = BTreeSet::new();
        for chunk in src.split(".route(").skip(1) {
            let chunk = chunk.split(".fallback(").next().unwrap_or(chunk);
            let path = chunk.split('"').nth(1).unwrap().to_owned();
            for method in ["get", "post", "put", "delete", "patch"] {
                let call = format!("{method}(");
                let found = chunk.match_indices(&call).any(|(i, _)| {
                    i == 0
                        || !chunk.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && chunk.as_bytes()[i - 1] != b'_'
                            && chunk.as_bytes()[i - 1] != b':'
                });
                if found {
                    out.insert((method.to_owned(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_description_lists_exactly_the_routes_of_the_router() {
        let routed = router_routes();
        assert!(routed.len() > 20, "{routed:?}");
        let described: BTreeSet<(String, String)> = OPERATIONS
            .iter()
            .map(|o| (o.method.to_owned(), o.path.to_owned()))
            .collect();
        let missing: Vec<_> = routed.difference(&described).collect();
        let stale: Vec<_> = described.difference(&routed).collect();
        assert!(missing.is_empty(), "routed but not described: {missing:?}");
        assert!(stale.is_empty(), "described but not routed: {stale:?}");
    }

    #[test]
    fn every_schema_referenced_is_defined() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            assert!(schemas.contains_key(&name), "{name} is not defined");
        }
        assert_eq!(
            doc["paths"]["/sandboxes/{name}/routes/{service}"]["put"]["parameters"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}
