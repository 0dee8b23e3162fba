//! The wire protocol seen from a raw TCP client: exact frames, errors and
//! limits.

use std::time::Duration;

use bytes::Bytes;
use sdp_broker::{Broker, BrokerConfig, BrokerHandle};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

async fn start_with(config: BrokerConfig) -> (BrokerHandle, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let broker = Broker::start(listener, config, shutdown.clone())
        .await
        .expect("start broker");
    (broker, shutdown)
}

async fn start() -> (BrokerHandle, CancellationToken) {
    start_with(BrokerConfig::default()).await
}

struct Raw {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    info: serde_json::Value,
}

impl Raw {
    /// Connects and reads the INFO line; sends `connect` (a CONNECT line or
    /// nothing) afterwards.
    async fn connect(broker: &BrokerHandle, connect: &str) -> Raw {
        let stream = TcpStream::connect(broker.local_addr())
            .await
            .expect("connect");
        let (rd, wr) = stream.into_split();
        let mut raw = Raw {
            rd: BufReader::new(rd),
            wr,
            info: serde_json::Value::Null,
        };
        let line = raw.line().await;
        let json = line.strip_prefix("INFO ").expect("INFO first");
        raw.info = serde_json::from_str(json).expect("INFO json");
        if !connect.is_empty() {
            raw.send(connect).await;
        }
        raw
    }

    async fn send(&mut self, data: &str) {
        self.wr.write_all(data.as_bytes()).await.expect("write");
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.rd.read_line(&mut line))
            .await
            .expect("line within timeout")
            .expect("read");
        assert!(n > 0, "connection closed while waiting for a line");
        assert!(line.ends_with("\r\n"), "CRLF line ending: {line:?}");
        line.truncate(line.len() - 2);
        line
    }

    async fn exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(WAIT, self.rd.read_exact(&mut buf))
            .await
            .expect("bytes within timeout")
            .expect("read");
        buf
    }

    /// Asserts the server closes the connection (after whatever was read).
    async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(WAIT, self.rd.read_to_end(&mut rest))
            .await
            .expect("closed within timeout");
        // A reset is as good as a close here.
        if let Ok(n) = n {
            assert_eq!(
                n,
                0,
                "unexpected data: {:?}",
                String::from_utf8_lossy(&rest)
            );
        }
    }

    /// Round trip so everything sent before was processed.
    async fn ping(&mut self) {
        self.send("PING\r\n").await;
        assert_eq!(self.line().await, "PONG");
    }
}

#[tokio::test]
async fn info_fields() {
    let config = BrokerConfig {
        server_name: "unit-broker".into(),
        max_payload: 4096,
        ..BrokerConfig::default()
    };
    let (broker, shutdown) = start_with(config).await;
    let a = Raw::connect(&broker, "").await;
    let b = Raw::connect(&broker, "").await;
    let info = &a.info;
    assert_eq!(info["server_name"], "unit-broker");
    assert_eq!(info["server_id"], broker.server_id());
    assert_eq!(info["version"], sdp_broker::SERVER_VERSION);
    assert_eq!(info["proto"], 1);
    assert_eq!(info["headers"], true);
    assert_eq!(info["max_payload"], 4096);
    assert_eq!(info["host"], "127.0.0.1");
    assert_eq!(info["port"], broker.local_addr().port());
    assert_eq!(info["client_ip"], "127.0.0.1");
    assert!(info["client_id"].as_u64().is_some());
    assert_ne!(info["client_id"], b.info["client_id"]);
    assert_eq!(
        broker.client_url(),
        format!("nats://127.0.0.1:{}", broker.local_addr().port())
    );
    shutdown.cancel();
    broker.stopped().await;
}

#[tokio::test]
async fn verbose_ok_and_ping_pong() {
    let (broker, _shutdown) = start().await;
    // No CONNECT at all: nats-server's defaults apply, verbose included.
    let mut c = Raw::connect(&broker, "").await;
    c.send("sub foo 1\r\n").await;
    assert_eq!(c.line().await, "+OK");
    c.send("CONNECT {\"verbose\":true}\r\nPING\r\nPUB foo 2\r\nhi\r\n")
        .await;
    assert_eq!(c.line().await, "+OK");
    assert_eq!(c.line().await, "PONG");
    // As nats-server: the PUB's +OK comes before the delivery.
    assert_eq!(c.line().await, "+OK");
    assert_eq!(c.line().await, "MSG foo 1 2");
    assert_eq!(c.exact(4).await, b"hi\r\n");
    c.send("UNSUB 1\r\n").await;
    assert_eq!(c.line().await, "+OK");
    c.send("CONNECT {\"verbose\":false}\r\nSUB bar 2\r\n").await;
    c.ping().await;
}

#[tokio::test]
async fn split_writes_and_bare_lf() {
    let (broker, _shutdown) = start().await;
    let mut c = Raw::connect(&broker, "CONNECT {\"verbose\":false}\r\n").await;
    for chunk in [
        "S",
        "UB a.",
        "* 7\n",
        "PU",
        "B a.b 5\r",
        "\nhel",
        "lo",
        "\r",
        "\n",
    ] {
        c.send(chunk).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(c.line().await, "MSG a.b 7 5");
    assert_eq!(c.exact(7).await, b"hello\r\n");
}

#[tokio::test]
async fn unknown_operation_closes() {
    let (broker, _shutdown) = start().await;
    let mut c = Raw::connect(&broker, "CONNECT {\"verbose\":false}\r\n").await;
    c.send("GET / HTTP/1.1\r\n").await;
    assert_eq!(c.line().await, "-ERR 'Unknown Protocol Operation'");
    c.expect_closed().await;
}

#[tokio::test]
async fn max_payload_closes_before_body() {
    let config = BrokerConfig {
        max_payload: 100,
        max_pending: 1 << 20,
        ..BrokerConfig::default()
    };
    let (broker, _shutdown) = start_with(config).await;
    let mut c = Raw::connect(&broker, "CONNECT {\"verbose\":false}\r\n").await;
    c.send("PUB foo 101\r\n").await;
    assert_eq!(c.line().await, "-ERR 'Maximum Payload Violation'");
    c.expect_closed().await;

    let mut c = Raw::connect(&broker, "CONNECT {\"verbose\":false,\"headers\":true}\r\n").await;
    c.send("HPUB foo 10 101\r\n").await;
    assert_eq!(c.line().await, "-ERR 'Maximum Payload Violation'");
    c.expect_closed().await;
}

#[tokio::test]
async fn max_control_line_closes() {
    let (broker, _shutdown) = start().await;
    let mut c = Raw::connect(&broker, "CONNECT {\"verbose\":false}\r\n").await;
    c.send(&format!("SUB {} 1", "a".repeat(5000))).await;
    assert_eq!(c.line().await, "-ERR 'maximum control line exceeded'");
    c.expect_closed().await;
}

#[tokio::test]
async fn malformed_arguments_close() {
    let (broker, _shutdown) = start().await;
    for bad in [
        "PUB foo\r\n",
        "SUB foo\r\n",
        "UNSUB 1 2 3\r\n",
        "CONNECT {\r\n",
    ] {
        // nats-server 2.9 closes these without a -ERR.
        let mut c = Raw::connect(&broker, "").await;
        c.send(bad).await;
        c.expect_closed().await;
    }
}

#[tokio::test]
async fn invalid_subjects_keep_connection() {
    let (broker, _shutdown) = start().await;
    let mut c = Raw::connect(&broker, "CONNECT {\"verbose\":false}\r\n").await;
    c.send("SUB foo..bar 1\r\n").await;
    assert_eq!(c.line().await, "-ERR 'Invalid Subject'");
    c.send("SUB foo.>.bar 1\r\n").await;
    assert_eq!(c.line().await, "-ERR 'Invalid Subject'");
    c.send("PUB foo.* 1\r\nx\r\n").await;
    assert_eq!(c.line().await, "-ERR 'Invalid Publish Subject'");
    // Reply subjects are not checked (nats-server 2.9).
    c.send("PUB foo bad.> 1\r\nx\r\n").await;
    c.ping().await;
    assert_eq!(broker.subscription_count(), 0);
}

#[tokio::test]
async fn headers_stripped_for_clients_without_headers() {
    let (broker, _shutdown) = start().await;
    let mut old = Raw::connect(&broker, "CONNECT {\"verbose\":false}\r\nSUB h.* 1\r\n").await;
    old.ping().await;
    let mut new = Raw::connect(
        &broker,
        "CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB h.* 9\r\n",
    )
    .await;
    new.ping().await;

    let hdr = "NATS/1.0\r\nX-A: 1\r\n\r\n";
    let mut publisher =
        Raw::connect(&broker, "CONNECT {\"verbose\":false,\"headers\":true}\r\n").await;
    publisher
        .send(&format!(
            "HPUB h.x r.1 {} {}\r\n{hdr}body\r\n",
            hdr.len(),
            hdr.len() + 4
        ))
        .await;
    publisher.ping().await;

    assert_eq!(old.line().await, "MSG h.x 1 r.1 4");
    assert_eq!(old.exact(6).await, b"body\r\n");
    assert_eq!(
        new.line().await,
        format!("HMSG h.x 9 r.1 {} {}", hdr.len(), hdr.len() + 4)
    );
    assert_eq!(
        new.exact(hdr.len() + 6).await,
        format!("{hdr}body\r\n").as_bytes()
    );
}

#[tokio::test]
async fn no_responders_frame() {
    let (broker, _shutdown) = start().await;
    let mut c = Raw::connect(
        &broker,
        "CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\nSUB _INBOX.abc.* 3\r\n",
    )
    .await;
    c.send("PUB nobody _INBOX.abc.1 2\r\nhi\r\n").await;
    assert_eq!(c.line().await, "HMSG _INBOX.abc.1 3 16 16");
    assert_eq!(c.exact(18).await, b"NATS/1.0 503\r\n\r\n\r\n");

    // Served requests get no 503.
    let mut server = Raw::connect(&broker, "CONNECT {\"verbose\":false}\r\nSUB svc 1\r\n").await;
    server.ping().await;
    c.send("PUB svc _INBOX.abc.2 0\r\n\r\n").await;
    assert_eq!(server.line().await, "MSG svc 1 _INBOX.abc.2 0");
    c.ping().await;

    // Without no_responders nothing comes back.
    let mut c = Raw::connect(&broker, "CONNECT {\"verbose\":false,\"headers\":true}\r\n").await;
    c.send("SUB _INBOX.q.* 1\r\nPUB nobody _INBOX.q.1 0\r\n\r\n")
        .await;
    c.ping().await;
    // no_responders without headers is refused at CONNECT.
    let mut c = Raw::connect(
        &broker,
        "CONNECT {\"verbose\":false,\"no_responders\":true}\r\n",
    )
    .await;
    assert_eq!(
        c.line().await,
        "-ERR 'no responders requires headers support'"
    );
    c.expect_closed().await;

    // Own subscription with echo off is no responder either.
    let mut c = Raw::connect(
        &broker,
        "CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true,\"echo\":false}\r\n",
    )
    .await;
    c.send("SUB me 1\r\nSUB _INBOX.z.* 2\r\nPUB me _INBOX.z.1 0\r\n\r\n")
        .await;
    assert_eq!(c.line().await, "HMSG _INBOX.z.1 2 16 16");
}

#[tokio::test]
async fn auto_unsubscribe_counts_earlier_deliveries() {
    let (broker, _shutdown) = start().await;
    let mut c = Raw::connect(&broker, "CONNECT {\"verbose\":false}\r\nSUB n 5\r\n").await;
    c.send("PUB n 1\r\na\r\nPUB n 1\r\nb\r\nPING\r\n").await;
    for want in ["a", "b"] {
        assert_eq!(c.line().await, "MSG n 5 1");
        assert_eq!(c.exact(3).await, format!("{want}\r\n").as_bytes());
    }
    assert_eq!(c.line().await, "PONG");
    // Two delivered already, so max 2 removes it at once.
    c.send("UNSUB 5 2\r\nPUB n 1\r\nc\r\n").await;
    c.ping().await;
    assert_eq!(broker.subscription_count(), 0);
    // The sid can be reused afterwards.
    c.send("SUB n 5\r\nPUB n 1\r\nd\r\n").await;
    assert_eq!(c.line().await, "MSG n 5 1");
    assert_eq!(c.exact(3).await, b"d\r\n");
}

#[tokio::test]
async fn server_pings_and_stale_connections() {
    let config = BrokerConfig {
        ping_interval: Duration::from_millis(100),
        max_pings_out: 2,
        ..BrokerConfig::default()
    };
    let (broker, _shutdown) = start_with(config).await;

    let mut lively = Raw::connect(&broker, "CONNECT {\"verbose\":false}\r\n").await;
    for _ in 0..4 {
        assert_eq!(lively.line().await, "PING");
        lively.send("PONG\r\n").await;
    }

    let mut stale = Raw::connect(&broker, "CONNECT {\"verbose\":false}\r\n").await;
    assert_eq!(stale.line().await, "PING");
    assert_eq!(stale.line().await, "PING");
    assert_eq!(stale.line().await, "-ERR 'Stale Connection'");
    stale.expect_closed().await;
}

#[tokio::test]
async fn slow_consumer_is_dropped() {
    let config = BrokerConfig {
        max_payload: 64 * 1024,
        max_pending: 256 * 1024,
        ..BrokerConfig::default()
    };
    let (broker, _shutdown) = start_with(config).await;
    // Subscribes and never reads.
    let mut slow = Raw::connect(&broker, "CONNECT {\"verbose\":false}\r\nSUB flood 1\r\n").await;
    slow.ping().await;
    let mut fast = Raw::connect(&broker, "CONNECT {\"verbose\":false}\r\n").await;
    let body = "x".repeat(64 * 1024);
    let frame = Bytes::from(format!("PUB flood {}\r\n{body}\r\n", body.len()));
    let mut dropped = false;
    // Bounded: kernel socket buffers hold a few MiB at most.
    for _ in 0..2000 {
        fast.wr.write_all(&frame).await.expect("publish");
        if broker.subscription_count() == 0 {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the slow consumer's subscription was removed");
    fast.ping().await;
}

#[tokio::test]
async fn queue_group_with_max() {
    let (broker, _shutdown) = start().await;
    let mut c = Raw::connect(
        &broker,
        "CONNECT {\"verbose\":false}\r\nSUB job workers 1\r\nSUB job workers 2\r\nUNSUB 1 1\r\nUNSUB 2 1\r\n",
    )
    .await;
    c.send("PUB job 1\r\na\r\nPUB job 1\r\nb\r\nPUB job 1\r\nc\r\nPING\r\n")
        .await;
    // Exactly one message per member, then both are gone; the third message
    // has no taker.
    let mut sids = Vec::new();
    for _ in 0..2 {
        let line = c.line().await;
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts[..2], ["MSG", "job"], "{line}");
        sids.push(parts[2].to_string());
        c.exact(3).await;
    }
    assert_eq!(c.line().await, "PONG");
    sids.sort();
    assert_eq!(sids, ["1", "2"]);
    assert_eq!(broker.subscription_count(), 0);
}

#[tokio::test]
async fn graceful_shutdown_delivers_accepted_messages() {
    let (broker, shutdown) = start().await;
    let mut sub = Raw::connect(&broker, "CONNECT {\"verbose\":false}\r\nSUB drain 1\r\n").await;
    sub.ping().await;
    let mut publisher = Raw::connect(&broker, "CONNECT {\"verbose\":false}\r\n").await;
    let body = "y".repeat(1000);
    let mut batch = String::new();
    for _ in 0..2000 {
        batch.push_str(&format!("PUB drain 1000\r\n{body}\r\n"));
    }
    publisher.send(&batch).await;
    publisher.ping().await;
    assert_eq!(broker.connection_count(), 2);
    // Everything was accepted; now stop while the subscriber has read
    // nothing yet.
    shutdown.cancel();
    let stopped = tokio::spawn(broker.stopped());
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, sub.rd.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("read");
    let frame = format!("MSG drain 1 1000\r\n{body}\r\n");
    assert_eq!(
        rest.len(),
        2000 * frame.len(),
        "every accepted message delivered"
    );
    tokio::time::timeout(WAIT, stopped)
        .await
        .expect("stopped in time")
        .expect("join");
}

/// Frames of every size reach each subscriber intact and in each
/// publisher's order when several publishers feed the same receivers at
/// once (their batches queue as separate chunks) and a receiver's own
/// messages, queued apart, are mixed in.
#[tokio::test]
async fn concurrent_publishers_keep_frames_whole_and_in_order() {
    const PUBLISHERS: usize = 3;
    const EACH: usize = 40;
    // Around the staging buffer sizes (4 KiB first, 64 KiB largest).
    const SIZES: [usize; 8] = [0, 5, 1000, 4000, 70_000, 200_000, 16, 65_000];
    let message = |p: usize, i: usize| {
        let size = SIZES[(i + p) % SIZES.len()];
        let fill = b'a' + ((p * 7 + i) % 26) as u8;
        (size, fill)
    };
    let (broker, _shutdown) = start().await;
    let mut clients = Vec::new();
    for p in 0..=PUBLISHERS {
        // The last client only subscribes; the first both subscribes and
        // publishes.
        let sub = if p == 0 || p == PUBLISHERS {
            "SUB mix.* 1\r\n"
        } else {
            ""
        };
        let mut c = Raw::connect(&broker, &format!("CONNECT {{\"verbose\":false}}\r\n{sub}")).await;
        c.ping().await;
        clients.push(c);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(p, c)| {
            tokio::spawn(async move {
                let Raw { mut rd, mut wr, .. } = c;
                let publish = async {
                    if p == PUBLISHERS {
                        return;
                    }
                    let mut out = Vec::new();
                    for i in 0..EACH {
                        let (size, fill) = message(p, i);
                        out.extend_from_slice(format!("PUB mix.{p} {size}\r\n").as_bytes());
                        out.resize(out.len() + size, fill);
                        out.extend_from_slice(b"\r\n");
                    }
                    wr.write_all(&out).await.expect("publish");
                };
                let receive = async {
                    let mut got = vec![Vec::new(); PUBLISHERS];
                    if p != 0 && p != PUBLISHERS {
                        return got;
                    }
                    let mut line = String::new();
                    let mut count = 0;
                    while count < PUBLISHERS * EACH {
                        line.clear();
                        let read = tokio::time::timeout(WAIT, rd.read_line(&mut line));
                        read.await.expect("frame in time").expect("read");
                        // A server PING on a slow machine.
                        if line == "PING\r\n" {
                            continue;
                        }
                        count += 1;
                        let parts: Vec<&str> = line.trim_end().split(' ').collect();
                        assert_eq!(parts.len(), 4, "{line:?}");
                        let from: usize = parts[1]["mix.".len()..].parse().expect("publisher");
                        let size: usize = parts[3].parse().expect("size");
                        let mut body = vec![0; size + 2];
                        rd.read_exact(&mut body).await.expect("body");
                        assert!(body.ends_with(b"\r\n"));
                        let fill = body.first().copied().filter(|_| size > 0);
                        assert!(body[..size].iter().all(|b| Some(*b) == fill));
                        got[from].push((size, fill));
                    }
                    got
                };
                tokio::join!(publish, receive).1
            })
        })
        .collect();
    for (p, t) in tasks.into_iter().enumerate() {
        let got = t.await.expect("client");
        if p != 0 && p != PUBLISHERS {
            continue;
        }
        for (from, frames) in got.iter().enumerate() {
            let want: Vec<_> = (0..EACH)
                .map(|i| {
                    let (size, fill) = message(from, i);
                    (size, (size > 0).then_some(fill))
                })
                .collect();
            assert_eq!(frames, &want, "client {p}, publisher {from}");
        }
    }
}
