//! `stop`, `restart` and `remove` of one deployed service (or a sandbox's
//! gateway), found by name and checked by its labels.

use std::path::Path;
use std::time::Duration;

use sdp_contract::{
    AgentError, DeploymentState, ErrorCode, EventKind, NodeKind, SandboxName, ServiceName,
    ServiceOutcome, ServiceRequest,
};

use super::{bad_name, body, configured, internal};
use crate::agent::Shared;
use crate::docker::labels;
use crate::gateway;
use crate::git::Git;
use crate::reporter::Reporter;
use crate::worktree;

/// How long `remove` waits for a deployment of the same service to end.
const REMOVE_WAIT: Duration = Duration::from_secs(120);

struct Resolved {
    sandbox: SandboxName,
    repository: ServiceName,
    clone: std::path::PathBuf,
    container: String,
    /// The deployment the container runs, if it exists.
    deployment: Option<String>,
    exists: bool,
}

async fn resolve(shared: &Shared, op: &str, payload: &[u8]) -> Result<Resolved, AgentError> {
    let request: ServiceRequest = body(op, payload)?;
    let sandbox = SandboxName::parse(&request.sandbox).map_err(bad_name)?;
    let (repository, clone) = configured(shared, &request.repository)?;
    let container = match shared.config.kind {
        NodeKind::Gateway => gateway::container_name(&sandbox),
        NodeKind::Micro | NodeKind::Infra => format!("sandbox-{sandbox}-{repository}"),
    };
    let details = shared
        .docker
        .details(&container)
        .await
        .map_err(|e| internal(e.to_string()))?;
    let deployment = details
        .as_ref()
        .and_then(|d| d.labels.get(labels::DEPLOYMENT).cloned());
    if let (Some(wanted), Some(_)) = (&request.deployment, &details)
        && deployment.as_ref() != Some(wanted)
    {
        return Err(AgentError::new(
            ErrorCode::NotFound,
            format!(
                "{container} runs deployment {}, not {wanted}",
                deployment.as_deref().unwrap_or("(unlabelled)")
            ),
        ));
    }
    Ok(Resolved {
        exists: details.is_some(),
        sandbox,
        repository,
        clone,
        container,
        deployment,
    })
}

fn missing(container: &str, node: &str) -> AgentError {
    AgentError::new(
        ErrorCode::NotFound,
        format!("no container {container} on node '{node}'"),
    )
}

async fn state_of(shared: &Shared, container: &str) -> String {
    match shared.docker.details(container).await {
        Ok(Some(d)) => d.state,
        Ok(None) => "removed".to_owned(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Tells the deployment's own stream about the change, so the control
/// plane sees it the way it sees every state: spooled, numbered, replayable.
async fn report(shared: &Shared, deployment: Option<&str>, state: DeploymentState, reason: &str) {
    let Some(id) = deployment.filter(|id| crate::spool::valid_id(id)) else {
        return;
    };
    match Reporter::resume(&shared.nats, &shared.spool, id).await {
        Ok(mut reporter) => {
            reporter
                .event(EventKind::State {
                    state,
                    reason: Some(reason.to_owned()),
                    commit: None,
                    container: None,
                })
                .await;
        }
        Err(e) => tracing::debug!(deployment = id, error = %e, "no spool to report to"),
    }
}

pub(super) async fn stop(shared: &Shared, payload: &[u8]) -> Result<ServiceOutcome, AgentError> {
    stop_or_restart(shared, payload, false).await
}

pub(super) async fn restart(shared: &Shared, payload: &[u8]) -> Result<ServiceOutcome, AgentError> {
    stop_or_restart(shared, payload, true).await
}

/// Stop and restart differ only in what Docker is asked and which state the
/// deployment is reported in.
async fn stop_or_restart(
    shared: &Shared,
    payload: &[u8],
    restart: bool,
) -> Result<ServiceOutcome, AgentError> {
    let (op, state, said) = if restart {
        ("restart", DeploymentState::Running, "restarted")
    } else {
        ("stop", DeploymentState::Stopped, "stopped")
    };
    let r = resolve(shared, op, payload).await?;
    if !r.exists {
        return Err(missing(&r.container, &shared.config.node));
    }
    let done = if restart {
        shared.docker.restart(&r.container).await
    } else {
        shared.docker.stop(&r.container).await
    };
    done.map_err(|e| internal(e.to_string()))?;
    report(shared, r.deployment.as_deref(), state, said).await;
    Ok(ServiceOutcome {
        state: state_of(shared, &r.container).await,
        container: r.container,
        network_removed: false,
        worktree_removed: false,
    })
}

/// Removes the container, the sandbox's worktree of the repository, and
/// the sandbox's network once nothing of the sandbox runs any more.
pub(super) async fn remove(shared: &Shared, payload: &[u8]) -> Result<ServiceOutcome, AgentError> {
    let r = resolve(shared, "remove", payload).await?;
    let config = &shared.config;
    let tree = worktree::path(&config.work_root, &r.sandbox, &r.repository);
    // Not under a running deployment's feet.
    let slot = shared.worktree_locks.get(&tree.display().to_string());
    let _slot = tokio::time::timeout(REMOVE_WAIT, slot.lock_owned())
        .await
        .map_err(|_| {
            internal(format!(
                "a deployment of {} in sandbox {} is still running",
                r.repository, r.sandbox
            ))
        })?;
    shared
        .docker
        .remove_container(&r.container)
        .await
        .map_err(|e| internal(e.to_string()))?;
    if r.exists {
        report(
            shared,
            r.deployment.as_deref(),
            DeploymentState::Stopped,
            "removed",
        )
        .await;
    }
    let files = config.data_dir.join("files").join(&r.container);
    if let Err(e) = tokio::fs::remove_dir_all(&files).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %files.display(), error = %e, "cannot remove environment files");
    }
    let worktree_removed = remove_worktree(shared, &r.repository, &r.clone, &tree)
        .await
        .map_err(internal)?;
    let network = format!("sandbox-{}", r.sandbox);
    let network_removed = shared
        .docker
        .remove_network_if_unused(&network, r.sandbox.as_str())
        .await
        .map_err(|e| internal(e.to_string()))?;
    Ok(ServiceOutcome {
        container: r.container,
        state: "removed".to_owned(),
        network_removed,
        worktree_removed,
    })
}

/// `git worktree remove --force`, or deleting the directory and pruning
/// when git no longer knows it. Returns whether there was one.
async fn remove_worktree(
    shared: &Shared,
    repository: &ServiceName,
    clone: &Path,
    tree: &Path,
) -> Result<bool, String> {
    if !tokio::fs::try_exists(tree).await.unwrap_or(false) {
        return Ok(false);
    }
    let config = &shared.config;
    let lock = shared.repo_locks.get(repository.as_str());
    let _turn = lock.lock().await;
    let git = Git::new(&config.git_program, clone);
    let target = tree.display().to_string();
    let removed = git
        .spawn(
            ["worktree", "remove", "--force", &target],
            config.git_timeout,
        )
        .map_err(|e| e.to_string())?
        .collect(&shared.shutdown)
        .await
        .is_ok_and(|done| done.success());
    if !removed {
        if let Err(e) = tokio::fs::remove_dir_all(tree).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(format!("cannot remove {}: {e}", tree.display()));
        }
        let _ = git
            .spawn(["worktree", "prune"], config.git_timeout)
            .map_err(|e| e.to_string())?
            .collect(&shared.shutdown)
            .await;
    }
    // The sandbox's directory (`{work_root}/{sandbox}`) goes with its last
    // worktree; otherwise every deleted sandbox left an empty directory
    // behind. `remove_dir` only removes an empty one, so a worktree of
    // another repository of the sandbox keeps it; and `git worktree add`
    // makes it again should a deployment race us.
    if let Some(sandbox_dir) = tree.parent()
        && let Err(e) = tokio::fs::remove_dir(sandbox_dir).await
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        tracing::warn!(dir = %sandbox_dir.display(), error = %e, "cannot remove the sandbox's worktree directory");
    }
    Ok(true)
}
