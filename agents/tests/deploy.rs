//! Whole micro deployments against the local Docker engine and Go
//! toolchain: build on the host, run in the runtime image, answer on the
//! published port.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use sdp_agents::NodeKind;
use sdp_contract::stages::MICRO;
use sdp_contract::subjects::AgentOp;
use sdp_contract::{ContainerInfo, DeployEnvironment, DeploymentState, EventKind, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn micro(nats: &NatsServer, repos: &Repos) -> TestAgent {
    ensure_runtime_image();
    let dir = tempfile::tempdir().unwrap();
    let config = config(NodeKind::Micro, dir.path(), repos);
    TestAgent::start(nats, config, dir).await
}

async fn http_get(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut body))
        .await
        .unwrap()
        .unwrap();
    body
}

fn docker_inspect(name: &str, format: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", format, name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn a_deployment_reaches_running_and_its_port_answers() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    let agent = micro(&nats, &repos).await;
    let sandbox = sandbox_name("ok");
    let _cleanup = SandboxCleanup(sandbox.clone());
    let port = free_port();

    let mut request = agent.deploy_request("d-ok", &sandbox, "main", port);
    request.environment = Some(agent.seal(&DeployEnvironment {
        variables: BTreeMap::from([("GREETING".into(), "the sandbox".into())]),
        secrets: BTreeMap::from([("API_TOKEN".into(), "tok-very-secret".into())]),
        files: BTreeMap::from([("/etc/svc/config.json".into(), "{\"a\":1}".into())]),
    }));
    let d = agent.deploy(&request).await;

    let mut expected = Vec::new();
    for stage in MICRO {
        expected.push(format!("started:{stage}"));
        expected.push(format!("completed:{stage}"));
    }
    expected.push("state:RUNNING".into());
    assert_eq!(d.stage_trail(), expected, "{}", d.log_text());
    let contiguous: Vec<u64> = (1..=d.seqs.len() as u64).collect();
    assert_eq!(
        d.seqs, contiguous,
        "one gap-free sequence over events and logs"
    );

    let container = format!("sandbox-{sandbox}-svc");
    match d.final_state() {
        EventKind::State {
            state,
            commit,
            container: c,
            ..
        } => {
            assert_eq!(*state, DeploymentState::Running);
            assert_eq!(commit.as_deref(), Some(repos.head_of("main").as_str()));
            assert_eq!(c.as_deref(), Some(container.as_str()));
        }
        other => panic!("{other:?}"),
    }
    let log = d.log_text();
    for narration in [
        "[git fetch] $ git fetch --prune origin",
        "[git checkout] $ git checkout --force --detach refs/remotes/origin/main --",
        "[git pull] $ git pull --ff-only origin refs/heads/main",
    ] {
        assert!(log.contains(narration), "{narration} missing from:\n{log}");
    }
    assert!(!log.contains(PASSWORD));

    let body = http_get(port).await;
    assert!(body.contains("hello from the sandbox"), "{body}");

    assert_eq!(
        docker_inspect(&container, "{{index .Config.Labels \"sdp.deployment\"}}"),
        "d-ok"
    );
    assert_eq!(
        docker_inspect(&container, "{{.HostConfig.RestartPolicy.Name}}"),
        "unless-stopped"
    );
    let aliases = docker_inspect(
        &container,
        &format!("{{{{json (index .NetworkSettings.Networks \"sandbox-{sandbox}\").Aliases}}}}"),
    );
    assert!(aliases.contains("\"svc\""), "{aliases}");
    let mounts = docker_inspect(&container, "{{json .Mounts}}");
    assert!(mounts.contains("/etc/svc/config.json"), "{mounts}");

    let status: Reply<Vec<ContainerInfo>> = agent.request(AgentOp::Status, b"").await;
    let status = status.into_result().unwrap();
    let mine = status
        .iter()
        .find(|c| c.name == container)
        .expect("the container is listed");
    assert_eq!(mine.sandbox, sandbox);
    assert_eq!(mine.service, "svc");
    assert_eq!(mine.deployment, "d-ok");
    assert_eq!(mine.state, "running");

    // Deploying again replaces the container in place.
    let again = agent
        .deploy(&agent.deploy_request("d-ok2", &sandbox, "main", port))
        .await;
    assert!(
        matches!(
            again.final_state(),
            EventKind::State {
                state: DeploymentState::Running,
                ..
            }
        ),
        "{}",
        again.log_text()
    );
    assert!(again.log_text().contains("[git fetch] worktree "));
    assert!(http_get(port).await.contains("hello from"));
    assert_eq!(
        docker_inspect(&container, "{{index .Config.Labels \"sdp.deployment\"}}"),
        "d-ok2"
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_compile_error_fails_at_go_build() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    let agent = micro(&nats, &repos).await;
    let sandbox = sandbox_name("ce");
    let _cleanup = SandboxCleanup(sandbox.clone());
    let d = agent
        .deploy(&agent.deploy_request("d-broken", &sandbox, "broken", free_port()))
        .await;
    let trail = d.stage_trail();
    assert_eq!(
        &trail[trail.len() - 3..],
        ["started:go build", "failed:go build", "state:FAILED"],
        "{}",
        d.log_text()
    );
    match d.final_state() {
        EventKind::State { reason, .. } => {
            let reason = reason.as_deref().unwrap();
            assert!(reason.contains("undefined: undefinedThing"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        d.logs
            .iter()
            .any(|l| l.stage == "go build" && l.line.contains("undefinedThing")),
        "compiler output is streamed:\n{}",
        d.log_text()
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_service_that_exits_fails_at_start_container_with_its_last_lines_masked() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    let agent = micro(&nats, &repos).await;
    let sandbox = sandbox_name("cr");
    let _cleanup = SandboxCleanup(sandbox.clone());
    let mut request = agent.deploy_request("d-crash", &sandbox, "crash", free_port());
    request.environment = Some(agent.seal(&DeployEnvironment {
        secrets: BTreeMap::from([("API_TOKEN".into(), "tok-very-secret".into())]),
        ..Default::default()
    }));
    let d = agent.deploy(&request).await;
    let trail = d.stage_trail();
    assert_eq!(
        &trail[trail.len() - 3..],
        [
            "started:start container",
            "failed:start container",
            "state:FAILED"
        ],
        "{}",
        d.log_text()
    );
    let log = d.log_text();
    assert!(log.contains("starting with token ****"), "{log}");
    assert!(!log.contains("tok-very-secret"), "{log}");
    match d.final_state() {
        EventKind::State { reason, .. } => {
            let reason = reason.as_deref().unwrap();
            assert!(reason.contains("exited"), "{reason}");
            assert!(
                reason.ends_with("fatal: cannot reach the database"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The failed container is not left restarting.
    let status: Reply<Vec<ContainerInfo>> = agent.request(AgentOp::Status, b"").await;
    assert!(
        status
            .into_result()
            .unwrap()
            .iter()
            .all(|c| c.sandbox != sandbox)
    );
    agent.stop().await;
}

#[tokio::test]
async fn stop_restart_and_remove_act_on_the_labelled_container() {
    use sdp_contract::{ErrorCode, ServiceOutcome, ServiceRequest};
    let nats = NatsServer::start();
    let repos = Repos::new();
    let agent = micro(&nats, &repos).await;
    let sandbox = sandbox_name("ops");
    let _cleanup = SandboxCleanup(sandbox.clone());
    let port = free_port();
    let d = agent
        .deploy(&agent.deploy_request("d-ops", &sandbox, "main", port))
        .await;
    assert!(
        matches!(
            d.final_state(),
            EventKind::State {
                state: DeploymentState::Running,
                ..
            }
        ),
        "{}",
        d.log_text()
    );
    let request = |deployment: Option<&str>| ServiceRequest {
        sandbox: sandbox.clone(),
        repository: "svc".into(),
        deployment: deployment.map(str::to_owned),
    };

    // A stale request for another deployment changes nothing.
    let err = agent
        .call::<_, ServiceOutcome>(AgentOp::Stop, &request(Some("d-older")))
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(
        err.message.contains("runs deployment d-ops"),
        "{}",
        err.message
    );

    let mut stream = agent
        .nats
        .subscribe("sdp.deploy.d-ops.event")
        .await
        .unwrap();
    agent.nats.flush().await.unwrap();
    let out: ServiceOutcome = agent
        .call(AgentOp::Stop, &request(Some("d-ops")))
        .await
        .into_result()
        .unwrap();
    assert_eq!(out.state, "exited");
    let stopped = collect(&mut stream, Duration::from_secs(10)).await;
    match stopped.final_state() {
        EventKind::State { state, .. } => assert_eq!(*state, DeploymentState::Stopped),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        stopped.seqs,
        [d.seqs.len() as u64 + 1],
        "the stream goes on"
    );

    let out: ServiceOutcome = agent
        .call(AgentOp::Restart, &request(None))
        .await
        .into_result()
        .unwrap();
    assert_eq!(out.state, "running");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !sdp_agents::probe::accepts("127.0.0.1", port).await {
        assert!(
            std::time::Instant::now() < deadline,
            "answers after restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(http_get(port).await.contains("hello from"));

    let out: ServiceOutcome = agent
        .call(AgentOp::Remove, &request(None))
        .await
        .into_result()
        .unwrap();
    assert_eq!(out.state, "removed");
    assert!(out.network_removed && out.worktree_removed, "{out:?}");
    assert!(
        !agent
            .dir
            .path()
            .join("work")
            .join(&sandbox)
            .join("svc")
            .exists()
    );
    let gone = std::process::Command::new("docker")
        .args(["network", "inspect", &format!("sandbox-{sandbox}")])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the network is gone");
    let err = agent
        .call::<_, ServiceOutcome>(AgentOp::Stop, &request(None))
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    agent.stop().await;
}

/// A build that floods its output with long lines and bytes that are not
/// UTF-8: every line is streamed (cut when too long), none crashes the
/// agent, and the deployment goes on to run.
#[tokio::test]
async fn build_output_of_any_size_or_encoding_is_streamed() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    ensure_runtime_image();
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("noisy-go");
    std::fs::write(
        &go,
        "#!/bin/sh\n\
         printf 'bad \\377\\376 bytes\\n' >&2\n\
         head -c 300000 /dev/zero | tr '\\0' y >&2; echo >&2\n\
         i=0; while [ $i -lt 5000 ]; do echo \"noise $i\"; i=$((i+1)); done\n\
         exec go \"$@\"\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&go, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut config = config(NodeKind::Micro, dir.path(), &repos);
    config.go_program = go;
    let agent = TestAgent::start(&nats, config, dir).await;
    let sandbox = sandbox_name("noisy");
    let _cleanup = SandboxCleanup(sandbox.clone());
    let d = agent
        .deploy(&agent.deploy_request("d-noisy", &sandbox, "main", free_port()))
        .await;
    assert!(
        matches!(
            d.final_state(),
            EventKind::State {
                state: DeploymentState::Running,
                ..
            }
        ),
        "{}",
        d.log_text()
    );
    let build: Vec<&str> = d
        .logs
        .iter()
        .filter(|l| l.stage == "go build")
        .map(|l| l.line.as_str())
        .collect();
    assert!(build.contains(&"bad \u{fffd}\u{fffd} bytes"));
    assert!(
        build
            .iter()
            .any(|l| l.len() == sdp_agents::process::MAX_LINE)
    );
    assert!(build.contains(&"noise 4999"));
    let contiguous: Vec<u64> = (1..=d.seqs.len() as u64).collect();
    assert_eq!(d.seqs, contiguous, "nothing lost on the way");
    agent.stop().await;
}
