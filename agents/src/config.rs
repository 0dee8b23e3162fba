//! How an agent is set up: its node name and kind, the repositories it
//! serves, where it keeps worktrees and its own data, and the images and
//! programs it runs. Everything has a default fit for a single VM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sdp_contract::{NodeKind, ServiceName};

use crate::error::Error;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name in subjects; defaults to the kind ("micro", "gateway").
    pub node: String,
    pub kind: NodeKind,
    /// Host other machines reach this node's published ports on.
    pub address: String,
    /// Repository name → host path of its working clone. No discovery.
    pub repositories: BTreeMap<String, PathBuf>,
    /// Worktrees live at `{work_root}/{sandbox}/{repository}`.
    pub work_root: PathBuf,
    /// `agent.key`, the askpass helper, the event spool, build caches.
    pub data_dir: PathBuf,
    pub runtime_image: String,
    pub gateway_image: String,
    /// Port the service listens on inside its container (passed as `PORT`).
    pub container_port: u16,
    /// Host IP published ports bind to.
    pub publish_host: String,
    pub git_program: PathBuf,
    pub go_program: PathBuf,
    /// Environment of `go build`, on top of HOME and PATH.
    pub build_env: BTreeMap<String, String>,
    /// Repository whose remote `auth` runs `git ls-remote` against;
    /// defaults to the first repository.
    pub auth_repository: Option<String>,
    pub heartbeat_interval: Duration,
    /// Bound on any single git command.
    pub git_timeout: Duration,
    /// Bound on one `go build`.
    pub build_timeout: Duration,
    /// How long a started container may take to accept connections.
    pub start_timeout: Duration,
    /// Gateway: the file holding the `$config['_url']` map, relative to
    /// the repository.
    pub gateway_config_file: PathBuf,
    /// Gateway: where the worktree is mounted in the gateway container.
    pub gateway_mount: String,
    /// Gateway: the URL prefix the gateway answers under.
    pub gateway_url_prefix: String,
    /// Gateway: the port the web server listens on inside the container.
    pub gateway_container_port: u16,
    /// Gateway: the graceful reload, run in the container.
    pub reload_command: Vec<String>,
    /// Gateway: `php` on the host for `php -l`; unset, `php -l` runs in
    /// the gateway container, the PHP that serves the file.
    pub host_php: Option<PathBuf>,
    pub composer_program: PathBuf,
    pub composer_timeout: Duration,
}

impl AgentConfig {
    pub fn new(kind: NodeKind, data_dir: PathBuf) -> Self {
        let build_env = [
            ("CGO_ENABLED", "0"),
            // The VMs are offline: a module that is not vendored or already
            // in the module cache must fail, not hang on a proxy.
            ("GOPROXY", "off"),
            ("GOFLAGS", "-mod=mod"),
            ("GOTOOLCHAIN", "local"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        AgentConfig {
            node: kind.as_str().to_owned(),
            kind,
            address: "127.0.0.1".to_owned(),
            repositories: BTreeMap::new(),
            work_root: data_dir.join("worktrees"),
            data_dir,
            runtime_image: "alpine:3.20".to_owned(),
            gateway_image: "php:8.3-apache".to_owned(),
            container_port: 8080,
            publish_host: "0.0.0.0".to_owned(),
            git_program: PathBuf::from("git"),
            go_program: PathBuf::from("go"),
            build_env,
            auth_repository: None,
            heartbeat_interval: Duration::from_secs(10),
            git_timeout: Duration::from_secs(120),
            build_timeout: Duration::from_secs(600),
            start_timeout: Duration::from_secs(15),
            gateway_config_file: PathBuf::from("application/config/production/config.php"),
            gateway_mount: "/var/www/html/erangel".to_owned(),
            gateway_url_prefix: "/erangel/".to_owned(),
            gateway_container_port: 80,
            reload_command: ["apachectl", "-k", "graceful"].map(str::to_owned).to_vec(),
            host_php: None,
            composer_program: PathBuf::from("composer"),
            composer_timeout: Duration::from_secs(600),
        }
    }

    /// The repository `auth` checks credentials against.
    pub fn auth_repository(&self) -> Option<(&str, &Path)> {
        match &self.auth_repository {
            Some(name) => self
                .repositories
                .get_key_value(name)
                .map(|(n, p)| (n.as_str(), p.as_path())),
            None => self
                .repositories
                .iter()
                .next()
                .map(|(n, p)| (n.as_str(), p.as_path())),
        }
    }

    /// Refuses settings that would put unchecked text into subjects, paths
    /// or container names, and makes paths absolute: git runs in other
    /// directories, so a relative path would resolve somewhere else.
    pub(crate) fn checked(mut self) -> Result<Self, Error> {
        if self.node.is_empty()
            || !self
                .node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::Config(format!(
                "node name {:?} must be letters, digits, '-' or '_'",
                self.node
            )));
        }
        for name in self.repositories.keys() {
            ServiceName::parse(name).map_err(|e| Error::Config(e.to_string()))?;
        }
        if let Some(name) = self
            .auth_repository
            .as_ref()
            .filter(|name| !self.repositories.contains_key(*name))
        {
            return Err(Error::Config(format!(
                "auth repository {name:?} is not among the configured repositories"
            )));
        }
        if self.container_port == 0 || self.gateway_container_port == 0 {
            return Err(Error::Config("container ports must not be 0".into()));
        }
        let config_file = &self.gateway_config_file;
        if config_file.as_os_str().is_empty()
            || !config_file
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::Config(format!(
                "gateway config file {} must be a path inside the repository",
                config_file.display()
            )));
        }
        if !self.gateway_mount.starts_with('/') {
            return Err(Error::Config(format!(
                "gateway mount {:?} must be an absolute path",
                self.gateway_mount
            )));
        }
        if self.reload_command.is_empty() {
            return Err(Error::Config("the reload command must not be empty".into()));
        }
        self.data_dir = absolute(&self.data_dir)?;
        self.work_root = absolute(&self.work_root)?;
        for path in self.repositories.values_mut() {
            *path = absolute(path)?;
        }
        Ok(self)
    }

    /// `go build`'s cache, unless the build environment names one.
    pub fn go_cache(&self) -> PathBuf {
        self.build_env
            .get("GOCACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.data_dir.join("go-build-cache"))
    }

    /// Where readiness probes connect: the published address, or loopback
    /// when ports are published on every interface.
    pub fn probe_host(&self) -> &str {
        match self.publish_host.as_str() {
            "0.0.0.0" | "" => "127.0.0.1",
            "::" => "::1",
            h => h,
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(Error::io("cannot resolve path", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_a_single_vm() {
        let c = AgentConfig::new(NodeKind::Micro, PathBuf::from("/var/lib/sdp"));
        assert_eq!(c.node, "micro");
        assert_eq!(c.address, "127.0.0.1");
        assert_eq!(c.runtime_image, "alpine:3.20");
        assert_eq!(c.gateway_image, "php:8.3-apache");
        assert_eq!(c.container_port, 8080);
        assert_eq!(c.publish_host, "0.0.0.0");
        assert_eq!(c.git_program, PathBuf::from("git"));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.git_timeout, Duration::from_secs(120));
        assert_eq!(c.build_env["CGO_ENABLED"], "0");
        assert_eq!(c.build_env["GOPROXY"], "off");
        assert_eq!(c.build_env["GOFLAGS"], "-mod=mod");
        assert_eq!(c.build_env["GOTOOLCHAIN"], "local");
        assert_eq!(c.go_cache(), PathBuf::from("/var/lib/sdp/go-build-cache"));
        assert_eq!(c.probe_host(), "127.0.0.1");
        assert_eq!(
            c.gateway_config_file,
            PathBuf::from("application/config/production/config.php")
        );
        assert_eq!(c.gateway_mount, "/var/www/html/erangel");
        assert_eq!(c.gateway_url_prefix, "/erangel/");
        assert_eq!(c.reload_command, ["apachectl", "-k", "graceful"]);
        let g = AgentConfig::new(NodeKind::Gateway, PathBuf::from("/d"));
        assert_eq!(g.node, "gateway");
    }

    #[test]
    fn auth_repository_defaults_to_the_first() {
        let mut c = AgentConfig::new(NodeKind::Gateway, PathBuf::from("/d"));
        assert!(c.auth_repository().is_none());
        c.repositories.insert("zeta".into(), "/z".into());
        c.repositories.insert("alpha".into(), "/a".into());
        assert_eq!(c.auth_repository().unwrap().0, "alpha");
        c.auth_repository = Some("zeta".into());
        assert_eq!(c.auth_repository().unwrap().1, Path::new("/z"));
    }

    #[test]
    fn unsafe_settings_are_refused() {
        let mut c = AgentConfig::new(NodeKind::Micro, PathBuf::from("/d"));
        c.node = "a.b".into();
        assert!(c.clone().checked().is_err());
        c.node = "micro".into();
        c.repositories.insert("Bad_Name".into(), "/x".into());
        assert!(c.clone().checked().is_err());
        c.repositories.clear();
        c.auth_repository = Some("missing".into());
        assert!(c.clone().checked().is_err());
        c.auth_repository = None;
        c.gateway_config_file = "../outside.php".into();
        assert!(c.clone().checked().is_err());
        c.gateway_config_file = "/abs.php".into();
        assert!(c.clone().checked().is_err());
        c.gateway_config_file = "application/config.php".into();
        c.data_dir = "relative".into();
        let c = c.checked().unwrap();
        assert!(c.data_dir.is_absolute());
    }
}
