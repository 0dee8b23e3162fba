//! The agent over a real nats-server: presence, request validation, `auth`,
//! and the git stages of a deployment (no Docker needed here).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use sdp_agents::NodeKind;
use sdp_contract::subjects::{self, AgentOp};
use sdp_contract::{
    Ack, AuthOutcome, AuthRequest, Credentials, ErrorCode, EventKind, GatewayDeployRequest,
    Presence, ReplayRequest, Reply, RouteTarget, decode,
};

async fn micro(nats: &NatsServer, repos: &Repos) -> TestAgent {
    let dir = tempfile::tempdir().unwrap();
    let config = config(NodeKind::Micro, dir.path(), repos);
    TestAgent::start(nats, config, dir).await
}

#[tokio::test]
async fn presence_is_announced_answered_and_repeated() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    let watcher = nats.client().await;
    let mut hello = watcher
        .subscribe(subjects::node_hello("micro"))
        .await
        .unwrap();
    let mut beats = watcher
        .subscribe(subjects::node_heartbeat("micro"))
        .await
        .unwrap();
    watcher.flush().await.unwrap();
    let agent = micro(&nats, &repos).await;

    let announced: Presence = decode(
        &tokio::time::timeout(Duration::from_secs(10), hello.next())
            .await
            .unwrap()
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(announced.public_key, agent.public_key);
    assert_eq!(announced.kind, NodeKind::Micro);
    assert_eq!(announced.repositories, vec!["svc".to_owned()]);

    let answered: Reply<Presence> = agent.request(AgentOp::Hello, b"").await;
    assert_eq!(answered.into_result().unwrap().public_key, agent.public_key);

    let beat: Presence = decode(
        &tokio::time::timeout(Duration::from_secs(10), beats.next())
            .await
            .unwrap()
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(beat.node, "micro");
    agent.stop().await;
}

#[tokio::test]
async fn unknown_ops_and_garbage_get_bad_request() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    let agent = micro(&nats, &repos).await;

    let reply = agent
        .nats
        .request("sdp.agent.micro.frobnicate", "{}".into())
        .await
        .unwrap();
    let err = decode::<Reply<Ack>>(&reply.payload)
        .unwrap()
        .into_result()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);
    assert!(err.message.contains("unknown operation"), "{}", err.message);

    for body in [&b"not json"[..], b"{\"v\":1}", b"{\"v\":7,\"x\":1}", b""] {
        let err = agent
            .request::<Ack>(AgentOp::Deploy, body)
            .await
            .into_result()
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest, "{body:?}");
        assert!(
            err.message.contains("malformed 'deploy' request"),
            "{}",
            err.message
        );
    }
    // The agent is still serving.
    let ok: Reply<Presence> = agent.request(AgentOp::Hello, b"").await;
    assert!(ok.into_result().is_ok());
    agent.stop().await;
}

#[tokio::test]
async fn an_option_like_branch_is_refused_before_git_runs() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, argv_log) = recording_git(dir.path());
    let mut config = config(NodeKind::Micro, dir.path(), &repos);
    config.git_program = wrapper;
    let agent = TestAgent::start(&nats, config, dir).await;

    let request = agent.deploy_request("d-opt", "qa", "--upload-pack=touch /tmp/pwned", 9001);
    let err = agent
        .call::<_, Ack>(AgentOp::Deploy, &request)
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);
    assert!(err.message.contains("option"), "{}", err.message);

    let mut unknown = agent.deploy_request("d-unk", "qa", "main", 9001);
    unknown.repository = "payment".into();
    let err = agent
        .call::<_, Ack>(AgentOp::Deploy, &unknown)
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);
    assert!(
        err.message.contains("unknown repository 'payment'"),
        "{}",
        err.message
    );

    let mut bad_sandbox = agent.deploy_request("d-sb", "../etc", "main", 9001);
    bad_sandbox.sandbox = "../etc".into();
    let err = agent
        .call::<_, Ack>(AgentOp::Deploy, &bad_sandbox)
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);

    assert!(
        !argv_log.exists(),
        "git ran: {}",
        std::fs::read_to_string(&argv_log).unwrap_or_default()
    );
    agent.stop().await;
}

#[tokio::test]
async fn auth_accepts_what_git_accepts_and_refuses_what_bitbucket_refuses() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    let agent = micro(&nats, &repos).await;
    let request = AuthRequest {
        credentials: agent.credentials(),
    };
    let ok: Reply<AuthOutcome> = agent.call(AgentOp::Auth, &request).await;
    assert_eq!(ok.into_result().unwrap().user, "achmad");
    agent.stop().await;

    // The same repository, its remote now a Bitbucket that says 401.
    git(
        &repos.clone,
        &["remote", "set-url", "origin", &rejecting_remote().await],
    );
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, argv_log) = recording_git(dir.path());
    let mut config = config(NodeKind::Gateway, dir.path(), &repos);
    config.git_program = wrapper;
    let gateway = TestAgent::start(&nats, config, dir).await;
    let request = AuthRequest {
        credentials: gateway.credentials(),
    };
    let err = gateway
        .call::<_, AuthOutcome>(AgentOp::Auth, &request)
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthorized);
    assert_eq!(err.message, "Bitbucket rejected the username or password");
    let argv = std::fs::read_to_string(&argv_log).unwrap();
    assert!(argv.contains("ls-remote --heads origin"), "{argv}");
    assert!(
        !argv.contains(PASSWORD),
        "the password reached argv: {argv}"
    );

    // Credentials sealed to another key are refused as such.
    let other = sdp_contract::AgentKeys::generate();
    let foreign = AuthRequest {
        credentials: sdp_contract::Sealed::seal(
            &other.public_key(),
            &Credentials {
                username: "a".into(),
                password: "b".into(),
            },
        )
        .unwrap(),
    };
    let err = gateway
        .call::<_, AuthOutcome>(AgentOp::Auth, &foreign)
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Sealed);
    gateway.stop().await;
}

#[tokio::test]
async fn a_gateway_refuses_routes_it_cannot_write_before_accepting() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    let dir = tempfile::tempdir().unwrap();
    let config = config(NodeKind::Gateway, dir.path(), &repos);
    let gateway = TestAgent::start(&nats, config, dir).await;
    for url in ["file:///etc/passwd", "http://x\n';system('id');//"] {
        let request = GatewayDeployRequest {
            deploy: gateway.deploy_request("d-gw", "qa", "main", 8080),
            routes: BTreeMap::from([(
                "account".to_owned(),
                RouteTarget::Sandbox { url: url.into() },
            )]),
        };
        let err = gateway
            .call::<_, Ack>(AgentOp::Deploy, &request)
            .await
            .into_result()
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest, "{url}");
        assert!(err.message.contains("account"), "{}", err.message);
    }
    gateway.stop().await;
}

#[tokio::test]
async fn a_missing_branch_fails_at_git_checkout_and_replays_from_the_spool() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    let agent = micro(&nats, &repos).await;
    let sandbox = sandbox_name("nb");
    let request = agent.deploy_request("d-missing", &sandbox, "feature/nope", 9001);
    let d = agent.deploy(&request).await;

    assert_eq!(
        d.stage_trail(),
        [
            "started:git fetch",
            "completed:git fetch",
            "started:git checkout",
            "failed:git checkout",
            "state:FAILED",
        ],
        "{}",
        d.log_text()
    );
    match d.final_state() {
        EventKind::State { reason, .. } => assert_eq!(
            reason.as_deref(),
            Some("branch 'feature/nope' does not exist on origin")
        ),
        other => panic!("{other:?}"),
    }
    let expected: Vec<u64> = (1..=d.seqs.len() as u64).collect();
    assert_eq!(
        d.seqs, expected,
        "one contiguous sequence over both streams"
    );
    assert!(
        d.log_text().contains("$ git fetch --prune origin"),
        "{}",
        d.log_text()
    );
    let worktree = agent.dir.path().join("work").join(&sandbox).join("svc");
    assert!(worktree.join(".git").is_file(), "a linked worktree exists");

    // A second request with the same id is acknowledged, not run again.
    let again: Reply<Ack> = agent.call(AgentOp::Deploy, &request).await;
    assert!(again.into_result().unwrap().accepted);

    // Replay from seq 3 resends exactly what was published from there on.
    let mut sub = agent
        .nats
        .subscribe("sdp.deploy.d-missing.*")
        .await
        .unwrap();
    agent.nats.flush().await.unwrap();
    let ack: Reply<Ack> = agent
        .call(
            AgentOp::Replay,
            &ReplayRequest {
                deployment: "d-missing".into(),
                from_seq: 3,
            },
        )
        .await;
    assert!(ack.into_result().unwrap().accepted);
    let replayed = collect(&mut sub, Duration::from_secs(10)).await;
    let expected: Vec<u64> = (3..=d.seqs.len() as u64).collect();
    assert_eq!(replayed.seqs, expected);
    assert_eq!(replayed.events.last(), d.events.last());

    let unknown: Reply<Ack> = agent
        .call(
            AgentOp::Replay,
            &ReplayRequest {
                deployment: "never".into(),
                from_seq: 1,
            },
        )
        .await;
    assert_eq!(unknown.into_result().unwrap_err().code, ErrorCode::NotFound);
    agent.stop().await;
}

#[tokio::test]
async fn rejected_credentials_fail_at_git_fetch_without_hanging() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    git(
        &repos.clone,
        &["remote", "set-url", "origin", &rejecting_remote().await],
    );
    let agent = micro(&nats, &repos).await;
    let request = agent.deploy_request("d-auth", &sandbox_name("au"), "main", 9001);
    let d = tokio::time::timeout(Duration::from_secs(60), agent.deploy(&request))
        .await
        .expect("git fetch waited for a prompt");
    assert_eq!(
        d.stage_trail(),
        ["started:git fetch", "failed:git fetch", "state:FAILED"],
        "{}",
        d.log_text()
    );
    match d.final_state() {
        EventKind::State { reason, .. } => assert_eq!(
            reason.as_deref(),
            Some("authentication failed: Bitbucket rejected the credentials")
        ),
        other => panic!("{other:?}"),
    }
    assert!(!d.log_text().contains(PASSWORD));
    agent.stop().await;
}

#[tokio::test]
async fn a_broken_worktree_is_recreated() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    let agent = micro(&nats, &repos).await;
    let sandbox = sandbox_name("bw");
    let first = agent
        .deploy(&agent.deploy_request("d-bw1", &sandbox, "no-such", 9001))
        .await;
    assert!(first.log_text().contains("git worktree add --detach"));
    let worktree = agent.dir.path().join("work").join(&sandbox).join("svc");
    std::fs::remove_file(worktree.join(".git")).unwrap();
    std::fs::write(worktree.join("stray"), "x").unwrap();

    let second = agent
        .deploy(&agent.deploy_request("d-bw2", &sandbox, "no-such", 9001))
        .await;
    let log = second.log_text();
    assert!(log.contains("is broken; recreating it"), "{log}");
    assert_eq!(
        second.stage_trail()[..3],
        [
            "started:git fetch",
            "completed:git fetch",
            "started:git checkout"
        ],
        "{log}"
    );
    assert!(worktree.join(".git").is_file());
    assert!(!worktree.join("stray").exists());
    agent.stop().await;
}

#[tokio::test]
async fn two_sandboxes_deploy_one_repository_at_once() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    let agent = micro(&nats, &repos).await;
    // `broken` passes every git stage and fails in `go build`: both
    // deployments run all their git work against one object store.
    let a = agent.deploy_request("d-par-a", &sandbox_name("pa"), "broken", 9001);
    let b = agent.deploy_request("d-par-b", &sandbox_name("pb"), "broken", 9002);
    let (da, db) = tokio::join!(agent.deploy(&a), agent.deploy(&b));
    for d in [da, db] {
        let trail = d.stage_trail();
        assert_eq!(
            trail[trail.len() - 2..],
            ["failed:go build", "state:FAILED"],
            "{}",
            d.log_text()
        );
    }
    agent.stop().await;
}

#[tokio::test]
async fn shutdown_mid_deployment_ends_it_failed_and_kills_git() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    let dir = tempfile::tempdir().unwrap();
    let slow_git = dir.path().join("slow-git.sh");
    std::fs::write(
        &slow_git,
        "#!/bin/sh\ncase \"$*\" in *fetch*) exec sleep 60 ;; esac\nexec git \"$@\"\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&slow_git, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut config = config(NodeKind::Micro, dir.path(), &repos);
    config.git_program = slow_git;
    let agent = TestAgent::start(&nats, config, dir).await;
    let watcher = nats.client().await;
    let mut sub = watcher.subscribe("sdp.deploy.d-shut.*").await.unwrap();
    watcher.flush().await.unwrap();
    let request = agent.deploy_request("d-shut", &sandbox_name("sd"), "main", 9001);
    let ack: Reply<Ack> = agent.call(AgentOp::Deploy, &request).await;
    assert!(ack.into_result().unwrap().accepted);
    // Wait until git fetch is under way.
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .unwrap()
            .unwrap();
        if String::from_utf8_lossy(&msg.payload).contains("$ git fetch --prune origin") {
            break;
        }
    }
    tokio::time::timeout(Duration::from_secs(30), agent.stop())
        .await
        .expect("stopping waited for git instead of cancelling it");
    let rest = collect(&mut sub, Duration::from_secs(10)).await;
    assert_eq!(
        rest.stage_trail(),
        ["failed:git fetch", "state:FAILED"],
        "{}",
        rest.log_text()
    );
    match rest.final_state() {
        EventKind::State { reason, .. } => {
            assert!(
                reason.as_deref().unwrap().contains("shutting down"),
                "{reason:?}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_deployment_interrupted_by_a_restart_is_closed_failed() {
    use sdp_contract::{DeployEvent, encode};
    let nats = NatsServer::start();
    let repos = Repos::new();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("data").join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let lines: Vec<u8> = [
        EventKind::StageStarted {
            stage: "git fetch".into(),
        },
        EventKind::StageCompleted {
            stage: "git fetch".into(),
        },
        EventKind::StageStarted {
            stage: "git checkout".into(),
        },
    ]
    .into_iter()
    .enumerate()
    .flat_map(|(i, kind)| {
        let mut line = encode(&DeployEvent {
            deployment: "d-int".into(),
            seq: i as u64 + 1,
            at: chrono::Utc::now(),
            kind,
        });
        line.push(b'\n');
        line
    })
    .collect();
    std::fs::write(spool.join("d-int.jsonl"), lines).unwrap();

    let watcher = nats.client().await;
    let mut sub = watcher.subscribe("sdp.deploy.d-int.*").await.unwrap();
    watcher.flush().await.unwrap();
    let config = config(NodeKind::Micro, dir.path(), &repos);
    let agent = TestAgent::start(&nats, config, dir).await;
    let closed = collect(&mut sub, Duration::from_secs(10)).await;
    assert_eq!(closed.seqs, [4, 5]);
    assert_eq!(
        closed.stage_trail(),
        ["failed:git checkout", "state:FAILED"]
    );
    agent.stop().await;
}

#[tokio::test]
async fn repositories_and_their_branches_are_listed_live() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    let agent = micro(&nats, &repos).await;
    let listed: Vec<sdp_contract::RepositoryInfo> = agent
        .request(AgentOp::Repos, b"")
        .await
        .into_result()
        .unwrap();
    assert_eq!(
        listed,
        vec![sdp_contract::RepositoryInfo {
            name: "svc".into(),
            node: "micro".into(),
            kind: NodeKind::Micro,
        }]
    );
    let request = sdp_contract::BranchesRequest {
        repository: "svc".into(),
        credentials: agent.credentials(),
    };
    let branches: Vec<sdp_contract::BranchInfo> = agent
        .call(AgentOp::Branches, &request)
        .await
        .into_result()
        .unwrap();
    let names: Vec<&str> = branches.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["broken", "crash", "main"]);
    assert_eq!(branches[2].commit, repos.head_of("main"));

    // A branch pushed after the agent started shows at once: no cache.
    let seed = repos.dir.path().join("seed");
    git(&seed, &["checkout", "-q", "-b", "feature/new", "main"]);
    git(&seed, &["push", "-q", "origin", "feature/new"]);
    let branches: Vec<sdp_contract::BranchInfo> = agent
        .call(AgentOp::Branches, &request)
        .await
        .into_result()
        .unwrap();
    assert!(branches.iter().any(|b| b.name == "feature/new"));

    for repository in ["nope", "../svc"] {
        let err = agent
            .call::<_, Vec<sdp_contract::BranchInfo>>(
                AgentOp::Branches,
                &sdp_contract::BranchesRequest {
                    repository: repository.into(),
                    credentials: agent.credentials(),
                },
            )
            .await
            .into_result()
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest, "{repository}");
    }
    agent.stop().await;
}

#[tokio::test]
async fn routes_ops_need_a_gateway_node_and_a_gateway() {
    let nats = NatsServer::start();
    let repos = Repos::new();
    let agent = micro(&nats, &repos).await;
    let request = sdp_contract::RoutesRequest {
        sandbox: "qa".into(),
        repository: None,
    };
    let err = agent
        .call::<_, sdp_contract::LiveRoutes>(AgentOp::RoutesGet, &request)
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);
    agent.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let config = config(NodeKind::Gateway, dir.path(), &repos);
    let gateway = TestAgent::start(&nats, config, dir).await;
    let err = gateway
        .call::<_, sdp_contract::LiveRoutes>(AgentOp::RoutesGet, &request)
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{}", err.message);
    assert!(err.message.contains("has no gateway"), "{}", err.message);
    gateway.stop().await;
}
