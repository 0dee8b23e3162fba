//! `repos` and `branches`: what this node serves, and the branches its
//! remotes have now, asked with the user's own credentials.

use sdp_contract::{AgentError, BranchInfo, BranchesRequest, Credentials, RepositoryInfo};

use super::{body, configured, ls_remote_heads, open};
use crate::agent::Shared;

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
    let heads = ls_remote_heads(shared, &clone, &credentials).await?;
    Ok(parse_heads(&heads))
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
