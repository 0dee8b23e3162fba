//! Restart safety. A control plane that stops in the middle of a deployment
//! misses what the agent reported meanwhile; on start, every deployment left
//! `QUEUED` is settled:
//!
//! - never sent to an agent: it cannot be now (the user's credentials lived
//!   only in the old process's memory), so it fails with that reason;
//! - sent: the agent is asked to `replay` from the first message not
//!   applied, out of its on-disk spool. The replayed events bring the true
//!   state, the replayed lines complete the log; both go through the usual
//!   ingest. Asked again until it answers, as agents may reconnect later.

use std::time::Duration;

use chrono::Utc;
use sdp_contract::subjects::AgentOp;
use sdp_contract::{Ack, DeploymentState, ReplayRequest};

use crate::ControlPlane;
use crate::bus::BusError;
use crate::changes::Topic;

/// Pause between attempts to reach an agent that has not answered yet.
const RETRY: Duration = Duration::from_secs(2);

pub const NEVER_SENT: &str = "the control plane restarted before the deployment was sent to \
     an agent; deploy again";

pub async fn run(cp: ControlPlane) {
    let queued = match cp.store().queued_deployments().await {
        Ok(q) => q,
        Err(e) => {
            return tracing::error!(error = %e, "could not list queued deployments to reconcile");
        }
    };
    for (d, dispatched) in queued {
        if !dispatched {
            tracing::info!(deployment = %d.id, "failing a deployment that was never sent");
            if let Err(e) = cp.store().fail_queued(&d.id, NEVER_SENT, Utc::now()).await {
                tracing::error!(deployment = %d.id, error = %e, "could not fail a deployment");
            }
            cp.changed(Topic::Sandboxes);
            cp.log_control(&d.id, NEVER_SENT).await;
            continue;
        }
        tokio::spawn(replay_until_settled(cp.clone(), d.id, d.node));
    }
}

async fn replay_until_settled(cp: ControlPlane, id: String, node: String) {
    let deadline = tokio::time::Instant::now() + cp.inner.config.build_timeout;
    loop {
        let last = match cp.store().last_seq(&id).await {
            Ok(Some(last)) => last,
            Ok(None) => return,
            Err(e) => {
                return tracing::error!(deployment = %id, error = %e, "could not read a deployment");
            }
        };
        match cp.store().deployment(&id).await {
            Ok(Some(d)) if d.state == DeploymentState::Queued => {}
            _ => return,
        }
        let req = ReplayRequest {
            deployment: id.clone(),
            from_seq: last + 1,
        };
        let answer: Result<Ack, BusError> = cp
            .inner
            .bus
            .request(
                &node,
                AgentOp::Replay,
                &req,
                cp.inner.config.request_timeout,
            )
            .await;
        match answer {
            Ok(Ack { accepted: true }) => {
                tracing::info!(deployment = %id, from_seq = last + 1, "asked the agent to replay after a restart");
                // The build may still be running on the agent: its next
                // messages arrive as usual, and ingest fills any new gap.
                return;
            }
            Ok(Ack { accepted: false }) | Err(BusError::Agent(_)) => {
                let reason = "after a control plane restart the agent could not replay this \
                              deployment; its final state is unknown";
                tracing::warn!(deployment = %id, node = %node, "{reason}");
                let _ = cp.store().fail_queued(&id, reason, Utc::now()).await;
                cp.changed(Topic::Sandboxes);
                cp.log_control(&id, reason).await;
                return;
            }
            Err(e) => {
                tracing::debug!(deployment = %id, node = %node, error = %e, "agent not reachable yet for a replay");
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::select! {
            _ = cp.inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}
