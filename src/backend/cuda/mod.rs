//! The CUDA backend: our own kernels from `kernels/*.cu`, launched through a small device
//! interface ([`device::DeviceApi`]) implemented on the CUDA driver with cudarc.
//!
//! Layout of this folder:
//! - `kernels.rs`: every kernel name (spelled once) and the embedded PTX / fatbin images;
//! - `params.rs`: the `#[repr(C)]` parameter structs mirrored in the `.cu` files;
//! - `device.rs`: [`device::DeviceApi`] and its cudarc implementation;
//! - `memory.rs`: the caching allocator and peak tracking;
//! - `ops.rs`: `impl Backend for CudaBackend`, one launcher per trait method.
//!
//! # Limitations
//! - f32 only; every tensor must have fewer than 2^31 elements (kernels index with `i32`).
//! - One device, one stream: launches are asynchronous but ordered; host reads synchronise.

pub mod device;
pub mod emulated;
pub mod kernels;
pub mod memory;
pub mod params;

mod ops;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use self::device::{CudarcDevice, DevPtr, DeviceApi};
use self::memory::{Allocator, DeviceBuffer, MemoryStats};
use crate::backend::Backend;
use crate::error::{Error, Result};

/// Whether build.rs compiled the kernels into this binary.
pub const KERNELS_BUILT: bool = kernels::BUILT_WITH_NVCC;

/// Device memory of one tensor, with the backend that owns it. Dropping it returns the buffer
/// to the backend's cache.
pub struct CudaStorage {
    buffer: DeviceBuffer,
    len: usize,
    backend: Arc<CudaBackend>,
}

impl CudaStorage {
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The device address of the first element.
    pub fn ptr(&self) -> DevPtr {
        self.buffer.ptr()
    }

    /// Number of f32 elements.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One line on how this binary's CUDA kernels were built, for start-up tables.
pub fn kernel_build_summary() -> String {
    match KERNELS_BUILT {
        true => format!(
            "{} kernels in {} modules, {}",
            kernels::ALL.len(),
            kernels::PTX_MODULES.len(),
            kernels::NVCC_VERSION
        ),
        false => "not built (nvcc was not found at build time)".to_string(),
    }
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    device: Arc<dyn DeviceApi>,
    memory: Arc<Allocator>,
    /// Fill every new buffer with NaN before use, so a kernel that leaves elements unwritten
    /// shows it (the test harness turns this on).
    poison: AtomicBool,
    this: Weak<CudaBackend>,
}

impl CudaBackend {
    /// Opens GPU `ordinal`, or says why it cannot: [`Error::BuiltWithoutCuda`] when build.rs
    /// found no nvcc, [`Error::Cuda`] when there is no driver or no such device. Never panics.
    pub fn open(ordinal: usize) -> Result<Arc<CudaBackend>> {
        if !KERNELS_BUILT {
            return Err(Error::BuiltWithoutCuda);
        }
        let device = CudarcDevice::open(ordinal)?;
        log::info!("cuda: {}", device.describe());
        CudaBackend::with_device(Arc::new(device))
    }

    /// The backend on the PTX interpreter: our compiled kernels executed on the CPU with
    /// bounds and race checks (slow; for tests and kernel development).
    pub fn emulated() -> Result<Arc<CudaBackend>> {
        CudaBackend::with_device(Arc::new(emulated::EmulatedDevice::new()))
    }

    /// The backend on any [`DeviceApi`] implementation (a GPU, or the PTX interpreter), with
    /// every kernel module loaded.
    pub fn with_device(device: Arc<dyn DeviceApi>) -> Result<Arc<CudaBackend>> {
        if !KERNELS_BUILT {
            return Err(Error::BuiltWithoutCuda);
        }
        for module in kernels::MODULES {
            device.load_module(module)?;
        }
        let memory = Allocator::new(device.clone());
        Ok(Arc::new_cyclic(|this| CudaBackend {
            device,
            memory,
            poison: AtomicBool::new(false),
            this: this.clone(),
        }))
    }

    /// The device this backend launches on.
    pub fn device(&self) -> &Arc<dyn DeviceApi> {
        &self.device
    }

    /// The most device memory held at once (in use plus cached), in bytes.
    pub fn peak_bytes(&self) -> usize {
        self.memory.stats().peak_reserved
    }

    pub fn memory_stats(&self) -> MemoryStats {
        self.memory.stats()
    }

    /// Returns cached buffers to the driver.
    pub fn release_cached(&self) -> Result<()> {
        self.memory.release_cached()
    }

    /// When on, every buffer handed out is first filled with NaN (for tests).
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    /// Waits for every launch so far.
    pub fn synchronize(&self) -> Result<()> {
        self.device.synchronize()
    }

    fn arc(&self) -> Arc<CudaBackend> {
        self.this
            .upgrade()
            .expect("a CudaBackend is always owned by an Arc")
    }

    /// A scratch buffer of `bytes` bytes (NaN-filled when poisoning).
    fn scratch(&self, bytes: usize) -> Result<DeviceBuffer> {
        let buffer = self.memory.alloc(bytes)?;
        if self.poison.load(Ordering::Relaxed) {
            self.device
                .fill_u32(buffer.ptr(), f32::NAN.to_bits(), buffer.bytes() / 4)?;
        }
        Ok(buffer)
    }

    /// An uninitialised (or NaN-poisoned) f32 tensor.
    fn empty(&self, shape: &[usize]) -> Result<crate::tensor::Tensor> {
        let len: usize = shape.iter().product();
        let buffer = self.scratch(len * 4)?;
        let storage = CudaStorage {
            buffer,
            len,
            backend: self.arc(),
        };
        Ok(crate::tensor::Tensor::new(
            crate::tensor::Storage::Cuda(storage),
            shape,
        ))
    }
}
