//! Storage: every SQL statement of the control plane lives behind the
//! [`Storage`] trait, so the rest of the crate never sees SQL and a
//! PostgreSQL backend can serve the same schema later. [`sqlite`] is the
//! default backend. Every method that changes several rows runs as one
//! transaction: a failed request leaves nothing half-written.

pub mod sqlite;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sdp_contract::{DeployEvent, DeploymentState};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::model::{Deployment, DeploymentFilter};

pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Words meant for the user: "sandbox \"qa\" not found".
    #[error("{0}")]
    NotFound(String),
    /// A duplicate name, a port already taken, a name still in use.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::Invalid(m) => ApiError::bad_request(m),
            StoreError::Db(e) => ApiError::internal(format_args!("database: {e}")),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What became of a message carrying sequence number `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqOutcome {
    /// No such deployment: nothing was changed.
    Unknown,
    /// Already applied (a replay, or the bus delivered it twice).
    Duplicate { last: u64 },
    /// Not applied: messages between `last` and this one are missing. The
    /// caller asks the agent to replay from `last + 1`, which resends this
    /// one too, in order.
    Gap { last: u64 },
    /// Applied; `previous` is the sequence number applied before it.
    Applied { previous: u64 },
}

/// Which node kind a port is allocated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    Gateway,
    Micro,
}

impl PortKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PortKind::Gateway => "gateway",
            PortKind::Micro => "micro",
        }
    }
}

/// Inclusive port ranges per node kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRanges {
    pub gateway: (u16, u16),
    pub micro: (u16, u16),
}

impl PortRanges {
    pub fn of(&self, kind: PortKind) -> (u16, u16) {
        match kind {
            PortKind::Gateway => self.gateway,
            PortKind::Micro => self.micro,
        }
    }
}

/// The service name a sandbox's gateway port is allocated under.
pub const GATEWAY_SERVICE: &str = "gateway";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortAllocation {
    pub kind: PortKind,
    pub port: u16,
    pub sandbox: String,
    pub service: String,
}

/// Variables, secrets and files of one layer. Secret values are ciphertext
/// here: storage never sees a secret in clear.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    pub variables: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    pub files: BTreeMap<String, String>,
}

impl Layer {
    pub fn is_empty(&self) -> bool {
        self.variables.is_empty() && self.secrets.is_empty() && self.files.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentRecord {
    pub name: String,
    pub layer: Layer,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where a sandbox's service comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceSource {
    /// Built from this branch and run in the sandbox.
    Branch(String),
    /// Not deployed: the gateway sends it to OCP.
    Ocp,
}

impl ServiceSource {
    pub fn branch(&self) -> Option<&str> {
        match self {
            ServiceSource::Branch(b) => Some(b),
            ServiceSource::Ocp => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteMode {
    Sandbox,
    Ocp,
}

impl RouteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteMode::Sandbox => "sandbox",
            RouteMode::Ocp => "ocp",
        }
    }

    pub fn parse(s: &str) -> Option<RouteMode> {
        match s {
            "sandbox" => Some(RouteMode::Sandbox),
            "ocp" => Some(RouteMode::Ocp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRecord {
    pub name: String,
    pub environment: Option<String>,
    pub gateway_branch: String,
    pub services: BTreeMap<String, ServiceSource>,
    pub layer: Layer,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxService {
    pub source: ServiceSource,
    /// Allocated micro port; `None` for OCP services.
    pub port: Option<u16>,
    pub route: RouteMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    pub name: String,
    pub template: Option<String>,
    pub environment: Option<String>,
    pub gateway_branch: String,
    pub gateway_port: u16,
    pub services: BTreeMap<String, SandboxService>,
    pub layer: Layer,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A sandbox as created or replaced: ports are requested, not held yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    pub name: String,
    pub template: Option<String>,
    pub environment: Option<String>,
    pub gateway_branch: String,
    pub gateway_port: Option<u16>,
    pub services: BTreeMap<String, ServiceSpec>,
    pub layer: Layer,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub source: ServiceSource,
    pub port: Option<u16>,
    /// `None`: keep the current mode, or the default for a new service.
    pub route: Option<RouteMode>,
}

/// A deployment to queue: stored together with its port allocation (and, for
/// a microservice, the sandbox's record of which branch it runs).
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub deployment: Deployment,
    pub kind: PortKind,
    pub requested_port: Option<u16>,
}

/// Audit records are published on `sdp.audit.{action}`, so their type is
/// part of the bus contract.
pub use sdp_contract::AuditRecord;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub user: Option<String>,
    pub sandbox: Option<String>,
    pub repository: Option<String>,
    pub action: Option<String>,
    pub limit: u32,
}

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    // ------------------------------------------------------------ deployments
    async fn insert_deployment(&self, d: &Deployment) -> StoreResult<()>;
    /// Stores a deployment with its port: the sandbox must exist; the port is
    /// the service's allocation (made now if it has none, moved if another
    /// free one is requested). Returns the deployment as stored.
    async fn queue_deployment(
        &self,
        new: &NewDeployment,
        ranges: &PortRanges,
    ) -> StoreResult<Deployment>;
    async fn deployment(&self, id: &str) -> StoreResult<Option<Deployment>>;
    async fn deployments(&self, filter: &DeploymentFilter) -> StoreResult<Vec<Deployment>>;
    /// Queued deployments: those a restarted control plane must settle.
    async fn queued_deployments(&self) -> StoreResult<Vec<(Deployment, bool)>>;
    async fn mark_dispatched(&self, id: &str, at: DateTime<Utc>) -> StoreResult<()>;
    /// Marks a deployment the agent never took on as failed. Only a queued
    /// one: an agent's own report of a later state wins.
    async fn fail_queued(&self, id: &str, reason: &str, at: DateTime<Utc>) -> StoreResult<bool>;
    /// Sets the state after an agent carried out stop or restart.
    async fn set_state(
        &self,
        id: &str,
        state: DeploymentState,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;
    async fn delete_deployment(&self, id: &str) -> StoreResult<bool>;
    /// Records that messages `seqs` of deployment `id` (a run of log lines)
    /// are taken, in one write. A gap before the run is refused unless
    /// `accept_gap` (the agent cannot replay it); numbers already taken are
    /// skipped: `Applied { previous }` means the lines after `previous` are
    /// new.
    async fn advance_seq(
        &self,
        id: &str,
        seqs: std::ops::RangeInclusive<u64>,
        accept_gap: bool,
    ) -> StoreResult<SeqOutcome>;
    /// Applies one agent event: stage and deployment changes and the sequence
    /// number, in one transaction.
    async fn apply_event(&self, ev: &DeployEvent, accept_gap: bool) -> StoreResult<SeqOutcome>;
    async fn last_seq(&self, id: &str) -> StoreResult<Option<u64>>;

    // ------------------------------------------------------------ environments
    async fn environments(&self) -> StoreResult<Vec<EnvironmentRecord>>;
    async fn environment(&self, name: &str) -> StoreResult<Option<EnvironmentRecord>>;
    async fn create_environment(&self, env: &EnvironmentRecord) -> StoreResult<()>;
    async fn update_environment(&self, env: &EnvironmentRecord) -> StoreResult<()>;
    /// Refused while a template or sandbox uses it.
    async fn delete_environment(&self, name: &str) -> StoreResult<()>;

    // ------------------------------------------------------------ templates
    async fn templates(&self) -> StoreResult<Vec<TemplateRecord>>;
    async fn template(&self, name: &str) -> StoreResult<Option<TemplateRecord>>;
    async fn create_template(&self, t: &TemplateRecord) -> StoreResult<()>;
    async fn update_template(&self, t: &TemplateRecord) -> StoreResult<()>;
    /// Refused while a sandbox uses it.
    async fn delete_template(&self, name: &str) -> StoreResult<()>;

    // ------------------------------------------------------------ sandboxes
    async fn sandboxes(&self) -> StoreResult<Vec<SandboxRecord>>;
    async fn sandbox(&self, name: &str) -> StoreResult<Option<SandboxRecord>>;
    /// Creates the sandbox and allocates its ports, all or nothing.
    async fn create_sandbox(
        &self,
        spec: &SandboxSpec,
        ranges: &PortRanges,
    ) -> StoreResult<SandboxRecord>;
    /// Replaces the sandbox; ports of removed services are released, ports of
    /// kept services stay unless another is requested.
    async fn update_sandbox(
        &self,
        spec: &SandboxSpec,
        ranges: &PortRanges,
    ) -> StoreResult<SandboxRecord>;
    /// Deletes the sandbox and releases its ports.
    async fn delete_sandbox(&self, name: &str) -> StoreResult<()>;
    async fn set_route_mode(
        &self,
        sandbox: &str,
        service: &str,
        mode: RouteMode,
    ) -> StoreResult<()>;
    async fn port_allocations(&self) -> StoreResult<Vec<PortAllocation>>;

    // ------------------------------------------------------------ audit
    async fn insert_audit(&self, record: &AuditRecord) -> StoreResult<()>;
    async fn audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>>;
}

#[cfg(test)]
mod tests {
    /// The schema must stay servable by PostgreSQL: no SQLite-only types,
    /// keywords or functions in the migrations.
    #[test]
    fn migrations_use_portable_sql_only() {
        let migrations = [
            include_str!("../../migrations/0001_deployments.sql"),
            include_str!("../../migrations/0002_sandboxes.sql"),
        ];
        let sqlite_only = [
            "AUTOINCREMENT",
            "INSERT OR",
            "REPLACE INTO",
            "WITHOUT ROWID",
            "DATETIME(",
            "STRFTIME",
            "PRAGMA",
            "GLOB",
            " BLOB",
        ];
        for sql in migrations {
            let code: String = sql
                .lines()
                .map(|l| l.split("--").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            let upper = code.to_uppercase();
            for word in sqlite_only {
                assert!(!upper.contains(word), "{word} is SQLite-only");
            }
        }
    }
}
