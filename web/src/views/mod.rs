//! Pages as pure functions from view models to markup: no I/O, so every page
//! is tested by rendering it. Maud escapes every interpolated string; nothing
//! here uses `PreEscaped` on user or log text.

pub mod audit;
pub mod deploy;
pub mod deployment;
pub mod deployments;
pub mod environments;
pub mod error;
pub mod layout;
pub mod login;
pub mod nodes;
pub mod qr;
pub mod sandboxes;
pub mod templates;

use chrono::{DateTime, Utc};
use sdp_contract::DeploymentState;

/// Who is looking, and the CSRF token their forms carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    pub name: String,
    pub csrf: String,
}

/// `2024-05-01 09:30:12 UTC`, or a dash when not yet.
pub fn time(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "—".to_owned())
}

/// `0.4 s`, `12 s`, `3 min 05 s`: a stage's duration.
pub fn duration(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Option<String> {
    let ms = (to? - from?).num_milliseconds().max(0);
    Some(if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 60_000 {
        format!("{} s", ms / 1000)
    } else {
        format!("{} min {:02} s", ms / 60_000, (ms / 1000) % 60)
    })
}

/// CSS class of a state badge.
pub fn state_class(state: DeploymentState) -> String {
    format!("state state-{}", state.as_str().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[test]
    fn durations_read_naturally() {
        let t = Utc::now();
        let d = |ms| duration(Some(t), Some(t + TimeDelta::milliseconds(ms))).unwrap();
        assert_eq!(d(420), "0.4 s");
        assert_eq!(d(12_300), "12 s");
        assert_eq!(d(185_000), "3 min 05 s");
        assert_eq!(duration(Some(t), None), None);
    }
}
