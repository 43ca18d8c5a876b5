//! Which pool a client is talking to: its TLS certificate, checked by a
//! certificate authority, pinned by its fingerprint, or remembered on first
//! use as SSH remembers a host's key.
//!
//! A pool started with `--tls-self-signed` prints its certificate's
//! SHA-256 [`Fingerprint`]. A client given that fingerprint
//! (`--pool-fingerprint`) accepts that certificate and no other. A client
//! given none accepts a certificate a public authority signed for the
//! pool's name; failing that, with a [known pools](KnownPools) file, it
//! accepts the certificate the first time it meets the pool, writes its
//! fingerprint down, and from then on refuses any other, loudly: a
//! changed certificate is what an attacker in the middle looks like.
//!
//! Plain `http://` is for a pool on this machine; to any other address it
//! is refused unless [`Trust::allow_plain_http`] is set.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use gradpool_core::hash::Fingerprint;

/// How a client decides to trust a pool.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// The fingerprint the pool's certificate must have.
    pub fingerprint: Option<Fingerprint>,
    /// Where the fingerprints of pools met before are kept; without it a
    /// certificate no authority signed is refused unless pinned.
    pub known_pools: Option<PathBuf>,
    /// Allow plain `http://` to a pool that is not on this machine.
    pub allow_plain_http: bool,
}

/// A certificate refused for a reason the user must see: the pin does not
/// match, or a remembered pool shows another certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The certificate is not the one `--pool-fingerprint` names.
    NotPinned {
        pinned: Fingerprint,
        got: Fingerprint,
    },
    /// The pool was met before with another certificate.
    Changed {
        pool: String,
        remembered: Fingerprint,
        got: Fingerprint,
        file: PathBuf,
    },
    /// No authority signed it, no pin names it, and nothing may be
    /// remembered.
    Unknown { got: Fingerprint },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotPinned { pinned, got } => write!(
                f,
                "the pool's certificate is {got}, not the pinned {pinned}: this is not the pool \
                 you named (or its operator changed the certificate; ask for the new fingerprint)"
            ),
            Refusal::Changed {
                pool,
                remembered,
                got,
                file,
            } => write!(
                f,
                "THE CERTIFICATE OF POOL {pool} HAS CHANGED: it was {remembered} and is now \
                 {got}. Someone may be intercepting the connection. If the operator really \
                 replaced it, check the new fingerprint with them, then remove the line of \
                 {pool} from {}",
                file.display()
            ),
            Refusal::Unknown { got } => write!(
                f,
                "the pool's certificate ({got}) is not signed by a known authority; pass \
                 --pool-fingerprint with the fingerprint its operator printed"
            ),
        }
    }
}

/// The known pools file: one line per pool, `host:port sha256:…`, like
/// SSH's `known_hosts`.
#[derive(Debug, Clone)]
pub struct KnownPools {
    path: PathBuf,
}

impl KnownPools {
    pub fn new(path: impl Into<PathBuf>) -> KnownPools {
        KnownPools { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fingerprint remembered for `pool` (`host:port`), if any.
    /// Unreadable lines are skipped.
    pub fn get(&self, pool: &str) -> std::io::Result<Option<Fingerprint>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(text.lines().find_map(|line| {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some(p), Some(fp)) if p == pool => fp.parse().ok(),
                _ => None,
            }
        }))
    }

    /// Remembers `fingerprint` for `pool`, appending a line (the file is
    /// created, mode 0600 on Unix, with its directory).
    pub fn remember(&self, pool: &str, fingerprint: Fingerprint) -> std::io::Result<()> {
        use std::io::Write;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&self.path)?;
        writeln!(file, "{pool} {fingerprint}")?;
        file.sync_all()
    }
}

/// Why the pool's certificate was last refused, shared between the
/// verifier and the client that reports it.
pub(crate) type LastRefusal = Arc<Mutex<Option<Refusal>>>;

/// The rustls verifier of one pool's certificate (see the module docs).
#[derive(Debug)]
pub(crate) struct PoolVerifier {
    /// `host:port`, the key in the known pools file.
    pool: String,
    pinned: Option<Fingerprint>,
    known: Option<KnownPools>,
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// Why the last certificate was refused, for the error the user sees.
    pub(crate) refusal: LastRefusal,
}

impl PoolVerifier {
    pub(crate) fn new(pool: String, trust: &Trust) -> Result<PoolVerifier, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(PoolVerifier {
            pool,
            pinned: trust.fingerprint,
            known: trust.known_pools.clone().map(KnownPools::new),
            webpki,
            provider,
            refusal: Arc::default(),
        })
    }

    fn refuse(&self, refusal: Refusal) -> rustls::Error {
        let message = refusal.to_string();
        if let Ok(mut r) = self.refusal.lock() {
            *r = Some(refusal);
        }
        rustls::Error::General(message)
    }

    /// Trust on first use: the remembered fingerprint must match; an
    /// unknown pool's is remembered now.
    fn known_pool(&self, known: &KnownPools, got: Fingerprint) -> Result<(), rustls::Error> {
        let io = |e: std::io::Error| {
            rustls::Error::General(format!("known pools file {}: {e}", known.path().display()))
        };
        match known.get(&self.pool).map_err(io)? {
            Some(remembered) if remembered == got => Ok(()),
            Some(remembered) => Err(self.refuse(Refusal::Changed {
                pool: self.pool.clone(),
                remembered,
                got,
                file: known.path().to_owned(),
            })),
            None => {
                known.remember(&self.pool, got).map_err(io)?;
                eprintln!(
                    "gradpool: first connection to pool {}; remembered its certificate {got} in {} \
                     (check it with the pool's operator)",
                    self.pool,
                    known.path().display()
                );
                Ok(())
            }
        }
    }
}

impl ServerCertVerifier for PoolVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of(end_entity.as_ref());
        if let Some(pinned) = self.pinned {
            return if pinned == got {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(self.refuse(Refusal::NotPinned { pinned, got }))
            };
        }
        if self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .is_ok()
        {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.known {
            Some(known) => self
                .known_pool(known, got)
                .map(|()| ServerCertVerified::assertion()),
            None => Err(self.refuse(Refusal::Unknown { got })),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client configuration that trusts the pool `pool` (`host:port`)
/// as `trust` says, with the verifier (whose refusals the caller reports).
pub(crate) fn client_config(
    pool: String,
    trust: &Trust,
) -> Result<(rustls::ClientConfig, LastRefusal), rustls::Error> {
    let verifier = PoolVerifier::new(pool, trust)?;
    let refusal = verifier.refusal.clone();
    let config = rustls::ClientConfig::builder_with_provider(verifier.provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok((config, refusal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_pools_remember_one_fingerprint_per_pool() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownPools::new(dir.path().join("sub/known_pools"));
        assert_eq!(known.get("pool:7443").unwrap(), None);
        let a = Fingerprint::of(b"a");
        known.remember("pool:7443", a).unwrap();
        known.remember("other:7443", Fingerprint::of(b"b")).unwrap();
        assert_eq!(known.get("pool:7443").unwrap(), Some(a));
        assert_eq!(known.get("pool:7444").unwrap(), None);
    }
}
