//! `routes.get` and `routes.apply`: a sandbox gateway's live route map,
//! read from its `config.php` with the branch's OCP defaults beside it.

use std::time::Duration;

use sdp_contract::{
    AgentError, ErrorCode, LiveRoutes, NodeKind, RoutesApplyRequest, RoutesRequest, SandboxName,
    ServiceName,
};

use super::{bad_name, bad_request, body, configured, internal};
use crate::agent::Shared;
use crate::docker::labels;
use crate::gateway::{self, SandboxGateway};
use crate::git::Git;
use crate::routes::defaults::Routes;
use crate::routes::file::{self, FileError};
use crate::routes::patcher;

/// How long `routes.apply` waits for a deployment of the gateway to end.
const APPLY_WAIT: Duration = Duration::from_secs(120);

struct Located {
    sandbox: SandboxName,
    repository: ServiceName,
    gateway: SandboxGateway,
    branch: String,
    /// Docker's state of the gateway container (`running`, `exited`, ...).
    state: String,
}

async fn locate(
    shared: &Shared,
    sandbox: &str,
    repository: Option<&str>,
) -> Result<Located, AgentError> {
    let config = &shared.config;
    if config.kind != NodeKind::Gateway {
        return Err(bad_request(format!(
            "node '{}' is not a gateway node",
            config.node
        )));
    }
    let sandbox = SandboxName::parse(sandbox).map_err(bad_name)?;
    let name = match repository {
        Some(name) => name.to_owned(),
        None => config
            .repositories
            .keys()
            .next()
            .cloned()
            .ok_or_else(|| internal(format!("node '{}' has no repository", config.node)))?,
    };
    let (repository, _) = configured(shared, &name)?;
    let gateway = SandboxGateway::new(config, &sandbox, &repository);
    let details = shared
        .docker
        .details(&gateway.container)
        .await
        .map_err(|e| internal(e.to_string()))?
        .ok_or_else(|| {
            AgentError::new(
                ErrorCode::NotFound,
                format!(
                    "sandbox '{sandbox}' has no gateway on node '{}'",
                    config.node
                ),
            )
        })?;
    let branch = details
        .labels
        .get(labels::BRANCH)
        .cloned()
        .unwrap_or_default();
    Ok(Located {
        sandbox,
        repository,
        gateway,
        branch,
        state: details.state,
    })
}

fn file_error(e: FileError) -> AgentError {
    match e {
        FileError::Route(_) | FileError::Invalid(_) => bad_request(e.to_string()),
        FileError::Read { .. } | FileError::Write { .. } => internal(e.to_string()),
    }
}

/// The branch's OCP defaults: the snapshot, or (when this agent's data
/// directory lost it) the committed file of the worktree's HEAD, which is
/// the same pristine file.
async fn defaults(shared: &Shared, at: &Located) -> Result<Routes, AgentError> {
    if let Some(found) = shared
        .ocp_defaults
        .get(at.repository.as_str(), &at.branch)
        .await
        .map_err(|e| internal(e.to_string()))?
    {
        return Ok(found);
    }
    let config = &shared.config;
    let spec = format!("HEAD:{}", config.gateway_config_file.display());
    let done = Git::new(&config.git_program, &at.gateway.worktree)
        .spawn(["show", &spec], config.git_timeout)
        .map_err(|e| internal(e.to_string()))?
        .collect(&shared.shutdown)
        .await
        .map_err(|e| internal(e.to_string()))?;
    if !done.success() {
        return Err(internal(format!(
            "no OCP defaults recorded for branch '{}' and git show {spec} failed",
            at.branch
        )));
    }
    let mut text = done.stdout.join("\n");
    text.push('\n');
    let found = patcher::read(&text).map_err(|e| bad_request(e.to_string()))?;
    if !at.branch.is_empty() {
        shared
            .ocp_defaults
            .record(at.repository.as_str(), &at.branch, &found)
            .await
            .map_err(|e| internal(e.to_string()))?;
    }
    Ok(found)
}

pub(super) async fn get(shared: &Shared, payload: &[u8]) -> Result<LiveRoutes, AgentError> {
    let request: RoutesRequest = body("routes.get", payload)?;
    let at = locate(shared, &request.sandbox, request.repository.as_deref()).await?;
    let live = file::read(&at.gateway.config_file)
        .await
        .map_err(file_error)?;
    let defaults = defaults(shared, &at).await?;
    Ok(gateway::live_routes(
        at.sandbox.as_str(),
        &at.branch,
        live,
        &defaults,
    ))
}

/// `routes.apply` needs the gateway container running.
fn not_running(at: &Located, node: &str) -> Result<(), AgentError> {
    if at.state == "running" {
        return Ok(());
    }
    Err(AgentError::new(
        ErrorCode::NotFound,
        format!(
            "the gateway of sandbox '{}' on node '{node}' is not running ({}): routes apply \
             when it runs again",
            at.sandbox,
            if at.state.is_empty() {
                "state unknown"
            } else {
                at.state.as_str()
            }
        ),
    ))
}

pub(super) async fn apply(shared: &Shared, payload: &[u8]) -> Result<LiveRoutes, AgentError> {
    let request: RoutesApplyRequest = body("routes.apply", payload)?;
    let at = locate(shared, &request.sandbox, request.repository.as_deref()).await?;
    // A stopped gateway can neither check the patched file (`php -l` runs
    // in it) nor reload: say so as "not found", which the control plane
    // reads as "keep the wanted route for the gateway's next start",
    // instead of an internal error that made it refuse the change.
    not_running(&at, &shared.config.node)?;
    let slot = shared
        .worktree_locks
        .get(&at.gateway.worktree.display().to_string());
    let _slot = tokio::time::timeout(APPLY_WAIT, slot.lock_owned())
        .await
        .map_err(|_| {
            internal(format!(
                "a deployment of the gateway of sandbox '{}' is still running",
                at.sandbox
            ))
        })?;
    let defaults = defaults(shared, &at).await?;
    let wanted = gateway::wanted(&request.routes, &defaults).map_err(bad_request)?;
    let done = at.gateway.apply(shared, &wanted).await.map_err(internal)?;
    Ok(gateway::live_routes(
        at.sandbox.as_str(),
        &at.branch,
        done.routes,
        &defaults,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    fn located(state: &str) -> Located {
        let config = AgentConfig::new(NodeKind::Gateway, "/d".into());
        let sandbox = SandboxName::parse("qa").unwrap();
        let repository = ServiceName::parse("erangel").unwrap();
        Located {
            gateway: SandboxGateway::new(&config, &sandbox, &repository),
            sandbox,
            repository,
            branch: "main".into(),
            state: state.into(),
        }
    }

    #[test]
    fn route_change_on_a_stopped_gateway_is_not_found_not_internal() {
        assert!(not_running(&located("running"), "gateway").is_ok());
        for state in ["exited", "created", ""] {
            let e = not_running(&located(state), "gateway").unwrap_err();
            assert_eq!(e.code, ErrorCode::NotFound, "{state}");
            assert!(e.message.contains("is not running"), "{}", e.message);
        }
    }
}
