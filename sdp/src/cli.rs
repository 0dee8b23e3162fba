//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// SDP, the Sandbox Deployment Platform: deploy feature branches of Go
/// services and of the PHP API gateway into isolated sandboxes on company VMs.
#[derive(Debug, Parser)]
#[command(name = "sdp", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: embedded NATS broker (unless `nats_url` points
    /// at an external cluster), JSON API and dashboard.
    Server(ServerArgs),
    /// Run an agent (micro, gateway or infra, as its config says) on a VM:
    /// it runs git, go build and Docker for the control plane.
    Agent(AgentArgs),
    /// Run the NATS-compatible broker alone. Takes nats-server's common
    /// flags (-a, -p with -1 for a random port, -m, --user/--pass, --auth,
    /// -l, -P, --tls/--tlscert/--tlskey) and logs like nats-server.
    Broker(BrokerArgs),
    /// Everything in one process against the local Docker engine, with demo
    /// repositories and a demo Bitbucket login: a first look at SDP.
    Dev(DevArgs),
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TOML config file (see deploy/sdp-server.toml); `SDP_*` environment
    /// variables override it (e.g. `SDP_SERVER__LISTEN`).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// HTTP address of the API and dashboard.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Where the database, logs and keys live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// TOML config file (see deploy/sdp-agent-micro.toml and
    /// deploy/sdp-agent-gateway.toml); `SDP_*` environment variables override it.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
}

/// nats-server's own flags, so scripts and test harnesses written for
/// nats-server start `sdp broker` unchanged.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    #[command(flatten)]
    pub flags: sdp_broker::flags::BrokerFlags,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the demo keeps its database, repositories, worktrees and keys.
    #[arg(long, default_value = ".sdp-dev")]
    pub data_dir: PathBuf,
    /// HTTP address of the API and dashboard (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8700")]
    pub listen: SocketAddr,
    /// First host port handed to demo microservices (they get consecutive ports).
    #[arg(long, default_value_t = 9001)]
    pub micro_port: u16,
    /// First host port handed to sandbox gateways (one per sandbox).
    #[arg(long, default_value_t = 8080)]
    pub gateway_port: u16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn broker_accepts_nats_server_style_random_port() {
        let cli = Cli::parse_from(["sdp", "broker", "-a", "127.0.0.1", "-p", "-1"]);
        match cli.command {
            Command::Broker(b) => assert_eq!(b.flags.resolve().unwrap().listen.port(), 0),
            other => panic!("{other:?}"),
        }
    }
}
