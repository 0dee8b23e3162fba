//! Error types: [`BrokerError`] for the embedding application and
//! [`ProtocolError`] for what a client did wrong on the wire.

use std::borrow::Cow;
use std::io;

/// Errors returned to the code that embeds the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// An I/O operation on the listener failed.
    #[error("{context}: {source}")]
    Io {
        /// What the broker was doing when the error happened.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The configuration cannot be served as given.
    #[error("invalid broker configuration: {0}")]
    InvalidConfig(String),
}

/// A protocol violation or refused operation from a client.
///
/// Each variant knows the exact text nats-server (2.9) sends in its
/// `-ERR '<text>'` line ([`ProtocolError::server_message`]), whether it
/// sends one at all ([`ProtocolError::sends_error`]: malformed arguments
/// close the connection silently) and whether the server closes the
/// connection afterwards ([`ProtocolError::closes_connection`]), so the I/O
/// layer needs no table of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The bytes at the start of a line are no known operation, or a
    /// message body was not followed by CRLF.
    #[error("unknown protocol operation")]
    UnknownOperation,
    /// A control line (everything before CRLF) is longer than allowed.
    #[error("control line of {len} bytes exceeds the maximum of {max}")]
    MaxControlLine {
        /// Length seen so far (at least `max + 1`).
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A PUB/HPUB announced a body larger than `max_payload`.
    #[error("payload of {size} bytes exceeds the maximum of {max}")]
    MaxPayload {
        /// Announced size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// An operation's arguments could not be parsed (wrong count, bad size…).
    #[error("invalid {op} arguments: {detail}")]
    InvalidArguments {
        /// The operation name, upper case.
        op: &'static str,
        /// Human readable reason, for logs only.
        detail: String,
    },
    /// The CONNECT JSON could not be decoded.
    #[error("invalid CONNECT options: {0}")]
    InvalidConnect(String),
    /// CONNECT declared a protocol level this server does not speak.
    #[error("invalid client protocol")]
    BadClientProtocol,
    /// CONNECT asked for no-responders without headers.
    #[error("no responders requires headers support")]
    NoRespondersRequiresHeaders,
    /// HPUB from a client that did not declare `headers`.
    #[error("message headers not supported")]
    HeadersNotSupported,
    /// A SUB named an invalid subject; the subscription is refused.
    #[error("invalid subscription subject")]
    InvalidSubject,
    /// A PUB/HPUB named a subject that is not a valid literal subject; the
    /// message is dropped.
    #[error("invalid publish subject")]
    InvalidPublishSubject,
    /// Wrong or missing credentials, or an operation before CONNECT on a
    /// server that requires authentication.
    #[error("authorization violation")]
    AuthorizationViolation,
    /// No (valid) CONNECT within the authentication timeout.
    #[error("authentication timeout")]
    AuthenticationTimeout,
    /// The user may not publish to this subject; the message is dropped.
    #[error("permissions violation for publish to {0:?}")]
    PublishViolation(String),
    /// The user may not subscribe to this subject; the SUB is refused.
    #[error("permissions violation for subscription to {0:?}")]
    SubscriptionViolation(String),
    /// The server holds its maximum number of connections.
    #[error("maximum connections exceeded")]
    MaxConnections,
    /// The client did not answer our PINGs in time.
    #[error("stale connection")]
    StaleConnection,
    /// The client did not read its messages fast enough.
    #[error("slow consumer")]
    SlowConsumer,
}

impl ProtocolError {
    /// Whether nats-server closes the connection after this error.
    pub fn closes_connection(&self) -> bool {
        !matches!(
            self,
            ProtocolError::InvalidSubject
                | ProtocolError::InvalidPublishSubject
                | ProtocolError::PublishViolation(_)
                | ProtocolError::SubscriptionViolation(_)
        )
    }

    /// Whether nats-server tells the client with `-ERR` (malformed
    /// arguments, bad CONNECT JSON and slow consumers are closed without a
    /// word).
    pub fn sends_error(&self) -> bool {
        !matches!(
            self,
            ProtocolError::InvalidArguments { .. }
                | ProtocolError::InvalidConnect(_)
                | ProtocolError::HeadersNotSupported
                | ProtocolError::SlowConsumer
        )
    }

    /// The text nats-server 2.9 puts between the quotes of `-ERR '...'`
    /// (or, where it sends none, a description for logs).
    pub fn server_message(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            ProtocolError::UnknownOperation => "Unknown Protocol Operation",
            ProtocolError::MaxControlLine { .. } => "maximum control line exceeded",
            ProtocolError::MaxPayload { .. } => "Maximum Payload Violation",
            ProtocolError::InvalidArguments { .. } | ProtocolError::InvalidConnect(_) => {
                "Parser Error"
            }
            ProtocolError::BadClientProtocol => "invalid client protocol",
            ProtocolError::NoRespondersRequiresHeaders => "no responders requires headers support",
            ProtocolError::HeadersNotSupported => "message headers not supported",
            ProtocolError::InvalidSubject => "Invalid Subject",
            ProtocolError::InvalidPublishSubject => "Invalid Publish Subject",
            ProtocolError::AuthorizationViolation => "Authorization Violation",
            ProtocolError::AuthenticationTimeout => "Authentication Timeout",
            ProtocolError::PublishViolation(s) => {
                return Cow::Owned(format!("Permissions Violation for Publish to \"{s}\""));
            }
            ProtocolError::SubscriptionViolation(s) => {
                return Cow::Owned(format!("Permissions Violation for Subscription to \"{s}\""));
            }
            ProtocolError::MaxConnections => "maximum connections exceeded",
            ProtocolError::StaleConnection => "Stale Connection",
            ProtocolError::SlowConsumer => "Slow Consumer",
        })
    }

    /// The complete `-ERR '...'\r\n` line for this error.
    pub fn to_wire(&self) -> String {
        format!("-ERR '{}'\r\n", self.server_message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_text_matches_nats_server() {
        assert_eq!(
            ProtocolError::UnknownOperation.to_wire(),
            "-ERR 'Unknown Protocol Operation'\r\n"
        );
        assert_eq!(
            ProtocolError::MaxPayload { size: 2, max: 1 }.to_wire(),
            "-ERR 'Maximum Payload Violation'\r\n"
        );
        assert_eq!(
            ProtocolError::PublishViolation("a.b".into()).to_wire(),
            "-ERR 'Permissions Violation for Publish to \"a.b\"'\r\n"
        );
        assert!(
            !ProtocolError::InvalidArguments {
                op: "PUB",
                detail: String::new()
            }
            .sends_error()
        );
        assert!(!ProtocolError::InvalidSubject.closes_connection());
        assert!(
            ProtocolError::MaxControlLine {
                len: 5000,
                max: 4096
            }
            .closes_connection()
        );
    }
}
