//! Secrets on the bus travel sealed to the receiving agent's public key.
//!
//! The box is libsodium's `crypto_box_seal` (X25519 + XSalsa20-Poly1305 with
//! a Blake2b-derived nonce), so a script in any language with a libsodium
//! binding (PyNaCl's `SealedBox`, for one) can seal for an agent too. An
//! operator tapping `>` sees only base64 ciphertext.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use crypto_box::{PublicKey, SecretKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the public key is not 32 bytes of base64")]
    BadPublicKey,
    #[error("sealed data could not be opened (was it sealed to another key?)")]
    Open,
    #[error("sealing failed")]
    Seal,
    #[error("sealed payload is malformed: {0}")]
    Payload(#[from] serde_json::Error),
    #[error("agent key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
}

/// Base64 ciphertext of a sealed box.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

impl Sealed {
    /// Seals `value` (as JSON) to the agent whose base64 public key is given.
    pub fn seal<T: Serialize>(public_key_b64: &str, value: &T) -> Result<Sealed, SealError> {
        let key = decode_public_key(public_key_b64)?;
        let plain = Zeroizing::new(serde_json::to_vec(value)?);
        let boxed = key
            .seal(&mut rand::rngs::OsRng, &plain)
            .map_err(|_| SealError::Seal)?;
        Ok(Sealed(B64.encode(boxed)))
    }

    pub fn as_base64(&self) -> &str {
        &self.0
    }
}

fn decode_public_key(b64: &str) -> Result<PublicKey, SealError> {
    let bytes = B64.decode(b64).map_err(|_| SealError::BadPublicKey)?;
    let arr: [u8; 32] = bytes.try_into().map_err(|_| SealError::BadPublicKey)?;
    Ok(PublicKey::from(arr))
}

/// An agent's key pair. The secret half never leaves the agent's data
/// directory (file mode 0600).
pub struct AgentKeys {
    secret: SecretKey,
}

impl fmt::Debug for AgentKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentKeys({})", self.public_key())
    }
}

impl AgentKeys {
    pub fn generate() -> Self {
        AgentKeys {
            secret: SecretKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// Loads the key from `path`, creating it on first start. Persisting it
    /// means a restarted agent can still open what was sealed to it.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        let key_err = |source| SealError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let arr: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| key_err(std::io::Error::other("expected 32 bytes")))?;
                Ok(AgentKeys {
                    secret: SecretKey::from(arr),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keys = AgentKeys::generate();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(key_err)?;
                }
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(path).map_err(key_err)?;
                f.write_all(&keys.secret.to_bytes()).map_err(key_err)?;
                Ok(keys)
            }
            Err(e) => Err(key_err(e)),
        }
    }

    /// Base64 public key, as announced in `hello`.
    pub fn public_key(&self) -> String {
        B64.encode(self.secret.public_key().as_bytes())
    }

    /// Opens a box sealed to this agent.
    pub fn open<T: DeserializeOwned>(&self, sealed: &Sealed) -> Result<T, SealError> {
        let boxed = B64.decode(&sealed.0).map_err(|_| SealError::Open)?;
        let plain = Zeroizing::new(self.secret.unseal(&boxed).map_err(|_| SealError::Open)?);
        Ok(serde_json::from_slice(&plain)?)
    }
}

/// A user's Bitbucket credentials. Wiped from memory when dropped, and never
/// printed: `Debug` shows the user name only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            username: "achmad".into(),
            password: "s3cret-pa55".into(),
        }
    }

    #[test]
    fn sealed_credentials_open_only_with_the_right_key() {
        let agent = AgentKeys::generate();
        let other = AgentKeys::generate();
        let sealed = Sealed::seal(&agent.public_key(), &creds()).unwrap();
        assert!(!sealed.as_base64().contains("s3cret"));
        let opened: Credentials = agent.open(&sealed).unwrap();
        assert_eq!(opened, creds());
        assert!(matches!(
            other.open::<Credentials>(&sealed),
            Err(SealError::Open)
        ));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let text = format!("{:?}", creds());
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("achmad"));
    }

    #[test]
    fn bad_public_key_is_refused() {
        assert!(matches!(
            Sealed::seal("not base64!", &creds()),
            Err(SealError::BadPublicKey)
        ));
        assert!(matches!(
            Sealed::seal(&B64.encode([1u8; 5]), &creds()),
            Err(SealError::BadPublicKey)
        ));
    }

    #[test]
    fn key_file_persists_with_owner_only_mode() {
        let dir = tempfile_dir();
        let path = dir.join("agent.key");
        let a = AgentKeys::load_or_create(&path).unwrap();
        let b = AgentKeys::load_or_create(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sdp-seal-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
