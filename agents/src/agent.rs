//! Starting an agent, serving its subjects, and stopping it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sdp_contract::AgentKeys;
use sdp_contract::subjects;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::build::GoBuild;
use crate::config::AgentConfig;
use crate::docker::DockerEngine;
use crate::error::Error;
use crate::locks::Locks;
use crate::reporter::Reporter;
use crate::routes::defaults::OcpDefaults;
use crate::spool::Spool;
use crate::{git, ops, presence};

/// Requests handled at once; more wait their turn instead of piling up.
const CONCURRENT_REQUESTS: usize = 64;
/// Spools older than this are removed at start.
const SPOOL_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);

/// What every task of one agent shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: AgentConfig,
    pub keys: AgentKeys,
    pub nats: async_nats::Client,
    pub docker: DockerEngine,
    pub spool: Spool,
    pub ocp_defaults: OcpDefaults,
    pub askpass: PathBuf,
    pub go: GoBuild,
    pub repo_locks: Locks,
    pub worktree_locks: Locks,
    /// Deployments and requests in flight, awaited on shutdown.
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

/// A running micro or gateway agent.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Serves `sdp.agent.{node}.>` on an already-connected NATS client until
    /// `shutdown` is cancelled. Returns once the agent is subscribed and has
    /// announced itself.
    pub async fn start(
        nats: async_nats::Client,
        config: AgentConfig,
        shutdown: CancellationToken,
    ) -> Result<AgentHandle, Error> {
        let config = config.checked()?;
        for dir in [&config.data_dir, &config.work_root] {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(Error::io("cannot create directory", dir))?;
        }
        let keys = AgentKeys::load_or_create(&config.data_dir.join("agent.key"))?;
        let askpass = git::install_askpass(&config.data_dir).map_err(Error::io(
            "cannot install the askpass helper in",
            &config.data_dir,
        ))?;
        let shared = Arc::new(Shared {
            go: GoBuild::new(&config),
            spool: Spool::new(&config.data_dir),
            ocp_defaults: OcpDefaults::new(&config.data_dir),
            docker: DockerEngine::new(),
            keys,
            nats: nats.clone(),
            askpass,
            repo_locks: Locks::new(),
            worktree_locks: Locks::new(),
            tracker: TaskTracker::new(),
            shutdown,
            config,
        });
        // Before taking requests: a new deployment's spool must not be
        // mistaken for an interrupted one.
        housekeeping(&shared).await;
        let subscriber = nats
            .subscribe(subjects::agent_all(&shared.config.node))
            .await?;
        let hello = presence::current(&shared).await;
        nats.publish(
            subjects::node_hello(&shared.config.node),
            sdp_contract::encode(&hello).into(),
        )
        .await?;
        tracing::info!(node = %shared.config.node, kind = shared.config.kind.as_str(),
            public_key = %hello.public_key, "agent started");

        shared.tracker.spawn(presence::heartbeat(shared.clone()));
        let public_key = shared.keys.public_key();
        let task = tokio::spawn(serve(shared, subscriber));
        Ok(AgentHandle { public_key, task })
    }
}

/// Handle on a started agent.
#[derive(Debug)]
pub struct AgentHandle {
    public_key: String,
    task: tokio::task::JoinHandle<()>,
}

impl AgentHandle {
    /// Base64 public key secrets for this agent are sealed to.
    pub fn public_key(&self) -> String {
        self.public_key.clone()
    }

    /// Resolves once the agent has stopped after shutdown: every request
    /// answered and every deployment in a final state.
    pub async fn stopped(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "agent task ended abnormally");
        }
    }
}

/// How long a stopping agent waits for the bus to take its last messages.
const LAST_WORDS: std::time::Duration = std::time::Duration::from_secs(3);

async fn serve(shared: Arc<Shared>, mut subscriber: async_nats::Subscriber) {
    let permits = Arc::new(Semaphore::new(CONCURRENT_REQUESTS));
    loop {
        let message = tokio::select! {
            m = subscriber.next() => m,
            _ = shared.shutdown.cancelled() => None,
        };
        let Some(message) = message else { break };
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p,
            _ = shared.shutdown.cancelled() => break,
        };
        let Ok(permit) = permit else { break };
        let shared2 = shared.clone();
        shared.tracker.spawn(async move {
            let _permit = permit;
            answer(&shared2, message).await;
        });
    }
    // Bounded: when the whole process shuts down the broker may already be
    // gone, and an unbounded flush would wait for a reconnect forever.
    let _ = tokio::time::timeout(LAST_WORDS, subscriber.unsubscribe()).await;
    shared.tracker.close();
    shared.tracker.wait().await;
    match tokio::time::timeout(LAST_WORDS, shared.nats.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not flush the last messages"),
        Err(_) => tracing::warn!("the bus did not take the last messages in time"),
    }
    tracing::info!(node = %shared.config.node, "agent stopped");
}

async fn answer(shared: &Arc<Shared>, message: async_nats::Message) {
    let op = subjects::parse_agent_op(&shared.config.node, &message.subject).unwrap_or("");
    let reply = ops::handle(shared, op, &message.payload).await;
    match message.reply {
        Some(to) => {
            if let Err(e) = shared.nats.publish(to, reply.into()).await {
                tracing::warn!(op, error = %e, "cannot send a reply");
            }
        }
        None => tracing::debug!(op, "request without a reply subject"),
    }
}

/// Closes deployments a previous run of the agent left unfinished, removes
/// the containers they had started (a deployment that ends `FAILED` leaves
/// nothing running), reports what does run, and removes old spools.
async fn housekeeping(shared: &Shared) {
    let mut interrupted = Vec::new();
    match shared.spool.ids().await {
        Ok(ids) => {
            for id in ids {
                match Reporter::close_interrupted(&shared.nats, &shared.spool, &id).await {
                    Ok(true) => {
                        tracing::warn!(deployment = %id,
                            "deployment interrupted by an agent restart marked FAILED");
                        interrupted.push(id);
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(deployment = %id, error = %e,
                        "cannot read the spool of a deployment"),
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list the spool"),
    }
    reconcile(shared, &interrupted).await;
    if let Err(e) = shared.spool.prune(SPOOL_RETENTION).await {
        tracing::warn!(error = %e, "cannot prune the spool");
    }
}

/// The engine is the truth about what runs: containers of interrupted
/// deployments go, the others are reported as found.
async fn reconcile(shared: &Shared, interrupted: &[String]) {
    let containers = match shared.docker.node_containers(&shared.config.node).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list containers to reconcile with");
            return;
        }
    };
    for c in containers {
        if interrupted.contains(&c.deployment) {
            match shared.docker.remove_container(&c.name).await {
                Ok(()) => tracing::warn!(container = %c.name, deployment = %c.deployment,
                    "removed the container of a deployment interrupted by a restart"),
                Err(e) => tracing::warn!(container = %c.name, error = %e,
                    "cannot remove the container of an interrupted deployment"),
            }
        } else {
            tracing::info!(container = %c.name, sandbox = %c.sandbox, service = %c.service,
                deployment = %c.deployment, state = %c.state, "found running");
        }
    }
}
