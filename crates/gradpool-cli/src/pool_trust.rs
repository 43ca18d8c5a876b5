//! How the commands trust the pool they talk to: the global
//! `--pool-fingerprint` and `--insecure-plain-http` flags (or their
//! environment variables), and the known pools file
//! (`$GRADPOOL_HOME/known_pools`) where certificates met on first use are
//! remembered.

use clap::Args;
use gradpool_client::{Fingerprint, Trust};
use std::sync::OnceLock;

/// The flags every command that talks to a pool takes.
#[derive(Args, Debug, Clone, Default)]
pub struct PoolTrustArgs {
    /// The SHA-256 fingerprint the pool's TLS certificate must have, as
    /// `gradpool pool --tls-self-signed` prints it (sha256:…).
    #[arg(
        long,
        env = "GRADPOOL_POOL_FINGERPRINT",
        global = true,
        value_name = "SHA256"
    )]
    pub pool_fingerprint: Option<Fingerprint>,
    /// Allow plain http:// to a pool on another machine: API keys, node
    /// proofs and data cross the network in the clear.
    #[arg(long, env = "GRADPOOL_INSECURE_PLAIN_HTTP", global = true)]
    pub insecure_plain_http: bool,
}

static FLAGS: OnceLock<PoolTrustArgs> = OnceLock::new();

/// Records the command line's flags (once, from `main`).
pub fn set(args: PoolTrustArgs) {
    let _ = FLAGS.set(args);
}

/// The known pools file.
pub fn known_pools() -> std::path::PathBuf {
    crate::credentials::home().join("known_pools")
}

/// The trust the command line asks for; `fingerprint` (a config file's)
/// applies when the flag names none.
pub fn trust_with(fingerprint: Option<Fingerprint>) -> Trust {
    let flags = FLAGS.get().cloned().unwrap_or_default();
    Trust {
        fingerprint: flags.pool_fingerprint.or(fingerprint),
        known_pools: Some(known_pools()),
        allow_plain_http: flags.insecure_plain_http,
    }
}

/// The trust the command line asks for.
pub fn trust() -> Trust {
    trust_with(None)
}

/// A client of the pool at `url`, trusted as the command line says.
pub fn api(url: &str, token: Option<String>) -> anyhow::Result<gradpool_client::Api> {
    Ok(gradpool_client::Api::new(url, token, &trust())?)
}
