//! The target "a log of 100,000 lines streams to an open page with every
//! line present, in order, and the page stays responsive", measured in a
//! real browser (Debian's headless `chromium` through `chromium-driver`).
//!
//! The server side is the real one: the embedded broker, the control plane
//! and the dashboard wired as `sdp server` wires them. The agent is a
//! stand-in on the bus that does what a micro agent does for this purpose:
//! announces itself, accepts the deployment, publishes the stage events and
//! 100,000 log lines on `sdp.deploy.{id}.event` / `.log` with one sequence
//! number shared by both, as fast as the bus takes them, and replays from
//! its spool when the control plane finds a gap. The user signs in through
//! the login form; the stand-in gateway accepts the sign-in.
//!
//! What is measured, in the page (instrumented through WebDriver before the
//! first line is published):
//! - lines: the deployment page keeps the whole log in `#log` (it caps only
//!   what it carries at load, with a link to the whole log); at the end every
//!   line of `#log` is compared with what was published, so "every line, in
//!   order, once" is checked on the DOM itself, and against the stored log;
//! - time from the first line published to the last line in the DOM, and the
//!   WebSocket frames and bytes it took;
//! - responsiveness while the log streams: long tasks (a `PerformanceObserver`
//!   for `longtask`: main-thread work of 50 ms or more), the longest gap
//!   between animation frames, the lateness of a 50 ms `setInterval`, and
//!   real clicks (WebDriver input on `#log-box`) every 200 ms: their round
//!   trip from here and their input delay inside the page.
//!
//! Run with `cargo bench -p sdp --bench browser_log` (`SDP_BENCH_LINES`
//! changes the number of lines).

#[path = "../tests/browser/driver.rs"]
mod driver;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driver::Browser;
use futures::StreamExt;
use sdp_contract::subjects::{self, AgentOp};
use sdp_contract::{
    Ack, AgentError, AgentKeys, AuthOutcome, AuthRequest, Credentials, DeployEvent,
    DeploymentState, ErrorCode, EventKind, LogLine, LogStream, NodeKind, Presence, ReplayRequest,
    Reply, encode,
};
use sdp_control::ControlConfig;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const USER: &str = "achmad";
const STAGE: &str = "go build";

/// `2026-11-27T18:30:00.123Z`: the agent stamps each message.
fn now_rfc3339() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let (secs, ms) = (since.as_secs() as i64, since.subsec_millis());
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The text of log line `i` (1-based), as an agent would send it.
fn line_text(i: usize, n: usize) -> String {
    format!(
        "line {i:06} of {n}: compiling github.com/acme/account/internal/pkg{:03}",
        i % 997
    )
}

/// Everything the stand-in micro agent published, by sequence number, for
/// `replay`.
type Spool = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn presence(node: &str, kind: NodeKind, keys: &AgentKeys, repository: &str) -> Presence {
    Presence {
        node: node.into(),
        kind,
        version: "bench".into(),
        public_key: keys.public_key(),
        address: "127.0.0.1".into(),
        repositories: vec![repository.into()],
        containers: vec![],
    }
}

/// A stand-in agent: announces itself (hello, then a heartbeat every 5 s),
/// accepts sign-ins (gateway) and deployments (micro), and replays from
/// `spool`.
async fn stand_in(
    nats: async_nats::Client,
    node: &'static str,
    kind: NodeKind,
    spool: Spool,
    shutdown: CancellationToken,
) {
    let keys = AgentKeys::generate();
    let repository = if kind == NodeKind::Gateway {
        "erangel"
    } else {
        "account"
    };
    let me = presence(node, kind, &keys, repository);
    let mut requests = nats.subscribe(subjects::agent_all(node)).await.unwrap();
    nats.publish(subjects::node_hello(node), encode(&me).into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let beat = (nats.clone(), me.clone(), shutdown.clone());
    tokio::spawn(async move {
        let (nats, me, shutdown) = beat;
        while shutdown
            .run_until_cancelled(tokio::time::sleep(Duration::from_secs(5)))
            .await
            .is_some()
        {
            let _ = nats
                .publish(subjects::node_heartbeat(node), encode(&me).into())
                .await;
        }
    });
    tokio::spawn(async move {
        while let Some(Some(msg)) = shutdown.run_until_cancelled(requests.next()).await {
            let Some(reply_to) = msg.reply else { continue };
            let op = subjects::parse_agent_op(node, &msg.subject).and_then(AgentOp::parse);
            let answer = match op {
                Some(AgentOp::Hello) => encode(&Reply::Ok(me.clone())),
                Some(AgentOp::Auth) => {
                    let req: AuthRequest = sdp_contract::decode(&msg.payload).unwrap();
                    let c: Credentials = keys.open(&req.credentials).unwrap();
                    encode(&Reply::Ok(AuthOutcome {
                        user: c.username.clone(),
                    }))
                }
                Some(AgentOp::Deploy) => encode(&Reply::Ok(Ack::accepted())),
                Some(AgentOp::Replay) => {
                    let req: ReplayRequest = sdp_contract::decode(&msg.payload).unwrap();
                    let again: Vec<(String, Vec<u8>)> = spool
                        .lock()
                        .unwrap()
                        .iter()
                        .skip(req.from_seq.saturating_sub(1) as usize)
                        .cloned()
                        .collect();
                    eprintln!(
                        "  replay from seq {} ({} messages)",
                        req.from_seq,
                        again.len()
                    );
                    let nats = nats.clone();
                    tokio::spawn(async move {
                        for (subject, bytes) in again {
                            let _ = nats.publish(subject, bytes.into()).await;
                        }
                    });
                    encode(&Reply::Ok(Ack::accepted()))
                }
                _ => encode(&Reply::<()>::Error(AgentError::new(
                    ErrorCode::NotFound,
                    "not served by the stand-in",
                ))),
            };
            let _ = nats.publish(reply_to, answer.into()).await;
        }
    });
}

/// The deployment's messages, encoded before the clock starts: stage
/// started, `n` lines, stage completed, RUNNING.
fn messages(id: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    // The field's own type (a chrono time), read from its wire form.
    let at = || serde_json::from_value(json!(now_rfc3339())).unwrap();
    let event = |seq: usize, kind: EventKind| {
        let ev = DeployEvent {
            deployment: id.into(),
            seq: seq as u64,
            at: at(),
            kind,
        };
        (subjects::deploy_event(id), encode(&ev))
    };
    let stage = || STAGE.to_owned();
    let mut out = vec![event(1, EventKind::StageStarted { stage: stage() })];
    for i in 1..=n {
        let line = LogLine {
            deployment: id.into(),
            seq: (i + 1) as u64,
            at: at(),
            stage: stage(),
            stream: LogStream::Stdout,
            line: line_text(i, n),
        };
        out.push((subjects::deploy_log(id), encode(&line)));
    }
    out.push(event(n + 2, EventKind::StageCompleted { stage: stage() }));
    out.push(event(
        n + 3,
        EventKind::State {
            state: DeploymentState::Running,
            reason: None,
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            container: Some("sandbox-bench-account".into()),
        },
    ));
    out
}

/// Installed in the page before the first line: counts frames, lines and
/// stalls. `N` is the number of lines expected.
const INSTRUMENT: &str = r#"
const N = arguments[0];
const s = window.sdpBench = {
  frames: 0, bytes: 0, lines: 0, doneAt: null, startedAt: null,
  longtasks: [], rafMaxGap: 0, lags: [], inputDelays: [], stop: false,
};
document.body.addEventListener('htmx:wsAfterMessage', e => {
  s.frames++;
  s.bytes += (e.detail && e.detail.message || '').length;
});
new PerformanceObserver(list => {
  for (const e of list.getEntries()) s.longtasks.push(e.duration);
}).observe({ entryTypes: ['longtask'] });
new MutationObserver(records => {
  for (const r of records) for (const node of r.addedNodes) {
    const t = node.textContent || '';
    for (let i = t.indexOf('\n'); i >= 0; i = t.indexOf('\n', i + 1)) s.lines++;
  }
  if (s.lines >= N && s.doneAt === null) s.doneAt = performance.now();
}).observe(document.getElementById('log'), { childList: true, subtree: true });
let last = performance.now();
const frame = t => {
  if (s.startedAt !== null) s.rafMaxGap = Math.max(s.rafMaxGap, t - last);
  last = t;
  if (!s.stop) requestAnimationFrame(frame);
};
requestAnimationFrame(frame);
let due = performance.now() + 50;
setInterval(() => {
  const now = performance.now();
  if (s.startedAt !== null && !s.stop) s.lags.push(Math.max(0, now - due));
  due = now + 50;
}, 50);
document.getElementById('log-box').addEventListener('click', e => {
  if (!s.stop) s.inputDelays.push(performance.now() - e.timeStamp);
});
return null;
"#;

/// Run in the page at the end: every line of `#log` against what was
/// published, in order.
const CHECK: &str = r#"
const N = arguments[0];
const s = window.sdpBench;
s.stop = true;
const text = document.getElementById('log').textContent;
const lines = text.split('\n');
if (lines.length && lines[lines.length - 1] === '') lines.pop();
const expect = i => `[go build] line ${String(i).padStart(6, '0')} of ${N}: compiling github.com/acme/account/internal/pkg${String(i % 997).padStart(3, '0')}`;
let firstBad = null;
for (let i = 0; i < lines.length && i < N; i++) {
  if (lines[i] !== expect(i + 1)) { firstBad = { at: i + 1, got: lines[i].slice(0, 120), want: expect(i + 1) }; break; }
}
const sorted = a => a.slice().sort((x, y) => x - y);
const pct = (a, p) => a.length ? sorted(a)[Math.min(a.length - 1, Math.floor(a.length * p))] : 0;
return {
  domLines: lines.length, domBytes: text.length, firstBad,
  frames: s.frames, frameBytes: s.bytes,
  streamMs: s.doneAt === null ? null : s.doneAt - s.startedAt,
  longtaskCount: s.longtasks.length,
  longtaskMax: s.longtasks.length ? Math.max(...s.longtasks) : 0,
  longtaskTotal: s.longtasks.reduce((a, b) => a + b, 0),
  rafMaxGap: s.rafMaxGap,
  lagP50: pct(s.lags, 0.5), lagP99: pct(s.lags, 0.99), lagMax: s.lags.length ? Math.max(...s.lags) : 0,
  inputDelayMax: s.inputDelays.length ? Math.max(...s.inputDelays) : 0,
  inputDelayP50: pct(s.inputDelays, 0.5),
  clicksSeen: s.inputDelays.length,
};
"#;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> driver::Result {
    // `cargo bench` passes `--bench`; nothing else is taken from argv.
    let n: usize = std::env::var("SDP_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let shutdown = CancellationToken::new();
    let dir = tempfile::Builder::new().prefix("sdp-bench-").tempdir()?;

    // The server, wired as `sdp server` wires it.
    let broker =
        sdp::stack::start_broker(TcpListener::bind("127.0.0.1:0").await?, shutdown.clone()).await?;
    let url = broker.client_url();
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", http.local_addr()?);
    let control_nats = sdp::stack::connect(&url, "sdp-control").await?;
    let config = ControlConfig::new(dir.path().join("control"));
    let (_cp, _server) =
        sdp::stack::start_server(http, control_nats, config, shutdown.clone()).await?;

    let agent_nats = async_nats::connect(&url).await?;
    let spool: Spool = Arc::default();
    stand_in(
        agent_nats.clone(),
        "gateway",
        NodeKind::Gateway,
        Spool::default(),
        shutdown.clone(),
    )
    .await;
    stand_in(
        agent_nats.clone(),
        "micro",
        NodeKind::Micro,
        spool.clone(),
        shutdown.clone(),
    )
    .await;

    // A sandbox and a deployment, through the API.
    let api = reqwest::Client::builder().cookie_store(true).build()?;
    let signed_in = api
        .post(format!("{base}/api/v1/session"))
        .json(&json!({"username": USER, "password": "pw"}))
        .send()
        .await?;
    assert_eq!(signed_in.status(), 200, "{}", signed_in.text().await?);
    let sandbox = api
        .post(format!("{base}/api/v1/sandboxes"))
        .json(&json!({"name": "bench", "gateway": {"branch": "main"},
                      "services": {"account": {"branch": "main"}}}))
        .send()
        .await?;
    assert_eq!(sandbox.status(), 201, "{}", sandbox.text().await?);
    let created = api
        .post(format!("{base}/api/v1/deployments"))
        .json(&json!({"sandbox": "bench", "repository": "account", "branch": "main"}))
        .send()
        .await?;
    assert_eq!(created.status(), 201);
    let d: Value = created.json().await?;
    let id = d["id"].as_str().unwrap().to_owned();
    let msgs = messages(&id, n);
    *spool.lock().unwrap() = msgs.clone();

    // The browser: sign in through the form, open the deployment page.
    let b = Browser::start(&base, "browser_log").await;
    b.goto("/login").await?;
    b.fill("#username", USER).await?;
    b.fill("#password", "pw").await?;
    b.click("form.login button[type=submit]").await?;
    b.wait_for("#sandboxes", Duration::from_secs(20)).await?;
    b.goto(&format!("/deployments/{id}")).await?;
    b.wait_for(
        "#deployment-head[data-state=QUEUED]",
        Duration::from_secs(20),
    )
    .await?;
    let open = "var l = document.getElementById('live'); var d = l && l['htmx-internal-data']; \
                return !!(d && d.webSocket && d.webSocket.socket && d.webSocket.socket.readyState === 1);";
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.js(open).await? != Value::Bool(true) {
        assert!(Instant::now() < deadline, "the live socket never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.client.execute(INSTRUMENT, vec![json!(n)]).await?;
    let log_box = b.find("#log-box").await?;

    // The agent publishes; meanwhile a real click every 200 ms.
    b.js("window.sdpBench.startedAt = performance.now(); return null;")
        .await?;
    let started = Instant::now();
    let mut publisher = Some({
        let nats = agent_nats.clone();
        let msgs = msgs.clone();
        tokio::spawn(async move {
            for (subject, bytes) in msgs {
                nats.publish(subject, bytes.into()).await.unwrap();
            }
            nats.flush().await.unwrap();
            started.elapsed()
        })
    });
    let mut clicks: Vec<f64> = Vec::new();
    let mut published = None;
    let deadline = started + Duration::from_secs(900);
    loop {
        let t = Instant::now();
        log_box.clone().click().await?;
        clicks.push(ms(t.elapsed()));
        if let Some(p) = publisher.take_if(|p| p.is_finished()) {
            published = Some(p.await?);
        }
        let done = b
            .js("var s = window.sdpBench; return s.doneAt !== null && \
                 document.querySelector('#deployment-head[data-state=RUNNING]') !== null;")
            .await?;
        if done == Value::Bool(true) {
            break;
        }
        if Instant::now() > deadline {
            let seen = b.js("return window.sdpBench.lines;").await?;
            panic!(
                "after {:?} the page had {seen} of {n} lines",
                started.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(200).saturating_sub(t.elapsed())).await;
    }
    let wall = started.elapsed();
    let published = match (publisher, published) {
        (Some(p), _) => p.await?,
        (None, p) => p.unwrap_or_default(),
    };

    let r = b.client.execute(CHECK, vec![json!(n)]).await?;
    let stored = api
        .get(format!("{base}/api/v1/deployments/{id}/logs"))
        .send()
        .await?
        .text()
        .await?;
    let stored_lines = stored
        .lines()
        .filter(|l| l.starts_with("[go build] "))
        .count();
    b.shot("streamed").await?;
    b.close().await;
    shutdown.cancel();

    clicks.sort_by(f64::total_cmp);
    let dom_lines = r["domLines"].as_u64().unwrap_or(0) as usize;
    println!("browser_log: {n} log lines through bus → control plane → WebSocket → Chromium");
    println!(
        "  agent published all in {:.2} s; last line in the page's DOM after {:.2} s \
         (page clock {:.2} s)",
        published.as_secs_f64(),
        wall.as_secs_f64(),
        num(&r, "streamMs") / 1000.0
    );
    println!(
        "  page received {} WebSocket frames, {:.1} MiB of HTML; #log holds {} lines, {:.1} MiB",
        r["frames"],
        num(&r, "frameBytes") / 1048576.0,
        dom_lines,
        num(&r, "domBytes") / 1048576.0
    );
    println!(
        "  every line present, in order, once: {} (first mismatch: {}); stored log: {} lines",
        r["firstBad"].is_null() && dom_lines == n,
        r["firstBad"],
        stored_lines
    );
    println!(
        "  long tasks (≥ 50 ms) while streaming: {} , longest {:.0} ms, {:.0} ms in all",
        r["longtaskCount"],
        num(&r, "longtaskMax"),
        num(&r, "longtaskTotal")
    );
    println!(
        "  longest gap between animation frames {:.0} ms; 50 ms timer late by p50 {:.0} ms, \
         p99 {:.0} ms, max {:.0} ms",
        num(&r, "rafMaxGap"),
        num(&r, "lagP50"),
        num(&r, "lagP99"),
        num(&r, "lagMax")
    );
    println!(
        "  {} clicks during the stream: WebDriver round trip p50 {:.0} ms, p95 {:.0} ms, max \
         {:.0} ms; input delay in the page p50 {:.0} ms, max {:.0} ms",
        clicks.len(),
        pct(&clicks, 0.5),
        pct(&clicks, 0.95),
        clicks.last().copied().unwrap_or(0.0),
        num(&r, "inputDelayP50"),
        num(&r, "inputDelayMax")
    );
    assert!(r["firstBad"].is_null(), "a line differs: {}", r["firstBad"]);
    assert_eq!(dom_lines, n, "lines in the page");
    assert_eq!(stored_lines, n, "lines in the stored log");
    Ok(())
}
