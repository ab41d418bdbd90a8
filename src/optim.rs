//! Adam and AdamW with PyTorch's semantics, one fused backend update per tensor.

use crate::autograd::Grads;
use crate::backend::{AdamParams, BackendHandle};
use crate::error::{Error, Result};
use crate::model::{Model, ParamSlots, TensorKind};
use crate::tensor::Tensor;

/// Optimiser settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// AdamW: decay the weights directly instead of adding `weight_decay * w` to the gradient.
    pub decoupled: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        }
    }
}

impl AdamConfig {
    /// The kernel's parameters for update number `step` (counting from 1).
    pub fn params(&self, step: u32) -> AdamParams {
        AdamParams {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled: self.decoupled,
            step,
        }
    }
}

/// Adam's moment estimates for every trainable tensor of one model.
pub struct Adam {
    pub config: AdamConfig,
    pub step: u32,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl Adam {
    pub fn new(model: &mut Model, config: AdamConfig) -> Result<Self> {
        let backend = model.backend().clone();
        let (mut m, mut v) = (Vec::new(), Vec::new());
        let mut failure = None;
        model.visit(&mut |_, kind, t| {
            if kind == TensorKind::Buffer {
                return;
            }
            match (backend.zeros(t.shape()), backend.zeros(t.shape())) {
                (Ok(a), Ok(b)) => {
                    m.push(a);
                    v.push(b);
                }
                (Err(e), _) | (_, Err(e)) => failure = Some(e),
            }
        });
        failure.map_or(
            Ok(Adam {
                config,
                step: 0,
                m,
                v,
            }),
            Err,
        )
    }

    /// Applies one update from the gradients of the forward pass that produced `slots`.
    /// A trainable tensor without a gradient is left as it is.
    pub fn update(&mut self, model: &mut Model, grads: Grads, slots: ParamSlots) -> Result<()> {
        let grads = gradients_by_slot(grads, slots);
        self.apply(model, &grads)
    }

    /// Applies one update from gradients in slot order (see [`gradients_by_slot`]).
    pub fn apply(&mut self, model: &mut Model, grads: &[Option<Tensor>]) -> Result<()> {
        if grads.len() != self.m.len() {
            return Err(Error::shape(
                "adam",
                format!("{} gradients for {} parameters", grads.len(), self.m.len()),
            ));
        }

        self.step += 1;
        let c = self.config;
        let p = c.params(self.step);
        let backend = model.backend().clone();
        let (ms, vs) = (&mut self.m, &mut self.v);
        let mut index = 0;
        let mut failure = None;
        model.visit(&mut |name, kind, t| {
            if kind == TensorKind::Buffer || failure.is_some() {
                return;
            }
            let i = index;
            index += 1;
            let Some(g) = &grads[i] else { return };
            if let Err(e) = backend.adam_update(t, g, &mut ms[i], &mut vs[i], p) {
                failure = Some(match e {
                    Error::SharedTensor { .. } => Error::InvalidArgument(format!(
                        "adam: parameter {name} is still referenced elsewhere"
                    )),
                    other => other,
                });
            }
        });
        failure.map_or(Ok(()), Err)
    }

    /// The first and second moment estimates, one pair per trainable tensor in slot order.
    pub fn moments(&self) -> impl Iterator<Item = (&Tensor, &Tensor)> {
        self.m.iter().zip(&self.v)
    }

    /// Puts back the state of an optimiser saved by [`Adam::moments`] after `step` updates;
    /// every pair must have its parameter's shape.
    pub fn restore(&mut self, step: u32, moments: Vec<(Tensor, Tensor)>) -> Result<()> {
        if moments.len() != self.m.len() {
            return Err(Error::shape(
                "adam restore",
                format!(
                    "{} moment pairs for {} parameters",
                    moments.len(),
                    self.m.len()
                ),
            ));
        }
        for (i, (m, v)) in moments.iter().enumerate() {
            let want = self.m[i].shape();
            if m.shape() != want || v.shape() != want {
                return Err(Error::shape(
                    "adam restore",
                    format!(
                        "moments {:?} and {:?} for a parameter of {want:?}",
                        m.shape(),
                        v.shape()
                    ),
                ));
            }
        }
        (self.m, self.v) = moments.into_iter().unzip();
        self.step = step;
        Ok(())
    }
}

/// The gradients of one backward pass in slot order (the order of [`Model::visit`]'s trainable
/// tensors), `None` for a tensor the loss did not reach. Dropping `slots` here releases the
/// graph's handles on the parameters, so they can then be updated in place.
pub fn gradients_by_slot(mut grads: Grads, slots: ParamSlots) -> Vec<Option<Tensor>> {
    slots
        .vars()
        .map(|v| v.and_then(|v| grads.take(v)))
        .collect()
}

/// A gradient with NaN or infinite elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonFiniteGradient {
    /// The parameter's name (torchvision's, e.g. `layer3.1.conv2.weight`).
    pub tensor: String,
    /// NaN or infinite elements, of `len`.
    pub count: usize,
    pub len: usize,
}

/// The first gradient, in slot order, holding a NaN or an infinity.
///
/// Cost: one reduction per gradient (every element read once, as the update itself does) and a
/// single read-back to the host per step, whatever the backend: the per-tensor sums are added
/// up on the device, and the total is finite unless some element is not (or finite sums
/// overflow f32, which the exact pass then clears). Only when the total is not finite does a
/// second pass count each tensor's non-finite elements, one read-back each, to name it.
pub fn find_non_finite(
    model: &mut Model,
    grads: &[Option<Tensor>],
) -> Result<Option<NonFiniteGradient>> {
    let backend = model.backend().clone();
    let Some((index, count)) = first_non_finite(&backend, grads)? else {
        return Ok(None);
    };
    let mut names = Vec::with_capacity(grads.len());
    model.visit(&mut |name, kind, _| {
        if kind != TensorKind::Buffer {
            names.push(name.to_string());
        }
    });
    Ok(Some(NonFiniteGradient {
        tensor: names
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("trainable tensor {index}")),
        count,
        len: grads[index].as_ref().map_or(0, Tensor::len),
    }))
}

/// The position of the first tensor with a NaN or infinite element and how many it has (see
/// [`find_non_finite`] for the cost).
fn first_non_finite(
    backend: &BackendHandle,
    tensors: &[Option<Tensor>],
) -> Result<Option<(usize, usize)>> {
    let mut total = backend.zeros(&[1])?;
    for t in tensors.iter().flatten() {
        if t.is_empty() {
            continue;
        }
        let per_channel = backend.channel_sum(t)?;
        let n = per_channel.len();
        let sum = backend.channel_sum(&per_channel.reshape(&[n, 1])?)?;
        backend.add_assign(&mut total, &sum)?;
    }
    if total.scalar()?.is_finite() {
        return Ok(None);
    }
    for (i, t) in tensors.iter().enumerate() {
        let Some(t) = t else { continue };
        let count = backend.non_finite_count(t)?;
        if count > 0 {
            return Ok(Some((i, count)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::cuda::CudaBackend;

    fn check(backend: BackendHandle) {
        let t = |v: &[f32], shape: &[usize]| Some(backend.from_host(v, shape).unwrap());
        let mut tensors = vec![
            t(&[1.0, -2.0, 3.0, 0.5, 0.25, -1.0], &[2, 1, 1, 3]),
            None,
            t(&[4.0, 5.0], &[2]),
            t(&[0.0; 6], &[3, 2]),
        ];
        assert_eq!(first_non_finite(&backend, &tensors).unwrap(), None);

        tensors[3] = t(&[0.0, f32::NAN, 1.0, f32::INFINITY, 0.0, 2.0], &[3, 2]);
        assert_eq!(first_non_finite(&backend, &tensors).unwrap(), Some((3, 2)));
        tensors[2] = t(&[f32::NEG_INFINITY, 5.0], &[2]);
        assert_eq!(first_non_finite(&backend, &tensors).unwrap(), Some((2, 1)));

        // Finite values whose sum overflows f32 are not reported.
        let huge = [f32::MAX, f32::MAX, f32::MAX];
        let big = vec![t(&huge, &[3]), t(&huge, &[1, 3])];
        assert_eq!(first_non_finite(&backend, &big).unwrap(), None);
    }

    #[test]
    fn non_finite_gradients_are_found_on_the_cpu() {
        check(Arc::new(CpuBackend));
    }

    #[test]
    fn non_finite_gradients_are_found_on_the_cuda_kernels() {
        match CudaBackend::emulated() {
            Ok(b) => check(b),
            Err(e) => println!("SKIPPED non_finite_gradients_are_found_on_the_cuda_kernels: {e}"),
        }
    }
}
