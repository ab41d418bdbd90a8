//! The CUDA backend's device layer on the PTX interpreter: the very PTX build.rs compiled,
//! executed on the CPU with bounds and race checks, so the whole CUDA backend runs in CI
//! without a GPU.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::device::{DevPtr, DeviceApi, LaunchDims};
use super::kernels::{Kernel, ModuleImage};
use crate::error::{Error, Result};
use crate::ptx::{LaunchOptions, Machine, Module};

/// A [`DeviceApi`] whose memory is host memory and whose launches are interpreted.
///
/// Launches run to completion before returning, so work is ordered as on one stream and
/// `synchronize` has nothing to wait for. Checks and tracing follow
/// [`LaunchOptions::from_env`] (`LABELWISE_PTX_RACES`, `LABELWISE_PTX_UNINIT`,
/// `LABELWISE_PTX_SERIAL`, `LABELWISE_PTX_TRACE=bx,by,bz:tx,ty,tz`).
pub struct EmulatedDevice {
    machine: Machine,
    modules: Mutex<HashMap<&'static str, Arc<Module>>>,
}

impl EmulatedDevice {
    pub fn new() -> Self {
        EmulatedDevice::with_options(LaunchOptions::from_env())
    }

    pub fn with_options(options: LaunchOptions) -> Self {
        EmulatedDevice {
            machine: Machine::new(options),
            modules: Mutex::default(),
        }
    }

    /// The interpreter, for tests that inspect allocations.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    fn module(&self, name: &str) -> Result<Arc<Module>> {
        let modules = self
            .modules
            .lock()
            .map_err(|_| Error::Cuda("module table poisoned".into()))?;
        modules
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Cuda(format!("emulated device: module {name} is not loaded")))
    }
}

impl Default for EmulatedDevice {
    fn default() -> Self {
        EmulatedDevice::new()
    }
}

impl DeviceApi for EmulatedDevice {
    fn describe(&self) -> String {
        format!(
            "PTX interpreter on {} CPU threads",
            rayon::current_num_threads()
        )
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        Ok(self.machine.alloc(bytes as u64))
    }

    fn free(&self, ptr: DevPtr) -> Result<()> {
        Ok(self.machine.free(ptr)?)
    }

    fn copy_h2d(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        Ok(self.machine.write(dst, src)?)
    }

    fn copy_d2h(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        Ok(self.machine.read(src, dst)?)
    }

    fn fill_u32(&self, dst: DevPtr, value: u32, count: usize) -> Result<()> {
        let bytes: Vec<u8> = std::iter::repeat_n(value.to_le_bytes(), count)
            .flatten()
            .collect();
        Ok(self.machine.write(dst, &bytes)?)
    }

    fn load_module(&self, module: &ModuleImage) -> Result<()> {
        let parsed = Module::parse(module.ptx)?;
        let mut modules = self
            .modules
            .lock()
            .map_err(|_| Error::Cuda("module table poisoned".into()))?;
        modules.insert(module.name, Arc::new(parsed));
        Ok(())
    }

    fn load_kernel(&self, kernel: &Kernel) -> Result<()> {
        self.module(kernel.module)?.kernel(kernel.name)?;
        Ok(())
    }

    unsafe fn launch(&self, kernel: &Kernel, dims: LaunchDims, params: &[u8]) -> Result<()> {
        let module = self.module(kernel.module)?;
        self.machine.launch(
            &module,
            kernel.name,
            dims.grid,
            dims.block,
            dims.shared_bytes,
            params,
        )?;
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
