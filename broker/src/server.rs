//! The tokio edge: the listener, the shared server state and the handle
//! returned to the embedding application.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::connection::{self, Subscription};
use crate::error::BrokerError;
use crate::parser::{DEFAULT_MAX_CONTROL_LINE, DEFAULT_MAX_PAYLOAD, ParserLimits};
use crate::sublist::Sublist;

/// The nats-server version we announce in INFO.
///
/// Clients gate features on it (headers and no-responders need 2.2+), so we
/// claim the 2.10 protocol level whose client-facing subset we implement.
pub const SERVER_VERSION: &str = "2.10.0";

/// Broker settings. `Default` gives nats-server's defaults.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Name announced in INFO (`server_name`).
    pub server_name: String,
    /// Largest message accepted, headers included (default 1 MiB).
    pub max_payload: usize,
    /// Longest control line accepted (default 4096).
    pub max_control_line: usize,
    /// How often the server PINGs an idle client (default 2 minutes).
    pub ping_interval: Duration,
    /// Unanswered server PINGs after which the connection is closed as
    /// stale (default 2).
    pub max_pings_out: u32,
    /// How long one write to a client may take before it is dropped as a
    /// slow consumer (default 10 s).
    pub write_deadline: Duration,
    /// Bytes queued for one client after which it is dropped as a slow
    /// consumer (default 64 MiB).
    pub max_pending: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            server_name: "sdp-broker".to_string(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_control_line: DEFAULT_MAX_CONTROL_LINE,
            ping_interval: Duration::from_secs(120),
            max_pings_out: 2,
            write_deadline: Duration::from_secs(10),
            max_pending: 64 * 1024 * 1024,
        }
    }
}

impl BrokerConfig {
    fn validate(&self) -> Result<(), BrokerError> {
        let bad = |m: &str| Err(BrokerError::InvalidConfig(m.to_string()));
        if self.max_payload == 0 {
            return bad("max_payload must be positive");
        }
        // Below this not even a CONNECT from a stock client fits.
        if self.max_control_line < 256 {
            return bad("max_control_line must be at least 256");
        }
        if self.ping_interval.is_zero() {
            return bad("ping_interval must be positive");
        }
        if self.write_deadline.is_zero() {
            return bad("write_deadline must be positive");
        }
        if self.max_pending < self.max_payload {
            return bad("max_pending must be at least max_payload");
        }
        Ok(())
    }

    pub(crate) fn parser_limits(&self) -> ParserLimits {
        ParserLimits {
            max_control_line: self.max_control_line,
            max_payload: self.max_payload,
        }
    }
}

/// The INFO message, with nats-server's field names.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerInfo<'a> {
    pub server_id: &'a str,
    pub server_name: &'a str,
    pub version: &'a str,
    pub proto: u8,
    pub host: &'a str,
    pub port: u16,
    pub headers: bool,
    pub max_payload: usize,
    pub client_id: u64,
    pub client_ip: String,
}

/// State shared by every connection of one broker.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub server_id: String,
    pub host: String,
    pub port: u16,
    sublist: RwLock<Sublist<Subscription>>,
    next_client_id: AtomicU64,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl Shared {
    /// A panic while holding the lock cannot leave the trie half-updated in
    /// a way that matters more than refusing all traffic, so poisoning is
    /// ignored.
    pub fn read_sublist(&self) -> RwLockReadGuard<'_, Sublist<Subscription>> {
        self.sublist.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write_sublist(&self) -> RwLockWriteGuard<'_, Sublist<Subscription>> {
        self.sublist.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A server id shaped like nats-server's (an NKey-style 56-character
/// base32 string starting with `N`), so tools that display it look normal.
fn generate_server_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::thread_rng();
    std::iter::once('N')
        .chain((0..55).map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())])))
        .collect()
}

/// Entry point of the embedded broker.
#[derive(Debug)]
pub struct Broker;

impl Broker {
    /// Starts serving on `listener` until `shutdown` is cancelled.
    ///
    /// Taking a bound listener (rather than an address) lets tests bind port
    /// 0 and lets the caller decide on socket options.
    pub async fn start(
        listener: TcpListener,
        config: BrokerConfig,
        shutdown: CancellationToken,
    ) -> Result<BrokerHandle, BrokerError> {
        config.validate()?;
        let local_addr = listener.local_addr().map_err(|source| BrokerError::Io {
            context: "reading the listener address",
            source,
        })?;
        let tracker = TaskTracker::new();
        let shared = Arc::new(Shared {
            server_id: generate_server_id(),
            host: local_addr.ip().to_string(),
            port: local_addr.port(),
            config,
            sublist: RwLock::new(Sublist::new()),
            next_client_id: AtomicU64::new(0),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        });
        info!(
            server_id = %shared.server_id,
            server_name = %shared.config.server_name,
            version = SERVER_VERSION,
            "Starting NATS-compatible broker"
        );
        info!("Listening for client connections on {local_addr}");
        tracker.spawn(accept_loop(listener, shared.clone()));
        Ok(BrokerHandle {
            local_addr,
            shutdown,
            tracker,
            shared,
        })
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Small frames (PONG, +OK, requests) must not wait for Nagle.
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(%peer, "cannot set TCP_NODELAY: {e}");
                }
                connection::spawn(stream, peer, shared.clone());
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of
                // spinning, the condition is usually transient.
                warn!("Error accepting client connection: {e}");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
    debug!("Accept loop stopped");
}

/// A running broker.
#[derive(Debug)]
pub struct BrokerHandle {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    shared: Arc<Shared>,
}

impl BrokerHandle {
    /// The address the broker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A URL clients can connect to, e.g. `nats://127.0.0.1:4222`; an
    /// unspecified listen address is replaced by loopback.
    pub fn client_url(&self) -> String {
        let ip = match self.local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("nats://{}", SocketAddr::new(ip, self.local_addr.port()))
    }

    /// The server id announced in INFO.
    pub fn server_id(&self) -> &str {
        &self.shared.server_id
    }

    /// Number of subscriptions currently held.
    pub fn subscription_count(&self) -> usize {
        self.shared.read_sublist().len()
    }

    /// Cancels the shutdown token given to [`Broker::start`].
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the accept loop and every connection task have ended.
    /// Returns only after the shutdown token was cancelled.
    pub async fn stopped(self) {
        self.shutdown.cancelled().await;
        self.tracker.close();
        self.tracker.wait().await;
        info!(server_id = %self.shared.server_id, "Server Exiting..");
    }
}
