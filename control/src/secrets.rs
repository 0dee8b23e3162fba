//! Environment secrets at rest: sealed with XSalsa20-Poly1305 (NaCl's
//! `secretbox`) under a key the server creates on first start in
//! `data_dir/secrets.key` (mode 0600). The database holds only ciphertext;
//! losing the key file loses the secrets, not their confidentiality.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use crypto_secretbox::aead::Aead;
use crypto_secretbox::{KeyInit, Nonce, XSalsa20Poly1305};
use zeroize::Zeroizing;

use crate::error::ControlError;

/// Marks the format, so a later change of cipher can tell old values apart.
const PREFIX: &str = "sb1:";

/// What a secret's value is replaced with in logs.
pub const MASK: &str = "********";

#[derive(Clone)]
pub struct SecretKey {
    cipher: XSalsa20Poly1305,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a stored secret could not be decrypted (was the key file {0} replaced?)")]
pub struct DecryptError(pub &'static str);

impl SecretKey {
    pub fn load_or_create(path: &Path) -> Result<SecretKey, ControlError> {
        let key_err = |source| ControlError::DataDir {
            path: path.display().to_string(),
            source,
        };
        let key = match std::fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    key_err(std::io::Error::other(
                        "the secrets key file must hold exactly 32 bytes",
                    ))
                })?;
                Zeroizing::new(arr)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Zeroizing::new(rand::random::<[u8; 32]>());
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(path).map_err(key_err)?;
                f.write_all(key.as_slice()).map_err(key_err)?;
                f.sync_all().map_err(key_err)?;
                key
            }
            Err(e) => return Err(key_err(e)),
        };
        Ok(SecretKey {
            cipher: XSalsa20Poly1305::new(key.as_slice().into()),
        })
    }

    pub fn encrypt(&self, plain: &str) -> String {
        let nonce_bytes = rand::random::<[u8; 24]>();
        let nonce = Nonce::from_slice(&nonce_bytes);
        // Encryption with a valid key and nonce cannot fail for in-memory
        // buffers; an empty ciphertext would fail to decrypt, loudly.
        let sealed = self
            .cipher
            .encrypt(nonce, plain.as_bytes())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(24 + sealed.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", B64.encode(out))
    }

    pub fn decrypt(&self, stored: &str) -> Result<Zeroizing<String>, DecryptError> {
        let bad = || DecryptError("secrets.key");
        let raw = B64
            .decode(stored.strip_prefix(PREFIX).ok_or_else(bad)?)
            .map_err(|_| bad())?;
        if raw.len() < 24 {
            return Err(bad());
        }
        let (nonce, sealed) = raw.split_at(24);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| bad())?;
        String::from_utf8(plain)
            .map(Zeroizing::new)
            .map_err(|_| bad())
    }
}

/// `line` with every secret value in `secrets` replaced by [`MASK`]. Longer
/// values first, so a secret that contains another is masked whole.
pub fn mask(line: &str, secrets: &[String]) -> String {
    let mut out = line.to_owned();
    for s in secrets {
        // One-character secrets would mask everything and reveal their value
        // by the pattern; they are too short to protect anyway.
        if s.len() >= 2 && out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

/// Sorts secret values for [`mask`].
pub fn mask_order(mut secrets: Vec<String>) -> Vec<String> {
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    secrets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_the_key_file_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let key = SecretKey::load_or_create(&path).unwrap();
        let stored = key.encrypt("hunter2-value");
        assert!(!stored.contains("hunter2"));
        assert_ne!(
            stored,
            key.encrypt("hunter2-value"),
            "fresh nonce each time"
        );
        let again = SecretKey::load_or_create(&path).unwrap();
        assert_eq!(again.decrypt(&stored).unwrap().as_str(), "hunter2-value");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = SecretKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.decrypt(&stored).is_err());
        assert!(key.decrypt("garbage").is_err());
    }

    #[test]
    fn masking_replaces_every_occurrence_longest_first() {
        let secrets = mask_order(vec!["abc".into(), "abcdef".into()]);
        assert_eq!(
            mask("x abcdef y abc", &secrets),
            format!("x {MASK} y {MASK}")
        );
        assert_eq!(mask("nothing here", &secrets), "nothing here");
    }
}
