//! Optional TLS for HTTP (API, dashboard, WebSockets) and the PostgreSQL wire: `[tls]` names a PEM
//! certificate chain and its PKCS#8 (or RSA / SEC1) private key. rustls with the ring provider.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

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

/// A TCP listener whose connections come out TLS-terminated. Handshakes run in their own tasks
/// (bounded to 10 s), so one slow client never holds up the others.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp` until `stop`.
    pub fn new(
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        stop: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = tcp.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "TLS accept failed.");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed."),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out."),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // Stopped: no more connections; graceful shutdown ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
