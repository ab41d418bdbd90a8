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
    /// A weights file whose tensors do not fit the model (see [`WeightsProblem`]).
    #[error("{path}: {problem}")]
    Weights {
        path: PathBuf,
        problem: WeightsProblem,
    },

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

/// What is wrong with a weights file's tensors, each naming the tensors concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsProblem {
    /// Tensors the model needs that the file lacks, and tensors the file holds that the model
    /// has no place for (and does not knowingly skip); either list may be empty.
    Names {
        missing: Vec<String>,
        unexpected: Vec<String>,
    },
    /// A tensor of the wrong shape; shapes in the file's layout (`[Co, Ci, kh, kw]` for
    /// convolutions).
    Shape {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor whose element type is not a floating-point type we read.
    Dtype { tensor: String, found: String },
}

impl std::fmt::Display for WeightsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Long lists (a ResNet50 file has hundreds of strangers) show their first few.
        let list = |names: &[String]| {
            const SHOWN: usize = 6;
            let mut text = names
                .iter()
                .take(SHOWN)
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            if names.len() > SHOWN {
                text += &format!(" and {} more", names.len() - SHOWN);
            }
            text
        };
        match self {
            WeightsProblem::Names {
                missing,
                unexpected,
            } => {
                let mut parts = Vec::new();
                if !missing.is_empty() {
                    parts.push(format!("missing tensor(s) {}", list(missing)));
                }
                if !unexpected.is_empty() {
                    parts.push(format!("unexpected tensor(s) {}", list(unexpected)));
                }
                write!(f, "{}", parts.join("; "))
            }
            WeightsProblem::Shape {
                tensor,
                expected,
                found,
            } => write!(
                f,
                "tensor {tensor:?} has shape {found:?}, expected {expected:?}"
            ),
            WeightsProblem::Dtype { tensor, found } => {
                write!(f, "tensor {tensor:?} is {found}, expected a float type")
            }
        }
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
