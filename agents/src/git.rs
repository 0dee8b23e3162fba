//! The one approved way to run git.
//!
//! Every git process SDP starts is built by [`Git::command`], which sets the
//! working directory, a scrubbed environment and the credential path:
//! credentials reach git only through `GIT_ASKPASS` reading two environment
//! variables, never argv, a URL or `.git/config`, and git never prompts
//! (`GIT_TERMINAL_PROMPT=0`), so bad credentials fail fast instead of hanging.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use std::time::Duration;

use sdp_contract::Credentials;

use crate::process::{Process, ProcessError};

/// Environment variables the askpass helper reads.
pub const USERNAME_VAR: &str = "SDP_GIT_USERNAME";
pub const PASSWORD_VAR: &str = "SDP_GIT_PASSWORD";

/// The askpass helper: git calls it with a prompt ("Username for ...",
/// "Password for ...") and reads the answer from stdout.
const ASKPASS_SCRIPT: &str = "#!/bin/sh\n\
# Written by SDP. Answers git's credential prompts from the environment of the\n\
# one git process SDP started; holds no secret itself.\n\
case \"$1\" in\n\
  Username*) printf '%s\\n' \"$SDP_GIT_USERNAME\" ;;\n\
  *) printf '%s\\n' \"$SDP_GIT_PASSWORD\" ;;\n\
esac\n";

/// Variables from the agent's own environment that would redirect git away
/// from the directory we chose or feed it another identity.
const SCRUBBED: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "GIT_SSH_COMMAND",
    "GIT_TRACE",
    "GIT_TRACE_CURL",
    "GIT_CURL_VERBOSE",
];

/// Writes the askpass helper into `dir` (mode 0700) and returns its path.
pub fn install_askpass(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("git-askpass.sh");
    std::fs::write(&path, ASKPASS_SCRIPT)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(path)
}

/// How to run git in one directory, optionally as one user.
#[derive(Debug, Clone)]
pub struct Git {
    program: PathBuf,
    dir: PathBuf,
    askpass: Option<PathBuf>,
    credentials: Option<Credentials>,
}

impl Git {
    /// git (`program`, normally `"git"`) working in `dir`, anonymous.
    pub fn new(program: impl Into<PathBuf>, dir: impl Into<PathBuf>) -> Self {
        Git {
            program: program.into(),
            dir: dir.into(),
            askpass: None,
            credentials: None,
        }
    }

    /// The same git, answering credential prompts as `credentials` through
    /// the askpass helper at `askpass` (see [`install_askpass`]).
    pub fn with_credentials(mut self, askpass: &Path, credentials: &Credentials) -> Self {
        self.askpass = Some(askpass.to_owned());
        self.credentials = Some(credentials.clone());
        self
    }

    /// The same settings, in another directory.
    pub fn in_dir(&self, dir: impl Into<PathBuf>) -> Self {
        Git {
            dir: dir.into(),
            ..self.clone()
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A git command with `args`, ready to spawn: output piped, stdin closed,
    /// killed if dropped.
    pub fn command<I, S>(&self, args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in SCRUBBED {
            cmd.env_remove(var);
        }
        // Stable English messages: the agent reports git's own words.
        cmd.env("LC_ALL", "C")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GCM_INTERACTIVE", "never");
        // An empty helper list: no stored credential is read and nothing
        // we pass is ever written to a credential store.
        cmd.args(["-c", "credential.helper="]);
        match (&self.askpass, &self.credentials) {
            (Some(askpass), Some(creds)) => {
                cmd.env("GIT_ASKPASS", askpass)
                    .env(USERNAME_VAR, &creds.username)
                    .env(PASSWORD_VAR, &creds.password);
            }
            _ => {
                // Anonymous: make any prompt fail at once.
                cmd.env("GIT_ASKPASS", "/bin/false");
            }
        }
        cmd.args(args);
        cmd
    }

    /// Starts git with `args`, bounded by `limit`.
    pub fn spawn<I, S>(&self, args: I, limit: Duration) -> Result<Process, ProcessError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Process::spawn(self.command(args), "git", limit)
    }
}

/// Whether git's stderr says the remote refused the credentials (or that
/// git would have had to ask for them).
pub fn is_auth_failure<S: AsRef<str>>(stderr: &[S]) -> bool {
    stderr.iter().any(|line| {
        let l = line.as_ref().to_ascii_lowercase();
        l.contains("authentication failed")
            || l.contains("could not read username")
            || l.contains("could not read password")
            || l.contains("invalid username or password")
            || l.contains("returned error: 401")
            || l.contains("http 401")
    })
}

/// The line of git's stderr that says what went wrong: the first `fatal:`
/// or `error:` line, else the first non-empty one.
pub fn error_line<S: AsRef<str>>(stderr: &[S]) -> Option<&str> {
    let lines = || {
        stderr
            .iter()
            .map(|l| l.as_ref().trim())
            .filter(|l| !l.is_empty())
    };
    lines()
        .find(|l| l.starts_with("fatal:") || l.starts_with("error:"))
        .or_else(|| lines().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(cmd: &tokio::process::Command) -> Vec<String> {
        cmd.as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn env_of(cmd: &tokio::process::Command, key: &str) -> Option<String> {
        cmd.as_std()
            .get_envs()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
    }

    #[test]
    fn credentials_go_to_the_environment_never_argv() {
        let creds = Credentials {
            username: "u".into(),
            password: "hunter2-secret".into(),
        };
        let git = Git::new("git", "/tmp").with_credentials(Path::new("/x/askpass"), &creds);
        let cmd = git.command(["fetch", "origin"]);
        let args = argv(&cmd);
        assert!(args.iter().all(|a| !a.contains("hunter2")), "{args:?}");
        assert_eq!(
            env_of(&cmd, PASSWORD_VAR).as_deref(),
            Some("hunter2-secret")
        );
        assert_eq!(env_of(&cmd, "GIT_TERMINAL_PROMPT").as_deref(), Some("0"));
        assert_eq!(env_of(&cmd, "GIT_ASKPASS").as_deref(), Some("/x/askpass"));
        assert_eq!(cmd.as_std().get_current_dir(), Some(Path::new("/tmp")));
    }

    #[test]
    fn authentication_failures_are_recognised() {
        for stderr in [
            "fatal: Authentication failed for 'http://127.0.0.1:1/r.git/'",
            "fatal: could not read Username for 'http://h': terminal prompts disabled",
            "fatal: could not read Password for 'http://u@h': No such device or address",
            "error: The requested URL returned error: 401",
        ] {
            assert!(is_auth_failure(&[stderr]), "{stderr}");
        }
        assert!(!is_auth_failure(&[
            "fatal: repository 'http://h/r.git/' not found",
            "fatal: unable to access 'http://h/': Failed to connect to h port 80",
        ]));
    }

    #[test]
    fn the_error_line_is_the_fatal_one() {
        let stderr = [
            "hint: something",
            "fatal: couldn't find remote ref x",
            "more",
        ];
        assert_eq!(
            error_line(&stderr),
            Some("fatal: couldn't find remote ref x")
        );
        assert_eq!(error_line(&["", "  plain  "]), Some("plain"));
        assert_eq!(error_line::<&str>(&[]), None);
    }

    #[test]
    fn anonymous_git_cannot_prompt() {
        let cmd = Git::new("git", "/tmp").command(["ls-remote"]);
        assert_eq!(env_of(&cmd, "GIT_ASKPASS").as_deref(), Some("/bin/false"));
        assert_eq!(env_of(&cmd, PASSWORD_VAR), None);
    }

    #[tokio::test]
    async fn askpass_answers_both_prompts_from_the_environment() {
        let dir = std::env::temp_dir().join(format!("sdp-askpass-{}", std::process::id()));
        let script = install_askpass(&dir).unwrap();
        for (prompt, want) in [
            ("Username for 'http://h': ", "alice"),
            ("Password for 'http://alice@h': ", "pw"),
        ] {
            let out = tokio::process::Command::new(&script)
                .arg(prompt)
                .env(USERNAME_VAR, "alice")
                .env(PASSWORD_VAR, "pw")
                .output()
                .await
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), want);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
