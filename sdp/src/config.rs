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
    /// User and password on the external NATS servers, when they require
    /// them (user default `sdp-control`). Prefer `SDP_SERVER__NATS_PASSWORD`
    /// in the environment over the file.
    pub nats_user: Option<String>,
    pub nats_password: Option<String>,
    /// Where the embedded broker listens for agents.
    #[serde(default = "default_broker_listen")]
    pub broker_listen: SocketAddr,
    #[serde(default = "micro")]
    pub micro_node: String,
    #[serde(default = "gateway")]
    pub gateway_node: String,
    /// First and last host port handed to microservices.
    pub micro_ports: Option<(u16, u16)>,
    /// First and last host port handed to sandbox gateways.
    pub gateway_ports: Option<(u16, u16)>,
    /// The API gateway repository, as configured on the gateway agent.
    pub gateway_repository: Option<String>,
    /// Builds one node runs at once; more wait in a queue, in order.
    pub builds_per_node: Option<usize>,
    /// A build that reports no final state within this long frees its slot.
    pub build_timeout_seconds: Option<u64>,
    /// How long a bus request may take before the agent counts as not answering.
    pub request_timeout_seconds: Option<u64>,
    /// Login runs a real `git ls-remote`: its own, longer bound.
    pub auth_timeout_seconds: Option<u64>,
    /// Session lifetime (default 12 hours).
    pub session_ttl_seconds: Option<u64>,
    /// Largest request body read.
    pub max_body_bytes: Option<usize>,
    #[serde(default)]
    pub secure_cookies: bool,
    /// Users of the embedded broker. Unset: an open bus (one trusted
    /// network). Set: SDP's default permission set, see `bus_permissions`.
    pub bus: Option<BusSection>,
}

/// `[server.bus]`: who may connect to the embedded broker.
#[derive(Debug, Default, Deserialize)]
pub struct BusSection {
    /// Agent node → its password (plain, or a bcrypt hash like
    /// nats-server's); the agent connects as user `{node}`.
    #[serde(default)]
    pub agents: BTreeMap<String, String>,
    /// Password (or bcrypt hash) of the read-only `ops` user, if any.
    pub ops_password: Option<String>,
}

impl BusSection {
    pub fn users(&self) -> crate::stack::BusUsers {
        use crate::bus_permissions::Credential;
        crate::stack::BusUsers {
            agents: self
                .agents
                .iter()
                .map(|(node, pw)| (node.clone(), Credential::new(node.clone(), pw.clone())))
                .collect(),
            ops: self
                .ops_password
                .as_ref()
                .map(|pw| Credential::new("ops", pw.clone())),
        }
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: default_listen(),
            data_dir: default_data_dir(),
            nats_url: None,
            nats_user: None,
            nats_password: None,
            broker_listen: default_broker_listen(),
            micro_node: micro(),
            gateway_node: gateway(),
            micro_ports: None,
            gateway_ports: None,
            gateway_repository: None,
            builds_per_node: None,
            build_timeout_seconds: None,
            request_timeout_seconds: None,
            auth_timeout_seconds: None,
            session_ttl_seconds: None,
            max_body_bytes: None,
            secure_cookies: false,
            bus: None,
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
    /// Password for the bus when the server requires users (`[server.bus]`);
    /// the agent connects as user `{node}`. Prefer `SDP_AGENT__NATS_PASSWORD`
    /// in the environment over the file.
    pub nats_password: Option<String>,
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
    /// Bounds on one git command and on one `go build`.
    pub git_timeout_seconds: Option<u64>,
    pub build_timeout_seconds: Option<u64>,
    /// Gateway: the file holding the `$config['_url']` map, in the repository.
    pub gateway_config_file: Option<PathBuf>,
    /// Gateway: where the worktree is mounted in the gateway container.
    pub gateway_mount: Option<String>,
    /// Gateway: the URL prefix the gateway answers under.
    pub gateway_url_prefix: Option<String>,
    /// Gateway: the port the web server listens on inside the container.
    pub gateway_container_port: Option<u16>,
    /// Gateway: the graceful reload, run in the container.
    pub reload_command: Option<Vec<String>>,
    /// Gateway: `php` on the host for `php -l` (unset: in the container).
    pub host_php: Option<PathBuf>,
    pub composer_program: Option<PathBuf>,
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
    /// Whom the control plane connects to external NATS servers as.
    pub fn nats_credential(&self) -> Option<crate::bus_permissions::Credential> {
        let password = self.nats_password.clone()?;
        let user = self.nats_user.as_deref().unwrap_or("sdp-control");
        Some(crate::bus_permissions::Credential::new(user, password))
    }

    pub fn control_config(&self) -> sdp_control::ControlConfig {
        let mut c = sdp_control::ControlConfig::new(self.data_dir.clone());
        c.micro_node = self.micro_node.clone();
        c.gateway_node = self.gateway_node.clone();
        if let Some(range) = self.micro_ports {
            c.micro_ports = range;
        }
        if let Some(range) = self.gateway_ports {
            c.gateway_ports = range;
        }
        if let Some(repo) = &self.gateway_repository {
            c.gateway_repository = repo.clone();
        }
        if let Some(n) = self.builds_per_node {
            c.builds_per_node = n;
        }
        let secs = Duration::from_secs;
        if let Some(s) = self.build_timeout_seconds {
            c.build_timeout = secs(s);
        }
        if let Some(s) = self.request_timeout_seconds {
            c.request_timeout = secs(s);
        }
        if let Some(s) = self.auth_timeout_seconds {
            c.auth_timeout = secs(s);
        }
        if let Some(s) = self.session_ttl_seconds {
            c.session_ttl = secs(s);
        }
        if let Some(n) = self.max_body_bytes {
            c.max_body_bytes = n;
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
        if let Some(secs) = self.git_timeout_seconds {
            c.git_timeout = Duration::from_secs(secs);
        }
        if let Some(secs) = self.build_timeout_seconds {
            c.build_timeout = Duration::from_secs(secs);
        }
        if let Some(file) = &self.gateway_config_file {
            c.gateway_config_file = file.clone();
        }
        if let Some(mount) = &self.gateway_mount {
            c.gateway_mount = mount.clone();
        }
        if let Some(prefix) = &self.gateway_url_prefix {
            c.gateway_url_prefix = prefix.clone();
        }
        if let Some(port) = self.gateway_container_port {
            c.gateway_container_port = port;
        }
        if let Some(cmd) = &self.reload_command {
            c.reload_command = cmd.clone();
        }
        if self.host_php.is_some() {
            c.host_php = self.host_php.clone();
        }
        if let Some(composer) = &self.composer_program {
            c.composer_program = composer.clone();
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
        // The server example spells out what it configures.
        let server = load(Some(&root.join("sdp-server.toml"))).unwrap().server;
        let c = server.control_config();
        assert_eq!(c.micro_ports, (9001, 9999));
        assert_eq!(c.gateway_ports, (8080, 8999));
        assert_eq!(c.builds_per_node, 2);
        assert_eq!(c.gateway_repository, "erangel");
        assert_eq!(c.session_ttl, Duration::from_secs(12 * 60 * 60));
        // And the gateway example its image and the patcher's file.
        let gateway = load(Some(&root.join("sdp-agent-gateway.toml")))
            .unwrap()
            .agent
            .unwrap()
            .agent_config();
        assert_eq!(gateway.gateway_image, "php:8.3-apache");
        assert_eq!(
            gateway.gateway_config_file,
            Path::new("application/config/production/config.php")
        );
        assert_eq!(gateway.reload_command, ["apachectl", "-k", "graceful"]);
    }

    #[test]
    fn external_nats_credentials_default_the_user_and_need_a_password() {
        let none: ServerSection = toml_section(r#"nats_url = "nats://a:4222""#);
        assert!(none.nats_credential().is_none());
        let c = toml_section::<ServerSection>(r#"nats_password = "pw""#)
            .nats_credential()
            .unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str()),
            ("sdp-control", "pw")
        );
        let c = toml_section::<ServerSection>("nats_user = \"ctl\"\nnats_password = \"pw\"")
            .nats_credential()
            .unwrap();
        assert_eq!(c.user, "ctl");
    }

    #[test]
    fn server_settings_override_the_defaults() {
        let section: ServerSection = toml_section(
            r#"
            gateway_ports = [18080, 18099]
            builds_per_node = 4
            request_timeout_seconds = 3
            "#,
        );
        let c = section.control_config();
        assert_eq!(c.gateway_ports, (18080, 18099));
        assert_eq!(c.builds_per_node, 4);
        assert_eq!(c.request_timeout, Duration::from_secs(3));
        assert_eq!(c.micro_ports, (9001, 9999), "left out: the default");
    }

    fn toml_section<T: serde::de::DeserializeOwned>(text: &str) -> T {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }
}
