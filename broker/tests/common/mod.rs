//! Shared by the differential tests: starting Debian's nats-server (the
//! oracle) and the embedded broker from one neutral configuration.

#![allow(dead_code)]

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sdp_broker::{
    Authorization, Broker, BrokerConfig, BrokerHandle, Permissions, ResponsePermission,
    SubjectPermission, User,
};
use tokio_util::sync::CancellationToken;

/// The nats-server binary: `$NATS_SERVER_BIN`, Debian's path, or `PATH`.
/// Missing is a failure, never a skip.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    for p in [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nats-server is required by the differential tests (apt-get install nats-server)");
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A user in the neutral configuration.
#[derive(Clone, Debug)]
pub struct UserSpec {
    pub name: &'static str,
    /// Plain or bcrypt; both servers get the same string.
    pub password: String,
    pub pub_allow: Option<Vec<&'static str>>,
    pub pub_deny: Vec<&'static str>,
    pub sub_allow: Option<Vec<&'static str>>,
    pub sub_deny: Vec<&'static str>,
    pub allow_responses: bool,
    pub restricted: bool,
}

impl UserSpec {
    pub fn new(name: &'static str, password: impl Into<String>) -> Self {
        UserSpec {
            name,
            password: password.into(),
            pub_allow: None,
            pub_deny: Vec::new(),
            sub_allow: None,
            sub_deny: Vec::new(),
            allow_responses: false,
            restricted: false,
        }
    }
}

/// Options both servers are started with.
#[derive(Clone, Debug, Default)]
pub struct Cfg {
    pub max_payload: Option<usize>,
    pub max_pending: Option<usize>,
    pub ping_interval_ms: Option<u64>,
    pub ping_max: Option<u32>,
    pub max_connections: Option<usize>,
    pub auth_timeout_ms: Option<u64>,
    pub write_deadline_ms: Option<u64>,
    pub token: Option<String>,
    pub users: Vec<UserSpec>,
    /// PEM files for TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Serve HTTP monitoring (on `monitor_port`).
    pub monitor_port: Option<u16>,
}

fn list(v: &[&str]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(", "))
}

impl Cfg {
    pub fn nats_conf(&self, port: u16) -> String {
        let mut c = format!("listen: \"127.0.0.1:{port}\"\n");
        if let Some(p) = self.monitor_port {
            c += &format!("http: \"127.0.0.1:{p}\"\n");
        }
        if let Some(v) = self.max_payload {
            c += &format!("max_payload: {v}\n");
        }
        if let Some(v) = self.max_pending {
            c += &format!("max_pending: {v}\n");
        }
        if let Some(v) = self.ping_interval_ms {
            c += &format!("ping_interval: \"{v}ms\"\n");
        }
        if let Some(v) = self.ping_max {
            c += &format!("ping_max: {v}\n");
        }
        if let Some(v) = self.max_connections {
            c += &format!("max_connections: {v}\n");
        }
        if let Some(v) = self.write_deadline_ms {
            c += &format!("write_deadline: \"{v}ms\"\n");
        }
        if let Some((cert, key)) = &self.tls {
            c += &format!(
                "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
                cert.display().to_string(),
                key.display().to_string()
            );
        }
        let timeout = self
            .auth_timeout_ms
            .map(|ms| format!("  timeout: {}\n", ms as f64 / 1000.0))
            .unwrap_or_default();
        if let Some(t) = &self.token {
            c += &format!("authorization {{\n  token: {t:?}\n{timeout}}}\n");
        } else if !self.users.is_empty() {
            c += &format!("authorization {{\n{timeout}  users = [\n");
            for u in &self.users {
                c += &format!("    {{user: {:?}, password: {:?}", u.name, u.password);
                if u.restricted {
                    let mut p = String::new();
                    p += "publish: {";
                    if let Some(a) = &u.pub_allow {
                        p += &format!("allow: {}, ", list(a));
                    }
                    p += &format!("deny: {}}}, subscribe: {{", list(&u.pub_deny));
                    if let Some(a) = &u.sub_allow {
                        p += &format!("allow: {}, ", list(a));
                    }
                    p += &format!("deny: {}}}", list(&u.sub_deny));
                    if u.allow_responses {
                        p += ", allow_responses: true";
                    }
                    c += &format!(", permissions: {{{p}}}");
                }
                c += "}\n";
            }
            c += "  ]\n}\n";
        }
        c
    }

    pub fn broker_config(&self) -> BrokerConfig {
        let mut b = BrokerConfig::default();
        if let Some(v) = self.max_payload {
            b.max_payload = v;
        }
        if let Some(v) = self.max_pending {
            b.max_pending = v;
        }
        if let Some(v) = self.ping_interval_ms {
            b.ping_interval = Duration::from_millis(v);
        }
        if let Some(v) = self.ping_max {
            b.max_pings_out = v;
        }
        if let Some(v) = self.max_connections {
            b.max_connections = v;
        }
        if let Some(v) = self.write_deadline_ms {
            b.write_deadline = Duration::from_millis(v);
        }
        if let Some(v) = self.auth_timeout_ms {
            b.auth_timeout = Duration::from_millis(v);
        }
        if let Some((cert, key)) = &self.tls {
            b.tls = Some(sdp_broker::TlsConfig::from_pem_files(cert, key).expect("tls config"));
        }
        if let Some(t) = &self.token {
            b.authorization = Authorization::Token(t.clone());
        } else if !self.users.is_empty() {
            b.authorization = Authorization::Users(
                self.users
                    .iter()
                    .map(|u| {
                        let user = User::new(u.name, u.password.clone());
                        if !u.restricted {
                            return user;
                        }
                        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
                        user.with_permissions(Permissions {
                            publish: SubjectPermission {
                                allow: u.pub_allow.as_deref().map(own),
                                deny: own(&u.pub_deny),
                            },
                            subscribe: SubjectPermission {
                                allow: u.sub_allow.as_deref().map(own),
                                deny: own(&u.sub_deny),
                            },
                            allow_responses: u.allow_responses.then(ResponsePermission::default),
                        })
                    })
                    .collect(),
            );
        }
        b
    }
}

/// A nats-server child process, killed on drop.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start(cfg: &Cfg) -> NatsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("nats.conf");
        std::fs::File::create(&conf)
            .and_then(|mut f| f.write_all(cfg.nats_conf(port).as_bytes()))
            .expect("write nats.conf");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let server = NatsServer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The embedded broker, stopped on drop.
pub struct Embedded {
    pub handle: BrokerHandle,
    shutdown: CancellationToken,
    /// The monitoring address, when started with `monitor_port`.
    pub monitor: Option<SocketAddr>,
}

impl Embedded {
    pub async fn start(cfg: &Cfg) -> Embedded {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let shutdown = CancellationToken::new();
        let handle = Broker::start(listener, cfg.broker_config(), shutdown.clone())
            .await
            .expect("start broker");
        let mut monitor = None;
        if cfg.monitor_port.is_some() {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind monitor");
            monitor = Some(l.local_addr().expect("addr"));
            tokio::spawn(sdp_broker::monitoring::serve(
                l,
                handle.monitor(),
                shutdown.clone(),
            ));
        }
        Embedded {
            handle,
            shutdown,
            monitor,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Both servers with the same configuration.
pub struct Pair {
    pub oracle: NatsServer,
    pub embedded: Embedded,
}

impl Pair {
    pub async fn start(cfg: &Cfg) -> Pair {
        Pair {
            oracle: NatsServer::start(cfg),
            embedded: Embedded::start(cfg).await,
        }
    }
}
