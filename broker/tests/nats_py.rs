//! The broker against the Python client nats-py, side by side with
//! async-nats on the same broker.
//!
//! nats-py must be installed (`pip install nats-py`); without it this test
//! fails rather than skips, so CI cannot silently lose interop coverage.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sdp_broker::{Broker, BrokerConfig};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nats_py_client.py")
}

async fn require_nats_py() {
    let out = Command::new("python3")
        .args(["-c", "import nats"])
        .output()
        .await
        .expect("python3 must be installed to run the nats-py interop test");
    assert!(
        out.status.success(),
        "the nats-py package is missing (`pip install nats-py`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn nats_py_interop() {
    require_nats_py().await;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let broker = Broker::start(listener, BrokerConfig::default(), shutdown.clone())
        .await
        .expect("start broker");

    // The Rust side: a responder for the Python client's request and a
    // listener on the Python client's subjects.
    let rust = async_nats::connect(broker.client_url())
        .await
        .expect("async-nats connects");
    let mut echo = rust.subscribe("rust.echo").await.expect("sub");
    let mut watch = rust.subscribe("py.data.>").await.expect("sub");
    // A request nobody serves is answered by the broker after it processed
    // the SUBs above, so Python cannot race ahead of them.
    let sync = rust
        .request("sync.nobody.listens", Bytes::new())
        .await
        .expect_err("no responders");
    assert_eq!(sync.kind(), async_nats::RequestErrorKind::NoResponders);
    let responder = tokio::spawn({
        let rust = rust.clone();
        async move {
            while let Some(req) = echo.next().await {
                if let Some(reply) = req.reply {
                    let mut body = b"rust:".to_vec();
                    body.extend_from_slice(&req.payload);
                    let _ = rust.publish(reply, body.into()).await;
                }
            }
        }
    });

    let child = Command::new("python3")
        .arg(script())
        .arg(broker.client_url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python3");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("python client finishes within 60s")
        .expect("python client output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let expected = [
        format!("CONNECTED {}", sdp_broker::SERVER_VERSION),
        "MSG py.data.one first".to_string(),
        "MSG py.data.two second".to_string(),
        "HDR py.data.hdr yes with-headers".to_string(),
        "REPLY py:ping".to_string(),
        "RUST-REPLY rust:hello".to_string(),
        "NO-RESPONDERS ok fast".to_string(),
        "QUEUE total=20".to_string(),
        "DONE".to_string(),
    ];
    assert_eq!(lines, expected, "stderr:\n{stderr}");

    // What Python published reached async-nats too, headers included.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let m = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("message from python")
            .expect("subscription open");
        seen.push((m.subject.to_string(), m.payload, m.headers.is_some()));
    }
    assert_eq!(
        seen,
        vec![
            ("py.data.one".to_string(), Bytes::from("first"), false),
            (
                "py.data.deep.not".to_string(),
                Bytes::from("ignored by *"),
                false
            ),
            ("py.data.two".to_string(), Bytes::from("second"), false),
            ("py.data.hdr".to_string(), Bytes::from("with-headers"), true),
        ]
    );

    responder.abort();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), broker.stopped())
        .await
        .expect("broker stops");
}
