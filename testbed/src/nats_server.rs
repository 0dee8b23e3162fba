//! Debian's `nats-server`, started for a test: the reference the embedded
//! broker is compared with, and the external bus of the scale-out setting.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::TestbedError;

/// Where Debian's package puts it.
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A free loopback port right now (for a listener the test binds itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// One running `nats-server`, killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    client_port: u16,
    monitor_port: u16,
}

impl NatsServer {
    /// Starts `nats-server -a 127.0.0.1 -p -1` plus `args` and a monitoring
    /// port. The server picks its own client port and the test reads it from
    /// the log: choosing a free port here and passing it on races with other
    /// tests doing the same.
    pub async fn start(args: &[&str]) -> Result<NatsServer, TestbedError> {
        Self::start_as(&[NATS_SERVER], args).await
    }

    /// [`NatsServer::start`] with another program in nats-server's place
    /// (`command` is the program and its leading arguments, e.g. `sdp
    /// broker`): what a harness built around nats-server does when handed a
    /// drop-in.
    pub async fn start_as(command: &[&str], args: &[&str]) -> Result<NatsServer, TestbedError> {
        let (program, leading) = command
            .split_first()
            .ok_or_else(|| TestbedError::NatsServer("no program given".into()))?;
        let monitor_port = free_port();
        let mut child = Command::new(program)
            .args(leading)
            .args(["-a", "127.0.0.1", "-p", "-1"])
            .args(args)
            .args(["-m", &monitor_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(TestbedError::io(
                "starting nats-server (Debian package nats-server) or its stand-in",
            ))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| TestbedError::NatsServer("no stderr".into()))?;
        let mut lines = BufReader::new(stderr).lines();
        let mut client_port = None;
        let mut seen = String::new();
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                seen.push_str(&line);
                seen.push('\n');
                if let Some((_, addr)) = line.split_once("Listening for client connections on ") {
                    client_port = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok());
                }
                if line.contains("Server is ready") {
                    return true;
                }
            }
            false
        })
        .await;
        let client_port = match (ready, client_port) {
            (Ok(true), Some(port)) => port,
            _ => {
                return Err(TestbedError::NatsServer(format!(
                    "it never said it was ready:\n{seen}"
                )));
            }
        };
        // Keep draining its log so the pipe never fills and blocks it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(NatsServer {
            child,
            client_port,
            monitor_port,
        })
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// The HTTP monitoring port (`/varz`, `/connz`, `/routez`).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills it now (SIGKILL), as a crashed node.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
