//! How a pool is set up.

use std::path::PathBuf;

/// Settings of a pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Where the database (`pool.sqlite`) and the blob store (`blobs/`) live.
    pub data_dir: PathBuf,
    /// How long a lease lasts without a heartbeat, in seconds.
    pub lease_seconds: u32,
    /// How often providers should heart-beat, in seconds.
    pub heartbeat_seconds: u32,
    /// The largest blob (dataset, checkpoint) the pool accepts, in bytes.
    pub max_blob_bytes: u64,
    /// Whether anyone may create an account with `POST /v1/accounts`.
    pub open_signup: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            data_dir: PathBuf::from("gradpool-data"),
            lease_seconds: 15,
            heartbeat_seconds: 3,
            max_blob_bytes: 4 << 30,
            open_signup: true,
        }
    }
}
