//! Pages as pure functions from view models to markup: no I/O, so every page
//! is tested by rendering it. Maud escapes every interpolated string; nothing
//! here uses `PreEscaped` on user or log text.

pub mod deployment;
pub mod deployments;
pub mod error;
pub mod layout;
pub mod login;

use chrono::{DateTime, Utc};
use sdp_contract::DeploymentState;

/// `2024-05-01 09:30:12 UTC`, or a dash when not yet.
pub fn time(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "—".to_owned())
}

/// CSS class of a state badge.
pub fn state_class(state: DeploymentState) -> String {
    format!("state state-{}", state.as_str().to_ascii_lowercase())
}
