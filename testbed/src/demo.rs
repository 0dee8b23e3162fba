//! The sample repositories, served and cloned as SDP finds them on the VMs.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sdp_agents::git::{Git, install_askpass};
use sdp_contract::Credentials;
use tokio_util::sync::CancellationToken;

use crate::{GitServer, TestbedError, embedded, tail};

/// The sample Go services, in the order they are listed.
pub const SERVICES: [&str; 3] = ["account", "payment", "user"];
/// The sample gateway repository.
const GATEWAY: &str = "erangel";

/// Demo repositories served by a [`GitServer`], with working clones as a VM
/// would have them:
///
/// ```text
/// <root>/bare/{account,payment,user,erangel}.git   what the server serves
/// <root>/vm/micro/{account,payment,user}           the micro VM's ~/AppGolang/<svc>
/// <root>/vm/gateway/erangel                        the gateway VM's clone
/// ```
///
/// Each clone's `origin` is the server's URL with no credentials in it:
/// fetching needs the user's credentials, as against Bitbucket.
pub struct Demo {
    pub git: GitServer,
    pub username: String,
    pub password: String,
    /// `account`/`payment`/`user` → working clone.
    pub services: BTreeMap<String, PathBuf>,
    /// The erangel working clone.
    pub gateway: PathBuf,
    pub root: PathBuf,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("git", &self.git)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("services", &self.services)
            .field("gateway", &self.gateway)
            .field("root", &self.root)
            .finish()
    }
}

impl Demo {
    /// Creates bare repos under `dir` (via sample-repos.sh), starts the git
    /// server, clones each into `dir/vm/micro/<svc>` and
    /// `dir/vm/gateway/erangel` and sets `origin` to the server URL.
    ///
    /// Reusing a `dir` keeps its repositories and clones (so `sdp dev` can
    /// restart on the same state) and only re-points `origin` at the new
    /// server's port.
    pub async fn create(
        dir: &Path,
        username: &str,
        password: &str,
        shutdown: CancellationToken,
    ) -> Result<Demo, TestbedError> {
        std::fs::create_dir_all(dir)
            .map_err(TestbedError::io(format!("creating {}", dir.display())))?;
        let root = dir
            .canonicalize()
            .map_err(TestbedError::io(format!("resolving {}", dir.display())))?;
        make_bare_repos(&root).await?;
        let git = GitServer::start(root.join("bare"), username, password, shutdown).await?;

        let askpass = install_askpass(&root.join(".testbed"))
            .map_err(TestbedError::io("installing the git askpass helper"))?;
        let creds = Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        let user_git = Git::new("git", &root).with_credentials(&askpass, &creds);

        let mut services = BTreeMap::new();
        for svc in SERVICES {
            let clone = root.join("vm/micro").join(svc);
            working_clone(&user_git, &git.repo_url(svc), &clone).await?;
            services.insert(svc.to_owned(), clone);
        }
        let gateway = root.join("vm/gateway").join(GATEWAY);
        working_clone(&user_git, &git.repo_url(GATEWAY), &gateway).await?;

        Ok(Demo {
            git,
            username: username.to_owned(),
            password: password.to_owned(),
            services,
            gateway,
            root,
        })
    }

    /// The bare repository behind `repo` (`account`, ..., `erangel`).
    pub fn bare_repo(&self, repo: &str) -> Result<PathBuf, TestbedError> {
        if !SERVICES.contains(&repo) && repo != GATEWAY {
            return Err(TestbedError::UnknownRepository(repo.to_owned()));
        }
        Ok(self.root.join("bare").join(format!("{repo}.git")))
    }

    /// The user's credentials, for a [`Git`] that talks to the server.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }

    /// Commits a change to `branch` of bare repo `repo` (for tests that
    /// need "a new commit arrived"): `file` (relative to the repository)
    /// gets `content`. A branch that does not exist yet is created from the
    /// default branch. Returns the new commit id.
    pub async fn push_commit(
        &self,
        repo: &str,
        branch: &str,
        file: &str,
        content: &str,
    ) -> Result<String, TestbedError> {
        let bare = self.bare_repo(repo)?;
        check_relative_file(file)?;
        // git's own rules, so names that look like options or refspecs are
        // refused before they reach a command line.
        let checked = plain_git(&self.root)
            .command(["check-ref-format", "--branch", branch])
            .output()
            .await
            .map_err(TestbedError::io("git check-ref-format"))?;
        if !checked.status.success() || branch.starts_with('-') {
            return Err(TestbedError::Invalid {
                what: "branch",
                value: branch.to_owned(),
                reason: "not a valid git branch name".into(),
            });
        }

        static SEQ: AtomicU64 = AtomicU64::new(0);
        let work = self.root.join(".testbed").join(format!(
            "push-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&work);
        let result = commit_in_clone(&bare, &work, branch, file, content).await;
        let _ = std::fs::remove_dir_all(&work);
        result
    }
}

async fn make_bare_repos(root: &Path) -> Result<(), TestbedError> {
    let tree = embedded::materialize()?;
    let script = embedded::script(&tree, "sample-repos.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(root)
        .env("SDP_SAMPLES_DIR", tree.join("testbed/samples"))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(TestbedError::io("running sample-repos.sh"))?;
    if !out.status.success() {
        return Err(TestbedError::Script {
            script: "sample-repos.sh".into(),
            status: out.status.to_string(),
            output: tail(&String::from_utf8_lossy(&out.stderr), 2000),
        });
    }
    Ok(())
}

/// Clones `url` into `dir`, or, if `dir` is already a clone, points its
/// `origin` at `url` and fetches.
async fn working_clone(user_git: &Git, url: &str, dir: &Path) -> Result<(), TestbedError> {
    if dir.join(".git").is_dir() {
        let git = user_git.in_dir(dir);
        run_git(&git, ["remote", "set-url", "origin", url]).await?;
        run_git(&git, ["fetch", "--quiet", "--prune", "origin"]).await?;
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent)
        .map_err(TestbedError::io(format!("creating {}", parent.display())))?;
    run_git(
        &user_git.in_dir(parent),
        [
            OsStr::new("clone"),
            OsStr::new("--quiet"),
            OsStr::new("--"),
            OsStr::new(url),
            dir.as_os_str(),
        ],
    )
    .await?;
    Ok(())
}

/// git with no credentials; [`run_git`] also drops the user's global
/// configuration, so commits made here do not depend on who runs the tests
/// (signing, hooks, default branch).
fn plain_git(dir: &Path) -> Git {
    Git::new("git", dir)
}

async fn run_git<I, S>(git: &Git, args: I) -> Result<String, TestbedError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let shown = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = git.command(&args);
    cmd.env("GIT_CONFIG_GLOBAL", "/dev/null");
    let out = cmd
        .output()
        .await
        .map_err(TestbedError::io(format!("running git {shown}")))?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(TestbedError::Git {
            args: shown,
            dir: git.dir().to_owned(),
            output: tail(&output, 2000),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn check_relative_file(file: &str) -> Result<(), TestbedError> {
    let invalid = |reason: &str| TestbedError::Invalid {
        what: "file",
        value: file.to_owned(),
        reason: reason.to_owned(),
    };
    let path = Path::new(file);
    if file.is_empty() || path.is_absolute() {
        return Err(invalid("must be a relative path"));
    }
    for part in path.components() {
        match part {
            std::path::Component::Normal(name) if name != ".git" => {}
            _ => return Err(invalid("must stay inside the repository, outside .git")),
        }
    }
    Ok(())
}

async fn commit_in_clone(
    bare: &Path,
    work: &Path,
    branch: &str,
    file: &str,
    content: &str,
) -> Result<String, TestbedError> {
    let parent = work.parent().unwrap_or(work);
    std::fs::create_dir_all(parent)
        .map_err(TestbedError::io(format!("creating {}", parent.display())))?;
    run_git(
        &plain_git(parent),
        [
            OsStr::new("clone"),
            OsStr::new("--quiet"),
            OsStr::new("--"),
            bare.as_os_str(),
            work.as_os_str(),
        ],
    )
    .await?;
    let git = plain_git(work);
    let remote_ref = format!("refs/remotes/origin/{branch}");
    let exists = run_git(&git, ["rev-parse", "--verify", "--quiet", &remote_ref])
        .await
        .is_ok();
    if exists {
        run_git(&git, ["checkout", "--quiet", "-B", branch, &remote_ref]).await?;
    } else {
        run_git(&git, ["checkout", "--quiet", "-b", branch]).await?;
    }
    let target = work.join(file);
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)
            .map_err(TestbedError::io(format!("creating {}", dir.display())))?;
    }
    std::fs::write(&target, content)
        .map_err(TestbedError::io(format!("writing {}", target.display())))?;
    run_git(&git, ["add", "--", file]).await?;
    run_git(
        &git,
        [
            "-c",
            "user.name=SDP Testbed",
            "-c",
            "user.email=testbed@sdp.invalid",
            "commit",
            "--quiet",
            "--allow-empty",
            "-m",
            &format!("testbed: update {file}"),
        ],
    )
    .await?;
    let refspec = format!("HEAD:refs/heads/{branch}");
    run_git(&git, ["push", "--quiet", "origin", &refspec]).await?;
    run_git(&git, ["rev-parse", "HEAD"]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_must_stay_inside_the_repository() {
        for ok in [
            "README.md",
            "a/b/c.txt",
            "application/config/production/config.php",
        ] {
            check_relative_file(ok).unwrap();
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", ".git/config", "./a"] {
            assert!(check_relative_file(bad).is_err(), "{bad}");
        }
    }
}
