//! The provider agent.
//!
//! A provider connects *outbound* to a pool (it works behind NAT, like a
//! miner), proves it holds its Ed25519 node key, heart-beats with telemetry
//! and long-polls for work. Each assignment is one segment of a job: the
//! agent fetches the data and the start checkpoint, trains the segment in a
//! child process (`gradpool segment run`, so a crash or a cancel kills only
//! that task), uploads the end checkpoint and commits to it with a signed
//! commitment `H_i = BLAKE3(checkpoint_i ‖ H_{i-1})`.
//!
//! - [`device`]: what the agent trains on, behind the [`Device`] trait: the
//!   CPU, or a simulated device for tests of the control logic.
//! - [`gpu`]: NVIDIA GPUs through NVML, loaded at run time: discovery,
//!   telemetry, the power limit.
//! - [`limits`]: the owner's limits (GPU share, temperature, power,
//!   schedule, yielding to the owner), when they pause work, and the power
//!   governor that rests the device to hold a power cap.
//! - [`segment`]: one segment run in a child process and its event protocol.
//! - [`container`]: a container job's segment under podman in a sandbox,
//!   and the agent's image store.
//! - [`state`]: the agent's data directory (node key, blob cache, tasks in
//!   flight), so that a restart resumes what was running; locked by the
//!   agent that runs on it, which records there what it runs with.
//! - [`agent`]: the main loop, training segments and, for a provider that
//!   validates, replaying other providers' segments for audits.
//! - `cheat` (feature `cheat` only): cheating trainers and lazy validators
//!   for testing audits.

pub mod agent;
#[cfg(feature = "cheat")]
pub mod cheat;
pub mod compliance;
pub mod container;
pub mod device;
pub mod gpu;
pub mod limits;
pub mod segment;
pub mod state;

pub use agent::{run, ProviderConfig, DEFAULT_IMAGE_CACHE_BYTES};
pub use device::{CpuDevice, Device, Load, SimulatedDevice};

/// Errors of the provider agent.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(transparent)]
    Pool(#[from] gradpool_client::ClientError),
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
    #[error("node key: {0}")]
    NodeKey(#[from] gradpool_core::commitment::CommitmentError),
    /// The encryption key, or a confidential job's sealed files.
    #[error("confidential job: {0}")]
    Privacy(#[from] gradpool_core::privacy::PrivacyError),
    #[error("segment failed: {0}")]
    Segment(String),
    /// A container segment failed: its script, its sandbox or its image.
    #[error("container segment failed: {0}")]
    Container(#[from] crate::container::ContainerError),
    /// Another agent runs on the data directory.
    #[error(
        "the data directory {dir} is in use by another gradpool provider agent{holder}: \
         stop it first, or give this agent its own --data-dir (one agent per GPU, each \
         with its own data directory)"
    )]
    DataDirInUse {
        dir: std::path::PathBuf,
        /// ` (pid N, running since T)` when the other agent says so.
        holder: String,
    },
}

impl ProviderError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProviderError {
        let context = context.into();
        move |error| ProviderError::Io { context, error }
    }

    /// The error with its causes, for logs: `pool at … is unreachable:
    /// error sending request …: connection refused`.
    pub fn report(&self) -> String {
        gradpool_client::report(self)
    }

    /// True when the pool no longer knows this provider's session (it must
    /// register again).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ProviderError::Pool(e) if e.is_unauthorized())
    }
}
