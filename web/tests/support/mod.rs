//! What the dashboard's integration tests share: a control plane on a real
//! nats-server, and a stand-in gateway agent so that signing in works.

#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use sdp_contract::subjects::{self, AgentOp};
use sdp_contract::{AgentKeys, AuthOutcome, NodeKind, Presence, Reply, encode};
use sdp_control::{ControlConfig, ControlPlane};
use tokio_util::sync::CancellationToken;

pub struct Control {
    pub nats: sdp_testbed::NatsServer,
    pub client: async_nats::Client,
    pub data: tempfile::TempDir,
    pub shutdown: CancellationToken,
    pub cp: ControlPlane,
}

/// A control plane with its own nats-server and data directory.
pub async fn control() -> Control {
    let nats = sdp_testbed::NatsServer::start(&[])
        .await
        .expect("nats-server must be installed");
    let client = async_nats::connect(nats.url()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let cp = ControlPlane::start(
        client.clone(),
        ControlConfig::new(data.path().to_path_buf()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    Control {
        nats,
        client,
        data,
        shutdown,
        cp,
    }
}

/// A gateway agent that answers `hello` and accepts every sign-in, for
/// tests about what comes after signing in; everything else it ignores.
pub async fn gateway(nats: async_nats::Client, shutdown: CancellationToken) {
    let keys = AgentKeys::generate();
    let node = "gateway";
    let presence = Presence {
        node: node.into(),
        kind: NodeKind::Gateway,
        version: "test".into(),
        public_key: keys.public_key(),
        address: "127.0.0.1".into(),
        repositories: vec!["erangel".into()],
        containers: vec![],
    };
    let mut sub = nats.subscribe(subjects::agent_all(node)).await.unwrap();
    nats.publish(subjects::node_hello(node), encode(&presence).into())
        .await
        .unwrap();
    sdp_control::bus::round_trip(&nats, Duration::from_secs(5))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = sub.next() => match m { Some(m) => m, None => return },
            };
            let Some(reply_to) = msg.reply.clone() else {
                continue;
            };
            let op = subjects::parse_agent_op(node, &msg.subject).and_then(AgentOp::parse);
            let reply = match op {
                Some(AgentOp::Hello) => encode(&Reply::Ok(presence.clone())),
                Some(AgentOp::Auth) => encode(&Reply::Ok(AuthOutcome {
                    user: "achmad".into(),
                })),
                _ => continue,
            };
            let _ = nats.publish(reply_to, reply.into()).await;
        }
    });
}

/// Sends `req` to `router` in-process; the status, headers and body.
pub async fn send(
    router: &axum::Router,
    req: axum::http::Request<axum::body::Body>,
) -> (axum::http::StatusCode, axum::http::HeaderMap, String) {
    use tower::ServiceExt;
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}
