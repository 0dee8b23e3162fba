//! Whole gateway deployments on the real Docker engine and the real
//! Apache + mod_php gateway image: a sandbox gateway sends one service to
//! a sandbox container and the others to a stand-in OCP, routes switch
//! live, and bad `config.php` files or taken ports fail clearly.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use sdp_agents::{AgentConfig, NodeKind};
use sdp_contract::stages::GATEWAY;
use sdp_contract::subjects::AgentOp;
use sdp_contract::{
    ContainerInfo, DeployEnvironment, DeploymentState, EventKind, GatewayDeployRequest, LiveRoutes,
    Reply, RouteMode, RouteTarget, RoutesApplyRequest, RoutesRequest, ServiceOutcome,
    ServiceRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GATEWAY_IMAGE: &str = "sdp-gateway:bookworm";
const CONFIG_PHP: &str = "application/config/production/config.php";

/// Builds the testbed's gateway image unless it is there already.
fn ensure_gateway_image() {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/testbed/gateway-image.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(GATEWAY_IMAGE)
        .status()
        .unwrap();
    assert!(status.success(), "{} failed", script.display());
    *done = true;
}

/// The host as containers on any bridge network reach it: docker0's address.
fn host_ip() -> String {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .expect("docker0 has an IPv4 address")
}

/// A stand-in for OCP on the host: answers `ocp {method} {path}`.
async fn ocp_upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&seen);
                let first: Vec<&str> = head.lines().next().unwrap_or("").split(' ').collect();
                let body = format!("ocp {} {}\n", first[0], first.get(1).unwrap_or(&""));
                let _ = socket
                    .write_all(
                        format!(
                            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    port
}

async fn http_get(port: u16, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: sandbox\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_string(&mut body))
        .await
        .unwrap()
        .unwrap();
    body
}

fn config_php(ocp: &str, account: &str) -> String {
    format!(
        r#"<?php
defined('BASEPATH') OR exit('No direct script access allowed');
$config['base_url'] = '';
/* Service URLs. Not this one:
$config['_url']['account'] = 'http://decoy';
*/
$config['_url'] = array(
	'account' => {account},
	'payment'   =>  "{ocp}/ocp-payment", // settlement team
	'user' => '{ocp}/ocp-user',
);
$config['proxy_timeout'] = 10;
"#
    )
}

/// The sample gateway (testbed/samples/erangel) as a repository whose
/// OCP defaults point at the stand-in: branch `main`, branch `dynamic`
/// whose map the patcher cannot read (a concatenation), branch `composer`
/// with a composer.json.
struct GatewayRepo {
    _dir: tempfile::TempDir,
    clone: PathBuf,
}

impl GatewayRepo {
    fn new(ocp: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("erangel.git");
        let seed = dir.path().join("seed");
        let clone = dir.path().join("clones").join("erangel");
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testbed/samples/erangel");
        copy_dir(&sample, &seed);
        git(
            dir.path(),
            &["init", "--bare", "-q", origin.to_str().unwrap()],
        );
        git(&seed, &["init", "-q"]);
        let config = seed.join(CONFIG_PHP);
        std::fs::write(&config, config_php(ocp, &format!("'{ocp}/ocp-account'"))).unwrap();
        git(&seed, &["add", "-A"]);
        git(&seed, &["commit", "-q", "-m", "erangel"]);
        git(&seed, &["branch", "-M", "main"]);
        git(&seed, &["checkout", "-q", "-b", "dynamic", "main"]);
        std::fs::write(
            &config,
            format!(
                "<?php\ndefine('OCP', '{ocp}');\n{}",
                config_php(ocp, "OCP . '/ocp-account'").trim_start_matches("<?php\n")
            ),
        )
        .unwrap();
        git(&seed, &["commit", "-q", "-am", "dynamic"]);
        git(&seed, &["checkout", "-q", "-b", "composer", "main"]);
        std::fs::write(seed.join("composer.json"), "{\"require\": {}}\n").unwrap();
        git(&seed, &["add", "-A"]);
        git(&seed, &["commit", "-q", "-m", "composer"]);
        git(&seed, &["checkout", "-q", "-b", "feature/x", "main"]);
        std::fs::write(
            &config,
            config_php(ocp, &format!("'{ocp}/ocp-account'"))
                .replace("/ocp-payment", "/ocp-payment-v2"),
        )
        .unwrap();
        git(&seed, &["commit", "-q", "-am", "feature x"]);
        git(&seed, &["checkout", "-q", "main"]);
        git(
            &seed,
            &["remote", "add", "origin", origin.to_str().unwrap()],
        );
        git(
            &seed,
            &[
                "push",
                "-q",
                "origin",
                "main",
                "dynamic",
                "composer",
                "feature/x",
            ],
        );
        std::fs::create_dir_all(clone.parent().unwrap()).unwrap();
        git(
            dir.path(),
            &[
                "clone",
                "-q",
                origin.to_str().unwrap(),
                clone.to_str().unwrap(),
            ],
        );
        GatewayRepo { _dir: dir, clone }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn gateway_config(dir: &Path, repo: &GatewayRepo) -> AgentConfig {
    let mut config = AgentConfig::new(NodeKind::Gateway, dir.join("data"));
    config.work_root = dir.join("work");
    config.repositories = BTreeMap::from([("erangel".to_owned(), repo.clone.clone())]);
    config.gateway_image = GATEWAY_IMAGE.to_owned();
    config.publish_host = "127.0.0.1".to_owned();
    config.heartbeat_interval = Duration::from_millis(500);
    config.git_timeout = Duration::from_secs(30);
    config
}

async fn gateway_agent(nats: &NatsServer, repo: &GatewayRepo) -> TestAgent {
    ensure_gateway_image();
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config(dir.path(), repo);
    TestAgent::start(nats, config, dir).await
}

fn gateway_request(
    agent: &TestAgent,
    id: &str,
    sandbox: &str,
    branch: &str,
    port: u16,
    routes: &[(&str, RouteTarget)],
) -> GatewayDeployRequest {
    let mut deploy = agent.deploy_request(id, sandbox, branch, port);
    deploy.repository = "erangel".to_owned();
    GatewayDeployRequest {
        deploy,
        routes: routes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    }
}

fn reason_of(d: &Deployment) -> String {
    match d.final_state() {
        EventKind::State { reason, .. } => reason.clone().unwrap_or_default(),
        other => panic!("{other:?}"),
    }
}

fn is_running(d: &Deployment) -> bool {
    matches!(
        d.final_state(),
        EventKind::State {
            state: DeploymentState::Running,
            ..
        }
    )
}

#[tokio::test]
async fn a_sandbox_gateway_routes_to_the_sandbox_and_to_ocp_and_switches_back() {
    let nats = NatsServer::start();
    let host = host_ip();
    let ocp_port = ocp_upstream().await;
    let ocp = format!("http://{host}:{ocp_port}");
    let repo = GatewayRepo::new(&ocp);
    let sandbox = sandbox_name("gw");
    let _cleanup = SandboxCleanup(sandbox.clone());

    // The sandbox's account service, published where the gateway reaches it.
    ensure_runtime_image();
    let services = Repos::new();
    let micro_dir = tempfile::tempdir().unwrap();
    let mut micro_config = config(NodeKind::Micro, micro_dir.path(), &services);
    micro_config.publish_host = "0.0.0.0".to_owned();
    let micro = TestAgent::start(&nats, micro_config, micro_dir).await;
    let account_port = free_port();
    let mut account = micro.deploy_request("d-acct", &sandbox, "main", account_port);
    account.environment = Some(micro.seal(&DeployEnvironment {
        variables: BTreeMap::from([("GREETING".into(), "the sandbox account".into())]),
        ..Default::default()
    }));
    let d = micro.deploy(&account).await;
    assert!(is_running(&d), "{}", d.log_text());

    let gateway = gateway_agent(&nats, &repo).await;
    let port = free_port();
    let account_url = format!("http://{host}:{account_port}");
    let request = gateway_request(
        &gateway,
        "d-gw",
        &sandbox,
        "main",
        port,
        &[
            (
                "account",
                RouteTarget::Sandbox {
                    url: account_url.clone(),
                },
            ),
            ("payment", RouteTarget::Ocp),
        ],
    );
    let d = gateway.deploy_body("d-gw", &request).await;
    let mut expected = Vec::new();
    for stage in GATEWAY {
        expected.push(format!("started:{stage}"));
        expected.push(format!("completed:{stage}"));
    }
    expected.push("state:RUNNING".into());
    assert_eq!(d.stage_trail(), expected, "{}", d.log_text());
    let log = d.log_text();
    assert!(log.contains("[git reset] $ git reset --hard"), "{log}");
    assert!(
        log.contains("[composer install] no composer.json: skipped"),
        "{log}"
    );
    assert!(
        log.contains(&format!("[apply routes] account → {account_url}")),
        "{log}"
    );
    assert!(log.contains("checked with php -l; reloaded"), "{log}");
    let contiguous: Vec<u64> = (1..=d.seqs.len() as u64).collect();
    assert_eq!(d.seqs, contiguous);

    // Through the gateway container's published port.
    let body = http_get(port, "/erangel/account/").await;
    assert!(body.contains("hello from the sandbox account"), "{body}");
    let body = http_get(port, "/erangel/payment/v1/pay?x=1").await;
    assert!(body.contains("ocp GET /ocp-payment/v1/pay?x=1"), "{body}");

    // Only the value changed in the served file.
    let worktree = gateway
        .dir
        .path()
        .join("work")
        .join(&sandbox)
        .join("erangel");
    let live = std::fs::read_to_string(worktree.join(CONFIG_PHP)).unwrap();
    assert_eq!(
        live,
        config_php(&ocp, &format!("'{account_url}'")),
        "only the account value differs from the pristine file"
    );

    let view: LiveRoutes = gateway
        .call(
            AgentOp::RoutesGet,
            &RoutesRequest {
                sandbox: sandbox.clone(),
                repository: None,
            },
        )
        .await
        .into_result()
        .unwrap();
    assert_eq!(view.branch, "main");
    assert_eq!(view.routes["account"].mode, RouteMode::Sandbox);
    assert_eq!(view.routes["account"].target, account_url);
    let account_default = format!("{ocp}/ocp-account");
    assert_eq!(
        view.routes["account"].ocp_default.as_deref(),
        Some(account_default.as_str())
    );
    assert_eq!(view.routes["payment"].mode, RouteMode::Ocp);
    let snapshot =
        std::fs::read_to_string(gateway.dir.path().join("data/ocp-defaults.json")).unwrap();
    assert!(snapshot.contains(&account_default), "{snapshot}");

    // Back to OCP: exactly the branch's value, and the next request goes there.
    let view: LiveRoutes = gateway
        .call(
            AgentOp::RoutesApply,
            &RoutesApplyRequest {
                sandbox: sandbox.clone(),
                repository: Some("erangel".into()),
                routes: BTreeMap::from([("account".into(), RouteTarget::Ocp)]),
            },
        )
        .await
        .into_result()
        .unwrap();
    assert_eq!(view.routes["account"].mode, RouteMode::Ocp);
    assert_eq!(view.routes["account"].target, account_default);
    let body = http_get(port, "/erangel/account/me").await;
    assert!(body.contains("ocp GET /ocp-account/me"), "{body}");
    assert_eq!(
        std::fs::read_to_string(worktree.join(CONFIG_PHP)).unwrap(),
        config_php(&ocp, &format!("'{ocp}/ocp-account'")),
        "switching back restores the pristine bytes"
    );

    // A service the branch does not route: added for the sandbox, and
    // "back to OCP" takes it out again, to the branch's own bytes.
    let apply = |routes: BTreeMap<String, RouteTarget>| RoutesApplyRequest {
        sandbox: sandbox.clone(),
        repository: None,
        routes,
    };
    let view: LiveRoutes = gateway
        .call(
            AgentOp::RoutesApply,
            &apply(BTreeMap::from([(
                "wallet".into(),
                RouteTarget::Sandbox {
                    url: account_url.clone(),
                },
            )])),
        )
        .await
        .into_result()
        .unwrap();
    assert_eq!(view.routes["wallet"].ocp_default, None);
    let body = http_get(port, "/erangel/wallet/").await;
    assert!(body.contains("hello from the sandbox account"), "{body}");
    let view: LiveRoutes = gateway
        .call(
            AgentOp::RoutesApply,
            &apply(BTreeMap::from([("wallet".into(), RouteTarget::Ocp)])),
        )
        .await
        .into_result()
        .unwrap();
    assert!(!view.routes.contains_key("wallet"));
    assert_eq!(
        std::fs::read_to_string(worktree.join(CONFIG_PHP)).unwrap(),
        config_php(&ocp, &format!("'{ocp}/ocp-account'")),
    );
    let body = http_get(port, "/erangel/wallet/").await;
    assert!(body.contains("unknown service"), "{body}");

    // And to the sandbox again, live.
    let view: LiveRoutes = gateway
        .call(
            AgentOp::RoutesApply,
            &RoutesApplyRequest {
                sandbox: sandbox.clone(),
                repository: None,
                routes: BTreeMap::from([(
                    "account".into(),
                    RouteTarget::Sandbox {
                        url: account_url.clone(),
                    },
                )]),
            },
        )
        .await
        .into_result()
        .unwrap();
    assert_eq!(view.routes["account"].mode, RouteMode::Sandbox);
    let body = http_get(port, "/erangel/account/").await;
    assert!(body.contains("hello from the sandbox account"), "{body}");

    // Presence and status list the gateway, labelled.
    let status: Reply<Vec<ContainerInfo>> = gateway.request(AgentOp::Status, b"").await;
    let status = status.into_result().unwrap();
    let gw = status
        .iter()
        .find(|c| c.name == format!("sandbox-{sandbox}-gateway"))
        .expect("gateway listed");
    assert_eq!(gw.service, "gateway");
    assert_eq!(gw.deployment, "d-gw");
    assert!(
        status.iter().all(|c| c.service == "gateway"),
        "a node reports only its own containers: {status:?}"
    );

    // Remove the gateway, then the account: the network goes with the last.
    let out: ServiceOutcome = gateway
        .call(
            AgentOp::Remove,
            &ServiceRequest {
                sandbox: sandbox.clone(),
                repository: "erangel".into(),
                deployment: Some("d-gw".into()),
            },
        )
        .await
        .into_result()
        .unwrap();
    assert_eq!(out.state, "removed");
    assert!(out.worktree_removed && !out.network_removed, "{out:?}");
    assert!(!worktree.exists());
    let out: ServiceOutcome = micro
        .call(
            AgentOp::Remove,
            &ServiceRequest {
                sandbox: sandbox.clone(),
                repository: "svc".into(),
                deployment: None,
            },
        )
        .await
        .into_result()
        .unwrap();
    assert!(out.network_removed, "{out:?}");
    gateway.stop().await;
    micro.stop().await;
}

#[tokio::test]
async fn an_unparsable_config_fails_at_apply_routes_and_is_left_untouched() {
    let nats = NatsServer::start();
    let repo = GatewayRepo::new("http://127.0.0.1:9");
    let gateway = gateway_agent(&nats, &repo).await;
    let sandbox = sandbox_name("bad");
    let _cleanup = SandboxCleanup(sandbox.clone());
    let request = gateway_request(
        &gateway,
        "d-dyn",
        &sandbox,
        "dynamic",
        free_port(),
        &[(
            "account",
            RouteTarget::Sandbox {
                url: "http://10.0.0.1:9001".into(),
            },
        )],
    );
    let d = gateway.deploy_body("d-dyn", &request).await;
    let trail = d.stage_trail();
    assert_eq!(
        &trail[trail.len() - 3..],
        [
            "started:apply routes",
            "failed:apply routes",
            "state:FAILED"
        ],
        "{}",
        d.log_text()
    );
    let reason = reason_of(&d);
    assert_eq!(
        reason,
        "config.php line 9: the URL of 'account' is not a plain quoted string"
    );
    let worktree = gateway
        .dir
        .path()
        .join("work")
        .join(&sandbox)
        .join("erangel");
    let committed = git(&worktree, &["show", &format!("HEAD:{CONFIG_PHP}")]);
    let on_disk = std::fs::read_to_string(worktree.join(CONFIG_PHP)).unwrap();
    assert_eq!(on_disk.trim_end(), committed, "the file is untouched");
    // No gateway is left serving routes nobody asked for.
    let status: Reply<Vec<ContainerInfo>> = gateway.request(AgentOp::Status, b"").await;
    assert!(
        status
            .into_result()
            .unwrap()
            .iter()
            .all(|c| c.sandbox != sandbox)
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_taken_host_port_fails_naming_the_port() {
    let nats = NatsServer::start();
    let repo = GatewayRepo::new("http://127.0.0.1:9");
    let gateway = gateway_agent(&nats, &repo).await;
    let sandbox = sandbox_name("port");
    let _cleanup = SandboxCleanup(sandbox.clone());
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let request = gateway_request(&gateway, "d-port", &sandbox, "main", port, &[]);
    let d = gateway.deploy_body("d-port", &request).await;
    let trail = d.stage_trail();
    assert_eq!(
        &trail[trail.len() - 2..],
        ["failed:start container", "state:FAILED"],
        "{}",
        d.log_text()
    );
    let reason = reason_of(&d);
    assert!(
        reason.starts_with(&format!("host port {port} is already in use")),
        "{reason}"
    );
    drop(holder);
    gateway.stop().await;
}

/// A composer that floods its output with long lines and bytes that are
/// not UTF-8, then fails: streamed, cut, and the deployment goes on.
#[tokio::test]
async fn composer_output_of_any_size_or_encoding_is_streamed_and_failure_is_best_effort() {
    let nats = NatsServer::start();
    let repo = GatewayRepo::new("http://127.0.0.1:9");
    ensure_gateway_image();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("composer");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         printf 'args: %s\\n' \"$*\"\n\
         printf 'bad \\377\\376 bytes\\n'\n\
         head -c 200000 /dev/zero | tr '\\0' x; echo\n\
         i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); done\n\
         echo 'Your requirements could not be resolved' >&2\n\
         exit 2\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut config = gateway_config(dir.path(), &repo);
    config.composer_program = script;
    let gateway = TestAgent::start(&nats, config, dir).await;
    let sandbox = sandbox_name("cmp");
    let _cleanup = SandboxCleanup(sandbox.clone());
    let request = gateway_request(&gateway, "d-cmp", &sandbox, "composer", free_port(), &[]);
    let d = gateway.deploy_body("d-cmp", &request).await;
    assert!(is_running(&d), "{}", d.log_text());
    let composer: Vec<&str> = d
        .logs
        .iter()
        .filter(|l| l.stage == "composer install")
        .map(|l| l.line.as_str())
        .collect();
    assert!(
        composer.contains(&"args: install --no-dev --no-interaction --no-progress"),
        "{composer:?}"
    );
    assert!(composer.contains(&"bad \u{fffd}\u{fffd} bytes"));
    assert!(
        composer
            .iter()
            .any(|l| l.len() == sdp_agents::process::MAX_LINE)
    );
    assert!(composer.contains(&"line 2999"));
    assert!(
        composer
            .iter()
            .any(|l| l.contains("composer install failed") && l.contains("continuing")),
        "{:?}",
        &composer[composer.len() - 3..]
    );
    gateway.stop().await;
}

/// Kills the agent (its runtime dropped, every task with it, children
/// killed) while `php -l` checks the patched file, then starts it again.
#[tokio::test]
async fn an_agent_killed_while_applying_routes_leaves_a_valid_config_and_no_orphan() {
    let nats = NatsServer::start();
    let repo = GatewayRepo::new("http://127.0.0.1:9");
    ensure_gateway_image();
    let dir = tempfile::tempdir().unwrap();
    let slow_php = dir.path().join("slow-php");
    std::fs::write(&slow_php, "#!/bin/sh\nexec sleep 120\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&slow_php, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut config = gateway_config(dir.path(), &repo);
    config.host_php = Some(slow_php);
    let sandbox = sandbox_name("kill");
    let _cleanup = SandboxCleanup(sandbox.clone());

    let (key_tx, key_rx) = tokio::sync::oneshot::channel();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let url = nats.url.clone();
    let first = config.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = async_nats::connect(&url).await.unwrap();
            let handle =
                sdp_agents::Agent::start(client, first, tokio_util::sync::CancellationToken::new())
                    .await
                    .unwrap();
            let _ = key_tx.send(handle.public_key());
            let _ = tokio::task::spawn_blocking(move || kill_rx.recv()).await;
        });
        rt.shutdown_timeout(Duration::from_secs(2));
    });
    let public_key = key_rx.await.unwrap();

    let client = nats.client().await;
    let mut events = client.subscribe("sdp.deploy.d-kill.*").await.unwrap();
    client.flush().await.unwrap();
    let deploy = sdp_contract::DeployRequest {
        deployment: "d-kill".into(),
        sandbox: sandbox.clone(),
        repository: "erangel".into(),
        branch: "main".into(),
        port: free_port(),
        credentials: sdp_contract::Sealed::seal(
            &public_key,
            &sdp_contract::Credentials {
                username: "u".into(),
                password: PASSWORD.into(),
            },
        )
        .unwrap(),
        environment: None,
    };
    let request = GatewayDeployRequest {
        deploy,
        routes: BTreeMap::from([(
            "account".to_owned(),
            RouteTarget::Sandbox {
                url: "http://10.0.0.1:9001".into(),
            },
        )]),
    };
    client
        .request(
            sdp_contract::subjects::agent_op("gateway", AgentOp::Deploy),
            sdp_contract::encode(&request).into(),
        )
        .await
        .unwrap();
    let mut seen = 0u64;
    loop {
        let msg = tokio::time::timeout(
            Duration::from_secs(120),
            futures::StreamExt::next(&mut events),
        )
        .await
        .expect("the deployment reaches apply routes")
        .unwrap();
        seen += 1;
        let text = String::from_utf8_lossy(&msg.payload);
        if text.contains("\"stage_started\"") && text.contains("apply routes") {
            break;
        }
    }
    let worktree = dir.path().join("work").join(&sandbox).join("erangel");
    let staged = worktree
        .join(CONFIG_PHP)
        .with_file_name(".config.php.sdp-new");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !staged.exists() {
        assert!(std::time::Instant::now() < deadline, "the patch is staged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kill_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();

    // The served file is the branch's own, and valid.
    let committed = git(&worktree, &["show", &format!("HEAD:{CONFIG_PHP}")]);
    let on_disk = std::fs::read_to_string(worktree.join(CONFIG_PHP)).unwrap();
    assert_eq!(on_disk.trim_end(), committed);
    let lint = std::process::Command::new("php")
        .arg("-l")
        .arg(worktree.join(CONFIG_PHP))
        .output()
        .unwrap();
    assert!(lint.status.success());

    // Started again: the deployment is closed FAILED with the true reason,
    // and its container does not outlive it.
    config.host_php = None;
    let again = TestAgent::start(&nats, config, tempfile::tempdir().unwrap()).await;
    let d = collect(&mut events, Duration::from_secs(30)).await;
    let reason = reason_of(&d);
    assert_eq!(reason, "the agent restarted during 'apply routes'");
    let status: Reply<Vec<ContainerInfo>> = again.request(AgentOp::Status, b"").await;
    assert!(
        status
            .into_result()
            .unwrap()
            .iter()
            .all(|c| c.sandbox != sandbox),
        "the interrupted deployment's gateway is gone"
    );
    // Replay fills every gap from the spool: one contiguous sequence.
    let mut replayed = client.subscribe("sdp.deploy.d-kill.*").await.unwrap();
    client.flush().await.unwrap();
    let ack: Reply<sdp_contract::Ack> = again
        .call(
            AgentOp::Replay,
            &sdp_contract::ReplayRequest {
                deployment: "d-kill".into(),
                from_seq: 1,
            },
        )
        .await;
    ack.into_result().unwrap();
    let all = collect(&mut replayed, Duration::from_secs(30)).await;
    let contiguous: Vec<u64> = (1..=all.seqs.len() as u64).collect();
    assert_eq!(all.seqs, contiguous);
    assert!(all.seqs.len() as u64 > seen);
    again.stop().await;
}

/// Switching the sandbox's gateway to another branch resets the file to
/// that branch's own, re-applies the overrides, and "OCP" then means that
/// branch's defaults; each branch's snapshot is kept.
#[tokio::test]
async fn ocp_defaults_follow_the_gateway_branch() {
    let nats = NatsServer::start();
    let repo = GatewayRepo::new("http://127.0.0.1:9");
    let gateway = gateway_agent(&nats, &repo).await;
    let sandbox = sandbox_name("br");
    let _cleanup = SandboxCleanup(sandbox.clone());
    let port = free_port();
    let sandbox_account = RouteTarget::Sandbox {
        url: "http://10.0.0.1:9001".into(),
    };
    for (id, branch) in [("d-br1", "main"), ("d-br2", "feature/x")] {
        let request = gateway_request(
            &gateway,
            id,
            &sandbox,
            branch,
            port,
            &[("account", sandbox_account.clone())],
        );
        let d = gateway.deploy_body(id, &request).await;
        assert!(is_running(&d), "{}", d.log_text());
        assert!(
            d.log_text()
                .contains("[apply routes] account → http://10.0.0.1:9001"),
            "{}",
            d.log_text()
        );
    }
    let view: LiveRoutes = gateway
        .call(
            AgentOp::RoutesGet,
            &RoutesRequest {
                sandbox: sandbox.clone(),
                repository: None,
            },
        )
        .await
        .into_result()
        .unwrap();
    assert_eq!(view.branch, "feature/x");
    assert_eq!(view.routes["account"].mode, RouteMode::Sandbox);
    assert_eq!(view.routes["payment"].mode, RouteMode::Ocp);
    assert_eq!(
        view.routes["payment"].target,
        "http://127.0.0.1:9/ocp-payment-v2"
    );
    let body = http_get(port, "/erangel/").await;
    assert!(body.contains("ocp-payment-v2"), "{body}");
    let snapshot: serde_json::Value = serde_json::from_slice(
        &std::fs::read(gateway.dir.path().join("data/ocp-defaults.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        snapshot["erangel"]["main"]["payment"],
        "http://127.0.0.1:9/ocp-payment"
    );
    assert_eq!(
        snapshot["erangel"]["feature/x"]["payment"],
        "http://127.0.0.1:9/ocp-payment-v2"
    );
    gateway.stop().await;
}
