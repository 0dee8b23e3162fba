//! Restart safety and concurrency of the control plane, with real agents over
//! the bus: the control plane killed in the middle of a deployment ends it in
//! its true state with a whole log once started again; fifty sandboxes
//! created at once get fifty distinct ports each way.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sdp::stack::{connect, start_agent, start_broker, start_server};
use sdp_contract::{DeployEvent, DeploymentState, EventKind};
use sdp_control::ControlConfig;
use serde_json::{Value, json};
use support::{Bed, Options, USER, agent_configs, free_port, remove_sandbox_containers, trace_log};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A control plane as its own "process": its own tokio runtime, so killing
/// it drops every task it has (HTTP server, bus subscriptions, dispatch and
/// ingest, its NATS connection) at once, with no graceful shutdown: what
/// `kill -9` does to `sdp server`. Broker and agents live on the test's
/// runtime and go on running.
struct ControlProcess {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    /// Never cancelled: a killed process does not shut down gracefully.
    _shutdown: CancellationToken,
}

impl ControlProcess {
    async fn start(nats_url: &str, config: ControlConfig) -> ControlProcess {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("control-plane")
            .enable_all()
            .build()
            .unwrap();
        let shutdown = CancellationToken::new();
        let url = nats_url.to_owned();
        let token = shutdown.clone();
        let addr = runtime
            .spawn(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let nats = connect(&url, "sdp-control").await.unwrap();
                // The server task runs on this runtime until it is killed.
                let (_cp, _serve) = start_server(listener, nats, config, token)
                    .await
                    .expect("control plane");
                addr
            })
            .await
            .unwrap();
        ControlProcess {
            runtime: Some(runtime),
            addr,
            _shutdown: shutdown,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/api/v1{path}", self.addr)
    }

    /// Drops every task of the control plane where it stands.
    fn kill(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        // Dropping a runtime inside the test's runtime would panic.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn unique() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() as u32
}

/// A `go` that, for `go build`, waits until `gate` exists, then runs `go`
/// (the recording wrapper of [`agent_configs`]). Holds the deployment in
/// its `go build` stage for as long as the test needs; never longer than
/// two minutes, nor once `dir` is gone (a failed test left it waiting).
fn gated_go(dir: &Path, go: &Path, gate: &Path) -> PathBuf {
    let path = dir.join("gated-go");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nif [ \"$1\" = build ]; then\n  n=0\n  \
             while [ ! -e '{gate}' ] && [ -d '{dir}' ] && [ $n -lt 1200 ]; do \
             sleep 0.1; n=$((n+1)); done\nfi\nexec '{go}' \"$@\"\n",
            gate = gate.display(),
            dir = dir.display(),
            go = go.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Logs in, retrying while the control plane has not yet heard the gateway
/// agent's heartbeat (a control plane that just started knows no node).
async fn login(http: &reqwest::Client, cp: &ControlProcess, password: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http
            .post(cp.url("/session"))
            .json(&json!({"username": USER, "password": password}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        if status == 200 {
            return;
        }
        let body = r.text().await.unwrap();
        assert!(
            status == 503 && Instant::now() < deadline,
            "login: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get(http: &reqwest::Client, url: String) -> Value {
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    r.json().await.unwrap()
}

fn stage_status<'a>(d: &'a Value, stage: &str) -> &'a str {
    d["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == stage))
        .and_then(|s| s["status"].as_str())
        .unwrap_or("")
}

/// The log the control plane must have served, line for line: every log
/// line of the agent's on-disk spool, as `[<stage>] <line>`. Also checks the
/// spool itself numbers events and lines 1, 2, 3, ... with no hole.
fn expected_log(spool: &Path) -> String {
    let text = std::fs::read_to_string(spool).unwrap();
    let mut out = String::new();
    for (i, record) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(record).unwrap();
        assert_eq!(v["seq"], i as u64 + 1, "spool out of sequence: {text}");
        if let Some(line) = v["line"].as_str() {
            let stage = v["stage"].as_str().unwrap();
            for part in line.trim_end_matches(['\r', '\n']).split('\n') {
                out.push_str(&format!("[{stage}] {}\n", part.trim_end_matches('\r')));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_mid_deploy_ends_the_deployment_in_its_true_state_with_a_whole_log() {
    trace_log();
    sdp_testbed::ensure_docker().await.expect("docker engine");
    let runtime_image = sdp_testbed::runtime_image().await.expect("runtime image");
    let shutdown = CancellationToken::new();
    let dir = tempfile::Builder::new()
        .prefix("sdp-restart-")
        .tempdir()
        .unwrap();
    let root = dir.path().to_owned();
    let password = format!("Pw-{:08x}-restart", unique());
    let demo = sdp_testbed::Demo::create(&root.join("demo"), USER, &password, shutdown.clone())
        .await
        .expect("demo repositories");
    let (mut micro, gateway) = agent_configs(&root, &demo, runtime_image);
    let gate = root.join("go-build-may-run");
    micro.go_program = gated_go(&root.join("bin"), &micro.go_program, &gate);
    let spool_dir = micro.data_dir.join("spool");

    let broker_shutdown = shutdown.child_token();
    let broker = start_broker(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        broker_shutdown.clone(),
    )
    .await
    .unwrap();
    let nats_url = broker.client_url();
    let control = ControlConfig::new(root.join("control"));
    let cp = ControlProcess::start(&nats_url, control.clone()).await;
    let agents_shutdown = shutdown.child_token();
    let agents = vec![
        start_agent(&nats_url, micro, agents_shutdown.clone())
            .await
            .unwrap(),
        start_agent(&nats_url, gateway, agents_shutdown.clone())
            .await
            .unwrap(),
    ];

    let http = client();
    login(&http, &cp, &password).await;
    let sandbox = format!("r{:08x}", unique());
    let r = http
        .post(cp.url("/sandboxes"))
        .json(&json!({"name": sandbox, "gateway": {"branch": "main"},
                      "services": {"account": {"branch": "main"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let port = free_port();
    let r = http
        .post(cp.url("/deployments"))
        .json(&json!({"sandbox": sandbox, "repository": "account",
                      "branch": "main", "port": port}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let d: Value = r.json().await.unwrap();
    let id = d["id"].as_str().unwrap().to_owned();

    // Wait until the API shows `go build` running (the gate holds it there).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = get(&http, cp.url(&format!("/deployments/{id}"))).await;
        if stage_status(&d, "go build") == "running" {
            assert_eq!(d["state"], "QUEUED", "{d}");
            break;
        }
        assert_eq!(d["state"], "QUEUED", "finished before go build ran: {d}");
        assert!(Instant::now() < deadline, "go build never started: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Watch the agent's events ourselves, as the control plane will not be
    // there to.
    let tap = connect(&nats_url, "test-tap").await.unwrap();
    let mut events = tap
        .subscribe(sdp_contract::subjects::deploy_event(&id))
        .await
        .unwrap();
    tap.flush().await.unwrap();

    drop(http);
    cp.kill();
    std::fs::write(&gate, "").unwrap();

    // The agent finishes the deployment with nobody listening but us.
    let running = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(msg) = events.next().await {
            let ev: DeployEvent = sdp_contract::decode(&msg.payload).unwrap();
            if let EventKind::State { state, .. } = ev.kind
                && state.is_final()
            {
                return (state, ev.seq);
            }
        }
        panic!("the tap's subscription ended");
    })
    .await
    .expect("the agent never reported a final state");
    assert_eq!(running.0, DeploymentState::Running, "{running:?}");
    // What the killed control plane wrote stops inside `go build`: the rest
    // can only come from the agent's replay.
    let log_file = root.join(format!("control/logs/{id}.log"));
    let before = std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        before.contains("[git fetch] "),
        "the first control plane logged nothing:\n{before}"
    );
    assert!(
        !before.contains("[start container]"),
        "the killed control plane kept logging:\n{before}"
    );

    // A new control plane on the same data directory, on a new listener.
    let cp = ControlProcess::start(&nats_url, control).await;
    let http = client();
    login(&http, &cp, &password).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let d = loop {
        let d = get(&http, cp.url(&format!("/deployments/{id}"))).await;
        if d["state"] != "QUEUED" {
            break d;
        }
        assert!(Instant::now() < deadline, "still QUEUED after restart: {d}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let logs = http
        .get(cp.url(&format!("/deployments/{id}/logs")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(d["state"], "RUNNING", "{d}\n{logs}");
    assert_eq!(d["port"], port, "{d}");
    let stages: Vec<_> = d["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    let names = [
        "git fetch",
        "git checkout",
        "git pull",
        "go build",
        "start container",
    ];
    assert_eq!(stages, names.map(|n| (n, "completed")), "{d}\n{logs}");
    for stage in names {
        assert!(
            logs.contains(&format!("[{stage}] ")),
            "no [{stage}] lines in:\n{logs}"
        );
    }
    // The whole log: every line the agent spooled, in order, nothing
    // missing, nothing doubled, and no note of lost messages. The final
    // state may land before the last replayed lines; wait for them.
    let spool = spool_dir.join(format!("{id}.jsonl"));
    let expected = expected_log(&spool);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut logs = logs;
    while logs != expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        logs = http
            .get(cp.url(&format!("/deployments/{id}/logs")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    assert_eq!(logs, expected, "served log differs from the agent's spool");
    assert!(!logs.contains("[control]"), "{logs}");

    // The true state: the container runs and answers.
    let body: Value = http
        .get(format!("http://127.0.0.1:{port}/hello"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["service"], "account", "{body}");

    remove_sandbox_containers(&sandbox);
    drop(http);
    cp.kill();
    agents_shutdown.cancel();
    for agent in agents {
        agent.stopped().await;
    }
    broker_shutdown.cancel();
    broker.stopped().await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_sandbox_creations_with_real_agents_get_distinct_ports() {
    let bed = Bed::start(Options::default()).await;
    let r = bed.login(&bed.password.clone()).await;
    assert_eq!(r.status(), 200);
    let names: Vec<String> = (0..50).map(|i| format!("{}-{i:02}", bed.sandbox)).collect();

    let mut creates = tokio::task::JoinSet::new();
    for name in &names {
        let (http, url, name) = (bed.http.clone(), bed.url("/sandboxes"), name.clone());
        creates.spawn(async move {
            let r = http
                .post(url)
                .json(&json!({"name": name, "gateway": {"branch": "main"},
                              "services": {"account": {"branch": "main"}}}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (name, status, r.json::<Value>().await.unwrap_or(Value::Null))
        });
    }
    let mut gateway_ports = std::collections::BTreeSet::new();
    let mut account_ports = std::collections::BTreeSet::new();
    for (name, status, body) in creates.join_all().await {
        assert_eq!(status, 201, "{name}: {body}");
        let gw = body["gateway"]["port"].as_u64().unwrap();
        let acc = body["services"]["account"]["port"].as_u64().unwrap();
        assert!((8080..=8999).contains(&gw), "{body}");
        assert!((9001..=9999).contains(&acc), "{body}");
        gateway_ports.insert(gw);
        account_ports.insert(acc);
    }
    assert_eq!(gateway_ports.len(), 50, "{gateway_ports:?}");
    assert_eq!(account_ports.len(), 50, "{account_ports:?}");

    // What is stored says the same.
    let list = get(&bed.http, bed.url("/sandboxes")).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 50);
    let stored: std::collections::BTreeSet<_> = list
        .iter()
        .map(|s| s["gateway"]["port"].as_u64().unwrap())
        .collect();
    assert_eq!(stored, gateway_ports);

    // Deleting asks both agents to remove containers and network.
    let mut deletes = tokio::task::JoinSet::new();
    for name in &names {
        let (http, url) = (bed.http.clone(), bed.url(&format!("/sandboxes/{name}")));
        deletes.spawn(async move {
            let r = http.delete(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        });
    }
    for (status, body) in deletes.join_all().await {
        assert!(status == 200 || status == 204, "{status} {body}");
        if status == 200 {
            assert_eq!(body["warnings"], json!([]), "{body}");
        }
    }
    let list = get(&bed.http, bed.url("/sandboxes")).await;
    assert_eq!(list, json!([]));

    // Every port is free again: a new sandbox gets the lowest of each range.
    let name = format!("{}-again", bed.sandbox);
    let r = bed
        .http
        .post(bed.url("/sandboxes"))
        .json(&json!({"name": name, "gateway": {"branch": "main"},
                      "services": {"account": {"branch": "main"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["gateway"]["port"], 8080, "{body}");
    assert_eq!(body["services"]["account"]["port"], 9001, "{body}");
    let r = bed
        .http
        .delete(bed.url(&format!("/sandboxes/{name}")))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 200 || r.status() == 204);
    bed.stop().await;
}
