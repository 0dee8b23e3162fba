//! The Docker engine and the two images SDP runs, built offline.

use std::process::Stdio;

use tokio::sync::OnceCell;

use crate::{TestbedError, embedded, tail};

/// Stands in for the company's `alpine:3.20`: busybox-static, `/bin/sh`.
pub const RUNTIME_IMAGE: &str = "sdp-runtime:busybox";
/// Stands in for the company's `php:8.3-apache`: Apache + mod_php + php-curl.
pub const GATEWAY_IMAGE: &str = "sdp-gateway:bookworm";
/// Where the erangel repository is bind-mounted in a gateway container.
pub const GATEWAY_MOUNT: &str = "/var/www/html/erangel";
/// The URL prefix the mounted repository is served under.
pub const GATEWAY_PREFIX: &str = "/erangel/";
/// Environment variable holding Apache's `Listen` argument in the gateway
/// image (default `80`; e.g. `127.0.0.1:18080` with `--network host`).
pub const GATEWAY_LISTEN_ENV: &str = "SDP_LISTEN";

/// How much of a failed script's output an error carries.
const OUTPUT_TAIL: usize = 2000;

/// A script failure in a form that can be cached and handed to every later
/// caller in the process.
#[derive(Debug, Clone)]
struct Failure {
    script: String,
    status: String,
    output: String,
}

impl From<Failure> for TestbedError {
    fn from(f: Failure) -> Self {
        TestbedError::Script {
            script: f.script,
            status: f.status,
            output: f.output,
        }
    }
}

/// Runs `scripts/testbed/<name>` with bash and returns its stdout.
async fn run_script(name: &str, args: &[&str]) -> Result<String, Failure> {
    let failure = |status: String, output: String| Failure {
        script: name.to_owned(),
        status,
        output,
    };
    let root = embedded::materialize().map_err(|e| failure("not started".into(), e.to_string()))?;
    let path = embedded::script(&root, name);
    tracing::info!(script = name, ?args, "running test bed script");
    let out = tokio::process::Command::new("bash")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| failure("not started".into(), format!("bash: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines() {
        tracing::info!(script = name, "{line}");
    }
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&stderr);
        return Err(failure(out.status.to_string(), tail(&output, OUTPUT_TAIL)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs scripts/testbed/docker.sh once per process (later calls reuse the
/// result, a failure included, so a machine without Docker fails every test
/// at once instead of each waiting for an engine).
pub async fn ensure_docker() -> Result<(), TestbedError> {
    static DOCKER: OnceCell<Result<(), Failure>> = OnceCell::const_new();
    DOCKER
        .get_or_init(|| async { run_script("docker.sh", &[]).await.map(|_| ()) })
        .await
        .clone()
        .map_err(TestbedError::from)
}

/// Builds (or reuses) the runtime image; returns its tag.
pub async fn runtime_image() -> Result<String, TestbedError> {
    static IMAGE: OnceCell<Result<String, Failure>> = OnceCell::const_new();
    ensure_docker().await?;
    IMAGE
        .get_or_init(|| async {
            run_script("runtime-image.sh", &[RUNTIME_IMAGE])
                .await
                .map(|_| RUNTIME_IMAGE.to_owned())
        })
        .await
        .clone()
        .map_err(TestbedError::from)
}

/// Builds (or reuses) the Apache+mod_php gateway image; returns its tag.
///
/// The first build on a machine runs debootstrap against the Debian mirror
/// apt uses and takes a few minutes; later calls find the image by tag.
pub async fn gateway_image() -> Result<String, TestbedError> {
    static IMAGE: OnceCell<Result<String, Failure>> = OnceCell::const_new();
    ensure_docker().await?;
    IMAGE
        .get_or_init(|| async {
            run_script("gateway-image.sh", &[GATEWAY_IMAGE])
                .await
                .map(|_| GATEWAY_IMAGE.to_owned())
        })
        .await
        .clone()
        .map_err(TestbedError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_script_reports_its_output() {
        // sample-repos.sh without arguments prints its usage and exits 2:
        // a cheap way to see a real failure flow through.
        let err = TestbedError::from(run_script("sample-repos.sh", &[]).await.unwrap_err());
        let msg = err.to_string();
        assert!(
            msg.starts_with("sample-repos.sh failed (exit status: 2)"),
            "{msg}"
        );
        assert!(msg.contains("usage:"), "{msg}");
    }

    #[tokio::test]
    async fn a_missing_script_is_an_error_not_a_panic() {
        let err = run_script("no-such-script.sh", &[]).await.unwrap_err();
        assert_eq!(err.script, "no-such-script.sh");
        assert_ne!(err.status, "exit status: 0");
    }
}
