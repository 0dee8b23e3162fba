//! Message bodies, one type per message, serde-encoded as JSON inside an
//! [`crate::Envelope`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::seal::Sealed;

/// What a node does. By default a node is named after its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Micro,
    Gateway,
    Infra,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Micro => "micro",
            NodeKind::Gateway => "gateway",
            NodeKind::Infra => "infra",
        }
    }
}

impl std::str::FromStr for NodeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "micro" => Ok(NodeKind::Micro),
            "gateway" => Ok(NodeKind::Gateway),
            "infra" => Ok(NodeKind::Infra),
            other => Err(format!(
                "unknown node kind {other:?} (expected micro, gateway or infra)"
            )),
        }
    }
}

/// `sdp.node.{node}.hello` and `.heartbeat`, and the reply to the `hello` op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    pub node: String,
    pub kind: NodeKind,
    /// The agent's build version.
    pub version: String,
    /// Base64 X25519 public key: secrets for this agent are sealed to it.
    pub public_key: String,
    /// Host name or address other machines reach this node's published ports on.
    pub address: String,
    /// Repositories configured on this node (no discovery).
    pub repositories: Vec<String>,
    /// SDP containers running on this node, found by their `sdp.*` labels.
    #[serde(default)]
    pub containers: Vec<ContainerInfo>,
}

/// An SDP-managed container as the agent sees it in the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub name: String,
    pub sandbox: String,
    pub service: String,
    pub deployment: String,
    pub state: String,
}

/// Body of `sdp.agent.{node}.auth`: check credentials with a real git operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthRequest {
    pub credentials: Sealed,
}

/// Body of `sdp.agent.{node}.deploy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRequest {
    /// Deployment id, chosen by the control plane.
    pub deployment: String,
    pub sandbox: String,
    /// Repository (service) name as configured on the agent.
    pub repository: String,
    pub branch: String,
    /// Host port to publish the service on.
    pub port: u16,
    /// Sealed [`crate::Credentials`].
    pub credentials: Sealed,
    /// Sealed [`DeployEnvironment`]: variables may hold secrets, so the whole
    /// environment travels sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Sealed>,
}

/// Variables and files injected into a deployment's container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeployEnvironment {
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// Values the agent masks in every log line it sends.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// The reply to a request the agent takes on: long work reports on
/// `sdp.deploy.{id}.*` afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub accepted: bool,
}

impl Ack {
    pub fn accepted() -> Self {
        Ack { accepted: true }
    }
}

/// The reply to `auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthOutcome {
    /// The user name git accepted.
    pub user: String,
}

/// Every request-reply answer: the body, or an error the control plane can
/// show to the user as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply<T> {
    Ok(T),
    Error(AgentError),
}

impl<T> Reply<T> {
    pub fn into_result(self) -> Result<T, AgentError> {
        match self {
            Reply::Ok(t) => Ok(t),
            Reply::Error(e) => Err(e),
        }
    }
}

impl<T> From<Result<T, AgentError>> for Reply<T> {
    fn from(r: Result<T, AgentError>) -> Self {
        match r {
            Ok(t) => Reply::Ok(t),
            Err(e) => Reply::Error(e),
        }
    }
}

/// An agent's refusal or failure, worded for the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub code: ErrorCode,
    pub message: String,
}

impl AgentError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AgentError {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request itself is wrong (bad name, unknown repository, ...).
    BadRequest,
    /// Git refused the credentials.
    Unauthorized,
    NotFound,
    /// Sealed data could not be opened: the agent's key changed.
    Sealed,
    Internal,
}

/// Lifecycle of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentState {
    Queued,
    Running,
    Failed,
    Stopped,
}

impl DeploymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Queued => "QUEUED",
            DeploymentState::Running => "RUNNING",
            DeploymentState::Failed => "FAILED",
            DeploymentState::Stopped => "STOPPED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "QUEUED" => Some(DeploymentState::Queued),
            "RUNNING" => Some(DeploymentState::Running),
            "FAILED" => Some(DeploymentState::Failed),
            "STOPPED" => Some(DeploymentState::Stopped),
            _ => None,
        }
    }

    /// Whether no further event will change this state on its own.
    pub fn is_final(self) -> bool {
        !matches!(self, DeploymentState::Queued)
    }
}

/// Stage labels, as users see them.
pub mod stages {
    pub const GIT_RESET: &str = "git reset";
    pub const GIT_FETCH: &str = "git fetch";
    pub const GIT_CHECKOUT: &str = "git checkout";
    pub const GIT_PULL: &str = "git pull";
    pub const GO_BUILD: &str = "go build";
    pub const COMPOSER_INSTALL: &str = "composer install";
    pub const START_CONTAINER: &str = "start container";
    pub const APPLY_ROUTES: &str = "apply routes";

    /// The micro agent's pipeline, in order.
    pub const MICRO: [&str; 5] = [GIT_FETCH, GIT_CHECKOUT, GIT_PULL, GO_BUILD, START_CONTAINER];

    /// The gateway agent's pipeline, in order.
    pub const GATEWAY: [&str; 7] = [
        GIT_RESET,
        GIT_FETCH,
        GIT_CHECKOUT,
        GIT_PULL,
        COMPOSER_INSTALL,
        START_CONTAINER,
        APPLY_ROUTES,
    ];
}

/// `sdp.deploy.{id}.event`. `seq` is shared with the deployment's log lines,
/// so one counter shows any gap in either stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployEvent {
    pub deployment: String,
    pub seq: u64,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    StageStarted {
        stage: String,
    },
    StageCompleted {
        stage: String,
    },
    StageFailed {
        stage: String,
        reason: String,
    },
    /// The deployment reached a state (`RUNNING`, `FAILED`, `STOPPED`).
    State {
        state: DeploymentState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
    },
}

/// Which output a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// The agent's own narration of what it does.
    Agent,
}

/// `sdp.deploy.{id}.log`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub deployment: String,
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub stage: String,
    pub stream: LogStream,
    pub line: String,
}

/// Body of `sdp.agent.{node}.replay`: resend a deployment's events and log
/// lines from `from_seq` on (inclusive) out of the agent's spool, after the
/// control plane saw a gap. Answered with [`Ack`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRequest {
    pub deployment: String,
    pub from_seq: u64,
}

/// `sdp.audit.{action}`: one state-changing action, who did it and how it
/// ended. Also what `GET /api/v1/audit` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: String,
    pub at: DateTime<Utc>,
    pub user: String,
    pub action: String,
    /// `ok` or `error`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub sandbox: Option<String>,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub environment: Option<String>,
    pub deployment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode};

    #[test]
    fn event_wire_shape_is_flat_and_tagged() {
        let ev = DeployEvent {
            deployment: "d1".into(),
            seq: 3,
            at: DateTime::from_timestamp(0, 0).unwrap(),
            kind: EventKind::StageFailed {
                stage: stages::GIT_CHECKOUT.into(),
                reason: "no such branch".into(),
            },
        };
        let json: serde_json::Value = serde_json::from_slice(&encode(&ev)).unwrap();
        assert_eq!(json["event"], "stage_failed");
        assert_eq!(json["stage"], "git checkout");
        assert_eq!(json["seq"], 3);
        assert_eq!(decode::<DeployEvent>(&encode(&ev)).unwrap(), ev);
    }

    #[test]
    fn states_are_screaming() {
        assert_eq!(
            serde_json::to_string(&DeploymentState::Running).unwrap(),
            "\"RUNNING\""
        );
        for s in ["QUEUED", "RUNNING", "FAILED", "STOPPED"] {
            assert_eq!(DeploymentState::parse(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn reply_is_ok_or_error() {
        let r: Reply<Ack> = Reply::Error(AgentError::new(ErrorCode::BadRequest, "bad"));
        let json = String::from_utf8(encode(&r)).unwrap();
        assert!(json.contains("\"error\""), "{json}");
        let back: Reply<Ack> = decode(json.as_bytes()).unwrap();
        assert_eq!(back.into_result().unwrap_err().message, "bad");
    }
}
