//! The subject table. The only place subject strings are spelled.
//!
//! | subject | direction |
//! |---|---|
//! | `sdp.agent.{node}.{op}` | control → agent, request-reply |
//! | `sdp.node.{node}.hello` / `.heartbeat` | agent → all |
//! | `sdp.deploy.{id}.event` | agent → all |
//! | `sdp.deploy.{id}.log` | agent → all |
//! | `sdp.audit.{action}` | control → all |

use std::fmt;

/// Operations an agent answers on `sdp.agent.{node}.{op}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentOp {
    /// Describe yourself (the same body as `hello`), so a control plane that
    /// started after the agent learns its key without waiting for a heartbeat.
    Hello,
    Auth,
    Repos,
    Branches,
    Deploy,
    Stop,
    Restart,
    Remove,
    RoutesGet,
    RoutesApply,
    Status,
    Replay,
}

impl AgentOp {
    pub const ALL: [AgentOp; 12] = [
        AgentOp::Hello,
        AgentOp::Auth,
        AgentOp::Repos,
        AgentOp::Branches,
        AgentOp::Deploy,
        AgentOp::Stop,
        AgentOp::Restart,
        AgentOp::Remove,
        AgentOp::RoutesGet,
        AgentOp::RoutesApply,
        AgentOp::Status,
        AgentOp::Replay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentOp::Hello => "hello",
            AgentOp::Auth => "auth",
            AgentOp::Repos => "repos",
            AgentOp::Branches => "branches",
            AgentOp::Deploy => "deploy",
            AgentOp::Stop => "stop",
            AgentOp::Restart => "restart",
            AgentOp::Remove => "remove",
            AgentOp::RoutesGet => "routes.get",
            AgentOp::RoutesApply => "routes.apply",
            AgentOp::Status => "status",
            AgentOp::Replay => "replay",
        }
    }

    pub fn parse(op: &str) -> Option<AgentOp> {
        AgentOp::ALL.into_iter().find(|o| o.as_str() == op)
    }
}

impl fmt::Display for AgentOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `sdp.agent.{node}.{op}`
pub fn agent_op(node: &str, op: AgentOp) -> String {
    format!("sdp.agent.{node}.{}", op.as_str())
}

/// `sdp.agent.{node}.>`: everything an agent serves.
pub fn agent_all(node: &str) -> String {
    format!("sdp.agent.{node}.>")
}

/// Splits `sdp.agent.{node}.{op}` into the op, for the node it was sent to.
pub fn parse_agent_op<'a>(node: &str, subject: &'a str) -> Option<&'a str> {
    subject
        .strip_prefix("sdp.agent.")?
        .strip_prefix(node)?
        .strip_prefix('.')
}

/// `sdp.node.{node}.hello`
pub fn node_hello(node: &str) -> String {
    format!("sdp.node.{node}.hello")
}

/// `sdp.node.{node}.heartbeat`
pub fn node_heartbeat(node: &str) -> String {
    format!("sdp.node.{node}.heartbeat")
}

/// Every node's presence messages.
pub const NODE_ALL: &str = "sdp.node.*.*";

/// `sdp.node.{node}.>`: everything one node announces.
pub fn node_all_of(node: &str) -> String {
    format!("sdp.node.{node}.>")
}

/// `sdp.node.>`: every node's announcements, at any depth (for taps and
/// permissions).
pub const NODE_TAP: &str = "sdp.node.>";

/// `sdp.deploy.{id}.event`
pub fn deploy_event(id: &str) -> String {
    format!("sdp.deploy.{id}.event")
}

/// `sdp.deploy.{id}.log`
pub fn deploy_log(id: &str) -> String {
    format!("sdp.deploy.{id}.log")
}

/// Every deployment's events and log lines, in one subscription so the
/// control plane sees them in the order the agent sent them.
pub const DEPLOY_ALL: &str = "sdp.deploy.*.*";

/// `sdp.deploy.>`: every deployment subject, at any depth (for taps and
/// permissions).
pub const DEPLOY_TAP: &str = "sdp.deploy.>";

/// Which stream a `sdp.deploy.{id}.*` subject belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployStream {
    Event,
    Log,
}

/// Splits `sdp.deploy.{id}.{event|log}`.
pub fn parse_deploy(subject: &str) -> Option<(&str, DeployStream)> {
    let rest = subject.strip_prefix("sdp.deploy.")?;
    let (id, kind) = rest.rsplit_once('.')?;
    if id.is_empty() || id.contains('.') {
        return None;
    }
    let kind = match kind {
        "event" => DeployStream::Event,
        "log" => DeployStream::Log,
        _ => return None,
    };
    Some((id, kind))
}

/// `sdp.audit.{action}`
pub fn audit(action: &str) -> String {
    format!("sdp.audit.{action}")
}

/// `sdp.audit.>`: every audit record (for taps and permissions).
pub const AUDIT_TAP: &str = "sdp.audit.>";

/// `_INBOX.>`: the reply subjects NATS clients create for their own
/// requests (the `async-nats` default inbox prefix).
pub const INBOX_ALL: &str = "_INBOX.>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_vm_subjects_read_exactly_as_the_spec() {
        assert_eq!(agent_op("micro", AgentOp::Deploy), "sdp.agent.micro.deploy");
        assert_eq!(agent_op("gateway", AgentOp::Auth), "sdp.agent.gateway.auth");
        assert_eq!(
            agent_op("gateway", AgentOp::RoutesApply),
            "sdp.agent.gateway.routes.apply"
        );
        assert_eq!(deploy_log("abc"), "sdp.deploy.abc.log");
        assert_eq!(node_heartbeat("micro"), "sdp.node.micro.heartbeat");
        assert_eq!(node_all_of("micro"), "sdp.node.micro.>");
        assert_eq!(agent_all("micro"), "sdp.agent.micro.>");
    }

    #[test]
    fn ops_round_trip_through_their_subject() {
        for op in AgentOp::ALL {
            let subject = agent_op("n1", op);
            let parsed = parse_agent_op("n1", &subject).unwrap();
            assert_eq!(AgentOp::parse(parsed), Some(op));
        }
        assert_eq!(parse_agent_op("n1", "sdp.agent.n2.deploy"), None);
        assert_eq!(AgentOp::parse("nope"), None);
    }

    #[test]
    fn deploy_subjects_parse() {
        assert_eq!(
            parse_deploy("sdp.deploy.d1.event"),
            Some(("d1", DeployStream::Event))
        );
        assert_eq!(
            parse_deploy("sdp.deploy.d1.log"),
            Some(("d1", DeployStream::Log))
        );
        assert_eq!(parse_deploy("sdp.deploy.d1.other"), None);
        assert_eq!(parse_deploy("sdp.deploy..log"), None);
        assert_eq!(parse_deploy("sdp.node.d1.log"), None);
    }
}
