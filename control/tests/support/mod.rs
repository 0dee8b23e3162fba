//! Test harness: a real nats-server, fake agents that speak the contract, a
//! control plane served on a loopback port, and captured tracing output.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use sdp_contract::subjects::{self, AgentOp};
use sdp_contract::{
    Ack, AgentError, AgentKeys, AuthOutcome, AuthRequest, Credentials, DeployEvent, DeployRequest,
    DeploymentState, ErrorCode, EventKind, LogLine, LogStream, NodeKind, Presence, Reply, encode,
    stages,
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

pub struct NatsServer {
    child: Child,
    pub url: String,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        let port = free_port();
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian package nats-server) must be installed");
        let server = NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url).await.unwrap()
    }
}

// ---------------------------------------------------------------- fake agents

/// Answers like a real agent: `hello`, and `auth` for the gateway, `hello`
/// and `deploy` for micro. The deploy pipeline succeeds, except on the
/// branch [`BROKEN_BRANCH`], where `go build` fails.
pub async fn spawn_agent(
    nats: async_nats::Client,
    node: &'static str,
    kind: NodeKind,
    password: String,
    shutdown: CancellationToken,
) {
    let keys = AgentKeys::generate();
    let presence = Presence {
        node: node.into(),
        kind,
        version: "test".into(),
        public_key: keys.public_key(),
        address: "127.0.0.1".into(),
        repositories: vec!["eredar".into()],
        containers: vec![],
    };
    let mut sub = nats.subscribe(subjects::agent_all(node)).await.unwrap();
    nats.publish(subjects::node_hello(node), encode(&presence).into())
        .await
        .unwrap();
    sdp_control::bus::round_trip(&nats, Duration::from_secs(5))
        .await
        .unwrap();
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
                    let req: DeployRequest = sdp_contract::decode(&msg.payload).unwrap();
                    match check(&keys, &req.credentials, &password) {
                        Err(e) => encode(&Reply::<Ack>::Error(e)),
                        Ok(_) => {
                            tokio::spawn(run_pipeline(nats.clone(), req));
                            encode(&Reply::Ok(Ack::accepted()))
                        }
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

async fn run_pipeline(nats: async_nats::Client, req: DeployRequest) {
    let id = req.deployment.clone();
    let mut seq = 0u64;
    let mut next = || {
        seq += 1;
        seq
    };
    let event = |seq: u64, kind: EventKind| {
        encode(&DeployEvent {
            deployment: id.clone(),
            seq,
            at: Utc::now(),
            kind,
        })
    };
    let log = |seq: u64, stage: &str, line: String| {
        encode(&LogLine {
            deployment: id.clone(),
            seq,
            at: Utc::now(),
            stage: stage.into(),
            stream: LogStream::Stdout,
            line,
        })
    };
    let ev_subject = subjects::deploy_event(&id);
    let log_subject = subjects::deploy_log(&id);
    for stage in stages::MICRO {
        nats.publish(
            ev_subject.clone(),
            event(
                next(),
                EventKind::StageStarted {
                    stage: stage.into(),
                },
            )
            .into(),
        )
        .await
        .unwrap();
        nats.publish(
            log_subject.clone(),
            log(next(), stage, format!("doing {stage} for {}", req.branch)).into(),
        )
        .await
        .unwrap();
        if stage == stages::GO_BUILD && req.branch == BROKEN_BRANCH {
            nats.publish(
                log_subject.clone(),
                log(next(), stage, "./main.go:3:1: syntax error".into()).into(),
            )
            .await
            .unwrap();
            let reason = "go build exited with status 1".to_owned();
            nats.publish(
                ev_subject.clone(),
                event(
                    next(),
                    EventKind::StageFailed {
                        stage: stage.into(),
                        reason: reason.clone(),
                    },
                )
                .into(),
            )
            .await
            .unwrap();
            nats.publish(
                ev_subject.clone(),
                event(
                    next(),
                    EventKind::State {
                        state: DeploymentState::Failed,
                        reason: Some(reason),
                        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
                        container: None,
                    },
                )
                .into(),
            )
            .await
            .unwrap();
            nats.flush().await.unwrap();
            return;
        }
        nats.publish(
            ev_subject.clone(),
            event(
                next(),
                EventKind::StageCompleted {
                    stage: stage.into(),
                },
            )
            .into(),
        )
        .await
        .unwrap();
    }
    nats.publish(
        ev_subject,
        event(
            next(),
            EventKind::State {
                state: DeploymentState::Running,
                reason: None,
                commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
                container: Some(format!("sandbox-{}-{}", req.sandbox, req.repository)),
            },
        )
        .into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
}

// ---------------------------------------------------------------- harness

pub struct Harness {
    pub nats: NatsServer,
    pub data: tempfile::TempDir,
    pub base: String,
    pub http: reqwest::Client,
    pub password: String,
    pub control: ControlPlane,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Agents {
    pub gateway: bool,
    pub micro: bool,
}

impl Harness {
    pub async fn start(agents: Agents) -> Harness {
        capture_tracing();
        let nats = NatsServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let password = format!("pw-{:016x}-secret", rand::random::<u64>());

        let mut config = ControlConfig::new(data.path().to_path_buf());
        config.max_body_bytes = 64 * 1024;
        config.request_timeout = Duration::from_secs(5);
        let control = ControlPlane::start(nats.client().await, config, shutdown.clone())
            .await
            .unwrap();

        if agents.gateway {
            spawn_agent(
                nats.client().await,
                "gateway",
                NodeKind::Gateway,
                password.clone(),
                shutdown.clone(),
            )
            .await;
        }
        if agents.micro {
            spawn_agent(
                nats.client().await,
                "micro",
                NodeKind::Micro,
                password.clone(),
                shutdown.clone(),
            )
            .await;
        }

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(sdp_control::serve(
            listener,
            control.api_router(),
            shutdown.clone(),
        ));
        Harness {
            nats,
            data,
            base,
            http: reqwest::Client::new(),
            password,
            control,
            shutdown,
        }
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

    pub async fn deploy(&self, cookie: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url("/deployments"))
            .header("cookie", cookie)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Polls the deployment until it leaves QUEUED.
    pub async fn wait_final(&self, cookie: &str, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
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

    pub fn data_dir(&self) -> PathBuf {
        self.data.path().to_path_buf()
    }
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
                "the password appears in {}",
                path.display()
            );
        }
    }
}
