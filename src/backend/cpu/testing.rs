//! Test support: seeded inputs, named tolerances, closeness reports and finite differences.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::tensor::Tensor;

/// An absolute plus relative bound: `|actual - expected| <= abs + rel * |expected|`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tolerance {
    pub name: &'static str,
    pub abs: f64,
    pub rel: f64,
}

/// Analytic f64 gradients against central differences with step [`FD_STEP`]: rounding in the
/// difference is ~1e-16 / 1e-6 = 1e-10 relative to the loss, truncation ~1e-12.
pub(crate) const GRAD_F64: Tolerance = Tolerance {
    name: "GRAD_F64",
    abs: 1e-7,
    rel: 1e-6,
};

/// An f32 kernel against an f64 reference loop: sums of up to a few thousand f32 products
/// carry ~1e-6 relative error per term; 1e-4 leaves room without hiding an indexing bug
/// (those err by O(1)).
pub(crate) const F32_VS_F64: Tolerance = Tolerance {
    name: "F32_VS_F64",
    abs: 1e-4,
    rel: 1e-4,
};

/// Values worked out by hand, computed in f32: a few ulps.
pub(crate) const HAND_F32: Tolerance = Tolerance {
    name: "HAND_F32",
    abs: 1e-6,
    rel: 1e-6,
};

/// Two f64 computations of the same sums in different orders (different blocking of one
/// product): rounding alone, ~1e-16 per term over a few thousand terms.
pub(crate) const REORDERED_F64: Tolerance = Tolerance {
    name: "REORDERED_F64",
    abs: 1e-11,
    rel: 1e-11,
};

/// Central-difference step for f64 gradient checks.
pub(crate) const FD_STEP: f64 = 1e-6;

/// `n` seeded uniform values in `[lo, hi)`.
pub(crate) fn random(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| lo + (hi - lo) * rng.random::<f64>())
        .collect()
}

/// `n` seeded one-hot rows of width `l`.
pub(crate) fn one_hot(seed: u64, n: usize, l: usize) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut y = vec![0.0; n * l];
    for row in y.chunks_exact_mut(l) {
        row[rng.random_range(0..l)] = 1.0;
    }
    y
}

pub(crate) fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&v| v as f32).collect()
}

pub(crate) fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&v| f64::from(v)).collect()
}

/// A host tensor from f64 test data.
pub(crate) fn tensor(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(to_f32(v), shape).expect("test data matches its shape")
}

/// A tensor's elements as f64.
pub(crate) fn values(t: &Tensor) -> Vec<f64> {
    to_f64(t.cpu_slice("test").expect("a CPU tensor"))
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// Panics, naming the worst element, its index and its absolute and relative error, unless
/// every element of `actual` is within `tol` of `expected`.
pub(crate) fn assert_close(what: &str, actual: &[f64], expected: &[f64], tol: Tolerance) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let excess = if a.is_nan() || e.is_nan() {
            f64::INFINITY
        } else {
            (a - e).abs() / (tol.abs + tol.rel * e.abs())
        };
        if worst.is_none_or(|(_, w)| excess > w) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, excess)) = worst {
        let (a, e) = (actual[i], expected[i]);
        assert!(
            excess <= 1.0,
            "{what}: worst element {i}: got {a:e}, expected {e:e}, abs err {:e}, rel err {:e} \
             (tolerance {}: abs {:e} + rel {:e})",
            (a - e).abs(),
            (a - e).abs() / e.abs().max(f64::MIN_POSITIVE),
            tol.name,
            tol.abs,
            tol.rel,
        );
    }
}

/// Checks `analytic`, the gradient of the scalar `loss` at `x`, against central differences
/// over every element of `x`.
pub(crate) fn check_gradient(
    what: &str,
    x: &[f64],
    analytic: &[f64],
    loss: impl Fn(&[f64]) -> f64,
    tol: Tolerance,
) {
    let mut probe = x.to_vec();
    let numeric: Vec<f64> = (0..x.len())
        .map(|i| {
            probe[i] = x[i] + FD_STEP;
            let up = loss(&probe);
            probe[i] = x[i] - FD_STEP;
            let down = loss(&probe);
            probe[i] = x[i];
            (up - down) / (2.0 * FD_STEP)
        })
        .collect();
    assert_close(what, analytic, &numeric, tol);
}
