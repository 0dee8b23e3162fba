//! The real parts SDP's tests and `sdp dev` run against, started on this
//! machine and offline (SPEC §6): no registry can be reached, so every part
//! is built from Debian packages or from sources kept in this repository.
//!
//! | part | here |
//! |---|---|
//! | Docker engine | [`ensure_docker`]: Debian's `docker.io`, started if none answers (`scripts/testbed/docker.sh`) |
//! | runtime image (`alpine:3.20`) | [`runtime_image`]: a busybox-static rootfs, `docker import`ed ([`RUNTIME_IMAGE`]) |
//! | gateway image (`php:8.3-apache`) | [`gateway_image`]: Apache + mod_php + php-curl by debootstrap, `docker import`ed ([`GATEWAY_IMAGE`]) |
//! | Bitbucket | [`GitServer`]: `git http-backend` behind Basic auth on loopback |
//! | repositories | [`Demo`]: sample Go services `account`, `payment`, `user` and the PHP gateway `erangel`, with working clones laid out as on the VMs |
//!
//! The shell scripts and sample sources are embedded in this crate and
//! written to a content-addressed directory under the system temp dir
//! before use ([`materialize`]), so `sdp dev` works from any directory.
//!
//! # The gateway image
//!
//! DocumentRoot is `/var/www/html` with `AllowOverride All` and mod_rewrite;
//! the erangel repository is bind-mounted at [`GATEWAY_MOUNT`]
//! (`/var/www/html/erangel`), so it is served under `/erangel/` and its own
//! `.htaccess` sends every request to its `index.php`. Apache listens on
//! `$SDP_LISTEN` ([`GATEWAY_LISTEN_ENV`], an Apache `Listen` argument,
//! default `80`). Reload gracefully with
//! `docker exec <container> apachectl graceful` (or
//! `docker kill -s USR1 <container>`: Apache is PID 1).
//!
//! A container on Docker's bridge cannot reach the host's loopback. To
//! proxy to upstreams on the host, run the gateway with `--network host`
//! and `-e SDP_LISTEN=127.0.0.1:<port>` (what this crate's tests do), so
//! `_url` entries such as `http://127.0.0.1:9001` work unchanged. The
//! sample's OCP defaults (`http://ocp-<svc>.example.invalid`) can be pointed
//! at a local stand-in with `--add-host ocp-<svc>.example.invalid:<ip>`
//! instead of DNS.

mod demo;
mod embedded;
mod git_server;
mod images;
mod nats_server;

use std::path::PathBuf;

pub use demo::{Demo, SERVICES};
pub use embedded::materialize;
pub use git_server::GitServer;
pub use images::{
    GATEWAY_IMAGE, GATEWAY_LISTEN_ENV, GATEWAY_MOUNT, GATEWAY_PREFIX, RUNTIME_IMAGE, ensure_docker,
    gateway_image, runtime_image,
};
pub use nats_server::{NATS_SERVER, NatsServer, free_port};

/// Everything that can go wrong while setting up the test bed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A script of `scripts/testbed/` failed; `output` is the tail of what
    /// it printed.
    #[error("{script} failed ({status}): {output}")]
    Script {
        script: String,
        status: String,
        output: String,
    },
    #[error("git {args} failed in {dir}: {output}")]
    Git {
        args: String,
        dir: PathBuf,
        output: String,
    },
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("no repository named {0:?} in this demo")]
    UnknownRepository(String),
    #[error("nats-server did not start: {0}")]
    NatsServer(String),
}

impl TestbedError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestbedError {
        let context = context.into();
        move |source| TestbedError::Io { context, source }
    }
}

/// The last `max` bytes of a process's output, on a char boundary: enough
/// to see why a script failed without flooding an error message.
pub(crate) fn tail(text: &str, max: usize) -> String {
    let text = text.trim_end();
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("short\n", 10), "short");
        assert_eq!(tail("abcdef", 3), "…def");
        // 'é' is two bytes: cutting inside it must move forward, not panic.
        assert_eq!(tail("aé", 1), "…");
        assert_eq!(tail("xéy", 2), "…y");
    }

    #[test]
    fn errors_read_clearly() {
        let e = TestbedError::Script {
            script: "docker.sh".into(),
            status: "exit status: 1".into(),
            output: "no engine".into(),
        };
        assert_eq!(
            e.to_string(),
            "docker.sh failed (exit status: 1): no engine"
        );
    }
}
