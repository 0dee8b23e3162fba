//! The live deployment page: a WebSocket that pushes HTML fragments for
//! htmx's WebSocket extension to swap in by id.
//!
//! The page is rendered with the log up to byte `n` and connects with
//! `?from=n`. The first frame of every connection replaces `#log-live` with
//! the log from `n` to now and `#deployment-head` with the current state, so
//! a reconnecting page (the extension reconnects by itself) is made whole
//! again, not appended to twice. Later frames append only what is new. The
//! cursor is a byte offset into the control plane's ordered, de-duplicated
//! log file (see [`crate::logfile`]), so no line is skipped or repeated.
//!
//! Frames go out at most every [`FRAME`]: a build printing thousands of lines
//! a second costs the browser twenty swaps a second, not thousands.
//!
//! The lists (the sandboxes overview, a sandbox's services, the nodes) are
//! pushed the same way: a snapshot when the page connects, then a new one
//! only when the control plane says something changed
//! ([`sdp_control::changes`]) and it differs from what the page has, at most
//! one per [`LIST_FRAME`]. Nothing is re-read on a timer, except the nodes
//! page at the moment a silent node stops counting as connected.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use sdp_control::changes::Topic;
use sdp_control::nodes::CONNECTED_WITHIN;
use sdp_control::{Deployment, StageStatus};
use tokio::time::{Instant, sleep, sleep_until};

use crate::Web;
use crate::logfile;
use crate::security::{self, Authed};
use crate::views::Viewer;
use crate::views::deployment::{self, Head};
use crate::views::nodes::{self as nodes_view, NodeRow};
use crate::views::sandboxes::{self as sb_view, SandboxRow, ServicesTable};

/// At most one frame per this long.
pub const FRAME: Duration = Duration::from_millis(50);
/// At most one list frame per this long: a "deploy all" of ten services
/// moves the overview once, not ten times.
pub const LIST_FRAME: Duration = Duration::from_millis(250);
/// Log bytes in one frame, so a long backlog goes out in digestible pieces.
const MAX_FRAME_BYTES: usize = 256 * 1024;
/// How often an open page re-checks when nothing woke it: with the bus, only
/// as a safety net; without it, this is how quickly lines appear.
const POLL_WITH_BUS: Duration = Duration::from_millis(250);
const POLL_WITHOUT_BUS: Duration = FRAME;
/// A finished deployment changes only by restart/stop/delete.
const POLL_FINISHED: Duration = Duration::from_secs(1);
/// How often the session behind an open socket is checked again, so signing
/// out (or expiry) ends the stream too.
const SESSION_CHECK: Duration = Duration::from_secs(5);

#[derive(serde::Deserialize)]
pub struct LiveQuery {
    #[serde(default)]
    from: u64,
}

/// `GET /ws/live/deployments/{id}?from=n`
pub async fn deployment(
    State(web): State<Web>,
    a: Authed,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LiveQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(refused) = cross_origin(&headers) {
        return refused;
    }
    let Some(path) = logfile::path(&web.cp, &id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match web.cp.deployment(&id).await {
        Ok(Some(_)) => {}
        Ok(None) => return StatusCode::NOT_FOUND.into_response(),
        Err(e) => return e.status().into_response(),
    }
    let stream = Stream {
        web,
        id,
        path,
        offset: q.from,
        csrf: a.viewer.csrf,
        headers,
    };
    upgrade.on_upgrade(move |socket| stream.run(socket))
}

struct Stream {
    web: Web,
    id: String,
    path: PathBuf,
    offset: u64,
    csrf: String,
    headers: HeaderMap,
}

fn is_final(d: &Deployment) -> bool {
    d.state.is_final()
}

impl Stream {
    async fn run(mut self, socket: WebSocket) {
        let (mut tx, mut rx) = socket.split();
        let mut wake = match &self.web.bus {
            Some(bus) => bus
                .subscribe(format!("sdp.deploy.{}.>", self.id))
                .await
                .ok(),
            None => None,
        };
        // A page cannot be ahead of the file; if it claims so, start over.
        let len = tokio::fs::metadata(&self.path).await.map_or(0, |m| m.len());
        if self.offset > len {
            self.offset = 0;
        }
        let mut last: Option<Deployment> = None;
        let mut first = true;
        let mut session_checked = Instant::now();
        loop {
            let started = Instant::now();
            let frame = match self.frame(first, &mut last).await {
                Ok(f) => f,
                Err(Gone) => {
                    let _ = tx
                        .send(Message::Text(deployment::gone().into_string().into()))
                        .await;
                    let _ = tx.close().await;
                    return;
                }
            };
            first = false;
            let backlog = frame.backlog;
            if !frame.html.is_empty() && tx.send(Message::Text(frame.html.into())).await.is_err() {
                return;
            }
            if session_checked.elapsed() >= SESSION_CHECK {
                if self.web.cp.session(&self.headers).is_none() {
                    let _ = tx.close().await;
                    return;
                }
                session_checked = Instant::now();
            }
            let idle = if backlog {
                Duration::ZERO
            } else if last.as_ref().is_some_and(is_final) {
                POLL_FINISHED
            } else if wake.is_some() {
                POLL_WITH_BUS
            } else {
                POLL_WITHOUT_BUS
            };
            let woken = tokio::select! {
                _ = sleep(idle) => false,
                msg = next_wake(&mut wake) => msg,
                msg = rx.next() => match msg {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => false,
                },
            };
            if woken {
                // The control plane applies the same message; give it a
                // moment to reach the log file before looking.
                sleep(Duration::from_millis(10)).await;
            }
            sleep_until(started + FRAME).await;
        }
    }

    async fn frame(&mut self, first: bool, last: &mut Option<Deployment>) -> Result<Frame, Gone> {
        let mut html = String::new();
        let d = match self.web.cp.deployment(&self.id).await {
            Ok(Some(d)) => Some(d),
            Ok(None) => return Err(Gone),
            // A storage hiccup: keep the page as it is and try again.
            Err(_) => None,
        };
        if let Some(d) = d
            && last.as_ref() != Some(&d)
        {
            let failed = d.stages.iter().any(|s| s.status == StageStatus::Failed);
            let tail = if failed {
                logfile::tail(&self.path, 64 * 1024)
                    .await
                    .map(|t| t.1)
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let head = Head::new(&d, &tail, self.csrf.clone());
            html.push_str(&deployment::head(&head, true).into_string());
            *last = Some(d);
        }
        let (text, next) = logfile::read_from(&self.path, self.offset, MAX_FRAME_BYTES)
            .await
            .unwrap_or_else(|_| (String::new(), self.offset));
        let backlog = next - self.offset >= MAX_FRAME_BYTES as u64 / 2;
        self.offset = next;
        if first {
            html.push_str(&deployment::log_reset(&text).into_string());
        } else if !text.is_empty() {
            html.push_str(&deployment::log_append(&text).into_string());
        }
        Ok(Frame { html, backlog })
    }
}

struct Frame {
    html: String,
    /// More log is waiting: send the next frame without idling.
    backlog: bool,
}

struct Gone;

/// Whether a bus message for this deployment arrived; never resolves
/// without a bus, so `select!` then waits on the others only.
async fn next_wake(wake: &mut Option<async_nats::Subscriber>) -> bool {
    match wake {
        Some(sub) => {
            if sub.next().await.is_none() {
                *wake = None;
            }
            // Drain what else is queued: one look covers them all.
            if let Some(sub) = wake {
                while let Some(Some(_)) = futures::FutureExt::now_or_never(sub.next()) {}
            }
            true
        }
        None => std::future::pending().await,
    }
}

/// A cross-site page could otherwise open a socket with the user's cookie
/// (WebSockets are not bound by CORS); browsers always send `Origin`.
fn cross_origin(headers: &HeaderMap) -> Option<Response> {
    let ok = headers.contains_key(axum::http::header::ORIGIN) && security::same_origin(headers);
    (!ok).then(|| (StatusCode::FORBIDDEN, "cross-origin WebSocket refused").into_response())
}

/// `GET /ws/live/sandboxes` (the overview's cards), `/ws/live/nodes`, and
/// `/ws/live/sandboxes/{name}` (one sandbox's services table).
pub async fn list(
    State(web): State<Web>,
    a: Authed,
    headers: HeaderMap,
    Path(p): Path<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let l = match (p.get("list").map(String::as_str), p.get("name")) {
        (Some("sandboxes"), None) => List::Overview,
        (Some("nodes"), None) => List::Nodes,
        (None, Some(name)) => List::Services(name.clone()),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    open_list(web, a, headers, upgrade, l)
}

fn open_list(
    web: Web,
    a: Authed,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
    l: List,
) -> Response {
    if let Some(refused) = cross_origin(&headers) {
        return refused;
    }
    let viewer = a.viewer;
    upgrade.on_upgrade(move |socket| push_list(web, l, viewer, headers, socket))
}

/// A list a page shows live.
enum List {
    Overview,
    Services(String),
    Nodes,
}

enum Rendered {
    /// The fragment now; look again after `recheck` even if nothing is
    /// announced (a node going silent announces nothing).
    Show {
        html: String,
        recheck: Option<Duration>,
    },
    /// The store did not answer: keep the page as it is.
    Skip,
    /// What the page shows no longer exists: this is the last frame.
    Gone(String),
}

impl List {
    fn topic(&self) -> Topic {
        match self {
            List::Overview | List::Services(_) => Topic::Sandboxes,
            List::Nodes => Topic::Nodes,
        }
    }

    async fn render(&self, web: &Web, viewer: &Viewer) -> Rendered {
        let html = match self {
            List::Overview => match web.cp.sandboxes().await {
                Ok(list) => {
                    let rows: Vec<SandboxRow> = list.iter().map(SandboxRow::from).collect();
                    sb_view::cards(&rows, true)
                }
                Err(_) => return Rendered::Skip,
            },
            List::Services(name) => match web.cp.sandbox(name).await {
                Ok(s) => {
                    let (services, gateway_latest) = crate::pages::sandbox_services(web, &s).await;
                    let row = SandboxRow::from(&s);
                    let table = ServicesTable {
                        viewer,
                        sandbox: &row,
                        gateway_latest: &gateway_latest,
                        services: &services,
                    };
                    sb_view::services(&table, true)
                }
                Err(e) if e.status() == StatusCode::NOT_FOUND => {
                    return Rendered::Gone(sb_view::services_gone().into_string());
                }
                Err(_) => return Rendered::Skip,
            },
            List::Nodes => {
                let nodes = web.cp.nodes();
                let rows: Vec<NodeRow> = nodes.iter().map(NodeRow::from).collect();
                let now = chrono::Utc::now();
                // The first connected node to fall silent flips to
                // "disconnected" then, with no message to say so.
                let recheck = nodes
                    .iter()
                    .filter(|n| n.connected)
                    .filter_map(|n| (n.last_seen + CONNECTED_WITHIN - now).to_std().ok())
                    .min()
                    .map(|d| d + Duration::from_millis(100));
                return Rendered::Show {
                    html: nodes_view::table(&rows, true).into_string(),
                    recheck,
                };
            }
        };
        Rendered::Show {
            html: html.into_string(),
            recheck: None,
        }
    }
}

/// Sends `l` when the page connects, then whenever it changes.
async fn push_list(web: Web, l: List, viewer: Viewer, headers: HeaderMap, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    // Subscribed before the first look, so a change made during it is seen.
    let mut changes = web.cp.changes(l.topic());
    let mut shown = String::new();
    let mut session_due = Instant::now() + SESSION_CHECK;
    loop {
        let looked = Instant::now();
        changes.borrow_and_update();
        let recheck = match l.render(&web, &viewer).await {
            Rendered::Show { html, recheck } => {
                if html != shown {
                    if tx.send(Message::Text(html.as_str().into())).await.is_err() {
                        return;
                    }
                    shown = html;
                }
                recheck.map(|d| looked + d)
            }
            Rendered::Skip => None,
            Rendered::Gone(html) => {
                let _ = tx.send(Message::Text(html.into())).await;
                let _ = tx.close().await;
                return;
            }
        };
        // Wait for a reason to look again; checking the session is not one.
        loop {
            let never = Instant::now() + Duration::from_secs(24 * 3600);
            tokio::select! {
                changed = changes.changed() => match changed {
                    Ok(()) => break,
                    Err(_) => return,
                },
                _ = sleep_until(recheck.unwrap_or(never)) => break,
                _ = sleep_until(session_due) => {
                    if web.cp.session(&headers).is_none() {
                        let _ = tx.close().await;
                        return;
                    }
                    session_due = Instant::now() + SESSION_CHECK;
                }
                msg = rx.next() => match msg {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
            }
        }
        // Whatever else changes meanwhile is seen by the next look.
        sleep_until(looked + LIST_FRAME).await;
    }
}
