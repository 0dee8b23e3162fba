//! Answers to `sdp.agent.{node}.{op}` requests. Every answer is an encoded
//! `Reply`; bad input gets `bad_request` with a message fit for the user,
//! never a panic and never a half-started deployment.

mod repositories;
mod routes;
mod services;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sdp_contract::subjects::{self, AgentOp, DeployStream};
use sdp_contract::{
    Ack, AgentError, AuthOutcome, AuthRequest, BranchName, ContainerInfo, Credentials,
    DeployEnvironment, ErrorCode, GatewayDeployRequest, NodeKind, ReplayRequest, Reply,
    SandboxName, ServiceName, decode, encode,
};
use serde::de::DeserializeOwned;

use crate::agent::Shared;
use crate::git::{self, Git};
use crate::mask::{Masker, mask_one};
use crate::pipeline::{self, Deployment};
use crate::reporter::Reporter;
use crate::{environment, presence, spool};

pub(crate) async fn handle(shared: &Arc<Shared>, op: &str, payload: &[u8]) -> Vec<u8> {
    match AgentOp::parse(op) {
        Some(AgentOp::Hello) => encode(&Reply::Ok(presence::current(shared).await)),
        Some(AgentOp::Auth) => encode(&Reply::from(auth(shared, payload).await)),
        Some(AgentOp::Repos) => encode(&Reply::Ok(repositories::list(shared))),
        Some(AgentOp::Branches) => {
            encode(&Reply::from(repositories::branches(shared, payload).await))
        }
        Some(AgentOp::Deploy) => encode(&Reply::from(deploy(shared, payload).await)),
        Some(AgentOp::Stop) => encode(&Reply::from(services::stop(shared, payload).await)),
        Some(AgentOp::Restart) => encode(&Reply::from(services::restart(shared, payload).await)),
        Some(AgentOp::Remove) => encode(&Reply::from(services::remove(shared, payload).await)),
        Some(AgentOp::RoutesGet) => encode(&Reply::from(routes::get(shared, payload).await)),
        Some(AgentOp::RoutesApply) => encode(&Reply::from(routes::apply(shared, payload).await)),
        Some(AgentOp::Status) => encode(&Reply::from(status(shared).await)),
        Some(AgentOp::Replay) => encode(&Reply::from(replay(shared, payload).await)),
        None => {
            let op: String = op.chars().take(40).collect();
            refuse(format!("unknown operation '{op}'"))
        }
    }
}

fn refuse(message: String) -> Vec<u8> {
    encode(&Reply::<Ack>::Error(bad_request(message)))
}

fn bad_request(message: impl Into<String>) -> AgentError {
    AgentError::new(ErrorCode::BadRequest, message)
}

fn internal(message: impl Into<String>) -> AgentError {
    AgentError::new(ErrorCode::Internal, message)
}

fn body<T: DeserializeOwned>(op: &str, payload: &[u8]) -> Result<T, AgentError> {
    decode(payload).map_err(|e| bad_request(format!("malformed '{op}' request: {e}")))
}

fn open<T: DeserializeOwned>(
    shared: &Shared,
    what: &str,
    sealed: &sdp_contract::Sealed,
) -> Result<T, AgentError> {
    shared.keys.open(sealed).map_err(|e| {
        AgentError::new(
            ErrorCode::Sealed,
            format!("the sealed {what} could not be opened: {e}"),
        )
    })
}

/// Checks credentials with a real `git ls-remote` against the auth
/// repository's remote.
async fn auth(shared: &Shared, payload: &[u8]) -> Result<AuthOutcome, AgentError> {
    let request: AuthRequest = body("auth", payload)?;
    let credentials: Credentials = open(shared, "credentials", &request.credentials)?;
    let config = &shared.config;
    let (_, path) = config.auth_repository().ok_or_else(|| {
        internal(format!(
            "node '{}' has no repository to check credentials against",
            config.node
        ))
    })?;
    ls_remote_heads(shared, path, &credentials).await?;
    Ok(AuthOutcome {
        user: credentials.username.clone(),
    })
}

/// `git ls-remote --heads origin` in `dir` as the owner of `credentials`:
/// its output lines, or Unauthorized when the remote rejects them.
async fn ls_remote_heads(
    shared: &Shared,
    dir: &Path,
    credentials: &Credentials,
) -> Result<Vec<String>, AgentError> {
    let config = &shared.config;
    let git = Git::new(&config.git_program, dir).with_credentials(&shared.askpass, credentials);
    let done = git
        .spawn(["ls-remote", "--heads", "origin"], config.git_timeout)
        .map_err(|e| internal(e.to_string()))?
        .collect(&shared.shutdown)
        .await
        .map_err(|e| internal(e.to_string()))?;
    if done.success() {
        return Ok(done.stdout);
    }
    if git::is_auth_failure(&done.stderr) {
        return Err(AgentError::new(
            ErrorCode::Unauthorized,
            "Bitbucket rejected the username or password",
        ));
    }
    let line = git::error_line(&done.stderr)
        .map(|l| mask_one(l, &credentials.password))
        .unwrap_or_else(|| done.describe_status());
    Err(internal(format!("git ls-remote failed: {line}")))
}

fn bad_name(e: sdp_contract::NameError) -> AgentError {
    bad_request(e.to_string())
}

/// A repository configured on this node, and its working clone.
fn configured(shared: &Shared, name: &str) -> Result<(ServiceName, PathBuf), AgentError> {
    let config = &shared.config;
    let repository = ServiceName::parse(name).map_err(bad_name)?;
    let Some(clone) = config.repositories.get(repository.as_str()) else {
        let known: Vec<&str> = config.repositories.keys().map(String::as_str).collect();
        return Err(bad_request(format!(
            "unknown repository '{repository}' on node '{}' (configured: {})",
            config.node,
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    };
    Ok((repository, clone.clone()))
}

/// Validates a deployment, acknowledges it and runs it in the background.
async fn deploy(shared: &Arc<Shared>, payload: &[u8]) -> Result<Ack, AgentError> {
    let config = &shared.config;
    if config.kind == NodeKind::Infra {
        return Err(bad_request(format!(
            "node '{}' is an infra node and deploys no services",
            config.node
        )));
    }
    // A micro agent ignores `routes`; a plain deploy request reads as a
    // gateway deploy without overrides.
    let GatewayDeployRequest {
        deploy: request,
        routes,
    } = body("deploy", payload)?;
    if !spool::valid_id(&request.deployment) {
        return Err(bad_request(
            "invalid deployment id: use 1 to 64 letters, digits, '-' or '_'",
        ));
    }
    let sandbox = SandboxName::parse(&request.sandbox).map_err(bad_name)?;
    let (repository, clone) = configured(shared, &request.repository)?;
    let branch = BranchName::parse(&request.branch).map_err(bad_name)?;
    if config.kind == NodeKind::Gateway {
        // Checked now, so a bad URL is a refusal, not a failed deployment.
        crate::gateway::wanted(&routes, &Default::default()).map_err(bad_request)?;
    }
    if request.port == 0 {
        return Err(bad_request("the host port must not be 0"));
    }
    let credentials: Credentials = open(shared, "credentials", &request.credentials)?;
    let environment: DeployEnvironment = match &request.environment {
        Some(sealed) => open(shared, "environment", sealed)?,
        None => DeployEnvironment::default(),
    };
    environment::validate(&environment).map_err(|e| bad_request(e.to_string()))?;
    if shared.shutdown.is_cancelled() {
        return Err(internal("the agent is shutting down"));
    }
    let Some(writer) = shared
        .spool
        .create(&request.deployment)
        .await
        .map_err(|e| internal(format!("cannot start the deployment's spool: {e}")))?
    else {
        // A repeated request (the control plane retrying after a lost
        // reply): the deployment already runs or ran; run it once.
        return Ok(Ack::accepted());
    };
    let masker = Masker::new(environment.secrets.values());
    let reporter = Reporter::new(shared.nats.clone(), &request.deployment, writer, masker);
    let deployment = Deployment {
        id: request.deployment,
        sandbox,
        repository,
        branch,
        port: request.port,
        clone,
        credentials,
        environment,
        routes,
    };
    shared
        .tracker
        .spawn(pipeline::run(shared.clone(), deployment, reporter));
    Ok(Ack::accepted())
}

async fn status(shared: &Shared) -> Result<Vec<ContainerInfo>, AgentError> {
    shared
        .docker
        .node_containers(&shared.config.node)
        .await
        .map_err(|e| internal(e.to_string()))
}

/// Resends a deployment's messages from `from_seq` on, from the spool.
async fn replay(shared: &Shared, payload: &[u8]) -> Result<Ack, AgentError> {
    let request: ReplayRequest = body("replay", payload)?;
    if !spool::valid_id(&request.deployment) {
        return Err(bad_request("invalid deployment id"));
    }
    let records = shared.spool.read(&request.deployment).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            AgentError::new(
                ErrorCode::NotFound,
                format!(
                    "deployment '{}' is not known to this agent",
                    request.deployment
                ),
            )
        } else {
            internal(format!("cannot read the spool: {e}"))
        }
    })?;
    for record in records.into_iter().filter(|r| r.seq >= request.from_seq) {
        let subject = match record.stream {
            DeployStream::Event => subjects::deploy_event(&request.deployment),
            DeployStream::Log => subjects::deploy_log(&request.deployment),
        };
        shared
            .nats
            .publish(subject, record.bytes.into())
            .await
            .map_err(|e| internal(format!("cannot publish: {e}")))?;
    }
    Ok(Ack::accepted())
}
