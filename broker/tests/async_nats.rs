//! The broker against the real `async-nats` client.

use std::time::Duration;

use async_nats::{HeaderMap, Message, RequestErrorKind, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use sdp_broker::{Broker, BrokerConfig, BrokerHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn start() -> (BrokerHandle, CancellationToken) {
    init_tracing();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let broker = Broker::start(listener, BrokerConfig::default(), shutdown.clone())
        .await
        .expect("start broker");
    (broker, shutdown)
}

async fn stop(broker: BrokerHandle, shutdown: CancellationToken) {
    shutdown.cancel();
    tokio::time::timeout(WAIT, broker.stopped())
        .await
        .expect("broker stops promptly");
}

async fn connect(broker: &BrokerHandle) -> async_nats::Client {
    async_nats::connect(broker.client_url())
        .await
        .expect("connect")
}

/// Returns once the broker has processed everything `client` sent before.
///
/// `flush` only empties the client's write buffer. A request nobody serves
/// is answered by the broker itself (no-responders), and the broker handles
/// a connection's operations in order, so the answer proves the earlier
/// SUBs, UNSUBs and PUBs were processed.
async fn sync(client: &async_nats::Client) {
    let err = tokio::time::timeout(WAIT, client.request("sync.nobody.listens", Bytes::new()))
        .await
        .expect("sync within timeout")
        .expect_err("nobody serves the sync subject");
    assert_eq!(err.kind(), RequestErrorKind::NoResponders);
}

async fn next(sub: &mut Subscriber) -> Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("message within timeout")
        .expect("subscription still open")
}

/// Publishes a sentinel on `subject` and returns the payloads received on
/// `sub` before it, proving nothing else arrived in between.
async fn drain_until_sentinel(
    client: &async_nats::Client,
    sub: &mut Subscriber,
    subject: &str,
) -> Vec<Bytes> {
    client
        .publish(subject.to_string(), Bytes::from_static(b"<sentinel>"))
        .await
        .expect("publish sentinel");
    let mut got = Vec::new();
    loop {
        let m = next(sub).await;
        if &m.payload[..] == b"<sentinel>" {
            return got;
        }
        got.push(m.payload);
    }
}

#[tokio::test]
async fn publish_subscribe() {
    let (broker, shutdown) = start().await;
    let client = connect(&broker).await;
    assert_eq!(client.server_info().version, sdp_broker::SERVER_VERSION);
    assert!(client.server_info().headers);
    assert_eq!(client.server_info().max_payload, 1024 * 1024);

    let mut sub = client.subscribe("greet.joe").await.expect("subscribe");
    sync(&client).await;
    let other = connect(&broker).await;
    other
        .publish("greet.joe", "hello".into())
        .await
        .expect("publish");
    let m = next(&mut sub).await;
    assert_eq!(m.subject.as_str(), "greet.joe");
    assert_eq!(&m.payload[..], b"hello");
    assert!(m.headers.is_none());

    // A large message near the limit makes it through intact.
    let big = Bytes::from(vec![0xA5u8; 1024 * 1024 - 100]);
    other
        .publish("greet.joe", big.clone())
        .await
        .expect("publish big");
    assert_eq!(next(&mut sub).await.payload, big);
    stop(broker, shutdown).await;
}

#[tokio::test]
async fn wildcards() {
    let (broker, shutdown) = start().await;
    let client = connect(&broker).await;
    let mut star = client.subscribe("a.*").await.expect("sub");
    let mut full = client.subscribe("a.>").await.expect("sub");
    let mut mid = client.subscribe("*.x.*").await.expect("sub");
    sync(&client).await;

    for subject in ["a", "a.b", "a.b.c", "b.x.c", "a.x.y"] {
        client
            .publish(subject, Bytes::from(subject))
            .await
            .expect("publish");
    }
    assert_eq!(
        drain_until_sentinel(&client, &mut star, "a.s").await,
        vec![Bytes::from("a.b")]
    );
    assert_eq!(
        drain_until_sentinel(&client, &mut full, "a.s").await,
        vec![
            Bytes::from("a.b"),
            Bytes::from("a.b.c"),
            Bytes::from("a.x.y")
        ]
    );
    assert_eq!(
        drain_until_sentinel(&client, &mut mid, "s.x.s").await,
        vec![Bytes::from("b.x.c"), Bytes::from("a.x.y")]
    );
    stop(broker, shutdown).await;
}

#[tokio::test]
async fn headers_round_trip() {
    let (broker, shutdown) = start().await;
    let client = connect(&broker).await;
    let mut sub = client.subscribe("h.test").await.expect("sub");
    sync(&client).await;
    let mut headers = HeaderMap::new();
    headers.insert("X-Sdp-Seq", "42");
    headers.insert("X-Other", "a value");
    client
        .publish_with_headers("h.test", headers, "body".into())
        .await
        .expect("publish");
    let m = next(&mut sub).await;
    assert_eq!(&m.payload[..], b"body");
    let h = m.headers.expect("headers delivered");
    assert_eq!(h.get("X-Sdp-Seq").map(|v| v.as_str()), Some("42"));
    assert_eq!(h.get("X-Other").map(|v| v.as_str()), Some("a value"));
    stop(broker, shutdown).await;
}

#[tokio::test]
async fn request_reply() {
    let (broker, shutdown) = start().await;
    let server = connect(&broker).await;
    let mut requests = server.subscribe("svc.echo").await.expect("sub");
    sync(&server).await;
    let responder = tokio::spawn({
        let server = server.clone();
        async move {
            while let Some(req) = requests.next().await {
                let Some(reply) = req.reply else { continue };
                let mut answer = b"echo:".to_vec();
                answer.extend_from_slice(&req.payload);
                server.publish(reply, answer.into()).await.expect("respond");
            }
        }
    });

    let client = connect(&broker).await;
    for i in 0..20 {
        let resp = client
            .request("svc.echo", format!("ping {i}").into())
            .await
            .expect("request answered");
        assert_eq!(resp.payload, Bytes::from(format!("echo:ping {i}")));
    }
    responder.abort();
    stop(broker, shutdown).await;
}

#[tokio::test]
async fn no_responders_is_prompt() {
    let (broker, shutdown) = start().await;
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .connect(broker.client_url())
        .await
        .expect("connect");
    // Prompt without a clock: with a 30 s request timeout, only the
    // broker's 503 can make this NoResponders rather than TimedOut.
    let err = client
        .request("nobody.home", "anyone?".into())
        .await
        .expect_err("nobody serves this subject");
    assert_eq!(err.kind(), RequestErrorKind::NoResponders);

    // With headers too, and the mux inbox still works afterwards.
    let err = client
        .send_request(
            "nobody.home",
            async_nats::Request::new()
                .payload("x".into())
                .headers(HeaderMap::new()),
        )
        .await
        .expect_err("still nobody");
    assert_eq!(err.kind(), RequestErrorKind::NoResponders);
    stop(broker, shutdown).await;
}

#[tokio::test]
async fn queue_group_exactly_once() {
    let (broker, shutdown) = start().await;
    let publisher = connect(&broker).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for member in 0..3 {
        let c = connect(&broker).await;
        let mut sub = c
            .queue_subscribe("work", "q".to_string())
            .await
            .expect("queue sub");
        sync(&c).await;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let _ = tx.send((member, m.payload));
            }
        });
        clients.push(c);
    }
    const N: usize = 90;
    for i in 0..N {
        publisher
            .publish("work", Bytes::from(i.to_string()))
            .await
            .expect("publish");
    }
    sync(&publisher).await;
    let mut seen = std::collections::HashSet::new();
    let mut per_member = [0usize; 3];
    for _ in 0..N {
        let (member, payload) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("all jobs delivered")
            .expect("channel open");
        assert!(seen.insert(payload.clone()), "duplicate {payload:?}");
        per_member[member] += 1;
    }
    // Nothing beyond N arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), rx.recv())
            .await
            .is_err()
    );
    assert!(per_member.iter().all(|c| *c > 0), "{per_member:?}");
    stop(broker, shutdown).await;
}

#[tokio::test]
async fn unsubscribe_and_auto_unsubscribe() {
    let (broker, shutdown) = start().await;
    let client = connect(&broker).await;
    let mut gone = client.subscribe("u.gone").await.expect("sub");
    let mut keep = client.subscribe("u.>").await.expect("sub");
    sync(&client).await;
    // The two above plus the client's request inbox (`_INBOX.<id>.*`).
    assert_eq!(broker.subscription_count(), 3);

    gone.unsubscribe().await.expect("unsubscribe");
    sync(&client).await;
    assert_eq!(broker.subscription_count(), 2);
    client.publish("u.gone", "x".into()).await.expect("publish");
    assert_eq!(
        drain_until_sentinel(&client, &mut keep, "u.s").await,
        vec![Bytes::from("x")]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), gone.next())
            .await
            .map_or(true, |m| m.is_none()),
        "unsubscribed subscriber gets nothing"
    );

    let mut limited = client.subscribe("u.limited").await.expect("sub");
    limited.unsubscribe_after(2).await.expect("unsub after");
    sync(&client).await;
    for i in 0..5 {
        client
            .publish("u.limited", Bytes::from(i.to_string()))
            .await
            .expect("publish");
    }
    sync(&client).await;
    assert_eq!(&next(&mut limited).await.payload[..], b"0");
    assert_eq!(&next(&mut limited).await.payload[..], b"1");
    assert!(
        tokio::time::timeout(WAIT, limited.next())
            .await
            .expect("stream ends")
            .is_none()
    );
    // The server removed it too.
    assert_eq!(broker.subscription_count(), 2);
    stop(broker, shutdown).await;
}

#[tokio::test]
async fn no_echo_is_honoured() {
    let (broker, shutdown) = start().await;
    let quiet = async_nats::ConnectOptions::new()
        .no_echo()
        .connect(broker.client_url())
        .await
        .expect("connect");
    let mut own = quiet.subscribe("e.x").await.expect("sub");
    sync(&quiet).await;
    let other = connect(&broker).await;
    let mut watcher = other.subscribe("e.x").await.expect("sub");
    sync(&other).await;

    quiet.publish("e.x", "mine".into()).await.expect("publish");
    sync(&quiet).await;
    assert_eq!(&next(&mut watcher).await.payload[..], b"mine");
    other
        .publish("e.x", "theirs".into())
        .await
        .expect("publish");
    assert_eq!(&next(&mut own).await.payload[..], b"theirs");
    stop(broker, shutdown).await;
}

#[tokio::test]
async fn many_brokers_in_one_process() {
    let mut brokers = Vec::new();
    for _ in 0..4 {
        brokers.push(start().await);
    }
    let mut ports: Vec<u16> = brokers.iter().map(|(b, _)| b.local_addr().port()).collect();
    ports.dedup();
    assert_eq!(ports.len(), 4);

    let mut clients = Vec::new();
    for (broker, _) in &brokers {
        let c = connect(broker).await;
        let sub = c.subscribe("shared.subject").await.expect("sub");
        sync(&c).await;
        clients.push((c, sub));
    }
    for (i, (c, _)) in clients.iter().enumerate() {
        c.publish("shared.subject", Bytes::from(format!("from {i}")))
            .await
            .expect("publish");
    }
    for (i, (c, sub)) in clients.iter_mut().enumerate() {
        // Each broker is its own bus: only its own client's message arrives.
        let got = drain_until_sentinel(c, sub, "shared.subject").await;
        assert_eq!(got, vec![Bytes::from(format!("from {i}"))]);
    }
    let ids: std::collections::HashSet<String> = brokers
        .iter()
        .map(|(b, _)| b.server_id().to_string())
        .collect();
    assert_eq!(ids.len(), 4);
    for (broker, shutdown) in brokers {
        stop(broker, shutdown).await;
    }
}

#[tokio::test]
async fn shutdown_with_connected_clients() {
    let (broker, shutdown) = start().await;
    let client = connect(&broker).await;
    let _sub = client.subscribe("shutdown.>").await.expect("sub");
    sync(&client).await;
    let addr = broker.local_addr();
    stop(broker, shutdown).await;
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
