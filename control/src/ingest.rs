//! Applies what agents report about deployments. One subscription on
//! `sdp.deploy.*.*`, processed in order by one task, so a deployment's events
//! and log lines are applied in the order the agent sent them.
//!
//! Core NATS delivers at most once, so a message can go missing. Events and
//! log lines share one sequence counter per deployment: a message that skips
//! a number is not applied, and the agent is asked to `replay` from the first
//! missing one, which resends the skipped message too, in order. Only when the
//! agent cannot replay is the gap accepted (and marked in the log).
//!
//! Nothing an agent (or anyone on the bus) sends can stop this task: unknown
//! deployments and undecodable messages are skipped with a debug log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use sdp_contract::subjects::{AgentOp, DeployStream, parse_deploy};
use sdp_contract::{Ack, DeployEvent, EventKind, LogLine, ReplayRequest};
use tokio_util::sync::CancellationToken;

use crate::ControlPlane;
use crate::bus::next_message;
use crate::changes::Topic;
use crate::storage::SeqOutcome;

/// How long a replay request is given before the same gap is asked for again.
const REPLAY_RETRY: Duration = Duration::from_secs(2);

/// Replays asked for, per deployment.
#[derive(Default)]
pub struct GapTracker {
    map: Mutex<HashMap<String, GapState>>,
}

struct GapState {
    from: u64,
    asked: Instant,
    /// The agent said it cannot replay: later messages apply despite gaps.
    unrecoverable: bool,
}

impl GapTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, GapState>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether to ask for a replay from `from` now: not while the same replay
    /// is recent, so a burst of messages after one gap asks once.
    fn should_ask(&self, id: &str, from: u64) -> bool {
        let mut map = self.lock();
        match map.get_mut(id) {
            Some(g) if g.unrecoverable => false,
            Some(g) if g.from == from && g.asked.elapsed() < REPLAY_RETRY => false,
            Some(g) => {
                g.from = from;
                g.asked = Instant::now();
                true
            }
            None => {
                map.insert(
                    id.to_owned(),
                    GapState {
                        from,
                        asked: Instant::now(),
                        unrecoverable: false,
                    },
                );
                true
            }
        }
    }

    fn unrecoverable(&self, id: &str) -> bool {
        self.lock().get(id).is_some_and(|g| g.unrecoverable)
    }

    fn give_up(&self, id: &str) {
        if let Some(g) = self.lock().get_mut(id) {
            g.unrecoverable = true;
        }
    }

    fn clear(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// Most messages taken from the subscription at once: bounds one write and
/// the wait a batch adds for the messages behind it.
const MAX_BATCH: usize = 512;

pub async fn run(mut sub: async_nats::Subscriber, cp: ControlPlane, shutdown: CancellationToken) {
    while let Some(msg) = next_message(&mut sub, &shutdown).await {
        // What is already waiting comes along: a build's burst of output then
        // costs one database write and one file write per run of lines, not
        // one of each per line (which held ingest near 1,000 lines/s).
        let mut batch = vec![msg];
        while batch.len() < MAX_BATCH {
            match sub.next().now_or_never() {
                Some(Some(m)) => batch.push(m),
                _ => break,
            }
        }
        handle_batch(&cp, &batch).await;
    }
}

/// A message from an agent, decoded and checked, or nothing to apply.
enum Incoming {
    Event(DeployEvent),
    Log(LogLine),
    Skip,
}

fn classify(subject: &str, payload: &[u8]) -> Incoming {
    let Some((id, stream)) = parse_deploy(subject) else {
        tracing::debug!(subject, "ignoring a message on an unexpected subject");
        return Incoming::Skip;
    };
    match stream {
        DeployStream::Event => match sdp_contract::decode::<DeployEvent>(payload) {
            Ok(ev) if ev.deployment == id => Incoming::Event(ev),
            Ok(_) => {
                tracing::debug!(subject, "ignoring an event for another deployment");
                Incoming::Skip
            }
            Err(e) => {
                tracing::debug!(subject, error = %e, "ignoring an undecodable event");
                Incoming::Skip
            }
        },
        DeployStream::Log => match sdp_contract::decode::<LogLine>(payload) {
            Ok(line) if line.deployment == id => Incoming::Log(line),
            Ok(_) => {
                tracing::debug!(subject, "ignoring a log line for another deployment");
                Incoming::Skip
            }
            Err(e) => {
                tracing::debug!(subject, error = %e, "ignoring an undecodable log line");
                Incoming::Skip
            }
        },
    }
}

/// Applies `msgs` in order; consecutive log lines of one deployment with
/// consecutive numbers go in together.
async fn handle_batch(cp: &ControlPlane, msgs: &[async_nats::Message]) {
    let mut run: Vec<LogLine> = Vec::new();
    for msg in msgs {
        match classify(&msg.subject, &msg.payload) {
            Incoming::Log(line) => {
                if run
                    .last()
                    .is_some_and(|p| p.deployment != line.deployment || p.seq + 1 != line.seq)
                {
                    apply_log_run(cp, std::mem::take(&mut run)).await;
                }
                run.push(line);
            }
            Incoming::Event(ev) => {
                apply_log_run(cp, std::mem::take(&mut run)).await;
                apply_event(cp, ev).await;
            }
            Incoming::Skip => {}
        }
    }
    apply_log_run(cp, run).await;
}

async fn apply_event(cp: &ControlPlane, ev: DeployEvent) {
    let id = ev.deployment.as_str();
    let accept_gap = cp.inner.gaps.unrecoverable(id);
    match cp.store().apply_event(&ev, accept_gap).await {
        Ok(outcome) => {
            if matches!(outcome, SeqOutcome::Applied { .. }) {
                cp.changed(Topic::Sandboxes);
            }
            note(cp, id, ev.seq, outcome).await;
            if matches!(outcome, SeqOutcome::Applied { .. })
                && let EventKind::State { state, .. } = &ev.kind
                && state.is_final()
            {
                cp.inner.builds.finished(id);
                cp.inner.gaps.clear(id);
                cp.forget_mask(id);
            }
        }
        Err(e) => {
            tracing::error!(deployment = id, seq = ev.seq, error = %e, "could not store an event")
        }
    }
}

/// Log lines of one deployment with consecutive numbers, in order.
async fn apply_log_run(cp: &ControlPlane, lines: Vec<LogLine>) {
    let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
        return;
    };
    let id = first.deployment.as_str();
    let accept_gap = cp.inner.gaps.unrecoverable(id);
    let outcome = match cp
        .store()
        .advance_seq(id, first.seq..=last.seq, accept_gap)
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => {
            return tracing::error!(deployment = id, seq = first.seq, error = %e, "could not store log lines' sequence numbers");
        }
    };
    // Lines a replay brought twice are skipped; the first new one is where
    // an accepted gap ends.
    let first_new = match outcome {
        SeqOutcome::Applied { previous } => first.seq.max(previous + 1),
        _ => first.seq,
    };
    note(cp, id, first_new, outcome).await;
    if let SeqOutcome::Applied { previous } = outcome {
        // The agent masks secrets too; this is the second line of defence,
        // for what reaches the disk here.
        let masks = cp.mask_for(id).await;
        let masked: Vec<(&str, String)> = lines
            .iter()
            .filter(|l| l.seq > previous)
            .map(|l| (l.stage.as_str(), crate::secrets::mask(&l.line, &masks)))
            .collect();
        let texts = masked.iter().map(|(stage, text)| (*stage, text.as_str()));
        if let Err(e) = cp.inner.logs.append_all(id, texts).await {
            tracing::error!(deployment = id, seq = first_new, error = %e, "could not append to the deployment log");
        }
    }
}

async fn note(cp: &ControlPlane, id: &str, seq: u64, outcome: SeqOutcome) {
    match outcome {
        SeqOutcome::Unknown => {
            tracing::debug!(
                deployment = id,
                seq,
                "ignoring a message for an unknown deployment"
            );
        }
        SeqOutcome::Duplicate { last } => {
            tracing::debug!(
                deployment = id,
                seq,
                last,
                "ignoring a message already applied"
            );
        }
        SeqOutcome::Gap { last } => {
            let from = last + 1;
            if cp.inner.gaps.should_ask(id, from) {
                tracing::info!(
                    deployment = id,
                    missing_from = from,
                    seen = seq,
                    "messages of this deployment were lost on the bus; asking the agent to replay"
                );
                tokio::spawn(ask_replay(cp.clone(), id.to_owned(), from));
            }
        }
        SeqOutcome::Applied { previous } if seq > previous + 1 => {
            tracing::warn!(
                deployment = id,
                missing_from = previous + 1,
                missing_to = seq - 1,
                "messages of this deployment were lost and the agent could not replay them"
            );
            let text = format!(
                "messages {} to {} of this deployment were lost on the bus and could not be replayed",
                previous + 1,
                seq - 1
            );
            if let Err(e) = cp.inner.logs.append(id, "control", &text).await {
                tracing::error!(deployment = id, error = %e, "could not append to the deployment log");
            }
        }
        SeqOutcome::Applied { .. } => {}
    }
}

/// Asks the deployment's agent to resend from `from`; the resent messages
/// arrive on the usual subjects and go through [`handle_batch`].
pub(crate) async fn ask_replay(cp: ControlPlane, id: String, from: u64) {
    let node = match cp.store().deployment(&id).await {
        Ok(Some(d)) => d.node,
        Ok(None) => return,
        Err(e) => {
            return tracing::error!(deployment = %id, error = %e, "could not read a deployment");
        }
    };
    let req = ReplayRequest {
        deployment: id.clone(),
        from_seq: from,
    };
    let timeout = cp.inner.config.request_timeout;
    match cp
        .inner
        .bus
        .request::<_, Ack>(&node, AgentOp::Replay, &req, timeout)
        .await
    {
        Ok(Ack { accepted: true }) => {}
        Ok(Ack { accepted: false }) | Err(crate::bus::BusError::Agent(_)) => {
            tracing::warn!(deployment = %id, node = %node, "the agent cannot replay; accepting the gap");
            cp.inner.gaps.give_up(&id);
        }
        Err(e) => {
            // Not connected or not answering: the next message after the gap
            // asks again, and a restart reconciles.
            tracing::warn!(deployment = %id, node = %node, error = %e, "replay request failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_asked_for_once_until_the_retry_interval_or_a_new_gap() {
        let g = GapTracker::default();
        assert!(g.should_ask("d", 3));
        assert!(!g.should_ask("d", 3));
        assert!(g.should_ask("d", 5));
        assert!(!g.unrecoverable("d"));
        g.give_up("d");
        assert!(g.unrecoverable("d"));
        assert!(!g.should_ask("d", 7));
        g.clear("d");
        assert!(!g.unrecoverable("d"));
    }
}
