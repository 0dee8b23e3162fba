//! The registry of agents, fed by the presence each one publishes on
//! `sdp.node.{node}.hello` at start and `.heartbeat` every few seconds.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use sdp_contract::{NodeKind, Presence};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::ControlPlane;
use crate::bus::next_message;
use crate::changes::{Changes, Topic};
use crate::sessions::CurrentSession;

/// A node counts as connected while its last presence is this recent: three
/// heartbeat intervals, so one or two lost heartbeats do not flap it.
pub const CONNECTED_WITHIN: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

#[derive(Clone, Default)]
pub struct NodeRegistry {
    nodes: Arc<RwLock<HashMap<String, Entry>>>,
    changes: Changes,
}

struct Entry {
    presence: Presence,
    last_seen: DateTime<Utc>,
}

/// One row of `GET /api/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub kind: NodeKind,
    pub connected: bool,
    pub last_seen: DateTime<Utc>,
    pub address: String,
    pub version: String,
    pub repositories: Vec<String>,
}

impl NodeRegistry {
    /// A registry that fires [`Topic::Nodes`] on `changes` at every presence.
    pub fn new(changes: Changes) -> Self {
        NodeRegistry {
            nodes: Arc::default(),
            changes,
        }
    }

    pub fn record(&self, node: &str, presence: Presence, at: DateTime<Utc>) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes.insert(
            node.to_owned(),
            Entry {
                presence,
                last_seen: at,
            },
        );
        drop(nodes);
        // Every heartbeat moves "last seen", which the nodes page shows.
        self.changes.fire(Topic::Nodes);
    }

    pub fn public_key(&self, node: &str) -> Option<String> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes
            .get(node)
            .map(|e| e.presence.public_key.clone())
            .filter(|k| !k.is_empty())
    }

    /// Drops a key the agent no longer opens; the node stays listed.
    pub fn forget_key(&self, node: &str) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = nodes.get_mut(node) {
            e.presence.public_key.clear();
        }
    }

    /// Every node heard from, by name.
    pub fn list(&self, now: DateTime<Utc>) -> Vec<NodeStatus> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<NodeStatus> = nodes
            .iter()
            .map(|(name, e)| NodeStatus {
                name: name.clone(),
                kind: e.presence.kind,
                connected: now - e.last_seen <= CONNECTED_WITHIN,
                last_seen: e.last_seen,
                address: e.presence.address.clone(),
                version: e.presence.version.clone(),
                repositories: e.presence.repositories.clone(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }
}

/// Feeds the registry from `sdp.node.*.*` until `shutdown`.
pub async fn listen(
    mut sub: async_nats::Subscriber,
    registry: NodeRegistry,
    shutdown: CancellationToken,
) {
    while let Some(msg) = next_message(&mut sub, &shutdown).await {
        let Some(node) = node_of(&msg.subject) else {
            tracing::debug!(subject = %msg.subject, "ignoring presence on an unexpected subject");
            continue;
        };
        match sdp_contract::decode::<Presence>(&msg.payload) {
            Ok(p) if p.node == node => registry.record(node, p, Utc::now()),
            Ok(p) => {
                tracing::debug!(subject = %msg.subject, claimed = %p.node, "ignoring presence naming another node")
            }
            Err(e) => {
                tracing::debug!(subject = %msg.subject, error = %e, "ignoring undecodable presence")
            }
        }
    }
}

/// `sdp.node.{node}.hello|heartbeat` → `{node}`.
fn node_of(subject: &str) -> Option<&str> {
    let (node, kind) = subject.strip_prefix("sdp.node.")?.rsplit_once('.')?;
    let known = kind == "hello" || kind == "heartbeat";
    (known && !node.is_empty() && !node.contains('.')).then_some(node)
}

/// `GET /api/v1/nodes`
pub async fn list(State(cp): State<ControlPlane>, _: CurrentSession) -> Json<Vec<NodeStatus>> {
    Json(cp.nodes())
}

impl ControlPlane {
    pub fn nodes(&self) -> Vec<NodeStatus> {
        self.inner.nodes.list(Utc::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(node: &str, kind: NodeKind) -> Presence {
        Presence {
            node: node.into(),
            kind,
            version: "0.1.0".into(),
            public_key: "a2V5".into(),
            address: "127.0.0.1".into(),
            repositories: vec!["eredar".into()],
            containers: vec![],
        }
    }

    #[test]
    fn nodes_are_connected_while_heard_from_recently() {
        let reg = NodeRegistry::default();
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        reg.record("micro", presence("micro", NodeKind::Micro), t0);
        reg.record("gateway", presence("gateway", NodeKind::Gateway), t0);
        let list = reg.list(t0 + chrono::TimeDelta::seconds(10));
        assert_eq!(list[0].name, "gateway");
        assert!(list.iter().all(|n| n.connected));
        let later = reg.list(t0 + chrono::TimeDelta::seconds(31));
        assert!(later.iter().all(|n| !n.connected));
    }

    #[test]
    fn a_forgotten_key_is_unknown_but_the_node_stays_listed() {
        let reg = NodeRegistry::default();
        reg.record("micro", presence("micro", NodeKind::Micro), Utc::now());
        assert_eq!(reg.public_key("micro").as_deref(), Some("a2V5"));
        reg.forget_key("micro");
        assert_eq!(reg.public_key("micro"), None);
        assert_eq!(reg.list(Utc::now()).len(), 1);
    }

    #[test]
    fn presence_subjects_name_the_node() {
        assert_eq!(node_of("sdp.node.micro.hello"), Some("micro"));
        assert_eq!(node_of("sdp.node.gw-2.heartbeat"), Some("gw-2"));
        assert_eq!(node_of("sdp.node.micro.other"), None);
        assert_eq!(node_of("sdp.deploy.x.log"), None);
    }
}
