//! Times the CPU backend's convolution (forward, backward data, backward filter) at the
//! ResNet18 layer shapes of a batch of 32 images of 32x32; throughput is reported in FLOP/s.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use labelwise::backend::cpu::CpuBackend;
use labelwise::backend::{Backend, Conv2dParams};
use labelwise::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One convolution of the network: input `[N, H, W, Ci]`, `Co` filters of `k x k`.
struct Layer {
    name: &'static str,
    x: [usize; 4],
    co: usize,
    k: usize,
    stride: usize,
    padding: usize,
}

const BATCH: usize = 32;

/// The stem (7x7 stride 2 to 16x16x64), one 3x3 convolution of each stage, and a 1x1
/// stride-2 shortcut.
const LAYERS: [Layer; 6] = [
    Layer {
        name: "stem_16x16x64",
        x: [BATCH, 32, 32, 3],
        co: 64,
        k: 7,
        stride: 2,
        padding: 3,
    },
    Layer {
        name: "3x3_8x8x64",
        x: [BATCH, 8, 8, 64],
        co: 64,
        k: 3,
        stride: 1,
        padding: 1,
    },
    Layer {
        name: "3x3_4x4x128",
        x: [BATCH, 4, 4, 128],
        co: 128,
        k: 3,
        stride: 1,
        padding: 1,
    },
    Layer {
        name: "3x3_2x2x256",
        x: [BATCH, 2, 2, 256],
        co: 256,
        k: 3,
        stride: 1,
        padding: 1,
    },
    Layer {
        name: "3x3_1x1x512",
        x: [BATCH, 1, 1, 512],
        co: 512,
        k: 3,
        stride: 1,
        padding: 1,
    },
    Layer {
        name: "1x1s2_4x4x128",
        x: [BATCH, 8, 8, 64],
        co: 128,
        k: 1,
        stride: 2,
        padding: 0,
    },
];

fn random_tensor(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let data = (0..n).map(|_| rng.random::<f32>() - 0.5).collect();
    Tensor::from_vec(data, shape).expect("shape matches data")
}

fn conv(c: &mut Criterion) {
    let cpu = CpuBackend;
    let mut rng = StdRng::seed_from_u64(0);
    for layer in &LAYERS {
        let [n, h, w, ci] = layer.x;
        let p = Conv2dParams {
            stride: layer.stride,
            padding: layer.padding,
        };
        let ho = (h + 2 * p.padding - layer.k) / p.stride + 1;
        let wo = (w + 2 * p.padding - layer.k) / p.stride + 1;
        let x = random_tensor(&mut rng, &layer.x);
        let wt = random_tensor(&mut rng, &[layer.co, layer.k, layer.k, ci]);
        let dy = random_tensor(&mut rng, &[n, ho, wo, layer.co]);

        // Each of the three products is 2 * N*Ho*Wo * Co * k*k*Ci floating-point operations,
        // counting the multiply-adds with padding zeros as a dense im2col does.
        let flops = 2 * n * ho * wo * layer.co * layer.k * layer.k * ci;
        let mut group = c.benchmark_group(layer.name);
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(BenchmarkId::from_parameter("fwd"), |b| {
            b.iter(|| cpu.conv2d_fwd(black_box(&x), &wt, None, p).expect("fwd"))
        });
        group.bench_function(BenchmarkId::from_parameter("bwd_data"), |b| {
            b.iter(|| {
                cpu.conv2d_bwd_data(black_box(&dy), &wt, x.shape(), p)
                    .expect("bwd_data")
            })
        });
        group.bench_function(BenchmarkId::from_parameter("bwd_filter"), |b| {
            b.iter(|| {
                cpu.conv2d_bwd_filter(black_box(&x), &dy, wt.shape(), p)
                    .expect("bwd_filter")
            })
        });
        group.finish();
    }
}

criterion_group!(benches, conv);
criterion_main!(benches);
