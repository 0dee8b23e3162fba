//! The only code that talks to the Docker engine.
//!
//! The engine is reached lazily: an agent whose Docker is down still starts,
//! answers `auth` and heartbeats, and connects on first use. Version
//! negotiation is required: the engines SDP runs on speak older API versions
//! (Docker 20.10 speaks 1.41) than bollard's default.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, EndpointSettings, HostConfig, Mount,
    MountTypeEnum, NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RestartContainerOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use sdp_contract::{ContainerInfo, LogStream};
use tokio::sync::{Mutex, OnceCell};

/// Labels every SDP container and network carries, so state is reconciled
/// from what actually runs.
pub mod labels {
    pub const MANAGED: &str = "sdp.managed";
    pub const SANDBOX: &str = "sdp.sandbox";
    pub const SERVICE: &str = "sdp.service";
    pub const DEPLOYMENT: &str = "sdp.deployment";
    pub const COMMIT: &str = "sdp.commit";
    pub const BRANCH: &str = "sdp.branch";
    /// The repository deployed (the service label of a gateway is `gateway`).
    pub const REPOSITORY: &str = "sdp.repository";
    /// The agent that made the container: two agents may share one engine.
    pub const NODE: &str = "sdp.node";
}

/// Output lines of one `docker exec` kept for its caller.
const EXEC_KEEP: usize = 200;
/// Tries at removing a container the engine is busy with.
const REMOVE_ATTEMPTS: u32 = 25;
/// Seconds a stopping container gets before it is killed.
const STOP_GRACE: i32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine: {0}")]
    Connect(String),
    #[error("{what}: {message}")]
    Api { what: String, message: String },
    #[error("host port {port} is already in use on {host}: {message}")]
    PortTaken {
        host: String,
        port: u16,
        message: String,
    },
    #[error("no container named {0}")]
    NotFound(String),
    #[error("{what} did not finish within {} s", .limit.as_secs())]
    TimedOut { what: String, limit: Duration },
}

fn api(what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    let what = what.into();
    move |e| DockerError::Api {
        what,
        message: engine_message(&e),
    }
}

/// The engine's own words, without bollard's status-code preamble.
fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn is_conflict(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409 | 500,
            ..
        }
    )
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Everything needed to run one sandbox service.
#[derive(Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub cmd: Vec<String>,
    pub working_dir: String,
    /// Host directory → container path, read-only.
    pub mounts: Vec<(PathBuf, String)>,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub container_port: u16,
    pub publish_host: String,
    pub host_port: u16,
    pub network: String,
    /// Name other containers of the sandbox reach this one by.
    pub alias: String,
}

/// `env` holds secret values: only the variable names are shown.
impl std::fmt::Debug for ContainerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .env
            .iter()
            .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k))
            .collect();
        f.debug_struct("ContainerSpec")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("env", &names)
            .field("host_port", &self.host_port)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl ContainerSpec {
    pub fn create_body(&self) -> ContainerCreateBody {
        let port_key = format!("{}/tcp", self.container_port);
        let port_bindings = HashMap::from([(
            port_key.clone(),
            Some(vec![PortBinding {
                host_ip: Some(self.publish_host.clone()),
                host_port: Some(self.host_port.to_string()),
            }]),
        )]);
        let mounts = self
            .mounts
            .iter()
            .map(|(source, target)| Mount {
                source: Some(source.display().to_string()),
                target: Some(target.clone()),
                typ: Some(MountTypeEnum::BIND),
                read_only: Some(true),
                ..Default::default()
            })
            .collect();
        // Empty means the image's own command and directory (the gateway
        // image runs Apache as its CMD).
        let cmd = (!self.cmd.is_empty()).then(|| self.cmd.clone());
        let working_dir = (!self.working_dir.is_empty()).then(|| self.working_dir.clone());
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd,
            working_dir,
            env: Some(self.env.clone()),
            labels: Some(self.labels.clone()),
            exposed_ports: Some(HashMap::from([(port_key, HashMap::new())])),
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                port_bindings: Some(port_bindings),
                network_mode: Some(self.network.clone()),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network.clone(),
                    EndpointSettings {
                        aliases: Some(vec![self.alias.clone()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        }
    }
}

/// Labels and state of one container.
#[derive(Debug, Clone)]
pub struct ContainerDetails {
    pub labels: HashMap<String, String>,
    pub state: String,
}

/// What a `docker exec` printed and how it ended.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: Option<i64>,
    pub lines: Vec<(LogStream, String)>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// The engine's words for a host port someone else holds: another
/// container ("port is already allocated") or a host process ("address
/// already in use").
fn is_port_taken(message: &str) -> bool {
    message.contains("port is already allocated") || message.contains("address already in use")
}

/// What a container is doing, for the readiness wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Running and never restarted.
    Running,
    /// Not started yet or in between.
    Starting,
    /// Exited, died or restarted after exiting.
    Exited { exit_code: Option<i64> },
}

#[derive(Debug, Default)]
pub struct DockerEngine {
    client: OnceCell<Docker>,
    /// Two deployments of one sandbox must not both create its network:
    /// older engines allow duplicate network names.
    network_lock: Mutex<()>,
}

impl DockerEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// The negotiated client; a failed attempt is retried on the next call.
    async fn client(&self) -> Result<&Docker, DockerError> {
        self.client
            .get_or_try_init(|| async {
                let docker = Docker::connect_with_local_defaults()
                    .map_err(|e| DockerError::Connect(e.to_string()))?;
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| DockerError::Connect(e.to_string()))
            })
            .await
    }

    /// Every SDP-managed container, running or not.
    pub async fn sdp_containers(&self) -> Result<Vec<ContainerInfo>, DockerError> {
        self.containers_labelled(&[]).await
    }

    /// The SDP containers made by agent `node`.
    pub async fn node_containers(&self, node: &str) -> Result<Vec<ContainerInfo>, DockerError> {
        self.containers_labelled(&[(labels::NODE, node)]).await
    }

    /// Every SDP container of `sandbox`, whichever agent made it.
    pub async fn sandbox_containers(
        &self,
        sandbox: &str,
    ) -> Result<Vec<ContainerInfo>, DockerError> {
        self.containers_labelled(&[(labels::SANDBOX, sandbox)])
            .await
    }

    async fn containers_labelled(
        &self,
        wanted: &[(&str, &str)],
    ) -> Result<Vec<ContainerInfo>, DockerError> {
        let docker = self.client().await?;
        let mut label_filters = vec![format!("{}=true", labels::MANAGED)];
        label_filters.extend(wanted.iter().map(|(k, v)| format!("{k}={v}")));
        let filters = HashMap::from([("label", label_filters)]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = docker
            .list_containers(Some(options))
            .await
            .map_err(api("listing containers"))?;
        Ok(list
            .into_iter()
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
                ContainerInfo {
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_owned())
                        .unwrap_or_default(),
                    sandbox: label(labels::SANDBOX),
                    service: label(labels::SERVICE),
                    deployment: label(labels::DEPLOYMENT),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                }
            })
            .collect())
    }

    /// Creates the sandbox's network unless it exists.
    pub async fn ensure_network(&self, name: &str, sandbox: &str) -> Result<(), DockerError> {
        let docker = self.client().await?;
        let _serial = self.network_lock.lock().await;
        match docker
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(api(format!("inspecting network {name}"))(e)),
        }
        let created = docker
            .create_network(NetworkCreateRequest {
                name: name.to_owned(),
                driver: Some("bridge".to_owned()),
                labels: Some(HashMap::from([
                    (labels::MANAGED.to_owned(), "true".to_owned()),
                    (labels::SANDBOX.to_owned(), sandbox.to_owned()),
                ])),
                ..Default::default()
            })
            .await
            .map_err(api(format!("creating network {name}")))?;
        self.settle_duplicate_networks(docker, name, &created.id)
            .await
    }

    /// Another process (the gateway agent on the same host) may have
    /// created the same network at the same moment. Every racer keeps the
    /// lowest id and removes its own if that is not it, so one survives.
    async fn settle_duplicate_networks(
        &self,
        docker: &Docker,
        name: &str,
        ours: &str,
    ) -> Result<(), DockerError> {
        let filters = HashMap::from([("name", vec![name.to_owned()])]);
        let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let networks = docker
            .list_networks(Some(options))
            .await
            .map_err(api("listing networks"))?;
        let lowest = networks
            .iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| n.id.as_deref())
            .min();
        if lowest.is_some_and(|lowest| lowest != ours) {
            docker
                .remove_network(ours)
                .await
                .map_err(api(format!("removing duplicate network {name}")))?;
        }
        Ok(())
    }

    /// Removes the container called `name`, running or not; absent is fine.
    pub async fn remove_container(&self, name: &str) -> Result<(), DockerError> {
        let docker = self.client().await?;
        let mut attempt = 0;
        loop {
            let options = RemoveContainerOptionsBuilder::new().force(true).build();
            match docker.remove_container(name, Some(options)).await {
                Ok(()) => return Ok(()),
                Err(e) if is_not_found(&e) => return Ok(()),
                // The engine refuses to remove a container caught between
                // two restarts ("is restarting, wait until the container is
                // running") or already being removed: it settles quickly.
                Err(e) if attempt < REMOVE_ATTEMPTS && is_conflict(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(api(format!("removing container {name}"))(e)),
            }
        }
    }

    /// Replaces any container of the same name with a new one and starts it.
    /// A container that cannot start is removed again: nothing half-made is
    /// left behind.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let docker = self.client().await?;
        self.remove_container(&spec.name).await?;
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = docker
            .create_container(Some(options), spec.create_body())
            .await
            .map_err(api(format!("creating container {}", spec.name)))?;
        if let Err(e) = docker
            .start_container(&spec.name, None::<StartContainerOptions>)
            .await
        {
            let _ = self.remove_container(&spec.name).await;
            let message = engine_message(&e);
            if is_port_taken(&message) {
                return Err(DockerError::PortTaken {
                    host: spec.publish_host.clone(),
                    port: spec.host_port,
                    message,
                });
            }
            return Err(api(format!("starting container {}", spec.name))(e));
        }
        Ok(created.id)
    }

    /// The labels and engine state of container `name`; `None` if absent.
    pub async fn details(&self, name: &str) -> Result<Option<ContainerDetails>, DockerError> {
        let docker = self.client().await?;
        match docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => Ok(Some(ContainerDetails {
                labels: info.config.and_then(|c| c.labels).unwrap_or_default(),
                state: info
                    .state
                    .and_then(|s| s.status)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(api(format!("inspecting container {name}"))(e)),
        }
    }

    pub async fn stop(&self, name: &str) -> Result<(), DockerError> {
        let docker = self.client().await?;
        let options = StopContainerOptionsBuilder::new().t(STOP_GRACE).build();
        match docker.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Err(DockerError::NotFound(name.to_owned())),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(api(format!("stopping container {name}"))(e)),
        }
    }

    pub async fn restart(&self, name: &str) -> Result<(), DockerError> {
        let docker = self.client().await?;
        let options = RestartContainerOptionsBuilder::new().t(STOP_GRACE).build();
        match docker.restart_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Err(DockerError::NotFound(name.to_owned())),
            Err(e) => Err(api(format!("restarting container {name}"))(e)),
        }
    }

    /// Runs `cmd` in the running container `name`, bounded by `limit`.
    pub async fn exec(
        &self,
        name: &str,
        cmd: &[&str],
        limit: Duration,
    ) -> Result<ExecOutput, DockerError> {
        let docker = self.client().await?;
        let what = format!("docker exec {name} {}", cmd.join(" "));
        let work = async {
            let exec = docker
                .create_exec(
                    name,
                    CreateExecOptions {
                        cmd: Some(cmd.to_vec()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| {
                    if is_not_found(&e) {
                        DockerError::NotFound(name.to_owned())
                    } else {
                        api(what.clone())(e)
                    }
                })?;
            let mut lines = Vec::new();
            if let StartExecResults::Attached { mut output, .. } = docker
                .start_exec(&exec.id, None)
                .await
                .map_err(api(what.clone()))?
            {
                while let Some(chunk) = output.next().await {
                    let (stream, bytes) = match chunk.map_err(api(what.clone()))? {
                        LogOutput::StdErr { message } => (LogStream::Stderr, message),
                        LogOutput::StdOut { message } | LogOutput::Console { message } => {
                            (LogStream::Stdout, message)
                        }
                        LogOutput::StdIn { .. } => continue,
                    };
                    for line in String::from_utf8_lossy(&bytes).lines() {
                        if lines.len() < EXEC_KEEP {
                            lines.push((stream, line.to_owned()));
                        }
                    }
                }
            }
            let inspected = docker
                .inspect_exec(&exec.id)
                .await
                .map_err(api(what.clone()))?;
            Ok(ExecOutput {
                exit_code: inspected.exit_code,
                lines,
            })
        };
        match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(DockerError::TimedOut { what, limit }),
        }
    }

    /// Removes the sandbox's network once no container of the sandbox is
    /// left on this engine; returns whether it did.
    pub async fn remove_network_if_unused(
        &self,
        network: &str,
        sandbox: &str,
    ) -> Result<bool, DockerError> {
        if !self.sandbox_containers(sandbox).await?.is_empty() {
            return Ok(false);
        }
        let docker = self.client().await?;
        let _serial = self.network_lock.lock().await;
        match docker
            .inspect_network(
                network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(info) => {
                // Something outside SDP joined it: not ours to pull away.
                if info.containers.is_some_and(|c| !c.is_empty()) {
                    return Ok(false);
                }
            }
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(api(format!("inspecting network {network}"))(e)),
        }
        match docker.remove_network(network).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(api(format!("removing network {network}"))(e)),
        }
    }

    pub async fn liveness(&self, name: &str) -> Result<Liveness, DockerError> {
        let docker = self.client().await?;
        let info = docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(api(format!("inspecting container {name}")))?;
        let restarts = info.restart_count.unwrap_or(0);
        let state = info.state.unwrap_or_default();
        let exit_code = state.exit_code;
        Ok(match state.status {
            Some(ContainerStateStatusEnum::RUNNING) if restarts == 0 => Liveness::Running,
            Some(ContainerStateStatusEnum::CREATED) => Liveness::Starting,
            // With restart policy unless-stopped an exiting service comes
            // back as "restarting", or running again with a restart count;
            // its exit code is then already gone.
            Some(ContainerStateStatusEnum::RUNNING) => Liveness::Exited { exit_code: None },
            _ => Liveness::Exited { exit_code },
        })
    }

    /// The last `n` lines the container printed.
    pub async fn last_logs(
        &self,
        name: &str,
        n: usize,
    ) -> Result<Vec<(LogStream, String)>, DockerError> {
        let docker = self.client().await?;
        let tail = n.to_string();
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let mut logs = docker.logs(name, Some(options));
        let mut lines = Vec::new();
        while let Some(chunk) = logs.next().await {
            let (stream, bytes) = match chunk.map_err(api(format!("reading logs of {name}")))? {
                LogOutput::StdErr { message } => (LogStream::Stderr, message),
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    (LogStream::Stdout, message)
                }
                LogOutput::StdIn { .. } => continue,
            };
            for line in String::from_utf8_lossy(&bytes).lines() {
                lines.push((stream, line.to_owned()));
            }
        }
        let skip = lines.len().saturating_sub(n);
        Ok(lines.split_off(skip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "sandbox-qa-account".into(),
            image: "alpine:3.20".into(),
            cmd: vec!["/src/app-account".into()],
            working_dir: "/src".into(),
            mounts: vec![(PathBuf::from("/w/qa/account"), "/src".into())],
            env: vec!["PORT=8080".into()],
            labels: HashMap::from([(labels::MANAGED.into(), "true".into())]),
            container_port: 8080,
            publish_host: "0.0.0.0".into(),
            host_port: 9001,
            network: "sandbox-qa".into(),
            alias: "account".into(),
        }
    }

    #[test]
    fn debug_shows_variable_names_not_values() {
        let mut s = spec();
        s.env.push("API_TOKEN=hunter2".into());
        let text = format!("{s:?}");
        assert!(
            text.contains("API_TOKEN") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn the_container_is_published_networked_and_restarts() {
        let body = serde_json::to_value(spec().create_body()).unwrap();
        assert_eq!(body["Image"], "alpine:3.20");
        assert_eq!(body["Cmd"][0], "/src/app-account");
        assert_eq!(body["WorkingDir"], "/src");
        let host = &body["HostConfig"];
        assert_eq!(host["PortBindings"]["8080/tcp"][0]["HostPort"], "9001");
        assert_eq!(host["PortBindings"]["8080/tcp"][0]["HostIp"], "0.0.0.0");
        assert_eq!(host["RestartPolicy"]["Name"], "unless-stopped");
        assert_eq!(host["NetworkMode"], "sandbox-qa");
        assert_eq!(host["Mounts"][0]["Source"], "/w/qa/account");
        assert_eq!(host["Mounts"][0]["Target"], "/src");
        assert_eq!(host["Mounts"][0]["ReadOnly"], true);
        let endpoint = &body["NetworkingConfig"]["EndpointsConfig"]["sandbox-qa"];
        assert_eq!(endpoint["Aliases"][0], "account");
        assert!(body["ExposedPorts"]["8080/tcp"].is_object());
    }
}
