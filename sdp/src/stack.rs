//! Assembling the parts: broker, control plane + dashboard, agents.
//!
//! [`Stack`] is the whole system in one process. `sdp dev` runs it, and so
//! do the integration tests, so they exercise the same wiring users run;
//! `sdp server` and `sdp agent` use the same pieces one at a time.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use sdp_agents::{Agent, AgentConfig, AgentHandle};
use sdp_broker::{Authorization, Broker, BrokerConfig, BrokerHandle};

use crate::bus_permissions::{Credential, sdp_users};
use sdp_control::{ControlConfig, ControlPlane};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Starts the embedded broker on `listener`.
pub async fn start_broker(
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<BrokerHandle> {
    start_broker_with(listener, BrokerConfig::default(), shutdown).await
}

/// Starts the embedded broker on `listener` with `config` (e.g. users).
pub async fn start_broker_with(
    listener: TcpListener,
    config: BrokerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<BrokerHandle> {
    Broker::start(listener, config, shutdown)
        .await
        .context("starting the embedded broker")
}

/// Connects to NATS (`urls` may list several servers, comma separated) and
/// keeps reconnecting for as long as the process runs: the bus coming back
/// must not need a restart of SDP.
pub async fn connect(urls: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    connect_as(urls, name, None).await
}

/// [`connect`], as `credential` when the bus requires users.
pub async fn connect_as(
    urls: &str,
    name: &str,
    credential: Option<&Credential>,
) -> anyhow::Result<async_nats::Client> {
    let servers = server_list(urls)?;
    let options = match credential {
        Some(c) => {
            async_nats::ConnectOptions::with_user_and_password(c.user.clone(), c.password.clone())
        }
        None => async_nats::ConnectOptions::new(),
    };
    options
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
    start_agent_as(nats_url, config, None, shutdown).await
}

/// [`start_agent`], connecting as `credential` when the bus requires users.
pub async fn start_agent_as(
    nats_url: &str,
    config: AgentConfig,
    credential: Option<&Credential>,
    shutdown: CancellationToken,
) -> anyhow::Result<AgentHandle> {
    let name = format!("sdp-agent-{}", config.node);
    let nats = connect_as(nats_url, &name, credential).await?;
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
    /// Whom the control plane (and any in-process agent) connects to the
    /// external servers as, when they require users. The embedded broker
    /// makes its own credentials instead, see `bus_users`.
    pub nats_credential: Option<Credential>,
    pub control: ControlConfig,
    pub agents: Vec<AgentConfig>,
    /// Require users on the embedded broker with SDP's default permission
    /// set (see [`crate::bus_permissions`]). `None`: an open bus.
    pub bus_users: Option<BusUsers>,
}

/// Who may use the embedded broker besides this process. The control plane
/// and in-process agents get fresh random passwords at every start, so no
/// credential of theirs is configured anywhere.
#[derive(Debug, Clone, Default)]
pub struct BusUsers {
    /// Agents on other machines: node name → credential (the password plain
    /// or a bcrypt hash); the user name is what they connect with.
    pub agents: Vec<(String, Credential)>,
    /// The read-only operator, if any.
    pub ops: Option<Credential>,
}

/// A random password for a credential made at start.
pub fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..24)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
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
        // With users, the control plane and each in-process agent connect
        // as themselves; without, anonymously.
        let mut control_credential = None;
        let mut agent_credentials = vec![None; config.agents.len()];
        let mut broker_config = BrokerConfig::default();
        if let (Some(users), Some(_)) = (&config.bus_users, &config.broker) {
            let control = Credential::new("sdp-control", random_password());
            let mut agents = users.agents.clone();
            for (slot, agent) in agent_credentials.iter_mut().zip(&config.agents) {
                let credential = Credential::new(agent.node.clone(), random_password());
                agents.push((agent.node.clone(), credential.clone()));
                *slot = Some(credential);
            }
            broker_config.authorization =
                Authorization::Users(sdp_users(control.clone(), &agents, users.ops.clone()));
            control_credential = Some(control);
        }
        let (broker, nats_url) = match (config.broker, config.nats_url) {
            (Some(listener), _) => {
                let broker =
                    start_broker_with(listener, broker_config, broker_shutdown.clone()).await?;
                let url = broker.client_url();
                (Some(broker), url)
            }
            (None, Some(url)) => {
                control_credential = config.nats_credential.clone();
                agent_credentials.fill(config.nats_credential);
                (None, url)
            }
            (None, None) => anyhow::bail!("either an embedded broker or a NATS URL is needed"),
        };
        let http_addr = config.http.local_addr()?;
        let nats = connect_as(&nats_url, "sdp-control", control_credential.as_ref()).await?;
        let (control, server) =
            start_server(config.http, nats, config.control, control_shutdown.clone()).await?;
        let mut agents = Vec::new();
        for (agent, credential) in config.agents.into_iter().zip(&agent_credentials) {
            agents.push(
                start_agent_as(
                    &nats_url,
                    agent,
                    credential.as_ref(),
                    agents_shutdown.clone(),
                )
                .await?,
            );
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
