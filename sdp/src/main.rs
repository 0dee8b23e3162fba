//! `sdp`: one binary for every part of the Sandbox Deployment Platform.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use sdp::cli::{Cli, Command};
use sdp::{config, dev, stack};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SDP_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        }
    });

    match cli.command {
        Command::Dev(args) => dev::run(args, shutdown).await,
        Command::Broker(args) => {
            let port = if args.port < 0 { 0 } else { args.port as u16 };
            let listener = TcpListener::bind((args.addr.as_str(), port))
                .await
                .with_context(|| format!("listening on {}:{}", args.addr, port))?;
            let broker = stack::start_broker(listener, shutdown).await?;
            broker.stopped().await;
            Ok(())
        }
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
                    control: server.control_config(),
                    agents: Vec::new(),
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
            let agent =
                stack::start_agent(&section.nats_url, section.agent_config(), shutdown).await?;
            agent.stopped().await;
            Ok(())
        }
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}
