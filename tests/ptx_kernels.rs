//! Positive tests of the PTX interpreter: nvcc-compiled kernels against host references.

use labelwise::ptx::{LaunchOptions, Machine, Module};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KERNELS: &str = include_str!("ptx/kernels.ptx");

fn module() -> Module {
    Module::parse(KERNELS).expect("kernels.ptx parses")
}

fn upload_f32(m: &Machine, v: &[f32]) -> u64 {
    let a = m.alloc(4 * v.len() as u64);
    m.write(a, bytemuck::cast_slice(v)).unwrap();
    a
}

fn upload_u32(m: &Machine, v: &[u32]) -> u64 {
    let a = m.alloc(4 * v.len() as u64);
    m.write(a, bytemuck::cast_slice(v)).unwrap();
    a
}

fn download_f32(m: &Machine, a: u64, n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    m.read(a, bytemuck::cast_slice_mut(&mut v)).unwrap();
    v
}

fn download_u32(m: &Machine, a: u64, n: usize) -> Vec<u32> {
    let mut v = vec![0u32; n];
    m.read(a, bytemuck::cast_slice_mut(&mut v)).unwrap();
    v
}

/// Poisoned output buffer, so unwritten elements show.
fn poisoned(m: &Machine, n: usize) -> u64 {
    upload_f32(m, &vec![f32::NAN; n])
}

fn random_f32(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// Absolute plus relative tolerance; prints the worst element on failure.
fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len());
    let mut worst = (0usize, 0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let excess = err - (atol + rtol * w.abs());
        let bad = excess.is_nan() || excess > 0.0;
        if bad && (excess.is_nan() || excess > worst.1 || worst.1 == 0.0) {
            worst = (
                i,
                if excess.is_nan() {
                    f32::INFINITY
                } else {
                    excess
                },
            );
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!(
            "element {i}: got {}, want {} (abs err {})",
            got[i],
            want[i],
            (got[i] - want[i]).abs()
        );
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AxpyParams {
    x: u64,
    y: u64,
    out: u64,
    n: u32,
    alpha: f32,
}

#[test]
fn axpy_with_struct_params_matches_host() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(1);
    let n = 1000;
    let (x, y) = (
        random_f32(&mut rng, n, -2.0, 2.0),
        random_f32(&mut rng, n, -2.0, 2.0),
    );
    let (dx, dy, dout) = (upload_f32(&m, &x), upload_f32(&m, &y), poisoned(&m, n));
    let p = AxpyParams {
        x: dx,
        y: dy,
        out: dout,
        n: n as u32,
        alpha: 1.5,
    };
    assert_eq!(
        module.kernel("axpy_fwd_f32").unwrap().param_size() as usize,
        size_of::<AxpyParams>()
    );
    let stats = m
        .launch(
            &module,
            "axpy_fwd_f32",
            [4, 1, 1],
            [256, 1, 1],
            0,
            bytemuck::bytes_of(&p),
        )
        .unwrap();
    assert!(stats.thread_instructions > 0);
    let want: Vec<f32> = x
        .iter()
        .zip(&y)
        .map(|(a, b)| 1.5f32.mul_add(*a, *b))
        .collect();
    assert_eq!(download_f32(&m, dout, n), want, "fma.rn must match exactly");
}

#[test]
fn block_sum_with_barriers_and_atomics() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(2);
    let n = 5000;
    let x = random_f32(&mut rng, n, 0.0, 1.0);
    let (dx, dout) = (upload_f32(&m, &x), upload_f32(&m, &[0.0]));
    let k = module.kernel("block_sum_f32").unwrap();
    let params = k
        .pack_params(&[
            &dx.to_le_bytes(),
            &dout.to_le_bytes(),
            &(n as i32).to_le_bytes(),
        ])
        .unwrap();
    m.launch(&module, "block_sum_f32", [7, 1, 1], [256, 1, 1], 0, &params)
        .unwrap();
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    let got = download_f32(&m, dout, 1)[0] as f64;
    assert!((got - want).abs() < 1e-3 * want, "got {got}, want {want}");
}

#[test]
fn log_softmax_with_warp_shuffles() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, cols) = (37, 203);
    let x = random_f32(&mut rng, rows * cols, -8.0, 8.0);
    let (dx, dy) = (upload_f32(&m, &x), poisoned(&m, rows * cols));
    let k = module.kernel("log_softmax_rows_f32").unwrap();
    let params = k
        .pack_params(&[
            &dx.to_le_bytes(),
            &dy.to_le_bytes(),
            &(rows as i32).to_le_bytes(),
            &(cols as i32).to_le_bytes(),
        ])
        .unwrap();
    // 4 warps per block, one row each; the last block has rows to spare.
    m.launch(
        &module,
        "log_softmax_rows_f32",
        [rows.div_ceil(4) as u32, 1, 1],
        [128, 1, 1],
        0,
        &params,
    )
    .unwrap();
    let mut want = vec![0f32; rows * cols];
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        let mx = xr.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let s: f64 = xr.iter().map(|&v| (v as f64 - mx).exp()).sum();
        for c in 0..cols {
            want[r * cols + c] = (xr[c] as f64 - mx - s.ln()) as f32;
        }
    }
    assert_close(&download_f32(&m, dy, rows * cols), &want, 1e-5, 1e-5);
}

#[test]
fn histogram_with_shared_and_global_atomics() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(4);
    let (n, bins): (usize, usize) = (20_000, 37);
    let v: Vec<u32> = (0..n).map(|_| rng.random()).collect();
    let (dv, dh) = (upload_u32(&m, &v), upload_u32(&m, &vec![0; bins]));
    let k = module.kernel("histogram_u32").unwrap();
    let params = k
        .pack_params(&[
            &dv.to_le_bytes(),
            &dh.to_le_bytes(),
            &(n as i32).to_le_bytes(),
            &(bins as i32).to_le_bytes(),
        ])
        .unwrap();
    let opts = LaunchOptions {
        check_uninitialized_shared: true,
        ..LaunchOptions::default()
    };
    m.launch_with(
        &module,
        "histogram_u32",
        [16, 1, 1],
        [128, 1, 1],
        4 * bins as u32,
        &params,
        &opts,
    )
    .unwrap();
    let mut want = vec![0u32; bins];
    for x in &v {
        want[(*x as usize) % bins] += 1;
    }
    assert_eq!(download_u32(&m, dh, bins), want);
}

fn matmul_host(a: &[f32], b: &[f32], mm: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0f32; mm * n];
    for i in 0..mm {
        for j in 0..n {
            let mut acc = 0f32;
            for t in 0..k {
                acc = a[i * k + t].mul_add(b[t * n + j], acc);
            }
            c[i * n + j] = acc;
        }
    }
    c
}

#[test]
fn tiled_matmul_matches_host_bit_for_bit() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(5);
    // Odd sizes exercise the edge tiles.
    let (mm, n, k): (usize, usize, usize) = (45, 33, 70);
    let (a, b) = (
        random_f32(&mut rng, mm * k, -1.0, 1.0),
        random_f32(&mut rng, k * n, -1.0, 1.0),
    );
    let (da, db, dc) = (upload_f32(&m, &a), upload_f32(&m, &b), poisoned(&m, mm * n));
    let kern = module.kernel("matmul_tiled_f32").unwrap();
    let params = kern
        .pack_params(&[
            &da.to_le_bytes(),
            &db.to_le_bytes(),
            &dc.to_le_bytes(),
            &(mm as i32).to_le_bytes(),
            &(n as i32).to_le_bytes(),
            &(k as i32).to_le_bytes(),
        ])
        .unwrap();
    let grid = [n.div_ceil(16) as u32, mm.div_ceil(16) as u32, 1];
    m.launch(&module, "matmul_tiled_f32", grid, [16, 16, 1], 0, &params)
        .unwrap();
    // Same fma order as the kernel (zero-padded tail adds exact zeros).
    assert_eq!(download_f32(&m, dc, mm * n), matmul_host(&a, &b, mm, n, k));
}

#[test]
fn divergent_branches_reconverge_for_ballot_and_shuffle() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(6);
    let n = 256;
    let x: Vec<i32> = (0..n).map(|_| rng.random_range(-50..200)).collect();
    let dx = upload_u32(&m, bytemuck::cast_slice(&x));
    let (dout, dballot) = (
        upload_u32(&m, &vec![0xdead; n]),
        upload_u32(&m, &vec![0xdead; n / 32]),
    );
    let k = module.kernel("divergent_paths").unwrap();
    let params = k
        .pack_params(&[
            &dx.to_le_bytes(),
            &dout.to_le_bytes(),
            &dballot.to_le_bytes(),
        ])
        .unwrap();
    m.launch(
        &module,
        "divergent_paths",
        [2, 1, 1],
        [128, 1, 1],
        0,
        &params,
    )
    .unwrap();
    let r: Vec<i32> = x
        .iter()
        .map(|&v| match v % 3 {
            0 => v * 2 + (0..(v & 7)).sum::<i32>(),
            1 => {
                let mut r = v;
                while r < 100 {
                    r = r * 2 + 7;
                }
                r
            }
            _ => v ^ 0x55,
        })
        .collect();
    let want_out: Vec<u32> = (0..n)
        .map(|t| (r[t] + if t % 32 != 0 { r[t - 1] } else { 0 }) as u32)
        .collect();
    let want_ballot: Vec<u32> = (0..n / 32)
        .map(|w| {
            (0..32)
                .filter(|l| r[w * 32 + l] > 50)
                .fold(0, |a, l| a | 1 << l)
        })
        .collect();
    assert_eq!(download_u32(&m, dout, n), want_out);
    assert_eq!(download_u32(&m, dballot, n / 32), want_ballot);
}

#[test]
fn math_mix_matches_host() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(7);
    let n = 500;
    let mut x = random_f32(&mut rng, n, -20.0, 20.0);
    x[0] = 0.0;
    x[1] = 2.5;
    x[2] = -2.5;
    x[3] = 1e-3;
    let (dx, dout) = (upload_f32(&m, &x), poisoned(&m, n));
    let k = module.kernel("math_mix").unwrap();
    let params = k
        .pack_params(&[
            &dx.to_le_bytes(),
            &dout.to_le_bytes(),
            &(n as i32).to_le_bytes(),
        ])
        .unwrap();
    m.launch(&module, "math_mix", [2, 1, 1], [256, 1, 1], 0, &params)
        .unwrap();
    let want: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let v64 = v as f64;
            let mut r = 0f64;
            r += v64.abs().sqrt() + 1.0 / (v64.abs() + 1.0).sqrt();
            r += (v64 * 0.1).exp() + (v64.abs() + 2.0).ln();
            r += (v64 * 0.25).tanh() + v64.sin() * v64.cos();
            r += ((v * 3.7) as i32) as f64
                + v64.round_ties_even()
                + v64.floor()
                + v64.ceil()
                + v64.trunc();
            r += ((v * 10.0).round_ties_even() as i32) as f64 / 10.0;
            r += v64 * 1.000001;
            r += v64.min(0.5) + v64.max(-0.5) + 1f64.copysign(v64);
            r += (v.to_bits().count_ones()
                + (i as u32 + 1).leading_zeros()
                + ((i as u32).reverse_bits() >> 20)) as f64;
            r += v64 / (v64.abs() + 3.0);
            r as f32
        })
        .collect();
    assert_close(&download_f32(&m, dout, n), &want, 2e-4, 2e-5);
}

#[test]
fn every_opcode_of_the_test_kernels_is_supported() {
    assert_eq!(
        labelwise::ptx::unsupported_opcodes(KERNELS),
        Vec::<String>::new()
    );
    assert!(module()
        .opcodes()
        .iter()
        .any(|o| o.starts_with("shfl.sync")));
}

#[test]
fn tracing_records_the_chosen_thread() {
    let module = module();
    let m = Machine::default();
    let n = 64;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let (dx, dy, dout) = (upload_f32(&m, &x), upload_f32(&m, &x), poisoned(&m, n));
    let p = AxpyParams {
        x: dx,
        y: dy,
        out: dout,
        n: n as u32,
        alpha: 2.0,
    };
    let opts = LaunchOptions {
        trace_thread: Some(([1, 0, 0], [3, 0, 0])),
        ..LaunchOptions::default()
    };
    let stats = m
        .launch_with(
            &module,
            "axpy_fwd_f32",
            [2, 1, 1],
            [32, 1, 1],
            0,
            bytemuck::bytes_of(&p),
            &opts,
        )
        .unwrap();
    // Thread 3 of block 1 is element 35: 2 * 35 + 35 = 105.
    let joined = stats.trace.join("\n");
    assert!(joined.contains("fma.rn.f32"), "{joined}");
    assert!(joined.contains("= 105 (0x42d20000)"), "{joined}");
    assert!(stats.trace.len() > 10);
}
