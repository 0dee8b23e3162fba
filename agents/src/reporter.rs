//! A deployment's voice: its events and log lines, numbered from one shared
//! sequence, masked, spooled and published.

use chrono::Utc;
use sdp_contract::subjects::{self, DeployStream};
use sdp_contract::{DeployEvent, DeploymentState, EventKind, LogLine, LogStream, encode};

use crate::mask::Masker;
use crate::spool::{Record, Spool, SpoolWriter};

#[derive(Debug)]
pub struct Reporter {
    nats: async_nats::Client,
    deployment: String,
    /// The last sequence number used.
    seq: u64,
    spool: SpoolWriter,
    masker: Masker,
    spool_failed: bool,
}

impl Reporter {
    /// A reporter for a new deployment: its first message gets `seq` 1.
    pub fn new(
        nats: async_nats::Client,
        deployment: &str,
        spool: SpoolWriter,
        masker: Masker,
    ) -> Self {
        Reporter {
            nats,
            deployment: deployment.to_owned(),
            seq: 0,
            spool,
            masker,
            spool_failed: false,
        }
    }

    pub async fn event(&mut self, kind: EventKind) {
        self.seq += 1;
        let event = DeployEvent {
            deployment: self.deployment.clone(),
            seq: self.seq,
            at: Utc::now(),
            kind,
        };
        self.emit(DeployStream::Event, encode(&event)).await;
    }

    /// Ends the deployment as failed, naming the stage that was open, if any.
    /// `reason` goes out as given: masking it is the caller's business.
    pub async fn fail(&mut self, stage: Option<String>, reason: String) {
        if let Some(stage) = stage {
            self.event(EventKind::StageFailed {
                stage,
                reason: reason.clone(),
            })
            .await;
        }
        self.event(EventKind::State {
            state: DeploymentState::Failed,
            reason: Some(reason),
            commit: None,
            container: None,
        })
        .await;
    }

    /// Ends the deployment as running `commit` in `container`.
    pub async fn running(&mut self, commit: String, container: String) {
        self.event(EventKind::State {
            state: DeploymentState::Running,
            reason: None,
            commit: Some(commit),
            container: Some(container),
        })
        .await;
    }

    /// Publishes one line of output, with secrets masked.
    pub async fn log(&mut self, stage: &str, stream: LogStream, line: &str) {
        self.seq += 1;
        let line = LogLine {
            deployment: self.deployment.clone(),
            seq: self.seq,
            at: Utc::now(),
            stage: stage.to_owned(),
            stream,
            line: self.masker.mask(line),
        };
        self.emit(DeployStream::Log, encode(&line)).await;
    }

    /// The agent's own account of what it does.
    pub async fn narrate(&mut self, stage: &str, line: &str) {
        self.log(stage, LogStream::Agent, line).await;
    }

    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    /// Spooled first, so whatever reaches the bus can be replayed.
    async fn emit(&mut self, stream: DeployStream, bytes: Vec<u8>) {
        match self.spool.append(&bytes).await {
            Err(e) if !self.spool_failed => {
                tracing::warn!(deployment = %self.deployment, error = %e,
                    "cannot write the deployment spool; replay will miss messages");
                self.spool_failed = true;
            }
            _ => {}
        }
        let subject = match stream {
            DeployStream::Event => subjects::deploy_event(&self.deployment),
            DeployStream::Log => subjects::deploy_log(&self.deployment),
        };
        if let Err(e) = self.nats.publish(subject, bytes.into()).await {
            tracing::warn!(deployment = %self.deployment, error = %e,
                "cannot publish; the control plane will ask for a replay");
        }
    }

    /// A reporter that goes on with an existing deployment's stream, after
    /// its last spooled sequence number.
    pub async fn resume(
        nats: &async_nats::Client,
        spool: &Spool,
        deployment: &str,
    ) -> std::io::Result<Self> {
        let records = spool.read(deployment).await?;
        let writer = spool.append_to(deployment).await?;
        let mut reporter = Reporter::new(nats.clone(), deployment, writer, Masker::default());
        reporter.seq = records.iter().map(|r| r.seq).max().unwrap_or(0);
        Ok(reporter)
    }

    /// Closes a deployment the agent was running when it stopped: its open
    /// stage fails and the deployment ends `FAILED`, so no deployment stays
    /// unfinished forever. Returns whether anything was closed.
    pub async fn close_interrupted(
        nats: &async_nats::Client,
        spool: &Spool,
        deployment: &str,
    ) -> std::io::Result<bool> {
        let records = spool.read(deployment).await?;
        let Some(close) = interrupted(&records) else {
            return Ok(false);
        };
        let writer = spool.append_to(deployment).await?;
        let mut reporter = Reporter::new(nats.clone(), deployment, writer, Masker::default());
        reporter.seq = records.iter().map(|r| r.seq).max().unwrap_or(0);
        let reason = match &close {
            Some(stage) => format!("the agent restarted during '{stage}'"),
            None => "the agent restarted before the deployment finished".to_owned(),
        };
        reporter.fail(close, reason).await;
        Ok(true)
    }
}

/// `None` if the deployment reached a final state; otherwise `Some` of the
/// stage that was open (if any).
fn interrupted(records: &[Record]) -> Option<Option<String>> {
    let mut open: Option<String> = None;
    for event in records.iter().filter_map(|r| r.event.as_ref()) {
        match &event.kind {
            EventKind::State { state, .. } if state.is_final() => return None,
            EventKind::StageStarted { stage } => open = Some(stage.clone()),
            EventKind::StageCompleted { .. } | EventKind::StageFailed { .. } => open = None,
            EventKind::State { .. } => {}
        }
    }
    Some(open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdp_contract::DeployEvent;

    fn rec(seq: u64, kind: EventKind) -> Record {
        let event = DeployEvent {
            deployment: "d".into(),
            seq,
            at: Utc::now(),
            kind,
        };
        Record {
            seq,
            stream: DeployStream::Event,
            bytes: encode(&event),
            event: Some(event),
        }
    }

    fn started(s: &str) -> EventKind {
        EventKind::StageStarted { stage: s.into() }
    }

    #[test]
    fn an_open_stage_is_found() {
        let records = vec![
            rec(1, started("git fetch")),
            rec(
                2,
                EventKind::StageCompleted {
                    stage: "git fetch".into(),
                },
            ),
            rec(3, started("git checkout")),
        ];
        assert_eq!(interrupted(&records), Some(Some("git checkout".into())));
        assert_eq!(interrupted(&records[..2]), Some(None));
    }

    #[test]
    fn a_finished_deployment_is_left_alone() {
        let records = vec![
            rec(1, started("git fetch")),
            rec(
                2,
                EventKind::State {
                    state: DeploymentState::Failed,
                    reason: None,
                    commit: None,
                    container: None,
                },
            ),
        ];
        assert_eq!(interrupted(&records), None);
    }
}
