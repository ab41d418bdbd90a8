//! The library's one error type, grouped by theme, each variant carrying its context.

use std::path::PathBuf;

/// Every fallible library call returns this.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Shapes and tensors.
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{op}: tensor is on {found}, expected {expected}")]
    Device {
        op: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{op}: tensor is shared and cannot be updated in place")]
    SharedTensor { op: &'static str },
    /// A NaN or infinity met in training. `kind` is "loss" or "gradient"; `tensor` names the
    /// loss function or the parameter whose gradient it is; `step` counts optimiser steps of
    /// the training run from 1.
    #[error("non-finite {kind} in {tensor} at epoch {epoch} step {step}: {detail}")]
    NonFinite {
        kind: &'static str,
        tensor: String,
        epoch: usize,
        step: usize,
        detail: String,
    },

    // Backends.
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error(
        "labelwise was built without CUDA kernels (nvcc was not found at build time); \
             rebuild after running .ci/install-cuda.sh, or use --device cpu"
    )]
    BuiltWithoutCuda,
    #[error("CUDA: {0}")]
    Cuda(String),

    // Data.
    #[error("{path}:{line}: {detail}")]
    Csv {
        path: PathBuf,
        line: u64,
        detail: String,
    },
    #[error("{path}: {detail}")]
    Image { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Format { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    // Checkpoints.
    /// A checkpoint file that cannot be used: torn, truncated, corrupt, or of another format.
    #[error("{path}: not a usable checkpoint: {detail}")]
    Checkpoint { path: PathBuf, detail: String },
    #[error("no checkpoint to resume from: {path} does not exist")]
    NoCheckpoint { path: PathBuf },
    #[error(
        "{path} holds the checkpoint of an unfinished run; resume it (--resume) or delete it \
         to start over"
    )]
    CheckpointExists { path: PathBuf },
    /// The options or data of a resumed run differ from those the checkpoint was made with.
    #[error(
        "{path}: cannot resume with other options or data than the checkpoint's: {}",
        OptionDifference::list(differences)
    )]
    ResumeMismatch {
        path: PathBuf,
        differences: Vec<OptionDifference>,
    },

    // Active learning.
    #[error("strategy {strategy} needs {what}, which was not given")]
    StrategyInput {
        strategy: &'static str,
        what: String,
    },
}

/// One option that differs between a checkpoint and the run that tries to resume it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionDifference {
    /// What differs, in the CLI's words ("seed", "image size", "labelled data").
    pub option: String,
    pub checkpoint: String,
    pub now: String,
}

impl OptionDifference {
    fn list(differences: &[OptionDifference]) -> String {
        differences
            .iter()
            .map(|d| format!("{} was {}, now {}", d.option, d.checkpoint, d.now))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A shape error for `op`.
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }
}
