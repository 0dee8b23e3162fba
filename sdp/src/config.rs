//! Configuration files (TOML) with `SDP_*` environment overrides, read with
//! the `config` crate and turned into each library's own config struct.
//!
//! Environment keys use `__` between levels: `SDP_SERVER__LISTEN`,
//! `SDP_AGENT__NATS_URL`, `SDP_AGENT__REPOSITORIES__ACCOUNT`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use sdp_contract::NodeKind;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    pub agent: Option<AgentSection>,
}

#[derive(Debug, Deserialize)]
pub struct ServerSection {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// External NATS servers (comma separated). Unset: run the embedded broker.
    pub nats_url: Option<String>,
    /// Where the embedded broker listens for agents.
    #[serde(default = "default_broker_listen")]
    pub broker_listen: SocketAddr,
    #[serde(default = "micro")]
    pub micro_node: String,
    #[serde(default = "gateway")]
    pub gateway_node: String,
    /// First and last host port handed to microservices.
    pub micro_ports: Option<(u16, u16)>,
    #[serde(default)]
    pub secure_cookies: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: default_listen(),
            data_dir: default_data_dir(),
            nats_url: None,
            broker_listen: default_broker_listen(),
            micro_node: micro(),
            gateway_node: gateway(),
            micro_ports: None,
            secure_cookies: false,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct AgentSection {
    pub kind: NodeKind,
    /// Defaults to the kind, so a single-VM setup reads `sdp.agent.micro.*`.
    pub node: Option<String>,
    #[serde(default = "default_nats_url")]
    pub nats_url: String,
    /// Host name or address other machines reach this VM's ports on.
    pub address: Option<String>,
    #[serde(default = "default_agent_data_dir")]
    pub data_dir: PathBuf,
    pub work_root: Option<PathBuf>,
    #[serde(default)]
    pub repositories: BTreeMap<String, PathBuf>,
    pub runtime_image: Option<String>,
    pub gateway_image: Option<String>,
    pub container_port: Option<u16>,
    pub publish_host: Option<String>,
    pub auth_repository: Option<String>,
    #[serde(default)]
    pub build_env: BTreeMap<String, String>,
    pub heartbeat_seconds: Option<u64>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8700))
}
fn default_broker_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4222))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/sdp")
}
fn default_agent_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/sdp-agent")
}
fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".to_owned()
}
fn micro() -> String {
    "micro".to_owned()
}
fn gateway() -> String {
    "gateway".to_owned()
}

/// Reads `path` (if any), then `SDP_*` overrides.
pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let mut builder = config::Config::builder();
    if let Some(path) = path {
        builder = builder.add_source(config::File::from(path).required(true));
    }
    let cfg = builder
        .add_source(
            config::Environment::with_prefix("SDP")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .context("reading configuration")?;
    cfg.try_deserialize().context("invalid configuration")
}

impl ServerSection {
    pub fn control_config(&self) -> sdp_control::ControlConfig {
        let mut c = sdp_control::ControlConfig::new(self.data_dir.clone());
        c.micro_node = self.micro_node.clone();
        c.gateway_node = self.gateway_node.clone();
        if let Some(range) = self.micro_ports {
            c.micro_ports = range;
        }
        c.secure_cookies = self.secure_cookies;
        c
    }
}

impl AgentSection {
    pub fn agent_config(&self) -> sdp_agents::AgentConfig {
        let mut c = sdp_agents::AgentConfig::new(self.kind, self.data_dir.clone());
        if let Some(node) = &self.node {
            c.node = node.clone();
        }
        if let Some(address) = &self.address {
            c.address = address.clone();
        }
        c.work_root = self
            .work_root
            .clone()
            .unwrap_or_else(|| self.data_dir.join("worktrees"));
        c.repositories = self.repositories.clone();
        if let Some(image) = &self.runtime_image {
            c.runtime_image = image.clone();
        }
        if let Some(image) = &self.gateway_image {
            c.gateway_image = image.clone();
        }
        if let Some(port) = self.container_port {
            c.container_port = port;
        }
        if let Some(host) = &self.publish_host {
            c.publish_host = host.clone();
        }
        c.auth_repository = self.auth_repository.clone();
        c.build_env.extend(self.build_env.clone());
        if let Some(secs) = self.heartbeat_seconds {
            c.heartbeat_interval = Duration::from_secs(secs);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        for file in [
            "sdp-server.toml",
            "sdp-agent-micro.toml",
            "sdp-agent-gateway.toml",
        ] {
            let cfg = load(Some(&root.join(file))).unwrap_or_else(|e| panic!("{file}: {e:#}"));
            if let Some(agent) = cfg.agent {
                let c = agent.agent_config();
                assert_eq!(c.node, agent.kind.as_str(), "{file}: node defaults to kind");
            }
        }
    }
}
