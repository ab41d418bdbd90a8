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

/// Asks the C allocator to keep freed memory for reuse instead of returning it to the kernel.
///
/// A training step allocates and frees the same activation-sized buffers (a few to tens of
/// MiB) every time. glibc serves buffers above its mmap threshold with fresh `mmap`s and trims
/// the heap top after large frees, so each step used to page-fault and zero ~270 MB again
/// (`perf stat -e page-faults`: 139k faults for 7 steps at 64 px; 69k with this, the rest
/// being the first touch of the weights and optimiser state). Raising the mmap threshold to
/// 32 MiB (glibc's maximum) and the trim threshold to 512 MiB keeps those pages mapped.
///
/// It changes process-wide allocator settings, so the library never calls it by itself: the
/// `labelwise` binary does at start-up, and embedders may. Returns whether the settings were
/// applied (only on Linux with glibc; elsewhere it does nothing and returns false).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's mallopt parameter numbers (malloc.h).
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only updates the allocator's tunables under its own lock; it is
        // safe to call at any time, from any thread, and returns 0 for rejected values.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 512 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
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
