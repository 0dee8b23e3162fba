//! The gateway deployment pipeline: `git reset` → `git fetch` →
//! `git checkout` → `git pull` → `composer install` (best effort) →
//! `start container` → `apply routes`, ending with a graceful reload.
//!
//! The OCP defaults are taken from the pristine `config.php` right after the
//! pull, before anything patches it, and recorded per branch. The route
//! overrides are then written through a staged copy that PHP must accept
//! before it replaces the file ([`crate::routes::file`]): whatever happens,
//! the served file stays valid.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sdp_contract::stages::{APPLY_ROUTES, COMPOSER_INSTALL, GIT_FETCH, GIT_RESET, START_CONTAINER};
use sdp_contract::{
    BranchName, DeployEnvironment, LiveRoute, LiveRoutes, RouteMode, RouteTarget, SandboxName,
    ServiceName,
};
use tokio::sync::OwnedMutexGuard;

use crate::agent::Shared;
use crate::config::AgentConfig;
use crate::docker::{ContainerSpec, labels};
use crate::environment;
use crate::pipeline::{Deployment, Run, Stopped, git_failure};
use crate::process::{Process, ProcessError};
use crate::routes::defaults::Routes;
use crate::routes::file::{self, Rewritten};
use crate::routes::lint::Linter;
use crate::routes::patcher::Change;
use crate::routes::{self, patcher};
use crate::worktree;

/// The service label of gateway containers, and their name's suffix.
pub const GATEWAY_SERVICE: &str = "gateway";
/// Bound on the graceful reload.
const RELOAD_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

pub fn container_name(sandbox: &SandboxName) -> String {
    format!("sandbox-{sandbox}-{GATEWAY_SERVICE}")
}

/// One sandbox's gateway: its container and the files it serves.
#[derive(Debug, Clone)]
pub(crate) struct SandboxGateway {
    pub container: String,
    pub worktree: PathBuf,
    pub config_file: PathBuf,
}

impl SandboxGateway {
    pub fn new(config: &AgentConfig, sandbox: &SandboxName, repository: &ServiceName) -> Self {
        let worktree = worktree::path(&config.work_root, sandbox, repository);
        SandboxGateway {
            container: container_name(sandbox),
            config_file: worktree.join(&config.gateway_config_file),
            worktree,
        }
    }

    fn linter(&self, config: &AgentConfig) -> Linter {
        match &config.host_php {
            Some(php) => Linter::Host { php: php.clone() },
            None => Linter::Container {
                container: self.container.clone(),
                host_root: self.worktree.clone(),
                mount: config.gateway_mount.clone(),
            },
        }
    }

    /// Patches the live file (checked by `php -l`), and reloads the web
    /// server gracefully when the file changed.
    pub async fn apply(
        &self,
        shared: &Shared,
        changes: &BTreeMap<String, Change>,
    ) -> Result<Rewritten, String> {
        let linter = self.linter(&shared.config);
        let docker = &shared.docker;
        let done = file::rewrite(&self.config_file, changes, |staged| async move {
            linter.check(docker, &staged).await
        })
        .await
        .map_err(|e| e.to_string())?;
        if done.changed {
            self.reload(shared).await?;
        }
        Ok(done)
    }

    pub async fn reload(&self, shared: &Shared) -> Result<(), String> {
        let cmd: Vec<&str> = shared
            .config
            .reload_command
            .iter()
            .map(String::as_str)
            .collect();
        let out = shared
            .docker
            .exec(&self.container, &cmd, RELOAD_LIMIT)
            .await
            .map_err(|e| format!("graceful reload failed: {e}"))?;
        if out.success() {
            return Ok(());
        }
        let said = out
            .lines
            .iter()
            .map(|(_, l)| l.trim())
            .find(|l| !l.is_empty())
            .unwrap_or("no output");
        Err(format!(
            "graceful reload ({}) failed: {said}",
            shared.config.reload_command.join(" ")
        ))
    }
}

/// The changes `routes` asks for. A service routed to OCP gets the
/// branch's default back, or leaves the map when the branch does not route
/// it: either way the file says what the branch's own file says.
pub(crate) fn wanted(
    routes: &BTreeMap<String, RouteTarget>,
    defaults: &Routes,
) -> Result<BTreeMap<String, Change>, String> {
    let mut out = BTreeMap::new();
    for (service, target) in routes {
        check_service_key(service)?;
        match target {
            RouteTarget::Sandbox { url } => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!(
                        "the URL for '{service}' must start with http:// or https://"
                    ));
                }
                patcher::check_url(service, url).map_err(|e| e.to_string())?;
                out.insert(service.clone(), Change::Set(url.clone()));
            }
            RouteTarget::Ocp => {
                let change = match defaults.get(service) {
                    Some(url) => Change::Set(url.clone()),
                    None => Change::Remove,
                };
                out.insert(service.clone(), change);
            }
        }
    }
    Ok(out)
}

/// Route map keys are written into PHP source; they are encoded there,
/// but a control character or a huge key is a mistake, not a service.
fn check_service_key(service: &str) -> Result<(), String> {
    if service.is_empty() || service.len() > 100 || service.chars().any(char::is_control) {
        let shown: String = service.chars().take(40).collect();
        return Err(format!("invalid service name {shown:?} in the routes"));
    }
    Ok(())
}

/// The live map as the control plane shows it.
pub(crate) fn live_routes(
    sandbox: &str,
    branch: &str,
    live: Routes,
    defaults: &Routes,
) -> LiveRoutes {
    let routes = live
        .into_iter()
        .map(|(service, target)| {
            let ocp_default = defaults.get(&service).cloned();
            let mode = if ocp_default.as_deref() == Some(target.as_str()) {
                RouteMode::Ocp
            } else {
                RouteMode::Sandbox
            };
            (
                service,
                LiveRoute {
                    mode,
                    target,
                    ocp_default,
                },
            )
        })
        .collect();
    LiveRoutes {
        sandbox: sandbox.to_owned(),
        branch: branch.to_owned(),
        routes,
    }
}

/// What `start container` needs.
struct Target<'a> {
    deployment: &'a str,
    sandbox: &'a SandboxName,
    repository: &'a ServiceName,
    branch: &'a BranchName,
    commit: &'a str,
    port: u16,
    gateway: &'a SandboxGateway,
    environment: &'a DeployEnvironment,
}

impl Run<'_> {
    pub(crate) async fn gateway_stages(&mut self, deployment: Deployment) -> Result<(), Stopped> {
        let Deployment {
            id,
            sandbox,
            repository,
            branch,
            port,
            clone,
            credentials,
            environment,
            routes,
        } = deployment;
        let shared = self.shared;
        let gateway = SandboxGateway::new(&shared.config, &sandbox, &repository);
        let worktree = gateway.worktree.clone();

        self.begin(GIT_RESET).await;
        let r = self.reset(&sandbox, &repository, &clone, &worktree).await;
        // Held to the end: one deployment at a time per worktree, and the
        // routes ops wait for it too.
        let (_slot, repo_turn) = self.end(GIT_RESET, r).await?;

        self.begin(GIT_FETCH).await;
        let r = self.fetch_origin(GIT_FETCH, &worktree, &credentials).await;
        self.end(GIT_FETCH, r).await?;

        let commit = self
            .checkout_and_pull(&worktree, &branch, &credentials)
            .await?;
        // Before anything patches it: this is the branch's own file.
        let pristine = tokio::fs::read(&gateway.config_file).await.map_err(|e| {
            format!(
                "cannot read {}: {e}",
                shared.config.gateway_config_file.display()
            )
        });
        drop(repo_turn);
        drop(credentials);

        self.begin(COMPOSER_INSTALL).await;
        let r = self.composer(&worktree).await;
        self.end(COMPOSER_INSTALL, r).await?;

        self.begin(START_CONTAINER).await;
        let target = Target {
            deployment: &id,
            sandbox: &sandbox,
            repository: &repository,
            branch: &branch,
            commit: &commit,
            port,
            gateway: &gateway,
            environment: &environment,
        };
        let r = self.start_gateway(&target).await;
        let container = self.end(START_CONTAINER, r).await?;

        self.begin(APPLY_ROUTES).await;
        let r = self
            .apply_routes(&gateway, &repository, &branch, pristine, &routes)
            .await;
        if r.is_err() {
            // A FAILED deployment must not leave a gateway serving routes
            // nobody asked for.
            self.reporter
                .narrate(APPLY_ROUTES, &format!("removing {container}"))
                .await;
            if let Err(e) = shared.docker.remove_container(&container).await {
                tracing::warn!(container = %container, error = %e, "cannot remove a failed gateway");
            }
        }
        self.end(APPLY_ROUTES, r).await?;

        self.reporter.running(commit, container).await;
        Ok(())
    }

    /// Takes the worktree's turns, makes sure it exists and throws away
    /// whatever was changed in it (the last deployment's route patch).
    async fn reset(
        &mut self,
        sandbox: &SandboxName,
        repository: &ServiceName,
        clone: &Path,
        worktree: &Path,
    ) -> Result<(OwnedMutexGuard<()>, OwnedMutexGuard<()>), String> {
        let turns = self
            .take_turns(GIT_RESET, sandbox, repository, worktree)
            .await?;
        worktree::ensure(self, GIT_RESET, clone, worktree).await?;
        let git = self.git_in(worktree);
        let done = self
            .git(GIT_RESET, &git, &["reset", "--hard", "--quiet"], None)
            .await?;
        if !done.success() {
            return Err(git_failure("git reset --hard", &done));
        }
        Ok(turns)
    }

    /// Best effort: a gateway without composer.json, on a host without
    /// composer, or whose dependencies cannot be fetched offline still runs
    /// with the vendor directory it has.
    async fn composer(&mut self, worktree: &Path) -> Result<(), String> {
        if !tokio::fs::try_exists(worktree.join("composer.json"))
            .await
            .unwrap_or(false)
        {
            self.reporter
                .narrate(COMPOSER_INSTALL, "no composer.json: skipped")
                .await;
            return Ok(());
        }
        let config = &self.shared.config;
        let args = ["install", "--no-dev", "--no-interaction", "--no-progress"];
        let mut cmd = tokio::process::Command::new(&config.composer_program);
        cmd.current_dir(worktree)
            .args(args)
            .env("COMPOSER_HOME", config.data_dir.join("composer"))
            .env("COMPOSER_NO_INTERACTION", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.reporter
            .narrate(
                COMPOSER_INSTALL,
                &format!("$ {} {}", config.composer_program.display(), args.join(" ")),
            )
            .await;
        let process = match Process::spawn(cmd, "composer", config.composer_timeout) {
            Ok(p) => p,
            Err(ProcessError::Spawn { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                self.reporter
                    .narrate(
                        COMPOSER_INSTALL,
                        "composer is not installed on this host: skipped",
                    )
                    .await;
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        };
        let done = self.stream(COMPOSER_INSTALL, process, None).await?;
        if !done.success() {
            self.reporter
                .narrate(
                    COMPOSER_INSTALL,
                    &format!(
                        "composer install failed ({}); continuing with the vendor directory as it is",
                        done.describe_status()
                    ),
                )
                .await;
        }
        Ok(())
    }

    async fn start_gateway(&mut self, t: &Target<'_>) -> Result<String, String> {
        let shared = self.shared;
        let config = &shared.config;
        let name = t.gateway.container.clone();
        let source = (t.gateway.worktree.clone(), config.gateway_mount.clone());
        let (network, mounts) = self
            .network_and_mounts(t.sandbox, t.environment, &name, source)
            .await?;
        let spec = ContainerSpec {
            name: name.clone(),
            image: config.gateway_image.clone(),
            cmd: Vec::new(),
            working_dir: String::new(),
            mounts,
            env: environment::container_env(t.environment, config.gateway_container_port),
            labels: [
                (labels::MANAGED, "true"),
                (labels::SANDBOX, t.sandbox.as_str()),
                (labels::SERVICE, GATEWAY_SERVICE),
                (labels::REPOSITORY, t.repository.as_str()),
                (labels::DEPLOYMENT, t.deployment),
                (labels::COMMIT, t.commit),
                (labels::BRANCH, t.branch.as_str()),
                (labels::NODE, config.node.as_str()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            container_port: config.gateway_container_port,
            publish_host: config.publish_host.clone(),
            host_port: t.port,
            network,
            alias: GATEWAY_SERVICE.to_owned(),
        };
        self.reporter
            .narrate(
                START_CONTAINER,
                &format!(
                    "$ docker run --name {name} {} ({} mounted at {}, port {}:{} → {}/tcp)",
                    config.gateway_image,
                    t.gateway.worktree.display(),
                    config.gateway_mount,
                    config.publish_host,
                    t.port,
                    config.gateway_container_port
                ),
            )
            .await;
        self.run_until_ready(&spec, t.port, "gateway").await?;
        self.reporter
            .narrate(
                START_CONTAINER,
                &format!(
                    "{name} serves http://{}:{}{}",
                    config.address, t.port, config.gateway_url_prefix
                ),
            )
            .await;
        Ok(name)
    }

    async fn apply_routes(
        &mut self,
        gateway: &SandboxGateway,
        repository: &ServiceName,
        branch: &BranchName,
        pristine: Result<Vec<u8>, String>,
        routes: &BTreeMap<String, RouteTarget>,
    ) -> Result<(), String> {
        let shared = self.shared;
        let pristine = pristine?;
        let defaults = routes::text(&pristine)
            .and_then(patcher::read)
            .map_err(|e| e.to_string())?;
        shared
            .ocp_defaults
            .record(repository.as_str(), branch.as_str(), &defaults)
            .await
            .map_err(|e| e.to_string())?;
        self.reporter
            .narrate(
                APPLY_ROUTES,
                &format!(
                    "OCP defaults of branch {branch}: {} services",
                    defaults.len()
                ),
            )
            .await;
        let wanted = wanted(routes, &defaults)?;
        for (service, change) in &wanted {
            if let Change::Set(url) = change
                && defaults.get(service) != Some(url)
            {
                self.reporter
                    .narrate(APPLY_ROUTES, &format!("{service} → {url}"))
                    .await;
            }
        }
        let done = gateway.apply(shared, &wanted).await?;
        if done.changed {
            self.reporter
                .narrate(
                    APPLY_ROUTES,
                    &format!(
                        "{} patched, checked with php -l; reloaded ({})",
                        shared.config.gateway_config_file.display(),
                        shared.config.reload_command.join(" ")
                    ),
                )
                .await;
        } else {
            self.reporter
                .narrate(
                    APPLY_ROUTES,
                    "every service goes to OCP: config.php unchanged",
                )
                .await;
        }
        for (service, url) in &done.routes {
            let mode = if defaults.get(service) == Some(url) {
                "ocp"
            } else {
                "sandbox"
            };
            self.reporter
                .narrate(APPLY_ROUTES, &format!("route {service} [{mode}] {url}"))
                .await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Routes {
        Routes::from([
            ("account".into(), "http://ocp-a".into()),
            ("payment".into(), "http://ocp-p".into()),
        ])
    }

    #[test]
    fn ocp_means_the_branch_default() {
        let routes = BTreeMap::from([
            (
                "account".to_owned(),
                RouteTarget::Sandbox {
                    url: "http://m:9001".into(),
                },
            ),
            ("payment".to_owned(), RouteTarget::Ocp),
        ]);
        let w = wanted(&routes, &defaults()).unwrap();
        assert_eq!(w["account"], Change::Set("http://m:9001".into()));
        assert_eq!(w["payment"], Change::Set("http://ocp-p".into()));
    }

    #[test]
    fn ocp_for_a_service_the_branch_does_not_route_removes_it() {
        let routes = BTreeMap::from([("wallet".to_owned(), RouteTarget::Ocp)]);
        assert_eq!(
            wanted(&routes, &defaults()).unwrap()["wallet"],
            Change::Remove
        );
    }

    #[test]
    fn only_http_urls_are_routed() {
        for url in ["file:///etc/passwd", "http://a\nb", "gopher://x"] {
            let routes = BTreeMap::from([(
                "account".to_owned(),
                RouteTarget::Sandbox { url: url.into() },
            )]);
            assert!(wanted(&routes, &defaults()).is_err(), "{url}");
        }
    }

    #[test]
    fn the_live_map_tells_ocp_from_sandbox() {
        let live = Routes::from([
            ("account".into(), "http://m:9001".into()),
            ("payment".into(), "http://ocp-p".into()),
            ("wallet".into(), "http://m:9009".into()),
        ]);
        let view = live_routes("qa", "main", live, &defaults());
        assert_eq!(view.routes["account"].mode, RouteMode::Sandbox);
        assert_eq!(
            view.routes["account"].ocp_default.as_deref(),
            Some("http://ocp-a")
        );
        assert_eq!(view.routes["payment"].mode, RouteMode::Ocp);
        assert_eq!(view.routes["wallet"].ocp_default, None);
    }
}
