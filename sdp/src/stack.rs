//! Assembling the parts: broker, control plane + dashboard, agents.
//!
//! [`Stack`] is the whole system in one process. `sdp dev` runs it, and so
//! do the integration tests, so they exercise the same wiring users run;
//! `sdp server` and `sdp agent` use the same pieces one at a time.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use sdp_agents::{Agent, AgentConfig, AgentHandle};
use sdp_broker::{Broker, BrokerConfig, BrokerHandle};
use sdp_control::{ControlConfig, ControlPlane};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Starts the embedded broker on `listener`.
pub async fn start_broker(
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<BrokerHandle> {
    Broker::start(listener, BrokerConfig::default(), shutdown)
        .await
        .context("starting the embedded broker")
}

/// Connects to NATS (`urls` may list several servers, comma separated) and
/// keeps reconnecting for as long as the process runs: the bus coming back
/// must not need a restart of SDP.
pub async fn connect(urls: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let servers = server_list(urls)?;
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {urls}"))
}

/// Splits `nats://a:4222, nats://b:4222` into addresses. async-nats reads a
/// `&str` as exactly one address, so a cluster list must be split here.
pub fn server_list(urls: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    let servers = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .with_context(|| format!("invalid NATS server URL {u:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!servers.is_empty(), "no NATS server URL given");
    Ok(servers)
}

/// The control plane's HTTP side: JSON API plus dashboard. The dashboard
/// gets the bus too, so open deployment pages wake on the agent's events
/// instead of polling.
pub fn http_router(cp: &ControlPlane, nats: async_nats::Client) -> axum::Router {
    cp.api_router()
        .merge(sdp_web::router_with_bus(cp.clone(), nats))
}

/// Starts the control plane and serves its API and dashboard on `listener`.
pub async fn start_server(
    listener: TcpListener,
    nats: async_nats::Client,
    config: ControlConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<(ControlPlane, JoinHandle<std::io::Result<()>>)> {
    let cp = ControlPlane::start(nats.clone(), config, shutdown.clone())
        .await
        .context("starting the control plane")?;
    let router = http_router(&cp, nats);
    let serve = tokio::spawn(sdp_control::serve(listener, router, shutdown));
    Ok((cp, serve))
}

/// Starts one agent on its own NATS connection, as on its own VM.
pub async fn start_agent(
    nats_url: &str,
    config: AgentConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<AgentHandle> {
    let name = format!("sdp-agent-{}", config.node);
    let nats = connect(nats_url, &name).await?;
    Agent::start(nats, config, shutdown)
        .await
        .context("starting the agent")
}

/// What to run in one process.
pub struct StackConfig {
    /// HTTP listener for the API and dashboard.
    pub http: TcpListener,
    /// Listener of the embedded broker; `None` means use `nats_url`.
    pub broker: Option<TcpListener>,
    /// External NATS servers, when there is no embedded broker.
    pub nats_url: Option<String>,
    pub control: ControlConfig,
    pub agents: Vec<AgentConfig>,
}

/// The whole system, running.
pub struct Stack {
    pub http_addr: SocketAddr,
    pub nats_url: String,
    pub control: ControlPlane,
    pub agents: Vec<AgentHandle>,
    broker: Option<BrokerHandle>,
    server: JoinHandle<std::io::Result<()>>,
    /// One token per layer, children of the caller's: [`Stack::stop`]
    /// stops agents, then the control plane, then the bus, so nobody waits
    /// on a bus that is already gone.
    agents_shutdown: CancellationToken,
    control_shutdown: CancellationToken,
    broker_shutdown: CancellationToken,
}

impl Stack {
    pub async fn start(config: StackConfig, shutdown: CancellationToken) -> anyhow::Result<Stack> {
        let broker_shutdown = shutdown.child_token();
        let control_shutdown = shutdown.child_token();
        let agents_shutdown = shutdown.child_token();
        let (broker, nats_url) = match (config.broker, config.nats_url) {
            (Some(listener), _) => {
                let broker = start_broker(listener, broker_shutdown.clone()).await?;
                let url = broker.client_url();
                (Some(broker), url)
            }
            (None, Some(url)) => (None, url),
            (None, None) => anyhow::bail!("either an embedded broker or a NATS URL is needed"),
        };
        let http_addr = config.http.local_addr()?;
        let nats = connect(&nats_url, "sdp-control").await?;
        let (control, server) =
            start_server(config.http, nats, config.control, control_shutdown.clone()).await?;
        let mut agents = Vec::new();
        for agent in config.agents {
            agents.push(start_agent(&nats_url, agent, agents_shutdown.clone()).await?);
        }
        Ok(Stack {
            http_addr,
            nats_url,
            control,
            agents,
            broker,
            server,
            agents_shutdown,
            control_shutdown,
            broker_shutdown,
        })
    }

    /// Base URL of the HTTP side, e.g. `http://127.0.0.1:8700`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Stops everything and waits until it has stopped.
    pub async fn stop(self) {
        self.agents_shutdown.cancel();
        for agent in self.agents {
            agent.stopped().await;
        }
        self.control_shutdown.cancel();
        let _ = self.server.await;
        self.broker_shutdown.cancel();
        if let Some(broker) = self.broker {
            broker.stopped().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_comma_separated_nats_urls_are_split() {
        let servers = server_list("nats://127.0.0.1:4222, nats://127.0.0.1:4223,").unwrap();
        assert_eq!(servers.len(), 2);
        assert!(server_list("").is_err());
        assert!(server_list("nats://host:notaport").is_err());
    }
}
