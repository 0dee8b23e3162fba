//! nats-server's common command line flags, so tooling that starts
//! nats-server can start this broker instead.
//!
//! [`BrokerFlags`] is a `clap::Args` to `#[command(flatten)]` into a
//! command; [`BrokerFlags::resolve`] turns it into the bind address, a
//! [`BrokerConfig`], the monitoring address and the pid/log files, and
//! [`run`] does everything nats-server does with them:
//!
//! ```no_run
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     broker: sdp_broker::flags::BrokerFlags,
//! }
//!
//! # async fn demo() -> Result<(), sdp_broker::BrokerError> {
//! let cli = Cli::parse_from(["sdp", "-p", "-1", "-m", "8222", "--user", "u", "--pass", "p"]);
//! let resolved = cli.broker.resolve()?;
//! let _log_guard = resolved.init_logging()?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! sdp_broker::flags::run(resolved, shutdown).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Differences from nats-server: Go's flag package also accepts single-dash
//! long names (`-port`), clap does not; `-c` (configuration files) is not
//! supported.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::auth::{Authorization, User};
use crate::error::BrokerError;
use crate::server::{Broker, BrokerConfig};
use crate::tls::TlsConfig;

/// nats-server's default client port.
pub const DEFAULT_PORT: u16 = 4222;

/// nats-server's common flags.
#[derive(Debug, Clone, Default, Args)]
pub struct BrokerFlags {
    /// Bind to host address (default: 0.0.0.0)
    #[arg(short = 'a', long = "addr", visible_alias = "net", value_name = "HOST")]
    pub addr: Option<String>,
    /// Use port for clients (default: 4222; -1 for a random port)
    #[arg(
        short = 'p',
        long = "port",
        value_name = "PORT",
        allow_negative_numbers = true
    )]
    pub port: Option<i32>,
    /// Server name (default: the server id)
    #[arg(
        short = 'n',
        long = "server_name",
        visible_alias = "name",
        value_name = "NAME"
    )]
    pub server_name: Option<String>,
    /// Use port for HTTP monitoring (-1 for a random port)
    #[arg(
        short = 'm',
        long = "http_port",
        value_name = "PORT",
        allow_negative_numbers = true
    )]
    pub http_port: Option<i32>,
    /// File to store the PID
    #[arg(short = 'P', long = "pid", value_name = "FILE")]
    pub pid: Option<PathBuf>,
    /// File to redirect log output
    #[arg(short = 'l', long = "log", value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Enable debugging output
    #[arg(short = 'D', long = "debug")]
    pub debug: bool,
    /// Trace the raw protocol
    #[arg(short = 'V', long = "trace")]
    pub trace: bool,
    /// User required for connections
    #[arg(long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Password required for connections (plain or bcrypt)
    #[arg(long = "pass", value_name = "PASSWORD")]
    pub pass: Option<String>,
    /// Authorization token required for connections
    #[arg(long = "auth", value_name = "TOKEN")]
    pub auth: Option<String>,
    /// Enable TLS, do not verify clients
    #[arg(long = "tls")]
    pub tls: bool,
    /// Server certificate file
    #[arg(long = "tlscert", value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// Private key for server certificate
    #[arg(long = "tlskey", value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
}

/// How much to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Notices, warnings and errors.
    Info,
    /// `-D`.
    Debug,
    /// `-V`: every protocol operation.
    Trace,
}

/// What the flags mean.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Where clients connect (port 0: a random port).
    pub listen: SocketAddr,
    /// Broker settings.
    pub config: BrokerConfig,
    /// Where the HTTP monitoring listens, if anywhere.
    pub monitor: Option<SocketAddr>,
    /// File to write the process id to.
    pub pid_file: Option<PathBuf>,
    /// File to log to (instead of standard error).
    pub log_file: Option<PathBuf>,
    /// Verbosity.
    pub log_level: LogLevel,
}

fn port_of(p: i32, what: &str) -> Result<u16, BrokerError> {
    match p {
        -1 => Ok(0),
        0..=65535 => Ok(p as u16),
        _ => Err(BrokerError::InvalidConfig(format!("invalid {what} {p}"))),
    }
}

fn resolve_host(host: &str, port: u16) -> Result<SocketAddr, BrokerError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| BrokerError::InvalidConfig(format!("cannot resolve host {host:?}")))
}

impl BrokerFlags {
    /// Checks the flags and turns them into addresses and a configuration.
    pub fn resolve(&self) -> Result<Resolved, BrokerError> {
        let bad = |m: &str| Err(BrokerError::InvalidConfig(m.to_string()));
        let host = self.addr.as_deref().unwrap_or("0.0.0.0");
        let port = port_of(self.port.unwrap_or(i32::from(DEFAULT_PORT)), "port")?;
        let listen = resolve_host(host, port)?;
        let monitor = match self.http_port {
            None | Some(0) => None,
            Some(p) => Some(resolve_host(host, port_of(p, "http_port")?)?),
        };
        let mut config = BrokerConfig::default();
        if let Some(name) = &self.server_name {
            config.server_name = name.clone();
        }
        config.authorization = match (&self.user, &self.pass, &self.auth) {
            (None, None, None) => Authorization::None,
            (Some(u), Some(p), None) => Authorization::Users(vec![User::new(u, p)]),
            (None, None, Some(t)) => Authorization::Token(t.clone()),
            (Some(_), None, _) | (None, Some(_), _) => return bad("--user and --pass go together"),
            (Some(_), Some(_), Some(_)) => {
                return bad("--auth cannot be combined with --user/--pass");
            }
        };
        let wants_tls = self.tls || self.tlscert.is_some() || self.tlskey.is_some();
        if wants_tls {
            match (&self.tlscert, &self.tlskey) {
                (Some(c), Some(k)) => config.tls = Some(TlsConfig::from_pem_files(c, k)?),
                _ => return bad("TLS needs both --tlscert and --tlskey"),
            }
        }
        let log_level = if self.trace {
            LogLevel::Trace
        } else if self.debug {
            LogLevel::Debug
        } else {
            LogLevel::Info
        };
        Ok(Resolved {
            listen,
            config,
            monitor,
            pid_file: self.pid.clone(),
            log_file: self.log.clone(),
            log_level,
        })
    }
}

/// Keeps the log file open; returned by [`Resolved::init_logging`].
#[derive(Debug)]
pub struct LogGuard {
    _private: (),
}

impl Resolved {
    /// Installs a global `tracing` subscriber logging this crate in
    /// nats-server's plain line format (`[pid] 2026/01/02 15:04:05.000000
    /// [INF] message`) to the `-l` file, or to standard error. Fails if a
    /// global subscriber is already set; an application with its own
    /// logging can use [`NatsLogFormat`] in its own subscriber instead.
    pub fn init_logging(&self) -> Result<LogGuard, BrokerError> {
        let level = match self.log_level {
            LogLevel::Info => Level::INFO,
            LogLevel::Debug => Level::DEBUG,
            LogLevel::Trace => Level::TRACE,
        };
        // Colour only for a person at a terminal: log files and the pipes
        // of harnesses that read "Server is ready" get plain text.
        let ansi = self.log_file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let builder = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .event_format(NatsLogFormat)
            .with_max_level(level);
        let result = match &self.log_file {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| BrokerError::Io {
                        context: "opening the log file",
                        source,
                    })?;
                let file = Arc::new(Mutex::new(file));
                builder
                    .with_writer(move || SharedFile(file.clone()))
                    .try_init()
            }
            None => builder.with_writer(std::io::stderr).try_init(),
        };
        result.map_err(|e| BrokerError::InvalidConfig(format!("logging: {e}")))?;
        Ok(LogGuard { _private: () })
    }
}

struct SharedFile(Arc<Mutex<std::fs::File>>);

impl std::io::Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// nats-server's log line format for `tracing` events.
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsLogFormat;

impl<S, N> FormatEvent<S, N> for NatsLogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "ERR",
            Level::WARN => "WRN",
            Level::INFO => "INF",
            Level::DEBUG => "DBG",
            Level::TRACE => "TRC",
        };
        write!(
            writer,
            "[{}] {} [{level}] ",
            std::process::id(),
            log_time(SystemTime::now())
        )?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// `2026/01/02 15:04:05.000000`, UTC.
fn log_time(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ns) = crate::monitoring::civil(t);
    let mut out = String::with_capacity(26);
    let _ = write!(
        out,
        "{y:04}/{mo:02}/{d:02} {h:02}:{mi:02}:{s:02}.{:06}",
        ns / 1000
    );
    out
}

/// Binds with a deep accept queue (like Go's listeners, which use the
/// kernel's `somaxconn`) so bursts of thousands of connections are not
/// dropped.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Runs the broker as nats-server would with these flags: writes the pid
/// file, binds the client and monitoring listeners, serves until
/// `shutdown` is cancelled, then drains and removes the pid file.
pub async fn run(resolved: Resolved, shutdown: CancellationToken) -> Result<(), BrokerError> {
    if let Some(pid_file) = &resolved.pid_file {
        std::fs::File::create(pid_file)
            .and_then(|mut f| write!(f, "{}", std::process::id()))
            .map_err(|source| BrokerError::Io {
                context: "writing the pid file",
                source,
            })?;
    }
    let listener = bind(resolved.listen).map_err(|source| BrokerError::Io {
        context: "binding the client listener",
        source,
    })?;
    let monitor_listener = match resolved.monitor {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| BrokerError::Io {
                    context: "binding the monitoring listener",
                    source,
                })?,
        ),
        None => None,
    };
    let broker = Broker::start(listener, resolved.config, shutdown.clone()).await?;
    if let Some(l) = monitor_listener {
        tokio::spawn(crate::monitoring::serve(
            l,
            broker.monitor(),
            shutdown.clone(),
        ));
    }
    broker.stopped().await;
    if let Some(pid_file) = &resolved.pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        flags: BrokerFlags,
    }

    fn parse(args: &[&str]) -> Result<Resolved, BrokerError> {
        let mut argv = vec!["nats-server"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .expect("flags parse")
            .flags
            .resolve()
    }

    #[test]
    fn defaults_like_nats_server() {
        let r = parse(&[]).unwrap();
        assert_eq!(r.listen, "0.0.0.0:4222".parse().unwrap());
        assert!(r.monitor.is_none());
        assert!(!r.config.authorization.is_required());
        assert_eq!(r.log_level, LogLevel::Info);
    }

    #[test]
    fn common_flags() {
        let r = parse(&[
            "-a",
            "127.0.0.1",
            "-p",
            "-1",
            "-m",
            "8222",
            "--user",
            "u",
            "--pass",
            "p",
            "-l",
            "/tmp/x.log",
            "-P",
            "/tmp/x.pid",
            "-n",
            "edge",
            "-DV",
        ])
        .unwrap();
        assert_eq!(r.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(r.monitor, Some("127.0.0.1:8222".parse().unwrap()));
        assert!(r.config.authorization.is_required());
        assert_eq!(r.config.server_name, "edge");
        assert_eq!(
            r.log_file.as_deref(),
            Some(std::path::Path::new("/tmp/x.log"))
        );
        assert_eq!(
            r.pid_file.as_deref(),
            Some(std::path::Path::new("/tmp/x.pid"))
        );
        assert_eq!(r.log_level, LogLevel::Trace);
        let r = parse(&["--port=4333", "--auth", "tok", "--net", "localhost"]).unwrap();
        assert_eq!(r.listen.port(), 4333);
        assert!(matches!(r.config.authorization, Authorization::Token(_)));
    }

    #[test]
    fn inconsistent_flags_refused() {
        assert!(parse(&["--user", "u"]).is_err());
        assert!(parse(&["--user", "u", "--pass", "p", "--auth", "t"]).is_err());
        assert!(parse(&["--tls"]).is_err());
        assert!(parse(&["--tlscert", "/nonexistent", "--tlskey", "/nonexistent"]).is_err());
        assert!(parse(&["-p", "70000"]).is_err());
    }

    #[tokio::test]
    async fn run_writes_and_removes_pid_file() {
        let dir = std::env::temp_dir().join(format!("sdp-broker-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid = dir.join("broker.pid");
        let pid_arg = pid.display().to_string();
        let r = parse(&["-a", "127.0.0.1", "-p", "-1", "-m", "-1", "-P", &pid_arg]).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(r, shutdown.clone()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !pid.exists() {
            assert!(std::time::Instant::now() < deadline, "pid file written");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            std::fs::read_to_string(&pid).unwrap(),
            std::process::id().to_string()
        );
        shutdown.cancel();
        task.await.unwrap().unwrap();
        assert!(!pid.exists(), "pid file removed on exit");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn log_lines_like_nats_server() {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(NatsLogFormat)
            .with_writer(move || SinkWriter(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("Listening for client connections on 127.0.0.1:4222");
            tracing::error!("maximum connections exceeded");
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let prefix = format!("[{}] ", std::process::id());
        assert!(lines[0].starts_with(&prefix), "{text}");
        assert!(
            lines[0].ends_with(" [INF] Listening for client connections on 127.0.0.1:4222"),
            "{text}"
        );
        assert!(
            lines[1].ends_with(" [ERR] maximum connections exceeded"),
            "{text}"
        );
        // [pid] YYYY/MM/DD HH:MM:SS.micros [INF] ...
        let date = &lines[0][prefix.len()..prefix.len() + 26];
        assert_eq!(date.as_bytes()[4], b'/');
        assert_eq!(date.as_bytes()[19], b'.');
    }

    struct SinkWriter(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SinkWriter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_line_format() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_795_000_000_123_456);
        assert_eq!(log_time(t), "2026/11/18 11:06:40.123456");
    }
}
