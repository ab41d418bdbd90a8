//! Criterion benches of the CPU backend: every primitive of a ResNet18 training step at the
//! shapes the step uses it (batch 32, 32x32 images unless `LABELWISE_BENCH_SIZE` says
//! otherwise), and the whole step and an inference pass at 32 and 64 px.
//!
//! Convolutions report FLOP/s (2 x N*Ho*Wo * Co * k*k*Ci per pass, counting the products with
//! padding as a dense im2col does); the other ops are memory-bound and report time only.
//! `labelwise bench --profile` shows how these add up inside a real step.
//!
//! Run: `cargo bench --bench cpu_ops` (all), `cargo bench --bench cpu_ops -- conv` (a subset).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use labelwise::backend::cpu::CpuBackend;
use labelwise::backend::{
    Backend, BackendHandle, BatchNormParams, Conv2dParams, CosFaceParams, PoolParams,
};
use labelwise::bench::{resnet_convs, Workload};
use labelwise::optim::AdamConfig;
use labelwise::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BATCH: usize = 32;

fn image_size() -> usize {
    std::env::var("LABELWISE_BENCH_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32)
}

fn random_tensor(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let data = (0..n).map(|_| rng.random::<f32>() - 0.5).collect();
    Tensor::from_vec(data, shape).expect("shape matches data")
}

/// Forward, backward-data and backward-filter at every distinct ResNet18 convolution shape.
fn conv(c: &mut Criterion) {
    let cpu = CpuBackend;
    let mut rng = StdRng::seed_from_u64(0);
    let size = image_size();
    for (name, h, ci, co, k, stride, padding) in resnet_convs(size) {
        let p = Conv2dParams { stride, padding };
        let ho = (h + 2 * padding - k) / stride + 1;
        let x = random_tensor(&mut rng, &[BATCH, h, h, ci]);
        let w = random_tensor(&mut rng, &[co, k, k, ci]);
        let dy = random_tensor(&mut rng, &[BATCH, ho, ho, co]);
        let flops = 2 * BATCH * ho * ho * co * k * k * ci;
        let mut group = c.benchmark_group(format!("conv {name} {h}x{h}x{ci}->{co} @{size}px"));
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(BenchmarkId::from_parameter("fwd"), |b| {
            b.iter(|| cpu.conv2d_fwd(black_box(&x), &w, None, p).expect("fwd"))
        });
        group.bench_function(BenchmarkId::from_parameter("bwd_data"), |b| {
            b.iter(|| {
                cpu.conv2d_bwd_data(black_box(&dy), &w, x.shape(), p)
                    .expect("bwd_data")
            })
        });
        group.bench_function(BenchmarkId::from_parameter("bwd_filter"), |b| {
            b.iter(|| {
                cpu.conv2d_bwd_filter(black_box(&x), &dy, w.shape(), p)
                    .expect("bwd_filter")
            })
        });
        group.finish();
    }
}

/// Batch norm (train forward, eval forward, backward), ReLU and the residual add at each
/// stage's activation shape, and both pools.
fn elementwise_and_norm(c: &mut Criterion) {
    let cpu = CpuBackend;
    let mut rng = StdRng::seed_from_u64(1);
    let size = image_size();
    let stem = (size + 6 - 7) / 2 + 1;
    let mut h = (stem + 2 - 3) / 2 + 1;
    let mut shapes = vec![[BATCH, stem, stem, 64]];
    for (i, ch) in [64usize, 128, 256, 512].into_iter().enumerate() {
        if i > 0 {
            h = (h + 2 - 3) / 2 + 1;
        }
        shapes.push([BATCH, h, h, ch]);
    }
    let bn = BatchNormParams { eps: 1e-5 };
    for shape in shapes {
        let ch = shape[3];
        let x = random_tensor(&mut rng, &shape);
        let dy = random_tensor(&mut rng, &shape);
        let gamma = random_tensor(&mut rng, &[ch]);
        let beta = random_tensor(&mut rng, &[ch]);
        let stats = cpu
            .batch_norm_fwd_train(&x, &gamma, &beta, bn)
            .expect("bn fwd");
        let mut group = c.benchmark_group(format!("activation {shape:?}"));
        group.throughput(Throughput::Bytes((x.len() * 4) as u64));
        group.bench_function("batch_norm_fwd_train", |b| {
            b.iter(|| cpu.batch_norm_fwd_train(black_box(&x), &gamma, &beta, bn))
        });
        group.bench_function("batch_norm_fwd_eval", |b| {
            b.iter(|| {
                cpu.batch_norm_fwd_eval(black_box(&x), &gamma, &beta, &stats.mean, &stats.var, bn)
            })
        });
        group.bench_function("batch_norm_bwd", |b| {
            b.iter(|| cpu.batch_norm_bwd(black_box(&dy), &x, &gamma, &stats.mean, &stats.var, bn))
        });
        group.bench_function("relu_fwd", |b| b.iter(|| cpu.relu_fwd(black_box(&x))));
        group.bench_function("relu_bwd", |b| b.iter(|| cpu.relu_bwd(black_box(&dy), &x)));
        group.bench_function("add", |b| b.iter(|| cpu.add(black_box(&x), &dy)));
        group.finish();
    }

    let x = random_tensor(&mut rng, &[BATCH, stem, stem, 64]);
    let pool = PoolParams {
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    let y = cpu.max_pool_fwd(&x, pool).expect("max pool");
    let dy = random_tensor(&mut rng, y.shape());
    let last = random_tensor(&mut rng, &[BATCH, h, h, 512]);
    let dpooled = random_tensor(&mut rng, &[BATCH, 512]);
    let mut group = c.benchmark_group("pool");
    group.bench_function(format!("max_pool_fwd {:?}", x.shape()), |b| {
        b.iter(|| cpu.max_pool_fwd(black_box(&x), pool))
    });
    group.bench_function(format!("max_pool_bwd {:?}", x.shape()), |b| {
        b.iter(|| cpu.max_pool_bwd(black_box(&dy), &x, &y, pool))
    });
    group.bench_function(format!("avg_pool_global_fwd {:?}", last.shape()), |b| {
        b.iter(|| cpu.avg_pool_global_fwd(black_box(&last)))
    });
    group.bench_function(format!("avg_pool_global_bwd {:?}", last.shape()), |b| {
        b.iter(|| cpu.avg_pool_global_bwd(black_box(&dpooled), last.shape()))
    });
    group.finish();
}

/// The CosFace head with its loss, and one Adam update over every ResNet18 parameter.
fn head_and_optimiser(c: &mut Criterion) {
    let cpu = CpuBackend;
    let mut rng = StdRng::seed_from_u64(2);
    let labels = 10;
    let emb = random_tensor(&mut rng, &[BATCH, 512]);
    let weight = random_tensor(&mut rng, &[labels, 512]);
    let mut t = vec![0.0f32; BATCH * labels];
    for i in 0..BATCH {
        t[i * labels + i % labels] = 1.0;
    }
    let targets = Tensor::from_vec(t, &[BATCH, labels]).expect("targets");
    let p = CosFaceParams {
        margin: 0.2,
        scale: 16.0,
        multilabel: false,
    };
    let logits = cpu
        .cosface_fwd(&emb, &weight, Some(&targets), p)
        .expect("cosface");
    let dlogits = cpu
        .softmax_xent_bwd(&logits, &targets, 1.0)
        .expect("xent bwd");
    let mut group = c.benchmark_group("head [32, 512] x 10");
    group.bench_function("cosface_fwd", |b| {
        b.iter(|| cpu.cosface_fwd(black_box(&emb), &weight, Some(&targets), p))
    });
    group.bench_function("cosface_bwd", |b| {
        b.iter(|| cpu.cosface_bwd(black_box(&dlogits), &emb, &weight, p))
    });
    group.bench_function("softmax_xent_fwd", |b| {
        b.iter(|| cpu.softmax_xent_fwd(black_box(&logits), &targets))
    });
    group.finish();

    // ResNet18's convolution weights (each distinct shape as often as the network repeats it:
    // `resnet_convs` lists layer1's 3x3/1 twice for its four, and one 3x3/1 for the three of
    // each later stage), the head, and one batch norm's gamma and beta per convolution:
    // 11,176,512 encoder parameters, as tests/model.rs counts. Adam visits each once a step.
    let size = image_size();
    let repeats = |name: &str| match name {
        n if n.starts_with("layer1 3x3/1") => 2,
        n if n.ends_with("3x3/1") => 3,
        _ => 1,
    };
    let mut params: Vec<(Tensor, Tensor, Tensor, Tensor)> = resnet_convs(size)
        .into_iter()
        .flat_map(|(name, _, ci, co, k, _, _)| {
            let r = repeats(&name);
            std::iter::repeat_n(co * k * k * ci, r).chain(std::iter::repeat_n(co, 2 * r))
        })
        .chain([512 * labels])
        .map(|n| {
            let shape = [n];
            (
                random_tensor(&mut rng, &shape),
                random_tensor(&mut rng, &shape),
                Tensor::from_vec(vec![0.0; n], &shape).expect("m"),
                Tensor::from_vec(vec![0.0; n], &shape).expect("v"),
            )
        })
        .collect();
    let total: usize = params.iter().map(|p| p.0.len()).sum();
    assert_eq!(
        total,
        11_176_512 + 512 * labels,
        "ResNet18 + head parameter count"
    );
    let mut group = c.benchmark_group("optimiser");
    group.throughput(Throughput::Elements(total as u64));
    let mut step = 0u32;
    group.bench_function(format!("adam over {total} parameters"), |b| {
        b.iter(|| {
            step += 1;
            let ap = AdamConfig::default().params(step);
            for (param, grad, m, v) in params.iter_mut() {
                cpu.adam_update(param, grad, m, v, ap).expect("adam");
            }
        })
    });
    group.finish();
}

/// The whole training step (forward, backward, Adam) and an inference pass.
fn model(c: &mut Criterion) {
    labelwise::backend::cpu::keep_freed_memory();
    let backend: BackendHandle = Arc::new(CpuBackend);
    for size in [32usize, 64] {
        let mut w = Workload::new(&backend, size, BATCH).expect("workload");
        let mut group = c.benchmark_group(format!("resnet18 batch {BATCH} @{size}px"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function("train_step", |b| b.iter(|| w.train_step().expect("step")));
        group.bench_function("inference", |b| {
            b.iter(|| w.inference().expect("inference"))
        });
        group.finish();
    }
}

criterion_group!(
    benches,
    conv,
    elementwise_and_norm,
    head_and_optimiser,
    model
);
criterion_main!(benches);
