//! Helpers shared by the test bed's integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sdp_agents::git::{Git, install_askpass};
use sdp_contract::Credentials;
use sdp_testbed::Demo;
use tokio_util::sync::CancellationToken;

pub const USER: &str = "alice";
pub const PASSWORD: &str = "correct horse";

/// A demo in a fresh temporary directory; the directory lives as long as the
/// returned guard.
pub async fn demo() -> (Demo, tempfile::TempDir, CancellationToken) {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let demo = Demo::create(dir.path(), USER, PASSWORD, shutdown.clone())
        .await
        .unwrap();
    (demo, dir, shutdown)
}

/// git in `dir` answering prompts as `USER`/`password`, the way the agents
/// run it.
pub fn git_as(demo: &Demo, dir: &Path, password: &str) -> Git {
    let askpass = install_askpass(&demo.root.join(".test-askpass")).unwrap();
    let creds = Credentials {
        username: USER.into(),
        password: password.into(),
    };
    Git::new("git", dir).with_credentials(&askpass, &creds)
}

pub async fn git_ok(git: &Git, args: &[&str]) -> String {
    let out = git.command(args).output().await.unwrap();
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        git.dir().display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `CGO_ENABLED=0 go build -o out .` in `src`, offline.
pub fn go_build(src: &Path, out: &Path) -> Output {
    let mut cmd = Command::new("go");
    cmd.args(["build", "-o"])
        .arg(out)
        .arg(".")
        .current_dir(src)
        .env("CGO_ENABLED", "0")
        // The samples use the standard library only: never reach a proxy.
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local");
    if std::env::var_os("HOME").is_none() && std::env::var_os("GOCACHE").is_none() {
        cmd.env("GOCACHE", std::env::temp_dir().join("sdp-testbed-gocache"));
    }
    cmd.output()
        .expect("go is installed (scripts/testbed/prereqs.sh)")
}

pub fn go_build_ok(src: &Path, out: &Path) {
    let o = go_build(src, out);
    assert!(
        o.status.success(),
        "go build in {}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap()
}

pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes its container when dropped, so a failing assertion still cleans
/// up after itself.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker run -d --name <unique> <args>`.
    pub fn run(label: &str, args: &[&str]) -> Container {
        let name = format!("sdp-testbed-{label}-{}", std::process::id());
        let _ = docker(&["rm", "-f", &name]);
        let mut all = vec!["run", "-d", "--name", &name, "--label", "sdp.testbed=1"];
        all.extend_from_slice(args);
        docker_ok(&all);
        Container { name }
    }

    /// The loopback host port a container port was published on.
    pub fn host_port(&self, port: &str) -> u16 {
        let mapping = docker_ok(&["port", &self.name, port]);
        let first = mapping.lines().next().unwrap_or_default();
        first.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn logs(&self) -> String {
        let out = docker(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

/// GETs `url` until it answers (any status) or `limit` passes.
pub async fn wait_http(url: &str, limit: Duration) -> reqwest::Response {
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        match client.get(url).timeout(Duration::from_secs(2)).send().await {
            Ok(resp) => return resp,
            Err(e) if start.elapsed() > limit => panic!("{url} did not answer in {limit:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A free loopback port (free when this returns; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn scratch(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}
