//! ResNet18 as torchvision builds it (basic blocks [2, 2, 2, 2], widths 64-128-256-512, 1x1
//! strided downsample with batch norm), without the final fully connected layer.

use rand::rngs::StdRng;

use crate::autograd::{Graph, Var};
use crate::backend::{BackendHandle, BatchNormParams, Conv2dParams, PoolParams};
use crate::error::Result;
use crate::model::{normal, ParamSlots, TensorKind};
use crate::tensor::Tensor;

/// Embedding width of the encoder's output.
pub const EMBEDDING_DIM: usize = 512;

const BN: BatchNormParams = BatchNormParams { eps: 1e-5 };
/// PyTorch's default: running = 0.9 * running + 0.1 * batch.
const BN_MOMENTUM: f32 = 0.1;

/// A bias-free convolution followed by batch norm.
pub struct ConvBn {
    pub conv_name: String,
    pub bn_name: String,
    pub weight: Tensor,
    pub gamma: Tensor,
    pub beta: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub conv: Conv2dParams,
    slot: usize,
}

/// Where a convolution + batch norm sits in the network (torchvision's names) and its sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvBnSpec {
    pub conv_name: String,
    pub bn_name: String,
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvBnSpec {
    /// The five tensors of this convolution + batch norm with their kinds and our shapes, in
    /// [`ResNet18::visit`] order.
    fn tensors(&self) -> [(String, TensorKind, Vec<usize>); 5] {
        let (conv, bn, c) = (&self.conv_name, &self.bn_name, self.c_out);
        let k = self.kernel;
        [
            (
                format!("{conv}.weight"),
                TensorKind::ConvWeight,
                vec![c, k, k, self.c_in],
            ),
            (format!("{bn}.weight"), TensorKind::Param, vec![c]),
            (format!("{bn}.bias"), TensorKind::Param, vec![c]),
            (format!("{bn}.running_mean"), TensorKind::Buffer, vec![c]),
            (format!("{bn}.running_var"), TensorKind::Buffer, vec![c]),
        ]
    }
}

/// One basic block's convolutions; `downsample` where the block changes shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpec {
    pub conv1: ConvBnSpec,
    pub conv2: ConvBnSpec,
    pub downsample: Option<ConvBnSpec>,
}

impl ConvBn {
    fn new(
        backend: &BackendHandle,
        rng: &mut StdRng,
        slots: &mut usize,
        spec: &ConvBnSpec,
    ) -> Result<Self> {
        let (c_in, c_out, kernel) = (spec.c_in, spec.c_out, spec.kernel);
        // Kaiming normal, fan-out mode, as torchvision initialises ResNet convolutions.
        let std = (2.0 / (c_out * kernel * kernel) as f32).sqrt();
        let n = c_out * kernel * kernel * c_in;
        let w: Vec<f32> = (0..n).map(|_| std * normal(rng)).collect();
        let slot = *slots;
        *slots += 3;
        Ok(ConvBn {
            conv_name: spec.conv_name.clone(),
            bn_name: spec.bn_name.clone(),
            weight: backend.from_host(&w, &[c_out, kernel, kernel, c_in])?,
            gamma: backend.from_host(&vec![1.0; c_out], &[c_out])?,
            beta: backend.zeros(&[c_out])?,
            running_mean: backend.zeros(&[c_out])?,
            running_var: backend.from_host(&vec![1.0; c_out], &[c_out])?,
            conv: Conv2dParams {
                stride: spec.stride,
                padding: spec.padding,
            },
            slot,
        })
    }

    fn forward(&mut self, g: &mut Graph, x: &Var, slots: &mut ParamSlots) -> Result<Var> {
        let w = g.param(&self.weight);
        let y = g.conv2d(x, &w, self.conv)?;
        let (gamma, beta) = (g.param(&self.gamma), g.param(&self.beta));
        let out = if g.is_recording() {
            let (out, mean, var) = g.batch_norm_train(&y, &gamma, &beta, BN)?;

            // Running statistics use the unbiased variance, as PyTorch does.
            let shape = y.value.shape();
            let count = shape[..shape.len() - 1].iter().product::<usize>() as f32;
            let unbias = count / (count - 1.0).max(1.0);
            let b = g.backend();
            b.lerp_assign(&mut self.running_mean, &mean, 1.0, BN_MOMENTUM)?;
            b.lerp_assign(&mut self.running_var, &var, unbias, BN_MOMENTUM)?;
            out
        } else {
            let y = g.backend().batch_norm_fwd_eval(
                &y.value,
                &self.gamma,
                &self.beta,
                &self.running_mean,
                &self.running_var,
                BN,
            )?;
            g.constant(y)
        };
        slots.set(self.slot, [w, gamma, beta]);
        Ok(out)
    }

    fn visit(&mut self, f: &mut dyn FnMut(&str, TensorKind, &mut Tensor)) {
        f(
            &format!("{}.weight", self.conv_name),
            TensorKind::ConvWeight,
            &mut self.weight,
        );
        f(
            &format!("{}.weight", self.bn_name),
            TensorKind::Param,
            &mut self.gamma,
        );
        f(
            &format!("{}.bias", self.bn_name),
            TensorKind::Param,
            &mut self.beta,
        );
        f(
            &format!("{}.running_mean", self.bn_name),
            TensorKind::Buffer,
            &mut self.running_mean,
        );
        f(
            &format!("{}.running_var", self.bn_name),
            TensorKind::Buffer,
            &mut self.running_var,
        );
    }
}

/// Two 3x3 convolutions with a residual connection.
pub struct BasicBlock {
    pub conv1: ConvBn,
    pub conv2: ConvBn,
    pub downsample: Option<ConvBn>,
}

impl BasicBlock {
    fn forward(&mut self, g: &mut Graph, x: &Var, slots: &mut ParamSlots) -> Result<Var> {
        let y = self.conv1.forward(g, x, slots)?;
        let y = g.relu(&y)?;
        let y = self.conv2.forward(g, &y, slots)?;
        let identity = match &mut self.downsample {
            Some(d) => d.forward(g, x, slots)?,
            None => x.clone(),
        };
        let y = g.add(&y, &identity)?;
        g.relu(&y)
    }
}

/// The encoder: images `[N, H, W, 3]` to embeddings `[N, 512]`.
pub struct ResNet18 {
    pub stem: ConvBn,
    pub blocks: Vec<BasicBlock>,
    /// Number of trainable tensors (three per convolution + batch norm).
    pub num_slots: usize,
}

impl ResNet18 {
    /// torchvision's ResNet18: the stem (7x7 stride 2), then four stages of two basic blocks,
    /// widths 64-128-256-512, the first block of stages 2-4 strided with a 1x1 downsample.
    pub fn architecture() -> (ConvBnSpec, Vec<BlockSpec>) {
        let spec = |conv: &str, bn: &str, c_in, c_out, kernel, stride, padding| ConvBnSpec {
            conv_name: conv.to_string(),
            bn_name: bn.to_string(),
            c_in,
            c_out,
            kernel,
            stride,
            padding,
        };
        let stem = spec("conv1", "bn1", 3, 64, 7, 2, 3);
        let mut blocks = Vec::new();
        let mut c_in = 64;
        for (layer, &width) in [64, 128, 256, 512].iter().enumerate() {
            for index in 0..2 {
                let stride = if layer > 0 && index == 0 { 2 } else { 1 };
                let prefix = format!("layer{}.{index}", layer + 1);
                let name = |s: &str| format!("{prefix}.{s}");
                blocks.push(BlockSpec {
                    conv1: spec(&name("conv1"), &name("bn1"), c_in, width, 3, stride, 1),
                    conv2: spec(&name("conv2"), &name("bn2"), width, width, 3, 1, 1),
                    downsample: (stride != 1 || c_in != width).then(|| {
                        let (conv, bn) = (name("downsample.0"), name("downsample.1"));
                        spec(&conv, &bn, c_in, width, 1, stride, 0)
                    }),
                });
                c_in = width;
            }
        }
        (stem, blocks)
    }

    /// Every tensor's torchvision name, kind and shape in our layout, in [`ResNet18::visit`]
    /// order, without building the network.
    pub fn tensor_specs() -> Vec<(String, TensorKind, Vec<usize>)> {
        let (stem, blocks) = Self::architecture();
        let convs = std::iter::once(&stem).chain(
            blocks
                .iter()
                .flat_map(|b| [Some(&b.conv1), Some(&b.conv2), b.downsample.as_ref()])
                .flatten(),
        );
        convs.flat_map(ConvBnSpec::tensors).collect()
    }

    /// A freshly initialised encoder on `backend`.
    pub fn new(backend: &BackendHandle, rng: &mut StdRng) -> Result<Self> {
        let (stem_spec, block_specs) = Self::architecture();
        let mut slots = 0;
        let stem = ConvBn::new(backend, rng, &mut slots, &stem_spec)?;
        let mut blocks = Vec::new();
        for spec in &block_specs {
            let conv1 = ConvBn::new(backend, rng, &mut slots, &spec.conv1)?;
            let conv2 = ConvBn::new(backend, rng, &mut slots, &spec.conv2)?;
            let downsample = match &spec.downsample {
                Some(d) => Some(ConvBn::new(backend, rng, &mut slots, d)?),
                None => None,
            };
            blocks.push(BasicBlock {
                conv1,
                conv2,
                downsample,
            });
        }
        Ok(ResNet18 {
            stem,
            blocks,
            num_slots: slots,
        })
    }

    /// Runs the encoder; in a recording graph batch norm uses batch statistics and updates
    /// the running ones.
    pub fn forward(&mut self, g: &mut Graph, x: &Var, slots: &mut ParamSlots) -> Result<Var> {
        let y = self.stem.forward(g, x, slots)?;
        let y = g.relu(&y)?;
        let mut y = g.max_pool(
            &y,
            PoolParams {
                kernel: 3,
                stride: 2,
                padding: 1,
            },
        )?;
        for block in &mut self.blocks {
            y = block.forward(g, &y, slots)?;
        }
        g.avg_pool_global(&y)
    }

    /// Visits every tensor with its torchvision name, trainable ones in slot order.
    pub fn visit(&mut self, f: &mut dyn FnMut(&str, TensorKind, &mut Tensor)) {
        self.stem.visit(f);
        for b in &mut self.blocks {
            b.conv1.visit(f);
            b.conv2.visit(f);
            if let Some(d) = &mut b.downsample {
                d.visit(f);
            }
        }
    }
}
