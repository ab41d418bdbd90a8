//! The interpreter's error type: parse failures, unsupported instructions and checked faults.

use std::fmt;

/// Where in a launch a fault happened: kernel, block, thread and the instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSite {
    /// Kernel (entry) name.
    pub kernel: String,
    /// Block index `(x, y, z)`.
    pub block: [u32; 3],
    /// Thread index within the block `(x, y, z)`.
    pub thread: [u32; 3],
    /// 1-based line of the instruction in the PTX text.
    pub line: u32,
    /// The instruction as written in the PTX text.
    pub instruction: String,
    /// CUDA source `file:line`, when the PTX was compiled with `-lineinfo`.
    pub source: Option<String>,
}

impl fmt::Display for FaultSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel `{}` block ({},{},{}) thread ({},{},{}) at line {}: `{}`",
            self.kernel,
            self.block[0],
            self.block[1],
            self.block[2],
            self.thread[0],
            self.thread[1],
            self.thread[2],
            self.line,
            self.instruction
        )?;
        if let Some(src) = &self.source {
            write!(f, " ({src})")?;
        }
        Ok(())
    }
}

/// Every fallible call of the interpreter returns this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PtxError {
    // Loading.
    /// The PTX text does not parse.
    #[error("PTX parse error at line {line}: {detail}")]
    Parse { line: u32, detail: String },
    /// The kernel uses an instruction the interpreter does not implement.
    #[error("kernel `{kernel}` line {line}: unsupported instruction `{instruction}`: {detail}")]
    Unsupported {
        kernel: String,
        line: u32,
        instruction: String,
        detail: String,
    },
    /// No `.entry` of that name in the module.
    #[error("no kernel named `{0}` in the module")]
    NoSuchKernel(String),
    /// Launch configuration or parameter buffer does not fit the kernel.
    #[error("kernel `{kernel}`: bad launch: {detail}")]
    BadLaunch { kernel: String, detail: String },

    // Host-side memory management.
    /// A host copy or free touched memory that is not a live allocation.
    #[error("host access to {address:#x} (+{size} bytes) is outside every live allocation")]
    HostOutOfBounds { address: u64, size: u64 },

    // Faults found while running a kernel.
    /// A global (or generic resolving to global) access outside every live allocation.
    #[error("out-of-bounds global {access} of {size} bytes at {address:#x} in {site}{note}")]
    GlobalOutOfBounds {
        site: Box<FaultSite>,
        access: &'static str,
        address: u64,
        size: u32,
        note: String,
    },
    /// A shared-memory access past the block's shared size.
    #[error(
        "out-of-bounds shared {access} of {size} bytes at shared offset {address:#x} \
         (block has {shared_size} bytes) in {site}"
    )]
    SharedOutOfBounds {
        site: Box<FaultSite>,
        access: &'static str,
        address: u64,
        size: u32,
        shared_size: u32,
    },
    /// A local (stack) access outside the thread's frame, or a param access past the buffer.
    #[error("out-of-bounds {space} {access} of {size} bytes at {address:#x} in {site}")]
    OtherOutOfBounds {
        site: Box<FaultSite>,
        space: &'static str,
        access: &'static str,
        address: u64,
        size: u32,
    },
    /// An access whose address is not a multiple of its size.
    #[error("misaligned {access} of {size} bytes at {address:#x} in {site}")]
    Misaligned {
        site: Box<FaultSite>,
        access: &'static str,
        address: u64,
        size: u32,
    },
    /// Two threads of a block touched the same shared byte between two barriers, one writing.
    #[error(
        "shared-memory race on shared offset {address:#x}: {this_access} by thread ({},{},{}) \
         conflicts with an earlier {other_access} by thread ({},{},{}) (line {other_line}) \
         with no barrier between, in {site}",
        site.thread[0], site.thread[1], site.thread[2],
        other_thread[0], other_thread[1], other_thread[2]
    )]
    SharedRace {
        site: Box<FaultSite>,
        address: u64,
        this_access: &'static str,
        other_access: &'static str,
        other_thread: [u32; 3],
        other_line: u32,
    },
    /// A read of shared memory that nothing wrote during this block (opt-in check).
    #[error("read of uninitialised shared memory at shared offset {address:#x} in {site}")]
    UninitializedShared { site: Box<FaultSite>, address: u64 },
    /// A fault that is neither of the above (trap, bad shuffle mask, step limit, ...).
    #[error("{detail} in {site}")]
    Fault {
        site: Box<FaultSite>,
        detail: String,
    },
}

/// The interpreter's result type.
pub type PtxResult<T> = std::result::Result<T, PtxError>;

impl From<PtxError> for crate::error::Error {
    fn from(e: PtxError) -> Self {
        crate::error::Error::Cuda(format!("PTX interpreter: {e}"))
    }
}
