//! Names that end up in git and Docker commands, validated before anything
//! runs. Pure functions: both the control plane (to answer 400 at once) and
//! the agents (never trusting the bus) call them.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {why}")]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub why: &'static str,
}

fn err(what: &'static str, value: &str, why: &'static str) -> NameError {
    // Bound what we echo back: the input may be an oversized payload.
    let value: String = value.chars().take(80).collect();
    NameError { what, value, why }
}

/// A git branch name that is safe to pass to git as a revision: the rules of
/// `git check-ref-format --branch`, plus no leading `-` so it can never be
/// read as an option (`--upload-pack=...`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BranchName(String);

impl BranchName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        const WHAT: &str = "branch name";
        if s.is_empty() {
            return Err(err(WHAT, s, "it is empty"));
        }
        if s.len() > 200 {
            return Err(err(WHAT, s, "it is longer than 200 bytes"));
        }
        if s.starts_with('-') {
            return Err(err(
                WHAT,
                s,
                "it starts with '-' and would read as an option",
            ));
        }
        if s == "@" || s == "HEAD" {
            return Err(err(WHAT, s, "it is reserved by git"));
        }
        if s.contains("..") {
            return Err(err(WHAT, s, "it contains '..'"));
        }
        if s.contains("@{") {
            return Err(err(WHAT, s, "it contains '@{'"));
        }
        if s.contains("//") || s.starts_with('/') || s.ends_with('/') {
            return Err(err(WHAT, s, "it has an empty path component"));
        }
        if s.ends_with('.') {
            return Err(err(WHAT, s, "it ends with '.'"));
        }
        for c in s.chars() {
            if c.is_ascii_control()
                || c == ' '
                || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\')
            {
                return Err(err(
                    WHAT,
                    s,
                    "it contains a space, a control character or one of ~^:?*[\\",
                ));
            }
        }
        for part in s.split('/') {
            if part.starts_with('.') {
                return Err(err(WHAT, s, "a path component starts with '.'"));
            }
            if part.ends_with(".lock") {
                return Err(err(WHAT, s, "a path component ends with '.lock'"));
            }
        }
        Ok(BranchName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A name that becomes part of Docker container and network names and of DNS
/// names: lowercase letters, digits and inner hyphens.
fn slug(what: &'static str, s: &str, max: usize) -> Result<String, NameError> {
    if s.is_empty() {
        return Err(err(what, s, "it is empty"));
    }
    if s.len() > max {
        return Err(err(what, s, "it is too long"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err(what, s, "use only lowercase letters, digits and '-'"));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(err(what, s, "it must not start or end with '-'"));
    }
    Ok(s.to_owned())
}

/// A sandbox name: `sandbox-{name}-{service}` must stay a valid DNS label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxName(String);

impl SandboxName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        slug("sandbox name", s, 30).map(SandboxName)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A repository / service name as configured on an agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        slug("repository name", s, 30).map(ServiceName)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype {
    ($t:ident) => {
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                $t::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(n: $t) -> String {
                n.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
string_newtype!(BranchName);
string_newtype!(SandboxName);
string_newtype!(ServiceName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_branches_pass() {
        for b in [
            "main",
            "develop",
            "feature/login-error",
            "release/1.2.3",
            "user/a_b+c",
            "v1.0",
        ] {
            assert!(BranchName::parse(b).is_ok(), "{b}");
        }
    }

    #[test]
    fn branch_that_looks_like_an_option_is_refused() {
        let e = BranchName::parse("--upload-pack=touch /tmp/pwned").unwrap_err();
        assert!(e.to_string().contains("option"), "{e}");
        assert!(BranchName::parse("-b").is_err());
    }

    #[test]
    fn malformed_branches_are_refused() {
        for b in [
            "", "a..b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b", "/a", "a/", "a//b",
            ".a", "a/.b", "a.lock", "a/b.lock", "a.", "@", "HEAD", "a@{1}", "a\nb", "a\u{7f}",
        ] {
            assert!(BranchName::parse(b).is_err(), "{b:?} should be refused");
        }
        assert!(BranchName::parse(&"x".repeat(201)).is_err());
    }

    #[test]
    fn oversized_input_is_not_echoed_whole() {
        let e = BranchName::parse(&"y".repeat(10_000)).unwrap_err();
        assert!(e.to_string().len() < 300);
    }

    #[test]
    fn sandbox_names_are_dns_safe() {
        for ok in ["qa-login", "achmad", "a1", "x"] {
            assert!(SandboxName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "QA", "a_b", "-a", "a-", "a.b", "a/b", "../etc", "a b", "ü",
        ] {
            assert!(SandboxName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SandboxName::parse(&"a".repeat(31)).is_err());
    }

    #[test]
    fn names_deserialize_only_when_valid() {
        assert!(serde_json::from_str::<BranchName>("\"--x\"").is_err());
        let b: BranchName = serde_json::from_str("\"feature/x\"").unwrap();
        assert_eq!(b.as_str(), "feature/x");
    }
}
