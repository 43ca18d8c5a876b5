//! TLS for the pool's API: a certificate from files, or one the pool makes
//! for itself and keeps, and a listener that hands axum finished TLS
//! connections.
//!
//! A self-signed certificate is identified by its SHA-256
//! [`Fingerprint`], which the pool prints at start: clients pin it
//! (`--pool-fingerprint`) or remember it on first use
//! (`gradpool_client::trust`). The pool keeps the certificate and its key
//! in `DATA/tls/` (the key mode 0600), so the fingerprint survives
//! restarts.
//!
//! Handshakes run in their own tasks, at most [`MAX_HANDSHAKES`] at once
//! and [`HANDSHAKE_SECONDS`] each, so a client that opens a connection and
//! says nothing holds up nobody.

use crate::error::PoolError;
use gradpool_core::hash::Fingerprint;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// TLS handshakes in flight at most.
pub const MAX_HANDSHAKES: usize = 256;
/// The longest a handshake may take.
pub const HANDSHAKE_SECONDS: u64 = 10;

/// Where the pool's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// A certificate chain and its private key, in PEM files (from a
    /// certificate authority, say).
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate kept in `dir` (`cert.pem`, `key.pem`),
    /// made on first use for the names `names`.
    SelfSigned { dir: PathBuf, names: Vec<String> },
}

/// The pool's TLS configuration and its certificate's fingerprint.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    pub fingerprint: Fingerprint,
    /// Whether the pool made the certificate itself.
    pub self_signed: bool,
}

fn tls_error(what: &str, path: &Path, e: impl std::fmt::Display) -> PoolError {
    PoolError::BadRequest(format!("TLS {what} {}: {e}", path.display()))
}

impl Tls {
    /// Loads (or makes and keeps) the certificate `source` names.
    pub fn load(source: &TlsSource) -> Result<Tls, PoolError> {
        let (cert, key, self_signed) = match source {
            TlsSource::Files { cert, key } => (cert.clone(), key.clone(), false),
            TlsSource::SelfSigned { dir, names } => {
                let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
                if !cert.exists() || !key.exists() {
                    make_self_signed(dir, names, &cert, &key)?;
                }
                (cert, key, true)
            }
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .map_err(|e| tls_error("certificate", &cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| tls_error("certificate", &cert, e))?;
        let first = chain
            .first()
            .ok_or_else(|| tls_error("certificate", &cert, "no certificate in the file"))?;
        let fingerprint = Fingerprint::of(first.as_ref());
        let key_der = PrivateKeyDer::from_pem_file(&key).map_err(|e| tls_error("key", &key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("setup for", &cert, e))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| tls_error("key or certificate", &key, e))?;
        Ok(Tls {
            config: Arc::new(config),
            fingerprint,
            self_signed,
        })
    }
}

/// Makes a self-signed certificate for `names` and writes it and its key
/// (mode 0600) into `dir`.
fn make_self_signed(
    dir: &Path,
    names: &[String],
    cert: &Path,
    key: &Path,
) -> Result<(), PoolError> {
    let bad = |e: rcgen::Error| PoolError::Internal(format!("cannot make a certificate: {e}"));
    std::fs::create_dir_all(dir)?;
    let key_pair = rcgen::KeyPair::generate().map_err(bad)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(bad)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gradpool pool");
    // Pinned by its fingerprint, not checked by dates: it lasts.
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let certificate = params.self_signed(&key_pair).map_err(bad)?;
    write_private(key, key_pair.serialize_pem().as_bytes())?;
    std::fs::write(cert, certificate.pem())?;
    tracing::info!(cert = %cert.display(), "made a self-signed TLS certificate");
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A listener of TLS connections: TCP connections are accepted and their
/// handshakes run in the background; finished ones are handed out.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `tls` on the connections `tcp` accepts.
    pub fn new(tcp: TcpListener, tls: &Tls) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let accepting = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (stream, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        Duration::from_secs(HANDSHAKE_SECONDS),
                        acceptor.accept(stream),
                    );
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            drop(permit);
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task ended: no connection will ever come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let source = TlsSource::SelfSigned {
            dir: dir.path().join("tls"),
            names: vec!["localhost".into()],
        };
        let a = Tls::load(&source).unwrap();
        let b = Tls::load(&source).unwrap();
        assert!(a.self_signed);
        assert_eq!(a.fingerprint, b.fingerprint);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("tls/key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = Tls::load(&TlsSource::SelfSigned {
            dir: dir.path().join("other"),
            names: vec!["localhost".into()],
        })
        .unwrap();
        assert_ne!(a.fingerprint, other.fingerprint);
    }

    #[test]
    fn missing_files_are_named() {
        let err = Tls::load(&TlsSource::Files {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }
}
