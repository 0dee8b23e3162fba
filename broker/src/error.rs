//! Error types: [`BrokerError`] for the embedding application and
//! [`ProtocolError`] for what a client did wrong on the wire.

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
/// Each variant knows the exact text nats-server sends in its
/// `-ERR '<text>'` line ([`ProtocolError::server_message`]) and whether the
/// server closes the connection afterwards
/// ([`ProtocolError::closes_connection`]), so the I/O layer needs no table of
/// its own and a later nats-server feature only adds a variant here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The bytes at the start of a line are no known operation.
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
    /// A SUB named an invalid subject; the subscription is refused.
    #[error("invalid subscription subject")]
    InvalidSubject,
    /// A PUB/HPUB named a subject that is not a valid literal subject; the
    /// message is dropped.
    #[error("invalid publish subject")]
    InvalidPublishSubject,
    /// The client did not answer our PINGs in time.
    #[error("stale connection")]
    StaleConnection,
    /// The client did not read its messages fast enough.
    #[error("slow consumer")]
    SlowConsumer,
}

impl ProtocolError {
    /// Whether nats-server closes the connection after sending this error.
    pub fn closes_connection(&self) -> bool {
        match self {
            ProtocolError::InvalidSubject | ProtocolError::InvalidPublishSubject => false,
            ProtocolError::UnknownOperation
            | ProtocolError::MaxControlLine { .. }
            | ProtocolError::MaxPayload { .. }
            | ProtocolError::InvalidArguments { .. }
            | ProtocolError::InvalidConnect(_)
            | ProtocolError::StaleConnection
            | ProtocolError::SlowConsumer => true,
        }
    }

    /// The text nats-server puts between the quotes of `-ERR '...'`.
    ///
    /// For malformed arguments and CONNECT JSON current nats-server closes
    /// the connection without a reason; we send its historical
    /// `Parser Error` so the client sees why.
    pub fn server_message(&self) -> &'static str {
        match self {
            ProtocolError::UnknownOperation => "Unknown Protocol Operation",
            ProtocolError::MaxControlLine { .. } => "Maximum Control Line Exceeded",
            ProtocolError::MaxPayload { .. } => "Maximum Payload Violation",
            ProtocolError::InvalidArguments { .. } | ProtocolError::InvalidConnect(_) => {
                "Parser Error"
            }
            ProtocolError::InvalidSubject => "Invalid Subject",
            ProtocolError::InvalidPublishSubject => "Invalid Publish Subject",
            ProtocolError::StaleConnection => "Stale Connection",
            ProtocolError::SlowConsumer => "Slow Consumer",
        }
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
