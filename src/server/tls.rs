//! Optional TLS for HTTP (API, dashboard, WebSockets) and the PostgreSQL wire: `[tls]` names a PEM
//! certificate chain and its PKCS#8 (or RSA / SEC1) private key. rustls with the ring provider.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("tls.{key}: reading {path}: {source}")]
    Read {
        /// `cert` or `key`.
        key: &'static str,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The files hold no usable certificate or key, or they do not match.
    #[error("tls: {0}")]
    Invalid(String),
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.display().to_string(),
        source,
    })
}

/// The acceptor for `cfg`, or None when TLS is not configured.
pub fn acceptor(cfg: &TlsConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
        return Ok(None);
    };
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &read("cert", cert)?[..])
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid(format!("tls.cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!(
            "tls.cert {} holds no PEM certificate",
            cert.display()
        )));
    }
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &read("key", key)?[..])
        .map_err(|e| TlsError::Invalid(format!("tls.key {}: {e}", key.display())))?
        .ok_or_else(|| TlsError::Invalid(format!("tls.key {} holds no PEM private key", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::Invalid(format!("certificate and key do not go together: {e}")))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}
