//! `sdp broker` as a drop-in for nats-server: the harness that starts
//! Debian's nats-server for other tests (`sdp_testbed::NatsServer`) starts
//! `sdp broker` with the very same flags, reads the same log lines, and
//! stock clients and monitoring work against it.

use std::time::Duration;

use futures::StreamExt;
use sdp_testbed::NatsServer;

const SDP: &str = env!("CARGO_BIN_EXE_sdp");

async fn drop_in(args: &[&str]) -> NatsServer {
    NatsServer::start_as(&[SDP, "broker"], args)
        .await
        .expect("sdp broker started the way nats-server is")
}

#[tokio::test]
async fn the_nats_server_harness_runs_sdp_broker_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("broker.log");
    let pid = dir.path().join("broker.pid");
    let (log_s, pid_s) = (log.to_str().unwrap(), pid.to_str().unwrap());
    let broker = drop_in(&["--user", "ops", "--pass", "s3cret", "-P", pid_s]).await;

    // -P writes the process id, as nats-server does.
    let written = std::fs::read_to_string(&pid).unwrap();
    assert_eq!(written.trim().parse::<u32>().ok(), broker.pid());

    // A stock client with the user from the flags; a round trip.
    let client = async_nats::ConnectOptions::with_user_and_password("ops".into(), "s3cret".into())
        .connect(broker.url())
        .await
        .unwrap();
    let mut sub = client.subscribe("drop.in").await.unwrap();
    client.publish("drop.in", "hello".into()).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the message arrives")
        .unwrap();
    assert_eq!(&msg.payload[..], b"hello");
    // Without the password: refused.
    assert!(
        async_nats::connect(broker.url()).await.is_err(),
        "an anonymous client got through"
    );

    // Monitoring on -m, with nats-server's field names.
    let varz: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{}/varz", broker.monitor_port()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert!(varz["connections"].as_u64() >= Some(1), "{varz}");
    assert!(varz["in_msgs"].as_u64() >= Some(1), "{varz}");
    drop(broker);

    // -l: the same lines in a file (not on stderr, as with nats-server),
    // as plain text for log tooling.
    let mut child = tokio::process::Command::new(SDP)
        .args(["broker", "-a", "127.0.0.1", "-p", "-1", "-l", log_s])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let text = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Server is ready") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("sdp broker -l never logged that it was ready");
    let _ = child.kill().await;
    assert!(
        text.contains("Listening for client connections on 127.0.0.1:"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in the log file: {text:?}"
    );
}
