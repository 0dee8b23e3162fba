//! Authentication and authorization, generic like nats-server's
//! `authorization` block: a token or a list of users with passwords (plain
//! or bcrypt, `$2a$...`), each with optional publish/subscribe allow and
//! deny lists (wildcards allowed) and `allow_responses`.
//!
//! The broker knows no application subjects: an embedding application
//! builds [`Users`] and [`Permissions`] from its own rules, e.g. "agent X may
//! subscribe only to `app.agent.X.>`" or an "ops" user that may only
//! subscribe:
//!
//! ```
//! use sdp_broker::auth::{Authorization, Permissions, SubjectPermission, User};
//!
//! let agent = User::new("agent-x", "$2a$11$...").with_permissions(Permissions {
//!     publish: SubjectPermission::allow(["app.node.x.>"]),
//!     subscribe: SubjectPermission::allow(["app.agent.x.>", "_INBOX.>"]),
//!     allow_responses: None,
//! });
//! let ops = User::new("ops", "secret").with_permissions(Permissions::subscribe_only());
//! let auth = Authorization::Users(vec![agent, ops]);
//! # let _ = auth;
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::BrokerError;
use crate::subject::is_valid_subject;
use crate::sublist::Sublist;

/// How clients must authenticate.
#[derive(Clone, Default)]
pub enum Authorization {
    /// Anyone may connect (the default).
    #[default]
    None,
    /// CONNECT must carry `auth_token` equal to this token (plain or bcrypt).
    Token(String),
    /// CONNECT must carry `user` and `pass` of one of these users.
    Users(Users),
}

/// The users allowed to connect.
pub type Users = Vec<User>;

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authorization::None => f.write_str("None"),
            Authorization::Token(_) => f.write_str("Token(<redacted>)"),
            Authorization::Users(users) => f.debug_tuple("Users").field(users).finish(),
        }
    }
}

impl Authorization {
    /// Whether clients must authenticate (`auth_required` in INFO).
    pub fn is_required(&self) -> bool {
        !matches!(self, Authorization::None)
    }

    pub(crate) fn validate(&self) -> Result<(), BrokerError> {
        if let Authorization::Users(users) = self {
            for u in users {
                if let Some(p) = &u.permissions {
                    for s in p
                        .publish
                        .allow
                        .iter()
                        .flatten()
                        .chain(&p.publish.deny)
                        .chain(p.subscribe.allow.iter().flatten())
                        .chain(&p.subscribe.deny)
                    {
                        if !is_valid_subject(s.as_bytes()) {
                            return Err(BrokerError::InvalidConfig(format!(
                                "user {:?}: invalid permission subject {s:?}",
                                u.name
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// One user.
#[derive(Clone)]
pub struct User {
    /// User name (`user` in CONNECT).
    pub name: String,
    /// Password: plain, or a bcrypt hash (`$2a$`, `$2b$`, `$2x$`, `$2y$`)
    /// as nats-server accepts in its configuration.
    pub password: String,
    /// What the user may do; `None` means everything.
    pub permissions: Option<Permissions>,
}

impl User {
    /// A user with every permission.
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> Self {
        User {
            name: name.into(),
            password: password.into(),
            permissions: None,
        }
    }

    /// Restricts the user.
    pub fn with_permissions(mut self, permissions: Permissions) -> Self {
        self.permissions = Some(permissions);
        self
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("permissions", &self.permissions)
            .finish()
    }
}

/// A user's permissions, as in nats-server's `permissions` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects the user may publish to.
    pub publish: SubjectPermission,
    /// Subjects the user may subscribe to.
    pub subscribe: SubjectPermission,
    /// Lets the user publish to the reply subject of requests it received,
    /// whatever `publish` says.
    pub allow_responses: Option<ResponsePermission>,
}

impl Permissions {
    /// May subscribe to anything, publish nothing.
    pub fn subscribe_only() -> Self {
        Permissions {
            publish: SubjectPermission::deny([">"]),
            subscribe: SubjectPermission::default(),
            allow_responses: None,
        }
    }
}

/// Allow and deny lists for one direction. A subject is permitted when it
/// matches the allow list (or there is none) and does not match the deny
/// list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectPermission {
    /// `None`: everything is allowed (unless denied).
    pub allow: Option<Vec<String>>,
    /// Subjects refused even when allowed.
    pub deny: Vec<String>,
}

impl SubjectPermission {
    /// Only these subjects.
    pub fn allow<S: Into<String>>(subjects: impl IntoIterator<Item = S>) -> Self {
        SubjectPermission {
            allow: Some(subjects.into_iter().map(Into::into).collect()),
            deny: Vec::new(),
        }
    }

    /// Everything but these subjects.
    pub fn deny<S: Into<String>>(subjects: impl IntoIterator<Item = S>) -> Self {
        SubjectPermission {
            allow: None,
            deny: subjects.into_iter().map(Into::into).collect(),
        }
    }
}

/// nats-server's `allow_responses`: how many replies per request and for
/// how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsePermission {
    /// Replies allowed per received request (nats-server default 1).
    pub max: usize,
    /// How long after the request (nats-server default 2 minutes).
    pub expires: Duration,
}

impl Default for ResponsePermission {
    fn default() -> Self {
        ResponsePermission {
            max: 1,
            expires: Duration::from_secs(120),
        }
    }
}

/// Checks a secret against its configured value, bcrypt-aware.
fn secret_matches(configured: &str, given: &str) -> bool {
    let is_bcrypt = ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|p| configured.starts_with(p));
    if is_bcrypt {
        bcrypt::verify(given, configured).unwrap_or(false)
    } else {
        constant_time_eq(configured.as_bytes(), given.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The outcome of a successful authentication.
#[derive(Debug, Clone, Default)]
pub(crate) struct Authenticated {
    pub user: Option<String>,
    pub perms: Option<Arc<ClientPerms>>,
}

/// Verifies CONNECT credentials. `None` means refused.
pub(crate) fn authenticate(
    auth: &Authorization,
    user: Option<&str>,
    pass: Option<&str>,
    token: Option<&str>,
) -> Option<Authenticated> {
    match auth {
        Authorization::None => Some(Authenticated::default()),
        Authorization::Token(t) => {
            let given = token?;
            secret_matches(t, given).then(Authenticated::default)
        }
        Authorization::Users(users) => {
            let name = user?;
            let u = users.iter().find(|u| u.name == name)?;
            if !secret_matches(&u.password, pass.unwrap_or("")) {
                return None;
            }
            Some(Authenticated {
                user: Some(u.name.clone()),
                perms: u
                    .permissions
                    .as_ref()
                    .map(|p| Arc::new(ClientPerms::compile(p))),
            })
        }
    }
}

/// Allow/deny lists compiled into sublists.
#[derive(Debug)]
struct Compiled {
    allow: Option<Sublist<()>>,
    deny: Option<Sublist<()>>,
}

impl Compiled {
    fn new(p: &SubjectPermission) -> Self {
        let list = |subjects: &[String]| {
            let mut sl = Sublist::new();
            for s in subjects {
                // Validated with the configuration.
                let _ = sl.insert(s.as_bytes(), None, Arc::new(()));
            }
            sl
        };
        Compiled {
            allow: p.allow.as_deref().map(list),
            deny: (!p.deny.is_empty()).then(|| list(&p.deny)),
        }
    }

    /// nats-server's check: the subject (wildcards included, as literal
    /// tokens) must match an allow entry and no deny entry.
    fn permits(&self, subject: &[u8]) -> bool {
        if let Some(allow) = &self.allow {
            if allow.matches(subject).is_empty() {
                return false;
            }
        }
        match &self.deny {
            Some(deny) => deny.matches(subject).is_empty(),
            None => true,
        }
    }

    fn denies(&self, subject: &[u8]) -> bool {
        self.deny
            .as_ref()
            .is_some_and(|d| !d.matches(subject).is_empty())
    }
}

/// A connected user's permissions, ready to check.
#[derive(Debug)]
pub(crate) struct ClientPerms {
    publish: Compiled,
    subscribe: Compiled,
    responses: Option<ResponsePermission>,
    /// Reply subjects this client may answer: remaining count and deadline.
    open_replies: Mutex<HashMap<Vec<u8>, (usize, Instant)>>,
}

impl ClientPerms {
    fn compile(p: &Permissions) -> Self {
        ClientPerms {
            publish: Compiled::new(&p.publish),
            subscribe: Compiled::new(&p.subscribe),
            responses: p.allow_responses,
            open_replies: Mutex::new(HashMap::new()),
        }
    }

    pub fn restricts_publish(&self) -> bool {
        self.publish.allow.is_some() || self.publish.deny.is_some()
    }

    /// Whether a publish to `subject` is permitted; consumes one reply
    /// allowance when only `allow_responses` permits it.
    pub fn can_publish(&self, subject: &[u8]) -> bool {
        if self.publish.permits(subject) {
            return true;
        }
        if self.responses.is_none() {
            return false;
        }
        let mut open = self.open_replies.lock();
        let now = Instant::now();
        match open.get_mut(subject) {
            Some((left, deadline)) if *deadline > now => {
                *left -= 1;
                if *left == 0 {
                    open.remove(subject);
                }
                true
            }
            Some(_) => {
                open.remove(subject);
                false
            }
            None => false,
        }
    }

    /// Whether the publish check depends on more than the subject (so its
    /// result may not be cached).
    pub fn has_responses(&self) -> bool {
        self.responses.is_some()
    }

    pub fn can_subscribe(&self, subject: &[u8]) -> bool {
        self.subscribe.permits(subject)
    }

    /// Whether a message on `subject` must be withheld from a wildcard
    /// subscription because the subject is in the subscribe deny list.
    pub fn delivery_denied(&self, subject: &[u8]) -> bool {
        self.subscribe.denies(subject)
    }

    pub fn has_subscribe_deny(&self) -> bool {
        self.subscribe.deny.is_some()
    }

    /// Records that a request with reply subject `reply` was delivered.
    pub fn note_request(&self, reply: &[u8]) {
        if let Some(r) = self.responses {
            let mut open = self.open_replies.lock();
            // Bounded: expired entries go when the map grows.
            if open.len() >= 10_000 {
                let now = Instant::now();
                open.retain(|_, (_, d)| *d > now);
            }
            open.insert(reply.to_vec(), (r.max.max(1), Instant::now() + r.expires));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_plain_and_bcrypt() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = Authorization::Users(vec![User::new("a", "pw"), User::new("b", hash)]);
        assert!(authenticate(&auth, Some("a"), Some("pw"), None).is_some());
        assert!(authenticate(&auth, Some("a"), Some("px"), None).is_none());
        assert!(authenticate(&auth, Some("b"), Some("s3cret"), None).is_some());
        assert!(authenticate(&auth, Some("b"), Some("s3cre"), None).is_none());
        assert!(authenticate(&auth, Some("c"), Some("pw"), None).is_none());
        assert!(authenticate(&auth, None, None, None).is_none());
        let tok = Authorization::Token("t".into());
        assert!(authenticate(&tok, None, None, Some("t")).is_some());
        assert!(authenticate(&tok, None, None, Some("u")).is_none());
        assert!(authenticate(&tok, None, None, None).is_none());
        assert!(!format!("{tok:?}{auth:?}").contains("pw"));
    }

    #[test]
    fn allow_deny_wildcards_like_nats_server() {
        let p = ClientPerms::compile(&Permissions {
            publish: SubjectPermission {
                allow: Some(vec!["a.>".into()]),
                deny: vec!["a.secret".into()],
            },
            subscribe: SubjectPermission {
                allow: Some(vec!["a.*".into(), "x.>".into()]),
                deny: vec!["a.x".into()],
            },
            allow_responses: Some(ResponsePermission::default()),
        });
        assert!(p.can_publish(b"a.b"));
        assert!(p.can_publish(b"a.b.c"));
        assert!(!p.can_publish(b"a.secret"));
        assert!(!p.can_publish(b"b"));
        assert!(p.can_subscribe(b"a.y"));
        // Wildcards are matched as literal tokens, as nats-server does.
        assert!(p.can_subscribe(b"a.>"));
        assert!(p.can_subscribe(b"x.>"));
        assert!(!p.can_subscribe(b">"));
        assert!(!p.can_subscribe(b"a.x"));
        assert!(p.delivery_denied(b"a.x"));
        p.note_request(b"_INBOX.r");
        assert!(p.can_publish(b"_INBOX.r"));
        assert!(!p.can_publish(b"_INBOX.r"), "one reply per request");
        let ops = ClientPerms::compile(&Permissions::subscribe_only());
        assert!(!ops.can_publish(b"x"));
        assert!(ops.can_subscribe(b">"));
    }
}
