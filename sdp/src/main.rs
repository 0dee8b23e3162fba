//! `sdp`: one binary for every part of the Sandbox Deployment Platform.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use sdp::cli::{Cli, Command};
use sdp::{config, dev, stack};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    // The broker's runtime for every subcommand: `sdp server` and `sdp dev`
    // embed the broker too.
    sdp_broker::runtime()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let command = match Cli::parse().command {
        Command::Broker(args) => {
            // The broker alone logs like nats-server, to the -l file or stderr.
            let resolved = args.flags.resolve()?;
            let _log = resolved.init_logging()?;
            sdp_broker::flags::run(resolved, shutdown_on_ctrl_c()).await?;
            return Ok(());
        }
        other => other,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SDP_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let shutdown = shutdown_on_ctrl_c();

    match command {
        Command::Dev(args) => dev::run(args, shutdown).await,
        Command::Broker(_) => Ok(()),
        Command::Server(args) => {
            let file = config::load(args.config.as_deref())?;
            let mut server = file.server;
            if let Some(listen) = args.listen {
                server.listen = listen;
            }
            if let Some(dir) = args.data_dir {
                server.data_dir = dir;
            }
            let broker = match &server.nats_url {
                Some(_) => None,
                None => Some(bind(server.broker_listen).await?),
            };
            let stack = stack::Stack::start(
                stack::StackConfig {
                    http: bind(server.listen).await?,
                    broker,
                    nats_url: server.nats_url.clone(),
                    nats_credential: server.nats_credential(),
                    control: server.control_config(),
                    agents: Vec::new(),
                    bus_users: server.bus.as_ref().map(config::BusSection::users),
                },
                shutdown.clone(),
            )
            .await?;
            tracing::info!(url = %stack.base_url(), nats = %stack.nats_url, "SDP server ready");
            shutdown.cancelled().await;
            stack.stop().await;
            Ok(())
        }
        Command::Agent(args) => {
            let file = config::load(args.config.as_deref())?;
            let section = file
                .agent
                .context("the config has no [agent] section (see deploy/sdp-agent-micro.toml)")?;
            let config = section.agent_config();
            let credential = section
                .nats_password
                .as_ref()
                .map(|pw| sdp::bus_permissions::Credential::new(config.node.clone(), pw.clone()));
            let agent =
                stack::start_agent_as(&section.nats_url, config, credential.as_ref(), shutdown)
                    .await?;
            agent.stopped().await;
            Ok(())
        }
    }
}

/// A token cancelled by Ctrl-C or SIGTERM: every part drains and stops.
fn shutdown_on_ctrl_c() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                token.cancel();
                return;
            }
        }
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    });
    shutdown
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}
