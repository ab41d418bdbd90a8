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
    /// A weights file whose tensors do not fit the model (see [`WeightsProblem`]).
    #[error("{path}: {problem}")]
    Weights {
        path: PathBuf,
        problem: WeightsProblem,
    },

    // Active learning.
    #[error("strategy {strategy} needs {what}, which was not given")]
    StrategyInput {
        strategy: &'static str,
        what: String,
    },
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
