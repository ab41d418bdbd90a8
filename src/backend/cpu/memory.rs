//! Host transfers, allocation and the finiteness census.

use rayon::prelude::*;

use super::{cpu_tensor, PAR_CHUNK};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub(super) fn from_host(data: &[f32], shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data.to_vec(), shape)
}

pub(super) fn to_host(x: &Tensor) -> Result<Vec<f32>> {
    Ok(x.cpu_slice("to_host")?.to_vec())
}

pub(super) fn zeros(shape: &[usize]) -> Result<Tensor> {
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::shape("zeros", format!("{shape:?} overflows usize")))?;
    Ok(cpu_tensor(vec![0.0; n], shape))
}

pub(super) fn non_finite_count(x: &Tensor) -> Result<usize> {
    Ok(x.cpu_slice("non_finite_count")?
        .par_chunks(PAR_CHUNK)
        .map(|c| c.iter().filter(|v| !v.is_finite()).count())
        .sum())
}
