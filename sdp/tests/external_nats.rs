//! The scale-out setting: control plane and agents on external NATS servers
//! (Debian's `nats-server` 2.9.10) instead of the embedded broker — one
//! server, and a three-node cluster that loses a node mid-deploy.

mod support;

use std::time::{Duration, Instant};

use sdp_testbed::NatsServer;
use serde_json::{Value, json};
use support::{Bed, Options, free_port};

/// `GET /{what}` on a server's monitoring port (`connz`, `routez`, ...).
async fn monitor(server: &NatsServer, what: &str) -> Value {
    reqwest::get(format!("http://127.0.0.1:{}/{what}", server.monitor_port()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Names of the client connections a server holds.
async fn client_names(server: &NatsServer) -> Vec<String> {
    let connz = monitor(server, "connz").await;
    connz["connections"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn start(args: &[&str]) -> NatsServer {
    NatsServer::start(args).await.expect("nats-server")
}

fn stage_pairs(d: &Value) -> Vec<(String, String)> {
    d["stages"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap_or_default().to_owned(),
                        s["status"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

const MICRO_STAGES: [&str; 5] = [
    "git fetch",
    "git checkout",
    "git pull",
    "go build",
    "start container",
];

async fn assert_answers_with_branch(bed: &Bed, port: u16, branch: &str) {
    let body: Value = bed
        .http
        .get(format!("http://127.0.0.1:{port}/hello"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["service"], "account", "{body}");
    assert_eq!(body["branch"], branch, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walking_skeleton_deploy_over_debian_nats_server() {
    let nats = start(&[]).await;
    let bed = Bed::start_on_nats(Options::default(), &nats.url()).await;
    assert_eq!(bed.stack.nats_url, nats.url());
    // Control plane and both agents really are on nats-server.
    let names = client_names(&nats).await;
    for name in ["sdp-control", "sdp-agent-micro", "sdp-agent-gateway"] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }

    bed.login_ok().await;
    let port = free_port();
    let (status, d) = bed
        .deploy(json!({"sandbox": bed.sandbox, "repository": "account",
                       "branch": "feature/login-error", "port": port}))
        .await;
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_str().unwrap().to_owned();
    let d = bed.wait_final(&id).await;
    let logs = bed.logs(&id).await;
    assert_eq!(d["state"], "RUNNING", "{d}\n{logs}");
    assert_eq!(d["port"], port);
    let expected: Vec<_> = MICRO_STAGES
        .iter()
        .map(|s| (s.to_string(), "completed".to_owned()))
        .collect();
    assert_eq!(stage_pairs(&d), expected, "{d}");
    for stage in MICRO_STAGES {
        assert!(
            logs.contains(&format!("[{stage}]")),
            "no [{stage}] lines in:\n{logs}"
        );
    }
    assert_answers_with_branch(&bed, port, "feature/login-error").await;
    bed.stop().await;
    nats.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_survives_a_cluster_node_killed_mid_deploy() {
    let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (i, cport) in cluster_ports.iter().enumerate() {
        let routes: Vec<String> = cluster_ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
            .collect();
        let name = format!("sdp-{i}");
        let cluster = format!("nats://127.0.0.1:{cport}");
        let routes = routes.join(",");
        let args = [
            "-n",
            &name,
            "--cluster_name",
            "sdp",
            "--cluster",
            &cluster,
            "--routes",
            &routes,
        ];
        nodes.push(start(&args).await);
    }
    // The cluster is formed: every node routes to the two others.
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &nodes {
        loop {
            let routez = monitor(node, "routez").await;
            if routez["num_routes"].as_u64() >= Some(2) {
                break;
            }
            assert!(Instant::now() < deadline, "cluster never formed: {routez}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Every component is given node 0 alone and learns the two others from
    // the cluster's gossip (`connect_urls` in INFO), so the node killed
    // below carries all the traffic. (A comma-separated list of all three
    // is what operators would write, but `sdp::stack::connect` cannot take
    // one yet: see `comma_separated_url_list_reaches_the_cluster`.)
    let victim = 0;
    let bed = Bed::start_on_nats(Options::default(), &nodes[victim].url()).await;
    let names = client_names(&nodes[victim]).await;
    for name in ["sdp-control", "sdp-agent-micro", "sdp-agent-gateway"] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} not on node {victim}: {names:?}"
        );
    }

    bed.login_ok().await;
    let port = free_port();
    let (status, d) = bed
        .deploy(json!({"sandbox": bed.sandbox, "repository": "account",
                       "branch": "feature/login-error", "port": port}))
        .await;
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_str().unwrap().to_owned();

    // Wait for `go build` to start, then SIGKILL the micro agent's node.
    let deadline = Instant::now() + Duration::from_secs(240);
    let killed_during = loop {
        let d: Value = bed
            .http
            .get(bed.url(&format!("/deployments/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let stages = stage_pairs(&d);
        let running = stages
            .iter()
            .find(|(_, status)| status == "running")
            .map(|(name, _)| name.clone());
        if let Some(stage) = running
            && (stage == "go build" || stage == "start container")
        {
            break stage;
        }
        assert_eq!(d["state"], "QUEUED", "finished before the kill: {d}");
        assert!(Instant::now() < deadline, "go build never started: {d}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let node = nodes.remove(victim);
    node.kill().await;
    eprintln!("killed node {victim} during {killed_during}");

    let d = bed.wait_final(&id).await;
    let logs = bed.logs(&id).await;
    assert_eq!(d["state"], "RUNNING", "{d}\n{logs}");
    let expected: Vec<_> = MICRO_STAGES
        .iter()
        .map(|s| (s.to_string(), "completed".to_owned()))
        .collect();
    assert_eq!(stage_pairs(&d), expected, "{d}\n{logs}");
    // The survivors now carry the micro agent.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut on = false;
        for node in &nodes {
            on |= client_names(node)
                .await
                .iter()
                .any(|n| n == "sdp-agent-micro");
        }
        if on {
            break;
        }
        assert!(Instant::now() < deadline, "micro agent never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The log is complete: lines of every stage, in stage order (whatever
    // was published into the dead node came back by replay).
    let deadline = Instant::now() + Duration::from_secs(30);
    let logs = loop {
        let logs = bed.logs(&id).await;
        if MICRO_STAGES
            .iter()
            .all(|s| logs.contains(&format!("[{s}]")))
        {
            break logs;
        }
        assert!(
            Instant::now() < deadline,
            "log missing a stage's lines:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let first_of = |stage: &str| logs.find(&format!("[{stage}]")).unwrap();
    let positions: Vec<usize> = MICRO_STAGES.iter().map(|s| first_of(s)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "stages out of order in the log:\n{logs}"
    );
    // And no gap: every line the agent spooled (exactly what it published,
    // sequence numbered) is in the control plane's log, in order.
    let spool = bed
        .dir
        .path()
        .join(format!("agents/micro/spool/{id}.jsonl"));
    let spooled = std::fs::read_to_string(&spool).unwrap();
    let mut spooled_lines = 0;
    let mut at = 0;
    for record in spooled.lines().filter(|l| !l.is_empty()) {
        let record: Value = serde_json::from_str(record).unwrap();
        let Some(line) = find_log_line(&record) else {
            continue;
        };
        spooled_lines += 1;
        match logs[at..].find(&line) {
            Some(i) => at += i + line.len(),
            None => panic!("spooled line {line:?} missing from the log after byte {at}:\n{logs}"),
        }
    }
    assert!(spooled_lines > 3, "only {spooled_lines} log lines spooled");
    assert_answers_with_branch(&bed, port, "feature/login-error").await;
    bed.stop().await;
    for node in nodes {
        node.kill().await;
    }
}

/// A production nats-server requires users: `[server] nats_user` /
/// `nats_password` reach it, and the password shows up nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_requiring_a_password_is_reached_with_the_configured_one() {
    let password = "Nats-Ext-Pw-51c9-leakcheck";
    // The server's own configuration file, outside the bed's directory, so
    // the scan below only sees what SDP wrote.
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!("authorization {{ user: sdp, password: \"{password}\" }}\n"),
    )
    .unwrap();
    let nats = start(&["-c", conf.to_str().unwrap()]).await;
    let options = Options {
        nats_credential: Some(sdp::bus_permissions::Credential::new("sdp", password)),
        ..Options::default()
    };
    let bed = Bed::start_on_nats(options, &nats.url()).await;
    let names = client_names(&nats).await;
    for name in ["sdp-control", "sdp-agent-micro", "sdp-agent-gateway"] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
    // Login is a request-reply from the control plane to the gateway
    // agent: both are through.
    bed.login_ok().await;

    let needle = password.as_bytes();
    let trace = std::fs::read(support::trace_log()).unwrap();
    assert!(
        !trace.windows(needle.len()).any(|w| w == needle),
        "NATS password in tracing output"
    );
    let hits = support::files_containing(bed.dir.path(), needle);
    assert!(hits.is_empty(), "NATS password found in {hits:?}");
    bed.stop().await;
    nats.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comma_separated_url_list_reaches_the_cluster() {
    let a = start(&[]).await;
    let b = start(&[]).await;
    let urls = format!("{},{}", a.url(), b.url());
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        sdp::stack::connect(&urls, "sdp-list-check"),
    )
    .await
    .expect("connect never returned")
    .unwrap_or_else(|e| panic!("connecting to {urls}: {e:#}"));
    client.flush().await.unwrap();
    drop(client);
    a.kill().await;
    b.kill().await;
}

/// The text of a spooled log line (`{stage, stream, line, seq, ...}`,
/// possibly inside an envelope); `None` for events.
fn find_log_line(v: &Value) -> Option<String> {
    let obj = v.as_object()?;
    if let (Some(line), Some(_), Some(_)) = (
        obj.get("line").and_then(Value::as_str),
        obj.get("stage"),
        obj.get("seq"),
    ) {
        return Some(line.to_owned());
    }
    obj.values().find_map(find_log_line)
}
