//! Applies what agents report about deployments. One subscription on
//! `sdp.deploy.*.*`, processed in order by one task, so a deployment's events
//! and log lines are applied in the order the agent sent them.
//!
//! Nothing an agent (or anyone on the bus) sends can stop this task: unknown
//! deployments and undecodable messages are skipped with a debug log.

use futures::StreamExt;
use sdp_contract::subjects::{DeployStream, parse_deploy};
use sdp_contract::{DeployEvent, LogLine};
use tokio_util::sync::CancellationToken;

use crate::logs::LogFiles;
use crate::storage::{SeqOutcome, Store};

pub async fn run(
    mut sub: async_nats::Subscriber,
    store: Store,
    logs: LogFiles,
    shutdown: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            msg = sub.next() => match msg {
                Some(msg) => msg,
                None => return,
            },
        };
        handle(&store, &logs, &msg.subject, &msg.payload).await;
    }
}

pub(crate) async fn handle(store: &Store, logs: &LogFiles, subject: &str, payload: &[u8]) {
    let Some((id, stream)) = parse_deploy(subject) else {
        tracing::debug!(subject, "ignoring a message on an unexpected subject");
        return;
    };
    match stream {
        DeployStream::Event => {
            let ev: DeployEvent = match sdp_contract::decode(payload) {
                Ok(ev) => ev,
                Err(e) => {
                    return tracing::debug!(subject, error = %e, "ignoring an undecodable event");
                }
            };
            if ev.deployment != id {
                return tracing::debug!(subject, "ignoring an event for another deployment");
            }
            match store.apply_event(&ev).await {
                Ok(outcome) => note(id, ev.seq, outcome),
                Err(e) => {
                    tracing::error!(deployment = id, seq = ev.seq, error = %e, "could not store an event")
                }
            }
        }
        DeployStream::Log => {
            let line: LogLine = match sdp_contract::decode(payload) {
                Ok(line) => line,
                Err(e) => {
                    return tracing::debug!(subject, error = %e, "ignoring an undecodable log line");
                }
            };
            if line.deployment != id {
                return tracing::debug!(subject, "ignoring a log line for another deployment");
            }
            let outcome = match store.advance_seq(id, line.seq).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    return tracing::error!(deployment = id, seq = line.seq, error = %e, "could not store a log line's sequence number");
                }
            };
            note(id, line.seq, outcome);
            if matches!(outcome, SeqOutcome::Applied { .. })
                && let Err(e) = logs.append(id, &line.stage, &line.line).await
            {
                tracing::error!(deployment = id, seq = line.seq, error = %e, "could not append to the deployment log");
            }
        }
    }
}

fn note(id: &str, seq: u64, outcome: SeqOutcome) {
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
        SeqOutcome::Applied { previous } if seq > previous + 1 => {
            // Replaying the gap from the agent's spool comes with the replay op.
            tracing::warn!(
                deployment = id,
                missing_from = previous + 1,
                missing_to = seq - 1,
                "messages of this deployment were lost on the bus"
            );
        }
        SeqOutcome::Applied { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Deployment, StageStatus};
    use chrono::Utc;
    use sdp_contract::{DeploymentState, EventKind, LogStream, encode};

    async fn setup() -> (tempfile::TempDir, Store, LogFiles) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("sdp.db")).await.unwrap();
        let logs = LogFiles::create(dir.path()).await.unwrap();
        let d = Deployment {
            id: "d-1".into(),
            sandbox: "qa".into(),
            repository: "eredar".into(),
            branch: "main".into(),
            node: "micro".into(),
            user: "achmad".into(),
            state: DeploymentState::Queued,
            port: 9001,
            commit: None,
            container: None,
            failed_stage: None,
            reason: None,
            stages: vec![],
            created_at: Utc::now(),
            started_at: None,
            completed_at: None,
        };
        store.insert_deployment(&d).await.unwrap();
        (dir, store, logs)
    }

    fn log(id: &str, seq: u64, line: &str) -> Vec<u8> {
        encode(&LogLine {
            deployment: id.into(),
            seq,
            at: Utc::now(),
            stage: "git fetch".into(),
            stream: LogStream::Stdout,
            line: line.into(),
        })
    }

    #[tokio::test]
    async fn events_and_lines_are_applied_once_each() {
        let (_dir, store, logs) = setup().await;
        let started = encode(&DeployEvent {
            deployment: "d-1".into(),
            seq: 1,
            at: Utc::now(),
            kind: EventKind::StageStarted {
                stage: "git fetch".into(),
            },
        });
        handle(&store, &logs, "sdp.deploy.d-1.event", &started).await;
        handle(
            &store,
            &logs,
            "sdp.deploy.d-1.log",
            &log("d-1", 2, "From origin"),
        )
        .await;
        handle(
            &store,
            &logs,
            "sdp.deploy.d-1.log",
            &log("d-1", 2, "From origin"),
        )
        .await;
        let d = store.deployment("d-1").await.unwrap().unwrap();
        assert_eq!(d.stages[0].status, StageStatus::Running);
        assert_eq!(logs.read("d-1").await.unwrap(), "[git fetch] From origin\n");
    }

    #[tokio::test]
    async fn garbage_strangers_and_mismatches_are_skipped() {
        let (dir, store, logs) = setup().await;
        handle(&store, &logs, "sdp.deploy.d-1.log", b"\xff not json").await;
        handle(&store, &logs, "sdp.deploy.d-1.event", b"{\"v\":1}").await;
        handle(&store, &logs, "sdp.deploy.ghost.log", &log("ghost", 1, "x")).await;
        handle(&store, &logs, "sdp.deploy.d-1.log", &log("ghost", 1, "x")).await;
        handle(&store, &logs, "sdp.deploy.x/..log", &log("x/.", 1, "x")).await;
        assert_eq!(logs.read("d-1").await.unwrap(), "");
        let files: Vec<_> = std::fs::read_dir(dir.path().join("logs"))
            .unwrap()
            .collect();
        assert!(files.is_empty(), "{files:?}");
    }
}
