//! Templates and sandboxes: CRUD, a sandbox from a template, clones with new
//! ports, deploying a sandbox, and deleting one through the agents.
//!
//! A template holds branches and overrides only; a sandbox made from it
//! copies the branches (it gets its own ports and may diverge) and keeps a
//! reference for the environment layering (environment → template →
//! sandbox).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use sdp_contract::{BranchName, DeploymentState, SandboxName, ServiceName};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use crate::ControlPlane;
use crate::api::ApiJson;
use crate::audit::AuditEntry;
use crate::changes::Topic;
use crate::environments::{LayerBody, check_slug, clip};
use crate::error::ApiError;
use crate::model::{Deployment, DeploymentFilter};
use crate::sessions::{CurrentSession, Session};
use crate::storage::{
    RouteMode, SandboxRecord, SandboxSpec, ServiceSource, ServiceSpec, TemplateRecord,
};

/// Tells a field left out (`None`) from one set to `null` (`Some(None)`).
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Deserialize)]
pub struct GatewayBody {
    pub branch: String,
    #[serde(default)]
    pub port: Option<u16>,
}

/// Body of `POST|PUT /templates[/{name}]`. Fields left out of a PUT keep
/// their stored value.
#[derive(Debug, Clone, Deserialize)]
pub struct TemplateBody {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub environment: Option<Option<String>>,
    #[serde(default)]
    pub gateway: Option<GatewayBody>,
    #[serde(default)]
    pub services: Option<BTreeMap<String, Value>>,
    #[serde(flatten)]
    pub layer: LayerBody,
}

/// Body of `POST|PUT /sandboxes[/{name}]`, `POST /templates/{name}/sandboxes`
/// and `POST /sandboxes/{name}/clone`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SandboxBody {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub template: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub environment: Option<Option<String>>,
    #[serde(default)]
    pub gateway: Option<GatewayBody>,
    #[serde(default)]
    pub services: Option<BTreeMap<String, Value>>,
    #[serde(flatten)]
    pub layer: LayerBody,
}

/// Body of `POST /sandboxes/{name}/deploy`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeployBody {
    #[serde(default)]
    pub services: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateView {
    pub name: String,
    pub environment: Option<String>,
    pub gateway: Value,
    pub services: BTreeMap<String, Value>,
    pub variables: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub files: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SandboxView {
    pub name: String,
    pub template: Option<String>,
    /// The environment the sandbox's deployments get: its own, or else its
    /// template's (which it follows until it names one).
    pub environment: Option<String>,
    /// Where `environment` comes from, in the layered view's words:
    /// `sandbox {name}` or `template {name}`.
    pub environment_from: Option<String>,
    pub gateway: Value,
    pub services: BTreeMap<String, Value>,
    /// `created` (never deployed), `deploying`, `running`, `failed` or
    /// `stopped`, from the latest deployment of each service.
    pub status: String,
    pub gateway_url: String,
    pub variables: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub files: BTreeMap<String, String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) fn sandbox_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("sandbox {:?} not found", clip(name)))
}

fn template_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("template {:?} not found", clip(name)))
}

fn bad(e: sdp_contract::NameError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

fn parse_branch(field: &str, branch: &str) -> Result<String, ApiError> {
    BranchName::parse(branch)
        .map(|b| b.as_str().to_owned())
        .map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
}

/// `{svc: {branch, port?} | {use_ocp: true}}`, each entry checked.
fn parse_services(
    services: &BTreeMap<String, Value>,
    ports_allowed: bool,
) -> Result<BTreeMap<String, ServiceSpec>, ApiError> {
    let mut out = BTreeMap::new();
    for (name, value) in services {
        ServiceName::parse(name).map_err(|e| ApiError::bad_request(format!("services: {e}")))?;
        let field = format!("services.{name}");
        let shape = || {
            ApiError::bad_request(format!(
                "{field}: expected {{\"branch\": \"...\"{}}} or {{\"use_ocp\": true}}",
                if ports_allowed { ", \"port\": n" } else { "" }
            ))
        };
        let obj = value.as_object().ok_or_else(shape)?;
        let allowed = if ports_allowed {
            &["branch", "port", "use_ocp", "route"][..]
        } else {
            &["branch", "use_ocp"][..]
        };
        if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad_request(format!(
                "{field}.{}: unknown field",
                clip(k)
            )));
        }
        let use_ocp = match obj.get("use_ocp") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "{field}.use_ocp: expected true or false"
                )));
            }
        };
        let branch = match obj.get("branch") {
            None | Some(Value::Null) => None,
            Some(Value::String(b)) => Some(parse_branch(&format!("{field}.branch"), b)?),
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "{field}.branch: expected a string"
                )));
            }
        };
        let port = match obj.get("port") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "{field}.port: expected a port from 1 to 65535"
                        ))
                    })?,
            ),
        };
        let route = match obj.get("route") {
            None | Some(Value::Null) => None,
            Some(Value::String(r)) => Some(RouteMode::parse(r).ok_or_else(|| {
                ApiError::bad_request(format!("{field}.route: expected \"sandbox\" or \"ocp\""))
            })?),
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "{field}.route: expected \"sandbox\" or \"ocp\""
                )));
            }
        };
        let source = match (use_ocp, branch) {
            (true, None) => ServiceSource::Ocp,
            (false, Some(b)) => ServiceSource::Branch(b),
            (true, Some(_)) => {
                return Err(ApiError::bad_request(format!(
                    "{field}: give either branch or use_ocp, not both"
                )));
            }
            (false, None) => return Err(shape()),
        };
        if source == ServiceSource::Ocp && port.is_some() {
            return Err(ApiError::bad_request(format!(
                "{field}.port: a service served by OCP has no port"
            )));
        }
        out.insert(
            name.clone(),
            ServiceSpec {
                source,
                port,
                route,
            },
        );
    }
    Ok(out)
}

fn service_value(source: &ServiceSource) -> Value {
    match source {
        ServiceSource::Branch(b) => json!({ "branch": b }),
        ServiceSource::Ocp => json!({ "use_ocp": true }),
    }
}

impl From<TemplateRecord> for TemplateView {
    fn from(t: TemplateRecord) -> Self {
        TemplateView {
            name: t.name,
            environment: t.environment,
            gateway: json!({ "branch": t.gateway_branch }),
            services: t
                .services
                .iter()
                .map(|(k, s)| (k.clone(), service_value(s)))
                .collect(),
            variables: t.layer.variables,
            secrets: t.layer.secrets.into_keys().collect(),
            files: t.layer.files,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// The status a sandbox shows, from the latest deployment of each service.
fn status_of(latest: &[&Deployment]) -> &'static str {
    if latest.is_empty() {
        "created"
    } else if latest.iter().any(|d| d.state == DeploymentState::Queued) {
        "deploying"
    } else if latest.iter().any(|d| d.state == DeploymentState::Failed) {
        "failed"
    } else if latest.iter().all(|d| d.state == DeploymentState::Running) {
        "running"
    } else {
        "stopped"
    }
}

impl ControlPlane {
    // ------------------------------------------------------------ templates

    pub async fn templates(&self) -> Result<Vec<TemplateView>, ApiError> {
        let list = self.store().templates().await?;
        Ok(list.into_iter().map(TemplateView::from).collect())
    }

    pub async fn template(&self, name: &str) -> Result<TemplateView, ApiError> {
        self.store()
            .template(name)
            .await?
            .map(TemplateView::from)
            .ok_or_else(|| template_not_found(name))
    }

    pub async fn create_template(&self, body: &TemplateBody) -> Result<TemplateView, ApiError> {
        let name = body
            .name
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("name is required"))?;
        check_slug("template name", name)?;
        let gateway = body
            .gateway
            .as_ref()
            .ok_or_else(|| ApiError::bad_request("gateway is required: {\"branch\": \"...\"}"))?;
        let record = self.template_record(name, body, None, gateway)?;
        self.store().create_template(&record).await?;
        Ok(record.into())
    }

    fn template_record(
        &self,
        name: &str,
        body: &TemplateBody,
        current: Option<&TemplateRecord>,
        gateway: &GatewayBody,
    ) -> Result<TemplateRecord, ApiError> {
        if gateway.port.is_some() {
            return Err(ApiError::bad_request(
                "gateway.port: templates hold no ports; each sandbox gets its own",
            ));
        }
        let gateway_branch = parse_branch("gateway.branch", &gateway.branch)?;
        let services = match (&body.services, current) {
            (Some(s), _) => parse_services(s, false)?
                .into_iter()
                .map(|(k, s)| (k, s.source))
                .collect(),
            (None, Some(c)) => c.services.clone(),
            (None, None) => BTreeMap::new(),
        };
        let environment = match (&body.environment, current) {
            (Some(e), _) => e.clone(),
            (None, Some(c)) => c.environment.clone(),
            (None, None) => None,
        };
        if let Some(e) = &environment {
            check_slug("environment", e)?;
        }
        let base = current.map(|c| c.layer.clone()).unwrap_or_default();
        let layer = body.layer.apply(&base, &self.inner.secret_key)?;
        let now = Utc::now();
        Ok(TemplateRecord {
            name: name.to_owned(),
            environment,
            gateway_branch,
            services,
            layer,
            created_at: current.map_or(now, |c| c.created_at),
            updated_at: now,
        })
    }

    pub async fn update_template(
        &self,
        name: &str,
        body: &TemplateBody,
    ) -> Result<TemplateView, ApiError> {
        same_name("template", name, body.name.as_deref())?;
        let current = self
            .store()
            .template(name)
            .await?
            .ok_or_else(|| template_not_found(name))?;
        let gateway = body.gateway.clone().unwrap_or(GatewayBody {
            branch: current.gateway_branch.clone(),
            port: None,
        });
        let record = self.template_record(name, body, Some(&current), &gateway)?;
        self.store().update_template(&record).await?;
        self.clear_masks();
        Ok(record.into())
    }

    pub async fn delete_template(&self, name: &str) -> Result<(), ApiError> {
        Ok(self.store().delete_template(name).await?)
    }

    // ------------------------------------------------------------ sandboxes

    pub async fn sandboxes(&self) -> Result<Vec<SandboxView>, ApiError> {
        let mut out = Vec::new();
        for s in self.store().sandboxes().await? {
            out.push(self.sandbox_view(s).await?);
        }
        Ok(out)
    }

    pub async fn sandbox(&self, name: &str) -> Result<SandboxView, ApiError> {
        let record = self.sandbox_record(name).await?;
        self.sandbox_view(record).await
    }

    pub(crate) async fn sandbox_record(&self, name: &str) -> Result<SandboxRecord, ApiError> {
        self.store()
            .sandbox(name)
            .await?
            .ok_or_else(|| sandbox_not_found(name))
    }

    /// `http://{gateway node's address}:{port}`: what QA points the app at.
    pub(crate) fn node_address(&self, node: &str) -> String {
        self.nodes()
            .into_iter()
            .find(|n| n.name == node)
            .map(|n| n.address)
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| node.to_owned())
    }

    async fn sandbox_view(&self, s: SandboxRecord) -> Result<SandboxView, ApiError> {
        let (environment, environment_from) = match (&s.environment, &s.template) {
            (Some(e), _) => (Some(e.clone()), Some(format!("sandbox {}", s.name))),
            (None, Some(t)) => match self.store().template(t).await?.and_then(|t| t.environment) {
                Some(e) => (Some(e), Some(format!("template {t}"))),
                None => (None, None),
            },
            (None, None) => (None, None),
        };
        let history = self
            .deployments(&DeploymentFilter {
                sandbox: Some(s.name.clone()),
                limit: 1000,
                ..DeploymentFilter::default()
            })
            .await?;
        // Newest first: the first seen per repository is the latest.
        let mut latest: BTreeMap<&str, &Deployment> = BTreeMap::new();
        // A sandbox deleted and made again under the same name starts afresh.
        for d in history.iter().filter(|d| d.created_at >= s.created_at) {
            latest.entry(d.repository.as_str()).or_insert(d);
        }
        let latest: Vec<&Deployment> = latest.into_values().collect();
        let address = self.node_address(&self.inner.config.gateway_node);
        Ok(SandboxView {
            status: status_of(&latest).to_owned(),
            gateway_url: format!("http://{address}:{}", s.gateway_port),
            gateway: json!({ "branch": s.gateway_branch, "port": s.gateway_port }),
            services: s
                .services
                .iter()
                .map(|(k, svc)| {
                    let mut v = service_value(&svc.source);
                    if let Some(p) = svc.port {
                        v["port"] = json!(p);
                    }
                    v["route"] = json!(svc.route);
                    (k.clone(), v)
                })
                .collect(),
            name: s.name,
            template: s.template,
            environment,
            environment_from,
            variables: s.layer.variables,
            secrets: s.layer.secrets.into_keys().collect(),
            files: s.layer.files,
            created_by: s.created_by,
            created_at: s.created_at,
            updated_at: s.updated_at,
        })
    }

    /// A full spec from a body; `current` fills what the body leaves out.
    async fn sandbox_spec(
        &self,
        name: &str,
        body: &SandboxBody,
        current: Option<&SandboxRecord>,
        user: &str,
    ) -> Result<SandboxSpec, ApiError> {
        let template_name = match (&body.template, current) {
            (Some(t), _) => t.clone(),
            (None, Some(c)) => c.template.clone(),
            (None, None) => None,
        };
        let template = match &template_name {
            Some(t) => {
                check_slug("template", t)?;
                Some(
                    self.store()
                        .template(t)
                        .await?
                        .ok_or_else(|| template_not_found(t))?,
                )
            }
            None => None,
        };
        let environment = match (&body.environment, current) {
            (Some(e), _) => e.clone(),
            (None, Some(c)) => c.environment.clone(),
            (None, None) => None,
        };
        if let Some(e) = &environment {
            check_slug("environment", e)?;
        }
        let (gateway_branch, gateway_port) = match (&body.gateway, current, &template) {
            (Some(g), _, _) => (parse_branch("gateway.branch", &g.branch)?, g.port),
            (None, Some(c), _) => (c.gateway_branch.clone(), None),
            (None, None, Some(t)) => (t.gateway_branch.clone(), None),
            (None, None, None) => {
                return Err(ApiError::bad_request(
                    "gateway is required: {\"branch\": \"...\"} (or name a template)",
                ));
            }
        };
        let services = match (&body.services, current, &template) {
            (Some(s), _, _) => parse_services(s, true)?,
            (None, Some(c), _) => c
                .services
                .iter()
                .map(|(k, s)| {
                    let spec = ServiceSpec {
                        source: s.source.clone(),
                        port: None,
                        route: Some(s.route),
                    };
                    (k.clone(), spec)
                })
                .collect(),
            (None, None, Some(t)) => t
                .services
                .iter()
                .map(|(k, s)| {
                    let spec = ServiceSpec {
                        source: s.clone(),
                        port: None,
                        route: None,
                    };
                    (k.clone(), spec)
                })
                .collect(),
            (None, None, None) => BTreeMap::new(),
        };
        let base = current.map(|c| c.layer.clone()).unwrap_or_default();
        let layer = body.layer.apply(&base, &self.inner.secret_key)?;
        Ok(SandboxSpec {
            name: name.to_owned(),
            template: template_name,
            environment,
            gateway_branch,
            gateway_port,
            services,
            layer,
            created_by: current.map_or_else(|| user.to_owned(), |c| c.created_by.clone()),
        })
    }

    pub async fn create_sandbox(
        &self,
        session: &Session,
        body: &SandboxBody,
    ) -> Result<SandboxView, ApiError> {
        let name = body
            .name
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("name is required"))?;
        SandboxName::parse(name).map_err(bad)?;
        let spec = self
            .sandbox_spec(name, body, None, session.username())
            .await?;
        let record = self
            .store()
            .create_sandbox(&spec, &self.port_ranges())
            .await?;
        self.changed(Topic::Sandboxes);
        self.sandbox_view(record).await
    }

    pub async fn update_sandbox(
        &self,
        session: &Session,
        name: &str,
        body: &SandboxBody,
    ) -> Result<SandboxView, ApiError> {
        same_name("sandbox", name, body.name.as_deref())?;
        let current = self.sandbox_record(name).await?;
        let spec = self
            .sandbox_spec(name, body, Some(&current), session.username())
            .await?;
        let record = self
            .store()
            .update_sandbox(&spec, &self.port_ranges())
            .await?;
        self.changed(Topic::Sandboxes);
        self.clear_masks();
        self.sync_routes(Some(&current), &record);
        self.sandbox_view(record).await
    }

    /// A new sandbox with `source`'s branches, environment, template,
    /// overrides and routes, and new ports.
    pub async fn clone_sandbox(
        &self,
        session: &Session,
        source: &str,
        name: &str,
    ) -> Result<SandboxView, ApiError> {
        SandboxName::parse(name).map_err(bad)?;
        let current = self.sandbox_record(source).await?;
        let spec = SandboxSpec {
            name: name.to_owned(),
            template: current.template.clone(),
            environment: current.environment.clone(),
            gateway_branch: current.gateway_branch.clone(),
            gateway_port: None,
            services: current
                .services
                .iter()
                .map(|(k, s)| {
                    let spec = ServiceSpec {
                        source: s.source.clone(),
                        port: None,
                        route: Some(s.route),
                    };
                    (k.clone(), spec)
                })
                .collect(),
            layer: current.layer.clone(),
            created_by: session.username().to_owned(),
        };
        let record = self
            .store()
            .create_sandbox(&spec, &self.port_ranges())
            .await?;
        self.changed(Topic::Sandboxes);
        self.sandbox_view(record).await
    }

    /// Stops and removes the sandbox's containers and network through the
    /// agents, then deletes it and releases its ports.
    pub async fn delete_sandbox(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let record = self.sandbox_record(name).await?;
        let warnings = self.remove_sandbox_containers(&record).await?;
        let live = self
            .deployments(&DeploymentFilter {
                sandbox: Some(name.to_owned()),
                limit: 1000,
                ..DeploymentFilter::default()
            })
            .await?;
        for d in live
            .iter()
            .filter(|d| matches!(d.state, DeploymentState::Queued | DeploymentState::Running))
        {
            self.store()
                .set_state(
                    &d.id,
                    DeploymentState::Stopped,
                    Some("the sandbox was deleted"),
                    Utc::now(),
                )
                .await?;
        }
        self.store().delete_sandbox(name).await?;
        self.changed(Topic::Sandboxes);
        Ok(warnings)
    }
}

fn same_name(what: &str, path: &str, body: Option<&str>) -> Result<(), ApiError> {
    match body {
        Some(n) if n != path => Err(ApiError::bad_request(format!(
            "name {:?} differs from the {what} in the path ({:?}): {what}s cannot be renamed",
            clip(n),
            clip(path)
        ))),
        _ => Ok(()),
    }
}

fn audit_sandbox(action: &'static str, sandbox: &str) -> AuditEntry {
    AuditEntry {
        action,
        sandbox: Some(clip(sandbox)),
        ..AuditEntry::default()
    }
}

fn audit_template(action: &'static str, template: &str, environment: Option<String>) -> AuditEntry {
    AuditEntry {
        action,
        sandbox: None,
        repository: None,
        branch: None,
        environment,
        deployment: None,
        detail: Some(format!("template {}", clip(template))),
    }
}

fn created(location: String, body: impl Serialize) -> Response {
    (StatusCode::CREATED, [(LOCATION, location)], Json(body)).into_response()
}

// ---------------------------------------------------------------- templates

/// `GET /api/v1/templates`
pub async fn list_templates(
    State(cp): State<ControlPlane>,
    _: CurrentSession,
) -> Result<Json<Vec<TemplateView>>, ApiError> {
    Ok(Json(cp.templates().await?))
}

/// `GET /api/v1/templates/{name}`
pub async fn get_template(
    State(cp): State<ControlPlane>,
    _: CurrentSession,
    Path(name): Path<String>,
) -> Result<Json<TemplateView>, ApiError> {
    Ok(Json(cp.template(&name).await?))
}

/// `POST /api/v1/templates`
pub async fn create_template(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    ApiJson(body): ApiJson<TemplateBody>,
) -> Result<Response, ApiError> {
    let name = body.name.clone().unwrap_or_default();
    let result = cp.create_template(&body).await;
    let env = result.as_ref().ok().and_then(|t| t.environment.clone());
    cp.audit(
        session.username(),
        audit_template("template_create", &name, env),
        &result,
    )
    .await;
    let t = result?;
    Ok(created(format!("/api/v1/templates/{}", t.name), t))
}

/// `PUT /api/v1/templates/{name}`
pub async fn update_template(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<TemplateBody>,
) -> Result<Json<TemplateView>, ApiError> {
    let result = cp.update_template(&name, &body).await;
    let env = result.as_ref().ok().and_then(|t| t.environment.clone());
    cp.audit(
        session.username(),
        audit_template("template_update", &name, env),
        &result,
    )
    .await;
    Ok(Json(result?))
}

/// `DELETE /api/v1/templates/{name}`
pub async fn delete_template(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let result = cp.delete_template(&name).await;
    cp.audit(
        session.username(),
        audit_template("template_delete", &name, None),
        &result,
    )
    .await;
    result.map(|()| StatusCode::NO_CONTENT)
}

/// `POST /api/v1/templates/{name}/sandboxes {name}`
pub async fn sandbox_from_template(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    Path(template): Path<String>,
    ApiJson(mut body): ApiJson<SandboxBody>,
) -> Result<Response, ApiError> {
    body.template = Some(Some(template.clone()));
    let detail = format!("from template {}", clip(&template));
    create_audited(&cp, &session, &body, Some(detail)).await
}

// ---------------------------------------------------------------- sandboxes

/// `GET /api/v1/sandboxes`
pub async fn list(
    State(cp): State<ControlPlane>,
    _: CurrentSession,
) -> Result<Json<Vec<SandboxView>>, ApiError> {
    Ok(Json(cp.sandboxes().await?))
}

/// `GET /api/v1/sandboxes/{name}`
pub async fn get(
    State(cp): State<ControlPlane>,
    _: CurrentSession,
    Path(name): Path<String>,
) -> Result<Json<SandboxView>, ApiError> {
    Ok(Json(cp.sandbox(&name).await?))
}

/// `POST /api/v1/sandboxes`
pub async fn create(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    ApiJson(body): ApiJson<SandboxBody>,
) -> Result<Response, ApiError> {
    create_audited(&cp, &session, &body, None).await
}

/// Creating from scratch and from a template are audited alike; `detail`
/// says where the sandbox came from when not from scratch.
async fn create_audited(
    cp: &ControlPlane,
    session: &Session,
    body: &SandboxBody,
    detail: Option<String>,
) -> Result<Response, ApiError> {
    let name = body.name.clone().unwrap_or_default();
    let result = cp.create_sandbox(session, body).await;
    let mut entry = audit_sandbox("sandbox_create", &name);
    entry.environment = result.as_ref().ok().and_then(|s| s.environment.clone());
    entry.detail = detail;
    cp.audit(session.username(), entry, &result).await;
    let s = result?;
    Ok(created(format!("/api/v1/sandboxes/{}", s.name), s))
}

/// `PUT /api/v1/sandboxes/{name}`
pub async fn update(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SandboxBody>,
) -> Result<Json<SandboxView>, ApiError> {
    let result = cp.update_sandbox(&session, &name, &body).await;
    let mut entry = audit_sandbox("sandbox_update", &name);
    entry.environment = result.as_ref().ok().and_then(|s| s.environment.clone());
    cp.audit(session.username(), entry, &result).await;
    Ok(Json(result?))
}

#[derive(Debug, Deserialize)]
pub struct CloneBody {
    pub name: String,
}

/// `POST /api/v1/sandboxes/{name}/clone {name}`
pub async fn clone(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    Path(source): Path<String>,
    ApiJson(body): ApiJson<CloneBody>,
) -> Result<Response, ApiError> {
    let result = cp.clone_sandbox(&session, &source, &body.name).await;
    let mut entry = audit_sandbox("sandbox_clone", &body.name);
    entry.detail = Some(format!("clone of {}", clip(&source)));
    cp.audit(session.username(), entry, &result).await;
    let s = result?;
    Ok(created(format!("/api/v1/sandboxes/{}", s.name), s))
}

/// `DELETE /api/v1/sandboxes/{name}`: `{deleted, warnings}`; a warning says
/// which agent could not remove its containers.
pub async fn delete(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let result = cp.delete_sandbox(&name).await;
    cp.audit(
        session.username(),
        audit_sandbox("sandbox_delete", &name),
        &result,
    )
    .await;
    let warnings = result?;
    Ok(Json(json!({ "deleted": name, "warnings": warnings })))
}

/// `POST /api/v1/sandboxes/{name}/deploy {services?}` → `[deployment]`
pub async fn deploy(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The body is optional: no body deploys everything.
    let body: DeployBody = if body.iter().all(u8::is_ascii_whitespace) {
        DeployBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?
    };
    let list = cp
        .deploy_sandbox(&session, &name, body.services.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(list)).into_response())
}

/// `GET /api/v1/sandboxes/{name}/environment`: the layered view.
pub async fn environment(
    State(cp): State<ControlPlane>,
    _: CurrentSession,
    Path(name): Path<String>,
) -> Result<Json<crate::environments::ResolvedView>, ApiError> {
    Ok(Json(cp.resolved_environment(&name).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_parse_with_errors_naming_the_field() {
        let ok: BTreeMap<String, Value> = serde_json::from_value(json!({
            "eredar": {"branch": "feature/x", "port": 9100},
            "kael": {"use_ocp": true}
        }))
        .unwrap();
        let s = parse_services(&ok, true).unwrap();
        assert_eq!(s["eredar"].port, Some(9100));
        assert_eq!(s["kael"].source, ServiceSource::Ocp);
        let cases = [
            (json!({"Bad Name": {"branch": "x"}}), "repository name"),
            (
                json!({"eredar": {"branch": "--x"}}),
                "services.eredar.branch",
            ),
            (
                json!({"eredar": {"port": 0, "branch": "m"}}),
                "services.eredar.port",
            ),
            (json!({"eredar": {}}), "services.eredar: expected"),
            (
                json!({"eredar": {"branch": "m", "use_ocp": true}}),
                "not both",
            ),
            (
                json!({"eredar": {"use_ocp": true, "port": 9001}}),
                "no port",
            ),
            (
                json!({"eredar": {"branch": "m", "colour": 1}}),
                "unknown field",
            ),
        ];
        for (v, want) in cases {
            let m: BTreeMap<String, Value> = serde_json::from_value(v).unwrap();
            let e = parse_services(&m, true).unwrap_err();
            assert!(e.message().contains(want), "{e} lacks {want}");
        }
        let m: BTreeMap<String, Value> =
            serde_json::from_value(json!({"e": {"branch": "m", "port": 9001}})).unwrap();
        assert!(parse_services(&m, false).is_err());
    }

    #[test]
    fn status_follows_the_latest_deployments() {
        assert_eq!(status_of(&[]), "created");
    }
}
