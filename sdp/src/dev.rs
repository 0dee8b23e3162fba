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
    eprintln!(
        "sdp dev: checking the gateway image (the first build on a machine takes a few minutes) ..."
    );
    let gateway_image = sdp_testbed::gateway_image()
        .await
        .context("building the gateway image")?;
    // Sandbox gateways run in containers: they reach the sandbox services
    // published on this host through the Docker bridge's address, never
    // through loopback (which is the container's own).
    let bridge_ip = docker_host_ip()
        .await
        .context("finding the Docker bridge's address")?;

    let demo_dir = data_dir.join("demo");
    let agents_dir = data_dir.join("agents");
    // Both agents' worktrees: they point into the demo clones made afresh
    // below.
    for dir in [
        &demo_dir,
        &agents_dir.join("micro").join("worktrees"),
        &agents_dir.join("gateway").join("worktrees"),
    ] {
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
    // What the control plane writes into each sandbox gateway's route map
    // (`http://{address}:{port}`): reachable from inside the gateway
    // container, so published on every interface, not only loopback.
    micro.address = bridge_ip;
    micro.publish_host = "0.0.0.0".to_owned();

    let mut gateway = AgentConfig::new(NodeKind::Gateway, agents_dir.join("gateway"));
    gateway.repositories = [("erangel".to_owned(), demo.gateway.clone())].into();
    gateway.work_root = agents_dir.join("gateway").join("worktrees");
    gateway.gateway_image = gateway_image;
    // Sandbox gateways are for this machine's browser and curl only.
    gateway.address = "127.0.0.1".to_owned();
    gateway.publish_host = "127.0.0.1".to_owned();

    let mut control = ControlConfig::new(data_dir.join("control"));
    control.micro_ports = (args.micro_port, args.micro_port.saturating_add(998));
    control.gateway_ports = (args.gateway_port, args.gateway_port.saturating_add(919));

    let http = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let broker = TcpListener::bind(("127.0.0.1", 0)).await?;
    // The demo runs the bus as production should: every part with its own
    // user, agents limited to their own commands, and an ops user that may
    // only tap progress, presence and audit.
    let ops_password = crate::stack::random_password();
    let stack = Stack::start(
        StackConfig {
            http,
            broker: Some(broker),
            nats_url: None,
            nats_credential: None,
            control,
            agents: vec![micro, gateway],
            bus_users: Some(crate::stack::BusUsers {
                agents: Vec::new(),
                ops: Some(crate::bus_permissions::Credential::new(
                    "ops",
                    ops_password.clone(),
                )),
            }),
        },
        shutdown.clone(),
    )
    .await?;

    println!(
        "{}",
        banner(
            &stack.base_url(),
            &format!(
                "{}   (tap it: nats sub --user ops --password {ops_password} 'sdp.deploy.>')",
                stack.nats_url
            ),
            &password,
            &data_dir,
            args.gateway_port
        )
    );
    shutdown.cancelled().await;
    eprintln!("sdp dev: stopping ...");
    stack.stop().await;
    drop(demo);
    Ok(())
}

/// The address containers on Docker's bridge networks reach this host on:
/// the default bridge's gateway (docker0), from `docker network inspect`,
/// else from docker0 itself.
pub async fn docker_host_ip() -> anyhow::Result<String> {
    let inspect = tokio::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
        ])
        .output()
        .await;
    if let Ok(out) = inspect
        && out.status.success()
        && let Some(ip) = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find(|w| w.parse::<std::net::Ipv4Addr>().is_ok())
    {
        return Ok(ip.to_owned());
    }
    let out = tokio::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .await
        .context("running ip addr show docker0")?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .context("neither the bridge network nor docker0 has an IPv4 address")
}

fn banner(base: &str, nats: &str, password: &str, data_dir: &Path, gateway_port: u16) -> String {
    let data = data_dir.display();
    let login = format!(r#"{{"username":"{DEMO_USER}","password":"{password}"}}"#);
    let sandbox = r#"{"name":"demo","gateway":{"branch":"main"},"services":{"account":{"branch":"feature/login-error"},"payment":{"use_ocp":true}}}"#;
    let route = r#"{"mode":"ocp"}"#;
    [
        String::new(),
        "SDP is running in dev mode: broker, control plane, dashboard, a micro agent and a".into(),
        "gateway agent in one process, against the local Docker engine.".into(),
        String::new(),
        format!("    Dashboard:  {base}/"),
        format!("    Username:   {DEMO_USER}"),
        format!("    Password:   {password}"),
        format!("    NATS:       {nats}"),
        String::new(),
        "Demo repositories: account, payment, user (branches main, develop,".into(),
        "feature/login-error) and the erangel gateway, served by a local Bitbucket".into(),
        "stand-in that accepts only the login above.".into(),
        String::new(),
        "Try the API:".into(),
        "    H='content-type: application/json'".into(),
        format!("    curl -c /tmp/sdp.jar -H \"$H\" -d '{login}' {base}/api/v1/session"),
        format!("    curl -b /tmp/sdp.jar -H \"$H\" -d '{sandbox}' {base}/api/v1/sandboxes"),
        format!("    curl -b /tmp/sdp.jar -X POST {base}/api/v1/sandboxes/demo/deploy"),
        format!("    curl -b /tmp/sdp.jar {base}/api/v1/sandboxes/demo        # status, gateway_url"),
        format!(
            "    curl http://127.0.0.1:{gateway_port}/erangel/account/hello   # the first sandbox's gateway_url"
        ),
        format!("    curl -b /tmp/sdp.jar {base}/api/v1/sandboxes/demo/routes"),
        format!(
            "    curl -b /tmp/sdp.jar -X PUT -H \"$H\" -d '{route}' {base}/api/v1/sandboxes/demo/routes/account"
        ),
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
            8080,
        );
        assert!(text.contains("http://127.0.0.1:1/"));
        assert!(text.contains("Username:   demo"));
        assert!(text.contains("Password:   pw"));
        // The sandbox exists before it is deployed, through the current API.
        let create = text.find("/api/v1/sandboxes\n").expect("creates a sandbox");
        let deploy = text
            .find("/api/v1/sandboxes/demo/deploy")
            .expect("deploys it");
        assert!(create < deploy, "{text}");
        assert!(!text.contains("/api/v1/deployments"), "{text}");
        assert!(text.contains("http://127.0.0.1:8080/erangel/account/"));
    }

    #[test]
    fn passwords_differ() {
        assert_ne!(random_password(), random_password());
        assert_eq!(random_password().len(), 20);
    }
}
