//! Subject validation and matching, pure functions over bytes.
//!
//! NATS subjects are `.`-separated tokens. In a subscription the token `*`
//! matches exactly one token and the token `>` matches one or more trailing
//! tokens. Wildcards are whole tokens only: `foo>` or `f*o` are ordinary
//! literal tokens, as in nats-server. Subjects are bytes, not UTF-8 strings,
//! because nats-server accepts any byte other than the separators.

/// Token separator.
pub const TOKEN_SEPARATOR: u8 = b'.';
/// Single-token wildcard.
pub const PARTIAL_WILDCARD: &[u8] = b"*";
/// Trailing multi-token wildcard.
pub const FULL_WILDCARD: &[u8] = b">";

/// Iterates over the tokens of a subject (empty tokens included, so that
/// validation can reject them).
pub fn tokens(subject: &[u8]) -> impl Iterator<Item = &[u8]> {
    subject.split(|b| *b == TOKEN_SEPARATOR)
}

fn is_whitespace(b: u8) -> bool {
    // nats-server's set: "\t\n\f\r ".
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c)
}

/// Whether `subject` is a valid subscription subject (wildcards allowed).
pub fn is_valid_subject(subject: &[u8]) -> bool {
    if subject.is_empty() {
        return false;
    }
    let mut seen_full_wildcard = false;
    for token in tokens(subject) {
        if token.is_empty() || seen_full_wildcard {
            return false;
        }
        if token.iter().any(|b| is_whitespace(*b)) {
            return false;
        }
        if token == FULL_WILDCARD {
            seen_full_wildcard = true;
        }
    }
    true
}

/// Whether `subject` is a valid literal subject, i.e. one a message may be
/// published to: valid and without wildcard tokens.
pub fn is_valid_publish_subject(subject: &[u8]) -> bool {
    is_valid_subject(subject) && !has_wildcard(subject)
}

/// Whether any token of `subject` is a wildcard.
pub fn has_wildcard(subject: &[u8]) -> bool {
    tokens(subject).any(|t| t == PARTIAL_WILDCARD || t == FULL_WILDCARD)
}

/// Whether the literal `subject` is matched by the subscription `filter`.
///
/// Both are assumed valid; invalid input never panics, it just does not
/// match sensibly.
pub fn subject_matches(filter: &[u8], subject: &[u8]) -> bool {
    let mut subject_tokens = tokens(subject);
    for filter_token in tokens(filter) {
        if filter_token == FULL_WILDCARD {
            // `>` needs at least one token left.
            return subject_tokens.next().is_some();
        }
        match subject_tokens.next() {
            None => return false,
            Some(t) => {
                if filter_token != PARTIAL_WILDCARD && filter_token != t {
                    return false;
                }
            }
        }
    }
    subject_tokens.next().is_none()
}

/// Whether `queue` is acceptable as a queue group name.
pub fn is_valid_queue_name(queue: &[u8]) -> bool {
    !queue.is_empty() && !queue.iter().any(|b| is_whitespace(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_subscription_subjects() {
        for s in [
            "foo",
            "foo.bar",
            "foo.*",
            "*",
            ">",
            "foo.>",
            "*.*.>",
            "foo>",
            "f*o",
            "foo.bar>",
            "_INBOX.abc.*",
            "a.*.c",
            "ünïcode.tøken",
        ] {
            assert!(is_valid_subject(s.as_bytes()), "{s} should be valid");
        }
    }

    #[test]
    fn invalid_subscription_subjects() {
        for s in [
            "",
            ".",
            "foo.",
            ".foo",
            "foo..bar",
            "foo.>.bar",
            ">.foo",
            "> ",
            "foo bar",
            "foo\tbar",
            "foo\r",
            "foo\n",
            "foo.\x0c",
            ">.>",
        ] {
            assert!(!is_valid_subject(s.as_bytes()), "{s:?} should be invalid");
        }
    }

    #[test]
    fn publish_subjects_are_literal() {
        assert!(is_valid_publish_subject(b"foo.bar"));
        assert!(is_valid_publish_subject(b"foo>"));
        assert!(is_valid_publish_subject(b"f*o.bar"));
        assert!(!is_valid_publish_subject(b"foo.*"));
        assert!(!is_valid_publish_subject(b">"));
        assert!(!is_valid_publish_subject(b"foo.>"));
        assert!(!is_valid_publish_subject(b"foo..bar"));
        assert!(!is_valid_publish_subject(b""));
    }

    #[test]
    fn matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("foo", "foo", true),
            ("foo", "bar", false),
            ("foo", "foo.bar", false),
            ("foo.bar", "foo", false),
            ("foo.*", "foo.bar", true),
            ("foo.*", "foo", false),
            ("foo.*", "foo.bar.baz", false),
            ("foo.>", "foo.bar", true),
            ("foo.>", "foo.bar.baz", true),
            ("foo.>", "foo", false),
            (">", "foo", true),
            (">", "foo.bar", true),
            ("*", "foo", true),
            ("*", "foo.bar", false),
            ("*.bar", "foo.bar", true),
            ("*.*", "foo.bar", true),
            ("*.>", "foo.bar.baz", true),
            ("foo>", "foo>", true),
            ("foo>", "foo.bar", false),
            ("f*o", "fxo", false),
            ("f*o", "f*o", true),
            ("_INBOX.abc.*", "_INBOX.abc.1", true),
        ];
        for (filter, subject, want) in cases {
            assert_eq!(
                subject_matches(filter.as_bytes(), subject.as_bytes()),
                *want,
                "{filter} vs {subject}"
            );
        }
    }

    #[test]
    fn queue_names() {
        assert!(is_valid_queue_name(b"workers"));
        assert!(!is_valid_queue_name(b""));
        assert!(!is_valid_queue_name(b"a b"));
    }

    /// Every byte value at every position of a short subject: validation
    /// never panics and whitespace is always refused.
    #[test]
    fn byte_by_byte_validation() {
        for b in 0u8..=255 {
            for pos in 0..3 {
                let mut s = b"a.b".to_vec();
                s[pos] = b;
                let valid = is_valid_subject(&s);
                if is_whitespace(b) {
                    assert!(!valid);
                }
                if b == b'.' && pos != 1 {
                    assert!(!valid, "{s:?}");
                }
                let _ = subject_matches(&s, b"a.b");
                let _ = subject_matches(b"a.*", &s);
            }
        }
    }
}
