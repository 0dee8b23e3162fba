//! `sdp dev`: the whole platform in one process against the local Docker
//! engine, with demo repositories behind a demo Bitbucket, for a first look.
//!
//! Like `vault server -dev`, it prints where to go and how to log in. Each
//! start recreates the demo repositories and worktrees (so they never drift
//! from what the banner promises) and keeps the database (history).

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::Rng;
use sdp_agents::AgentConfig;
use sdp_contract::NodeKind;
use sdp_control::ControlConfig;
use sdp_testbed::Demo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::DevArgs;
use crate::stack::{Stack, StackConfig};

/// The demo login. The password is random per start and shown once.
pub const DEMO_USER: &str = "demo";

pub async fn run(args: DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = absolute(&args.data_dir)?;
    eprintln!("sdp dev: checking the local Docker engine and the runtime image ...");
    sdp_testbed::ensure_docker()
        .await
        .context("no Docker engine answers and starting one failed")?;
    let runtime_image = sdp_testbed::runtime_image()
        .await
        .context("building the runtime image")?;

    let demo_dir = data_dir.join("demo");
    let agents_dir = data_dir.join("agents");
    for dir in [&demo_dir, &agents_dir.join("micro").join("worktrees")] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
    }
    let password = random_password();
    let demo = Demo::create(&demo_dir, DEMO_USER, &password, shutdown.clone())
        .await
        .context("creating the demo repositories")?;

    let mut micro = AgentConfig::new(NodeKind::Micro, agents_dir.join("micro"));
    micro.repositories = demo.services.clone();
    micro.work_root = agents_dir.join("micro").join("worktrees");
    micro.runtime_image = runtime_image;
    micro.publish_host = "127.0.0.1".to_owned();

    let mut gateway = AgentConfig::new(NodeKind::Gateway, agents_dir.join("gateway"));
    gateway.repositories = [("erangel".to_owned(), demo.gateway.clone())].into();
    gateway.work_root = agents_dir.join("gateway").join("worktrees");
    gateway.publish_host = "127.0.0.1".to_owned();

    let mut control = ControlConfig::new(data_dir.join("control"));
    control.micro_ports = (args.micro_port, args.micro_port.saturating_add(998));

    let http = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let broker = TcpListener::bind(("127.0.0.1", 0)).await?;
    let stack = Stack::start(
        StackConfig {
            http,
            broker: Some(broker),
            nats_url: None,
            control,
            agents: vec![micro, gateway],
        },
        shutdown.clone(),
    )
    .await?;

    println!(
        "{}",
        banner(&stack.base_url(), &stack.nats_url, &password, &data_dir)
    );
    shutdown.cancelled().await;
    eprintln!("sdp dev: stopping ...");
    stack.stop().await;
    drop(demo);
    Ok(())
}

fn banner(base: &str, nats: &str, password: &str, data_dir: &Path) -> String {
    let data = data_dir.display();
    let login = format!(r#"{{"username":"{DEMO_USER}","password":"{password}"}}"#);
    let sandbox = r#"{"name":"demo","gateway":{"branch":"main"},"services":{"account":{"branch":"feature/login-error"}}}"#;
    let deploy = r#"{"sandbox":"demo","repository":"account","branch":"feature/login-error"}"#;
    [
        String::new(),
        "SDP is running in dev mode: broker, control plane, dashboard, a micro agent and a".into(),
        "gateway agent in one process, against the local Docker engine.".into(),
        String::new(),
        format!("    Dashboard:  {base}/"),
        format!("    Username:   {DEMO_USER}"),
        format!("    Password:   {password}"),
        format!("    NATS:       {nats}   (tap it: nats sub 'sdp.>')"),
        String::new(),
        "Demo repositories: account, payment, user (branches main, develop,".into(),
        "feature/login-error) and the erangel gateway, served by a local Bitbucket".into(),
        "stand-in that accepts only the login above.".into(),
        String::new(),
        "Try the API:".into(),
        "    H='content-type: application/json'".into(),
        format!("    curl -c /tmp/sdp.jar -H \"$H\" -d '{login}' {base}/api/v1/session"),
        format!("    curl -b /tmp/sdp.jar -H \"$H\" -d '{sandbox}' {base}/api/v1/sandboxes"),
        format!("    curl -b /tmp/sdp.jar -H \"$H\" -d '{deploy}' {base}/api/v1/deployments"),
        String::new(),
        format!("Data: {data}. Stop with Ctrl-C."),
    ]
    .join("\n")
}

fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    path.canonicalize()
        .with_context(|| format!("resolving {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_says_where_and_how_to_log_in() {
        let text = banner(
            "http://127.0.0.1:1",
            "nats://127.0.0.1:2",
            "pw",
            Path::new("/d"),
        );
        assert!(text.contains("http://127.0.0.1:1/"));
        assert!(text.contains("Username:   demo"));
        assert!(text.contains("Password:   pw"));
    }

    #[test]
    fn passwords_differ() {
        assert_ne!(random_password(), random_password());
        assert_eq!(random_password().len(), 20);
    }
}
