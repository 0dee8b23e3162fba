//! What the control plane knows about deployments, shaped as the JSON API
//! shows it (SPEC §7: these field names are a public contract).

use chrono::{DateTime, Utc};
use sdp_contract::DeploymentState;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployment {
    pub id: String,
    pub sandbox: String,
    pub repository: String,
    pub branch: String,
    /// Agent node the deployment was sent to.
    pub node: String,
    /// User name of whoever asked for it.
    pub user: String,
    pub state: DeploymentState,
    pub port: u16,
    /// Commit the agent built, once known.
    pub commit: Option<String>,
    pub container: Option<String>,
    pub failed_stage: Option<String>,
    pub reason: Option<String>,
    /// Environment whose variables, secrets and files the deployment got.
    pub environment: Option<String>,
    /// In pipeline order, pending stages included.
    pub stages: Vec<Stage>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    pub name: String,
    pub status: StageStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Pending,
    Running,
    Completed,
    Failed,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Pending => "pending",
            StageStatus::Running => "running",
            StageStatus::Completed => "completed",
            StageStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            StageStatus::Pending,
            StageStatus::Running,
            StageStatus::Completed,
            StageStatus::Failed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// `GET /deployments?sandbox=&repository=&user=&state=`; every field narrows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentFilter {
    pub sandbox: Option<String>,
    pub repository: Option<String>,
    pub user: Option<String>,
    pub state: Option<DeploymentState>,
    /// Newest first, at most this many.
    pub limit: u32,
}
