//! The native training runtime of gradpool.
//!
//! Trains the models of a [`JobSpec`](gradpool_core::JobSpec)
//! deterministically: the same spec, data and start checkpoint give
//! byte-identical checkpoints on every run, whatever the thread count.
//!
//! - [`dataset`]: text (character-level) and CSV data.
//! - [`model`]: the GPT and MLP architectures and seeded initialisation.
//! - [`ops`]: fused CPU kernels with backward passes.
//! - [`optim`]: AdamW with clipping; [`schedule`]: the learning rate.
//! - [`checkpoint`]: deterministic safetensors checkpoints, validated on load,
//!   and the [`distance`](checkpoint::distance) between two of them.
//! - [`segment`]: [`run_segment`], the unit of work a provider runs.
//! - [`parallel`]: parallel (DiLoCo) jobs: a worker's inner segment, the
//!   outer step on files, a whole parallel job trained here.
//! - [`sample`]: [`export_model`], [`sample()`](sample::sample) and
//!   [`logits()`](sample::logits).
//! - [`bench`]: the reference training benchmark.
//! - `cheat` (feature `cheat`): segments that fake their work, for testing
//!   audits.
//! - [`rng`]: the crate's seeded generator.

/// Defines `$name`, which runs the `#[inline(always)]` kernel `$body` built
/// for AVX2 when the CPU has it and for the baseline target otherwise. Both
/// builds compute bit-identical results: Rust never contracts `a * b + c`
/// into a fused multiply-add on its own, so wider vectors only change speed.
macro_rules! simd_dispatch {
    ($name:ident => $body:ident ($($arg:ident : $ty:ty),* $(,)?)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub mod bench;
#[cfg(feature = "cheat")]
pub mod cheat;
pub mod checkpoint;
pub mod dataset;
mod error;
mod gpt_cpu;
pub mod model;
pub mod ops;
pub(crate) mod optim;
pub mod parallel;
/// The seeded generator, shared with the pool through the core.
pub use gradpool_core::rng;
pub mod runtime;
pub mod sample;
pub mod schedule;
pub mod segment;

pub use candle_core::Device;
pub use checkpoint::{spec_fingerprint, CHECKPOINT_FORMAT, MODEL_FORMAT};
pub use dataset::{CsvInfo, Dataset};
pub use error::TrainError;
pub use model::ModelMeta;
pub use sample::{export_model, logits, sample, LogitsInput};
pub use segment::{
    evaluate, run_segment, run_segment_autograd, Evaluation, SegmentOutcome, StepReport,
};
