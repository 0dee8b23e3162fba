//! TLS for client connections (rustls, through tokio-rustls).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

use crate::error::BrokerError;

/// A server TLS configuration.
#[derive(Clone)]
pub struct TlsConfig(pub Arc<ServerConfig>);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig(..)")
    }
}

impl TlsConfig {
    /// Loads a PEM certificate chain and private key, like nats-server's
    /// `--tlscert` and `--tlskey`. Clients are not asked for certificates.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, BrokerError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| {
                BrokerError::InvalidConfig(format!("cannot read {}: {e}", p.display()))
            })
        };
        Self::from_pem(&read(cert)?, &read(key)?)
    }

    /// Like [`TlsConfig::from_pem_files`], from PEM bytes.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, BrokerError> {
        let bad = |m: String| BrokerError::InvalidConfig(m);
        let certs = rustls_pemfile::certs(&mut &cert_pem[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("invalid TLS certificate: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no certificate in the TLS certificate file".into()));
        }
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|e| bad(format!("invalid TLS key: {e}")))?
            .ok_or_else(|| bad("no private key in the TLS key file".into()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad(format!("TLS certificate and key do not fit: {e}")))?;
        Ok(TlsConfig(Arc::new(config)))
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.0.clone())
    }
}
