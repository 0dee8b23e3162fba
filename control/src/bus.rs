//! Request-reply to agents over NATS. Every answer is a `Reply<T>`; this
//! module turns the ways a request can go wrong into one [`BusError`], and
//! seals secrets to the receiving agent's public key.

use std::time::Duration;

use async_nats::RequestErrorKind;
use chrono::Utc;
use sdp_contract::subjects::{self, AgentOp};
use sdp_contract::{AgentError, DecodeError, ErrorCode, Presence, Reply, SealError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::nodes::NodeRegistry;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Nobody serves the subject: the agent is not connected.
    #[error("no agent serves {subject}")]
    NoResponders { subject: String },
    /// The control plane itself is cut off from the bus (reconnecting).
    #[error("the control plane is not connected to the message bus")]
    Disconnected,
    #[error("no answer on {subject} within {} s", timeout.as_secs())]
    TimedOut { subject: String, timeout: Duration },
    #[error("request on {subject} failed: {detail}")]
    Transport { subject: String, detail: String },
    #[error("malformed reply on {subject}: {source}")]
    Malformed {
        subject: String,
        source: DecodeError,
    },
    /// The agent answered with an error meant for the user.
    #[error("{0}")]
    Agent(AgentError),
    #[error("sealing a secret for node {node}: {source}")]
    Seal { node: String, source: SealError },
}

#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    nodes: NodeRegistry,
    /// For the `hello` asked before sealing when a node's key is unknown.
    hello_timeout: Duration,
}

/// Body of requests that carry nothing but the envelope.
#[derive(Serialize)]
struct Empty {}

impl Bus {
    pub fn new(client: async_nats::Client, nodes: NodeRegistry, hello_timeout: Duration) -> Self {
        Bus {
            client,
            nodes,
            hello_timeout,
        }
    }

    /// Sends `body` to `sdp.agent.{node}.{op}` and waits for the reply.
    pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        node: &str,
        op: AgentOp,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, BusError> {
        if !self.connected() {
            return Err(BusError::Disconnected);
        }
        let subject = subjects::agent_op(node, op);
        let request = async_nats::Request::new()
            .payload(sdp_contract::encode(body).into())
            .timeout(Some(timeout));
        let reply = match self.client.send_request(subject.clone(), request).await {
            Ok(reply) => reply,
            Err(e) => {
                return Err(match e.kind() {
                    RequestErrorKind::NoResponders => BusError::NoResponders { subject },
                    RequestErrorKind::TimedOut => BusError::TimedOut { subject, timeout },
                    RequestErrorKind::Other => BusError::Transport {
                        subject,
                        detail: e.to_string(),
                    },
                });
            }
        };
        let reply: Reply<Resp> = sdp_contract::decode(&reply.payload)
            .map_err(|source| BusError::Malformed { subject, source })?;
        reply.into_result().map_err(BusError::Agent)
    }

    /// Whether the bus connection is up. While it reconnects, requests would
    /// wait out their whole timeout; callers answer at once instead.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The node's public key: from its presence if heard, else asked for.
    pub async fn public_key(&self, node: &str) -> Result<String, BusError> {
        if let Some(key) = self.nodes.public_key(node) {
            return Ok(key);
        }
        let presence: Presence = self
            .request(node, AgentOp::Hello, &Empty {}, self.hello_timeout)
            .await?;
        let key = presence.public_key.clone();
        self.nodes.record(node, presence, Utc::now());
        Ok(key)
    }

    /// Like [`Bus::request`], with a body that holds secrets sealed to the
    /// node's key by `build`. If the agent cannot open them (its key changed),
    /// the key is asked for again and the request sent once more.
    pub async fn request_sealed<Req, Resp, F>(
        &self,
        node: &str,
        op: AgentOp,
        timeout: Duration,
        build: F,
    ) -> Result<Resp, BusError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: Fn(&str) -> Result<Req, SealError>,
    {
        let seal = |key: &str| {
            build(key).map_err(|source| BusError::Seal {
                node: node.to_owned(),
                source,
            })
        };
        let key = self.public_key(node).await?;
        match self.request(node, op, &seal(&key)?, timeout).await {
            Err(BusError::Agent(e)) if e.code == ErrorCode::Sealed => {
                tracing::info!(
                    node,
                    "agent could not open a sealed request; asking for its key again"
                );
                self.nodes.forget_key(node);
                let key = self.public_key(node).await?;
                self.request(node, op, &seal(&key)?, timeout).await
            }
            other => other,
        }
    }
}

/// The next message on `sub`: `None` once the subscription ends or
/// `shutdown` fires, whichever comes first.
pub(crate) async fn next_message(
    sub: &mut async_nats::Subscriber,
    shutdown: &CancellationToken,
) -> Option<async_nats::Message> {
    use futures::StreamExt;
    tokio::select! {
        _ = shutdown.cancelled() => None,
        msg = sub.next() => msg,
    }
}

/// Waits until the server has processed everything this client sent so far
/// (subscriptions included): a message to a fresh inbox comes back only after
/// the server handled every earlier operation of the connection. `flush` alone
/// only empties the socket buffer.
pub async fn round_trip(client: &async_nats::Client, timeout: Duration) -> Result<(), String> {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    client
        .publish(inbox, Vec::new().into())
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, sub.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("the connection closed".into()),
        Err(_) => Err(format!("no round trip within {} s", timeout.as_secs())),
    }
}
