//! Differential tests with real clients and timing-dependent behaviour:
//! async-nats, nats-py, TLS, a slow consumer beside a healthy one, and a
//! stale connection beside a lively one, each run against Debian's
//! nats-server 2.9.10 and the embedded broker, with transcripts that must
//! agree. nats-server, python3 and nats-py are required (a missing one
//! fails the test).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_nats::{HeaderMap, RequestErrorKind};
use bytes::Bytes;
use common::{Cfg, Pair};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

fn url(addr: SocketAddr) -> String {
    format!("nats://{addr}")
}

/// Returns once the server processed everything `client` sent before:
/// `flush` only drains the client's buffer (and async-nats may queue a SUB
/// behind it), while a request nobody serves is answered by the server in
/// order (no-responders).
async fn settle(client: &async_nats::Client) {
    let r = tokio::time::timeout(WAIT, client.request("settle.nobody", Bytes::new()))
        .await
        .expect("answer in time");
    assert!(
        matches!(&r, Err(e) if e.kind() == RequestErrorKind::NoResponders),
        "no responders expected"
    );
}

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("message in time")
        .expect("subscription open")
}

/// A session of the async-nats client; returns what it observed.
async fn async_nats_session(client: async_nats::Client) -> Vec<String> {
    let mut t = Vec::new();
    let info = client.server_info();
    t.push(format!(
        "info proto={} headers={} max_payload={}",
        info.proto, info.headers, info.max_payload
    ));

    let mut wild = client.subscribe("d.*").await.expect("sub");
    let mut deep = client.subscribe("d.>").await.expect("sub");
    settle(&client).await;
    for s in ["d.a", "d.b.c", "d.e"] {
        client.publish(s, Bytes::from(s)).await.expect("pub");
    }
    client.flush().await.expect("flush");
    for _ in 0..2 {
        let m = next(&mut wild).await;
        t.push(format!("wild {} {:?}", m.subject, m.payload));
    }
    for _ in 0..3 {
        let m = next(&mut deep).await;
        t.push(format!("deep {} {:?}", m.subject, m.payload));
    }

    // Headers.
    let mut h = client.subscribe("hdr").await.expect("sub");
    settle(&client).await;
    let mut headers = HeaderMap::new();
    headers.insert("X-One", "1");
    headers.append("X-Many", "a");
    headers.append("X-Many", "b");
    client
        .publish_with_headers("hdr", headers, Bytes::from_static(b"with"))
        .await
        .expect("pub");
    let m = next(&mut h).await;
    let hs = m.headers.expect("headers");
    t.push(format!(
        "headers one={:?} many={:?} payload={:?}",
        hs.get("X-One").map(|v| v.to_string()),
        hs.get_all("X-Many")
            .map(|v| v.to_string())
            .collect::<Vec<_>>(),
        m.payload
    ));

    // Request-reply.
    let mut svc = client.subscribe("svc.echo").await.expect("sub");
    let responder = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(m) = svc.next().await {
                if let Some(reply) = m.reply {
                    let mut body = b"echo:".to_vec();
                    body.extend_from_slice(&m.payload);
                    let _ = client.publish(reply, body.into()).await;
                }
            }
        })
    };
    settle(&client).await;
    let r = tokio::time::timeout(WAIT, client.request("svc.echo", Bytes::from_static(b"hi")))
        .await
        .expect("reply in time")
        .expect("reply");
    t.push(format!("reply {:?}", r.payload));
    responder.abort();

    // No responders.
    let e = tokio::time::timeout(WAIT, client.request("nobody.here", Bytes::new()))
        .await
        .expect("answer in time")
        .expect_err("no responders");
    t.push(format!(
        "no responders: {}",
        e.kind() == RequestErrorKind::NoResponders
    ));

    // Queue group: every message to exactly one member.
    let mut q1 = client
        .queue_subscribe("work", "g".into())
        .await
        .expect("sub");
    let mut q2 = client
        .queue_subscribe("work", "g".into())
        .await
        .expect("sub");
    settle(&client).await;
    for i in 0..20 {
        client
            .publish("work", Bytes::from(format!("{i}")))
            .await
            .expect("pub");
    }
    client
        .publish("work.done", Bytes::new())
        .await
        .expect("pub");
    client.flush().await.expect("flush");
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while got < 20 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(_) = q1.next() => got += 1,
            Some(_) = q2.next() => got += 1,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let extra = futures::future::poll_fn(|cx| {
        let a = q1.poll_next_unpin(cx).is_ready() as usize;
        let b = q2.poll_next_unpin(cx).is_ready() as usize;
        std::task::Poll::Ready(a + b)
    })
    .await;
    t.push(format!("queue total={} extra={extra}", got));

    // Auto-unsubscribe after 2.
    let mut limited = client.subscribe("lim").await.expect("sub");
    limited.unsubscribe_after(2).await.expect("unsub after");
    settle(&client).await;
    for i in 0..4 {
        client
            .publish("lim", Bytes::from(format!("{i}")))
            .await
            .expect("pub");
    }
    client.flush().await.expect("flush");
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), limited.next()).await {
        seen.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    t.push(format!("limited {seen:?}"));

    // Large payload, at the limit.
    let mut big = client.subscribe("big").await.expect("sub");
    settle(&client).await;
    let body = Bytes::from(vec![7u8; 1024 * 1024 - 100]);
    client.publish("big", body.clone()).await.expect("pub");
    let m = next(&mut big).await;
    t.push(format!("big ok={}", m.payload == body));

    client.drain().await.expect("drain");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_nats_agrees() {
    let pair = Pair::start(&Cfg::default()).await;
    let mut transcripts = Vec::new();
    for addr in [pair.oracle.addr(), pair.embedded.addr()] {
        let client = async_nats::connect(url(addr)).await.expect("connect");
        transcripts.push(async_nats_session(client).await);
    }
    assert_eq!(transcripts[0], transcripts[1], "nats-server vs embedded");
    assert!(transcripts[0].contains(&"no responders: true".to_string()));
}

/// The nats-py script against `addr`, with an async-nats responder on
/// `rust.echo` as it expects.
async fn nats_py_session(addr: SocketAddr) -> Vec<String> {
    let rust = async_nats::connect(url(addr)).await.expect("connect");
    let mut echo = rust.subscribe("rust.echo").await.expect("sub");
    rust.flush().await.expect("flush");
    // Processing of the SUB is proven by a round trip through the server.
    let _ = rust.request("sync.nobody", Bytes::new()).await;
    let responder = {
        let rust = rust.clone();
        tokio::spawn(async move {
            while let Some(req) = echo.next().await {
                if let Some(reply) = req.reply {
                    let mut body = b"rust:".to_vec();
                    body.extend_from_slice(&req.payload);
                    let _ = rust.publish(reply, body.into()).await;
                }
            }
        })
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nats_py_client.py");
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(url(addr))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is required");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("python client finishes")
        .expect("python output");
    responder.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nats-py failed against {addr}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| {
            if l.starts_with("CONNECTED ") {
                "CONNECTED <version>".to_string()
            } else {
                l.to_string()
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_agrees() {
    let pair = Pair::start(&Cfg::default()).await;
    let want = nats_py_session(pair.oracle.addr()).await;
    let got = nats_py_session(pair.embedded.addr()).await;
    assert_eq!(want, got);
    assert_eq!(want.last().map(String::as_str), Some("DONE"));
}

/// Writes a self-signed certificate for 127.0.0.1/localhost.
fn write_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("certificate");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_agrees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = write_cert(dir.path());
    let cfg = Cfg {
        tls: Some((cert.clone(), key)),
        ..Cfg::default()
    };
    let pair = Pair::start(&cfg).await;
    let mut transcripts = Vec::new();
    for addr in [pair.oracle.addr(), pair.embedded.addr()] {
        let mut t = Vec::new();
        let client = async_nats::ConnectOptions::new()
            .add_root_certificates(cert.clone())
            .require_tls(true)
            .connect(format!("tls://{addr}"))
            .await
            .expect("TLS connect");
        let info = client.server_info();
        t.push(format!("tls_required={}", info.tls_required));
        let mut sub = client.subscribe("secure").await.expect("sub");
        client.flush().await.expect("flush");
        client
            .publish("secure", Bytes::from_static(b"over tls"))
            .await
            .expect("pub");
        let m = next(&mut sub).await;
        t.push(format!("{} {:?}", m.subject, m.payload));

        // A raw client that never starts the handshake sees INFO only.
        let mut raw = TcpStream::connect(addr).await.expect("connect");
        let mut line = String::new();
        let mut rd = BufReader::new(&mut raw);
        rd.read_line(&mut line).await.expect("INFO");
        let v: serde_json::Value =
            serde_json::from_str(line.trim_end().strip_prefix("INFO ").expect("INFO"))
                .expect("json");
        t.push(format!("raw INFO tls_required={}", v["tls_required"]));
        transcripts.push(t);
    }
    assert_eq!(transcripts[0], transcripts[1]);
    assert_eq!(transcripts[0][0], "tls_required=true");
}

async fn read_until_pong(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    while !buf.ends_with(b"PONG\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("PONG in time")
            .expect("read");
        assert!(n > 0, "closed before PONG");
        buf.extend_from_slice(&chunk[..n]);
    }
    buf
}

/// A subscriber that never reads, one that does, and a publisher flooding
/// both: the slow one is closed, the healthy one gets everything and the
/// publisher is not held up.
async fn slow_consumer_session(addr: SocketAddr) -> Vec<String> {
    const N: usize = 1000;
    const SIZE: usize = 8 * 1024;
    let mut t = Vec::new();

    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut slow = sock.connect(addr).await.expect("connect");
    slow.write_all(b"CONNECT {\"verbose\":false}\r\nSUB flood 1\r\nPING\r\n")
        .await
        .expect("write");
    read_until_pong(&mut slow).await;

    let mut healthy = TcpStream::connect(addr).await.expect("connect");
    healthy
        .write_all(b"CONNECT {\"verbose\":false}\r\nSUB flood 1\r\nPING\r\n")
        .await
        .expect("write");
    let pre = read_until_pong(&mut healthy).await;
    let healthy_reader = tokio::spawn(async move {
        // Counts complete MSG frames by their terminating payload marker.
        let mut chunk = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        let want = N * (SIZE + "MSG flood 1 8192\r\n\r\n".len());
        let _ = pre;
        while total < want {
            match tokio::time::timeout(WAIT, healthy.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => total += n,
                _ => break,
            }
        }
        total / (SIZE + "MSG flood 1 8192\r\n\r\n".len())
    });

    let mut publisher = TcpStream::connect(addr).await.expect("connect");
    let body = vec![b'x'; SIZE];
    let mut frame = format!("PUB flood {SIZE}\r\n").into_bytes();
    frame.extend_from_slice(&body);
    frame.extend_from_slice(b"\r\n");
    publisher
        .write_all(b"CONNECT {\"verbose\":false}\r\n")
        .await
        .expect("write");
    let started = tokio::time::Instant::now();
    for _ in 0..N {
        publisher.write_all(&frame).await.expect("publish");
    }
    publisher.write_all(b"PING\r\n").await.expect("write");
    read_until_pong(&mut publisher).await;
    t.push(format!(
        "publisher done in time: {}",
        started.elapsed() < Duration::from_secs(8)
    ));
    t.push(format!(
        "healthy received {}",
        healthy_reader.await.expect("reader")
    ));

    // The slow consumer: whatever was buffered, then a close.
    let mut chunk = vec![0u8; 256 * 1024];
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(WAIT, slow.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {}
            Err(_) => break,
        }
    }
    t.push(format!("slow consumer closed: {closed}"));
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_beside_healthy_agrees() {
    let cfg = Cfg {
        max_payload: Some(64 * 1024),
        max_pending: Some(1024 * 1024),
        write_deadline_ms: Some(1000),
        ..Cfg::default()
    };
    let pair = Pair::start(&cfg).await;
    let want = slow_consumer_session(pair.oracle.addr()).await;
    let got = slow_consumer_session(pair.embedded.addr()).await;
    assert_eq!(want, got);
    assert_eq!(
        want,
        [
            "publisher done in time: true",
            "healthy received 1000",
            "slow consumer closed: true"
        ]
    );
}

/// A client answering PINGs stays, one that does not is closed.
async fn stale_session(addr: SocketAddr) -> Vec<String> {
    let mut lively = TcpStream::connect(addr).await.expect("connect");
    let mut stale = TcpStream::connect(addr).await.expect("connect");
    lively
        .write_all(b"CONNECT {\"verbose\":false}\r\n")
        .await
        .expect("write");
    stale
        .write_all(b"CONNECT {\"verbose\":false}\r\n")
        .await
        .expect("write");
    let answer = tokio::spawn(async move {
        let mut rd = BufReader::new(lively);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        let mut pings = 0;
        loop {
            let mut line = String::new();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, rd.read_line(&mut line)).await {
                Ok(Ok(n)) if n > 0 => {
                    if line == "PING\r\n" {
                        pings += 1;
                        rd.get_mut().write_all(b"PONG\r\n").await.expect("pong");
                    }
                }
                Ok(_) => return (pings, false),
                Err(_) => break,
            }
        }
        rd.get_mut().write_all(b"PING\r\n").await.expect("ping");
        let mut line = String::new();
        while line != "PONG\r\n" {
            line.clear();
            if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
                return (pings, false);
            }
        }
        (pings, true)
    });
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stale.read_to_end(&mut rest)).await;
    let text = String::from_utf8_lossy(&rest);
    let lines: Vec<&str> = text.lines().skip(1).collect();
    let (pings, alive) = answer.await.expect("lively");
    vec![
        format!("stale got {lines:?}"),
        format!("lively pinged: {}", pings >= 2),
        format!("lively alive: {alive}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_beside_lively_agrees() {
    let cfg = Cfg {
        ping_interval_ms: Some(200),
        ping_max: Some(2),
        ..Cfg::default()
    };
    let pair = Pair::start(&cfg).await;
    let want = stale_session(pair.oracle.addr()).await;
    let got = stale_session(pair.embedded.addr()).await;
    assert_eq!(want, got);
    assert_eq!(
        want[0],
        "stale got [\"PING\", \"PING\", \"-ERR 'Stale Connection'\"]"
    );
}

/// GET `path` from an HTTP server, returning the status code and JSON body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).await.expect("connect http");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut resp = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut resp))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&resp);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Same traffic on both servers, then /healthz, /varz and /connz must
/// agree on the counters they share (nats-server's field names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_agrees() {
    let cfg = Cfg {
        monitor_port: Some(common::free_port()),
        ..Cfg::default()
    };
    let pair = Pair::start(&cfg).await;
    let oracle_http = SocketAddr::from(([127, 0, 0, 1], cfg.monitor_port.expect("port")));
    let embedded_http = pair.embedded.monitor.expect("monitor");
    let mut docs = Vec::new();
    for (addr, http) in [
        (pair.oracle.addr(), oracle_http),
        (pair.embedded.addr(), embedded_http),
    ] {
        let a = async_nats::ConnectOptions::new()
            .name("alpha")
            .connect(url(addr))
            .await
            .expect("connect");
        let b = async_nats::connect(url(addr)).await.expect("connect");
        let mut s1 = b.subscribe("m.*").await.expect("sub");
        let _s2 = b.subscribe("other").await.expect("sub");
        settle(&b).await;
        for i in 0..5 {
            a.publish(format!("m.{i}"), Bytes::from_static(b"12345"))
                .await
                .expect("pub");
        }
        a.publish("nobody", Bytes::from_static(b"xyz"))
            .await
            .expect("pub");
        a.flush().await.expect("flush");
        for i in 0..5 {
            tokio::time::timeout(WAIT, s1.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "message {i} from {addr} in time (embedded is {})",
                        pair.embedded.addr()
                    )
                })
                .expect("subscription open");
        }
        let (hs, health) = http_get(http, "/healthz").await;
        let (vs, varz) = http_get(http, "/varz").await;
        // The subscriber has every message, but a writer may not yet have
        // counted its last write as done (the bytes left before the counter
        // dropped): wait until nothing is pending, as it settles.
        let (cs, connz) = tokio::time::timeout(WAIT, async {
            loop {
                let (cs, connz) = http_get(http, "/connz").await;
                let settled = connz["connections"].as_array().is_some_and(|c| {
                    c.iter()
                        .all(|c| c["pending_bytes"].as_u64().unwrap_or(0) == 0)
                });
                if cs != 200 || settled {
                    return (cs, connz);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("/connz never showed every write done");
        assert_eq!((hs, vs, cs), (200, 200, 200));
        docs.push((health, varz, connz));
        drop((a, b));
    }
    let (oh, ov, oc) = &docs[0];
    let (eh, ev, ec) = &docs[1];
    assert_eq!(oh, eh, "/healthz");
    // Every /varz field we serve exists in nats-server's /varz.
    for key in ev.as_object().expect("varz object").keys() {
        assert!(
            ov.get(key).is_some(),
            "/varz field {key} unknown to nats-server"
        );
    }
    for key in [
        "connections",
        "in_msgs",
        "out_msgs",
        "in_bytes",
        "out_bytes",
        "max_payload",
        "max_connections",
        "ping_max",
        "max_control_line",
        "proto",
        "auth_required",
        "slow_consumers",
    ] {
        assert_eq!(ov.get(key), ev.get(key), "/varz {key}");
    }
    // nats-server also counted the harness's readiness probe.
    assert_eq!(ev["total_connections"], 2);
    for key in ["num_connections", "total", "offset", "limit"] {
        assert_eq!(oc.get(key), ec.get(key), "/connz {key}");
    }
    let conns = |c: &serde_json::Value| -> Vec<String> {
        c["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .map(|c| {
                format!(
                    "name={} lang={} in_msgs={} out_msgs={} in_bytes={} out_bytes={} subscriptions={} pending={}",
                    c["name"], c["lang"], c["in_msgs"], c["out_msgs"], c["in_bytes"], c["out_bytes"], c["subscriptions"], c["pending_bytes"]
                )
            })
            .collect()
    };
    assert_eq!(conns(oc), conns(ec), "/connz connections");
    for conn in ec["connections"].as_array().expect("connections") {
        for key in conn.as_object().expect("conn").keys() {
            assert!(
                oc["connections"][0].get(key).is_some() || key == "authorized_user",
                "/connz field {key} unknown to nats-server"
            );
        }
    }
}
