//! Test harness: a real nats-server, fake agents that speak the contract, a
//! control plane served on a loopback port, and captured tracing output.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use sdp_contract::RouteMode as ContractRouteMode;
use sdp_contract::subjects::{self, AgentOp};
use sdp_contract::{
    Ack, AgentError, AgentKeys, AuthOutcome, AuthRequest, BranchInfo, BranchesRequest, Credentials,
    DeployEnvironment, DeployEvent, DeploymentState, ErrorCode, EventKind, GatewayDeployRequest,
    LiveRoute, LiveRoutes, LogLine, LogStream, NodeKind, Presence, ReplayRequest, Reply,
    RouteTarget, RoutesApplyRequest, RoutesRequest, ServiceOutcome, ServiceRequest, encode, stages,
};
use sdp_control::{ControlConfig, ControlPlane};
use tokio_util::sync::CancellationToken;

pub const USER: &str = "achmad";
pub const BROKEN_BRANCH: &str = "broken-build";

// ---------------------------------------------------------------- tracing

static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every tracing event of the test binary, at trace level, goes to one
/// buffer the tests search for the password.
pub fn capture_tracing() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "trace,hyper=debug,hyper_util=debug,h2=info,mio=info,reqwest=debug",
            ))
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
    });
}

pub fn captured_tracing() -> String {
    String::from_utf8_lossy(&CAPTURED.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

// ---------------------------------------------------------------- nats-server

/// Debian's nats-server from the test bed.
pub struct NatsServer(sdp_testbed::NatsServer);

impl NatsServer {
    pub async fn start() -> NatsServer {
        NatsServer(
            sdp_testbed::NatsServer::start(&[])
                .await
                .expect("nats-server (Debian package nats-server) must be installed"),
        )
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.0.url()).await.unwrap()
    }
}

// ---------------------------------------------------------------- fake agents

/// A branch whose build takes a while: each message waits [`SLOW_STEP`].
pub const SLOW_BRANCH: &str = "slow";
pub const SLOW_STEP: Duration = Duration::from_millis(120);
/// A branch whose third message is "lost on the bus" the first time (kept in
/// the spool, so a replay brings it).
pub const LOSSY_BRANCH: &str = "lossy";
/// Services every fake gateway's `config.php` routes, with their OCP defaults.
pub const GATEWAY_SERVICES: [&str; 3] = ["account", "eredar", "kael"];

pub fn ocp_default(service: &str) -> String {
    format!("http://ocp.invalid/{service}")
}

/// What a fake agent saw and holds, for tests to inspect.
#[derive(Default)]
pub struct AgentState {
    /// Every message published per deployment, by sequence number.
    pub spool: HashMap<String, Vec<(u64, String, Vec<u8>)>>,
    /// Environments received, opened.
    pub environments: HashMap<String, DeployEnvironment>,
    /// Routes received with gateway deploys.
    pub deploy_routes: HashMap<String, BTreeMap<String, RouteTarget>>,
    /// Live route maps per sandbox (gateway only).
    pub live: HashMap<String, LiveRoutes>,
    /// (op, sandbox, repository) of stop/restart/remove requests.
    pub ops: Vec<(String, String, String)>,
    /// Replay requests: (deployment, from_seq).
    pub replays: Vec<(String, u64)>,
    /// Deployments whose pipeline finished (every message published).
    pub finished: Vec<String>,
    pub building: usize,
    pub max_building: usize,
}

#[derive(Clone)]
pub struct FakeAgent {
    pub node: &'static str,
    pub state: Arc<Mutex<AgentState>>,
}

impl FakeAgent {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, AgentState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Answers like a real agent: `hello`; `auth` (gateway); `deploy` with the
/// kind's pipeline (which succeeds, except on [`BROKEN_BRANCH`], where
/// `go build` fails); `stop`, `restart`, `remove`; `replay` from its spool;
/// `routes.get` and `routes.apply` (gateway).
pub async fn spawn_agent(
    nats: async_nats::Client,
    node: &'static str,
    kind: NodeKind,
    password: String,
    shutdown: CancellationToken,
) -> FakeAgent {
    let keys = Arc::new(AgentKeys::generate());
    let presence = Presence {
        node: node.into(),
        kind,
        version: "test".into(),
        public_key: keys.public_key(),
        address: "127.0.0.1".into(),
        repositories: vec![if kind == NodeKind::Gateway {
            "erangel".into()
        } else {
            "eredar".into()
        }],
        containers: vec![],
    };
    let agent = FakeAgent {
        node,
        state: Arc::default(),
    };
    let mut sub = nats.subscribe(subjects::agent_all(node)).await.unwrap();
    nats.publish(subjects::node_hello(node), encode(&presence).into())
        .await
        .unwrap();
    sdp_control::bus::round_trip(&nats, Duration::from_secs(5))
        .await
        .unwrap();
    let me = agent.clone();
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = sub.next() => match m { Some(m) => m, None => return },
            };
            let Some(reply_to) = msg.reply.clone() else {
                continue;
            };
            let op = subjects::parse_agent_op(node, &msg.subject).and_then(AgentOp::parse);
            let reply = match op {
                Some(AgentOp::Hello) => encode(&Reply::Ok(presence.clone())),
                Some(AgentOp::Auth) => {
                    let req: AuthRequest = sdp_contract::decode(&msg.payload).unwrap();
                    encode(&Reply::from(
                        check(&keys, &req.credentials, &password).map(|user| AuthOutcome { user }),
                    ))
                }
                Some(AgentOp::Deploy) => {
                    let req: GatewayDeployRequest = sdp_contract::decode(&msg.payload).unwrap();
                    match check(&keys, &req.deploy.credentials, &password) {
                        Err(e) => encode(&Reply::<Ack>::Error(e)),
                        Ok(_) => {
                            {
                                let mut st = me.lock();
                                if let Some(env) = &req.deploy.environment {
                                    let env: DeployEnvironment = keys.open(env).unwrap();
                                    st.environments.insert(req.deploy.deployment.clone(), env);
                                }
                                st.deploy_routes
                                    .insert(req.deploy.deployment.clone(), req.routes.clone());
                            }
                            tokio::spawn(run_pipeline(nats.clone(), me.clone(), kind, req));
                            encode(&Reply::Ok(Ack::accepted()))
                        }
                    }
                }
                Some(op @ (AgentOp::Stop | AgentOp::Restart | AgentOp::Remove)) => {
                    let req: ServiceRequest = sdp_contract::decode(&msg.payload).unwrap();
                    me.lock().ops.push((
                        op.as_str().to_owned(),
                        req.sandbox.clone(),
                        req.repository.clone(),
                    ));
                    let state = match op {
                        AgentOp::Stop => "exited",
                        AgentOp::Restart => "running",
                        _ => "removed",
                    };
                    if op == AgentOp::Remove && kind == NodeKind::Gateway {
                        me.lock().live.remove(&req.sandbox);
                    }
                    encode(&Reply::Ok(ServiceOutcome {
                        container: format!("sandbox-{}-{}", req.sandbox, req.repository),
                        state: state.into(),
                        network_removed: false,
                        worktree_removed: false,
                    }))
                }
                Some(AgentOp::Branches) => {
                    let req: BranchesRequest = sdp_contract::decode(&msg.payload).unwrap();
                    let branches = check(&keys, &req.credentials, &password).map(|_| {
                        ["feature/login", "main"]
                            .map(|b| BranchInfo {
                                name: b.into(),
                                commit: format!("{:040x}", b.len()),
                            })
                            .to_vec()
                    });
                    encode(&Reply::from(branches))
                }
                Some(AgentOp::Replay) => {
                    let req: ReplayRequest = sdp_contract::decode(&msg.payload).unwrap();
                    let again: Vec<(String, Vec<u8>)> = {
                        let mut st = me.lock();
                        st.replays.push((req.deployment.clone(), req.from_seq));
                        st.spool
                            .get(&req.deployment)
                            .map(|msgs| {
                                msgs.iter()
                                    .filter(|(seq, _, _)| *seq >= req.from_seq)
                                    .map(|(_, s, b)| (s.clone(), b.clone()))
                                    .collect()
                            })
                            .unwrap_or_default()
                    };
                    for (subject, bytes) in again {
                        nats.publish(subject, bytes.into()).await.unwrap();
                    }
                    encode(&Reply::Ok(Ack::accepted()))
                }
                Some(AgentOp::RoutesGet) if kind == NodeKind::Gateway => {
                    let req: RoutesRequest = sdp_contract::decode(&msg.payload).unwrap();
                    match me.lock().live.get(&req.sandbox) {
                        Some(live) => encode(&Reply::Ok(live.clone())),
                        None => encode(&Reply::<LiveRoutes>::Error(AgentError::new(
                            ErrorCode::NotFound,
                            "no gateway runs for this sandbox",
                        ))),
                    }
                }
                Some(AgentOp::RoutesApply) if kind == NodeKind::Gateway => {
                    let req: RoutesApplyRequest = sdp_contract::decode(&msg.payload).unwrap();
                    let mut st = me.lock();
                    match st.live.get_mut(&req.sandbox) {
                        Some(live) => {
                            apply_routes(live, &req.routes);
                            encode(&Reply::Ok(live.clone()))
                        }
                        None => encode(&Reply::<LiveRoutes>::Error(AgentError::new(
                            ErrorCode::NotFound,
                            "no gateway runs for this sandbox",
                        ))),
                    }
                }
                _ => encode(&Reply::<Ack>::Error(AgentError::new(
                    ErrorCode::BadRequest,
                    "op not served by this fake",
                ))),
            };
            let _ = nats.publish(reply_to, reply.into()).await;
        }
    });
    agent
}

fn apply_routes(live: &mut LiveRoutes, routes: &BTreeMap<String, RouteTarget>) {
    for (svc, target) in routes {
        let route = match target {
            RouteTarget::Sandbox { url } => LiveRoute {
                mode: ContractRouteMode::Sandbox,
                target: url.clone(),
                ocp_default: Some(ocp_default(svc)),
            },
            RouteTarget::Ocp => LiveRoute {
                mode: ContractRouteMode::Ocp,
                target: ocp_default(svc),
                ocp_default: Some(ocp_default(svc)),
            },
        };
        live.routes.insert(svc.clone(), route);
    }
}

fn check(
    keys: &AgentKeys,
    sealed: &sdp_contract::Sealed,
    password: &str,
) -> Result<String, AgentError> {
    let creds: Credentials = keys
        .open(sealed)
        .map_err(|e| AgentError::new(ErrorCode::Sealed, e.to_string()))?;
    if creds.username == USER && creds.password == password {
        Ok(creds.username.clone())
    } else {
        Err(AgentError::new(
            ErrorCode::Unauthorized,
            "git ls-remote: Authentication failed",
        ))
    }
}

struct Publisher {
    nats: async_nats::Client,
    agent: FakeAgent,
    id: String,
    seq: u64,
    slow: bool,
    lossy: bool,
}

impl Publisher {
    async fn send(&mut self, subject: String, bytes: Vec<u8>) {
        self.agent
            .lock()
            .spool
            .entry(self.id.clone())
            .or_default()
            .push((self.seq, subject.clone(), bytes.clone()));
        if self.slow {
            tokio::time::sleep(SLOW_STEP).await;
        }
        if self.lossy && self.seq == 3 {
            return;
        }
        // A control plane that is down misses this; the spool keeps it.
        let _ = self.nats.publish(subject, bytes.into()).await;
    }

    async fn event(&mut self, kind: EventKind) {
        self.seq += 1;
        let bytes = encode(&DeployEvent {
            deployment: self.id.clone(),
            seq: self.seq,
            at: Utc::now(),
            kind,
        });
        self.send(subjects::deploy_event(&self.id), bytes).await;
    }

    async fn log(&mut self, stage: &str, line: String) {
        self.seq += 1;
        let bytes = encode(&LogLine {
            deployment: self.id.clone(),
            seq: self.seq,
            at: Utc::now(),
            stage: stage.into(),
            stream: LogStream::Stdout,
            line,
        });
        self.send(subjects::deploy_log(&self.id), bytes).await;
    }
}

async fn run_pipeline(
    nats: async_nats::Client,
    agent: FakeAgent,
    kind: NodeKind,
    req: GatewayDeployRequest,
) {
    let req_routes = req.routes.clone();
    let req = req.deploy;
    {
        let mut st = agent.lock();
        st.building += 1;
        st.max_building = st.max_building.max(st.building);
    }
    let mut p = Publisher {
        nats: nats.clone(),
        agent: agent.clone(),
        id: req.deployment.clone(),
        seq: 0,
        slow: req.branch == SLOW_BRANCH,
        lossy: req.branch == LOSSY_BRANCH,
    };
    let secrets: Vec<String> = agent
        .lock()
        .environments
        .get(&req.deployment)
        .map(|e| e.secrets.values().cloned().collect())
        .unwrap_or_default();
    let pipeline: &[&str] = if kind == NodeKind::Gateway {
        &stages::GATEWAY
    } else {
        &stages::MICRO
    };
    let mut failed = false;
    for stage in pipeline {
        p.event(EventKind::StageStarted {
            stage: (*stage).into(),
        })
        .await;
        p.log(stage, format!("doing {stage} for {}", req.branch))
            .await;
        if *stage == stages::START_CONTAINER {
            // A careless program prints its secrets: the control plane must
            // still keep them out of the stored log.
            for s in &secrets {
                p.log(stage, format!("connecting with password {s}")).await;
            }
        }
        if *stage == stages::GO_BUILD && req.branch == BROKEN_BRANCH {
            p.log(stage, "./main.go:3:1: syntax error".into()).await;
            let reason = "go build exited with status 1".to_owned();
            p.event(EventKind::StageFailed {
                stage: (*stage).into(),
                reason: reason.clone(),
            })
            .await;
            p.event(EventKind::State {
                state: DeploymentState::Failed,
                reason: Some(reason),
                commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
                container: None,
            })
            .await;
            failed = true;
            break;
        }
        if *stage == stages::APPLY_ROUTES {
            let mut st = agent.lock();
            let live = st
                .live
                .entry(req.sandbox.clone())
                .or_insert_with(|| LiveRoutes {
                    sandbox: req.sandbox.clone(),
                    branch: req.branch.clone(),
                    routes: BTreeMap::new(),
                });
            let defaults: BTreeMap<String, RouteTarget> = GATEWAY_SERVICES
                .iter()
                .map(|s| ((*s).to_owned(), RouteTarget::Ocp))
                .collect();
            apply_routes(live, &defaults);
            apply_routes(live, &req_routes);
        }
        p.event(EventKind::StageCompleted {
            stage: (*stage).into(),
        })
        .await;
    }
    if !failed {
        p.event(EventKind::State {
            state: DeploymentState::Running,
            reason: None,
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            container: Some(format!("sandbox-{}-{}", req.sandbox, req.repository)),
        })
        .await;
    }
    let _ = nats.flush().await;
    let mut st = agent.lock();
    st.building -= 1;
    st.finished.push(req.deployment.clone());
}

// ---------------------------------------------------------------- harness

pub struct Harness {
    pub nats: NatsServer,
    pub data: tempfile::TempDir,
    pub base: String,
    pub http: reqwest::Client,
    pub password: String,
    pub control: ControlPlane,
    pub gateway: Option<FakeAgent>,
    pub micro: Option<FakeAgent>,
    config: ControlConfig,
    /// Stops the control plane and its HTTP server only.
    control_shutdown: CancellationToken,
    /// Stops the agents too.
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.control_shutdown.cancel();
        self.shutdown.cancel();
    }
}

pub struct Agents {
    pub gateway: bool,
    pub micro: bool,
}

impl Harness {
    pub async fn start(agents: Agents) -> Harness {
        Self::start_with(agents, |_| {}).await
    }

    pub async fn start_with(agents: Agents, tweak: impl FnOnce(&mut ControlConfig)) -> Harness {
        capture_tracing();
        let nats = NatsServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let password = format!("pw-{:016x}-secret", rand::random::<u64>());

        let mut config = ControlConfig::new(data.path().to_path_buf());
        config.max_body_bytes = 64 * 1024;
        config.request_timeout = Duration::from_secs(5);
        tweak(&mut config);
        let control_shutdown = CancellationToken::new();
        let (control, base) = start_control(&nats, config.clone(), control_shutdown.clone()).await;

        let gateway = if agents.gateway {
            Some(
                spawn_agent(
                    nats.client().await,
                    "gateway",
                    NodeKind::Gateway,
                    password.clone(),
                    shutdown.clone(),
                )
                .await,
            )
        } else {
            None
        };
        let micro = if agents.micro {
            Some(
                spawn_agent(
                    nats.client().await,
                    "micro",
                    NodeKind::Micro,
                    password.clone(),
                    shutdown.clone(),
                )
                .await,
            )
        } else {
            None
        };
        Harness {
            nats,
            data,
            base,
            http: reqwest::Client::new(),
            password,
            control,
            gateway,
            micro,
            config,
            control_shutdown,
            shutdown,
        }
    }

    /// Kills the control plane (its bus subscriptions and HTTP server stop at
    /// once) and starts a new one on the same data directory. Sessions live
    /// in memory: sign in again afterwards.
    pub async fn kill_control(&mut self) {
        self.control_shutdown.cancel();
        // Let the subscriptions go before the agents publish on.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    pub async fn start_control_again(&mut self) {
        self.control_shutdown = CancellationToken::new();
        let (control, base) = start_control(
            &self.nats,
            self.config.clone(),
            self.control_shutdown.clone(),
        )
        .await;
        self.control = control;
        self.base = base;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    pub async fn login(&self, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/session"))
            .json(&serde_json::json!({"username": USER, "password": password}))
            .send()
            .await
            .unwrap()
    }

    /// Signs in with the right password and returns the `Cookie` header value.
    pub async fn session(&self) -> String {
        let res = self.login(&self.password.clone()).await;
        assert_eq!(res.status(), 200);
        let set = res.headers()["set-cookie"].to_str().unwrap().to_owned();
        set.split(';').next().unwrap().to_owned()
    }

    pub async fn get(&self, cookie: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        cookie: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("cookie", cookie);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    pub async fn post(
        &self,
        cookie: &str,
        path: &str,
        body: serde_json::Value,
    ) -> reqwest::Response {
        self.send(reqwest::Method::POST, cookie, path, Some(body))
            .await
    }

    pub async fn put(
        &self,
        cookie: &str,
        path: &str,
        body: serde_json::Value,
    ) -> reqwest::Response {
        self.send(reqwest::Method::PUT, cookie, path, Some(body))
            .await
    }

    pub async fn delete(&self, cookie: &str, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::DELETE, cookie, path, None).await
    }

    pub async fn deploy(&self, cookie: &str, body: serde_json::Value) -> reqwest::Response {
        self.post(cookie, "/deployments", body).await
    }

    /// Creates sandbox `name` with the gateway on `main` and `services`
    /// (`{svc: {branch}}`), answering its JSON.
    pub async fn sandbox(
        &self,
        cookie: &str,
        name: &str,
        services: serde_json::Value,
    ) -> serde_json::Value {
        let res = self
            .post(
                cookie,
                "/sandboxes",
                serde_json::json!({"name": name, "gateway": {"branch": "main"}, "services": services}),
            )
            .await;
        assert_eq!(res.status(), 201);
        res.json().await.unwrap()
    }

    /// Polls the deployment until it leaves QUEUED.
    pub async fn wait_final(&self, cookie: &str, id: &str) -> serde_json::Value {
        self.wait_final_within(cookie, id, Duration::from_secs(10))
            .await
    }

    pub async fn wait_final_within(
        &self,
        cookie: &str,
        id: &str,
        limit: Duration,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let d: serde_json::Value = self
                .get(cookie, &format!("/deployments/{id}"))
                .await
                .json()
                .await
                .unwrap();
            if d["state"] != "QUEUED" {
                return d;
            }
            assert!(Instant::now() < deadline, "still queued: {d}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The password appears in no file under the data directory (database,
    /// WAL, logs) and in no tracing output.
    pub fn assert_password_nowhere(&self) {
        let mut files = 0;
        scan(self.data.path(), self.password.as_bytes(), &mut files);
        assert!(
            files >= 2,
            "expected the database and log files, saw {files}"
        );
        let traced = captured_tracing();
        assert!(
            traced.contains("signed in") && traced.contains("sdp_control"),
            "tracing output was not captured"
        );
        assert!(
            !traced.contains(&self.password),
            "the password appears in tracing output"
        );
    }

    /// `needle` appears in no file under the data directory.
    pub fn assert_nowhere_on_disk(&self, needle: &str) {
        let mut files = 0;
        scan(self.data.path(), needle.as_bytes(), &mut files);
        assert!(
            files >= 2,
            "expected the database and log files, saw {files}"
        );
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.path().to_path_buf()
    }
}

async fn start_control(
    nats: &NatsServer,
    config: ControlConfig,
    shutdown: CancellationToken,
) -> (ControlPlane, String) {
    let control = ControlPlane::start(nats.client().await, config, shutdown.clone())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sdp_control::serve(listener, control.api_router(), shutdown));
    (control, base)
}

fn scan(dir: &Path, needle: &[u8], files: &mut usize) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            scan(&path, needle, files);
        } else {
            *files += 1;
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{:?} appears in {}",
                String::from_utf8_lossy(needle),
                path.display()
            );
        }
    }
}
