//! `WS /api/v1/ws/deployments/{id}`: a deployment's progress and log lines
//! as JSON, for API clients (the dashboard has its own HTML stream).
//!
//! Messages, one JSON object per text frame:
//! - `{"type": "deployment", "deployment": {...}}` first, then whenever the
//!   state or a stage changes;
//! - `{"type": "log", "line": "[stage] text"}` for every line of the stored
//!   (secret-masked) log, from the first, in order;
//! - `{"type": "end"}` once the deployment is final and its log sent whole;
//!   then the server closes the socket.
//!
//! The log is followed by byte offset in the ordered, de-duplicated log file,
//! so a line is neither skipped nor sent twice, whatever the bus did.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::ControlPlane;
use crate::error::ApiError;
use crate::sessions::CurrentSession;

const POLL: Duration = Duration::from_millis(100);
/// A final deployment's log may still get replayed lines; they are waited
/// for this long after the final state before the stream ends.
const SETTLE: Duration = Duration::from_millis(300);

/// A browser page from another site could open this socket with the user's
/// cookie (WebSockets are not bound by CORS). Scripts send no `Origin`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split("://").nth(1).unwrap_or("");
    !host.is_empty() && origin_host == host
}

/// `GET /api/v1/ws/deployments/{id}` (WebSocket upgrade)
pub async fn deployment(
    State(cp): State<ControlPlane>,
    _: CurrentSession,
    headers: HeaderMap,
    Path(id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if !same_origin(&headers) {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "cross-origin WebSocket refused",
        ));
    }
    if cp.deployment(&id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "deployment {:?} not found",
            crate::environments::clip(&id)
        )));
    }
    Ok(upgrade
        .on_upgrade(move |socket| stream(cp, id, socket))
        .into_response())
}

async fn send(socket: &mut WebSocket, value: serde_json::Value) -> bool {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .is_ok()
}

async fn stream(cp: ControlPlane, id: String, mut socket: WebSocket) {
    let mut offset = 0usize;
    let mut last_shown = String::new();
    let mut final_since: Option<tokio::time::Instant> = None;
    loop {
        let d = match cp.deployment(&id).await {
            Ok(Some(d)) => d,
            // Deleted meanwhile, or the store failed: nothing more to say.
            _ => {
                let _ = send(&mut socket, json!({"type": "end"})).await;
                return;
            }
        };
        let shown = serde_json::to_string(&d).unwrap_or_default();
        if shown != last_shown {
            if !send(&mut socket, json!({"type": "deployment", "deployment": d})).await {
                return;
            }
            last_shown = shown;
        }
        let text = cp
            .deployment_log(&id)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        // Only whole lines: the writer may be half-way through one.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        if complete > offset {
            let new = text.get(offset..complete).unwrap_or("");
            for line in new.lines() {
                if !send(&mut socket, json!({"type": "log", "line": line})).await {
                    return;
                }
            }
            offset = complete;
            final_since = None;
        }
        if d.state.is_final() {
            let since = *final_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= SETTLE {
                let _ = send(&mut socket, json!({"type": "end"})).await;
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
        tokio::select! {
            _ = cp.inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_same_origin_browsers_and_scripts_may_connect() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("sdp.local:8000"));
        assert!(same_origin(&h));
        h.insert(ORIGIN, HeaderValue::from_static("http://sdp.local:8000"));
        assert!(same_origin(&h));
        h.insert(ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&h));
    }
}
