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

#[cfg(test)]
mod tests {
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;
    use crate::error::Error;

    #[test]
    fn round_trip_zeros_and_census() {
        let b = CpuBackend;
        let x = b.from_host(
            &[1.0, f32::NAN, f32::INFINITY, -f32::INFINITY, 0.0, 2.0],
            &[2, 3],
        );
        let x = x.expect("from_host");
        assert_eq!(x.shape(), [2, 3]);
        assert_eq!(b.non_finite_count(&x).expect("census"), 3);
        assert_eq!(b.to_host(&x).expect("to_host")[5], 2.0);
        assert!(matches!(
            b.from_host(&[1.0; 5], &[2, 3]),
            Err(Error::Shape { .. })
        ));

        let z = b.zeros(&[3, 1, 2]).expect("zeros");
        assert_eq!(b.to_host(&z).expect("to_host"), vec![0.0; 6]);
        assert!(matches!(
            b.zeros(&[usize::MAX, 3]),
            Err(Error::Shape { .. })
        ));
    }
}
