//! The bus with users on: SDP's default permission set is live in the
//! embedded broker, and a whole deploy still works through it.

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use support::{Bed, Options, files_containing, free_port, trace_log};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_works_on_a_bus_with_users_and_ops_may_only_tap() {
    let ops_password = "ops-Tap-Only-7f3a".to_owned();
    let bed = Bed::start(Options {
        bus_ops_password: Some(ops_password.clone()),
        ..Options::default()
    })
    .await;

    // Nobody gets on anonymously.
    let anonymous = tokio::time::timeout(
        Duration::from_secs(10),
        async_nats::connect(bed.stack.nats_url.as_str()),
    )
    .await
    .expect("an anonymous connect is answered");
    assert!(anonymous.is_err(), "an anonymous client was let on the bus");

    // The read-only operator taps progress.
    let ops = async_nats::ConnectOptions::with_user_and_password("ops".into(), ops_password)
        .connect(bed.stack.nats_url.as_str())
        .await
        .expect("ops connects");
    let mut tap = ops.subscribe("sdp.deploy.>").await.unwrap();
    ops.flush().await.unwrap();

    // Login (gateway agent's auth), deploy (micro agent), events and logs
    // back: every path the permission set must allow.
    bed.login_ok().await;
    let (status, d) = bed
        .deploy(json!({"sandbox": bed.sandbox, "repository": "account",
                       "branch": "main", "port": free_port()}))
        .await;
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_str().unwrap().to_owned();
    let d = bed.wait_final(&id).await;
    assert_eq!(d["state"], "RUNNING", "{d}\n{}", bed.logs(&id).await);

    let subject = format!("sdp.deploy.{id}.log");
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = tap.next().await {
            if msg.subject.as_str() == subject {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(seen, "ops saw none of the deploy's log lines");

    // ... and cannot send commands: the broker refuses the publish.
    let (errors_tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
    let ops2 = async_nats::ConnectOptions::with_user_and_password(
        "ops".into(),
        "ops-Tap-Only-7f3a".into(),
    )
    .event_callback(move |event| {
        let errors_tx = errors_tx.clone();
        async move {
            let _ = errors_tx.send(event.to_string());
        }
    })
    .connect(bed.stack.nats_url.as_str())
    .await
    .unwrap();
    ops2.publish("sdp.agent.micro.deploy", "{}".into())
        .await
        .unwrap();
    ops2.flush().await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = errors.recv().await {
            if e.contains("Permissions Violation") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(refused, "ops published a command");
    drop((ops, ops2));

    // The bus password leaked nowhere: not in what SDP logged (the broker
    // logs CONNECTs at debug level), not in any file of the run.
    let needle = b"ops-Tap-Only-7f3a";
    let trace = std::fs::read(trace_log()).unwrap();
    assert!(
        !trace.windows(needle.len()).any(|w| w == needle),
        "bus password in tracing output"
    );
    let hits = files_containing(bed.dir.path(), needle);
    assert!(hits.is_empty(), "bus password found in {hits:?}");
    bed.stop().await;
}
