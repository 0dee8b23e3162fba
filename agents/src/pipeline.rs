//! The micro deployment pipeline: `git fetch` → `git checkout` → `git pull`
//! → `go build` → `start container`, and the steps the gateway pipeline
//! ([`crate::gateway`]) shares with it.
//!
//! Each stage reports `StageStarted`, its log lines, then `StageCompleted`,
//! or `StageFailed` followed by the `FAILED` state, after which nothing else
//! runs. Success ends in the `RUNNING` state with the commit and container.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sdp_contract::stages::{GIT_CHECKOUT, GIT_FETCH, GIT_PULL, GO_BUILD, START_CONTAINER};
use sdp_contract::{
    BranchName, Credentials, DeployEnvironment, EventKind, LogStream, NodeKind, RouteTarget,
    SandboxName, ServiceName,
};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::Shared;
use crate::build::{self, GoBuild};
use crate::docker::{ContainerSpec, Liveness, labels};
use crate::environment::{self, SOURCE_MOUNT};
use crate::git::{self, Git};
use crate::mask::mask_one;
use crate::process::{Finished, Process};
use crate::reporter::Reporter;
use crate::{probe, worktree};

/// Stdout lines of one command kept for its caller (`rev-parse` answers).
const STDOUT_KEEP: usize = 1000;
/// Container log lines shown when a service dies while starting.
const LAST_LOGS: usize = 20;
pub(crate) const SHUTTING_DOWN: &str = "the agent is shutting down";

/// A deployment accepted by the `deploy` op, its input already validated.
/// No `Debug`: the environment holds secret values.
pub(crate) struct Deployment {
    pub id: String,
    pub sandbox: SandboxName,
    pub repository: ServiceName,
    pub branch: BranchName,
    pub port: u16,
    /// The configured working clone.
    pub clone: PathBuf,
    pub credentials: Credentials,
    pub environment: DeployEnvironment,
    /// Gateway deployments: the route overrides to apply.
    pub routes: BTreeMap<String, RouteTarget>,
}

/// The pipeline stopped; the failure has been reported.
#[derive(Debug)]
pub(crate) struct Stopped;

pub(crate) async fn run(shared: Arc<Shared>, deployment: Deployment, reporter: Reporter) {
    let id = deployment.id.clone();
    let mut run = Run {
        cancel: shared.shutdown.clone(),
        shared: &shared,
        reporter,
    };
    let result = match shared.config.kind {
        NodeKind::Gateway => run.gateway_stages(deployment).await,
        NodeKind::Micro | NodeKind::Infra => run.stages(deployment).await,
    };
    match result {
        Ok(()) => tracing::info!(deployment = %id, "deployment running"),
        Err(Stopped) => tracing::info!(deployment = %id, "deployment failed"),
    }
}

/// One deployment in progress.
pub(crate) struct Run<'a> {
    pub shared: &'a Shared,
    pub reporter: Reporter,
    pub cancel: CancellationToken,
}

impl Run<'_> {
    async fn stages(&mut self, deployment: Deployment) -> Result<(), Stopped> {
        let Deployment {
            id,
            sandbox,
            repository,
            branch,
            port,
            clone,
            credentials,
            environment,
            routes: _,
        } = deployment;
        let worktree = worktree::path(&self.shared.config.work_root, &sandbox, &repository);

        self.begin(GIT_FETCH).await;
        let r = self
            .fetch(&sandbox, &repository, &clone, &worktree, &credentials)
            .await;
        // Held to the end: one deployment at a time per worktree.
        let (_slot, repo_turn) = self.end(GIT_FETCH, r).await?;

        let commit = self
            .checkout_and_pull(&worktree, &branch, &credentials)
            .await?;
        // Git is done: other sandboxes may use the repository, and the
        // credentials are not needed any more.
        drop(repo_turn);
        drop(credentials);

        self.begin(GO_BUILD).await;
        let r = self.build(&worktree, &repository).await;
        self.end(GO_BUILD, r).await?;

        self.begin(START_CONTAINER).await;
        let target = Target {
            deployment: &id,
            sandbox: &sandbox,
            repository: &repository,
            branch: &branch,
            commit: &commit,
            port,
            worktree: &worktree,
            environment: &environment,
        };
        let r = self.start(&target).await;
        let container = self.end(START_CONTAINER, r).await?;

        self.reporter.running(commit, container).await;
        Ok(())
    }

    pub(crate) async fn begin(&mut self, stage: &str) {
        self.reporter
            .event(EventKind::StageStarted {
                stage: stage.to_owned(),
            })
            .await;
    }

    /// Reports how a stage ended; a failure ends the deployment.
    pub(crate) async fn end<T>(
        &mut self,
        stage: &str,
        result: Result<T, String>,
    ) -> Result<T, Stopped> {
        match result {
            Ok(value) => {
                self.reporter
                    .event(EventKind::StageCompleted {
                        stage: stage.to_owned(),
                    })
                    .await;
                Ok(value)
            }
            Err(reason) => {
                let reason = self.reporter.masker().mask(&reason);
                self.reporter.fail(Some(stage.to_owned()), reason).await;
                Err(Stopped)
            }
        }
    }

    /// The checkout and pull stages, the same for a service and a gateway once
    /// the worktree is fetched. Returns the commit now checked out.
    pub(crate) async fn checkout_and_pull(
        &mut self,
        worktree: &Path,
        branch: &BranchName,
        credentials: &Credentials,
    ) -> Result<String, Stopped> {
        self.begin(GIT_CHECKOUT).await;
        let r = self.checkout(worktree, branch).await;
        self.end(GIT_CHECKOUT, r).await?;

        self.begin(GIT_PULL).await;
        let r = self.pull(worktree, branch, credentials).await;
        self.end(GIT_PULL, r).await
    }

    /// Takes `lock`, saying so in the log when it has to wait.
    pub(crate) async fn turn(
        &mut self,
        stage: &str,
        lock: Arc<tokio::sync::Mutex<()>>,
        waiting: String,
    ) -> Result<OwnedMutexGuard<()>, String> {
        if let Ok(guard) = lock.clone().try_lock_owned() {
            return Ok(guard);
        }
        self.reporter.narrate(stage, &waiting).await;
        tokio::select! {
            guard = lock.lock_owned() => Ok(guard),
            _ = self.cancel.cancelled() => Err(SHUTTING_DOWN.to_owned()),
        }
    }

    /// Runs git, narrating the command and streaming its output.
    /// `password` is masked too, should git ever echo it.
    pub(crate) async fn git(
        &mut self,
        stage: &str,
        git: &Git,
        args: &[&str],
        password: Option<&str>,
    ) -> Result<Finished, String> {
        self.reporter
            .narrate(stage, &format!("$ git {}", args.join(" ")))
            .await;
        let process = git
            .spawn(args, self.shared.config.git_timeout)
            .map_err(|e| e.to_string())?;
        let mut done = self.stream(stage, process, password).await?;
        if let Some(pw) = password {
            for line in &mut done.stderr {
                *line = mask_one(line, pw);
            }
        }
        Ok(done)
    }

    /// Forwards a process's output to the log until it exits.
    pub(crate) async fn stream(
        &mut self,
        stage: &str,
        mut process: Process,
        password: Option<&str>,
    ) -> Result<Finished, String> {
        let mut stdout = Vec::new();
        loop {
            match process.next_line(&self.cancel).await {
                Ok(Some((stream, line))) => {
                    let line = match password {
                        Some(pw) => mask_one(&line, pw),
                        None => line,
                    };
                    if stream == LogStream::Stdout && stdout.len() < STDOUT_KEEP {
                        stdout.push(line.clone());
                    }
                    self.reporter.log(stage, stream, &line).await;
                }
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        let mut done = process
            .finish(&self.cancel)
            .await
            .map_err(|e| e.to_string())?;
        done.stdout = stdout;
        Ok(done)
    }

    pub(crate) fn git_in(&self, dir: &Path) -> Git {
        Git::new(&self.shared.config.git_program, dir)
    }

    async fn fetch(
        &mut self,
        sandbox: &SandboxName,
        repository: &ServiceName,
        clone: &Path,
        worktree: &Path,
        credentials: &Credentials,
    ) -> Result<(OwnedMutexGuard<()>, OwnedMutexGuard<()>), String> {
        let turns = self
            .take_turns(GIT_FETCH, sandbox, repository, worktree)
            .await?;
        worktree::ensure(self, GIT_FETCH, clone, worktree).await?;
        self.fetch_origin(GIT_FETCH, worktree, credentials).await?;
        Ok(turns)
    }

    /// Waits for this worktree's previous deployment, then for other
    /// sandboxes' git work on the repository. The first guard is held to
    /// the end of the deployment, the second until git is done.
    pub(crate) async fn take_turns(
        &mut self,
        stage: &str,
        sandbox: &SandboxName,
        repository: &ServiceName,
        worktree: &Path,
    ) -> Result<(OwnedMutexGuard<()>, OwnedMutexGuard<()>), String> {
        let slot = self
            .shared
            .worktree_locks
            .get(&worktree.display().to_string());
        let slot = self
            .turn(
                stage,
                slot,
                format!("waiting for the previous deployment of {repository} in sandbox {sandbox}"),
            )
            .await?;
        let repo = self.shared.repo_locks.get(repository.as_str());
        let repo = self
            .turn(
                stage,
                repo,
                format!("waiting for another sandbox's git operation on {repository}"),
            )
            .await?;
        Ok((slot, repo))
    }

    pub(crate) async fn fetch_origin(
        &mut self,
        stage: &str,
        worktree: &Path,
        credentials: &Credentials,
    ) -> Result<(), String> {
        let git = self
            .git_in(worktree)
            .with_credentials(&self.shared.askpass, credentials);
        let done = self
            .git(
                stage,
                &git,
                &["fetch", "--prune", "origin"],
                Some(&credentials.password),
            )
            .await?;
        if !done.success() {
            return Err(git_failure("git fetch", &done));
        }
        Ok(())
    }

    pub(crate) async fn checkout(
        &mut self,
        worktree: &Path,
        branch: &BranchName,
    ) -> Result<(), String> {
        let git = self.git_in(worktree);
        // A full ref name can never be read as an option, whatever the
        // branch is called; the branch was validated besides.
        let reference = format!("refs/remotes/origin/{branch}");
        let verify = format!("{reference}^{{commit}}");
        let done = self
            .git(
                GIT_CHECKOUT,
                &git,
                &["rev-parse", "--verify", "--quiet", &verify],
                None,
            )
            .await?;
        if !done.success() {
            if git::error_line(&done.stderr).is_some() {
                return Err(git_failure("git rev-parse", &done));
            }
            return Err(format!("branch '{branch}' does not exist on origin"));
        }
        // Detached, so two sandboxes can deploy the same branch at once.
        let done = self
            .git(
                GIT_CHECKOUT,
                &git,
                &["checkout", "--force", "--detach", &reference, "--"],
                None,
            )
            .await?;
        if !done.success() {
            return Err(git_failure("git checkout", &done));
        }
        Ok(())
    }

    /// Returns the commit now checked out.
    pub(crate) async fn pull(
        &mut self,
        worktree: &Path,
        branch: &BranchName,
        credentials: &Credentials,
    ) -> Result<String, String> {
        let git = self
            .git_in(worktree)
            .with_credentials(&self.shared.askpass, credentials);
        let refspec = format!("refs/heads/{branch}");
        let done = self
            .git(
                GIT_PULL,
                &git,
                &["pull", "--ff-only", "origin", &refspec],
                Some(&credentials.password),
            )
            .await?;
        if !done.success() {
            return Err(git_failure("git pull", &done));
        }
        let done = self
            .git(
                GIT_PULL,
                &self.git_in(worktree),
                &["rev-parse", "HEAD"],
                None,
            )
            .await?;
        match done.stdout.first() {
            Some(commit) if done.success() && !commit.trim().is_empty() => {
                Ok(commit.trim().to_owned())
            }
            _ => Err(git_failure("git rev-parse HEAD", &done)),
        }
    }

    async fn build(&mut self, worktree: &Path, repository: &ServiceName) -> Result<(), String> {
        let go = &self.shared.go;
        self.reporter
            .narrate(GO_BUILD, &go.describe(repository.as_str()))
            .await;
        let process = go
            .spawn(worktree, repository.as_str())
            .map_err(|e| e.to_string())?;
        let done = self.stream(GO_BUILD, process, None).await?;
        if !done.success() {
            return Err(match build::first_error(&done.stderr) {
                Some(line) => line.to_owned(),
                None => format!("go build failed ({})", done.describe_status()),
            });
        }
        let binary = worktree.join(GoBuild::output_name(repository.as_str()));
        if !tokio::fs::try_exists(&binary).await.unwrap_or(false) {
            return Err(format!("go build wrote no {}", binary.display()));
        }
        self.reporter
            .narrate(GO_BUILD, &format!("built {}", binary.display()))
            .await;
        Ok(())
    }

    /// Returns the container's name.
    async fn start(&mut self, t: &Target<'_>) -> Result<String, String> {
        let config = &self.shared.config;
        let name = format!("sandbox-{}-{}", t.sandbox, t.repository);
        let source = (t.worktree.to_owned(), SOURCE_MOUNT.to_owned());
        let (network, mounts) = self
            .network_and_mounts(t.sandbox, t.environment, &name, source)
            .await?;
        let binary = format!(
            "{SOURCE_MOUNT}/{}",
            GoBuild::output_name(t.repository.as_str())
        );
        let spec = ContainerSpec {
            name: name.clone(),
            image: config.runtime_image.clone(),
            cmd: vec![binary.clone()],
            working_dir: SOURCE_MOUNT.to_owned(),
            mounts,
            env: environment::container_env(t.environment, config.container_port),
            labels: [
                (labels::MANAGED, "true"),
                (labels::SANDBOX, t.sandbox.as_str()),
                (labels::SERVICE, t.repository.as_str()),
                (labels::DEPLOYMENT, t.deployment),
                (labels::COMMIT, t.commit),
                (labels::BRANCH, t.branch.as_str()),
                (labels::REPOSITORY, t.repository.as_str()),
                (labels::NODE, config.node.as_str()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            container_port: config.container_port,
            publish_host: config.publish_host.clone(),
            host_port: t.port,
            network,
            alias: t.repository.as_str().to_owned(),
        };
        self.reporter
            .narrate(
                START_CONTAINER,
                &format!(
                    "$ docker run --name {name} {} {binary} (port {}:{} → {}/tcp)",
                    config.runtime_image, config.publish_host, t.port, config.container_port
                ),
            )
            .await;
        self.run_until_ready(&spec, t.port, "container").await?;
        self.reporter
            .narrate(
                START_CONTAINER,
                &format!(
                    "{name} accepts connections on {}:{}",
                    config.address, t.port
                ),
            )
            .await;
        Ok(name)
    }

    /// The sandbox's network, made if missing, and the container's mounts:
    /// `source` first, then the environment's files.
    pub(crate) async fn network_and_mounts(
        &mut self,
        sandbox: &SandboxName,
        environment: &DeployEnvironment,
        name: &str,
        source: (PathBuf, String),
    ) -> Result<(String, Vec<(PathBuf, String)>), String> {
        let shared = self.shared;
        let network = format!("sandbox-{sandbox}");
        self.reporter
            .narrate(START_CONTAINER, &format!("network {network}"))
            .await;
        shared
            .docker
            .ensure_network(&network, sandbox.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let files = shared.config.data_dir.join("files").join(name);
        let mut mounts = environment::write_files(environment, &files)
            .await
            .map_err(|e| e.to_string())?;
        mounts.insert(0, source);
        Ok((network, mounts))
    }

    /// Runs `spec` and waits until it serves on `port`. One that cannot
    /// start is removed rather than left restarting forever.
    pub(crate) async fn run_until_ready(
        &mut self,
        spec: &ContainerSpec,
        port: u16,
        what: &str,
    ) -> Result<(), String> {
        let docker = &self.shared.docker;
        docker.run(spec).await.map_err(|e| e.to_string())?;
        if let Err(reason) = self.wait_ready(&spec.name, port).await {
            if let Err(e) = docker.remove_container(&spec.name).await {
                tracing::warn!(container = %spec.name, error = %e, "cannot remove a failed {what}");
            }
            return Err(reason);
        }
        Ok(())
    }

    /// Polls, with a short backoff, until the published port reaches the
    /// service, the container exits, or the start timeout passes.
    pub(crate) async fn wait_ready(&mut self, name: &str, port: u16) -> Result<(), String> {
        let config = &self.shared.config;
        let deadline = Instant::now() + config.start_timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            let liveness = self
                .shared
                .docker
                .liveness(name)
                .await
                .map_err(|e| e.to_string())?;
            match liveness {
                Liveness::Running if probe::accepts(config.probe_host(), port).await => {
                    return Ok(());
                }
                Liveness::Exited { exit_code } => {
                    let last = self.show_last_logs(name).await;
                    let code = exit_code
                        .map(|c| format!(" with code {c}"))
                        .unwrap_or_default();
                    return Err(match last {
                        Some(line) => {
                            format!("the service exited{code} before accepting connections: {line}")
                        }
                        None => format!("the service exited{code} before accepting connections"),
                    });
                }
                Liveness::Running | Liveness::Starting => {}
            }
            if Instant::now() >= deadline {
                self.show_last_logs(name).await;
                return Err(format!(
                    "the service did not accept connections on port {port} within {} s",
                    config.start_timeout.as_secs()
                ));
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.cancel.cancelled() => return Err(SHUTTING_DOWN.to_owned()),
            }
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// Logs the container's last lines; returns the very last.
    pub(crate) async fn show_last_logs(&mut self, name: &str) -> Option<String> {
        let lines = match self.shared.docker.last_logs(name, LAST_LOGS).await {
            Ok(lines) => lines,
            Err(e) => {
                self.reporter
                    .narrate(
                        START_CONTAINER,
                        &format!("cannot read the container's log: {e}"),
                    )
                    .await;
                return None;
            }
        };
        for (stream, line) in &lines {
            self.reporter.log(START_CONTAINER, *stream, line).await;
        }
        // A service says why it died on stderr, if anywhere.
        lines
            .iter()
            .rev()
            .find(|(s, _)| *s == LogStream::Stderr)
            .or(lines.last())
            .map(|(_, l)| self.reporter.masker().mask(l))
    }
}

/// What the container stage needs to know.
struct Target<'a> {
    deployment: &'a str,
    sandbox: &'a SandboxName,
    repository: &'a ServiceName,
    branch: &'a BranchName,
    commit: &'a str,
    port: u16,
    worktree: &'a Path,
    environment: &'a DeployEnvironment,
}

/// Why a git command failed, in words for the user.
pub(crate) fn git_failure(what: &str, done: &Finished) -> String {
    if git::is_auth_failure(&done.stderr) {
        return "authentication failed: Bitbucket rejected the credentials".to_owned();
    }
    match git::error_line(&done.stderr) {
        Some(line) => format!("{what} failed: {line}"),
        None => format!("{what} failed ({})", done.describe_status()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn finished(code: i32, stderr: &[&str]) -> Finished {
        Finished {
            status: std::process::ExitStatus::from_raw(code << 8),
            stderr: stderr.iter().map(|s| s.to_string()).collect(),
            stdout: Vec::new(),
        }
    }

    #[test]
    fn git_failures_are_worded_for_the_user() {
        let auth = finished(128, &["fatal: Authentication failed for 'http://h/r.git/'"]);
        assert_eq!(
            git_failure("git fetch", &auth),
            "authentication failed: Bitbucket rejected the credentials"
        );
        let other = finished(128, &["fatal: couldn't find remote ref refs/heads/x"]);
        assert_eq!(
            git_failure("git pull", &other),
            "git pull failed: fatal: couldn't find remote ref refs/heads/x"
        );
        assert_eq!(
            git_failure("git checkout", &finished(1, &[])),
            "git checkout failed (exit status 1)"
        );
    }
}
