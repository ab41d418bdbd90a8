//! The backend interface: one method per primitive, implemented by the CPU reference and by
//! the CUDA backend. A backend that lacks an op does not compile.
//!
//! Conventions shared by every implementation:
//! - tensors are row-major f32; images are channels-last `[N, H, W, C]`;
//! - convolution weights are `[C_out, kh, kw, C_in]` (square kernels, no groups, no dilation);
//! - a `*_bwd` method returns the gradients of its `*_fwd` inputs, in argument order;
//! - reductions accumulate in f32 at least (the CPU reference accumulates in f64 where cheap).

pub mod cpu;
pub mod cuda;
pub mod profile;

use std::sync::Arc;

use crate::error::Result;
use crate::tensor::Tensor;

/// Stride and zero padding of a square convolution; the kernel size comes from the weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: usize,
    pub padding: usize,
}

/// A square pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolParams {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// Batch norm's numerical guard added to the variance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormParams {
    pub eps: f32,
}

/// The statistics batch norm computes in training mode.
pub struct BatchNormTrainOut {
    /// The normalised, scaled and shifted output, shaped like the input.
    pub y: Tensor,
    /// Per-channel batch mean, `[C]`.
    pub mean: Tensor,
    /// Per-channel biased batch variance, `[C]`.
    pub var: Tensor,
}

/// The CosFace head: logits are `scale * (cos - margin * t)`, where `cos` is the cosine between
/// the L2-normalised embedding and class weight, and `t` is the one-hot target for softmax data
/// (margin on the true class only) or `2y - 1` for multi-label data (margin pushes positives
/// down and negatives up). Without targets the margin is not applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosFaceParams {
    pub margin: f32,
    pub scale: f32,
    pub multilabel: bool,
}

/// Adam with PyTorch's semantics: `decoupled == false` adds `weight_decay * param` to the
/// gradient (Adam), `true` decays the parameter directly (AdamW). `step` counts from 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub decoupled: bool,
    pub step: u32,
}

/// Per-label uncertainty measure computed from logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Uncertainty {
    /// `1 - max p` (softmax) or `1 - max(p, 1 - p)` per label (multi-label).
    LeastConfidence,
    /// `1 - (p_top1 - p_top2)` (softmax) or `1 - |2p - 1|` per label (multi-label).
    Margin,
    /// `-sum p ln p` (softmax) or the binary entropy per label (multi-label), in nats.
    Entropy,
}

/// How per-label scores of a multi-label row become one score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aggregate {
    Mean,
    Max,
    Sum,
}

/// What [`Backend::score_pool`] computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreParams {
    pub uncertainty: Uncertainty,
    pub aggregate: Aggregate,
    pub multilabel: bool,
}

/// Every primitive the engine needs. Methods never panic on bad shapes: they return
/// [`crate::Error::Shape`] naming the op.
pub trait Backend: Send + Sync {
    /// "cpu" or "cuda".
    fn name(&self) -> &'static str;

    // Memory.
    /// Copies host data into a new tensor on this backend (hence `&self`).
    #[allow(clippy::wrong_self_convention)]
    fn from_host(&self, data: &[f32], shape: &[usize]) -> Result<Tensor>;
    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>>;
    fn zeros(&self, shape: &[usize]) -> Result<Tensor>;
    /// The most device memory held at once so far, in bytes (None for host memory).
    fn peak_device_bytes(&self) -> Option<usize>;
    /// Number of NaN or infinite elements.
    fn non_finite_count(&self, x: &Tensor) -> Result<usize>;

    // Elementwise.
    /// `a + b`, same shapes (the residual add).
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `a += b` in place (gradient accumulation).
    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()>;
    /// `alpha * x`.
    fn scale(&self, x: &Tensor, alpha: f32) -> Result<Tensor>;
    /// `a = (1 - weight) * a + weight * alpha * b` in place (running statistics).
    fn lerp_assign(&self, a: &mut Tensor, b: &Tensor, alpha: f32, weight: f32) -> Result<()>;
    fn relu_fwd(&self, x: &Tensor) -> Result<Tensor>;
    /// `dy` where the forward output `y` is positive, else 0.
    fn relu_bwd(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor>;
    /// Sums every axis but the last: `[.., C] -> [C]` (a convolution bias gradient).
    fn channel_sum(&self, x: &Tensor) -> Result<Tensor>;

    // Convolution, `x [N, H, W, Ci]`, `w [Co, k, k, Ci]`, `y [N, Ho, Wo, Co]`.
    fn conv2d_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor>;
    fn conv2d_bwd_data(
        &self,
        dy: &Tensor,
        w: &Tensor,
        x_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<Tensor>;
    fn conv2d_bwd_filter(
        &self,
        x: &Tensor,
        dy: &Tensor,
        w_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<Tensor>;

    // Batch norm over every axis but the last (channels).
    fn batch_norm_fwd_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        p: BatchNormParams,
    ) -> Result<BatchNormTrainOut>;
    fn batch_norm_fwd_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        p: BatchNormParams,
    ) -> Result<Tensor>;
    /// Returns `(dx, dgamma, dbeta)` given the batch statistics of the forward pass.
    fn batch_norm_bwd(
        &self,
        dy: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        p: BatchNormParams,
    ) -> Result<(Tensor, Tensor, Tensor)>;

    // Pooling. Max pool's padding never wins (it acts as -inf); its backward routes each
    // gradient to the first maximum of the window in row-major order.
    fn max_pool_fwd(&self, x: &Tensor, p: PoolParams) -> Result<Tensor>;
    fn max_pool_bwd(&self, dy: &Tensor, x: &Tensor, y: &Tensor, p: PoolParams) -> Result<Tensor>;
    /// `[N, H, W, C] -> [N, C]`.
    fn avg_pool_global_fwd(&self, x: &Tensor) -> Result<Tensor>;
    fn avg_pool_global_bwd(&self, dy: &Tensor, x_shape: &[usize]) -> Result<Tensor>;

    // CosFace head, `emb [N, D]`, `weight [L, D]`, `logits [N, L]`. A zero row has cosine 0.
    fn cosface_fwd(
        &self,
        emb: &Tensor,
        weight: &Tensor,
        targets: Option<&Tensor>,
        p: CosFaceParams,
    ) -> Result<Tensor>;
    /// Returns `(d_emb, d_weight)`.
    fn cosface_bwd(
        &self,
        dlogits: &Tensor,
        emb: &Tensor,
        weight: &Tensor,
        p: CosFaceParams,
    ) -> Result<(Tensor, Tensor)>;

    // Losses. Softmax cross-entropy is the mean over rows; sigmoid cross-entropy the mean over
    // all elements (as PyTorch's defaults), returned as a `[1]` tensor. Targets are `[N, L]` in
    // {0, 1}. The backward takes
    // the upstream gradient of the scalar loss.
    fn softmax_xent_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor>;
    fn softmax_xent_bwd(&self, logits: &Tensor, targets: &Tensor, dloss: f32) -> Result<Tensor>;
    fn sigmoid_xent_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor>;
    fn sigmoid_xent_bwd(&self, logits: &Tensor, targets: &Tensor, dloss: f32) -> Result<Tensor>;
    /// Row softmax, or elementwise sigmoid for multi-label data.
    fn probabilities(&self, logits: &Tensor, multilabel: bool) -> Result<Tensor>;

    // Optimiser.
    fn adam_update(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        p: AdamParams,
    ) -> Result<()>;

    // Pool scoring.
    /// One uncertainty score per row of `logits [N, L]` (higher is more uncertain).
    fn score_pool(&self, logits: &Tensor, p: ScoreParams) -> Result<Tensor>;
    /// Indices of the `k` largest scores, largest first; ties go to the lower index.
    fn top_k(&self, scores: &Tensor, k: usize) -> Result<Vec<usize>>;
}

/// A shared handle on a backend.
pub type BackendHandle = Arc<dyn Backend>;

/// What the user asked for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA when a GPU and the kernels are present, else the CPU with a notice.
    #[default]
    Auto,
    Cpu,
    Cuda,
    /// The CUDA backend on the PTX interpreter (our kernels run on the CPU, checked).
    CudaEmulated,
}

impl std::str::FromStr for DeviceChoice {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            "cuda-emulated" => Ok(DeviceChoice::CudaEmulated),
            _ => Err(crate::Error::InvalidArgument(format!(
                "unknown device {s:?} (expected auto, cpu, cuda or cuda-emulated)"
            ))),
        }
    }
}

/// Opens the backend the user asked for.
pub fn open(choice: DeviceChoice) -> Result<BackendHandle> {
    match choice {
        DeviceChoice::Cpu => Ok(Arc::new(cpu::CpuBackend)),
        DeviceChoice::Cuda => cuda::CudaBackend::open(0).map(|b| b as BackendHandle),
        DeviceChoice::CudaEmulated => cuda::CudaBackend::emulated().map(|b| b as BackendHandle),
        DeviceChoice::Auto => match cuda::CudaBackend::open(0) {
            Ok(b) => Ok(b),
            Err(e) => {
                log::info!("using the CPU backend ({e})");
                Ok(Arc::new(cpu::CpuBackend))
            }
        },
    }
}
