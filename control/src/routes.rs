//! Route overrides: per sandbox and service, the sandbox's gateway sends the
//! service either to the sandbox's own deployment (`http://{micro node's
//! address}:{port}`) or to OCP (the gateway branch's default). The wanted
//! mode is stored; the gateway agent patches `config.php` and answers the
//! live map, which is what `GET /sandboxes/{name}/routes` shows.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use sdp_contract::subjects::AgentOp;
use sdp_contract::{
    ErrorCode, LiveRoutes, RouteTarget, RoutesApplyRequest, RoutesRequest, ServiceName,
};
use serde::{Deserialize, Serialize};

use crate::ControlPlane;
use crate::api::ApiJson;
use crate::audit::AuditEntry;
use crate::bus::BusError;
use crate::environments::clip;
use crate::error::ApiError;
use crate::sessions::CurrentSession;
use crate::storage::{RouteMode, SandboxRecord};

/// One service of `GET /sandboxes/{name}/routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteView {
    /// Where the gateway sends the service now (the wanted mode when the
    /// gateway could not be asked).
    pub mode: RouteMode,
    pub target: Option<String>,
    pub ocp_default: Option<String>,
    /// The mode stored for the sandbox, applied at every gateway deploy.
    pub wanted: RouteMode,
    /// Whether `mode`, `target` and `ocp_default` were read back from the
    /// running gateway.
    pub live: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RouteBody {
    pub mode: String,
}

impl ControlPlane {
    /// The URL of the sandbox's deployment of `service`, if it has a port.
    fn sandbox_target(&self, sandbox: &SandboxRecord, service: &str) -> Option<String> {
        let port = sandbox.services.get(service)?.port?;
        let address = self.node_address(&self.inner.config.micro_node);
        Some(format!("http://{address}:{port}"))
    }

    /// What the gateway should do for every service the sandbox knows.
    pub(crate) fn route_targets(&self, sandbox: &SandboxRecord) -> BTreeMap<String, RouteTarget> {
        sandbox
            .services
            .iter()
            .map(|(svc, s)| {
                let target = match (s.route, self.sandbox_target(sandbox, svc)) {
                    (RouteMode::Sandbox, Some(url)) => RouteTarget::Sandbox { url },
                    _ => RouteTarget::Ocp,
                };
                (svc.clone(), target)
            })
            .collect()
    }

    /// Tells the sandbox's gateway about routes that changed between
    /// `before` and `after` (a new service, a new port, a service gone).
    /// Best effort and in the background: a gateway not running yet gets
    /// them all at its next deploy.
    pub(crate) fn sync_routes(&self, before: Option<&SandboxRecord>, after: &SandboxRecord) {
        let old = before.map(|b| self.route_targets(b)).unwrap_or_default();
        let new = self.route_targets(after);
        let mut changed: BTreeMap<String, RouteTarget> = new
            .iter()
            .filter(|(svc, t)| old.get(*svc) != Some(*t))
            .map(|(svc, t)| (svc.clone(), t.clone()))
            .collect();
        for svc in old.keys().filter(|svc| !new.contains_key(*svc)) {
            changed.insert(svc.clone(), RouteTarget::Ocp);
        }
        if changed.is_empty() {
            return;
        }
        let cp = self.clone();
        let sandbox = after.name.clone();
        tokio::spawn(async move {
            let cfg = &cp.inner.config;
            let req = RoutesApplyRequest {
                sandbox: sandbox.clone(),
                repository: Some(cfg.gateway_repository.clone()),
                routes: changed,
            };
            let pushed: Result<LiveRoutes, BusError> = cp
                .inner
                .bus
                .request(
                    &cfg.gateway_node,
                    AgentOp::RoutesApply,
                    &req,
                    cfg.request_timeout,
                )
                .await;
            match pushed {
                Ok(_) => tracing::info!(sandbox = %sandbox, "pushed changed routes to the gateway"),
                Err(BusError::Agent(e)) if e.code == ErrorCode::NotFound => {}
                Err(BusError::NoResponders { .. }) => {}
                Err(e) => {
                    tracing::warn!(sandbox = %sandbox, error = %e, "could not push changed routes; the next gateway deploy applies them")
                }
            }
        });
    }

    async fn live_routes(&self, sandbox: &str) -> Result<LiveRoutes, BusError> {
        let cfg = &self.inner.config;
        self.inner
            .bus
            .request(
                &cfg.gateway_node,
                AgentOp::RoutesGet,
                &RoutesRequest {
                    sandbox: sandbox.to_owned(),
                    repository: Some(cfg.gateway_repository.clone()),
                },
                cfg.request_timeout,
            )
            .await
    }

    fn route_views(
        &self,
        sandbox: &SandboxRecord,
        live: Option<&LiveRoutes>,
    ) -> BTreeMap<String, RouteView> {
        let mut out = BTreeMap::new();
        if let Some(live) = live {
            for (svc, r) in &live.routes {
                let wanted = sandbox
                    .services
                    .get(svc)
                    .map_or(RouteMode::Ocp, |s| s.route);
                let mode = match r.mode {
                    sdp_contract::RouteMode::Sandbox => RouteMode::Sandbox,
                    sdp_contract::RouteMode::Ocp => RouteMode::Ocp,
                };
                out.insert(
                    svc.clone(),
                    RouteView {
                        mode,
                        target: Some(r.target.clone()),
                        ocp_default: r.ocp_default.clone(),
                        wanted,
                        live: true,
                    },
                );
            }
        }
        for (svc, s) in &sandbox.services {
            out.entry(svc.clone()).or_insert_with(|| RouteView {
                mode: s.route,
                target: match s.route {
                    RouteMode::Sandbox => self.sandbox_target(sandbox, svc),
                    RouteMode::Ocp => None,
                },
                ocp_default: None,
                wanted: s.route,
                live: false,
            });
        }
        out
    }

    /// The routes of a sandbox: the live map from its gateway, with the
    /// wanted modes beside it.
    pub async fn routes(&self, sandbox: &str) -> Result<BTreeMap<String, RouteView>, ApiError> {
        let record = self.sandbox_record(sandbox).await?;
        let live = match self.live_routes(sandbox).await {
            Ok(live) => Some(live),
            Err(e) => {
                tracing::info!(sandbox, error = %e, "live routes unavailable; showing the wanted ones");
                None
            }
        };
        Ok(self.route_views(&record, live.as_ref()))
    }

    /// Sets where the sandbox's gateway sends `service` and pushes it to the
    /// gateway agent. When the gateway is not running (not deployed yet, or
    /// its agent away) the mode is kept and applied at its next deploy; when
    /// the agent refuses the change, nothing is kept.
    pub async fn set_route(
        &self,
        sandbox: &str,
        service: &str,
        mode: &str,
    ) -> Result<BTreeMap<String, RouteView>, ApiError> {
        let mode = RouteMode::parse(mode).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid mode {:?}: expected \"sandbox\" or \"ocp\"",
                clip(mode)
            ))
        })?;
        ServiceName::parse(service).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let record = self.sandbox_record(sandbox).await?;
        let previous = record.services.get(service).map(|s| s.route);
        if mode == RouteMode::Sandbox && self.sandbox_target(&record, service).is_none() {
            return Err(ApiError::conflict(format!(
                "service {service:?} has no deployment port in sandbox {sandbox:?}: give it a \
                 branch first, or route it to ocp"
            )));
        }
        self.store().set_route_mode(sandbox, service, mode).await?;
        let record = self.sandbox_record(sandbox).await?;
        let target = self
            .route_targets(&record)
            .remove(service)
            .unwrap_or(RouteTarget::Ocp);
        let cfg = &self.inner.config;
        let pushed: Result<LiveRoutes, BusError> = self
            .inner
            .bus
            .request(
                &cfg.gateway_node,
                AgentOp::RoutesApply,
                &RoutesApplyRequest {
                    sandbox: sandbox.to_owned(),
                    repository: Some(cfg.gateway_repository.clone()),
                    routes: BTreeMap::from([(service.to_owned(), target)]),
                },
                cfg.request_timeout,
            )
            .await;
        match pushed {
            Ok(live) => Ok(self.route_views(&record, Some(&live))),
            Err(BusError::NoResponders { .. } | BusError::TimedOut { .. })
            | Err(BusError::Disconnected) => Ok(self.route_views(&record, None)),
            Err(BusError::Agent(e)) if e.code == ErrorCode::NotFound => {
                Ok(self.route_views(&record, None))
            }
            Err(e) => {
                // The gateway refused the change: keep what it runs.
                match previous {
                    Some(p) => self.store().set_route_mode(sandbox, service, p).await?,
                    None => {
                        self.store()
                            .set_route_mode(sandbox, service, RouteMode::Ocp)
                            .await?
                    }
                }
                Err(ApiError::new(
                    axum::http::StatusCode::BAD_GATEWAY,
                    format!("the gateway agent could not apply the route: {e}"),
                ))
            }
        }
    }
}

/// `GET /api/v1/sandboxes/{name}/routes`
pub async fn get(
    State(cp): State<ControlPlane>,
    _: CurrentSession,
    Path(name): Path<String>,
) -> Result<Json<BTreeMap<String, RouteView>>, ApiError> {
    Ok(Json(cp.routes(&name).await?))
}

/// `PUT /api/v1/sandboxes/{name}/routes/{svc} {mode}`
pub async fn put(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    Path((name, service)): Path<(String, String)>,
    ApiJson(body): ApiJson<RouteBody>,
) -> Result<Json<BTreeMap<String, RouteView>>, ApiError> {
    let result = cp.set_route(&name, &service, &body.mode).await;
    let entry = AuditEntry {
        action: "route_set",
        sandbox: Some(clip(&name)),
        repository: Some(clip(&service)),
        branch: None,
        environment: None,
        deployment: None,
        detail: Some(format!("mode {}", clip(&body.mode))),
    };
    cp.audit(session.username(), entry, &result).await;
    Ok(Json(result?))
}
