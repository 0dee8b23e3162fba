//! The bus contract shared by the control plane and the agents.
//!
//! Everything that crosses NATS is defined here and nowhere else: the subject
//! names ([`subjects`]), the message types ([`messages`]), the sealing of
//! secrets to an agent's public key ([`seal`]) and the validation of names that
//! end up in git or Docker commands ([`names`]). Both sides depend on this crate,
//! so a change of wire format is one change in one place.
//!
//! Every message is wrapped in an [`Envelope`] carrying the contract version,
//! so a newer peer can tell an older one apart instead of misreading it.

pub mod messages;
pub mod names;
pub mod operations;
pub mod seal;
pub mod subjects;

pub use messages::*;
pub use names::{BranchName, NameError, SandboxName, ServiceName};
pub use operations::*;
pub use seal::{AgentKeys, Credentials, SealError, Sealed};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Version of the wire format. Bumped on any incompatible change.
pub const CONTRACT_VERSION: u32 = 1;

/// Errors when reading a message off the bus.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unsupported contract version {found} (this build speaks {CONTRACT_VERSION})")]
    Version { found: u32 },
}

/// The versioned wrapper every bus message travels in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    #[serde(flatten)]
    pub body: T,
}

/// Serializes a message for the bus.
pub fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    // Serializing plain data structs to JSON cannot fail: no maps with
    // non-string keys, no foreign Serialize impls.
    serde_json::to_vec(&Envelope {
        v: CONTRACT_VERSION,
        body,
    })
    .unwrap_or_default()
}

/// Reads a message off the bus, refusing other contract versions.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    let Version { v } = serde_json::from_slice(bytes)?;
    if v != CONTRACT_VERSION {
        return Err(DecodeError::Version { found: v });
    }
    let envelope: Envelope<T> = serde_json::from_slice(bytes)?;
    Ok(envelope.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_carries_the_version() {
        let ack = Ack::accepted();
        let bytes = encode(&ack);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"v\":1"), "{text}");
        let back: Ack = decode(&bytes).unwrap();
        assert_eq!(back, ack);
    }

    #[test]
    fn another_version_is_refused_not_misread() {
        let err = decode::<Ack>(br#"{"v":99,"accepted":true}"#).unwrap_err();
        assert!(matches!(err, DecodeError::Version { found: 99 }));
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert!(matches!(
            decode::<Ack>(b"not json"),
            Err(DecodeError::Malformed(_))
        ));
    }
}
