//! Shared domain types of gradpool.
//!
//! Everything here is light: no training, no database, no HTTP server. The
//! pool, the provider and the command line all speak through these types.
//!
//! - [`id`]: typed identifiers of accounts, providers, jobs and tasks.
//! - [`money`]: [`Piconero`], the only way amounts are represented.
//! - [`spec`]: the job spec (TOML) a customer submits, parsed and validated.
//! - [`commitment`]: the signed hash chain over a job's checkpoints.
//! - [`hash`]: content addresses (sha256) of blobs.
//! - [`hardware`]: what a provider runs on and its reproducibility class.
//! - [`verification`]: audit sampling, reputation, replay tolerance.
//! - [`wire`]: the JSON messages of the pool's HTTP API.

pub mod commitment;
pub mod hardware;
pub mod hash;
pub mod id;
pub mod money;
pub mod proof;
pub mod spec;
pub mod verification;
pub mod wire;

pub use commitment::{Commitment, NodeKey, ReplayReport, SignedCommitment, SignedReplay};
pub use hash::Sha256Hex;
pub use id::{AccountId, JobId, ProviderId, TaskId};
pub use money::Piconero;
pub use spec::JobSpec;

/// Version of the native training runtime. Part of every reproducibility
/// class: two runtimes of different versions never compare hashes exactly.
pub const RUNTIME_VERSION: &str = concat!("native-", env!("CARGO_PKG_VERSION"));
