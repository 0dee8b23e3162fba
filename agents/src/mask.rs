//! Masking of secret values in text that leaves the agent.
//!
//! A deployment's environment secrets may be printed by the service or the
//! build; every log line is passed through a [`Masker`] before it is
//! published or spooled.

/// What a secret is replaced with.
pub const MASK: &str = "****";

#[derive(Clone, Default)]
pub struct Masker {
    /// Longest first, so a secret that contains another is masked whole.
    secrets: Vec<String>,
}

/// Shows how many secrets, never which.
impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} secrets)", self.secrets.len())
    }
}

impl Masker {
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(|s| s.as_ref().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Masker { secrets }
    }

    pub fn mask(&self, line: &str) -> String {
        let mut out = line.to_owned();
        for secret in &self.secrets {
            out = mask_one(&out, secret);
        }
        out
    }
}

/// `line` with every occurrence of `secret` masked.
pub fn mask_one(line: &str, secret: &str) -> String {
    if secret.is_empty() || !line.contains(secret) {
        return line.to_owned();
    }
    line.replace(secret, MASK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_of_every_secret_is_masked() {
        let m = Masker::new(["hunter2", "tok-123"]);
        assert_eq!(
            m.mask("pw=hunter2 token=tok-123 again hunter2"),
            "pw=**** token=**** again ****"
        );
        assert_eq!(m.mask("nothing here"), "nothing here");
    }

    #[test]
    fn a_secret_containing_another_is_masked_whole() {
        let m = Masker::new(["abc", "xxabcxx"]);
        assert_eq!(m.mask("v=xxabcxx"), "v=****");
    }

    #[test]
    fn debug_never_shows_a_secret() {
        assert_eq!(
            format!("{:?}", Masker::new(["hunter2"])),
            "Masker(1 secrets)"
        );
    }

    #[test]
    fn empty_secrets_are_ignored() {
        let m = Masker::new(["", "s"]);
        assert_eq!(m.mask("a s b"), "a **** b");
        assert_eq!(mask_one("abc", ""), "abc");
    }
}
