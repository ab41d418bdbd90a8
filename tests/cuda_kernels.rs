//! Every CUDA kernel against the CPU reference, through the `Backend` trait, plus checks of the
//! embedded PTX that need no GPU.
//!
//! Inputs are seeded random values generated once on the host and uploaded to both backends;
//! the CUDA backend fills every buffer it hands out with NaN first, so an element a kernel
//! forgets to write fails the comparison. Without a GPU (or without kernels) the comparison
//! tests print why they were skipped and pass.

use std::sync::Arc;

use labelwise::backend::cpu::CpuBackend;
use labelwise::backend::cuda::{kernels, CudaBackend};
use labelwise::backend::*;
use labelwise::{Error, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---- Tolerances -------------------------------------------------------------------------------

/// An element passes when `|gpu - cpu| <= abs + rel * |cpu|`.
#[derive(Debug, Clone, Copy)]
struct Tolerance {
    abs: f32,
    rel: f32,
}

/// Same f32 operations in the same order: bit-identical up to fused multiply-adds.
const EXACT: Tolerance = Tolerance {
    abs: 0.0,
    rel: 1e-6,
};
/// A few f32 operations, possibly contracted into FMAs or with another division order.
const ELEMENTWISE: Tolerance = Tolerance {
    abs: 1e-6,
    rel: 1e-5,
};
/// exp / log / sqrt: CUDA's and Rust's libm differ by a few ulp.
const TRANSCENDENTAL: Tolerance = Tolerance {
    abs: 1e-5,
    rel: 1e-4,
};
/// Sums of up to ~1e5 terms in a different order (tree in f32 vs the CPU's f64).
const REDUCTION: Tolerance = Tolerance {
    abs: 1e-4,
    rel: 1e-4,
};
/// Convolutions: dot products of up to 4608 terms of O(1) values, and backward-filter sums
/// over up to ~1e4 pixels; f32 rounding of the GPU's order grows like sqrt(terms).
const CONV: Tolerance = Tolerance {
    abs: 5e-4,
    rel: 1e-3,
};
/// Batch norm backward: differences of large sums, divided by small standard deviations.
const BATCH_NORM_BWD: Tolerance = Tolerance {
    abs: 5e-4,
    rel: 1e-3,
};

// ---- Harness ----------------------------------------------------------------------------------

/// Both backends, or `None` (after saying why) when there is no GPU or no kernels.
struct Pair {
    cpu: CpuBackend,
    gpu: Arc<CudaBackend>,
    rng: StdRng,
    /// The CUDA side runs on the PTX interpreter: sizes stay small enough for the CPU.
    emulated: bool,
}

impl Pair {
    /// The CPU reference beside the CUDA backend: on a GPU when there is one, otherwise on
    /// the PTX interpreter (the same compiled PTX, with bounds and race checks). Only a build
    /// without nvcc skips, saying so. `LABELWISE_TEST_DEVICE=gpu` makes a missing GPU a skip
    /// instead (for the GPU check script, which must not pass on the interpreter).
    fn new(test: &str) -> Option<Pair> {
        let want_gpu = std::env::var("LABELWISE_TEST_DEVICE").is_ok_and(|v| v == "gpu");
        let opened = match CudaBackend::open(0) {
            Ok(gpu) => Ok((gpu, false)),
            Err(e) if want_gpu => Err(e),
            Err(_) => CudaBackend::emulated().map(|b| (b, true)),
        };
        match opened {
            Ok((gpu, emulated)) => {
                gpu.set_poison(true);
                Some(Pair {
                    cpu: CpuBackend,
                    gpu,
                    rng: StdRng::seed_from_u64(0x1abe1),
                    emulated,
                })
            }
            Err(e) => {
                eprintln!("SKIPPED {test}: no CUDA backend here ({e})");
                None
            }
        }
    }

    /// Uniform values in [lo, hi).
    fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.rng.random_range(lo..hi)).collect()
    }

    /// The same host data on both backends.
    fn both(&self, data: &[f32], shape: &[usize]) -> (Tensor, Tensor) {
        (
            self.cpu.from_host(data, shape).unwrap(),
            self.gpu.from_host(data, shape).unwrap(),
        )
    }

    /// Random values on both backends.
    fn random(&mut self, shape: &[usize], lo: f32, hi: f32) -> (Tensor, Tensor) {
        let data = self.uniform(shape.iter().product(), lo, hi);
        self.both(&data, shape)
    }
}

fn unwrap<T>(what: &str, side: &str, r: labelwise::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {side} backend failed: {e}"))
}

/// Compares a GPU result with the CPU reference; on failure names the worst element.
fn assert_close(what: &str, cpu: &Tensor, gpu: &Tensor, tol: Tolerance) {
    assert_eq!(cpu.shape(), gpu.shape(), "{what}: shapes differ");
    let want = cpu.to_vec().unwrap();
    let got = gpu.to_vec().unwrap();
    let mut worst: Option<(usize, f32)> = None;
    let (mut failures, mut max_abs, mut max_rel) = (0usize, 0f32, 0f32);
    for (i, (&w, &g)) in want.iter().zip(&got).enumerate() {
        if w.is_nan() && g.is_nan() || w == g {
            continue;
        }
        let abs = (g - w).abs();
        let rel = abs / w.abs().max(f32::MIN_POSITIVE);
        let excess = if abs.is_nan() {
            f32::INFINITY
        } else {
            abs - (tol.abs + tol.rel * w.abs())
        };
        max_abs = max_abs.max(abs);
        max_rel = max_rel.max(rel);
        if excess > 0.0 || abs.is_nan() {
            failures += 1;
            if worst.is_none_or(|(_, e)| excess > e) {
                worst = Some((i, excess));
            }
        }
    }
    if let Some((i, _)) = worst {
        let (w, g) = (want[i], got[i]);
        panic!(
            "{what}: {failures} of {} elements outside {tol:?}; worst at {:?} (flat {i}): cpu {w}, \
             gpu {g}, abs err {}, rel err {}; max abs err {max_abs}, max rel err {max_rel}",
            want.len(),
            unflatten(i, cpu.shape()),
            (g - w).abs(),
            (g - w).abs() / w.abs()
        );
    }
}

fn unflatten(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (axis, &dim) in shape.iter().enumerate().rev() {
        idx[axis] = i % dim.max(1);
        i /= dim.max(1);
    }
    idx
}

// ---- Checks that need no GPU ------------------------------------------------------------------

/// The `.param` byte size of entry `name` in `ptx`, if the entry exists.
fn ptx_entry_param_bytes(ptx: &str, name: &str) -> Option<usize> {
    let start = ptx.find(&format!(".entry {name}("))?;
    let decl = &ptx[start..start + ptx[start..].find(')')?];
    let open = decl.rfind('[')?;
    let close = decl.rfind(']')?;
    decl[open + 1..close].trim().parse().ok()
}

#[test]
fn every_listed_kernel_is_an_entry_of_the_embedded_ptx() {
    if !kernels::BUILT_WITH_NVCC {
        eprintln!("SKIPPED: built without nvcc, no PTX embedded");
        assert!(kernels::PTX_MODULES.is_empty());
        return;
    }
    for kernel in kernels::ALL {
        let (_, ptx) = kernels::PTX_MODULES
            .iter()
            .find(|(m, _)| *m == kernel.module)
            .unwrap_or_else(|| panic!("{}: no module {}", kernel.name, kernel.module));
        let bytes = ptx_entry_param_bytes(ptx, kernel.name)
            .unwrap_or_else(|| panic!("{} is not an .entry of {}.ptx", kernel.name, kernel.module));
        assert_eq!(
            bytes, kernel.param_bytes,
            "{}: PTX parameter size vs Rust struct",
            kernel.name
        );
    }
    // And the other way: every entry point in the PTX is listed on the Rust side.
    for (module, ptx) in kernels::PTX_MODULES {
        for line in ptx.lines().filter(|l| l.contains(".entry ")) {
            let name = line
                .split(".entry ")
                .nth(1)
                .unwrap()
                .split('(')
                .next()
                .unwrap()
                .trim();
            assert!(
                kernels::ALL
                    .iter()
                    .any(|k| k.name == name && k.module == *module),
                "{module}.ptx has entry {name} that kernels.rs does not list"
            );
        }
    }
}

#[test]
fn kernel_names_follow_the_convention_and_are_unique() {
    for (i, kernel) in kernels::ALL.iter().enumerate() {
        assert!(
            kernel.name.ends_with("_fwd_f32") || kernel.name.ends_with("_bwd_f32"),
            "{} is not <op>_<fwd|bwd>_f32",
            kernel.name
        );
        assert!(
            kernels::ALL[..i].iter().all(|k| k.name != kernel.name),
            "{} twice",
            kernel.name
        );
    }
}

#[test]
fn embedded_fatbins_and_ptx_are_present() {
    for m in kernels::MODULES {
        assert!(!m.fatbin.is_empty(), "{}: empty fatbin", m.name);
        assert!(m.ptx.contains(&format!(
            ".target {}",
            kernels::PTX_ARCH.replace("compute", "sm")
        )));
    }
    assert_eq!(kernels::MODULES.len(), kernels::PTX_MODULES.len());
}

#[test]
fn open_reports_a_typed_error_instead_of_panicking() {
    match CudaBackend::open(0) {
        Ok(b) => eprintln!("a GPU is present: {}", b.device().describe()),
        Err(Error::BuiltWithoutCuda) => {
            assert!(
                kernels::PTX_MODULES.is_empty(),
                "BuiltWithoutCuda but PTX is embedded"
            )
        }
        Err(Error::Cuda(why)) => eprintln!("no GPU: {why}"),
        Err(other) => panic!("unexpected error type: {other}"),
    }
}

#[test]
fn every_listed_kernel_loads() {
    let Some(p) = Pair::new("every_listed_kernel_loads") else {
        return;
    };
    for kernel in kernels::ALL {
        p.gpu
            .device()
            .load_kernel(kernel)
            .unwrap_or_else(|e| panic!("{}: {e}", kernel.name));
    }
}

// ---- Elementwise ------------------------------------------------------------------------------

const ELEMENTWISE_SHAPES: &[&[usize]] = &[&[1], &[7], &[3, 5, 7, 11], &[100_003]];

#[test]
fn elementwise_ops_match_cpu() {
    let Some(mut p) = Pair::new("elementwise_ops_match_cpu") else {
        return;
    };
    for &shape in ELEMENTWISE_SHAPES {
        let (ac, ag) = p.random(shape, -2.0, 2.0);
        let (bc, bg) = p.random(shape, -2.0, 2.0);
        let tag = |op: &str| format!("{op} {shape:?}");
        let add = |b: &dyn Backend, x: &Tensor, y: &Tensor| b.add(x, y);
        assert_close(
            &tag("add"),
            &add(&p.cpu, &ac, &bc).unwrap(),
            &add(&*p.gpu, &ag, &bg).unwrap(),
            EXACT,
        );
        assert_close(
            &tag("scale"),
            &unwrap("scale", "cpu", p.cpu.scale(&ac, -0.37)),
            &unwrap("scale", "cuda", p.gpu.scale(&ag, -0.37)),
            EXACT,
        );
        let (yc, yg) = (p.cpu.relu_fwd(&ac).unwrap(), p.gpu.relu_fwd(&ag).unwrap());
        assert_close(&tag("relu_fwd"), &yc, &yg, EXACT);
        assert_close(
            &tag("relu_bwd"),
            &p.cpu.relu_bwd(&bc, &yc).unwrap(),
            &p.gpu.relu_bwd(&bg, &yg).unwrap(),
            EXACT,
        );

        // In-place ops on fresh copies.
        let data = ac.to_vec().unwrap();
        let (mut xc, mut xg) = p.both(&data, shape);
        p.cpu.add_assign(&mut xc, &bc).unwrap();
        p.gpu.add_assign(&mut xg, &bg).unwrap();
        assert_close(&tag("add_assign"), &xc, &xg, EXACT);
        let (mut xc, mut xg) = p.both(&data, shape);
        p.cpu.lerp_assign(&mut xc, &bc, 0.75, 0.1).unwrap();
        p.gpu.lerp_assign(&mut xg, &bg, 0.75, 0.1).unwrap();
        assert_close(&tag("lerp_assign"), &xc, &xg, ELEMENTWISE);
    }
}

#[test]
fn non_finite_count_matches_cpu() {
    let Some(mut p) = Pair::new("non_finite_count_matches_cpu") else {
        return;
    };
    for n in [1usize, 1000, 1_000_003] {
        let mut data = p.uniform(n, -1.0, 1.0);
        for j in 0..(n / 97) {
            data[(j * 7919) % n] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][j % 3];
        }
        let (c, g) = p.both(&data, &[n]);
        assert_eq!(
            p.cpu.non_finite_count(&c).unwrap(),
            p.gpu.non_finite_count(&g).unwrap(),
            "n {n}"
        );
    }
}

#[test]
fn channel_sum_matches_cpu() {
    let Some(mut p) = Pair::new("channel_sum_matches_cpu") else {
        return;
    };
    for shape in [
        &[3usize][..],
        &[1, 3],
        &[2, 5, 7, 65],
        &[4096, 33],
        &[200_000, 3],
        &[64, 1],
    ] {
        let (c, g) = p.random(shape, -1.0, 1.0);
        let tag = format!("channel_sum {shape:?}");
        assert_close(
            &tag,
            &p.cpu.channel_sum(&c).unwrap(),
            &p.gpu.channel_sum(&g).unwrap(),
            REDUCTION,
        );
    }
}

// ---- Convolution ------------------------------------------------------------------------------

/// (N, H, W, Ci, Co, k, stride, padding).
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize);

/// ResNet18's shapes at small batch, and odd ones.
const CONV_CASES: &[ConvCase] = &[
    (2, 32, 32, 3, 64, 7, 2, 3),  // stem
    (2, 8, 8, 64, 64, 3, 1, 1),   // layer1
    (2, 8, 8, 64, 128, 3, 2, 1),  // layer2 first conv
    (2, 8, 8, 64, 128, 1, 2, 0),  // downsample
    (1, 7, 7, 512, 512, 3, 1, 1), // layer4, batch 1
    (1, 5, 7, 3, 5, 3, 1, 0),     // tiny, no padding
    (3, 9, 6, 17, 70, 3, 2, 1),   // channels not multiples of the tile
    (1, 1, 1, 1, 1, 1, 1, 0),     // one element
    (2, 11, 10, 5, 3, 5, 3, 2),   // 5x5, stride 3
    (1, 6, 6, 20, 9, 7, 1, 3),    // 7x7 stride 1 on a small image
];

#[test]
fn conv2d_matches_cpu() {
    let Some(mut p) = Pair::new("conv2d_matches_cpu") else {
        return;
    };
    for &(n, h, w, ci, co, k, stride, padding) in CONV_CASES {
        let cp = Conv2dParams { stride, padding };
        let tag = |op: &str| format!("{op} x [{n},{h},{w},{ci}] w [{co},{k},{k},{ci}] {cp:?}");
        let (xc, xg) = p.random(&[n, h, w, ci], -1.0, 1.0);
        let (wc, wg) = p.random(&[co, k, k, ci], -0.5, 0.5);
        let (bc, bg) = p.random(&[co], -1.0, 1.0);

        let yc = unwrap(
            "conv2d_fwd",
            "cpu",
            p.cpu.conv2d_fwd(&xc, &wc, Some(&bc), cp),
        );
        let yg = unwrap(
            "conv2d_fwd",
            "cuda",
            p.gpu.conv2d_fwd(&xg, &wg, Some(&bg), cp),
        );
        assert_close(&tag("conv2d_fwd+bias"), &yc, &yg, CONV);
        let yc = p.cpu.conv2d_fwd(&xc, &wc, None, cp).unwrap();
        let yg = p.gpu.conv2d_fwd(&xg, &wg, None, cp).unwrap();
        assert_close(&tag("conv2d_fwd"), &yc, &yg, CONV);

        let (dyc, dyg) = p.random(yc.shape(), -1.0, 1.0);
        let dxc = unwrap(
            "conv2d_bwd_data",
            "cpu",
            p.cpu.conv2d_bwd_data(&dyc, &wc, xc.shape(), cp),
        );
        let dxg = unwrap(
            "conv2d_bwd_data",
            "cuda",
            p.gpu.conv2d_bwd_data(&dyg, &wg, xg.shape(), cp),
        );
        assert_close(&tag("conv2d_bwd_data"), &dxc, &dxg, CONV);
        let dwc = p.cpu.conv2d_bwd_filter(&xc, &dyc, wc.shape(), cp).unwrap();
        let dwg = p.gpu.conv2d_bwd_filter(&xg, &dyg, wg.shape(), cp).unwrap();
        assert_close(&tag("conv2d_bwd_filter"), &dwc, &dwg, CONV);
    }
}

#[test]
fn conv2d_bwd_filter_split_sum_matches_cpu() {
    // Enough pixels that the pixel sum is split across many blocks and reduced afterwards.
    let Some(mut p) = Pair::new("conv2d_bwd_filter_split_sum_matches_cpu") else {
        return;
    };
    let cp = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    let (xc, xg) = p.random(&[8, 28, 28, 16], -1.0, 1.0);
    let (dyc, dyg) = p.random(&[8, 28, 28, 24], -1.0, 1.0);
    let dwc = p
        .cpu
        .conv2d_bwd_filter(&xc, &dyc, &[24, 3, 3, 16], cp)
        .unwrap();
    let dwg = p
        .gpu
        .conv2d_bwd_filter(&xg, &dyg, &[24, 3, 3, 16], cp)
        .unwrap();
    // 6272 pixels per weight: a looser bound in absolute terms, same in relative.
    assert_close(
        "conv2d_bwd_filter split",
        &dwc,
        &dwg,
        Tolerance {
            abs: 2e-3,
            rel: 1e-3,
        },
    );
}

// ---- Batch norm -------------------------------------------------------------------------------

#[test]
fn batch_norm_matches_cpu() {
    let Some(mut p) = Pair::new("batch_norm_matches_cpu") else {
        return;
    };
    let bn = BatchNormParams { eps: 1e-5 };
    for shape in [
        &[2usize, 5, 5, 3][..],
        &[4, 8, 8, 64],
        &[1, 1, 1, 7],
        &[64, 1000],
        &[8, 32, 32, 64],
    ] {
        let c = *shape.last().unwrap();
        let tag = |op: &str| format!("{op} {shape:?}");
        // An offset mean stresses the variance computation.
        let (xc, xg) = p.random(shape, 2.0, 4.0);
        let (gc, gg) = p.random(&[c], 0.5, 1.5);
        let (bc, bg) = p.random(&[c], -0.5, 0.5);

        let oc = unwrap(
            "batch_norm_fwd_train",
            "cpu",
            p.cpu.batch_norm_fwd_train(&xc, &gc, &bc, bn),
        );
        let og = unwrap(
            "batch_norm_fwd_train",
            "cuda",
            p.gpu.batch_norm_fwd_train(&xg, &gg, &bg, bn),
        );
        assert_close(&tag("batch_norm mean"), &oc.mean, &og.mean, REDUCTION);
        assert_close(&tag("batch_norm var"), &oc.var, &og.var, REDUCTION);
        // Rows of one element have zero variance: y = beta exactly, gamma / sqrt(eps) * 0.
        assert_close(&tag("batch_norm y"), &oc.y, &og.y, REDUCTION);

        let (mc, mg) = p.random(&[c], 2.5, 3.5);
        let (vc, vg) = p.random(&[c], 0.05, 2.0);
        let yc = p
            .cpu
            .batch_norm_fwd_eval(&xc, &gc, &bc, &mc, &vc, bn)
            .unwrap();
        let yg = p
            .gpu
            .batch_norm_fwd_eval(&xg, &gg, &bg, &mg, &vg, bn)
            .unwrap();
        assert_close(&tag("batch_norm_fwd_eval"), &yc, &yg, TRANSCENDENTAL);

        let (dyc, dyg) = p.random(shape, -1.0, 1.0);
        let (dxc, dgc, dbc) = unwrap(
            "batch_norm_bwd",
            "cpu",
            p.cpu.batch_norm_bwd(&dyc, &xc, &gc, &oc.mean, &oc.var, bn),
        );
        let (dxg, dgg, dbg) = unwrap(
            "batch_norm_bwd",
            "cuda",
            p.gpu.batch_norm_bwd(&dyg, &xg, &gg, &og.mean, &og.var, bn),
        );
        assert_close(&tag("batch_norm_bwd dbeta"), &dbc, &dbg, REDUCTION);
        assert_close(&tag("batch_norm_bwd dgamma"), &dgc, &dgg, BATCH_NORM_BWD);
        assert_close(&tag("batch_norm_bwd dx"), &dxc, &dxg, BATCH_NORM_BWD);
    }
}

// ---- Pooling ----------------------------------------------------------------------------------

#[test]
fn max_pool_matches_cpu_including_ties() {
    let Some(mut p) = Pair::new("max_pool_matches_cpu_including_ties") else {
        return;
    };
    let cases = [
        (
            [2usize, 9, 9, 5],
            PoolParams {
                kernel: 3,
                stride: 2,
                padding: 1,
            },
        ),
        (
            [2, 16, 16, 64],
            PoolParams {
                kernel: 3,
                stride: 2,
                padding: 1,
            },
        ),
        (
            [1, 8, 8, 3],
            PoolParams {
                kernel: 2,
                stride: 2,
                padding: 0,
            },
        ),
        (
            [1, 7, 5, 4],
            PoolParams {
                kernel: 3,
                stride: 1,
                padding: 1,
            },
        ),
        (
            [1, 1, 1, 2],
            PoolParams {
                kernel: 1,
                stride: 1,
                padding: 0,
            },
        ),
    ];
    for (shape, pp) in cases {
        for ties in [false, true] {
            let tag = |op: &str| format!("{op} {shape:?} {pp:?} ties {ties}");
            let mut data = p.uniform(shape.iter().product(), -1.0, 1.0);
            if ties {
                // Three levels only: most windows hold several equal maxima.
                data.iter_mut().for_each(|v| *v = (*v * 1.5).round());
            }
            let (xc, xg) = p.both(&data, &shape);
            let yc = unwrap("max_pool_fwd", "cpu", p.cpu.max_pool_fwd(&xc, pp));
            let yg = unwrap("max_pool_fwd", "cuda", p.gpu.max_pool_fwd(&xg, pp));
            assert_close(&tag("max_pool_fwd"), &yc, &yg, EXACT);
            let (dyc, dyg) = p.random(yc.shape(), -1.0, 1.0);
            let dxc = p.cpu.max_pool_bwd(&dyc, &xc, &yc, pp).unwrap();
            let dxg = p.gpu.max_pool_bwd(&dyg, &xg, &yg, pp).unwrap();
            assert_close(&tag("max_pool_bwd"), &dxc, &dxg, ELEMENTWISE);
        }
    }
}

#[test]
fn global_average_pool_matches_cpu() {
    let Some(mut p) = Pair::new("global_average_pool_matches_cpu") else {
        return;
    };
    for shape in [
        [2usize, 7, 7, 512],
        [1, 1, 1, 3],
        [3, 4, 5, 6],
        [5, 56, 56, 64],
    ] {
        let tag = |op: &str| format!("{op} {shape:?}");
        let (xc, xg) = p.random(&shape, -1.0, 1.0);
        let yc = unwrap("avg_pool_global_fwd", "cpu", p.cpu.avg_pool_global_fwd(&xc));
        let yg = unwrap(
            "avg_pool_global_fwd",
            "cuda",
            p.gpu.avg_pool_global_fwd(&xg),
        );
        assert_close(&tag("avg_pool_global_fwd"), &yc, &yg, REDUCTION);
        let (dyc, dyg) = p.random(yc.shape(), -1.0, 1.0);
        let dxc = p.cpu.avg_pool_global_bwd(&dyc, &shape).unwrap();
        let dxg = p.gpu.avg_pool_global_bwd(&dyg, &shape).unwrap();
        assert_close(&tag("avg_pool_global_bwd"), &dxc, &dxg, ELEMENTWISE);
    }
}

// ---- Head, losses, optimiser ------------------------------------------------------------------

/// One-hot rows (softmax data) or random {0, 1} (multi-label data).
fn targets(p: &mut Pair, n: usize, l: usize, multilabel: bool) -> Vec<f32> {
    let mut t = vec![0f32; n * l];
    for r in 0..n {
        if multilabel {
            for c in 0..l {
                t[r * l + c] = if p.rng.random_bool(0.3) { 1.0 } else { 0.0 };
            }
        } else {
            t[r * l + p.rng.random_range(0..l)] = 1.0;
        }
    }
    t
}

#[test]
fn cosface_matches_cpu() {
    let Some(mut p) = Pair::new("cosface_matches_cpu") else {
        return;
    };
    for (n, l, d) in [
        (4usize, 10usize, 512usize),
        (3, 7, 33),
        (1, 1, 1),
        (130, 20, 64),
    ] {
        for multilabel in [false, true] {
            let cf = CosFaceParams {
                margin: 0.35,
                scale: 30.0,
                multilabel,
            };
            let tag = |op: &str| format!("{op} n {n} l {l} d {d} multilabel {multilabel}");
            let mut emb = p.uniform(n * d, -1.0, 1.0);
            if n > 1 {
                emb[d..2 * d].iter_mut().for_each(|v| *v = 0.0); // a zero row: cosine 0
            }
            let (ec, eg) = p.both(&emb, &[n, d]);
            let (wc, wg) = p.random(&[l, d], -1.0, 1.0);
            let t = targets(&mut p, n, l, multilabel);
            let (tc, tg) = p.both(&t, &[n, l]);
            for with_targets in [false, true] {
                let (tcs, tgs) = if with_targets {
                    (Some(&tc), Some(&tg))
                } else {
                    (None, None)
                };
                let yc = unwrap("cosface_fwd", "cpu", p.cpu.cosface_fwd(&ec, &wc, tcs, cf));
                let yg = unwrap("cosface_fwd", "cuda", p.gpu.cosface_fwd(&eg, &wg, tgs, cf));
                // Logits are 30 x a cosine: the scale multiplies the cosine's rounding.
                assert_close(
                    &tag("cosface_fwd"),
                    &yc,
                    &yg,
                    Tolerance {
                        abs: 1e-4,
                        rel: 1e-4,
                    },
                );
            }
            let (gc, gg) = p.random(&[n, l], -1.0, 1.0);
            let (dec, dwc) = unwrap("cosface_bwd", "cpu", p.cpu.cosface_bwd(&gc, &ec, &wc, cf));
            let (deg, dwg) = unwrap("cosface_bwd", "cuda", p.gpu.cosface_bwd(&gg, &eg, &wg, cf));
            let tol = Tolerance {
                abs: 1e-3,
                rel: 1e-3,
            };
            // The zero row is a constant on both backends: its gradient is exactly zero.
            assert_close(&tag("cosface_bwd d_emb"), &dec, &deg, tol);
            assert_close(&tag("cosface_bwd d_weight"), &dwc, &dwg, tol);
        }
    }
}

#[test]
fn losses_and_probabilities_match_cpu() {
    let Some(mut p) = Pair::new("losses_and_probabilities_match_cpu") else {
        return;
    };
    for (n, l, spread) in [
        (5usize, 10usize, 3.0f32),
        (1, 1, 1.0),
        (300, 37, 3.0),
        (17, 5, 60.0),
    ] {
        for multilabel in [false, true] {
            let tag = |op: &str| format!("{op} [{n}, {l}] spread {spread} multilabel {multilabel}");
            let (zc, zg) = p.random(&[n, l], -spread, spread);
            let t = targets(&mut p, n, l, multilabel);
            let (tc, tg) = p.both(&t, &[n, l]);
            let (lc, lg, gc, gg) = if multilabel {
                (
                    unwrap("sigmoid_xent_fwd", "cpu", p.cpu.sigmoid_xent_fwd(&zc, &tc)),
                    unwrap("sigmoid_xent_fwd", "cuda", p.gpu.sigmoid_xent_fwd(&zg, &tg)),
                    p.cpu.sigmoid_xent_bwd(&zc, &tc, 0.7).unwrap(),
                    p.gpu.sigmoid_xent_bwd(&zg, &tg, 0.7).unwrap(),
                )
            } else {
                (
                    unwrap("softmax_xent_fwd", "cpu", p.cpu.softmax_xent_fwd(&zc, &tc)),
                    unwrap("softmax_xent_fwd", "cuda", p.gpu.softmax_xent_fwd(&zg, &tg)),
                    p.cpu.softmax_xent_bwd(&zc, &tc, 0.7).unwrap(),
                    p.gpu.softmax_xent_bwd(&zg, &tg, 0.7).unwrap(),
                )
            };
            assert_close(&tag("xent_fwd"), &lc, &lg, TRANSCENDENTAL);
            assert_close(&tag("xent_bwd"), &gc, &gg, TRANSCENDENTAL);
            let pc = unwrap("probabilities", "cpu", p.cpu.probabilities(&zc, multilabel));
            let pg = unwrap(
                "probabilities",
                "cuda",
                p.gpu.probabilities(&zg, multilabel),
            );
            assert_close(&tag("probabilities"), &pc, &pg, TRANSCENDENTAL);
        }
    }
}

#[test]
fn adam_update_matches_cpu() {
    let Some(mut p) = Pair::new("adam_update_matches_cpu") else {
        return;
    };
    let n = 10_007;
    for decoupled in [false, true] {
        for step in [1u32, 2, 1000] {
            let ap = AdamParams {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.05,
                decoupled,
                step,
            };
            let w = p.uniform(n, -1.0, 1.0);
            let g = p.uniform(n, -1.0, 1.0);
            let m = p.uniform(n, -0.1, 0.1);
            let v = p.uniform(n, 0.0, 0.01);
            let (mut wc, mut wg) = p.both(&w, &[n]);
            let (gc, gg) = p.both(&g, &[n]);
            let (mut mc, mut mg) = p.both(&m, &[n]);
            let (mut vc, mut vg) = p.both(&v, &[n]);
            unwrap(
                "adam_update",
                "cpu",
                p.cpu.adam_update(&mut wc, &gc, &mut mc, &mut vc, ap),
            );
            unwrap(
                "adam_update",
                "cuda",
                p.gpu.adam_update(&mut wg, &gg, &mut mg, &mut vg, ap),
            );
            let tag = |what: &str| format!("adam_update {what} decoupled {decoupled} step {step}");
            assert_close(&tag("param"), &wc, &wg, ELEMENTWISE);
            assert_close(&tag("m"), &mc, &mg, ELEMENTWISE);
            assert_close(&tag("v"), &vc, &vg, ELEMENTWISE);
        }
    }
}

// ---- Pool scoring -----------------------------------------------------------------------------

#[test]
fn score_pool_matches_cpu() {
    let Some(mut p) = Pair::new("score_pool_matches_cpu") else {
        return;
    };
    for (n, l, spread) in [
        (257usize, 10usize, 4.0f32),
        (5, 1, 2.0),
        (3, 40, 40.0),
        (64, 2, 0.01),
    ] {
        let (zc, zg) = p.random(&[n, l], -spread, spread);
        for multilabel in [false, true] {
            for uncertainty in [
                Uncertainty::LeastConfidence,
                Uncertainty::Margin,
                Uncertainty::Entropy,
            ] {
                for aggregate in [Aggregate::Mean, Aggregate::Max, Aggregate::Sum] {
                    let sp = ScoreParams {
                        uncertainty,
                        aggregate,
                        multilabel,
                    };
                    let sc = unwrap("score_pool", "cpu", p.cpu.score_pool(&zc, sp));
                    let sg = unwrap("score_pool", "cuda", p.gpu.score_pool(&zg, sp));
                    assert_close(
                        &format!("score_pool [{n}, {l}] {sp:?}"),
                        &sc,
                        &sg,
                        TRANSCENDENTAL,
                    );
                }
            }
        }
    }
}

#[test]
fn top_k_matches_cpu_with_ties() {
    let Some(mut p) = Pair::new("top_k_matches_cpu_with_ties") else {
        return;
    };
    // The kernel compares all pairs, O(n^2): the interpreter gets a smaller large case.
    let largest = if p.emulated { 2_049 } else { 70_001 };
    for n in [1usize, 10, 1000, largest] {
        // Few distinct values, so ties must go to the lower index.
        let data: Vec<f32> = p
            .uniform(n, 0.0, 1.0)
            .iter()
            .map(|v| (v * 20.0).floor())
            .collect();
        let (c, g) = p.both(&data, &[n]);
        for k in [0, 1, 10, n, n + 5] {
            let want = unwrap("top_k", "cpu", p.cpu.top_k(&c, k));
            let got = unwrap("top_k", "cuda", p.gpu.top_k(&g, k));
            assert_eq!(want, got, "top_k n {n} k {k}");
        }
    }
}

// ---- Throughput (GPU machines only, run with --ignored) ---------------------------------------

/// Times the three convolution kernels on every ResNet18 convolution shape at batch 128, at 64
/// and 224 px, and prints ms and TFLOP/s per layer: the data for tuning the tile sizes. Run by
/// `.ci/gpu-check.sh`; `--ignored` because it only measures.
#[test]
#[ignore = "measures; run on a GPU machine with --ignored"]
fn conv_throughput_resnet18_shapes() {
    let Some(mut p) = Pair::new("conv_throughput_resnet18_shapes") else {
        return;
    };
    p.gpu.set_poison(false);
    for px in [64usize, 224] {
        let s = px / 4; // after the stem's stride 2 and the max pool's stride 2
                        // (H in, Ci, Co, k, stride, padding) of each distinct convolution.
        let layers = [
            (px, 3, 64, 7, 2, 3),
            (s, 64, 64, 3, 1, 1),
            (s, 64, 128, 3, 2, 1),
            (s, 64, 128, 1, 2, 0),
            (s / 2, 128, 128, 3, 1, 1),
            (s / 2, 128, 256, 3, 2, 1),
            (s / 2, 128, 256, 1, 2, 0),
            (s / 4, 256, 256, 3, 1, 1),
            (s / 4, 256, 512, 3, 2, 1),
            (s / 4, 256, 512, 1, 2, 0),
            (s / 8, 512, 512, 3, 1, 1),
        ];
        for (h, ci, co, k, stride, padding) in layers {
            let cp = Conv2dParams { stride, padding };
            let (xs, ws) = (
                p.uniform(128 * h * h * ci, -1.0, 1.0),
                p.uniform(co * k * k * ci, -0.1, 0.1),
            );
            let x = p.gpu.from_host(&xs, &[128, h, h, ci]).unwrap();
            let w = p.gpu.from_host(&ws, &[co, k, k, ci]).unwrap();
            let y = p.gpu.conv2d_fwd(&x, &w, None, cp).unwrap();
            let flops = 2.0 * y.len() as f64 * (k * k * ci) as f64;
            let time = |f: &dyn Fn()| {
                f();
                p.gpu.synchronize().unwrap();
                let start = std::time::Instant::now();
                for _ in 0..5 {
                    f();
                }
                p.gpu.synchronize().unwrap();
                start.elapsed().as_secs_f64() / 5.0
            };
            let fwd = time(&|| drop(p.gpu.conv2d_fwd(&x, &w, None, cp).unwrap()));
            let data = time(&|| drop(p.gpu.conv2d_bwd_data(&y, &w, x.shape(), cp).unwrap()));
            let filter = time(&|| drop(p.gpu.conv2d_bwd_filter(&x, &y, w.shape(), cp).unwrap()));
            let tf = |t: f64| flops / t / 1e12;
            println!(
                "conv {px:>3}px x [128,{h},{h},{ci}] w [{co},{k},{k},{ci}] s{stride} p{padding}: \
                 fwd {:.3} ms {:.1} TF/s, data {:.3} ms {:.1} TF/s, filter {:.3} ms {:.1} TF/s",
                fwd * 1e3,
                tf(fwd),
                data * 1e3,
                tf(data),
                filter * 1e3,
                tf(filter)
            );
        }
    }
    println!("peak device memory: {} MiB", p.gpu.peak_bytes() >> 20);
}

// ---- Host side on a recording device (no GPU needed) ------------------------------------------

mod recording {
    //! A [`DeviceApi`] that keeps "device" memory on the host at fake addresses and records
    //! launches without executing them: it runs every line of the backend's host code (shape
    //! checks, launch plans, scratch buffers) and checks each launch's grid limits and that
    //! every pointer in its parameters lies in a live allocation.

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use labelwise::backend::cuda::device::{DevPtr, DeviceApi, LaunchDims};
    use labelwise::backend::cuda::kernels::{Kernel, ModuleImage};
    use labelwise::{Error, Result};

    /// Fake addresses live in [BASE, BASE + 2^40): no i32/f32 pair packs into that range by
    /// accident, so any 8-byte word of a parameter struct in it is a pointer.
    const BASE: u64 = 0x7a00_0000_0000;

    #[derive(Default)]
    pub struct RecordingDevice {
        memory: Mutex<BTreeMap<DevPtr, Vec<u8>>>,
        next: Mutex<u64>,
        pub launches: Mutex<Vec<&'static str>>,
    }

    impl RecordingDevice {
        /// Runs `f` on the allocation holding `[ptr, ptr + len)`.
        fn with<T>(&self, ptr: DevPtr, len: usize, f: impl FnOnce(&mut [u8]) -> T) -> Result<T> {
            let mut memory = self.memory.lock().unwrap();
            let (base, bytes) = memory
                .range_mut(..=ptr)
                .next_back()
                .ok_or_else(|| Error::Cuda(format!("{ptr:#x}: not allocated")))?;
            let start = (ptr - base) as usize;
            if start + len > bytes.len() {
                return Err(Error::Cuda(format!(
                    "{ptr:#x}+{len}: outside allocation {base:#x}"
                )));
            }
            Ok(f(&mut bytes[start..start + len]))
        }
    }

    impl DeviceApi for RecordingDevice {
        fn describe(&self) -> String {
            "recording device".into()
        }

        fn alloc(&self, bytes: usize) -> Result<DevPtr> {
            let mut next = self.next.lock().unwrap();
            let ptr = BASE + *next;
            *next += (bytes as u64).div_ceil(4096) * 4096 + 4096; // a gap between buffers
            self.memory.lock().unwrap().insert(ptr, vec![0; bytes]);
            Ok(ptr)
        }

        fn free(&self, ptr: DevPtr) -> Result<()> {
            let freed = self.memory.lock().unwrap().remove(&ptr);
            freed
                .map(drop)
                .ok_or_else(|| Error::Cuda(format!("free {ptr:#x}: not allocated")))
        }

        fn copy_h2d(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
            self.with(dst, src.len(), |d| d.copy_from_slice(src))
        }

        fn copy_d2h(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
            self.with(src, dst.len(), |s| dst.copy_from_slice(s))
        }

        fn fill_u32(&self, dst: DevPtr, value: u32, count: usize) -> Result<()> {
            self.with(dst, count * 4, |d| {
                d.chunks_exact_mut(4)
                    .for_each(|w| w.copy_from_slice(&value.to_ne_bytes()))
            })
        }

        fn load_module(&self, _module: &ModuleImage) -> Result<()> {
            Ok(())
        }

        fn load_kernel(&self, _kernel: &Kernel) -> Result<()> {
            Ok(())
        }

        unsafe fn launch(&self, kernel: &Kernel, dims: LaunchDims, params: &[u8]) -> Result<()> {
            let fail = |why: String| Err(Error::Cuda(format!("{}: {why}", kernel.name)));
            if params.len() != kernel.param_bytes {
                return fail(format!("{} parameter bytes", params.len()));
            }
            let [gx, gy, gz] = dims.grid;
            let threads: u32 = dims.block.iter().product();
            if gx == 0 || gy == 0 || gz == 0 || gx > i32::MAX as u32 || gy > 65_535 || gz > 65_535 {
                return fail(format!("grid {:?}", dims.grid));
            }
            if threads == 0 || threads > 1024 || dims.block[2] > 64 {
                return fail(format!("block {:?}", dims.block));
            }
            for word in params.chunks_exact(8) {
                let value = u64::from_ne_bytes(word.try_into().unwrap());
                if (BASE..BASE + (1 << 40)).contains(&value) {
                    self.with(value, 0, |_| ())
                        .or_else(|e| fail(e.to_string()))?;
                }
            }
            self.launches.lock().unwrap().push(kernel.name);
            Ok(())
        }

        fn synchronize(&self) -> Result<()> {
            Ok(())
        }
    }
}

#[test]
fn host_side_of_every_op_runs_on_a_recording_device() {
    if !kernels::BUILT_WITH_NVCC {
        eprintln!("SKIPPED host_side_of_every_op_runs_on_a_recording_device: built without nvcc");
        return;
    }
    let device = Arc::new(recording::RecordingDevice::default());
    let gpu = CudaBackend::with_device(device.clone()).unwrap();
    gpu.set_poison(true);
    let t = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        gpu.from_host(
            &(0..n).map(|i| (i % 7) as f32 * 0.1).collect::<Vec<_>>(),
            shape,
        )
        .unwrap()
    };

    // Elementwise, reductions and the optimiser.
    let (a, b) = (t(&[3, 5, 7]), t(&[3, 5, 7]));
    gpu.add(&a, &b).unwrap();
    gpu.scale(&a, 2.0).unwrap();
    gpu.relu_bwd(&b, &gpu.relu_fwd(&a).unwrap()).unwrap();
    let mut m = t(&[3, 5, 7]);
    gpu.add_assign(&mut m, &b).unwrap();
    gpu.lerp_assign(&mut m, &b, 1.0, 0.1).unwrap();
    assert_eq!(gpu.non_finite_count(&a).unwrap(), 0);
    gpu.channel_sum(&t(&[200_000, 3])).unwrap();
    let (mut w, g, mut m1, mut v1) = (t(&[101]), t(&[101]), t(&[101]), t(&[101]));
    gpu.adam_update(
        &mut w,
        &g,
        &mut m1,
        &mut v1,
        AdamParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: true,
            step: 1,
        },
    )
    .unwrap();

    // Convolutions (one with split backward-filter sums), batch norm, pooling.
    for (x_shape, w_shape, stride, padding) in [
        ([2, 32, 32, 3], [64, 7, 7, 3], 2, 3),
        ([8, 28, 28, 16], [24, 3, 3, 16], 1, 1),
        ([1, 7, 7, 512], [512, 3, 3, 512], 1, 1),
    ] {
        let cp = Conv2dParams { stride, padding };
        let (x, wt, bias) = (t(&x_shape), t(&w_shape), t(&[w_shape[0]]));
        let y = gpu.conv2d_fwd(&x, &wt, Some(&bias), cp).unwrap();
        gpu.conv2d_bwd_data(&y, &wt, &x_shape, cp).unwrap();
        gpu.conv2d_bwd_filter(&x, &y, &w_shape, cp).unwrap();
    }
    let bn = BatchNormParams { eps: 1e-5 };
    let (x, gamma, beta) = (t(&[8, 32, 32, 64]), t(&[64]), t(&[64]));
    let out = gpu.batch_norm_fwd_train(&x, &gamma, &beta, bn).unwrap();
    gpu.batch_norm_fwd_eval(&x, &gamma, &beta, &out.mean, &out.var, bn)
        .unwrap();
    gpu.batch_norm_bwd(&out.y, &x, &gamma, &out.mean, &out.var, bn)
        .unwrap();
    let pp = PoolParams {
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    let y = gpu.max_pool_fwd(&x, pp).unwrap();
    gpu.max_pool_bwd(&y, &x, &y, pp).unwrap();
    let pooled = gpu.avg_pool_global_fwd(&x).unwrap();
    gpu.avg_pool_global_bwd(&pooled, x.shape()).unwrap();

    // Head, losses, scoring.
    for multilabel in [false, true] {
        let cf = CosFaceParams {
            margin: 0.35,
            scale: 30.0,
            multilabel,
        };
        let (emb, weight, targets) = (t(&[130, 512]), t(&[10, 512]), t(&[130, 10]));
        let logits = gpu.cosface_fwd(&emb, &weight, Some(&targets), cf).unwrap();
        gpu.cosface_fwd(&emb, &weight, None, cf).unwrap();
        gpu.cosface_bwd(&logits, &emb, &weight, cf).unwrap();
        gpu.softmax_xent_fwd(&logits, &targets)
            .unwrap()
            .scalar()
            .unwrap();
        gpu.softmax_xent_bwd(&logits, &targets, 1.0).unwrap();
        gpu.sigmoid_xent_fwd(&logits, &targets)
            .unwrap()
            .scalar()
            .unwrap();
        gpu.sigmoid_xent_bwd(&logits, &targets, 1.0).unwrap();
        gpu.probabilities(&logits, multilabel).unwrap();
        let sp = ScoreParams {
            uncertainty: Uncertainty::Margin,
            aggregate: Aggregate::Max,
            multilabel,
        };
        let scores = gpu.score_pool(&logits, sp).unwrap();
        assert_eq!(gpu.top_k(&scores, 17).unwrap().len(), 17);
        assert_eq!(gpu.top_k(&scores, 1000).unwrap().len(), 130);
    }

    // Every kernel the Rust side lists is reachable from some trait method.
    let launched = device.launches.lock().unwrap().clone();
    for kernel in kernels::ALL {
        assert!(
            launched.contains(&kernel.name),
            "{} is never launched",
            kernel.name
        );
    }
    assert!(gpu.peak_bytes() > 0);
}

/// The PTX interpreter supports every opcode of every kernel build.rs compiled, so the whole
/// harness can run without a GPU.
#[test]
fn the_interpreter_supports_every_opcode_of_our_ptx() {
    if !labelwise::backend::cuda::KERNELS_BUILT {
        eprintln!("SKIPPED the_interpreter_supports_every_opcode_of_our_ptx: built without nvcc");
        return;
    }
    for (module, ptx) in labelwise::backend::cuda::kernels::PTX_MODULES {
        let missing = labelwise::ptx::unsupported_opcodes(ptx);
        assert!(
            missing.is_empty(),
            "{module}.cu uses opcodes the interpreter lacks: {missing:?}"
        );
    }
}
