//! Throughput measurements for `labelwise bench`: per-op timings at ResNet18's shapes and
//! whole training and inference steps, on any backend.

use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::autograd::Graph;
use crate::backend::profile::{process_cpu_time, Profiled};
use crate::backend::{BackendHandle, BatchNormParams, Conv2dParams, CosFaceParams, PoolParams};
use crate::error::Result;
use crate::model::{Model, ModelConfig, IMAGENET_MEAN, IMAGENET_STD};
use crate::optim::{Adam, AdamConfig};
use crate::tensor::Tensor;

/// The median, minimum and maximum of repeated timings, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// One op's measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct OpTiming {
    pub op: String,
    pub shape: String,
    pub timing: Timing,
    /// Floating-point operations of one call, where counted.
    pub flops: Option<f64>,
}

impl OpTiming {
    /// Achieved GFLOP/s at the median time.
    pub fn gflops(&self) -> Option<f64> {
        self.flops.map(|f| f / (self.timing.median_ms * 1e-3) / 1e9)
    }
}

/// Whole-model throughput.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelTiming {
    pub image_size: usize,
    pub batch: usize,
    pub train_step: Timing,
    pub inference: Timing,
}

impl ModelTiming {
    pub fn train_images_per_s(&self) -> f64 {
        self.batch as f64 / (self.train_step.median_ms * 1e-3)
    }

    pub fn inference_images_per_s(&self) -> f64 {
        self.batch as f64 / (self.inference.median_ms * 1e-3)
    }
}

/// Times `f` `reps` times after `warmup` calls; `f` must leave its results computed (for
/// asynchronous backends it synchronises by reading a value back).
fn time(warmup: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    let mut samples = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    Ok(Timing {
        median_ms: samples[samples.len() / 2],
        min_ms: samples[0],
        max_ms: samples[samples.len() - 1],
    })
}

fn random(backend: &BackendHandle, shape: &[usize], rng: &mut StdRng) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    backend.from_host(&v, shape)
}

/// One distinct convolution of ResNet18: (name, input H=W, C_in, C_out, k, stride, padding).
pub type ConvShape = (String, usize, usize, usize, usize, usize, usize);

/// The distinct convolution shapes of ResNet18 at `image_size`, stem first.
pub fn resnet_convs(image_size: usize) -> Vec<ConvShape> {
    let out = |h: usize, k: usize, s: usize, p: usize| (h + 2 * p - k) / s + 1;
    let mut v = vec![("conv1 7x7/2".to_string(), image_size, 3, 64, 7, 2, 3)];
    let mut h = out(out(image_size, 7, 2, 3), 3, 2, 1);
    let mut c = 64;
    for (layer, width) in [64usize, 128, 256, 512].into_iter().enumerate() {
        let stride = if layer == 0 { 1 } else { 2 };
        v.push((
            format!("layer{} 3x3/{stride}", layer + 1),
            h,
            c,
            width,
            3,
            stride,
            1,
        ));
        if stride == 2 {
            v.push((
                format!("layer{} down 1x1/2", layer + 1),
                h,
                c,
                width,
                1,
                2,
                0,
            ));
        }
        h = out(h, 3, stride, 1);
        v.push((
            format!("layer{} 3x3/1", layer + 1),
            h,
            width,
            width,
            3,
            1,
            1,
        ));
        c = width;
    }
    v
}

/// Times every primitive ResNet18 training uses, at the shapes it uses them.
pub fn ops(
    backend: &BackendHandle,
    image_size: usize,
    batch: usize,
    reps: usize,
) -> Result<Vec<OpTiming>> {
    let mut rng = StdRng::seed_from_u64(0);
    let mut out = Vec::new();
    let sync = |t: &Tensor| t.backend().to_host(&t.reshape(&[t.len()])?).map(|_| ());

    for (name, h, ci, co, k, s, p) in resnet_convs(image_size) {
        let x = random(backend, &[batch, h, h, ci], &mut rng)?;
        let w = random(backend, &[co, k, k, ci], &mut rng)?;
        let cp = Conv2dParams {
            stride: s,
            padding: p,
        };
        let ho = (h + 2 * p - k) / s + 1;
        let dy = random(backend, &[batch, ho, ho, co], &mut rng)?;
        let flops = 2.0 * (batch * ho * ho * co * k * k * ci) as f64;
        let shape = format!("{batch}x{h}x{h}x{ci} -> {co}");
        let t = time(1, reps, || sync(&backend.conv2d_fwd(&x, &w, None, cp)?))?;
        out.push(OpTiming {
            op: format!("conv fwd {name}"),
            shape: shape.clone(),
            timing: t,
            flops: Some(flops),
        });
        let t = time(1, reps, || {
            sync(&backend.conv2d_bwd_data(&dy, &w, x.shape(), cp)?)
        })?;
        out.push(OpTiming {
            op: format!("conv bwd-data {name}"),
            shape: shape.clone(),
            timing: t,
            flops: Some(flops),
        });
        let t = time(1, reps, || {
            sync(&backend.conv2d_bwd_filter(&x, &dy, w.shape(), cp)?)
        })?;
        out.push(OpTiming {
            op: format!("conv bwd-filter {name}"),
            shape,
            timing: t,
            flops: Some(flops),
        });
    }

    // Batch norm, ReLU and max pool at the stem's output, the largest activation.
    let h = (image_size + 6 - 7) / 2 + 1;
    let x = random(backend, &[batch, h, h, 64], &mut rng)?;
    let gamma = random(backend, &[64], &mut rng)?;
    let beta = random(backend, &[64], &mut rng)?;
    let bn = BatchNormParams { eps: 1e-5 };
    let shape = format!("{batch}x{h}x{h}x64");
    let t = time(1, reps, || {
        sync(&backend.batch_norm_fwd_train(&x, &gamma, &beta, bn)?.y)
    })?;
    out.push(OpTiming {
        op: "batch norm fwd".into(),
        shape: shape.clone(),
        timing: t,
        flops: None,
    });
    let stats = backend.batch_norm_fwd_train(&x, &gamma, &beta, bn)?;
    let t = time(1, reps, || {
        sync(
            &backend
                .batch_norm_bwd(&x, &x, &gamma, &stats.mean, &stats.var, bn)?
                .0,
        )
    })?;
    out.push(OpTiming {
        op: "batch norm bwd".into(),
        shape: shape.clone(),
        timing: t,
        flops: None,
    });
    let t = time(1, reps, || sync(&backend.relu_fwd(&x)?))?;
    out.push(OpTiming {
        op: "relu fwd".into(),
        shape: shape.clone(),
        timing: t,
        flops: None,
    });
    let pool = PoolParams {
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    let t = time(1, reps, || sync(&backend.max_pool_fwd(&x, pool)?))?;
    out.push(OpTiming {
        op: "max pool fwd".into(),
        shape,
        timing: t,
        flops: None,
    });

    // The CosFace head and a fused Adam update over all of ResNet18's weights.
    let emb = random(backend, &[batch, 512], &mut rng)?;
    let head = random(backend, &[10, 512], &mut rng)?;
    let cf = CosFaceParams {
        margin: 0.2,
        scale: 16.0,
        multilabel: false,
    };
    let t = time(1, reps, || {
        sync(&backend.cosface_fwd(&emb, &head, None, cf)?)
    })?;
    out.push(OpTiming {
        op: "cosface fwd".into(),
        shape: format!("{batch}x512 x 10"),
        timing: t,
        flops: None,
    });
    let n = 11_176_512;
    let g = random(backend, &[n], &mut rng)?;
    let mut p = random(backend, &[n], &mut rng)?;
    let mut m = backend.zeros(&[n])?;
    let mut v = backend.zeros(&[n])?;
    let mut step = 0;
    let t = time(1, reps, || {
        step += 1;
        let ap = AdamConfig::default().params(step);
        backend.adam_update(&mut p, &g, &mut m, &mut v, ap)?;
        backend
            .to_host(&backend.channel_sum(&m.reshape(&[n, 1])?)?)
            .map(|_| ())
    })?;
    out.push(OpTiming {
        op: "adam (all weights)".into(),
        shape: format!("{n}"),
        timing: t,
        flops: None,
    });
    Ok(out)
}

/// ResNet18 + CosFace with 10 labels, its optimiser, and a fixed random batch: the workload
/// [`model`], [`profile`] and the criterion benches time.
pub struct Workload {
    backend: BackendHandle,
    model: Model,
    adam: Adam,
    x: Tensor,
    targets: Tensor,
}

impl Workload {
    pub fn new(backend: &BackendHandle, image_size: usize, batch: usize) -> Result<Self> {
        let config = ModelConfig {
            label_names: (0..10).map(|i| format!("c{i}")).collect(),
            multilabel: false,
            image_size,
            margin: 0.2,
            scale: 16.0,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        };
        let mut model = Model::new(backend.clone(), config, 0)?;
        let adam = Adam::new(&mut model, AdamConfig::default())?;
        let mut rng = StdRng::seed_from_u64(1);
        let x = random(backend, &[batch, image_size, image_size, 3], &mut rng)?;
        let mut t = vec![0.0f32; batch * 10];
        for i in 0..batch {
            t[i * 10 + i % 10] = 1.0;
        }
        let targets = backend.from_host(&t, &[batch, 10])?;
        Ok(Workload {
            backend: backend.clone(),
            model,
            adam,
            x,
            targets,
        })
    }

    /// Forward, backward and Adam; reads the loss back, as training does.
    pub fn train_step(&mut self) -> Result<()> {
        let mut g = Graph::new(self.backend.clone(), true);
        let fwd = self
            .model
            .forward(&mut g, self.x.clone(), Some(&self.targets))?;
        let loss = g.cross_entropy(&fwd.logits, &self.targets, false)?;
        loss.value.scalar()?;
        let grads = g.backward(&loss)?;
        self.adam.update(&mut self.model, grads, fwd.slots)
    }

    /// A forward pass without the tape, logits read back.
    pub fn inference(&mut self) -> Result<()> {
        let mut g = Graph::new(self.backend.clone(), false);
        let fwd = self.model.forward(&mut g, self.x.clone(), None)?;
        fwd.logits.value.to_vec().map(|_| ())
    }
}

/// Times a full training step (forward, backward, Adam) and an inference pass of ResNet18 +
/// CosFace with 10 labels.
pub fn model(
    backend: &BackendHandle,
    image_size: usize,
    batch: usize,
    reps: usize,
) -> Result<ModelTiming> {
    let mut w = Workload::new(backend, image_size, batch)?;
    let train_step = time(1, reps, || w.train_step())?;
    let inference = time(1, reps, || w.inference())?;
    Ok(ModelTiming {
        image_size,
        batch,
        train_step,
        inference,
    })
}

/// One op at one shape within a profiled training step.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRow {
    pub op: &'static str,
    pub shape: String,
    pub calls_per_step: f64,
    pub ms_per_step: f64,
    /// Process CPU time (all threads) per step; 0 where the platform does not tell.
    pub cpu_ms_per_step: f64,
}

/// Where a training step's time goes.
#[derive(Debug, Clone, PartialEq)]
pub struct StepProfile {
    pub image_size: usize,
    pub batch: usize,
    pub steps: usize,
    /// Mean wall time of a whole step.
    pub step_ms: f64,
    /// Mean process CPU time of a whole step (all threads); 0 where not measured.
    pub step_cpu_ms: f64,
    /// Slowest first.
    pub rows: Vec<ProfileRow>,
}

impl StepProfile {
    /// Time outside every primitive: the tape, allocation, reading the loss back.
    pub fn unaccounted_ms(&self) -> f64 {
        self.step_ms - self.rows.iter().map(|r| r.ms_per_step).sum::<f64>()
    }

    /// `(op, wall ms per step, CPU ms per step)` summed over shapes, slowest first.
    pub fn by_op(&self) -> Vec<(&'static str, f64, f64)> {
        let mut totals: Vec<(&'static str, f64, f64)> = Vec::new();
        for r in &self.rows {
            match totals.iter_mut().find(|t| t.0 == r.op) {
                Some(t) => {
                    t.1 += r.ms_per_step;
                    t.2 += r.cpu_ms_per_step;
                }
                None => totals.push((r.op, r.ms_per_step, r.cpu_ms_per_step)),
            }
        }
        totals.sort_by(|a, b| b.1.total_cmp(&a.1));
        totals
    }
}

/// Runs `steps` training steps (after one untimed warm-up) with every primitive timed. On
/// CUDA the per-op figures are launch costs only (see [`crate::backend::profile`]).
pub fn profile(
    backend: &BackendHandle,
    image_size: usize,
    batch: usize,
    steps: usize,
) -> Result<StepProfile> {
    let profiled = Arc::new(Profiled::new(backend.clone()));
    let handle: BackendHandle = profiled.clone();
    let mut w = Workload::new(&handle, image_size, batch)?;
    w.train_step()?;
    profiled.reset();
    let steps = steps.max(1);
    let cpu_start = process_cpu_time();
    let start = Instant::now();
    for _ in 0..steps {
        w.train_step()?;
    }
    let step_ms = start.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let step_cpu_ms = match (cpu_start, process_cpu_time()) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64() * 1e3 / steps as f64,
        _ => 0.0,
    };
    let rows = profiled
        .report()
        .into_iter()
        .map(|(op, shape, s)| ProfileRow {
            op,
            shape,
            calls_per_step: s.calls as f64 / steps as f64,
            ms_per_step: s.total.as_secs_f64() * 1e3 / steps as f64,
            cpu_ms_per_step: s.cpu.as_secs_f64() * 1e3 / steps as f64,
        })
        .collect();
    Ok(StepProfile {
        image_size,
        batch,
        steps,
        step_ms,
        step_cpu_ms,
        rows,
    })
}
