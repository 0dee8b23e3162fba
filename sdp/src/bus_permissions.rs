//! SDP's default bus permission set, built for the embedded broker.
//!
//! The broker (`sdp_broker`) knows users and allow/deny lists but no SDP
//! subjects; this module turns the subject table of
//! [`sdp_contract::subjects`] into its [`User`]s:
//!
//! | user | publish | subscribe |
//! |---|---|---|
//! | control plane | everything | everything |
//! | agent `{node}` | `sdp.node.{node}.>`, `sdp.deploy.>`, and replies to requests it received (`allow_responses`) | `sdp.agent.{node}.>`, `_INBOX.>` |
//! | ops (optional) | nothing | `sdp.deploy.>`, `sdp.node.>`, `sdp.audit.>` |
//!
//! So an agent receives only its own node's commands and cannot impersonate
//! another node or the control plane, and an operator may tap progress,
//! presence and audit traffic with an ordinary NATS client but can send no
//! command (secrets on those subjects are sealed anyway, SPEC §3).
//!
//! [`sdp_users`] is pure: it only builds the list. `sdp server` loads it
//! when its configuration has a `[server.bus]` section (agents' passwords,
//! plain or bcrypt hashes, and an optional ops password), and `sdp dev`
//! always does: [`crate::stack::Stack::start`] gives the control plane and
//! every in-process agent a fresh random password and sets
//! `BrokerConfig::authorization` before the broker starts.

use sdp_broker::{Permissions, ResponsePermission, SubjectPermission, User};
use sdp_contract::subjects;

/// A user name and password (plain, or a bcrypt hash as the broker accepts).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub user: String,
    pub password: String,
}

impl Credential {
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Credential {
            user: user.into(),
            password: password.into(),
        }
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What the agent of `node` may do.
pub fn agent_permissions(node: &str) -> Permissions {
    Permissions {
        publish: SubjectPermission::allow([
            subjects::node_all_of(node),
            subjects::DEPLOY_TAP.into(),
        ]),
        subscribe: SubjectPermission::allow([
            subjects::agent_all(node),
            subjects::INBOX_ALL.into(),
        ]),
        allow_responses: Some(ResponsePermission::default()),
    }
}

/// What the read-only ops user may do: tap, never publish.
pub fn ops_permissions() -> Permissions {
    Permissions {
        subscribe: SubjectPermission::allow([
            subjects::DEPLOY_TAP,
            subjects::NODE_TAP,
            subjects::AUDIT_TAP,
        ]),
        ..Permissions::subscribe_only()
    }
}

/// SDP's default users: the control plane (unrestricted), one restricted
/// user per agent node (`(node, credential)`), and an optional read-only ops
/// user. User names must be distinct; the broker authenticates against the
/// first user of a name.
pub fn sdp_users(
    control: Credential,
    agents: &[(String, Credential)],
    ops: Option<Credential>,
) -> Vec<User> {
    let mut users = Vec::with_capacity(agents.len() + 2);
    users.push(User::new(control.user, control.password));
    users.extend(agents.iter().map(|(node, c)| {
        User::new(c.user.clone(), c.password.clone()).with_permissions(agent_permissions(node))
    }));
    users.extend(ops.map(|c| User::new(c.user, c.password).with_permissions(ops_permissions())));
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<User> {
        sdp_users(
            Credential::new("control", "c"),
            &[
                ("micro".into(), Credential::new("agent-micro", "m")),
                ("gateway".into(), Credential::new("agent-gateway", "g")),
            ],
            Some(Credential::new("ops", "o")),
        )
    }

    #[test]
    fn control_is_unrestricted() {
        let users = users();
        assert_eq!(users[0].name, "control");
        assert_eq!(users[0].password, "c");
        assert_eq!(users[0].permissions, None);
    }

    #[test]
    fn each_agent_gets_only_its_own_node() {
        let users = users();
        let micro = users[1].permissions.clone().unwrap();
        assert_eq!(users[1].name, "agent-micro");
        assert_eq!(
            micro.subscribe,
            SubjectPermission::allow(["sdp.agent.micro.>", "_INBOX.>"])
        );
        assert_eq!(
            micro.publish,
            SubjectPermission::allow(["sdp.node.micro.>", "sdp.deploy.>"])
        );
        assert_eq!(micro.allow_responses, Some(ResponsePermission::default()));
        let gateway = users[2].permissions.clone().unwrap();
        assert_eq!(gateway.subscribe.allow.unwrap()[0], "sdp.agent.gateway.>");
    }

    #[test]
    fn ops_taps_but_publishes_nothing() {
        let users = users();
        assert_eq!(users.len(), 4);
        let ops = users[3].permissions.clone().unwrap();
        assert_eq!(users[3].name, "ops");
        assert_eq!(ops.publish, SubjectPermission::deny([">"]));
        assert_eq!(
            ops.subscribe,
            SubjectPermission::allow(["sdp.deploy.>", "sdp.node.>", "sdp.audit.>"])
        );
        assert_eq!(ops.allow_responses, None);
    }

    #[test]
    fn ops_is_optional_and_credentials_are_redacted() {
        let users = sdp_users(Credential::new("control", "c"), &[], None);
        assert_eq!(users.len(), 1);
        let shown = format!("{:?}", Credential::new("u", "hunter2"));
        assert!(!shown.contains("hunter2"));
    }
}
