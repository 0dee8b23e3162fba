//! Monitoring over HTTP, a subset of nats-server's: `/healthz`, `/varz`
//! and `/connz` with nats-server's field names for the counters they share.
//!
//! The endpoint takes its own listener, independent of the client one:
//!
//! ```no_run
//! # async fn demo(broker: &sdp_broker::BrokerHandle, shutdown: tokio_util::sync::CancellationToken) {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8222").await.unwrap();
//! tokio::spawn(sdp_broker::monitoring::serve(listener, broker.monitor(), shutdown));
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::server::{SERVER_VERSION, Shared};

/// Read access to a running broker's counters and connections.
#[derive(Debug, Clone)]
pub struct Monitor {
    shared: Arc<Shared>,
}

/// `/varz`: server identity, limits and counters.
#[derive(Debug, Clone, Serialize)]
pub struct Varz {
    pub server_id: String,
    pub server_name: String,
    pub version: String,
    pub proto: u8,
    pub host: String,
    pub port: u16,
    pub max_connections: usize,
    /// Nanoseconds, as nats-server.
    pub ping_interval: u128,
    pub ping_max: u32,
    /// Seconds.
    pub auth_timeout: f64,
    pub max_control_line: usize,
    pub max_payload: usize,
    pub max_pending: usize,
    /// Seconds.
    pub tls_timeout: f64,
    /// Nanoseconds.
    pub write_deadline: u128,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auth_required: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_required: bool,
    pub start: String,
    pub now: String,
    pub uptime: String,
    /// Resident memory in bytes.
    pub mem: u64,
    pub cores: usize,
    pub connections: usize,
    pub total_connections: u64,
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub slow_consumers: u64,
    pub subscriptions: usize,
}

/// `/connz`: the open connections.
#[derive(Debug, Clone, Serialize)]
pub struct Connz {
    pub server_id: String,
    pub now: String,
    pub num_connections: usize,
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub connections: Vec<ConnInfo>,
}

/// One connection in `/connz`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnInfo {
    pub cid: u64,
    pub ip: String,
    pub port: u16,
    pub start: String,
    pub uptime: String,
    pub pending_bytes: usize,
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub subscriptions: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorized_user: Option<String>,
}

impl Monitor {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Monitor { shared }
    }

    /// The `/varz` document.
    pub fn varz(&self) -> Varz {
        let s = &self.shared;
        let c = &s.config;
        let st = &s.stats;
        let now = SystemTime::now();
        Varz {
            server_id: s.server_id.clone(),
            server_name: c.server_name.clone(),
            version: SERVER_VERSION.to_string(),
            proto: 1,
            host: s.host.clone(),
            port: s.port,
            max_connections: c.max_connections,
            ping_interval: c.ping_interval.as_nanos(),
            ping_max: c.max_pings_out,
            auth_timeout: c.auth_timeout.as_secs_f64(),
            max_control_line: c.max_control_line,
            max_payload: c.max_payload,
            max_pending: c.max_pending,
            tls_timeout: c.tls_timeout.as_secs_f64(),
            write_deadline: c.write_deadline.as_nanos(),
            auth_required: c.authorization.is_required(),
            tls_required: c.tls.is_some(),
            start: rfc3339(s.started),
            now: rfc3339(now),
            uptime: uptime(now.duration_since(s.started).unwrap_or_default()),
            mem: resident_memory().unwrap_or(0),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            connections: st.connections.load(Ordering::Relaxed),
            total_connections: st.total_connections.load(Ordering::Relaxed),
            in_msgs: st.in_msgs.load(Ordering::Relaxed),
            out_msgs: st.out_msgs.load(Ordering::Relaxed),
            in_bytes: st.in_bytes.load(Ordering::Relaxed),
            out_bytes: st.out_bytes.load(Ordering::Relaxed),
            slow_consumers: st.slow_consumers.load(Ordering::Relaxed),
            subscriptions: s.subscription_count(),
        }
    }

    /// The `/connz` document, connections ordered by client id.
    pub fn connz(&self, offset: usize, limit: usize) -> Connz {
        let now = SystemTime::now();
        let mut clients: Vec<_> = self.shared.clients.lock().values().cloned().collect();
        clients.sort_by_key(|c| c.cid);
        let total = clients.len();
        let connections: Vec<ConnInfo> = clients
            .iter()
            .skip(offset)
            .take(limit)
            .map(|c| {
                let meta = c.meta.lock().clone();
                let (out_msgs, out_bytes) = c.out_counters();
                ConnInfo {
                    cid: c.cid,
                    ip: c.peer.ip().to_string(),
                    port: c.peer.port(),
                    start: rfc3339(c.started),
                    uptime: uptime(now.duration_since(c.started).unwrap_or_default()),
                    pending_bytes: c.pending_bytes(),
                    in_msgs: c.in_msgs.load(Ordering::Relaxed),
                    out_msgs,
                    in_bytes: c.in_bytes.load(Ordering::Relaxed),
                    out_bytes,
                    subscriptions: c.subs.load(Ordering::Relaxed),
                    name: meta.name,
                    lang: meta.lang,
                    version: meta.version,
                    authorized_user: meta.user,
                }
            })
            .collect();
        Connz {
            server_id: self.shared.server_id.clone(),
            now: rfc3339(now),
            num_connections: connections.len(),
            total,
            offset,
            limit,
            connections,
        }
    }
}

/// Serves `/healthz`, `/varz` and `/connz` (with `offset` and `limit`
/// query parameters) on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, monitor: Monitor, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!("Starting http monitor on {addr}");
    }
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let monitor = monitor.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), handle(stream, monitor))
                        .await;
                });
            }
            Err(e) => {
                debug!("monitoring accept error: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, monitor: Monitor) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |name: &str| -> Option<usize> {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
    };
    let (status, body) = if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "{\"error\":\"method not allowed\"}".to_string(),
        )
    } else {
        match path.trim_end_matches('/') {
            "/healthz" => ("200 OK", "{\"status\":\"ok\"}".to_string()),
            "/varz" => ("200 OK", to_json(&monitor.varz())),
            "/connz" => {
                let offset = param("offset").unwrap_or(0);
                let limit = param("limit").unwrap_or(1024);
                ("200 OK", to_json(&monitor.connz(offset, limit)))
            }
            "" => (
                "200 OK",
                "{\"endpoints\":[\"/healthz\",\"/varz\",\"/connz\"]}".to_string(),
            ),
            _ => ("404 Not Found", "{\"error\":\"not found\"}".to_string()),
        }
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Resident set size of this process, from `/proc/self/status`.
pub fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// nats-server's uptime format: `1d2h3m4s`, leading zero units left out.
fn uptime(d: Duration) -> String {
    let mut secs = d.as_secs();
    let days = secs / 86_400;
    secs %= 86_400;
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (days, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m{s}s"),
        _ => format!("{days}d{h}h{m}m{s}s"),
    }
}

/// Civil date (UTC) of a Unix time: (year, month, day, hour, min, sec, nanos).
pub(crate) fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
        d.subsec_nanos(),
    )
}

fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ns) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ns:09}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000) + Duration::from_nanos(5);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.000000005Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(uptime(Duration::from_secs(5)), "5s");
        assert_eq!(uptime(Duration::from_secs(3725)), "1h2m5s");
        assert_eq!(uptime(Duration::from_secs(90_061)), "1d1h1m1s");
    }
}
