//! `repos` and `branches`: what this node serves, and the branches its
//! remotes have now, asked with the user's own credentials.

use sdp_contract::{
    AgentError, BranchInfo, BranchesRequest, Credentials, ErrorCode, RepositoryInfo,
};

use super::{body, configured, internal, open};
use crate::agent::Shared;
use crate::git::{self, Git};
use crate::mask::mask_one;

pub(super) fn list(shared: &Shared) -> Vec<RepositoryInfo> {
    let config = &shared.config;
    config
        .repositories
        .keys()
        .map(|name| RepositoryInfo {
            name: name.clone(),
            node: config.node.clone(),
            kind: config.kind,
        })
        .collect()
}

/// `git ls-remote --heads origin` in the configured clone.
pub(super) async fn branches(
    shared: &Shared,
    payload: &[u8],
) -> Result<Vec<BranchInfo>, AgentError> {
    let request: BranchesRequest = body("branches", payload)?;
    let (_, clone) = configured(shared, &request.repository)?;
    let credentials: Credentials = open(shared, "credentials", &request.credentials)?;
    let config = &shared.config;
    let git = Git::new(&config.git_program, &clone).with_credentials(&shared.askpass, &credentials);
    let done = git
        .spawn(["ls-remote", "--heads", "origin"], config.git_timeout)
        .map_err(|e| internal(e.to_string()))?
        .collect(&shared.shutdown)
        .await
        .map_err(|e| internal(e.to_string()))?;
    if !done.success() {
        if git::is_auth_failure(&done.stderr) {
            return Err(AgentError::new(
                ErrorCode::Unauthorized,
                "Bitbucket rejected the username or password",
            ));
        }
        let line = git::error_line(&done.stderr)
            .map(|l| mask_one(l, &credentials.password))
            .unwrap_or_else(|| done.describe_status());
        return Err(internal(format!("git ls-remote failed: {line}")));
    }
    Ok(parse_heads(&done.stdout))
}

/// `{commit}\trefs/heads/{name}` lines, sorted by name.
fn parse_heads<S: AsRef<str>>(lines: &[S]) -> Vec<BranchInfo> {
    let mut out: Vec<BranchInfo> = lines
        .iter()
        .filter_map(|line| {
            let (commit, reference) = line.as_ref().split_once('\t')?;
            let name = reference.trim().strip_prefix("refs/heads/")?;
            Some(BranchInfo {
                name: name.to_owned(),
                commit: commit.trim().to_owned(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_and_sorted() {
        let heads = parse_heads(&[
            "bbb\trefs/heads/main",
            "aaa\trefs/heads/feature/login-error",
            "ccc\trefs/tags/v1",
            "garbage",
        ]);
        assert_eq!(
            heads,
            vec![
                BranchInfo {
                    name: "feature/login-error".into(),
                    commit: "aaa".into()
                },
                BranchInfo {
                    name: "main".into(),
                    commit: "bbb".into()
                },
            ]
        );
    }
}
