//! Differential conformance: the same protocol scripts (raw bytes over
//! TCP) run against Debian's nats-server 2.9.10 (the oracle) and the
//! embedded broker, and what every connection received must agree.
//!
//! Normalisation, applied to both sides alike: the INFO line is reduced to
//! the fields that must agree (`proto`, `headers`, `max_payload`,
//! `auth_required`, `tls_required`, and the presence of `server_id`,
//! `version` and `client_id`); runs of consecutive MSG/HMSG frames are
//! ordered by sid, keeping each sid's own order, because nats-server's
//! delivery order across subscriptions of one connection is not defined
//! (it iterates Go maps); server PINGs are left out unless the test sets
//! the ping interval (the first one comes after a random 2 to 2.4 s).
//!
//! nats-server is required: a missing binary fails the test.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Cfg, Pair, UserSpec};
use futures::StreamExt;
use futures::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One step of a script; connections are numbered from 0.
#[derive(Clone, Debug)]
enum Step {
    /// Connect and wait for INFO.
    Open(usize),
    /// Connect with a small receive buffer.
    Send(usize, Vec<u8>),
    /// PING and read until the PONG (or a close).
    Sync(usize),
    Sleep(u64),
}

use Step::*;

fn send(c: usize, s: &str) -> Step {
    Send(c, s.as_bytes().to_vec())
}

struct Conn {
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    closed: bool,
}

impl Conn {
    /// Reads whatever arrives within `idle`; false once closed.
    async fn read_some(&mut self, idle: Duration) -> bool {
        let Some(stream) = self.stream.as_mut() else {
            return false;
        };
        let mut chunk = vec![0u8; 64 * 1024];
        match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.closed = true;
                self.stream = None;
                false
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => false,
        }
    }

    async fn read_until(&mut self, done: impl Fn(&[u8]) -> bool, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.buf) && !self.closed && tokio::time::Instant::now() < deadline {
            self.read_some(Duration::from_millis(50)).await;
        }
    }

    async fn write(&mut self, data: &[u8]) {
        if let Some(s) = self.stream.as_mut() {
            if s.write_all(data).await.is_err() {
                self.closed = true;
            }
        }
    }
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Runs `steps` against `addr` and returns one normalised transcript per
/// connection; a connection counts as finished once closed or silent for
/// `quiet`.
async fn run_script(
    addr: SocketAddr,
    steps: &[Step],
    keep_pings: bool,
    quiet: Duration,
) -> Vec<String> {
    let mut conns: Vec<Conn> = Vec::new();
    for step in steps {
        match step {
            Open(i) => {
                assert_eq!(*i, conns.len(), "open connections in order");
                let stream = TcpStream::connect(addr).await.expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                let mut c = Conn {
                    stream: Some(stream),
                    buf: Vec::new(),
                    closed: false,
                };
                c.read_until(|b| b.ends_with(b"\r\n"), Duration::from_secs(3))
                    .await;
                conns.push(c);
            }
            Send(i, data) => conns[*i].write(data).await,
            Sync(i) => {
                let c = &mut conns[*i];
                let before = count(&c.buf, b"PONG\r\n");
                c.write(b"PING\r\n").await;
                c.read_until(|b| count(b, b"PONG\r\n") > before, Duration::from_secs(5))
                    .await;
            }
            Sleep(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
        }
    }
    // Whatever else arrives: read every connection until it is quiet.
    join_all(conns.iter_mut().map(|c| async move {
        let deadline = tokio::time::Instant::now() + (quiet * 4).max(Duration::from_secs(3));
        while !c.closed && tokio::time::Instant::now() < deadline && c.read_some(quiet).await {}
    }))
    .await;
    conns
        .iter()
        .map(|c| {
            let frames = normalize(&c.buf);
            let frames: Vec<String> = frames
                .into_iter()
                .filter(|f| keep_pings || f != "PING")
                .collect();
            let mut t = frames.join("\n");
            t.push_str(if c.closed { "\n<CLOSED>" } else { "\n<OPEN>" });
            t
        })
        .collect()
}

fn normalize_info(json: &[u8]) -> String {
    let v: serde_json::Value = match serde_json::from_slice(json) {
        Ok(v) => v,
        Err(_) => return format!("INFO <bad json {}>", String::from_utf8_lossy(json)),
    };
    let has = |k: &str| v.get(k).is_some();
    format!(
        "INFO proto={} headers={} max_payload={} auth_required={} tls_required={} ids={}",
        v["proto"],
        v["headers"],
        v["max_payload"],
        v.get("auth_required")
            .unwrap_or(&serde_json::Value::Bool(false)),
        v.get("tls_required")
            .unwrap_or(&serde_json::Value::Bool(false)),
        has("server_id") && has("version") && has("client_id"),
    )
}

/// Splits received bytes into frames and normalises them.
fn normalize(buf: &[u8]) -> Vec<String> {
    let mut frames: Vec<(Option<String>, String)> = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            frames.push((
                None,
                format!("<PARTIAL {:?}>", String::from_utf8_lossy(rest)),
            ));
            break;
        };
        let line = &rest[..eol];
        let after = &rest[eol + 2..];
        let text = String::from_utf8_lossy(line).into_owned();
        if let Some(json) = line.strip_prefix(b"INFO ") {
            frames.push((None, normalize_info(json)));
            rest = after;
            continue;
        }
        let is_msg = text.starts_with("MSG ");
        let is_hmsg = text.starts_with("HMSG ");
        if is_msg || is_hmsg {
            let args: Vec<&str> = text.split(' ').collect();
            let size: usize = args.last().and_then(|s| s.parse().ok()).unwrap_or(0);
            if after.len() < size + 2 {
                frames.push((None, format!("<PARTIAL MSG {text}>")));
                break;
            }
            let payload = String::from_utf8_lossy(&after[..size]).into_owned();
            let terminated = &after[size..size + 2] == b"\r\n";
            frames.push((
                Some(args[2].to_string()),
                format!(
                    "{text} | {payload:?}{}",
                    if terminated { "" } else { " <BAD END>" }
                ),
            ));
            rest = &after[size + 2..];
            continue;
        }
        frames.push((None, text));
        rest = after;
    }
    // Order runs of messages by sid, stably.
    let mut out = Vec::new();
    let mut run: Vec<(String, String)> = Vec::new();
    for (sid, f) in frames {
        match sid {
            Some(sid) => run.push((sid, f)),
            None => {
                run.sort_by(|a, b| a.0.cmp(&b.0));
                out.extend(run.drain(..).map(|(_, f)| f));
                out.push(f);
            }
        }
    }
    run.sort_by(|a, b| a.0.cmp(&b.0));
    out.extend(run.drain(..).map(|(_, f)| f));
    out
}

type Scenario = (&'static str, Vec<Step>);

const QUIET: Duration = Duration::from_millis(150);
const PATIENT: Duration = Duration::from_millis(1500);

/// `steps` against a fresh pair of servers at once: (nats-server, embedded).
async fn both(
    cfg: &Cfg,
    steps: &[Step],
    keep_pings: bool,
    quiet: Duration,
) -> (Vec<String>, Vec<String>) {
    let pair = Pair::start(cfg).await;
    tokio::join!(
        run_script(pair.oracle.addr(), steps, keep_pings, quiet),
        run_script(pair.embedded.addr(), steps, keep_pings, quiet)
    )
}

/// Runs every scenario against both servers (concurrently) and asserts
/// they agree; reports all disagreements at once.
async fn check(cfg: &Cfg, scenarios: Vec<Scenario>) {
    // Both servers PING a client 2 to 2.4 s after it connected (a random
    // delay); unless a test sets the ping interval, those PINGs depend on
    // how long a scenario ran and are left out.
    let keep_pings = cfg.ping_interval_ms.is_some();
    // Every scenario gets its own pair of servers, so concurrent scenarios
    // cannot see each other's messages.
    let results: Vec<_> = futures::stream::iter(scenarios.iter())
        .map(|(name, steps)| async move {
            let (mut want, mut got) = both(cfg, steps, keep_pings, QUIET).await;
            // 150 ms of silence means "finished" on an idle machine; under
            // load a server's last frame or close may come later. A
            // disagreement is only one after a patient second look.
            if want != got {
                (want, got) = both(cfg, steps, keep_pings, PATIENT).await;
            }
            (*name, want, got)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut failures = Vec::new();
    for (name, want, got) in results {
        if want != got {
            failures.push(format!(
                "scenario {name}:\n--- nats-server\n{}\n--- embedded\n{}\n",
                want.join("\n~~~\n"),
                got.join("\n~~~\n")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios disagree:\n{}",
        failures.len(),
        scenarios.len(),
        failures.join("\n")
    );
}

/// A one-connection scenario sending `input` then syncing.
fn one(name: &'static str, input: &str) -> Scenario {
    (name, vec![Open(0), send(0, input), Sync(0)])
}

/// A one-connection scenario sending `input` and reading until quiet (for
/// inputs after which the server closes, or that end mid-frame).
fn raw(name: &'static str, input: &str) -> Scenario {
    (name, vec![Open(0), send(0, input)])
}

const Q: &str = "CONNECT {\"verbose\":false}\r\n";
const QH: &str = "CONNECT {\"verbose\":false,\"headers\":true}\r\n";

fn cat(a: &str, b: &str) -> String {
    format!("{a}{b}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_ping() {
    check(
        &Cfg::default(),
        vec![
            one("ping before connect", "PING\r\n"),
            one("sub before connect gets +OK", "SUB foo 1\r\n"),
            one("connect {} is verbose", "CONNECT {}\r\n"),
            one("connect null fields", "CONNECT {\"verbose\":null,\"echo\":null}\r\n"),
            one("connect unknown fields", "CONNECT {\"verbose\":false,\"foo\":[1,2]}\r\n"),
            one("connect without space", "CONNECT{\"verbose\":false}\r\n"),
            one("lower case", "connect {}\r\nping\r\n"),
            one("second connect", "CONNECT {\"verbose\":false}\r\nCONNECT {\"verbose\":true}\r\n"),
            one("tls_required false ok", "CONNECT {\"verbose\":false,\"tls_required\":false}\r\n"),
            one("user/pass without auth", "CONNECT {\"verbose\":false,\"user\":\"a\",\"pass\":\"b\"}\r\n"),
            raw("connect bad json", "CONNECT {\r\nPING\r\n"),
            raw("connect no json", "CONNECT\r\nPING\r\n"),
            raw("connect array", "CONNECT [1]\r\nPING\r\n"),
            raw("connect trailing", "CONNECT {} x\r\nPING\r\n"),
            raw("connect wrong type", "CONNECT {\"lang\":5}\r\nPING\r\n"),
            raw("connect protocol 2", "CONNECT {\"verbose\":false,\"protocol\":2}\r\nPING\r\n"),
            raw("connect protocol -1", "CONNECT {\"verbose\":false,\"protocol\":-1}\r\nPING\r\n"),
            raw(
                "no_responders without headers",
                "CONNECT {\"verbose\":false,\"no_responders\":true}\r\nPING\r\n",
            ),
            one("pong and ping args ignored", &cat(Q, "PONG\r\nPING x\r\nPING\tx\r\n")),
            one("client +OK and INFO ignored", &cat(Q, "+OK\r\nINFO {}\r\n")),
            raw("client -ERR closes", &cat(Q, "-ERR 'x'\r\nPING\r\n")),
            raw("client INFO without json closes", &cat(Q, "INFO\r\nPING\r\n")),
            one("verbose everything", "CONNECT {\"verbose\":true}\r\nSUB a 1\r\nPUB a 1\r\nx\r\nUNSUB 1\r\nUNSUB 99\r\nPONG\r\n"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames() {
    let big_sub = format!("{Q}SUB {} 1\r\n", "a".repeat(5000));
    let big_line = format!("{Q}PUB {}", "a".repeat(5000));
    let scenarios = vec![
        raw("pub one arg", &cat(Q, "PUB foo\r\n")),
        raw("pub four args", &cat(Q, "PUB foo bar baz 1\r\n")),
        raw("pub no args", &cat(Q, "PUB \r\n")),
        raw("pub no space", &cat(Q, "PUB\r\n")),
        raw("pubx", &cat(Q, "PUBX foo 1\r\n")),
        raw("pub size x", &cat(Q, "PUB foo x\r\n")),
        raw("pub size -1", &cat(Q, "PUB foo -1\r\n")),
        raw("pub size +1", &cat(Q, "PUB foo +1\r\n")),
        one("pub size 01", &cat(Q, "PUB foo 01\r\nx\r\n")),
        raw("sub one arg", &cat(Q, "SUB foo\r\n")),
        raw("sub four args", &cat(Q, "SUB a b c d\r\n")),
        one("sub three args is queue", &cat(Q, "SUB a b c\r\n")),
        raw("unsub no args", &cat(Q, "UNSUB\r\n")),
        raw("unsub three args", &cat(Q, "UNSUB 1 2 3\r\n")),
        one(
            "unsub bad max removes now",
            &cat(Q, "SUB foo 1\r\nUNSUB 1 x\r\nPUB foo 1\r\nx\r\n"),
        ),
        raw("hpub one size", &cat(QH, "HPUB foo 1\r\n")),
        raw(
            "hpub header larger than total",
            &cat(QH, "HPUB foo 5 4\r\n"),
        ),
        raw(
            "hpub without headers",
            &cat(Q, "HPUB foo 12 12\r\nNATS/1.0\r\n\r\n\r\n"),
        ),
        one(
            "hpub zero header",
            &cat(QH, "SUB foo 1\r\nHPUB foo 0 0\r\n\r\n"),
        ),
        one(
            "hpub any header bytes",
            &cat(QH, "SUB foo 1\r\nHPUB foo 3 3\r\nabc\r\n"),
        ),
        raw("oversize pub", &cat(Q, "PUB foo 1048577\r\n")),
        raw("oversize hpub", &cat(QH, "HPUB foo 10 2000000\r\n")),
        one(
            "max size pub",
            &format!(
                "{Q}SUB foo 1\r\nPUB foo 1048576\r\n{}\r\n",
                "z".repeat(1_048_576)
            ),
        ),
        raw("payload too long", &cat(Q, "PUB foo 3\r\nabcd\r\n")),
        raw("payload then op", &cat(Q, "PUB foo 3\r\nabcPING\r\n")),
        raw("payload bare lf", &cat(Q, "PUB foo 1\r\nx\n")),
        raw("payload cr cr lf", &cat(Q, "PUB foo 1\r\nx\r\r\n")),
        raw(
            "payload incomplete",
            &cat(Q, "SUB foo 1\r\nPUB foo 5\r\nhel"),
        ),
        raw("unknown op", &cat(Q, "GET / HTTP/1.1\r\n")),
        raw("empty line", &cat(Q, "PING\r\n\r\nPING\r\n")),
        raw("leading space", " PING\r\n"),
        raw("msg from client", &cat(Q, "MSG foo 1 1\r\nx\r\n")),
        raw("err without space", &cat(Q, "-ERR\r\nPING\r\n")),
        raw("control line too long", &big_sub),
        raw("control line too long unterminated", &big_line),
        raw("binary garbage", "\u{1}\u{2}\u{3}\r\n"),
        one(
            "bare lf control lines",
            &cat(Q, "SUB foo 1\nPUB foo 1\nx\r\nPING\n"),
        ),
        one(
            "tabs and spaces",
            &cat(Q, "SUB\tfoo \t 1 \r\nPUB  foo\t1 \r\nx\r\n"),
        ),
        one("empty payload", &cat(Q, "SUB foo 1\r\nPUB foo 0\r\n\r\n")),
        one(
            "payload with protocol bytes",
            &cat(Q, "SUB foo 1\r\nPUB foo 12\r\nPING\r\nPUB x\r\r\n"),
        ),
    ];
    check(&Cfg::default(), scenarios).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_and_subscriptions() {
    let scenarios = vec![
        one(
            "invalid sub subjects",
            &cat(
                Q,
                "SUB foo..bar 1\r\nSUB foo.>.x 2\r\nSUB foo. 3\r\nSUB .foo 4\r\nSUB foo>.x 5\r\nSUB > 6\r\n",
            ),
        ),
        one(
            "invalid pub subjects",
            &cat(Q, "PUB foo.* 1\r\nx\r\nPUB > 1\r\nx\r\nPUB a..b 1\r\nx\r\n"),
        ),
        one(
            "invalid pub subjects still routed",
            &cat(
                Q,
                "SUB foo.* 1\r\nSUB foo.> 2\r\nSUB > 3\r\nPUB foo.* 1\r\nx\r\nPUB foo..bar 1\r\ny\r\nPUB foo. 1\r\nz\r\n",
            ),
        ),
        one(
            "invalid pub subject verbose",
            "CONNECT {\"verbose\":true}\r\nPUB foo.* 1\r\nx\r\nSUB a..b 1\r\n",
        ),
        one(
            "reply subjects unchecked",
            &cat(
                Q,
                "SUB foo 1\r\nPUB foo bad.* 1\r\nx\r\nPUB foo ba*d 1\r\ny\r\n",
            ),
        ),
        one(
            "pedantic off",
            "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB foo.* 1\r\nPUB foo.* 1\r\nx\r\nSUB a..b 2\r\n",
        ),
        one(
            "queue names unchecked",
            &cat(Q, "SUB foo bad..q 1\r\nPUB foo 1\r\nx\r\n"),
        ),
        one(
            "overlapping wildcards one connection",
            &cat(
                Q,
                "SUB foo.* 1\r\nSUB foo.> 2\r\nSUB > 3\r\nSUB foo.bar 4\r\nSUB *.bar 5\r\nSUB *.* 6\r\nPUB foo.bar 1\r\nx\r\nPUB foo.baz 1\r\ny\r\nPUB foo.bar.baz 1\r\nz\r\n",
            ),
        ),
        one(
            "same subject twice",
            &cat(
                Q,
                "SUB foo 1\r\nSUB foo 2\r\nPUB foo 1\r\nx\r\nUNSUB 1\r\nPUB foo 1\r\ny\r\n",
            ),
        ),
        one(
            "duplicate sid",
            &cat(
                Q,
                "SUB foo 1\r\nSUB foo 1\r\nSUB bar 1\r\nPUB foo 1\r\nx\r\nPUB bar 1\r\ny\r\n",
            ),
        ),
        one("unknown sid", &cat(Q, "UNSUB 99\r\nUNSUB 99 3\r\n")),
        one(
            "unsub twice",
            &cat(Q, "SUB foo 1\r\nUNSUB 1\r\nUNSUB 1\r\nPUB foo 1\r\nx\r\n"),
        ),
        one(
            "queue plus plain one subject",
            &cat(Q, "SUB foo q 1\r\nSUB foo 2\r\nPUB foo 1\r\nx\r\n"),
        ),
        one(
            "two queue groups",
            &cat(
                Q,
                "SUB foo a 1\r\nSUB foo b 2\r\nSUB foo 3\r\nPUB foo 1\r\nx\r\n",
            ),
        ),
        one(
            "queue over wildcards",
            &cat(Q, "SUB foo.* q 1\r\nPUB foo.x 1\r\nx\r\nPUB bar 1\r\ny\r\n"),
        ),
        one(
            "unsub max after partial delivery",
            &cat(
                Q,
                "SUB foo 1\r\nPUB foo 1\r\na\r\nUNSUB 1 3\r\nPUB foo 1\r\nb\r\nPUB foo 1\r\nc\r\nPUB foo 1\r\nd\r\n",
            ),
        ),
        one(
            "unsub max already reached",
            &cat(
                Q,
                "SUB foo 1\r\nPUB foo 1\r\na\r\nPUB foo 1\r\nb\r\nUNSUB 1 2\r\nPUB foo 1\r\nc\r\nSUB foo 1\r\nPUB foo 1\r\nd\r\n",
            ),
        ),
        one(
            "unsub max lowered",
            &cat(
                Q,
                "SUB foo 1\r\nUNSUB 1 3\r\nPUB foo 1\r\na\r\nUNSUB 1 1\r\nPUB foo 1\r\nb\r\n",
            ),
        ),
        one(
            "unsub max zero",
            &cat(Q, "SUB foo 1\r\nUNSUB 1 0\r\nPUB foo 1\r\nx\r\n"),
        ),
        one(
            "echo off",
            "CONNECT {\"verbose\":false,\"echo\":false}\r\nSUB foo 1\r\nPUB foo 1\r\nx\r\n",
        ),
        one(
            "echo on",
            "CONNECT {\"verbose\":false,\"echo\":true}\r\nSUB foo 1\r\nPUB foo 1\r\nx\r\n",
        ),
        one(
            "headers delivered",
            &cat(
                QH,
                "SUB foo 1\r\nHPUB foo r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
            ),
        ),
        one(
            "no responders",
            "CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\nSUB _INBOX.x.* 1\r\nPUB nobody _INBOX.x.1 0\r\n\r\nSUB _INBOX.y 2\r\nPUB nobody _INBOX.y 2\r\nhi\r\nPUB nobody notmine 0\r\n\r\n",
        ),
        one(
            "no responders echo off",
            "CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true,\"echo\":false}\r\nSUB me 1\r\nSUB _INBOX.z.* 2\r\nPUB me _INBOX.z.1 0\r\n\r\n",
        ),
        one(
            "no responders not requested",
            &cat(QH, "SUB _INBOX.q.* 1\r\nPUB nobody _INBOX.q.1 0\r\n\r\n"),
        ),
        one("many commands in one read", &{
            let mut s = String::from(Q);
            for i in 0..300 {
                s += &format!("SUB s.{i} {i}\r\nPUB s.{i} 3\r\n{:03}\r\n", i);
                if i % 3 == 0 {
                    s += &format!("UNSUB {i}\r\n");
                }
            }
            s
        }),
        (
            "headers stripped for clients without headers",
            vec![
                Open(0),
                send(0, &cat(Q, "SUB h.* 1\r\n")),
                Sync(0),
                Open(1),
                send(1, &cat(QH, "SUB h.* 9\r\n")),
                Sync(1),
                Open(2),
                send(
                    2,
                    &cat(
                        QH,
                        "HPUB h.x r.1 21 25\r\nNATS/1.0\r\nX-A: 1\r\n\r\nbody\r\n",
                    ),
                ),
                Sync(2),
                Sync(0),
                Sync(1),
            ],
        ),
        (
            "fan out across connections",
            vec![
                Open(0),
                send(0, &cat(Q, "SUB f.> 1\r\nSUB f.a q 2\r\n")),
                Sync(0),
                Open(1),
                send(1, &cat(Q, "SUB f.* 1\r\nSUB f.b 2\r\n")),
                Sync(1),
                Open(2),
                send(
                    2,
                    &cat(
                        Q,
                        "PUB f.a 1\r\na\r\nPUB f.b 1\r\nb\r\nPUB f.c.d 1\r\nc\r\n",
                    ),
                ),
                Sync(2),
                Sync(0),
                Sync(1),
            ],
        ),
        (
            "request reply across connections",
            vec![
                Open(0),
                send(0, &cat(Q, "SUB svc 1\r\n")),
                Sync(0),
                Open(1),
                send(
                    1,
                    "CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\nSUB _INBOX.r.* 1\r\nPUB svc _INBOX.r.1 3\r\nreq\r\n",
                ),
                Sync(1),
                Sync(0),
                send(0, "PUB _INBOX.r.1 3\r\nrep\r\n"),
                Sync(0),
                Sync(1),
            ],
        ),
    ];
    check(&Cfg::default(), scenarios).await;
}

/// The same input split in two at every byte, each split on its own
/// connection; every split must give what nats-server gives for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_split_at_every_byte() {
    let input = "CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB a.* 1\r\nPUB a.b 5\r\nhello\r\nHPUB a.c r 12 14\r\nNATS/1.0\r\n\r\nhi\r\nsub a.d q 2\r\nUNSUB 1 1\r\npub a.d 0\r\n\r\nPING\r\n";
    let scenarios: Vec<Scenario> = (1..input.len())
        .map(|i| {
            let steps = vec![
                Open(0),
                Send(0, input.as_bytes()[..i].to_vec()),
                Sleep(20),
                Send(0, input.as_bytes()[i..].to_vec()),
                Sync(0),
            ];
            ("split", steps)
        })
        .collect();
    check(&Cfg::default(), scenarios).await;
}

fn auth_cfg() -> Cfg {
    let hash = bcrypt::hash_with_result("secret", 4)
        .expect("bcrypt")
        .format_for_version(bcrypt::Version::TwoA);
    assert!(hash.starts_with("$2a$04$"));
    let mut alice = UserSpec::new("alice", hash);
    alice.restricted = true;
    alice.pub_allow = Some(vec!["a.>", "_INBOX.>"]);
    alice.pub_deny = vec!["a.secret"];
    alice.sub_allow = Some(vec!["a.*", "_INBOX.>"]);
    alice.sub_deny = vec!["a.x"];
    let mut svc = UserSpec::new("svc", "pw");
    svc.restricted = true;
    svc.sub_allow = Some(vec!["svc.>"]);
    svc.pub_deny = vec![">"];
    svc.allow_responses = true;
    let mut ops = UserSpec::new("ops", "ops");
    ops.restricted = true;
    ops.pub_deny = vec![">"];
    Cfg {
        users: vec![alice, svc, ops, UserSpec::new("bob", "bob")],
        auth_timeout_ms: Some(500),
        ..Cfg::default()
    }
}

fn login(user: &str, pass: &str) -> String {
    format!("CONNECT {{\"verbose\":false,\"user\":\"{user}\",\"pass\":\"{pass}\"}}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_permissions() {
    let alice = login("alice", "secret");
    let scenarios = vec![
        raw("ping before connect with auth", "PING\r\n"),
        raw("sub before connect with auth", "SUB foo 1\r\n"),
        raw("connect {} with auth", "CONNECT {}\r\nPING\r\n"),
        raw("wrong password", &cat(&login("alice", "wrong"), "PING\r\n")),
        raw("unknown user", &cat(&login("nobody", "x"), "PING\r\n")),
        raw(
            "token instead of user",
            "CONNECT {\"verbose\":false,\"auth_token\":\"secret\"}\r\nPING\r\n",
        ),
        one("bcrypt password", &alice),
        one("plain password", &login("bob", "bob")),
        one(
            "publish violations",
            &cat(
                &alice,
                "PUB b 1\r\nx\r\nPUB a.secret 1\r\nx\r\nPUB a.ok 1\r\nx\r\n",
            ),
        ),
        one(
            "subscribe violations",
            &cat(
                &alice,
                "SUB b 1\r\nSUB a.x 2\r\nSUB a.> 3\r\nSUB a.y 4\r\nSUB a.y q 5\r\nSUB > 6\r\n",
            ),
        ),
        one(
            "violations verbose",
            "CONNECT {\"verbose\":true,\"user\":\"alice\",\"pass\":\"secret\"}\r\nSUB b 1\r\nPUB b 1\r\nx\r\nSUB a.y 2\r\n",
        ),
        one(
            "ops may only subscribe",
            &cat(&login("ops", "ops"), "SUB > 1\r\nPUB foo 1\r\nx\r\n"),
        ),
        one(
            "no reply without request",
            &cat(
                &login("svc", "pw"),
                "PUB _INBOX.abc 1\r\nx\r\nPUB foo 1\r\nx\r\n",
            ),
        ),
        (
            "allow responses once per request",
            vec![
                Open(0),
                send(0, &cat(&login("bob", "bob"), "SUB _INBOX.r1 1\r\n")),
                Sync(0),
                Open(1),
                send(1, &cat(&login("svc", "pw"), "SUB svc.> 1\r\n")),
                Sync(1),
                send(0, "PUB svc.x _INBOX.r1 2\r\nhi\r\n"),
                Sync(0),
                Sync(1),
                send(1, "PUB _INBOX.r1 2\r\nok\r\nPUB _INBOX.r1 2\r\nno\r\n"),
                Sync(1),
                Sync(0),
            ],
        ),
        (
            "deny list filters wildcard deliveries",
            vec![
                Open(0),
                send(0, &cat(&alice, "SUB a.* 1\r\n")),
                Sync(0),
                Open(1),
                send(
                    1,
                    &cat(&login("bob", "bob"), "PUB a.x 1\r\nx\r\nPUB a.y 1\r\ny\r\n"),
                ),
                Sync(1),
                Sync(0),
            ],
        ),
        ("auth timeout", vec![Open(0), Sleep(900)]),
        (
            "auth timeout after partial connect",
            vec![Open(0), send(0, "CONN"), Sleep(900)],
        ),
    ];
    check(&auth_cfg(), scenarios).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth() {
    let cfg = Cfg {
        token: Some("s3cr3t".into()),
        ..Cfg::default()
    };
    check(
        &cfg,
        vec![
            raw("ping before connect", "PING\r\n"),
            raw(
                "bad token",
                "CONNECT {\"verbose\":false,\"auth_token\":\"bad\"}\r\nPING\r\n",
            ),
            raw(
                "user instead of token",
                &cat(&login("s3cr3t", "s3cr3t"), "PING\r\n"),
            ),
            one(
                "good token",
                "CONNECT {\"verbose\":false,\"auth_token\":\"s3cr3t\"}\r\n",
            ),
            one(
                "good token verbose",
                "CONNECT {\"verbose\":true,\"auth_token\":\"s3cr3t\"}\r\n",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_connection() {
    let cfg = Cfg {
        ping_interval_ms: Some(200),
        ping_max: Some(2),
        ..Cfg::default()
    };
    check(
        &cfg,
        vec![
            ("stale connection", vec![Open(0), send(0, Q), Sleep(900)]),
            (
                "stale connection without connect",
                vec![Open(0), Sleep(900)],
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit() {
    let cfg = Cfg {
        max_connections: Some(2),
        ..Cfg::default()
    };
    check(
        &cfg,
        vec![(
            "connection limit",
            vec![
                Open(0),
                send(0, Q),
                Sync(0),
                Open(1),
                send(1, Q),
                Sync(1),
                Open(2),
                send(2, Q),
                Sleep(50),
            ],
        )],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_payload_configured() {
    let cfg = Cfg {
        max_payload: Some(100),
        ..Cfg::default()
    };
    check(
        &cfg,
        vec![
            one(
                "at limit",
                &format!("{Q}SUB a 1\r\nPUB a 100\r\n{}\r\n", "x".repeat(100)),
            ),
            raw("over limit", &cat(Q, "PUB a 101\r\n")),
            raw("hpub over limit", &cat(QH, "HPUB a 50 101\r\n")),
        ],
    )
    .await;
}
