//! SDP's default permission set enforced by a real embedded broker, seen
//! through the real `async-nats` client.

use std::time::Duration;

use async_nats::{Event, ServerError};
use futures::StreamExt;
use sdp::bus_permissions::{Credential, sdp_users};
use sdp_broker::{Authorization, Broker, BrokerConfig, BrokerHandle};
use sdp_contract::subjects::{self, AgentOp};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

async fn start() -> (BrokerHandle, CancellationToken) {
    let users = sdp_users(
        Credential::new("control", "control-pw"),
        &[
            ("micro".into(), Credential::new("agent-micro", "micro-pw")),
            ("gateway".into(), Credential::new("agent-gateway", "gw-pw")),
        ],
        Some(Credential::new("ops", "ops-pw")),
    );
    let config = BrokerConfig {
        authorization: Authorization::Users(users),
        ..BrokerConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let broker = Broker::start(listener, config, shutdown.clone())
        .await
        .expect("start broker");
    (broker, shutdown)
}

/// Connects as `user`; server errors (`-ERR`) arrive on the receiver.
async fn connect(
    broker: &BrokerHandle,
    user: &str,
    pass: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(e) = event {
                    let text = match e {
                        ServerError::Other(text) => text,
                        other => other.to_string(),
                    };
                    let _ = tx.send(text);
                }
            }
        })
        .connect(broker.client_url())
        .await
        .expect("connect");
    (client, rx)
}

async fn next_error(errors: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, errors.recv())
        .await
        .expect("a server error within the timeout")
        .expect("error channel open")
}

/// Waits until the broker holds `n` subscriptions.
async fn wait_subscriptions(broker: &BrokerHandle, n: usize) {
    tokio::time::timeout(WAIT, async {
        while broker.subscription_count() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("subscriptions registered");
}

async fn stop(broker: BrokerHandle, shutdown: CancellationToken) {
    shutdown.cancel();
    tokio::time::timeout(WAIT, broker.stopped())
        .await
        .expect("broker stops promptly");
}

#[tokio::test]
async fn agent_cannot_subscribe_to_another_nodes_commands() {
    let (broker, shutdown) = start().await;
    let (agent, mut errors) = connect(&broker, "agent-micro", "micro-pw").await;
    let _sub = agent
        .subscribe(subjects::agent_all("gateway"))
        .await
        .expect("subscribe is sent");
    agent.flush().await.expect("flush");
    let err = next_error(&mut errors).await;
    assert!(
        err.contains("Permissions Violation for Subscription to \"sdp.agent.gateway.>\""),
        "{err}"
    );
    stop(broker, shutdown).await;
}

#[tokio::test]
async fn agent_serves_its_own_commands_and_replies() {
    let (broker, shutdown) = start().await;
    let (agent, mut errors) = connect(&broker, "agent-micro", "micro-pw").await;
    let (control, _) = connect(&broker, "control", "control-pw").await;
    let mut commands = agent
        .subscribe(subjects::agent_all("micro"))
        .await
        .expect("subscribe");
    wait_subscriptions(&broker, 1).await;
    let responder = tokio::spawn(async move {
        let msg = commands.next().await.expect("a command");
        agent
            .publish(msg.reply.expect("a reply subject"), "ok".into())
            .await
            .expect("reply");
        agent.flush().await.expect("flush");
        agent
    });
    let reply = tokio::time::timeout(
        WAIT,
        control.request(subjects::agent_op("micro", AgentOp::Status), "".into()),
    )
    .await
    .expect("reply within timeout")
    .expect("the agent replies (allow_responses)");
    assert_eq!(&reply.payload[..], b"ok");
    let _agent = responder.await.expect("responder");
    assert!(errors.try_recv().is_err(), "no violation for the agent");
    stop(broker, shutdown).await;
}

#[tokio::test]
async fn agent_cannot_publish_commands_or_other_nodes_presence() {
    let (broker, shutdown) = start().await;
    let (agent, mut errors) = connect(&broker, "agent-micro", "micro-pw").await;
    agent
        .publish(subjects::agent_op("gateway", AgentOp::Deploy), "".into())
        .await
        .expect("publish is sent");
    agent.flush().await.expect("flush");
    let err = next_error(&mut errors).await;
    assert!(
        err.contains("Permissions Violation for Publish to \"sdp.agent.gateway.deploy\""),
        "{err}"
    );
    agent
        .publish(subjects::node_hello("gateway"), "".into())
        .await
        .expect("publish is sent");
    agent.flush().await.expect("flush");
    let err = next_error(&mut errors).await;
    assert!(
        err.contains("Permissions Violation for Publish to \"sdp.node.gateway.hello\""),
        "{err}"
    );
    stop(broker, shutdown).await;
}

#[tokio::test]
async fn ops_cannot_publish_commands() {
    let (broker, shutdown) = start().await;
    let (control, _) = connect(&broker, "control", "control-pw").await;
    let mut seen = control
        .subscribe(subjects::agent_op("micro", AgentOp::Deploy))
        .await
        .expect("subscribe");
    wait_subscriptions(&broker, 1).await;
    let (ops, mut errors) = connect(&broker, "ops", "ops-pw").await;
    ops.publish(subjects::agent_op("micro", AgentOp::Deploy), "".into())
        .await
        .expect("publish is sent");
    ops.flush().await.expect("flush");
    let err = next_error(&mut errors).await;
    assert!(
        err.contains("Permissions Violation for Publish to \"sdp.agent.micro.deploy\""),
        "{err}"
    );
    // The broker answered the publish with the violation, so it had been
    // processed: nothing reached the subscriber.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), seen.next())
            .await
            .is_err(),
        "the command was not delivered"
    );
    let _sub = ops
        .subscribe(subjects::agent_all("micro"))
        .await
        .expect("subscribe is sent");
    ops.flush().await.expect("flush");
    let err = next_error(&mut errors).await;
    assert!(
        err.contains("Permissions Violation for Subscription to \"sdp.agent.micro.>\""),
        "{err}"
    );
    stop(broker, shutdown).await;
}

#[tokio::test]
async fn ops_can_tap_deploy_node_and_audit_subjects() {
    let (broker, shutdown) = start().await;
    let (ops, mut errors) = connect(&broker, "ops", "ops-pw").await;
    let mut deploys = ops.subscribe(subjects::DEPLOY_TAP).await.expect("sub");
    let mut nodes = ops.subscribe(subjects::NODE_ALL).await.expect("sub");
    let mut audits = ops.subscribe(subjects::AUDIT_TAP).await.expect("sub");
    wait_subscriptions(&broker, 3).await;
    let (agent, _) = connect(&broker, "agent-micro", "micro-pw").await;
    let (control, _) = connect(&broker, "control", "control-pw").await;
    agent
        .publish(subjects::deploy_log("d1"), "line".into())
        .await
        .expect("publish");
    agent
        .publish(subjects::node_heartbeat("micro"), "hb".into())
        .await
        .expect("publish");
    agent.flush().await.expect("flush");
    control
        .publish(subjects::audit("deploy"), "rec".into())
        .await
        .expect("publish");
    control.flush().await.expect("flush");
    for (sub, subject, payload) in [
        (&mut deploys, "sdp.deploy.d1.log", &b"line"[..]),
        (&mut nodes, "sdp.node.micro.heartbeat", b"hb"),
        (&mut audits, "sdp.audit.deploy", b"rec"),
    ] {
        let msg = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("delivered within timeout")
            .expect("subscription open");
        assert_eq!(msg.subject.as_str(), subject);
        assert_eq!(&msg.payload[..], payload);
    }
    assert!(errors.try_recv().is_err(), "no violation for the ops taps");
    stop(broker, shutdown).await;
}
