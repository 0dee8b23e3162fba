//! Telling the world the agent is here: `hello` at start, `heartbeat` on an
//! interval, and the same body in answer to the `hello` op.

use std::sync::Arc;
use std::time::Duration;

use sdp_contract::{Presence, encode, subjects};

use crate::agent::Shared;

/// A heartbeat must not wait long on a slow Docker engine.
const STATUS_LIMIT: Duration = Duration::from_secs(3);

pub(crate) async fn current(shared: &Shared) -> Presence {
    let containers = match tokio::time::timeout(STATUS_LIMIT, shared.docker.sdp_containers()).await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "no container list for presence");
            Vec::new()
        }
        Err(_) => {
            tracing::debug!("Docker did not list containers in time");
            Vec::new()
        }
    };
    let config = &shared.config;
    Presence {
        node: config.node.clone(),
        kind: config.kind,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        public_key: shared.keys.public_key(),
        address: config.address.clone(),
        repositories: config.repositories.keys().cloned().collect(),
        containers,
    }
}

pub(crate) async fn heartbeat(shared: Arc<Shared>) {
    let subject = subjects::node_heartbeat(&shared.config.node);
    let mut ticks = tokio::time::interval(shared.config.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; `hello` has just gone out.
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let body = encode(&current(&shared).await);
        if let Err(e) = shared.nats.publish(subject.clone(), body.into()).await {
            tracing::warn!(error = %e, "cannot publish a heartbeat");
        }
    }
}
