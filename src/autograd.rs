//! A small reverse-mode tape: each op runs forward on its tensors' backend and, when recording,
//! pushes a closure that maps the output's gradient to its inputs' gradients.
//!
//! The tape never looks inside a tensor, so it works the same whichever backend computed it.

use crate::backend::{
    Backend, BackendHandle, BatchNormParams, Conv2dParams, CosFaceParams, PoolParams,
};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Maps the gradient of a node's output to the gradients of its inputs (in input order).
type BackwardFn = Box<dyn FnOnce(&dyn Backend, &Tensor) -> Result<Vec<Option<Tensor>>> + Send>;

struct Node {
    inputs: Vec<Option<usize>>,
    backward: Option<BackwardFn>,
}

/// A value in the graph: its tensor plus, when it needs a gradient, its node id.
#[derive(Clone, Debug)]
pub struct Var {
    pub value: Tensor,
    id: Option<usize>,
}

impl Var {
    /// The node id when this value takes part in the backward pass.
    pub fn id(&self) -> Option<usize> {
        self.id
    }
}

/// The gradients of one backward pass, indexed by node id.
pub struct Grads(Vec<Option<Tensor>>);

impl Grads {
    /// The gradient of `var`, if it received one.
    pub fn get(&self, var: &Var) -> Option<&Tensor> {
        var.id
            .and_then(|id| self.0.get(id))
            .and_then(Option::as_ref)
    }

    /// Takes the gradient of `var` out.
    pub fn take(&mut self, var: &Var) -> Option<Tensor> {
        var.id
            .and_then(|id| self.0.get_mut(id))
            .and_then(Option::take)
    }
}

/// The graph of one forward pass. With `record == false` ops only run forward (inference).
pub struct Graph {
    backend: BackendHandle,
    nodes: Vec<Node>,
    record: bool,
}

impl Graph {
    pub fn new(backend: BackendHandle, record: bool) -> Self {
        Graph {
            backend,
            nodes: Vec::new(),
            record,
        }
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub fn is_recording(&self) -> bool {
        self.record
    }

    /// A leaf that receives a gradient (a trainable parameter).
    pub fn param(&mut self, t: &Tensor) -> Var {
        if !self.record {
            return Var {
                value: t.clone(),
                id: None,
            };
        }
        self.nodes.push(Node {
            inputs: Vec::new(),
            backward: None,
        });
        Var {
            value: t.clone(),
            id: Some(self.nodes.len() - 1),
        }
    }

    /// A leaf without gradient (inputs, targets).
    pub fn constant(&self, t: Tensor) -> Var {
        Var { value: t, id: None }
    }

    fn push(&mut self, value: Tensor, inputs: &[&Var], backward: BackwardFn) -> Result<Var> {
        let ids: Vec<Option<usize>> = inputs.iter().map(|v| v.id).collect();
        if !self.record || ids.iter().all(Option::is_none) {
            return Ok(Var { value, id: None });
        }
        self.nodes.push(Node {
            inputs: ids,
            backward: Some(backward),
        });
        Ok(Var {
            value,
            id: Some(self.nodes.len() - 1),
        })
    }

    /// Runs the backward pass from the scalar `loss`, seeded with gradient 1.
    pub fn backward(self, loss: &Var) -> Result<Grads> {
        if loss.value.len() != 1 {
            return Err(Error::shape(
                "backward",
                format!("the loss is {:?}, not one element", loss.value.shape()),
            ));
        }
        let seed = self.backend.from_host(&[1.0], loss.value.shape())?;
        self.backward_from(loss, seed)
    }

    /// Runs the backward pass from any `output`, seeded with `grad` (shaped like it): the
    /// gradients of `sum(output * grad)`, a vector-Jacobian product.
    pub fn backward_from(mut self, output: &Var, grad: Tensor) -> Result<Grads> {
        let root = output.id.ok_or_else(|| {
            Error::InvalidArgument("backward: the loss does not depend on any parameter".into())
        })?;
        if grad.shape() != output.value.shape() {
            return Err(Error::shape(
                "backward",
                format!(
                    "seed gradient {:?} for an output of {:?}",
                    grad.shape(),
                    output.value.shape()
                ),
            ));
        }
        let backend = self.backend.clone();
        let mut grads: Vec<Option<Tensor>> = (0..self.nodes.len()).map(|_| None).collect();
        grads[root] = Some(grad);

        // Node ids are a topological order, so one reverse sweep visits each node after
        // every consumer of its output.
        for id in (0..=root).rev() {
            let node = &mut self.nodes[id];
            let Some(backward) = node.backward.take() else {
                continue;
            };
            let Some(grad) = grads[id].take() else {
                continue;
            };
            let input_grads = backward(&*backend, &grad)?;
            for (input, g) in node.inputs.iter().zip(input_grads) {
                let (Some(input), Some(g)) = (*input, g) else {
                    continue;
                };
                match &mut grads[input] {
                    Some(acc) => backend.add_assign(acc, &g)?,
                    slot @ None => *slot = Some(g),
                }
            }
        }
        Ok(Grads(grads))
    }

    // The differentiable ops.

    pub fn conv2d(&mut self, x: &Var, w: &Var, p: Conv2dParams) -> Result<Var> {
        let y = self.backend.conv2d_fwd(&x.value, &w.value, None, p)?;
        let (xv, wv) = (x.value.clone(), w.value.clone());
        let (need_dx, need_dw) = (x.id.is_some(), w.id.is_some());
        self.push(
            y,
            &[x, w],
            Box::new(move |b, dy| {
                let dx = match need_dx {
                    true => Some(b.conv2d_bwd_data(dy, &wv, xv.shape(), p)?),
                    false => None,
                };
                let dw = match need_dw {
                    true => Some(b.conv2d_bwd_filter(&xv, dy, wv.shape(), p)?),
                    false => None,
                };
                Ok(vec![dx, dw])
            }),
        )
    }

    /// Training-mode batch norm. Returns the output and the batch mean and biased variance
    /// (for the caller's running statistics).
    pub fn batch_norm_train(
        &mut self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        p: BatchNormParams,
    ) -> Result<(Var, Tensor, Tensor)> {
        let out = self
            .backend
            .batch_norm_fwd_train(&x.value, &gamma.value, &beta.value, p)?;
        let (xv, gv) = (x.value.clone(), gamma.value.clone());
        let (mean, var) = (out.mean.clone(), out.var.clone());
        let y = self.push(
            out.y,
            &[x, gamma, beta],
            Box::new(move |b, dy| {
                let (dx, dgamma, dbeta) = b.batch_norm_bwd(dy, &xv, &gv, &mean, &var, p)?;
                Ok(vec![Some(dx), Some(dgamma), Some(dbeta)])
            }),
        )?;
        Ok((y, out.mean, out.var))
    }

    pub fn relu(&mut self, x: &Var) -> Result<Var> {
        let y = self.backend.relu_fwd(&x.value)?;
        let yv = y.clone();
        self.push(
            y,
            &[x],
            Box::new(move |b, dy| Ok(vec![Some(b.relu_bwd(dy, &yv)?)])),
        )
    }

    pub fn add(&mut self, a: &Var, c: &Var) -> Result<Var> {
        let y = self.backend.add(&a.value, &c.value)?;
        self.push(
            y,
            &[a, c],
            Box::new(|_, dy| Ok(vec![Some(dy.clone()), Some(dy.clone())])),
        )
    }

    pub fn max_pool(&mut self, x: &Var, p: PoolParams) -> Result<Var> {
        let y = self.backend.max_pool_fwd(&x.value, p)?;
        let (xv, yv) = (x.value.clone(), y.clone());
        self.push(
            y,
            &[x],
            Box::new(move |b, dy| Ok(vec![Some(b.max_pool_bwd(dy, &xv, &yv, p)?)])),
        )
    }

    pub fn avg_pool_global(&mut self, x: &Var) -> Result<Var> {
        let y = self.backend.avg_pool_global_fwd(&x.value)?;
        let shape = x.value.shape().to_vec();
        self.push(
            y,
            &[x],
            Box::new(move |b, dy| Ok(vec![Some(b.avg_pool_global_bwd(dy, &shape)?)])),
        )
    }

    /// CosFace logits; the margin applies only when `targets` are given (training).
    pub fn cosface(
        &mut self,
        emb: &Var,
        weight: &Var,
        targets: Option<&Tensor>,
        p: CosFaceParams,
    ) -> Result<Var> {
        let y = self
            .backend
            .cosface_fwd(&emb.value, &weight.value, targets, p)?;
        let (ev, wv) = (emb.value.clone(), weight.value.clone());
        self.push(
            y,
            &[emb, weight],
            Box::new(move |b, dy| {
                let (de, dw) = b.cosface_bwd(dy, &ev, &wv, p)?;
                Ok(vec![Some(de), Some(dw)])
            }),
        )
    }

    /// Mean softmax cross-entropy (`multilabel == false`) or mean sigmoid cross-entropy.
    pub fn cross_entropy(
        &mut self,
        logits: &Var,
        targets: &Tensor,
        multilabel: bool,
    ) -> Result<Var> {
        let loss = match multilabel {
            false => self.backend.softmax_xent_fwd(&logits.value, targets)?,
            true => self.backend.sigmoid_xent_fwd(&logits.value, targets)?,
        };
        let (lv, tv) = (logits.value.clone(), targets.clone());
        self.push(
            loss,
            &[logits],
            Box::new(move |b, dloss| {
                let d = b.to_host(dloss)?[0];
                let dl = match multilabel {
                    false => b.softmax_xent_bwd(&lv, &tv, d)?,
                    true => b.sigmoid_xent_bwd(&lv, &tv, d)?,
                };
                Ok(vec![Some(dl)])
            }),
        )
    }
}
