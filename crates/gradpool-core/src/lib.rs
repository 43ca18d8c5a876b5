//! Shared domain types of gradpool.
//!
//! Everything here is light: no training, no database, no HTTP server. The
//! pool, the provider and the command line all speak through these types.
//!
//! - [`id`]: typed identifiers of accounts, providers, jobs and tasks.
//! - [`money`]: [`Piconero`], the only way amounts are represented.
//! - [`spec`]: the job spec (TOML) a customer submits, parsed and validated.
//! - [`model`]: a model's parameters and the memory training it takes.
//! - [`data`]: what a dataset fixes of the model (vocabulary, features).
//! - [`checkpoint`]: the checkpoint file, written byte-deterministically,
//!   and the pool's check of one.
//! - [`commitment`]: the signed hash chain over a job's checkpoints.
//! - [`container`]: a container job's checkpoint, checked and rewritten
//!   canonically.
//! - [`outer`]: a parallel job's global checkpoints and its outer step,
//!   arithmetic over safetensors that anyone can recompute.
//! - [`delta`]: what a parallel job's round moves: pseudo-gradients up,
//!   outer updates down.
//! - [`int8`]: the fixed codebook of a parallel job's compressed transfers.
//! - [`finite`]: floats from the network, refused unless finite.
//! - [`hash`]: content addresses (sha256) of blobs.
//! - [`hardware`]: what a provider runs on and its reproducibility class.
//! - [`signing`]: hashes, keys and signatures as types; the fixed encoding
//!   signatures cover.
//! - [`state`]: the states of jobs, tasks, providers, audits, payouts…,
//!   each with one spelling.
//! - [`verification`]: audit sampling, reputation, replay tolerance.
//! - [`wire`]: the JSON messages of the pool's HTTP API.

pub mod checkpoint;
pub mod commitment;
pub mod compliance;
pub mod container;
pub mod data;
pub mod delta;
pub mod finite;
pub mod hardware;
pub mod hash;
pub mod id;
pub mod int8;
pub mod model;
pub mod money;
#[cfg(feature = "openapi")]
mod openapi;
pub mod outer;
pub mod privacy;
pub mod proof;
pub mod rng;
pub mod signing;
pub mod spec;
pub mod state;
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
