//! Deployments: validation before anything is stored or sent, port
//! allocation, dispatch to the micro agent, and the read endpoints.
//!
//! Once a deployment is stored, `POST /deployments` answers 201 with it,
//! whatever the agent then says: a deployment no agent took on (none
//! connected, a refusal, no acknowledgement in time) is recorded as `FAILED`
//! with the reason, so it shows in the history like any other failure.
//! Problems the control plane can see itself (bad names, port conflicts) are
//! 4xx answers and store nothing.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use sdp_contract::subjects::AgentOp;
use sdp_contract::{
    Ack, BranchName, DeployRequest, DeploymentState, SandboxName, Sealed, ServiceName, stages,
};
use serde::Deserialize;

use crate::ControlPlane;
use crate::api::ApiJson;
use crate::bus::BusError;
use crate::error::ApiError;
use crate::model::{Deployment, DeploymentFilter, Stage, StageStatus};
use crate::ports::{self, PortError};
use crate::sessions::{CurrentSession, Session};

/// Body of `POST /api/v1/deployments`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateDeployment {
    pub sandbox: String,
    pub repository: String,
    pub branch: String,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

struct Valid {
    sandbox: SandboxName,
    repository: ServiceName,
    branch: BranchName,
}

fn validate(req: &CreateDeployment) -> Result<Valid, ApiError> {
    let bad = |e: sdp_contract::NameError| ApiError::bad_request(e.to_string());
    let valid = Valid {
        sandbox: SandboxName::parse(&req.sandbox).map_err(bad)?,
        repository: ServiceName::parse(&req.repository).map_err(bad)?,
        branch: BranchName::parse(&req.branch).map_err(bad)?,
    };
    if let Some(env) = &req.environment {
        // Environments arrive with their own API; until then none exists.
        return Err(ApiError::bad_request(format!(
            "environment {:?} does not exist",
            clip(env)
        )));
    }
    Ok(valid)
}

fn port_error(e: PortError) -> ApiError {
    match e {
        PortError::Zero => ApiError::bad_request(e.to_string()),
        PortError::Taken(_) | PortError::Exhausted { .. } => ApiError::conflict(e.to_string()),
    }
}

/// Bounds what is echoed back from a request.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

fn pending(names: &[&str]) -> Vec<Stage> {
    names
        .iter()
        .map(|name| Stage {
            name: (*name).to_owned(),
            status: StageStatus::Pending,
            started_at: None,
            completed_at: None,
            reason: None,
        })
        .collect()
}

/// Why the agent did not take the deployment on, worded for the history.
fn dispatch_failure(e: BusError, timeout_secs: u64) -> String {
    match e {
        BusError::NoResponders { .. } => "no micro agent is connected".to_owned(),
        BusError::Agent(e) => e.message,
        BusError::TimedOut { .. } => {
            format!("the micro agent did not acknowledge the deployment within {timeout_secs} s")
        }
        e => {
            tracing::warn!(error = %e, "deploy request to the micro agent failed");
            format!("the micro agent could not be asked: {e}")
        }
    }
}

impl ControlPlane {
    /// Validates, allocates a port, stores the deployment as `QUEUED` and
    /// sends it to the micro agent, credentials sealed to its key.
    pub async fn create_deployment(
        &self,
        session: &Session,
        req: &CreateDeployment,
    ) -> Result<Deployment, ApiError> {
        let valid = validate(req)?;
        if !self.inner.bus.connected() {
            return Err(ApiError::unavailable(format!(
                "{}; try again shortly",
                BusError::Disconnected
            )));
        }
        let cfg = &self.inner.config;
        let store = &self.inner.store;

        let deployment = {
            let _one_at_a_time = self.inner.allocation.lock().await;
            let held = store.live_ports().await?;
            let port = ports::choose(
                cfg.micro_ports,
                &held,
                valid.sandbox.as_str(),
                valid.repository.as_str(),
                req.port,
            )
            .map_err(port_error)?;
            let d = Deployment {
                id: uuid::Uuid::new_v4().to_string(),
                sandbox: valid.sandbox.as_str().to_owned(),
                repository: valid.repository.as_str().to_owned(),
                branch: valid.branch.as_str().to_owned(),
                node: cfg.micro_node.clone(),
                user: session.username().to_owned(),
                state: DeploymentState::Queued,
                port,
                commit: None,
                container: None,
                failed_stage: None,
                reason: None,
                stages: pending(&stages::MICRO),
                created_at: Utc::now(),
                started_at: None,
                completed_at: None,
            };
            store.insert_deployment(&d).await?;
            d
        };
        tracing::info!(
            deployment = %deployment.id,
            sandbox = %deployment.sandbox,
            repository = %deployment.repository,
            branch = %deployment.branch,
            port = deployment.port,
            user = %deployment.user,
            "deployment queued"
        );

        let sent = self
            .inner
            .bus
            .request_sealed(
                &cfg.micro_node,
                AgentOp::Deploy,
                cfg.request_timeout,
                |key| {
                    Ok(DeployRequest {
                        deployment: deployment.id.clone(),
                        sandbox: deployment.sandbox.clone(),
                        repository: deployment.repository.clone(),
                        branch: deployment.branch.clone(),
                        port: deployment.port,
                        credentials: Sealed::seal(key, session.credentials())?,
                        environment: None,
                    })
                },
            )
            .await;
        let reason = match sent {
            Ok(Ack { accepted: true }) => return Ok(deployment),
            Ok(Ack { accepted: false }) => "the micro agent did not accept the deployment".into(),
            Err(e) => dispatch_failure(e, cfg.request_timeout.as_secs()),
        };
        tracing::info!(deployment = %deployment.id, reason = %reason, "deployment not taken on");
        store
            .fail_queued(&deployment.id, &reason, Utc::now())
            .await?;
        if let Err(e) = self
            .inner
            .logs
            .append(&deployment.id, "control", &reason)
            .await
        {
            tracing::warn!(deployment = %deployment.id, error = %e, "could not write the deployment log");
        }
        self.deployment(&deployment.id)
            .await?
            .ok_or_else(|| ApiError::internal("a deployment vanished right after it was stored"))
    }

    pub async fn deployments(
        &self,
        filter: &DeploymentFilter,
    ) -> Result<Vec<Deployment>, ApiError> {
        Ok(self.inner.store.deployments(filter).await?)
    }

    pub async fn deployment(&self, id: &str) -> Result<Option<Deployment>, ApiError> {
        Ok(self.inner.store.deployment(id).await?)
    }

    /// The whole log so far, or `None` for an unknown deployment.
    pub async fn deployment_log(&self, id: &str) -> Result<Option<String>, ApiError> {
        if self.inner.store.deployment(id).await?.is_none() {
            return Ok(None);
        }
        let text = self
            .inner
            .logs
            .read(id)
            .await
            .map_err(|e| ApiError::internal(format_args!("reading the log of {id}: {e}")))?;
        Ok(Some(text))
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("deployment {:?} not found", clip(id)))
}

/// `POST /api/v1/deployments`
pub async fn create(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    ApiJson(req): ApiJson<CreateDeployment>,
) -> Result<Response, ApiError> {
    let d = cp.create_deployment(&session, &req).await?;
    let location = format!("/api/v1/deployments/{}", d.id);
    Ok((StatusCode::CREATED, [(LOCATION, location)], Json(d)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    sandbox: Option<String>,
    repository: Option<String>,
    user: Option<String>,
    state: Option<String>,
    limit: Option<u32>,
}

impl ListQuery {
    fn into_filter(self) -> Result<DeploymentFilter, ApiError> {
        let state = match self.state.filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(
                DeploymentState::parse(&s.to_ascii_uppercase()).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "invalid state {:?}: expected QUEUED, RUNNING, FAILED or STOPPED",
                        clip(&s)
                    ))
                })?,
            ),
        };
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(DeploymentFilter {
            sandbox: nonempty(self.sandbox),
            repository: nonempty(self.repository),
            user: nonempty(self.user),
            state,
            limit: self.limit.unwrap_or(100).clamp(1, 1000),
        })
    }
}

/// `GET /api/v1/deployments?sandbox=&repository=&user=&state=&limit=`
pub async fn list(
    State(cp): State<ControlPlane>,
    _: CurrentSession,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<Deployment>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(cp.deployments(&query.into_filter()?).await?))
}

/// `GET /api/v1/deployments/{id}`
pub async fn get(
    State(cp): State<ControlPlane>,
    _: CurrentSession,
    Path(id): Path<String>,
) -> Result<Json<Deployment>, ApiError> {
    cp.deployment(&id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

/// `GET /api/v1/deployments/{id}/logs`: text/plain, the whole log so far.
pub async fn logs(
    State(cp): State<ControlPlane>,
    _: CurrentSession,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let text = cp
        .deployment_log(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(([(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdp_contract::{AgentError, ErrorCode};

    fn req(branch: &str) -> CreateDeployment {
        CreateDeployment {
            sandbox: "qa".into(),
            repository: "eredar".into(),
            branch: branch.into(),
            environment: None,
            port: None,
        }
    }

    #[test]
    fn a_branch_that_looks_like_an_option_is_refused_naming_the_field() {
        let e = validate(&req("--upload-pack=touch /tmp/x")).err().unwrap();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.message().starts_with("invalid branch name"), "{e}");
        assert!(e.message().contains("--upload-pack"), "{e}");
    }

    #[test]
    fn sandbox_and_repository_names_are_checked_too() {
        let mut r = req("main");
        r.sandbox = "../etc".into();
        assert!(
            validate(&r)
                .err()
                .unwrap()
                .message()
                .contains("sandbox name")
        );
        let mut r = req("main");
        r.repository = "Eredar Service".into();
        assert!(
            validate(&r)
                .err()
                .unwrap()
                .message()
                .contains("repository name")
        );
        let mut r = req("main");
        r.environment = Some("staging".into());
        assert!(
            validate(&r)
                .err()
                .unwrap()
                .message()
                .contains("environment")
        );
        assert!(validate(&req("feature/login")).is_ok());
    }

    #[test]
    fn dispatch_failures_read_as_reasons() {
        let none = BusError::NoResponders {
            subject: "sdp.agent.micro.deploy".into(),
        };
        assert_eq!(dispatch_failure(none, 10), "no micro agent is connected");
        let refused = BusError::Agent(AgentError::new(
            ErrorCode::BadRequest,
            "unknown repository \"x\"",
        ));
        assert_eq!(dispatch_failure(refused, 10), "unknown repository \"x\"");
    }

    #[test]
    fn list_queries_parse_states_and_bound_the_limit() {
        let q = ListQuery {
            sandbox: Some("qa".into()),
            repository: Some(String::new()),
            user: None,
            state: Some("running".into()),
            limit: Some(100_000),
        };
        let f = q.into_filter().unwrap();
        assert_eq!(f.state, Some(DeploymentState::Running));
        assert_eq!(f.repository, None);
        assert_eq!(f.limit, 1000);
        let q = ListQuery {
            sandbox: None,
            repository: None,
            user: None,
            state: Some("DONE".into()),
            limit: None,
        };
        assert_eq!(
            q.into_filter().unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }
}
