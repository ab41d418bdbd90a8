//! The device-agnostic tensor handle: a shape plus shared storage on one backend.

use std::sync::Arc;

use crate::backend::{self, Backend};
use crate::error::{Error, Result};

/// Where a tensor's elements live.
pub enum Storage {
    /// Row-major f32 in host memory.
    Cpu(Vec<f32>),
    /// Row-major f32 in device memory.
    Cuda(backend::cuda::CudaStorage),
}

impl Storage {
    /// The backend's name, for error messages.
    pub fn device_name(&self) -> &'static str {
        match self {
            Storage::Cpu(_) => "cpu",
            Storage::Cuda(_) => "cuda",
        }
    }
}

/// An f32 tensor. Cloning is cheap (the storage is shared); in-place updates need the only
/// handle (see [`Tensor::storage_mut`]).
///
/// Activations are channels-last: images are `[N, H, W, C]`, convolution weights
/// `[C_out, kh, kw, C_in]`.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Arc<Storage>,
}

impl Tensor {
    /// Wraps `storage` holding `shape.iter().product()` elements.
    pub fn new(storage: Storage, shape: &[usize]) -> Self {
        Tensor {
            shape: shape.to_vec(),
            storage: Arc::new(storage),
        }
    }

    /// A host tensor from `data`, checked against `shape`.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if data.len() != n {
            return Err(Error::shape(
                "from_vec",
                format!("{} elements for shape {shape:?} ({n} expected)", data.len()),
            ));
        }
        Ok(Tensor::new(Storage::Cpu(data), shape))
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Mutable storage for in-place updates; fails if another handle shares it.
    pub fn storage_mut(&mut self, op: &'static str) -> Result<&mut Storage> {
        Arc::get_mut(&mut self.storage).ok_or(Error::SharedTensor { op })
    }

    /// The same storage seen with another shape of equal size.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.len() {
            return Err(Error::shape(
                "reshape",
                format!("{:?} -> {shape:?}", self.shape),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: self.storage.clone(),
        })
    }

    /// The backend that owns this tensor's storage.
    pub fn backend(&self) -> &dyn Backend {
        match &*self.storage {
            Storage::Cpu(_) => &backend::cpu::CpuBackend,
            Storage::Cuda(s) => s.backend(),
        }
    }

    /// The host slice of a CPU tensor.
    pub fn cpu_slice(&self, op: &'static str) -> Result<&[f32]> {
        match &*self.storage {
            Storage::Cpu(v) => Ok(v),
            other => Err(Error::Device {
                op,
                expected: "cpu",
                found: other.device_name(),
            }),
        }
    }

    /// Copies the elements to host memory, whatever the device.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.backend().to_host(self)
    }

    /// The single element of a one-element tensor, copied to the host.
    pub fn scalar(&self) -> Result<f32> {
        if self.len() != 1 {
            return Err(Error::shape(
                "scalar",
                format!("{:?} is not one element", self.shape),
            ));
        }
        Ok(self.to_vec()?[0])
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?} on {})",
            self.shape,
            self.storage.device_name()
        )
    }
}
