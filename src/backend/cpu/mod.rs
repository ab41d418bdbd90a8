//! The f32 CPU backend: the reference every CUDA kernel is checked against.
//!
//! Each op family lives in its own file with a kernel generic over [`float::Float`] (run in
//! f32, checked by finite differences in f64) and a thin tensor wrapper that validates shapes;
//! this file only dispatches the [`Backend`] methods to them.

mod adam;
mod batch_norm;
mod conv;
mod cosface;
mod elementwise;
mod float;
mod loss;
mod matmul;
mod memory;
mod pool;
#[cfg(test)]
mod testing;

pub use memory::keep_freed_memory;

use crate::backend::*;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// Elements per rayon task in elementwise loops: large enough that scheduling costs little
/// against the arithmetic, small enough to balance a 64x32x32 activation over a few cores.
const PAR_CHUNK: usize = 1 << 14;

/// Wraps a host buffer already known to hold `shape.iter().product()` elements.
fn cpu_tensor(data: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::new(Storage::Cpu(data), shape)
}

/// `shape` as exactly `R` dimensions, or a shape error naming the operand.
fn dims<const R: usize>(op: &'static str, what: &str, shape: &[usize]) -> Result<[usize; R]> {
    shape
        .try_into()
        .map_err(|_| Error::shape(op, format!("{what} {shape:?} is not {R}-dimensional")))
}

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!("{:?} vs {:?}", a.shape(), b.shape()),
        ));
    }
    Ok(())
}

/// The host buffer of a CPU tensor held by one handle, for in-place updates.
fn slice_mut<'a>(op: &'static str, t: &'a mut Tensor) -> Result<&'a mut [f32]> {
    match t.storage_mut(op)? {
        Storage::Cpu(v) => Ok(v),
        other => Err(Error::Device {
            op,
            expected: "cpu",
            found: other.device_name(),
        }),
    }
}

/// The multithreaded CPU backend (threads from rayon, matrix products from `gemm`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn from_host(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        memory::from_host(data, shape)
    }

    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        memory::to_host(x)
    }

    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        memory::zeros(shape)
    }

    fn peak_device_bytes(&self) -> Option<usize> {
        None
    }

    fn non_finite_count(&self, x: &Tensor) -> Result<usize> {
        memory::non_finite_count(x)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        elementwise::add(a, b)
    }

    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        elementwise::add_assign(a, b)
    }

    fn scale(&self, x: &Tensor, alpha: f32) -> Result<Tensor> {
        elementwise::scale(x, alpha)
    }

    fn lerp_assign(&self, a: &mut Tensor, b: &Tensor, alpha: f32, weight: f32) -> Result<()> {
        elementwise::lerp_assign(a, b, alpha, weight)
    }

    fn relu_fwd(&self, x: &Tensor) -> Result<Tensor> {
        elementwise::relu_fwd(x)
    }

    fn relu_bwd(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        elementwise::relu_bwd(dy, y)
    }

    fn channel_sum(&self, x: &Tensor) -> Result<Tensor> {
        elementwise::channel_sum(x)
    }

    fn conv2d_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        conv::conv2d_fwd(x, w, bias, p)
    }

    fn conv2d_bwd_data(
        &self,
        dy: &Tensor,
        w: &Tensor,
        x_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<Tensor> {
        conv::conv2d_bwd_data(dy, w, x_shape, p)
    }

    fn conv2d_bwd_filter(
        &self,
        x: &Tensor,
        dy: &Tensor,
        w_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<Tensor> {
        conv::conv2d_bwd_filter(x, dy, w_shape, p)
    }

    fn batch_norm_fwd_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        p: BatchNormParams,
    ) -> Result<BatchNormTrainOut> {
        batch_norm::batch_norm_fwd_train(x, gamma, beta, p)
    }

    fn batch_norm_fwd_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        p: BatchNormParams,
    ) -> Result<Tensor> {
        batch_norm::batch_norm_fwd_eval(x, gamma, beta, running_mean, running_var, p)
    }

    fn batch_norm_bwd(
        &self,
        dy: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        p: BatchNormParams,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        batch_norm::batch_norm_bwd(dy, x, gamma, mean, var, p)
    }

    fn max_pool_fwd(&self, x: &Tensor, p: PoolParams) -> Result<Tensor> {
        pool::max_pool_fwd(x, p)
    }

    fn max_pool_bwd(&self, dy: &Tensor, x: &Tensor, y: &Tensor, p: PoolParams) -> Result<Tensor> {
        pool::max_pool_bwd(dy, x, y, p)
    }

    fn avg_pool_global_fwd(&self, x: &Tensor) -> Result<Tensor> {
        pool::avg_pool_global_fwd(x)
    }

    fn avg_pool_global_bwd(&self, dy: &Tensor, x_shape: &[usize]) -> Result<Tensor> {
        pool::avg_pool_global_bwd(dy, x_shape)
    }

    fn cosface_fwd(
        &self,
        emb: &Tensor,
        weight: &Tensor,
        targets: Option<&Tensor>,
        p: CosFaceParams,
    ) -> Result<Tensor> {
        cosface::cosface_fwd(emb, weight, targets, p)
    }

    fn cosface_bwd(
        &self,
        dlogits: &Tensor,
        emb: &Tensor,
        weight: &Tensor,
        p: CosFaceParams,
    ) -> Result<(Tensor, Tensor)> {
        cosface::cosface_bwd(dlogits, emb, weight, p)
    }

    fn softmax_xent_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        loss::softmax_xent_fwd(logits, targets)
    }

    fn softmax_xent_bwd(&self, logits: &Tensor, targets: &Tensor, dloss: f32) -> Result<Tensor> {
        loss::softmax_xent_bwd(logits, targets, dloss)
    }

    fn sigmoid_xent_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        loss::sigmoid_xent_fwd(logits, targets)
    }

    fn sigmoid_xent_bwd(&self, logits: &Tensor, targets: &Tensor, dloss: f32) -> Result<Tensor> {
        loss::sigmoid_xent_bwd(logits, targets, dloss)
    }

    fn probabilities(&self, logits: &Tensor, multilabel: bool) -> Result<Tensor> {
        loss::probabilities(logits, multilabel)
    }

    fn adam_update(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        p: AdamParams,
    ) -> Result<()> {
        adam::adam_update(param, grad, m, v, p)
    }

    // TODO: pool scoring is written in `crate::active` and wired here by the lead.
    fn score_pool(&self, logits: &Tensor, p: ScoreParams) -> Result<Tensor> {
        let [n, l] = logits.shape() else {
            return Err(Error::shape(
                "score_pool",
                format!("logits {:?} are not [N, L]", logits.shape()),
            ));
        };
        let scores =
            crate::active::uncertainty::score_rows(logits.cpu_slice("score_pool")?, *l, p)?;
        Tensor::from_vec(scores, &[*n])
    }

    fn top_k(&self, scores: &Tensor, k: usize) -> Result<Vec<usize>> {
        Ok(crate::active::select::top_k(scores.cpu_slice("top_k")?, k))
    }
}
