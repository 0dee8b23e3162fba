//! Deployments: validation before anything is stored or sent, the per-node
//! build queue, dispatch to the agents, stop/restart/delete, and the read
//! endpoints.
//!
//! Once a deployment is stored, the request answers 201 with it, whatever
//! the agent then says: a deployment no agent took on (none connected, a
//! refusal, no acknowledgement in time) is recorded as `FAILED` with the
//! reason, so it shows in the history like any other failure. Problems the
//! control plane can see itself (bad names, unknown sandbox, port conflicts)
//! are 4xx answers and store nothing.
//!
//! Each node builds at most `builds_per_node` deployments at once; more wait
//! in a FIFO queue (as `QUEUED`), so a burst of deploys does not starve a VM.
//! A build holds its slot until the agent reports a final state.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use sdp_contract::subjects::AgentOp;
use sdp_contract::{
    Ack, BranchName, Credentials, DeployEnvironment, DeployRequest, DeploymentState, ErrorCode,
    GatewayDeployRequest, RouteTarget, SandboxName, Sealed, ServiceName, ServiceOutcome,
    ServiceRequest, stages,
};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::ControlPlane;
use crate::api::ApiJson;
use crate::audit::AuditEntry;
use crate::bus::BusError;
use crate::changes::Topic;
use crate::environments::{check_slug, clip};
use crate::error::ApiError;
use crate::model::{Deployment, DeploymentFilter, Stage, StageStatus};
use crate::sessions::{CurrentSession, Session};
use crate::storage::{NewDeployment, PortKind, SandboxRecord};

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
        check_slug("environment", env)?;
    }
    if req.port == Some(0) {
        return Err(ApiError::bad_request(
            "invalid port 0: choose a port from 1 to 65535",
        ));
    }
    Ok(valid)
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

/// Why the agent did not take the request on, worded for the history.
fn dispatch_failure(e: BusError, kind: &str, timeout_secs: u64) -> String {
    match e {
        BusError::NoResponders { .. } => format!("no {kind} agent is connected"),
        BusError::Agent(e) => e.message,
        BusError::TimedOut { .. } => {
            format!("the {kind} agent did not acknowledge the request within {timeout_secs} s")
        }
        e => {
            tracing::warn!(error = %e, "request to the {kind} agent failed");
            format!("the {kind} agent could not be asked: {e}")
        }
    }
}

/// The per-node build slots and the builds holding them.
pub struct BuildQueue {
    per_node: usize,
    timeout: Duration,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    running: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl BuildQueue {
    pub fn new(per_node: usize, timeout: Duration) -> Self {
        BuildQueue {
            per_node: per_node.max(1),
            timeout,
            slots: Mutex::default(),
            running: Mutex::default(),
        }
    }

    fn semaphore(&self, node: &str) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(node.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_node)))
            .clone()
    }

    /// Registers deployment `id` as about to start, before it is sent, so a
    /// final state reported at once is not missed.
    fn register(&self, id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.lock_running().insert(id.to_owned(), tx);
        rx
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `permit` until deployment `id` finishes, or the build timeout.
    fn hold(&self, id: &str, permit: OwnedSemaphorePermit, done: oneshot::Receiver<()>) {
        let timeout = self.timeout;
        let id = id.to_owned();
        tokio::spawn(async move {
            if tokio::time::timeout(timeout, done).await.is_err() {
                tracing::warn!(deployment = %id, "no final state within the build timeout; freeing its build slot");
            }
            drop(permit);
        });
    }

    /// The agent reported a final state for `id`: its slot goes to the next.
    pub fn finished(&self, id: &str) {
        if let Some(tx) = self.lock_running().remove(id) {
            let _ = tx.send(());
        }
    }
}

impl ControlPlane {
    /// Validates, allocates (or reuses) the service's port in its sandbox,
    /// stores the deployment as `QUEUED` and sends it to the micro agent,
    /// credentials and environment sealed to its key.
    pub async fn create_deployment(
        &self,
        session: &Session,
        req: &CreateDeployment,
    ) -> Result<Deployment, ApiError> {
        let valid = validate(req)?;
        let sandbox = self.sandbox_record(valid.sandbox.as_str()).await?;
        let environment = match &req.environment {
            Some(e) => {
                if self.store().environment(e).await?.is_none() {
                    return Err(ApiError::not_found(format!(
                        "environment {:?} not found",
                        clip(e)
                    )));
                }
                Some(e.clone())
            }
            None => self.effective_environment(&sandbox).await?,
        };
        let d = self.new_deployment(
            &sandbox,
            PortKind::Micro,
            valid.repository.as_str(),
            valid.branch.as_str(),
            environment,
            session.username(),
        );
        let result = self
            .queue_and_dispatch(session, d, PortKind::Micro, req.port)
            .await;
        // A new service, or one on a new port, needs the running gateway
        // to know.
        if result.is_ok()
            && let Ok(after) = self.sandbox_record(&sandbox.name).await
        {
            self.sync_routes(Some(&sandbox), &after);
        }
        result
    }

    fn new_deployment(
        &self,
        sandbox: &SandboxRecord,
        kind: PortKind,
        repository: &str,
        branch: &str,
        environment: Option<String>,
        user: &str,
    ) -> Deployment {
        let cfg = &self.inner.config;
        let (node, pipeline): (&str, &[&str]) = match kind {
            PortKind::Micro => (&cfg.micro_node, &stages::MICRO),
            PortKind::Gateway => (&cfg.gateway_node, &stages::GATEWAY),
        };
        Deployment {
            id: uuid::Uuid::new_v4().to_string(),
            sandbox: sandbox.name.clone(),
            repository: repository.to_owned(),
            branch: branch.to_owned(),
            node: node.to_owned(),
            user: user.to_owned(),
            state: DeploymentState::Queued,
            port: 0,
            commit: None,
            container: None,
            failed_stage: None,
            reason: None,
            environment,
            stages: pending(pipeline),
            created_at: Utc::now(),
            started_at: None,
            completed_at: None,
        }
    }

    async fn queue_and_dispatch(
        &self,
        session: &Session,
        d: Deployment,
        kind: PortKind,
        requested_port: Option<u16>,
    ) -> Result<Deployment, ApiError> {
        if !self.inner.bus.connected() {
            return Err(ApiError::unavailable(format!(
                "{}; try again shortly",
                BusError::Disconnected
            )));
        }
        let d = self
            .store()
            .queue_deployment(
                &NewDeployment {
                    deployment: d,
                    kind,
                    requested_port,
                },
                &self.port_ranges(),
            )
            .await?;
        self.changed(Topic::Sandboxes);
        tracing::info!(
            deployment = %d.id,
            sandbox = %d.sandbox,
            repository = %d.repository,
            branch = %d.branch,
            port = d.port,
            user = %d.user,
            "deployment queued"
        );
        let sem = self.inner.builds.semaphore(&d.node);
        match sem.clone().try_acquire_owned() {
            Ok(permit) => {
                self.dispatch(session.credentials().clone(), d, permit)
                    .await
            }
            Err(_) => {
                self.log_control(
                    &d.id,
                    &format!("waiting for a free build slot on node {}", d.node),
                )
                .await;
                let cp = self.clone();
                let credentials = session.credentials().clone();
                let queued = d.clone();
                tokio::spawn(async move {
                    let permit = tokio::select! {
                        p = sem.acquire_owned() => p,
                        _ = cp.inner.shutdown.cancelled() => return,
                    };
                    let Ok(permit) = permit else { return };
                    if let Err(e) = cp.dispatch(credentials, queued, permit).await {
                        tracing::error!(error = %e, "dispatching a queued deployment failed");
                    }
                });
                Ok(d)
            }
        }
    }

    /// Appends a line of the control plane's own to a deployment's log.
    pub(crate) async fn log_control(&self, id: &str, text: &str) {
        if let Err(e) = self.inner.logs.append(id, "control", text).await {
            tracing::warn!(deployment = %id, error = %e, "could not write the deployment log");
        }
    }

    /// Sends deployment `d` to its agent; on refusal records it as failed.
    async fn dispatch(
        &self,
        credentials: Credentials,
        d: Deployment,
        permit: OwnedSemaphorePermit,
    ) -> Result<Deployment, ApiError> {
        // A deployment that waited in the queue may have been stopped (its
        // sandbox deleted) or deleted meanwhile: it is not sent then.
        match self.store().deployment(&d.id).await? {
            Some(current) if current.state == DeploymentState::Queued => {}
            Some(current) => return Ok(current),
            None => return Err(not_found(&d.id)),
        }
        let cfg = &self.inner.config;
        let kind = if d.node == cfg.gateway_node {
            "gateway"
        } else {
            "micro"
        };
        let prepared = self.deploy_parts(&d).await;
        let sent: Result<(), String> = match prepared {
            Err(e) => Err(e.message().to_owned()),
            Ok(parts) => {
                let done = self.inner.builds.register(&d.id);
                let sent = self
                    .inner
                    .bus
                    .request_sealed(&d.node, AgentOp::Deploy, cfg.request_timeout, |key| {
                        // A micro agent reads this as a plain DeployRequest:
                        // `routes` is left out when empty.
                        Ok(GatewayDeployRequest {
                            deploy: DeployRequest {
                                deployment: d.id.clone(),
                                sandbox: d.sandbox.clone(),
                                repository: d.repository.clone(),
                                branch: d.branch.clone(),
                                port: d.port,
                                credentials: Sealed::seal(key, &credentials)?,
                                environment: parts
                                    .environment
                                    .as_ref()
                                    .map(|env| Sealed::seal(key, env))
                                    .transpose()?,
                            },
                            routes: parts.routes.clone(),
                        })
                    })
                    .await;
                match sent {
                    Ok(Ack { accepted: true }) => {
                        self.store().mark_dispatched(&d.id, Utc::now()).await?;
                        self.inner.builds.hold(&d.id, permit, done);
                        return Ok(d);
                    }
                    Ok(Ack { accepted: false }) => {
                        Err(format!("the {kind} agent did not accept the deployment"))
                    }
                    Err(e) => Err(dispatch_failure(e, kind, cfg.request_timeout.as_secs())),
                }
            }
        };
        let Err(reason) = sent else {
            return Ok(d);
        };
        self.inner.builds.finished(&d.id);
        drop(permit);
        tracing::info!(deployment = %d.id, reason = %reason, "deployment not taken on");
        self.store().fail_queued(&d.id, &reason, Utc::now()).await?;
        self.changed(Topic::Sandboxes);
        self.log_control(&d.id, &reason).await;
        self.deployment(&d.id)
            .await?
            .ok_or_else(|| ApiError::internal("a deployment vanished right after it was stored"))
    }

    /// Deploys the sandbox's gateway and branch services, or those named.
    /// Each deployment is audited on its own; a request refused before any
    /// is created is audited once, naming the sandbox.
    pub async fn deploy_sandbox(
        &self,
        session: &Session,
        name: &str,
        services: Option<&[String]>,
    ) -> Result<Vec<Deployment>, ApiError> {
        let (sandbox, plan, environment) = match self.plan_sandbox_deploy(name, services).await {
            Ok(p) => p,
            Err(e) => {
                let result: Result<(), _> = Err(e.clone());
                let entry = AuditEntry {
                    action: "deployment_create",
                    sandbox: Some(clip(name)),
                    ..AuditEntry::default()
                };
                self.audit(session.username(), entry, &result).await;
                return Err(e);
            }
        };
        let mut out = Vec::new();
        for (kind, repo, branch) in plan {
            let d = self.new_deployment(
                &sandbox,
                kind,
                &repo,
                &branch,
                environment.clone(),
                session.username(),
            );
            let entry = AuditEntry {
                action: "deployment_create",
                sandbox: Some(sandbox.name.clone()),
                repository: Some(repo.clone()),
                branch: Some(branch.clone()),
                environment: environment.clone(),
                deployment: Some(d.id.clone()),
                detail: None,
            };
            let result = self.queue_and_dispatch(session, d, kind, None).await;
            self.audit(session.username(), entry, &result).await;
            out.push(result?);
        }
        Ok(out)
    }

    /// What `deploy_sandbox` deploys, in order, and with which environment.
    #[allow(clippy::type_complexity)]
    async fn plan_sandbox_deploy(
        &self,
        name: &str,
        services: Option<&[String]>,
    ) -> Result<
        (
            SandboxRecord,
            Vec<(PortKind, String, String)>,
            Option<String>,
        ),
        ApiError,
    > {
        let sandbox = self.sandbox_record(name).await?;
        let gateway_repo = self.inner.config.gateway_repository.clone();
        let branch_services: Vec<(String, String)> = sandbox
            .services
            .iter()
            .filter_map(|(k, s)| s.source.branch().map(|b| (k.clone(), b.to_owned())))
            .collect();
        let mut micro = Vec::new();
        let mut gateway = false;
        match services {
            None => {
                gateway = true;
                micro = branch_services.clone();
            }
            Some(list) => {
                if list.is_empty() {
                    return Err(ApiError::bad_request(
                        "services: name at least one service, or leave services out to deploy all",
                    ));
                }
                for svc in list {
                    if svc == "gateway" || *svc == gateway_repo {
                        gateway = true;
                    } else if let Some(found) = branch_services.iter().find(|(k, _)| k == svc) {
                        micro.push(found.clone());
                    } else {
                        return Err(ApiError::bad_request(format!(
                            "services: {:?} is not a branch service of sandbox {name:?} \
                             (services served by OCP are not deployed)",
                            clip(svc)
                        )));
                    }
                }
            }
        }
        let environment = self.effective_environment(&sandbox).await?;
        let mut plan: Vec<(PortKind, String, String)> = micro
            .into_iter()
            .map(|(svc, branch)| (PortKind::Micro, svc, branch))
            .collect();
        // The gateway goes last: its routes point at the services' ports.
        if gateway {
            plan.push((
                PortKind::Gateway,
                gateway_repo.clone(),
                sandbox.gateway_branch.clone(),
            ));
        }
        Ok((sandbox, plan, environment))
    }

    pub async fn deployments(
        &self,
        filter: &DeploymentFilter,
    ) -> Result<Vec<Deployment>, ApiError> {
        Ok(self.store().deployments(filter).await?)
    }

    pub async fn deployment(&self, id: &str) -> Result<Option<Deployment>, ApiError> {
        Ok(self.store().deployment(id).await?)
    }

    /// The whole log so far, or `None` for an unknown deployment.
    pub async fn deployment_log(&self, id: &str) -> Result<Option<String>, ApiError> {
        if self.store().deployment(id).await?.is_none() {
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

/// What a deploy request carries besides the deployment itself.
struct DeployParts {
    environment: Option<DeployEnvironment>,
    /// Gateway deployments only: the sandbox's route overrides.
    routes: BTreeMap<String, RouteTarget>,
}

/// Operations on a deployed service: `stop`, `restart`, `remove`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceOp {
    Stop,
    Restart,
    Delete,
}

impl ServiceOp {
    fn verb(self) -> &'static str {
        match self {
            ServiceOp::Stop => "stop",
            ServiceOp::Restart => "restart",
            ServiceOp::Delete => "delete",
        }
    }
}

impl ControlPlane {
    async fn deploy_parts(&self, d: &Deployment) -> Result<DeployParts, ApiError> {
        let environment = self.deploy_environment(d).await?;
        let mut routes = BTreeMap::new();
        if d.node == self.inner.config.gateway_node
            && let Some(sandbox) = self.store().sandbox(&d.sandbox).await?
        {
            routes = self.route_targets(&sandbox);
        }
        Ok(DeployParts {
            environment,
            routes,
        })
    }

    /// Asks `node` to act on the container of `repository` in `sandbox`.
    async fn service_op(
        &self,
        node: &str,
        op: AgentOp,
        req: &ServiceRequest,
    ) -> Result<ServiceOutcome, BusError> {
        self.inner
            .bus
            .request(node, op, req, self.inner.config.request_timeout)
            .await
    }

    /// Removes every container of the sandbox (and so its network) through
    /// the agents. Answers warnings for what could not be removed.
    pub(crate) async fn remove_sandbox_containers(
        &self,
        sandbox: &SandboxRecord,
    ) -> Result<Vec<String>, ApiError> {
        let cfg = &self.inner.config;
        let mut targets: Vec<(String, String)> = sandbox
            .services
            .iter()
            .filter(|(_, s)| s.source.branch().is_some())
            .map(|(k, _)| (cfg.micro_node.clone(), k.clone()))
            .collect();
        // Services deployed once and since moved to OCP may still run.
        let history = self
            .deployments(&DeploymentFilter {
                sandbox: Some(sandbox.name.clone()),
                limit: 1000,
                ..DeploymentFilter::default()
            })
            .await?;
        for d in history {
            let t = (d.node, d.repository);
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        let gateway = (cfg.gateway_node.clone(), cfg.gateway_repository.clone());
        if !targets.contains(&gateway) {
            targets.push(gateway);
        }
        let mut warnings = Vec::new();
        for (node, repository) in targets {
            let req = ServiceRequest {
                sandbox: sandbox.name.clone(),
                repository: repository.clone(),
                deployment: None,
            };
            match self.service_op(&node, AgentOp::Remove, &req).await {
                Ok(_) => {}
                Err(BusError::Agent(e)) if e.code == ErrorCode::NotFound => {}
                Err(e) => {
                    tracing::warn!(sandbox = %sandbox.name, node = %node, repository = %repository, error = %e, "could not remove a container");
                    warnings.push(format!(
                        "the container of {repository} on node {node} could not be removed: {e}"
                    ));
                }
            }
        }
        Ok(warnings)
    }

    /// Stops, restarts or deletes deployment `id` through its agent.
    pub async fn deployment_op(
        &self,
        id: &str,
        op: ServiceOp,
    ) -> Result<Option<Deployment>, ApiError> {
        let d = self.deployment(id).await?.ok_or_else(|| not_found(id))?;
        let live = matches!(d.state, DeploymentState::Running | DeploymentState::Queued);
        match op {
            ServiceOp::Stop if d.state != DeploymentState::Running => {
                return Err(ApiError::conflict(format!(
                    "deployment {id} is {}: only a RUNNING deployment can be stopped",
                    d.state.as_str()
                )));
            }
            ServiceOp::Restart
                if !matches!(d.state, DeploymentState::Running | DeploymentState::Stopped) =>
            {
                return Err(ApiError::conflict(format!(
                    "deployment {id} is {}: only a RUNNING or STOPPED deployment can be \
                     restarted; deploy again instead",
                    d.state.as_str()
                )));
            }
            ServiceOp::Delete if !live => {
                return self.forget_deployment(id).await.map(|()| None);
            }
            _ => {}
        }
        let agent_op = match op {
            ServiceOp::Stop => AgentOp::Stop,
            ServiceOp::Restart => AgentOp::Restart,
            ServiceOp::Delete => AgentOp::Remove,
        };
        let req = ServiceRequest {
            sandbox: d.sandbox.clone(),
            repository: d.repository.clone(),
            deployment: Some(d.id.clone()),
        };
        let outcome = match self.service_op(&d.node, agent_op, &req).await {
            Ok(o) => Some(o),
            // Nothing runs for it: deleting it loses nothing.
            Err(BusError::Agent(e)) if e.code == ErrorCode::NotFound && op == ServiceOp::Delete => {
                None
            }
            Err(BusError::NoResponders { .. }) => {
                return Err(ApiError::unavailable(format!(
                    "no agent serves node {}: the deployment cannot be {} now",
                    d.node,
                    match op {
                        ServiceOp::Stop => "stopped",
                        ServiceOp::Restart => "restarted",
                        ServiceOp::Delete => "deleted",
                    }
                )));
            }
            Err(BusError::Agent(e)) => {
                let status = match e.code {
                    ErrorCode::NotFound => StatusCode::CONFLICT,
                    ErrorCode::BadRequest => StatusCode::CONFLICT,
                    _ => StatusCode::BAD_GATEWAY,
                };
                return Err(ApiError::new(
                    status,
                    format!(
                        "the agent could not {} the deployment: {}",
                        op.verb(),
                        e.message
                    ),
                ));
            }
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "the agent could not be asked to {} the deployment: {e}",
                        op.verb()
                    ),
                ));
            }
        };
        let now = Utc::now();
        match op {
            ServiceOp::Stop => {
                self.store()
                    .set_state(
                        id,
                        DeploymentState::Stopped,
                        Some("stopped by request"),
                        now,
                    )
                    .await?;
                self.log_control(id, "stopped by request").await;
            }
            ServiceOp::Restart => {
                let state = outcome.as_ref().map_or("", |o| o.state.as_str());
                let (new, reason) = if state == "running" {
                    (DeploymentState::Running, None)
                } else {
                    (
                        DeploymentState::Failed,
                        Some(format!("after the restart the container is {state:?}")),
                    )
                };
                self.store()
                    .set_state(id, new, reason.as_deref(), now)
                    .await?;
                self.log_control(id, &format!("restarted by request: container {state}"))
                    .await;
                // A restarted gateway serves the config.php it had when it
                // stopped; route changes made meanwhile were only stored
                // (the agent cannot patch a stopped gateway). Push every
                // wanted route, as a deploy does.
                if new == DeploymentState::Running
                    && d.node == self.inner.config.gateway_node
                    && let Some(sandbox) = self.store().sandbox(&d.sandbox).await?
                {
                    self.sync_routes(None, &sandbox);
                }
            }
            ServiceOp::Delete => {
                self.forget_deployment(id).await?;
                return Ok(None);
            }
        }
        self.changed(Topic::Sandboxes);
        self.deployment(id).await
    }

    async fn forget_deployment(&self, id: &str) -> Result<(), ApiError> {
        self.inner.builds.finished(id);
        self.forget_mask(id);
        self.store().delete_deployment(id).await?;
        self.changed(Topic::Sandboxes);
        if let Err(e) = self.inner.logs.remove(id).await {
            tracing::warn!(deployment = %id, error = %e, "could not remove the deployment log");
        }
        Ok(())
    }
}

async fn audited_op(
    cp: &ControlPlane,
    user: &str,
    id: &str,
    op: ServiceOp,
) -> Result<Option<Deployment>, ApiError> {
    let before = cp.deployment(id).await.ok().flatten();
    let result = cp.deployment_op(id, op).await;
    let entry = AuditEntry {
        action: match op {
            ServiceOp::Stop => "deployment_stop",
            ServiceOp::Restart => "deployment_restart",
            ServiceOp::Delete => "deployment_delete",
        },
        sandbox: before.as_ref().map(|d| d.sandbox.clone()),
        repository: before.as_ref().map(|d| d.repository.clone()),
        branch: before.as_ref().map(|d| d.branch.clone()),
        environment: before.as_ref().and_then(|d| d.environment.clone()),
        deployment: Some(clip(id)),
        detail: None,
    };
    cp.audit(user, entry, &result).await;
    result
}

/// `POST /api/v1/deployments/{id}/stop`
pub async fn stop(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    Path(id): Path<String>,
) -> Result<Json<Option<Deployment>>, ApiError> {
    Ok(Json(
        audited_op(&cp, session.username(), &id, ServiceOp::Stop).await?,
    ))
}

/// `POST /api/v1/deployments/{id}/restart`
pub async fn restart(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    Path(id): Path<String>,
) -> Result<Json<Option<Deployment>>, ApiError> {
    Ok(Json(
        audited_op(&cp, session.username(), &id, ServiceOp::Restart).await?,
    ))
}

/// `DELETE /api/v1/deployments/{id}`: removes its container if it runs, then
/// the deployment and its log.
pub async fn delete(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    audited_op(&cp, session.username(), &id, ServiceOp::Delete).await?;
    Ok(StatusCode::NO_CONTENT)
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
    let result = cp.create_deployment(&session, &req).await;
    let entry = AuditEntry {
        action: "deployment_create",
        sandbox: Some(clip(&req.sandbox)),
        repository: Some(clip(&req.repository)),
        branch: Some(clip(&req.branch)),
        environment: match &result {
            Ok(d) => d.environment.clone(),
            Err(_) => req.environment.as_deref().map(clip),
        },
        deployment: result.as_ref().ok().map(|d| d.id.clone()),
        detail: None,
    };
    cp.audit(session.username(), entry, &result).await;
    let d = result?;
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
        r.environment = Some("Staging!".into());
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
        assert_eq!(
            dispatch_failure(none, "micro", 10),
            "no micro agent is connected"
        );
        let refused = BusError::Agent(AgentError::new(
            ErrorCode::BadRequest,
            "unknown repository \"x\"",
        ));
        assert_eq!(
            dispatch_failure(refused, "micro", 10),
            "unknown repository \"x\""
        );
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
