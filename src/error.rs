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
    #[error("non-finite value in {tensor} at step {step}: {detail}")]
    NonFinite {
        tensor: String,
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

    // Active learning.
    #[error("strategy {strategy} needs {what}, which was not given")]
    StrategyInput {
        strategy: &'static str,
        what: String,
    },
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
