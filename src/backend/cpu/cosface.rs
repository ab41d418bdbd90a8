//! The CosFace head: cosine logits between normalised embeddings and class weights, with an
//! additive margin on the targets.

use rayon::prelude::*;

use super::float::Float;
use super::matmul::{matmul, Layout};
use super::{cpu_tensor, dims};
use crate::backend::CosFaceParams;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Norms are clamped to at least this, so a zero row divides 0 by 1e-12 and gets cosine 0
/// instead of NaN.
const NORM_FLOOR: f64 = 1e-12;

/// Each row of `[rows, d]` scaled to unit length, and its (clamped) norm. Norms in f64: a
/// 512-wide f32 sum of squares loses a few bits otherwise.
fn normalise_rows<T: Float>(v: &[T], d: usize) -> (Vec<T>, Vec<f64>) {
    let mut unit = vec![T::ZERO; v.len()];
    let norms = unit
        .par_chunks_mut(d)
        .zip(v.par_chunks(d))
        .map(|(u, row)| {
            let norm = row
                .iter()
                .map(|x| x.to_f64() * x.to_f64())
                .sum::<f64>()
                .sqrt();
            let inv = T::from_f64(1.0 / norm.max(NORM_FLOOR));
            for (u, &x) in u.iter_mut().zip(row) {
                *u = x * inv;
            }
            norm
        })
        .collect();
    (unit, norms)
}

/// `logits [N, L] = scale * (cos - margin * t)` for `emb [N, D]`, `weight [L, D]`, where `t` is
/// the target for softmax data and `2y - 1` for multi-label data (no margin without targets).
pub(crate) fn cosface_fwd_kernel<T: Float>(
    emb: &[T],
    weight: &[T],
    targets: Option<&[T]>,
    d: usize,
    p: CosFaceParams,
) -> Result<Vec<T>> {
    let (n, l) = (emb.len() / d, weight.len() / d);
    let (e_unit, _) = normalise_rows(emb, d);
    let (w_unit, _) = normalise_rows(weight, d);
    let mut logits = vec![T::ZERO; n * l];
    matmul(
        &mut logits,
        &e_unit,
        Layout::Plain,
        &w_unit,
        Layout::Transposed,
        n,
        l,
        d,
        false,
    )?;

    let scale = T::from_f64(f64::from(p.scale));
    let margin = T::from_f64(f64::from(p.margin));
    let two = T::ONE + T::ONE;
    match targets {
        Some(t) => logits.par_iter_mut().zip(t.par_iter()).for_each(|(z, &y)| {
            let t = if p.multilabel { two * y - T::ONE } else { y };
            *z = scale * (*z - margin * t);
        }),
        None => logits.par_iter_mut().for_each(|z| *z = scale * *z),
    }
    Ok(logits)
}

/// `(d_emb, d_weight)` from `dlogits [N, L]`. The margin is a constant shift, so only the
/// cosines carry gradient: `dcos = scale * dlogits`, `dê = dcos · ŵ`, `dŵ = dcosᵀ · ê`, then
/// through `v̂ = v / |v|`: `dv = (dv̂ - v̂ <v̂, dv̂>) / |v|`. A row whose norm was clamped is
/// treated as a constant (zero gradient): the clamped map's true slope, 1e12, is useless.
pub(crate) fn cosface_bwd_kernel<T: Float>(
    dlogits: &[T],
    emb: &[T],
    weight: &[T],
    d: usize,
    p: CosFaceParams,
) -> Result<(Vec<T>, Vec<T>)> {
    let (n, l) = (emb.len() / d, weight.len() / d);
    let (e_unit, e_norm) = normalise_rows(emb, d);
    let (w_unit, w_norm) = normalise_rows(weight, d);
    let scale = T::from_f64(f64::from(p.scale));
    let dcos: Vec<T> = dlogits.par_iter().map(|&g| g * scale).collect();

    let mut de_unit = vec![T::ZERO; n * d];
    matmul(
        &mut de_unit,
        &dcos,
        Layout::Plain,
        &w_unit,
        Layout::Plain,
        n,
        d,
        l,
        false,
    )?;
    let mut dw_unit = vec![T::ZERO; l * d];
    matmul(
        &mut dw_unit,
        &dcos,
        Layout::Transposed,
        &e_unit,
        Layout::Plain,
        l,
        d,
        n,
        false,
    )?;

    through_normalisation(&mut de_unit, &e_unit, &e_norm, d);
    through_normalisation(&mut dw_unit, &w_unit, &w_norm, d);
    Ok((de_unit, dw_unit))
}

/// Turns gradients with respect to unit rows into gradients with respect to the raw rows, in
/// place: removes the radial component and divides by the norm.
fn through_normalisation<T: Float>(grad: &mut [T], unit: &[T], norms: &[f64], d: usize) {
    grad.par_chunks_mut(d)
        .zip(unit.par_chunks(d))
        .zip(norms.par_iter())
        .for_each(|((g, u), &norm)| {
            if norm < NORM_FLOOR {
                g.fill(T::ZERO);
                return;
            }
            let radial: f64 = g.iter().zip(u).map(|(g, u)| g.to_f64() * u.to_f64()).sum();
            let (radial, inv) = (T::from_f64(radial), T::from_f64(1.0 / norm));
            for (g, &u) in g.iter_mut().zip(u) {
                *g = (*g - u * radial) * inv;
            }
        });
}

/// `(N, L, D)` after checking `emb [N, D]` against `weight [L, D]`.
fn head_dims(op: &'static str, emb: &Tensor, weight: &Tensor) -> Result<(usize, usize, usize)> {
    let [n, d] = dims::<2>(op, "embedding", emb.shape())?;
    let [l, wd] = dims::<2>(op, "weight", weight.shape())?;
    if d != wd || d == 0 {
        return Err(Error::shape(
            op,
            format!("embedding {:?} vs weight {:?}", emb.shape(), weight.shape()),
        ));
    }
    Ok((n, l, d))
}

pub(super) fn cosface_fwd(
    emb: &Tensor,
    weight: &Tensor,
    targets: Option<&Tensor>,
    p: CosFaceParams,
) -> Result<Tensor> {
    const OP: &str = "cosface_fwd";
    let (n, l, d) = head_dims(OP, emb, weight)?;
    let targets = match targets {
        Some(t) if t.shape() != [n, l] => {
            return Err(Error::shape(
                OP,
                format!("targets {:?}, expected [{n}, {l}]", t.shape()),
            ))
        }
        Some(t) => Some(t.cpu_slice(OP)?),
        None => None,
    };
    let logits = cosface_fwd_kernel(emb.cpu_slice(OP)?, weight.cpu_slice(OP)?, targets, d, p)?;
    Ok(cpu_tensor(logits, &[n, l]))
}

pub(super) fn cosface_bwd(
    dlogits: &Tensor,
    emb: &Tensor,
    weight: &Tensor,
    p: CosFaceParams,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "cosface_bwd";
    let (n, l, d) = head_dims(OP, emb, weight)?;
    if dlogits.shape() != [n, l] {
        return Err(Error::shape(
            OP,
            format!("dlogits {:?}, expected [{n}, {l}]", dlogits.shape()),
        ));
    }
    let (de, dw) = cosface_bwd_kernel(
        dlogits.cpu_slice(OP)?,
        emb.cpu_slice(OP)?,
        weight.cpu_slice(OP)?,
        d,
        p,
    )?;
    Ok((cpu_tensor(de, emb.shape()), cpu_tensor(dw, weight.shape())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testing::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    const SOFTMAX: CosFaceParams = CosFaceParams {
        margin: 0.2,
        scale: 10.0,
        multilabel: false,
    };
    const MULTILABEL: CosFaceParams = CosFaceParams {
        margin: 0.2,
        scale: 10.0,
        multilabel: true,
    };

    /// Rows `[1, 0]`, `[0, 0]` (zero) and `[3, 4]` against classes `[1, 0]` and `[0, 2]`:
    /// cosines `[1, 0]`, `[0, 0]` and `[0.6, 0.8]`.
    fn hand_inputs() -> (Tensor, Tensor) {
        (
            tensor(&[1.0, 0.0, 0.0, 0.0, 3.0, 4.0], &[3, 2]),
            tensor(&[1.0, 0.0, 0.0, 2.0], &[2, 2]),
        )
    }

    #[test]
    fn forward_by_hand() {
        let (emb, weight) = hand_inputs();
        let cos = [1.0, 0.0, 0.0, 0.0, 0.6, 0.8];
        let no_margin = CpuBackend
            .cosface_fwd(&emb, &weight, None, SOFTMAX)
            .expect("no targets");
        let want: Vec<f64> = cos.iter().map(|c| 10.0 * c).collect();
        assert_close("no targets", &values(&no_margin), &want, HAND_F32);

        // Softmax: margin 0.2 comes off the target class only.
        let t = tensor(&[1.0, 0.0, 0.0, 1.0, 0.0, 1.0], &[3, 2]);
        let z = CpuBackend
            .cosface_fwd(&emb, &weight, Some(&t), SOFTMAX)
            .expect("softmax");
        assert_close(
            "softmax",
            &values(&z),
            &[8.0, 0.0, 0.0, -2.0, 6.0, 6.0],
            HAND_F32,
        );

        // Multi-label: positives lose the margin, negatives gain it.
        let z = CpuBackend
            .cosface_fwd(&emb, &weight, Some(&t), MULTILABEL)
            .expect("multilabel");
        assert_close(
            "multilabel",
            &values(&z),
            &[8.0, 2.0, 2.0, -2.0, 8.0, 6.0],
            HAND_F32,
        );
    }

    #[test]
    fn zero_embedding_has_zero_cosine_and_gradient() {
        let (emb, weight) = hand_inputs();
        let dlogits = tensor(&[1.0, -2.0, 0.5, 3.0, -1.0, 0.25], &[3, 2]);
        let (de, dw) = CpuBackend
            .cosface_bwd(&dlogits, &emb, &weight, SOFTMAX)
            .expect("bwd");
        let (de, dw) = (values(&de), values(&dw));
        assert!(de.iter().chain(&dw).all(|v| v.is_finite()), "{de:?} {dw:?}");
        assert_eq!(&de[2..4], &[0.0, 0.0], "the zero row gets no gradient");

        // A zero class weight too: finite everywhere, zero gradient for it.
        let weight = tensor(&[1.0, 0.0, 0.0, 0.0], &[2, 2]);
        let z = CpuBackend
            .cosface_fwd(&emb, &weight, None, SOFTMAX)
            .expect("fwd");
        assert_close(
            "zero class",
            &values(&z),
            &[10.0, 0.0, 0.0, 0.0, 6.0, 0.0],
            HAND_F32,
        );
        let (_, dw) = CpuBackend
            .cosface_bwd(&dlogits, &emb, &weight, SOFTMAX)
            .expect("bwd");
        assert_eq!(&values(&dw)[2..4], &[0.0, 0.0]);
    }

    #[test]
    fn gradients_match_finite_differences() {
        for (seed, n, l, d, p) in [(1u64, 3, 5, 7, SOFTMAX), (2, 1, 3, 5, MULTILABEL)] {
            let emb = random(seed, n * d, -1.0, 1.0);
            let weight = random(seed + 10, l * d, -1.0, 1.0);
            let targets = random(seed + 20, n * l, 0.0, 1.0);
            let t: Vec<f64> = targets
                .iter()
                .map(|v| if *v < 0.5 { 0.0 } else { 1.0 })
                .collect();
            let r = random(seed + 30, n * l, -1.0, 1.0);
            let loss = |e: &[f64], w: &[f64]| {
                dot(
                    &r,
                    &cosface_fwd_kernel(e, w, Some(&t), d, p).expect("forward"),
                )
            };
            let (de, dw) = cosface_bwd_kernel(&r, &emb, &weight, d, p).expect("backward");
            check_gradient("cosface d_emb", &emb, &de, |e| loss(e, &weight), GRAD_F64);
            check_gradient(
                "cosface d_weight",
                &weight,
                &dw,
                |w| loss(&emb, w),
                GRAD_F64,
            );
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let (emb, weight) = hand_inputs();
        let wrong_d = tensor(&[1.0; 6], &[2, 3]);
        assert!(matches!(
            CpuBackend.cosface_fwd(&emb, &wrong_d, None, SOFTMAX),
            Err(Error::Shape { .. })
        ));
        let wrong_t = tensor(&[1.0; 4], &[2, 2]);
        assert!(matches!(
            CpuBackend.cosface_fwd(&emb, &weight, Some(&wrong_t), SOFTMAX),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            CpuBackend.cosface_bwd(&wrong_t, &emb, &weight, SOFTMAX),
            Err(Error::Shape { .. })
        ));
    }
}
