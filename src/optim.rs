//! Adam and AdamW with PyTorch's semantics, one fused backend update per tensor.

use crate::autograd::Grads;
use crate::backend::AdamParams;
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
    pub fn update(&mut self, model: &mut Model, mut grads: Grads, slots: ParamSlots) -> Result<()> {
        // Take the gradients out, then drop the slots so the parameters are no longer shared
        // and can be updated in place.
        let grads: Vec<Option<Tensor>> = slots
            .vars()
            .map(|v| v.and_then(|v| grads.take(v)))
            .collect();
        drop(slots);
        if grads.len() != self.m.len() {
            return Err(Error::shape(
                "adam",
                format!("{} gradients for {} parameters", grads.len(), self.m.len()),
            ));
        }

        self.step += 1;
        let c = self.config;
        let p = AdamParams {
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            decoupled: c.decoupled,
            step: self.step,
        };
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
}
