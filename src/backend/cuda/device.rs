//! The one narrow interface between the CUDA backend and a device, and its implementation on
//! the CUDA driver through cudarc.
//!
//! The backend never calls the driver directly: everything goes through [`DeviceApi`], so a
//! second implementation (the PTX interpreter, which executes the embedded PTX on the CPU) can
//! stand in for a GPU.
//!
//! # Contract for implementations
//! - Device memory is addressed by raw 64-bit [`DevPtr`]s, which also travel inside kernel
//!   parameter structs; 0 is never a valid allocation (kernels read 0 as "no tensor").
//! - All work is ordered as issued (one stream): a launch sees every earlier copy, fill and
//!   launch; [`DeviceApi::copy_d2h`] returns after all earlier work and the copy are done.
//! - [`DeviceApi::launch`] receives the bytes of the kernel's one `#[repr(C)]` parameter struct
//!   (see `kernels/common.cuh`), already checked against [`Kernel::param_bytes`]. It may run
//!   asynchronously; errors inside a kernel may surface at a later call.
//! - Methods may be called from any thread; implementations serialise as they need.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

use cudarc::driver::{result, sys, CudaContext};

use super::kernels::{Kernel, ModuleImage};
use crate::error::{Error, Result};

/// A device address.
pub type DevPtr = u64;

/// Grid, block and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchDims {
    /// A 1-D launch of `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32) -> Self {
        LaunchDims {
            grid: [blocks, 1, 1],
            block: [threads, 1, 1],
            shared_bytes: 0,
        }
    }
}

/// What the CUDA backend needs from a device. Object safe: the backend holds an
/// `Arc<dyn DeviceApi>`.
pub trait DeviceApi: Send + Sync {
    /// A one-line description for logs ("NVIDIA H200, sm_90, 139 GiB").
    fn describe(&self) -> String;
    /// Allocates `bytes` (> 0) of device memory, aligned to at least 256 bytes.
    fn alloc(&self, bytes: usize) -> Result<DevPtr>;
    /// Frees an allocation once every earlier launch that uses it has finished.
    fn free(&self, ptr: DevPtr) -> Result<()>;
    /// Copies `src` to device address `dst`.
    fn copy_h2d(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    /// Copies `dst.len()` bytes from device address `src`, after all earlier work.
    fn copy_d2h(&self, src: DevPtr, dst: &mut [u8]) -> Result<()>;
    /// Sets `count` 32-bit words at `dst` to `value` (0 for zeros, NaN bits for poison).
    fn fill_u32(&self, dst: DevPtr, value: u32, count: usize) -> Result<()>;
    /// Makes a module's kernels launchable. Loading the same module twice is a no-op.
    fn load_module(&self, module: &ModuleImage) -> Result<()>;
    /// Resolves `kernel` in its loaded module, failing if the entry point is missing (the
    /// tests call it for every listed kernel; `launch` resolves on first use anyway).
    fn load_kernel(&self, kernel: &Kernel) -> Result<()>;
    /// Launches `kernel` (its module loaded) with `params`, the bytes of its parameter struct.
    ///
    /// # Safety
    /// Every device pointer inside `params` must point to a live allocation large enough for
    /// every element the kernel touches at these launch dimensions, and buffers the kernel
    /// writes must not be read or freed by the host until later work orders after it.
    unsafe fn launch(&self, kernel: &Kernel, dims: LaunchDims, params: &[u8]) -> Result<()>;
    /// Waits for all issued work; reports errors raised by kernels.
    fn synchronize(&self) -> Result<()>;
}

/// The first failure of a driver call, with what was being done.
fn driver(what: impl std::fmt::Display, e: result::DriverError) -> Error {
    Error::Cuda(format!("{what}: {e}"))
}

/// Raw driver handles; the driver lets any thread use them once the context is current.
#[derive(Clone, Copy)]
struct Handle<T>(T);
// SAFETY: CUmodule and CUfunction are opaque driver handles valid in any thread on which the
// owning context is current; `CudarcDevice` binds its context before every use.
unsafe impl<T> Send for Handle<T> {}

/// [`DeviceApi`] on a CUDA GPU through the driver API (cudarc, loaded at run time), using the
/// legacy default stream so copies and launches are ordered as issued.
pub struct CudarcDevice {
    ctx: Arc<CudaContext>,
    modules: Mutex<HashMap<&'static str, Handle<sys::CUmodule>>>,
    functions: Mutex<HashMap<&'static str, Handle<sys::CUfunction>>>,
}

impl CudarcDevice {
    /// Opens GPU `ordinal`, first checking that the driver library exists (cudarc panics
    /// otherwise).
    pub fn open(ordinal: usize) -> Result<Self> {
        // SAFETY: only tries to dlopen the driver library by its usual names.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Cuda(
                "no CUDA driver (libcuda) on this machine".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(|e| driver("counting devices", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Cuda(format!(
                "device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver("creating a context", e))?;
        Ok(CudarcDevice {
            ctx,
            modules: Mutex::default(),
            functions: Mutex::default(),
        })
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver("binding the context", e))
    }

    fn function(&self, kernel: &Kernel) -> Result<sys::CUfunction> {
        let mut functions = self.functions.lock().expect("function cache poisoned");
        if let Some(f) = functions.get(kernel.name) {
            return Ok(f.0);
        }
        let module = self
            .modules
            .lock()
            .expect("module cache poisoned")
            .get(kernel.module)
            .copied();
        let module = module.ok_or_else(|| {
            Error::Cuda(format!(
                "{}: module {} is not loaded",
                kernel.name, kernel.module
            ))
        })?;
        let name = CString::new(kernel.name).expect("kernel names have no NUL");
        // SAFETY: `module` was loaded into our context and is never unloaded before drop.
        let f = unsafe { result::module::get_function(module.0, name) }
            .map_err(|e| driver(format_args!("finding {}", kernel.name), e))?;
        functions.insert(kernel.name, Handle(f));
        Ok(f)
    }
}

impl DeviceApi for CudarcDevice {
    fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (major, minor) = self.ctx.compute_capability().unwrap_or((0, 0));
        let gib = self.ctx.total_mem().unwrap_or(0) as f64 / f64::from(1u32 << 30);
        format!("{name}, sm_{major}{minor}, {gib:.0} GiB")
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.bind()?;
        // SAFETY: plain allocation in the current context; the pointer is freed by `free`.
        unsafe { result::malloc_sync(bytes) }.map_err(|e| driver(format_args!("alloc {bytes}"), e))
    }

    fn free(&self, ptr: DevPtr) -> Result<()> {
        self.bind()?;
        // SAFETY: `ptr` came from `alloc`; cuMemFree waits for work using it to finish.
        unsafe { result::free_sync(ptr) }.map_err(|e| driver("free", e))
    }

    fn copy_h2d(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller owns `src.len()` bytes at `dst`; the copy is synchronous.
        unsafe { result::memcpy_htod_sync(dst, src) }.map_err(|e| driver("copy to device", e))
    }

    fn copy_d2h(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: `src` holds at least `dst.len()` bytes; the copy waits for earlier work.
        unsafe { result::memcpy_dtoh_sync(dst, src) }.map_err(|e| driver("copy to host", e))
    }

    fn fill_u32(&self, dst: DevPtr, value: u32, count: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller owns `count` words at `dst`.
        unsafe { sys::cuMemsetD32_v2(dst, value, count) }
            .result()
            .map_err(|e| driver("fill", e))
    }

    fn load_module(&self, module: &ModuleImage) -> Result<()> {
        let mut modules = self.modules.lock().expect("module cache poisoned");
        if modules.contains_key(module.name) {
            return Ok(());
        }
        self.bind()?;
        // The fatbin carries sm_90 code and compute_80 PTX: the driver picks the native code on
        // Hopper and JIT-compiles the PTX on any other GPU of compute capability 8.0 or newer.
        // SAFETY: the fatbin is a well-formed image produced by nvcc at build time.
        let handle = unsafe { result::module::load_data(module.fatbin.as_ptr() as *const c_void) }
            .map_err(|e| driver(format_args!("loading module {}", module.name), e))?;
        modules.insert(module.name, Handle(handle));
        Ok(())
    }

    fn load_kernel(&self, kernel: &Kernel) -> Result<()> {
        self.bind()?;
        self.function(kernel).map(|_| ())
    }

    unsafe fn launch(&self, kernel: &Kernel, dims: LaunchDims, params: &[u8]) -> Result<()> {
        if params.len() != kernel.param_bytes {
            return Err(Error::Cuda(format!(
                "{}: {} parameter bytes, the kernel takes {}",
                kernel.name,
                params.len(),
                kernel.param_bytes
            )));
        }
        self.bind()?;
        let f = self.function(kernel)?;
        // The driver copies `param_bytes` from the pointer; an aligned copy keeps 8-byte
        // fields aligned whatever the caller's buffer.
        let mut words = vec![0u64; params.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..params.len()].copy_from_slice(params);
        let mut args = [words.as_mut_ptr() as *mut c_void];
        let [gx, gy, gz] = dims.grid;
        let [bx, by, bz] = dims.block;
        // SAFETY: `f` is a kernel of a loaded module taking one struct of `param_bytes`
        // bytes, which `args[0]` points to; the caller guarantees the pointers inside it.
        unsafe {
            result::launch_kernel(
                f,
                (gx, gy, gz),
                (bx, by, bz),
                dims.shared_bytes,
                std::ptr::null_mut(),
                &mut args,
            )
        }
        .map_err(|e| driver(format_args!("launching {} {dims:?}", kernel.name), e))
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.ctx.synchronize().map_err(|e| driver("synchronize", e))
    }
}

impl Drop for CudarcDevice {
    fn drop(&mut self) {
        if self.bind().is_err() {
            return;
        }
        let modules = self
            .modules
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for (_, m) in modules {
            // SAFETY: loaded by us, no function of it is used after the device is dropped.
            let _ = unsafe { result::module::unload(m.0) };
        }
    }
}
