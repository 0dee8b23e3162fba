//! The tokio edge: the listener, the shared server state and the handle
//! returned to the embedding application.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rand::Rng;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::auth::Authorization;
use crate::connection::{self, Outbound, Subscription};
use crate::error::BrokerError;
use crate::monitoring::Monitor;
use crate::parser::{DEFAULT_MAX_CONTROL_LINE, DEFAULT_MAX_PAYLOAD, ParserLimits};
use crate::sublist::{Sublist, SublistError, SublistResult};
use crate::tls::TlsConfig;

/// The runtime a process serving the broker should run on: at least four
/// worker threads, however few cores. A request and its reply hop between
/// tasks; with one worker per core, a worker preempted by another process
/// holds the next task for a whole scheduler slice, which showed as request-
/// reply p99 up to 11× nats-server's on a busy 2-core machine (and 0.7–0.8×
/// with four workers). Idle workers cost little: they park.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.max(4))
        .enable_all()
        .build()
}

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
    /// Most client connections held at once; 0 means no limit (default
    /// 64K, like nats-server).
    pub max_connections: usize,
    /// Who may connect and what they may do (default: anyone, anything).
    pub authorization: Authorization,
    /// Time a client has to send a valid CONNECT when authentication is
    /// required (default 2 s).
    pub auth_timeout: Duration,
    /// TLS for client connections (default none). As in nats-server 2.9,
    /// INFO is sent in clear with `tls_required`, then the client starts
    /// the handshake.
    pub tls: Option<TlsConfig>,
    /// Time allowed for the TLS handshake (default 2 s).
    pub tls_timeout: Duration,
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
            max_connections: 64 * 1024,
            authorization: Authorization::None,
            auth_timeout: Duration::from_secs(2),
            tls: None,
            tls_timeout: Duration::from_secs(2),
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
        if self.auth_timeout.is_zero() || self.tls_timeout.is_zero() {
            return bad("auth_timeout and tls_timeout must be positive");
        }
        self.authorization.validate()
    }

    pub(crate) fn parser_limits(&self) -> ParserLimits {
        ParserLimits {
            max_control_line: self.max_control_line,
            max_payload: self.max_payload,
        }
    }
}

/// The INFO message, with nats-server's field names and order.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerInfo<'a> {
    pub server_id: &'a str,
    pub server_name: &'a str,
    pub version: &'a str,
    pub proto: u8,
    pub host: &'a str,
    pub port: u16,
    pub headers: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auth_required: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_required: bool,
    pub max_payload: usize,
    pub client_id: u64,
    pub client_ip: String,
}

/// Server-wide counters, with nats-server's /varz meaning.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub in_msgs: AtomicU64,
    pub out_msgs: AtomicU64,
    pub in_bytes: AtomicU64,
    pub out_bytes: AtomicU64,
    pub connections: AtomicUsize,
    pub total_connections: AtomicU64,
    pub slow_consumers: AtomicU64,
}

/// State shared by every connection of one broker.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub server_id: String,
    pub host: String,
    pub port: u16,
    pub started: SystemTime,
    sublist: RwLock<Sublist<Subscription>>,
    /// Bumped on every subscription change; connections cache lookups
    /// made under the same generation.
    generation: AtomicU64,
    next_client_id: AtomicU64,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub clients: Mutex<HashMap<u64, Arc<Outbound>>>,
    pub stats: Stats,
}

impl Shared {
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn insert_sub(
        &self,
        subject: &[u8],
        queue: Option<&[u8]>,
        sub: Arc<Subscription>,
    ) -> Result<(), SublistError> {
        let mut sl = self.sublist.write();
        sl.insert(subject, queue, sub)?;
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    pub fn remove_sub(&self, subject: &[u8], queue: Option<&[u8]>, sub: &Arc<Subscription>) {
        let mut sl = self.sublist.write();
        if sl.remove(subject, queue, sub) {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The matching subscriptions and the generation they belong to.
    pub fn match_subject(&self, subject: &[u8]) -> (SublistResult<Subscription>, u64) {
        let sl = self.sublist.read();
        let generation = self.generation.load(Ordering::Acquire);
        (sl.matches(subject), generation)
    }

    pub fn subscription_count(&self) -> usize {
        self.sublist.read().len()
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
            started: SystemTime::now(),
            sublist: RwLock::new(Sublist::new()),
            generation: AtomicU64::new(0),
            next_client_id: AtomicU64::new(0),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            clients: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        });
        info!(
            server_id = %shared.server_id,
            server_name = %shared.config.server_name,
            version = SERVER_VERSION,
            "Starting NATS-compatible broker"
        );
        if shared.config.authorization.is_required() {
            info!("Authentication required for client connections");
        }
        if shared.config.tls.is_some() {
            info!("TLS required for client connections");
        }
        info!("Listening for client connections on {local_addr}");
        info!("Server is ready");
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
                shared
                    .tracker
                    .spawn(connection::serve(stream, peer, shared.clone()));
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
        self.shared.subscription_count()
    }

    /// Number of client connections currently open.
    pub fn connection_count(&self) -> usize {
        self.shared.stats.connections.load(Ordering::Relaxed)
    }

    /// A view of the broker's counters and connections for monitoring
    /// (see [`crate::monitoring::serve`]).
    pub fn monitor(&self) -> Monitor {
        Monitor::new(self.shared.clone())
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
        info!("Server Exiting..");
    }
}
