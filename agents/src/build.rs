//! The one way `go build` is spawned: a scrubbed environment built from the
//! agent's configuration, so what a build sees does not depend on how the
//! agent was started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::config::AgentConfig;
use crate::process::{Process, ProcessError};

/// Variables of the agent's own environment a build still gets.
const INHERITED: &[&str] = &["HOME", "PATH", "TMPDIR"];

#[derive(Debug, Clone)]
pub struct GoBuild {
    program: PathBuf,
    env: BTreeMap<String, String>,
    limit: Duration,
}

impl GoBuild {
    pub fn new(config: &AgentConfig) -> Self {
        let mut env: BTreeMap<String, String> = INHERITED
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
            .collect();
        let go_path = config.data_dir.join("go");
        let defaults = [
            ("GOCACHE", config.go_cache()),
            ("GOMODCACHE", go_path.join("pkg").join("mod")),
            ("GOPATH", go_path),
        ];
        for (k, v) in defaults {
            env.insert(k.to_owned(), v.display().to_string());
        }
        // Configured settings win over everything above.
        env.extend(config.build_env.clone());
        env.entry("HOME".to_owned())
            .or_insert_with(|| config.data_dir.display().to_string());
        GoBuild {
            program: config.go_program.clone(),
            env,
            limit: config.build_timeout,
        }
    }

    /// The binary `go build` writes for `repository`, relative to the worktree.
    pub fn output_name(repository: &str) -> String {
        format!("app-{repository}")
    }

    /// `go build -o app-{repository} .` in `worktree`, not yet started.
    pub fn command(&self, worktree: &Path, repository: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.current_dir(worktree)
            .env_clear()
            .envs(&self.env)
            .args(["build", "-o", &Self::output_name(repository), "."])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    pub fn spawn(&self, worktree: &Path, repository: &str) -> Result<Process, ProcessError> {
        Process::spawn(self.command(worktree, repository), "go build", self.limit)
    }

    /// The argv as narrated in the log.
    pub fn describe(&self, repository: &str) -> String {
        format!(
            "$ {} build -o {} .",
            self.program.display(),
            Self::output_name(repository)
        )
    }
}

/// The compiler's first complaint: `go build` prints `# package` headers
/// before the errors of each package.
pub fn first_error<S: AsRef<str>>(stderr: &[S]) -> Option<&str> {
    stderr
        .iter()
        .map(|l| l.as_ref().trim())
        .find(|l| !l.is_empty() && !l.starts_with("# "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdp_contract::NodeKind;

    fn env_of(cmd: &tokio::process::Command) -> BTreeMap<String, String> {
        cmd.as_std()
            .get_envs()
            .filter_map(|(k, v)| {
                Some((
                    k.to_string_lossy().into_owned(),
                    v?.to_string_lossy().into_owned(),
                ))
            })
            .collect()
    }

    #[test]
    fn the_build_gets_the_configured_environment_only() {
        let mut config = AgentConfig::new(NodeKind::Micro, PathBuf::from("/data"));
        config.go_program = PathBuf::from("/usr/bin/go");
        let cmd = GoBuild::new(&config).command(Path::new("/w/sb/account"), "account");
        let args: Vec<_> = cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["build", "-o", "app-account", "."]);
        assert_eq!(
            cmd.as_std().get_current_dir(),
            Some(Path::new("/w/sb/account"))
        );
        let env = env_of(&cmd);
        assert_eq!(env["CGO_ENABLED"], "0");
        assert_eq!(env["GOPROXY"], "off");
        assert_eq!(env["GOCACHE"], "/data/go-build-cache");
        assert_eq!(env["GOPATH"], "/data/go");
        assert_eq!(env["GOMODCACHE"], "/data/go/pkg/mod");
        assert!(env.contains_key("HOME"));
        assert!(!env.contains_key("SDP_GIT_PASSWORD"));
    }

    #[test]
    fn a_configured_cache_wins() {
        let mut config = AgentConfig::new(NodeKind::Micro, PathBuf::from("/data"));
        config.build_env.insert("GOCACHE".into(), "/cache".into());
        let env = env_of(&GoBuild::new(&config).command(Path::new("/w"), "a"));
        assert_eq!(env["GOCACHE"], "/cache");
    }

    #[test]
    fn the_first_error_skips_package_headers() {
        let stderr = [
            "# sample",
            "./main.go:5:2: undefined: nope",
            "./main.go:6:2: x",
        ];
        assert_eq!(first_error(&stderr), Some("./main.go:5:2: undefined: nope"));
        assert_eq!(first_error::<&str>(&[]), None);
    }
}
