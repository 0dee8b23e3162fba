//! Shared fixtures of the agent's integration tests: a real `nats-server`,
//! git repositories served from the file system, a 401-only "Bitbucket", a
//! runtime image, and helpers to talk to the agent over the bus.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sdp_agents::{Agent, AgentConfig, AgentHandle, NodeKind};
use sdp_contract::subjects::{self, AgentOp};
use sdp_contract::{
    Credentials, DeployEvent, DeployRequest, EventKind, LogLine, Reply, Sealed, decode, encode,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub const RUNTIME_IMAGE: &str = "sdp-runtime:busybox";
pub const PASSWORD: &str = "pa55-w0rd-secret";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A unique, DNS-safe sandbox name for one test.
pub fn sandbox_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed),
        tag
    )
}

/// Debian's nats-server on a free loopback port, killed on drop.
pub struct NatsServer {
    child: Child,
    pub url: String,
}

impl NatsServer {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/sbin/nats-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url).await.unwrap()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub const MAIN_GO: &str = r#"package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	port := os.Getenv("PORT")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", os.Getenv("GREETING"))
	})
	fmt.Println("listening on", port)
	if err := http.ListenAndServe(":"+port, nil); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
}
"#;

pub const BROKEN_GO: &str = "package main\n\nfunc main() {\n\tundefinedThing()\n}\n";

pub const CRASH_GO: &str = r#"package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Println("starting with token", os.Getenv("API_TOKEN"))
	fmt.Fprintln(os.Stderr, "fatal: cannot reach the database")
	os.Exit(3)
}
"#;

/// A bare `origin` with branches `main` (a web service), `broken` (does not
/// compile) and `crash` (exits at once), and the agent's working clone.
pub struct Repos {
    pub dir: tempfile::TempDir,
    pub origin: PathBuf,
    pub clone: PathBuf,
}

impl Repos {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("origin.git");
        let seed = dir.path().join("seed");
        let clone = dir.path().join("clones").join("svc");
        std::fs::create_dir_all(&seed).unwrap();
        git(
            dir.path(),
            &["init", "--bare", "-q", origin.to_str().unwrap()],
        );
        git(&seed, &["init", "-q"]);
        std::fs::write(seed.join("go.mod"), "module example.com/svc\n\ngo 1.19\n").unwrap();
        std::fs::write(seed.join("main.go"), MAIN_GO).unwrap();
        git(&seed, &["add", "."]);
        git(&seed, &["commit", "-q", "-m", "service"]);
        git(&seed, &["branch", "-M", "main"]);
        for (branch, source) in [("broken", BROKEN_GO), ("crash", CRASH_GO)] {
            git(&seed, &["checkout", "-q", "-b", branch, "main"]);
            std::fs::write(seed.join("main.go"), source).unwrap();
            git(&seed, &["commit", "-q", "-am", branch]);
        }
        git(&seed, &["checkout", "-q", "main"]);
        git(
            &seed,
            &["remote", "add", "origin", origin.to_str().unwrap()],
        );
        git(&seed, &["push", "-q", "origin", "main", "broken", "crash"]);
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
        Repos { dir, origin, clone }
    }

    pub fn head_of(&self, branch: &str) -> String {
        git(
            &self.origin,
            &["rev-parse", &format!("refs/heads/{branch}")],
        )
    }
}

/// An HTTP "Bitbucket" that refuses every request with 401, as Bitbucket
/// does for a wrong password. Returns its base URL.
pub async fn rejecting_remote() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"bb\"\r\n\
                          Content-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    format!("http://127.0.0.1:{port}/scm/svc.git")
}

/// A git wrapper recording every argv (one line each) and its environment's
/// askpass variables, then running the real git.
pub fn recording_git(dir: &Path) -> (PathBuf, PathBuf) {
    let log = dir.join("git-argv.log");
    let script = dir.join("git-recording.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec git \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (script, log)
}

/// Makes sure the runtime image exists: built by the testbed's script when
/// the workspace has it, else imported here from the host's static busybox.
pub fn ensure_runtime_image() {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/testbed/runtime-image.sh");
    if script.exists() {
        let status = Command::new("bash")
            .arg(&script)
            .arg(RUNTIME_IMAGE)
            .status()
            .unwrap();
        assert!(status.success(), "{} failed", script.display());
    } else {
        import_busybox_image();
    }
    *done = true;
}

fn import_busybox_image() {
    let present = Command::new("docker")
        .args(["image", "inspect", RUNTIME_IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if present {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -c . | docker import - {RUNTIME_IMAGE}",
            root.display()
        ))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "docker import of the runtime image failed"
    );
}

/// Removes a test sandbox's containers and network, even when the test fails.
pub struct SandboxCleanup(pub String);

impl Drop for SandboxCleanup {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=sdp.sandbox={}", self.0),
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &format!("sandbox-{}", self.0)])
            .output();
    }
}

/// One agent under test, with its directories.
pub struct TestAgent {
    pub nats: async_nats::Client,
    pub node: String,
    pub public_key: String,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    handle: Option<AgentHandle>,
}

pub fn config(kind: NodeKind, data: &Path, repos: &Repos) -> AgentConfig {
    let mut config = AgentConfig::new(kind, data.join("data"));
    config.work_root = data.join("work");
    config.repositories = BTreeMap::from([("svc".to_owned(), repos.clone.clone())]);
    config.runtime_image = RUNTIME_IMAGE.to_owned();
    config.publish_host = "127.0.0.1".to_owned();
    config.heartbeat_interval = Duration::from_millis(200);
    config.git_timeout = Duration::from_secs(30);
    // One compiled standard library for every test run on this machine.
    config.build_env.insert(
        "GOCACHE".to_owned(),
        std::env::temp_dir()
            .join("sdp-agents-test-gocache")
            .display()
            .to_string(),
    );
    config
}

impl TestAgent {
    pub async fn start(nats: &NatsServer, config: AgentConfig, dir: tempfile::TempDir) -> Self {
        let client = nats.client().await;
        let shutdown = CancellationToken::new();
        let node = config.node.clone();
        let handle = Agent::start(client.clone(), config, shutdown.clone())
            .await
            .expect("agent starts");
        TestAgent {
            nats: client,
            node,
            public_key: handle.public_key(),
            dir,
            shutdown,
            handle: Some(handle),
        }
    }

    pub fn seal<T: Serialize>(&self, value: &T) -> Sealed {
        Sealed::seal(&self.public_key, value).unwrap()
    }

    pub fn credentials(&self) -> Sealed {
        self.seal(&Credentials {
            username: "achmad".into(),
            password: PASSWORD.into(),
        })
    }

    /// Sends `body` to `op` and decodes the reply.
    pub async fn request<T: DeserializeOwned>(&self, op: AgentOp, body: &[u8]) -> Reply<T> {
        let reply = tokio::time::timeout(
            Duration::from_secs(60),
            self.nats
                .request(subjects::agent_op(&self.node, op), body.to_vec().into()),
        )
        .await
        .expect("reply in time")
        .expect("request succeeds");
        decode(&reply.payload).expect("a decodable reply")
    }

    pub async fn call<B: Serialize, T: DeserializeOwned>(&self, op: AgentOp, body: &B) -> Reply<T> {
        self.request(op, &encode(body)).await
    }

    pub fn deploy_request(
        &self,
        id: &str,
        sandbox: &str,
        branch: &str,
        port: u16,
    ) -> DeployRequest {
        DeployRequest {
            deployment: id.to_owned(),
            sandbox: sandbox.to_owned(),
            repository: "svc".to_owned(),
            branch: branch.to_owned(),
            port,
            credentials: self.credentials(),
            environment: None,
        }
    }

    /// Sends a deployment and collects its messages until its final state.
    pub async fn deploy(&self, request: &DeployRequest) -> Deployment {
        self.deploy_body(&request.deployment, request).await
    }

    /// Sends any deploy body (a gateway's carries routes) for deployment
    /// `id` and collects its messages until its final state.
    pub async fn deploy_body<B: Serialize>(&self, id: &str, body: &B) -> Deployment {
        let mut sub = self
            .nats
            .subscribe(format!("sdp.deploy.{id}.*"))
            .await
            .unwrap();
        self.nats.flush().await.unwrap();
        let ack: Reply<sdp_contract::Ack> = self.call(AgentOp::Deploy, body).await;
        assert!(ack.into_result().expect("deploy is acknowledged").accepted);
        collect(&mut sub, Duration::from_secs(300)).await
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle.stopped())
                .await
                .expect("agent stops in time");
        }
    }
}

/// A deployment's messages, in arrival order.
#[derive(Debug, Default)]
pub struct Deployment {
    pub events: Vec<DeployEvent>,
    pub logs: Vec<LogLine>,
    /// Sequence numbers in arrival order, both streams.
    pub seqs: Vec<u64>,
}

impl Deployment {
    pub fn final_state(&self) -> &EventKind {
        &self.events.last().expect("some event").kind
    }

    /// `started:git fetch`, `completed:git fetch`, ... in order.
    pub fn stage_trail(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| match &e.kind {
                EventKind::StageStarted { stage } => format!("started:{stage}"),
                EventKind::StageCompleted { stage } => format!("completed:{stage}"),
                EventKind::StageFailed { stage, .. } => format!("failed:{stage}"),
                EventKind::State { state, .. } => format!("state:{}", state.as_str()),
            })
            .collect()
    }

    pub fn log_text(&self) -> String {
        self.logs
            .iter()
            .map(|l| format!("[{}] {}\n", l.stage, l.line))
            .collect()
    }
}

pub async fn collect(sub: &mut async_nats::Subscriber, limit: Duration) -> Deployment {
    let mut d = Deployment::default();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let msg = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("no final state in time; so far:\n{}", d.log_text()))
            .expect("subscription open");
        if msg.subject.ends_with(".event") {
            let event: DeployEvent = decode(&msg.payload).unwrap();
            d.seqs.push(event.seq);
            let done = matches!(&event.kind, EventKind::State { state, .. } if state.is_final());
            d.events.push(event);
            if done {
                return d;
            }
        } else {
            let line: LogLine = decode(&msg.payload).unwrap();
            d.seqs.push(line.seq);
            d.logs.push(line);
        }
    }
}
