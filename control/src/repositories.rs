//! Repositories, as each agent announces them (no discovery), and their
//! branches, listed live by the agent with the user's credentials.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use sdp_contract::subjects::AgentOp;
use sdp_contract::{BranchInfo, BranchesRequest, RepositoryInfo, Sealed, ServiceName};

use crate::ControlPlane;
use crate::bus::BusError;
use crate::error::ApiError;
use crate::sessions::{CurrentSession, Session};

impl ControlPlane {
    /// Every repository of every node heard from, by name.
    pub fn repositories(&self) -> Vec<RepositoryInfo> {
        let mut out: Vec<RepositoryInfo> = self
            .nodes()
            .into_iter()
            .flat_map(|n| {
                n.repositories.into_iter().map(move |r| RepositoryInfo {
                    name: r,
                    node: n.name.clone(),
                    kind: n.kind,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.name, &a.node).cmp(&(&b.name, &b.node)));
        out
    }

    /// The branches of `repository`, asked of the node that has it.
    pub async fn branches(
        &self,
        session: &Session,
        repository: &str,
    ) -> Result<Vec<BranchInfo>, ApiError> {
        ServiceName::parse(repository).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let node = self
            .repositories()
            .into_iter()
            .find(|r| r.name == repository)
            .map(|r| r.node)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "repository {repository:?} is not configured on any connected agent"
                ))
            })?;
        let cfg = &self.inner.config;
        self.inner
            .bus
            .request_sealed(&node, AgentOp::Branches, cfg.auth_timeout, |key| {
                Ok(BranchesRequest {
                    repository: repository.to_owned(),
                    credentials: Sealed::seal(key, session.credentials())?,
                })
            })
            .await
            .map_err(|e| match e {
                BusError::NoResponders { .. } => ApiError::unavailable(format!(
                    "node {node} is not connected: its branches cannot be listed now"
                )),
                BusError::Agent(e) => ApiError::new(StatusCode::BAD_GATEWAY, e.message),
                e => ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("node {node} could not list the branches: {e}"),
                ),
            })
    }
}

/// `GET /api/v1/repositories`
pub async fn list(State(cp): State<ControlPlane>, _: CurrentSession) -> Json<Vec<RepositoryInfo>> {
    Json(cp.repositories())
}

/// `GET /api/v1/repositories/{name}/branches`
pub async fn branches(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    Path(name): Path<String>,
) -> Result<Json<Vec<BranchInfo>>, ApiError> {
    Ok(Json(cp.branches(&session, &name).await?))
}
