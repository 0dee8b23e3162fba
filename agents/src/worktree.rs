//! One git worktree per sandbox and repository, at
//! `{work_root}/{sandbox}/{repository}`, made from the configured clone.
//! Worktrees share the clone's object store, so two sandboxes can be on
//! different branches of one repository without a second clone.

use std::path::{Path, PathBuf};

use sdp_contract::{SandboxName, ServiceName};
use tokio_util::sync::CancellationToken;

use crate::git::{self, Git};
use crate::pipeline::Run;

pub fn path(work_root: &Path, sandbox: &SandboxName, repository: &ServiceName) -> PathBuf {
    work_root.join(sandbox.as_str()).join(repository.as_str())
}

/// Makes sure `worktree` is a healthy worktree of `clone`, creating it or
/// replacing a broken one. The caller holds the repository's lock.
pub(crate) async fn ensure(
    run: &mut Run<'_>,
    stage: &str,
    clone: &Path,
    worktree: &Path,
) -> Result<(), String> {
    let program = run.shared.config.git_program.clone();
    let limit = run.shared.config.git_timeout;
    if tokio::fs::try_exists(worktree).await.unwrap_or(false) {
        if healthy(&program, limit, clone, worktree, &run.cancel).await {
            run.reporter
                .narrate(stage, &format!("worktree {}", worktree.display()))
                .await;
            return Ok(());
        }
        run.reporter
            .narrate(
                stage,
                &format!("worktree {} is broken; recreating it", worktree.display()),
            )
            .await;
        tokio::fs::remove_dir_all(worktree).await.map_err(|e| {
            format!(
                "cannot remove the broken worktree {}: {e}",
                worktree.display()
            )
        })?;
    }
    if let Some(parent) = worktree.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let git = Git::new(&program, clone);
    // Forget registrations of worktrees whose directories are gone, or
    // `worktree add` refuses the path.
    let done = run.git(stage, &git, &["worktree", "prune"], None).await?;
    if !done.success() {
        return Err(failure("git worktree prune", &done));
    }
    let target = worktree.display().to_string();
    let done = run
        .git(stage, &git, &["worktree", "add", "--detach", &target], None)
        .await?;
    if !done.success() {
        return Err(failure("git worktree add", &done));
    }
    Ok(())
}

fn failure(what: &str, done: &crate::process::Finished) -> String {
    match git::error_line(&done.stderr) {
        Some(line) => format!("{what} failed: {line}"),
        None => format!("{what} failed ({})", done.describe_status()),
    }
}

/// Whether `worktree` is the top of a worktree that belongs to `clone`.
/// A plain directory inside some other repository is not.
async fn healthy(
    program: &Path,
    limit: std::time::Duration,
    clone: &Path,
    worktree: &Path,
    cancel: &CancellationToken,
) -> bool {
    let (Some((top, common)), Some((_, clone_common))) = (
        toplevel_and_common_dir(program, limit, worktree, cancel).await,
        toplevel_and_common_dir(program, limit, clone, cancel).await,
    ) else {
        return false;
    };
    std::fs::canonicalize(worktree).is_ok_and(|w| w == top) && common == clone_common
}

async fn toplevel_and_common_dir(
    program: &Path,
    limit: std::time::Duration,
    dir: &Path,
    cancel: &CancellationToken,
) -> Option<(PathBuf, PathBuf)> {
    let done = Git::new(program, dir)
        .spawn(["rev-parse", "--show-toplevel", "--git-common-dir"], limit)
        .ok()?
        .collect(cancel)
        .await
        .ok()?;
    if !done.success() || done.stdout.len() < 2 {
        return None;
    }
    let resolve = |p: &str| std::fs::canonicalize(dir.join(p.trim())).ok();
    Some((resolve(&done.stdout[0])?, resolve(&done.stdout[1])?))
}
