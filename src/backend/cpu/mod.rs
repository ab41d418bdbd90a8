//! The f32 CPU backend: the reference every CUDA kernel is checked against.

#![allow(unused_variables)]

use crate::backend::*;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The multithreaded CPU backend (threads from rayon, matrix products from `gemm`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn from_host(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "from_host not implemented yet"
        )))
    }

    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "to_host not implemented yet"
        )))
    }

    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "zeros not implemented yet"
        )))
    }

    fn non_finite_count(&self, x: &Tensor) -> Result<usize> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "non_finite_count not implemented yet"
        )))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "add not implemented yet"
        )))
    }

    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "add_assign not implemented yet"
        )))
    }

    fn scale(&self, x: &Tensor, alpha: f32) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "scale not implemented yet"
        )))
    }

    fn lerp_assign(&self, a: &mut Tensor, b: &Tensor, alpha: f32, weight: f32) -> Result<()> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "lerp_assign not implemented yet"
        )))
    }

    fn relu_fwd(&self, x: &Tensor) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "relu_fwd not implemented yet"
        )))
    }

    fn relu_bwd(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "relu_bwd not implemented yet"
        )))
    }

    fn channel_sum(&self, x: &Tensor) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "channel_sum not implemented yet"
        )))
    }

    fn conv2d_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "conv2d_fwd not implemented yet"
        )))
    }

    fn conv2d_bwd_data(
        &self,
        dy: &Tensor,
        w: &Tensor,
        x_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "conv2d_bwd_data not implemented yet"
        )))
    }

    fn conv2d_bwd_filter(
        &self,
        x: &Tensor,
        dy: &Tensor,
        w_shape: &[usize],
        p: Conv2dParams,
    ) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "conv2d_bwd_filter not implemented yet"
        )))
    }

    fn batch_norm_fwd_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        p: BatchNormParams,
    ) -> Result<BatchNormTrainOut> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "batch_norm_fwd_train not implemented yet"
        )))
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
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "batch_norm_fwd_eval not implemented yet"
        )))
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
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "batch_norm_bwd not implemented yet"
        )))
    }

    fn max_pool_fwd(&self, x: &Tensor, p: PoolParams) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "max_pool_fwd not implemented yet"
        )))
    }

    fn max_pool_bwd(&self, dy: &Tensor, x: &Tensor, y: &Tensor, p: PoolParams) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "max_pool_bwd not implemented yet"
        )))
    }

    fn avg_pool_global_fwd(&self, x: &Tensor) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "avg_pool_global_fwd not implemented yet"
        )))
    }

    fn avg_pool_global_bwd(&self, dy: &Tensor, x_shape: &[usize]) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "avg_pool_global_bwd not implemented yet"
        )))
    }

    fn cosface_fwd(
        &self,
        emb: &Tensor,
        weight: &Tensor,
        targets: Option<&Tensor>,
        p: CosFaceParams,
    ) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "cosface_fwd not implemented yet"
        )))
    }

    fn cosface_bwd(
        &self,
        dlogits: &Tensor,
        emb: &Tensor,
        weight: &Tensor,
        p: CosFaceParams,
    ) -> Result<(Tensor, Tensor)> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "cosface_bwd not implemented yet"
        )))
    }

    fn softmax_xent_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "softmax_xent_fwd not implemented yet"
        )))
    }

    fn softmax_xent_bwd(&self, logits: &Tensor, targets: &Tensor, dloss: f32) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "softmax_xent_bwd not implemented yet"
        )))
    }

    fn sigmoid_xent_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "sigmoid_xent_fwd not implemented yet"
        )))
    }

    fn sigmoid_xent_bwd(&self, logits: &Tensor, targets: &Tensor, dloss: f32) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "sigmoid_xent_bwd not implemented yet"
        )))
    }

    fn probabilities(&self, logits: &Tensor, multilabel: bool) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "probabilities not implemented yet"
        )))
    }

    fn adam_update(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        p: AdamParams,
    ) -> Result<()> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "adam_update not implemented yet"
        )))
    }

    fn score_pool(&self, logits: &Tensor, p: ScoreParams) -> Result<Tensor> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "score_pool not implemented yet"
        )))
    }

    fn top_k(&self, scores: &Tensor, k: usize) -> Result<Vec<usize>> {
        Err(Error::Unsupported(format!(
            "cpu: {}",
            "top_k not implemented yet"
        )))
    }
}
