//! SDP's control plane: the one place that knows who is signed in, which
//! agents are connected, and what every deployment is doing.
//!
//! It talks to agents only over NATS (see `sdp-contract`): request-reply on
//! `sdp.agent.{node}.{op}` to ask for work, and one ordered subscription on
//! `sdp.deploy.*.*` to hear how that work goes. It keeps deployments in SQLite
//! ([`storage`]), log text in append-only files ([`logs`]) and sessions in
//! memory only ([`sessions`]): Bitbucket credentials never touch disk.
//!
//! | module | what |
//! |---|---|
//! | [`api`] | the `/api/v1` router, JSON body extraction, JSON error bodies |
//! | [`bus`] | request-reply to agents, sealing secrets to their keys |
//! | [`nodes`] | the registry of agents, fed by their presence messages |
//! | [`sessions`] | login through the gateway agent, cookies, session lookup |
//! | [`deployments`] | validation, the per-node build queue, dispatch, stop/restart/delete |
//! | [`environments`] | environments, secrets at rest, the layered view per sandbox |
//! | [`sandboxes`] | templates and sandboxes, their ports, deploying a sandbox |
//! | [`repositories`] | repositories from agents' presence, branches listed live |
//! | [`routes`] | per-sandbox route overrides, pushed to the gateway agent |
//! | [`audit`] | the audit trail: stored, queryable, published on `sdp.audit.*` |
//! | [`reconcile`] | settling queued deployments after a restart |
//! | [`openapi`] | the machine-readable description of the API |
//! | [`live`] | `WS /ws/deployments/{id}`: progress and log lines as JSON |
//! | [`changes`] | "something a list shows has changed", for live list pages |
//! | [`model`] | deployments and stages as the API shows them |
//! | [`ingest`] | applying agents' events and log lines, in order, filling gaps |
//! | [`storage`] | every SQL statement, behind the [`storage::Storage`] trait |
//! | [`secrets`] | encryption of secrets at rest, masking in logs |
//! | [`logs`] | per-deployment log files |
//! | [`error`] | [`ApiError`] (HTTP) and [`ControlError`] (library) |

// The OpenAPI document is one large `json!` literal.
#![recursion_limit = "512"]

pub mod api;
pub mod audit;
pub mod bus;
pub mod changes;
pub mod deployments;
pub mod environments;
pub mod error;
pub mod ingest;
pub mod live;
pub mod logs;
pub mod model;
pub mod nodes;
pub mod openapi;
pub mod reconcile;
pub mod repositories;
pub mod routes;
pub mod sandboxes;
pub mod secrets;
pub mod sessions;
pub mod storage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use error::{ApiError, ControlError};
pub use model::{Deployment, DeploymentFilter, Stage, StageStatus};
pub use nodes::NodeStatus;
pub use sessions::{LoginOutcome, SESSION_COOKIE, SessionUser};

use crate::bus::Bus;
use crate::changes::{Changes, Topic};
use crate::deployments::BuildQueue;
use crate::ingest::GapTracker;
use crate::logs::LogFiles;
use crate::nodes::NodeRegistry;
use crate::secrets::SecretKey;
use crate::sessions::Sessions;
use crate::storage::{PortRanges, SqliteStore, Storage};

/// Settings of the control plane. [`ControlConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Holds `sdp.db` (SQLite, WAL) and `logs/{deployment}.log`.
    pub data_dir: PathBuf,
    /// Node that builds and runs microservices.
    pub micro_node: String,
    /// Node that checks Bitbucket credentials and runs gateways.
    pub gateway_node: String,
    pub session_ttl: Duration,
    /// Inclusive range microservice ports are allocated from.
    pub micro_ports: (u16, u16),
    /// Inclusive range sandbox gateway ports are allocated from.
    pub gateway_ports: (u16, u16),
    /// The API gateway repository, as configured on the gateway agent.
    pub gateway_repository: String,
    /// Builds one node runs at once; more wait in a queue, in order.
    pub builds_per_node: usize,
    /// A build that reports no final state within this long frees its slot.
    pub build_timeout: Duration,
    /// How long a bus request may take before the agent counts as not answering.
    pub request_timeout: Duration,
    /// Login runs a real `git ls-remote`, which may take longer than other requests.
    pub auth_timeout: Duration,
    pub max_body_bytes: usize,
    /// Sets the `Secure` flag on the session cookie (when served over TLS).
    pub secure_cookies: bool,
}

impl ControlConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        ControlConfig {
            data_dir,
            micro_node: "micro".into(),
            gateway_node: "gateway".into(),
            session_ttl: Duration::from_secs(12 * 60 * 60),
            micro_ports: (9001, 9999),
            gateway_ports: (8080, 8999),
            gateway_repository: "erangel".into(),
            builds_per_node: 2,
            build_timeout: Duration::from_secs(30 * 60),
            request_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(60),
            max_body_bytes: 1024 * 1024,
            secure_cookies: false,
        }
    }
}

/// Handle on a running control plane. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

struct Inner {
    config: ControlConfig,
    store: Arc<dyn Storage>,
    bus: Bus,
    nats: async_nats::Client,
    nodes: NodeRegistry,
    sessions: Sessions,
    login_limiter: sessions::LoginLimiter,
    logs: LogFiles,
    secret_key: SecretKey,
    builds: BuildQueue,
    gaps: GapTracker,
    /// Secret values to mask in each deployment's log.
    masks: std::sync::Mutex<environments::Masks>,
    changes: Changes,
    shutdown: CancellationToken,
}

impl ControlPlane {
    /// Opens storage (running embedded migrations), subscribes to the bus, and
    /// keeps its background tasks running until `shutdown` is cancelled.
    pub async fn start(
        nats: async_nats::Client,
        config: ControlConfig,
        shutdown: CancellationToken,
    ) -> Result<ControlPlane, ControlError> {
        let logs = LogFiles::create(&config.data_dir).await?;
        let store: Arc<dyn Storage> =
            Arc::new(SqliteStore::open(&config.data_dir.join("sdp.db")).await?);
        Self::start_with_store(nats, config, store, logs, shutdown).await
    }

    /// [`ControlPlane::start`] on another storage backend (the data
    /// directory still holds the secrets key and the log files).
    pub async fn start_with_store(
        nats: async_nats::Client,
        config: ControlConfig,
        store: Arc<dyn Storage>,
        logs: LogFiles,
        shutdown: CancellationToken,
    ) -> Result<ControlPlane, ControlError> {
        let secret_key = SecretKey::load_or_create(&config.data_dir.join("secrets.key"))?;
        let changes = Changes::default();
        let nodes = NodeRegistry::new(changes.clone());

        // Subscribe before returning, so no presence or event published after
        // `start` is missed.
        let presence = subscribe(&nats, sdp_contract::subjects::NODE_ALL).await?;
        let events = subscribe(&nats, sdp_contract::subjects::DEPLOY_ALL).await?;
        bus::round_trip(&nats, config.request_timeout)
            .await
            .map_err(ControlError::Bus)?;

        tokio::spawn(nodes::listen(presence, nodes.clone(), shutdown.clone()));
        let sessions = Sessions::new(config.session_ttl);
        tokio::spawn(sessions.clone().sweep_until(shutdown.clone()));

        let bus = Bus::new(nats.clone(), nodes.clone(), config.request_timeout);
        let builds = BuildQueue::new(config.builds_per_node, config.build_timeout);
        let cp = ControlPlane {
            inner: Arc::new(Inner {
                config,
                store,
                bus,
                nats,
                nodes,
                sessions,
                login_limiter: sessions::LoginLimiter::default(),
                logs,
                secret_key,
                builds,
                gaps: GapTracker::default(),
                masks: std::sync::Mutex::default(),
                changes,
                shutdown: shutdown.clone(),
            }),
        };
        tokio::spawn(ingest::run(events, cp.clone(), shutdown.clone()));
        // Settles deployments a previous run left queued; runs alongside,
        // as agents may take a moment to answer.
        tokio::spawn(reconcile::run(cp.clone()));
        Ok(cp)
    }

    pub fn port_ranges(&self) -> PortRanges {
        PortRanges {
            gateway: self.inner.config.gateway_ports,
            micro: self.inner.config.micro_ports,
        }
    }

    /// Moves whenever something under `topic` changes (see [`changes`]).
    pub fn changes(&self, topic: Topic) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe(topic)
    }

    /// Tells live list pages to look again.
    pub(crate) fn changed(&self, topic: Topic) {
        self.inner.changes.fire(topic);
    }

    pub fn store(&self) -> &dyn Storage {
        self.inner.store.as_ref()
    }

    pub fn config(&self) -> &ControlConfig {
        &self.inner.config
    }

    /// The JSON API under `/api/v1`, state applied.
    pub fn api_router(&self) -> axum::Router {
        api::router(self.clone())
    }
}

async fn subscribe(
    nats: &async_nats::Client,
    subject: &'static str,
) -> Result<async_nats::Subscriber, ControlError> {
    nats.subscribe(subject)
        .await
        .map_err(|source| ControlError::Subscribe { subject, source })
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets
/// requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // The peer address feeds the per-address limit on failed sign-ins.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}
