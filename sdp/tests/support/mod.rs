//! A whole SDP in one test process, on the real parts: the local Docker
//! engine, the offline runtime image, a git smart-HTTP server with Basic auth
//! and sample repositories (all from `sdp-testbed`), the embedded broker, and
//! the control plane and agents wired exactly as `sdp dev` wires them.
//!
//! Every git and go process the agents start goes through a wrapper that
//! records its argv, so tests can prove no secret was ever on a command line.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sdp::stack::{Stack, StackConfig};
use sdp_agents::AgentConfig;
use sdp_contract::NodeKind;
use sdp_control::ControlConfig;
use sdp_testbed::Demo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const USER: &str = "achmad";

pub struct Bed {
    pub stack: Stack,
    pub demo: Demo,
    pub password: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub argv_log: PathBuf,
    pub sandbox: String,
    shutdown: CancellationToken,
}

/// Where every test process's tracing output goes, so leak scans can read it.
pub fn trace_log() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("sdp-test-trace-{}.log", std::process::id()));
        let file = std::fs::File::create(&path).expect("trace log");
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug,hyper=info,h2=info,sqlx=info,bollard=info,async_nats=info")
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .try_init();
        path
    })
}

#[derive(Default)]
pub struct Options {
    /// Start without a gateway agent (login must fail at once).
    pub no_gateway: bool,
    /// Run the embedded broker with users and SDP's permission set, and an
    /// `ops` user with this password.
    pub bus_ops_password: Option<String>,
    /// The user external NATS servers require (see `Bed::start_on_nats`).
    pub nats_credential: Option<sdp::bus_permissions::Credential>,
}

/// `n` consecutive ports, each free on every interface right now, from a
/// random place in the unprivileged range.
pub fn free_port_block(n: u16) -> (u16, u16) {
    for _ in 0..200 {
        let first = 20_000 + (rand_u64() % 30_000) as u16;
        let last = first + n - 1;
        let free = (first..=last).all(|p| std::net::TcpListener::bind(("0.0.0.0", p)).is_ok());
        if free {
            return (first, last);
        }
    }
    panic!("no block of {n} free ports found");
}

impl Bed {
    pub async fn start(options: Options) -> Bed {
        Self::start_with(options, false, None).await
    }

    /// The same bed on external NATS servers instead of the embedded broker:
    /// the scale-out setting. `urls` goes to `sdp::stack::connect` as is
    /// (today one URL: it does not split a comma-separated list yet).
    pub async fn start_on_nats(options: Options, urls: &str) -> Bed {
        Self::start_with(options, false, Some(urls.to_owned())).await
    }

    /// A bed set up for sandbox gateways that route to sandbox services, as
    /// `sdp dev` does: the gateway agent runs the real gateway image, the
    /// micro agent publishes on every interface and advertises the Docker
    /// bridge's address (what a gateway container reaches the host on), and
    /// the control plane hands out ports from a block free on this machine,
    /// so tests running side by side do not collide.
    pub async fn start_routing() -> Bed {
        Self::start_with(Options::default(), true, None).await
    }

    async fn start_with(options: Options, routing: bool, nats_url: Option<String>) -> Bed {
        trace_log();
        sdp_testbed::ensure_docker().await.expect("docker engine");
        let runtime_image = sdp_testbed::runtime_image().await.expect("runtime image");
        let gateway_image = if routing {
            Some(sdp_testbed::gateway_image().await.expect("gateway image"))
        } else {
            None
        };
        let shutdown = CancellationToken::new();
        let dir = tempfile::Builder::new()
            .prefix("sdp-e2e-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_owned();
        let password = format!("Pw-{:016x}-leakcheck", rand_u64());
        let demo = Demo::create(&root.join("demo"), USER, &password, shutdown.clone())
            .await
            .expect("demo repositories");

        let argv_log = root.join("argv.log");
        let (mut micro, mut gateway) = agent_configs(&root, &demo, runtime_image);
        if routing {
            micro.address = sdp::dev::docker_host_ip().await.expect("docker bridge");
            micro.publish_host = "0.0.0.0".into();
        }

        let mut agents = vec![micro];
        if !options.no_gateway {
            if let Some(image) = gateway_image {
                gateway.gateway_image = image;
                gateway.publish_host = "127.0.0.1".into();
            }
            agents.push(gateway);
        }

        let mut control = ControlConfig::new(root.join("control"));
        if routing {
            let (first, last) = free_port_block(20);
            control.micro_ports = (first, first + 9);
            control.gateway_ports = (first + 10, last);
        }
        let stack = Stack::start(
            StackConfig {
                http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
                broker: match nats_url {
                    Some(_) => None,
                    None => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
                },
                nats_url,
                nats_credential: options.nats_credential.clone(),
                control,
                agents,
                bus_users: options
                    .bus_ops_password
                    .as_ref()
                    .map(|pw| sdp::stack::BusUsers {
                        agents: Vec::new(),
                        ops: Some(sdp::bus_permissions::Credential::new("ops", pw.clone())),
                    }),
            },
            shutdown.clone(),
        )
        .await
        .expect("stack");

        let http = reqwest::Client::builder()
            .cookie_store(true)
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        Bed {
            stack,
            demo,
            password,
            dir,
            http,
            argv_log,
            sandbox: format!("t{:08x}", rand_u64() as u32),
            shutdown,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.stack.base_url())
    }

    pub async fn login(&self, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/session"))
            .json(&json!({"username": USER, "password": password}))
            .send()
            .await
            .unwrap()
    }

    /// Logs in and creates the test's sandbox.
    pub async fn login_ok(&self) {
        let r = self.login(&self.password.clone()).await;
        assert_eq!(r.status(), 200, "login: {}", r.text().await.unwrap());
        let r = self
            .http
            .post(self.url("/sandboxes"))
            .json(&json!({"name": self.sandbox, "gateway": {"branch": "main"},
                          "services": {"account": {"branch": "main"}}}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(
            status == 201 || status == 200,
            "creating sandbox: {status} {}",
            r.text().await.unwrap()
        );
    }

    /// POST /deployments; returns the status and body.
    pub async fn deploy(&self, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url("/deployments"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls the public API until the deployment leaves QUEUED.
    pub async fn wait_final(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let d: Value = self
                .http
                .get(self.url(&format!("/deployments/{id}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if d["state"] != "QUEUED" {
                return d;
            }
            assert!(Instant::now() < deadline, "deployment never finished: {d}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn logs(&self, id: &str) -> String {
        self.http
            .get(self.url(&format!("/deployments/{id}/logs")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn argv(&self) -> String {
        std::fs::read_to_string(&self.argv_log).unwrap_or_default()
    }

    pub async fn stop(self) {
        remove_sandbox_containers(&self.sandbox);
        // Idle keep-alive connections would hold the server's graceful
        // shutdown open.
        drop(self.http);
        self.stack.stop().await;
        self.shutdown.cancel();
    }
}

/// A free loopback port for a service to be published on.
// Not every test binary that includes this module uses it.
#[allow(unused_imports)]
pub use sdp_testbed::free_port;

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// A shell wrapper that appends its argv to `log`, then runs the real tool.
fn recording_wrapper(bin: &Path, tool: &str, log: &Path) -> PathBuf {
    let real = which(tool);
    let path = bin.join(tool);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"{tool} $*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn which(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not on PATH"))
}

/// The test bed cleans up after itself: containers and network of a sandbox.
pub fn remove_sandbox_containers(sandbox: &str) {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=sdp.sandbox={sandbox}"),
        ])
        .output();
    if let Ok(out) = out {
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", id])
                .output();
        }
    }
    let _ = std::process::Command::new("docker")
        .args(["network", "rm", &format!("sandbox-{sandbox}")])
        .output();
}

/// Every file under `root` (following no links) that contains `needle`.
pub fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(path);
            }
        }
    }
    hits
}

/// The micro and gateway agents configured as [`Bed::start`] configures
/// them (runtime image, publishing on loopback, no gateway image), for tests
/// that compose broker, control plane and agents by hand: data under
/// `root/agents`, worktrees under `root`, git and go through recording
/// wrappers in `root/bin` that append to `root/argv.log`.
pub fn agent_configs(
    root: &Path,
    demo: &Demo,
    runtime_image: String,
) -> (AgentConfig, AgentConfig) {
    let argv_log = root.join("argv.log");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let git = recording_wrapper(&bin, "git", &argv_log);
    let go = recording_wrapper(&bin, "go", &argv_log);

    let mut micro = AgentConfig::new(NodeKind::Micro, root.join("agents/micro"));
    micro.repositories = demo.services.clone();
    micro.work_root = root.join("worktrees");
    micro.runtime_image = runtime_image;
    micro.publish_host = "127.0.0.1".into();
    micro.git_program = git.clone();
    micro.go_program = go;
    // One build cache for all test processes: the first build of the
    // standard library for CGO_ENABLED=0 is the slow part.
    micro.build_env.insert(
        "GOCACHE".into(),
        std::env::temp_dir()
            .join("sdp-test-gocache")
            .display()
            .to_string(),
    );
    micro.heartbeat_interval = Duration::from_secs(1);

    let mut gateway = AgentConfig::new(NodeKind::Gateway, root.join("agents/gateway"));
    gateway.repositories = [("erangel".to_owned(), demo.gateway.clone())].into();
    gateway.work_root = root.join("gateway-worktrees");
    gateway.git_program = git;
    gateway.heartbeat_interval = Duration::from_secs(1);
    (micro, gateway)
}
