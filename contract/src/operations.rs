//! Bodies and replies of the agent operations beyond `deploy`: listing
//! repositories and branches, acting on a deployed service, and a sandbox
//! gateway's route overrides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::messages::{DeployRequest, NodeKind};
use crate::seal::Sealed;

/// Where a sandbox's gateway sends one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum RouteTarget {
    /// The sandbox's own deployment, e.g. `http://<micro-vm>:<port>`.
    Sandbox { url: String },
    /// Whatever the gateway branch's `config.php` had for it.
    Ocp,
}

/// Body of `sdp.agent.{node}.deploy` on a gateway node: a [`DeployRequest`]
/// (same fields, flattened) plus the route overrides to apply once the
/// gateway runs. Services not named keep their OCP default. A micro agent
/// reads the same bytes as a plain [`DeployRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayDeployRequest {
    #[serde(flatten)]
    pub deploy: DeployRequest,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, RouteTarget>,
}

/// One element of the reply to `repos`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryInfo {
    pub name: String,
    pub node: String,
    pub kind: NodeKind,
}

/// Body of `branches`: the remote's branches, listed with the user's
/// credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BranchesRequest {
    pub repository: String,
    /// Sealed [`crate::Credentials`].
    pub credentials: Sealed,
}

/// One element of the reply to `branches`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchInfo {
    pub name: String,
    pub commit: String,
}

/// Body of `stop`, `restart` and `remove`: the container
/// `sandbox-{sandbox}-{repository}` (on a gateway node,
/// `sandbox-{sandbox}-gateway`). With `deployment` set, the operation is
/// refused unless that container runs exactly that deployment, so a stale
/// request cannot stop a newer deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRequest {
    pub sandbox: String,
    pub repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

/// The reply to `stop`, `restart` and `remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOutcome {
    pub container: String,
    /// The engine's state of the container afterwards (`running`,
    /// `exited`, ...), or `removed`.
    pub state: String,
    /// `remove` only: the sandbox had no container left, so its network
    /// went too.
    #[serde(default)]
    pub network_removed: bool,
    /// `remove` only: the sandbox's worktree of the repository was deleted.
    #[serde(default)]
    pub worktree_removed: bool,
}

/// Body of `routes.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesRequest {
    pub sandbox: String,
    /// The gateway repository; defaults to the node's first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
}

/// Body of `routes.apply`: the services to reroute; others are left as
/// they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesApplyRequest {
    pub sandbox: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    pub routes: BTreeMap<String, RouteTarget>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteMode {
    Sandbox,
    Ocp,
}

/// One service in a gateway's live map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRoute {
    /// `ocp` when the live URL is the branch's OCP default.
    pub mode: RouteMode,
    /// The URL the gateway sends the service to now.
    pub target: String,
    /// The branch's OCP default, if the branch routes the service at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocp_default: Option<String>,
}

/// The reply to `routes.get` and `routes.apply`: the map read back from
/// the sandbox's `config.php`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRoutes {
    pub sandbox: String,
    /// The gateway branch whose OCP defaults apply.
    pub branch: String,
    pub routes: BTreeMap<String, LiveRoute>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode};

    #[test]
    fn route_targets_read_like_the_json_api() {
        let t: RouteTarget = serde_json::from_str(r#"{"mode":"ocp"}"#).unwrap();
        assert_eq!(t, RouteTarget::Ocp);
        let t = RouteTarget::Sandbox {
            url: "http://m:9001".into(),
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"mode":"sandbox","url":"http://m:9001"}"#
        );
    }

    #[test]
    fn a_gateway_deploy_is_a_deploy_request_plus_routes() {
        let deploy = DeployRequest {
            deployment: "d1".into(),
            sandbox: "qa".into(),
            repository: "erangel".into(),
            branch: "main".into(),
            port: 8080,
            credentials: serde_json::from_str("\"c2VhbGVk\"").unwrap(),
            environment: None,
        };
        let request = GatewayDeployRequest {
            deploy: deploy.clone(),
            routes: BTreeMap::from([("account".into(), RouteTarget::Ocp)]),
        };
        let bytes = encode(&request);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["deployment"], "d1");
        assert_eq!(json["routes"]["account"]["mode"], "ocp");
        assert_eq!(decode::<GatewayDeployRequest>(&bytes).unwrap(), request);
        // A plain deploy request is a gateway deploy with no routes, and
        // the other way round the routes are ignored.
        assert_eq!(decode::<DeployRequest>(&bytes).unwrap(), deploy);
        let plain = decode::<GatewayDeployRequest>(&encode(&deploy)).unwrap();
        assert!(plain.routes.is_empty());
    }
}
