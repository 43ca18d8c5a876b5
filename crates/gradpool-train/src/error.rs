//! The crate's error type.

use std::path::PathBuf;

/// Why training, checkpointing, export or sampling failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The training data could not be used for this spec.
    #[error("bad training data: {0}")]
    Data(String),
    /// The spec asks for something this runtime cannot do.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A segment was requested with inconsistent arguments.
    #[error("invalid segment: {0}")]
    Segment(String),
    /// A checkpoint or model file was refused.
    #[error("checkpoint {path} refused: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// A sampling request could not be served.
    #[error("cannot sample: {0}")]
    Sample(String),
    /// An input a model cannot take (`logits`).
    #[error("the model cannot take this input: {0}")]
    Input(String),
    /// Training diverged (a loss or gradient became NaN or infinite).
    #[error("training diverged at step {step}: {what}")]
    Diverged { step: u64, what: String },
    /// Reading or writing a file failed.
    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// A tensor operation failed.
    /// A parallel job's outer step refused its inputs.
    #[error("outer step: {0}")]
    Outer(#[from] gradpool_core::outer::OuterError),

    /// The CUDA driver or a CUDA library refused a query.
    #[error("CUDA: {0}")]
    Cuda(String),

    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl TrainError {
    pub(crate) fn checkpoint(path: &std::path::Path, reason: impl Into<String>) -> TrainError {
        TrainError::Checkpoint {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}
