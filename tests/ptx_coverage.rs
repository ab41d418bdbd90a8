//! Coverage tests: kernels from tests/ptx/coverage.cu that make nvcc emit wide instruction
//! variety (implicit GEMM, vectors, halves, doubles, 64-bit integers, stack arrays, CAS loops,
//! warp intrinsics, 3D indexing, libm), each against a host reference.

use labelwise::ptx::{Machine, Module};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const COVERAGE: &str = include_str!("ptx/coverage.ptx");

fn module() -> Module {
    Module::parse(COVERAGE).expect("coverage.ptx parses")
}

fn upload<T: bytemuck::Pod>(m: &Machine, v: &[T]) -> u64 {
    let a = m.alloc(std::mem::size_of_val(v) as u64);
    m.write(a, bytemuck::cast_slice(v)).unwrap();
    a
}

fn download<T: bytemuck::Pod + Default + Clone>(m: &Machine, a: u64, n: usize) -> Vec<T> {
    let mut v = vec![T::default(); n];
    m.read(a, bytemuck::cast_slice_mut(&mut v)).unwrap();
    v
}

fn args(a: &[u64], ints: &[i32]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = a.iter().map(|x| x.to_le_bytes().to_vec()).collect();
    out.extend(ints.iter().map(|x| x.to_le_bytes().to_vec()));
    out
}

fn launch(
    m: &Machine,
    module: &Module,
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    a: Vec<Vec<u8>>,
) {
    let refs: Vec<&[u8]> = a.iter().map(|v| v.as_slice()).collect();
    let params = module.kernel(name).unwrap().pack_params(&refs).unwrap();
    m.launch(module, name, grid, block, 0, &params).unwrap();
}

fn assert_close(got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan());
        assert!(
            ok,
            "element {i}: got {g}, want {w}, abs err {}",
            (g - w).abs()
        );
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvParams {
    x: u64,
    w: u64,
    y: u64,
    n: i32,
    h: i32,
    w_: i32,
    c_in: i32,
    c_out: i32,
    pad: i32,
}

#[test]
fn implicit_gemm_conv_matches_host() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(11);
    let (n, h, w, ci, co) = (2usize, 7usize, 5usize, 3usize, 20usize);
    let x: Vec<f32> = (0..n * h * w * ci)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let wt: Vec<f32> = (0..co * 9 * ci)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let (dx, dw) = (upload(&m, &x), upload(&m, &wt));
    let dy = upload(&m, &vec![f32::NAN; n * h * w * co]);
    let p = ConvParams {
        x: dx,
        w: dw,
        y: dy,
        n: n as i32,
        h: h as i32,
        w_: w as i32,
        c_in: ci as i32,
        c_out: co as i32,
        pad: 0,
    };
    let rows = n * h * w;
    let grid = [co.div_ceil(16) as u32, rows.div_ceil(16) as u32, 1];
    m.launch(
        &module,
        "conv3x3_fwd_f32",
        grid,
        [16, 16, 1],
        0,
        bytemuck::bytes_of(&p),
    )
    .unwrap();
    let mut want = vec![0f64; rows * co];
    for row in 0..rows {
        let (b, oy, ox) = (row / (h * w), (row % (h * w)) / w, row % w);
        for c in 0..co {
            let mut acc = 0f32;
            for k in 0..9 * ci {
                let (tap, cin) = (k / ci, k % ci);
                let (iy, ix) = (
                    oy as i64 + (tap / 3) as i64 - 1,
                    ox as i64 + (tap % 3) as i64 - 1,
                );
                let xv = if iy >= 0 && iy < h as i64 && ix >= 0 && ix < w as i64 {
                    x[((b * h + iy as usize) * w + ix as usize) * ci + cin]
                } else {
                    0.0
                };
                acc = xv.mul_add(wt[c * 9 * ci + k], acc);
            }
            want[row * co + c] = acc as f64;
        }
    }
    let got: Vec<f64> = download::<f32>(&m, dy, rows * co)
        .iter()
        .map(|&v| v as f64)
        .collect();
    assert_close(&got, &want, 1e-5, 1e-5);
}

#[test]
fn float4_vectors_and_half_conversions() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(12);
    let n4 = 70;
    let x: Vec<f32> = (0..4 * n4)
        .map(|_| rng.random_range(-70000.0..70000.0))
        .collect();
    let dx = upload(&m, &x);
    let dy = upload(&m, &vec![0f32; 4 * n4]);
    let (dh, db) = (upload(&m, &vec![0u16; n4]), upload(&m, &vec![0u16; n4]));
    let dback = upload(&m, &vec![0f32; n4]);
    launch(
        &m,
        &module,
        "vector_and_half",
        [2, 1, 1],
        [64, 1, 1],
        args(&[dx, dy, dh, db, dback], &[n4 as i32]),
    );
    let y: Vec<f32> = download(&m, dy, 4 * n4);
    let (h, b): (Vec<u16>, Vec<u16>) = (download(&m, dh, n4), download(&m, db, n4));
    let back: Vec<f32> = download(&m, dback, n4);
    for i in 0..n4 {
        let v = &x[4 * i..4 * i + 4];
        assert_eq!(&y[4 * i..4 * i + 4], &[v[3], v[2] * 2.0, v[1] + 1.0, -v[0]]);
        assert_eq!(h[i], half::f16::from_f32(v[0]).to_bits(), "f16 of {}", v[0]);
        assert_eq!(
            b[i],
            half::bf16::from_f32(v[1]).to_bits(),
            "bf16 of {}",
            v[1]
        );
        assert_eq!(back[i], half::f16::from_f32(v[0]).to_f32());
    }
}

#[test]
fn doubles_64_bit_integers_and_stack_arrays() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(13);
    let n = 300;
    let mut a: Vec<i64> = (0..n)
        .map(|_| rng.random::<i64>() >> rng.random_range(0..60))
        .collect();
    a[0] = 0;
    a[1] = i64::MIN;
    a[2] = -1;
    let d: Vec<f64> = (0..n).map(|_| rng.random_range(-1e3..1e3)).collect();
    let (da, dd) = (upload(&m, &a), upload(&m, &d));
    let (doi, dod) = (upload(&m, &vec![0i64; n]), upload(&m, &vec![0f64; n]));
    launch(
        &m,
        &module,
        "wide_types",
        [3, 1, 1],
        [128, 1, 1],
        args(&[da, dd, doi, dod], &[n as i32]),
    );
    let (oi, od): (Vec<i64>, Vec<f64>) = (download(&m, doi, n), download(&m, dod, n));
    for i in 0..n {
        let v = a[i];
        let u = v as u64;
        let hi = ((u as u128 * 0x9E37_79B9_7F4A_7C15u128) >> 64) as i64;
        let q = (v / 7)
            .wrapping_add(v % 7)
            .wrapping_add((u / 13) as i64)
            .wrapping_add(hi);
        let want_i = q
            .wrapping_add(v.wrapping_abs())
            .wrapping_add(v.max(-5))
            .wrapping_add((u.count_ones() + u.leading_zeros()) as i64);
        assert_eq!(oi[i], want_i, "integer element {i} (v = {v})");
        let x = d[i];
        let mut s = x.abs().sqrt() + x / 3.0 + x.mul_add(0.5, 1.0) + (x as i32) as f64 + x.floor();
        let j = ((i as i32).wrapping_mul(5).wrapping_add(u as i32) & 7) as usize;
        s += ((j * j) as f32 + x as f32) as f64;
        let want_d = s + (x as f32) as f64 + ((v & 0xffff) as u32) as f64;
        assert_close(&od[i..i + 1], &[want_d], 0.0, 1e-14);
    }
}

#[test]
fn cas_loops_and_integer_atomics() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(14);
    let n = 3000;
    let x: Vec<f32> = (0..n).map(|_| rng.random_range(-100.0..100.0)).collect();
    let dx = upload(&m, &x);
    let dfmax = upload(&m, &[f32::NEG_INFINITY]);
    let dimax = upload(&m, &[i32::MIN]);
    let dinc = upload(&m, &[0u32]);
    let dsum = upload(&m, &[0u64]);
    launch(
        &m,
        &module,
        "atomics_mix",
        [12, 1, 1],
        [256, 1, 1],
        args(&[dx, dfmax, dimax, dinc, dsum], &[n]),
    );
    let fmax = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(download::<f32>(&m, dfmax, 1)[0], fmax);
    assert_eq!(
        download::<i32>(&m, dimax, 1)[0],
        x.iter().map(|v| (v * 1000.0) as i32).max().unwrap()
    );
    assert_eq!(download::<u32>(&m, dinc, 1)[0], n as u32);
    assert_eq!(download::<u64>(&m, dsum, 1)[0], (0..n as u64).sum::<u64>());
}

#[test]
fn warp_intrinsics_match_their_definitions() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(15);
    let x: Vec<i32> = (0..64).map(|_| rng.random_range(0..100)).collect();
    let (dx, dout) = (upload(&m, &x), upload(&m, &[0i32; 64]));
    launch(
        &m,
        &module,
        "warp_intrinsics",
        [1, 1, 1],
        [64, 1, 1],
        args(&[dx, dout], &[]),
    );
    let out: Vec<i32> = download(&m, dout, 64);
    for w in 0..2 {
        let xs = &x[w * 32..w * 32 + 32];
        let odd = xs.iter().filter(|v| *v & 1 == 1).count() as i32;
        let sum: i32 = xs.iter().sum();
        let any = xs.iter().any(|&v| v > 90) as i32;
        for l in 0..32 {
            let v = xs[l];
            let mut r = if v & 1 == 1 { odd } else { 0 };
            r += sum;
            r += xs.iter().filter(|&&o| o & 3 == v & 3).count() as i32;
            r += if l % 8 + 2 <= 7 { xs[l + 2] } else { v };
            r += xs[l ^ 1];
            r += xs[(l / 8) * 8 + 3];
            r += any + 2;
            assert_eq!(out[w * 32 + l], r, "warp {w} lane {l}");
        }
    }
}

#[test]
fn three_dimensional_grid_and_block_indices() {
    let module = module();
    let m = Machine::default();
    let (grid, block) = ([3u32, 2, 2], [4u32, 3, 2]);
    let total = 12 * 24;
    let dout = upload(&m, &vec![-1i32; total]);
    launch(&m, &module, "index_3d", grid, block, args(&[dout], &[]));
    let out: Vec<i32> = download(&m, dout, total);
    let mut i = 0;
    for bz in 0..2 {
        for by in 0..2 {
            for bx in 0..3 {
                for tz in 0..2 {
                    for ty in 0..3 {
                        for tx in 0..4 {
                            let want =
                                (bx << 24) | (by << 16) | (bz << 12) | (tz << 8) | (ty << 4) | tx;
                            assert_eq!(out[i], want, "flat index {i}");
                            i += 1;
                        }
                    }
                }
            }
        }
    }
}

fn erf(x: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26 is too coarse; integrate the series instead (|x| < 6).
    let mut sum = 0f64;
    let mut term = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 * sum.abs().max(1e-300) && n < 200.0 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
    }
    (sum * 2.0 / std::f64::consts::PI.sqrt()).clamp(-1.0, 1.0)
}

#[test]
fn libm_sequences_match_host() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(16);
    let n = 400;
    let x: Vec<f32> = (0..n).map(|_| rng.random_range(-4.0..4.0)).collect();
    let (dx, dout) = (upload(&m, &x), upload(&m, &vec![0f32; 4 * n]));
    launch(
        &m,
        &module,
        "libm_mix",
        [2, 1, 1],
        [256, 1, 1],
        args(&[dx, dout], &[n as i32]),
    );
    let got: Vec<f64> = download::<f32>(&m, dout, 4 * n)
        .iter()
        .map(|&v| v as f64)
        .collect();
    let mut want = Vec::new();
    for &v in &x {
        let v = v as f64;
        want.push((v.abs() + 0.5).powf(1.7));
        want.push(erf(v) + v.abs().ln_1p());
        want.push((v % 1.3) + v.clamp(0.0, 1.0) + v / 3.0);
        want.push(v.exp() + (v * 0.5).exp2() + (v.abs() + 1.0).log2());
    }
    assert_close(&got, &want, 1e-5, 2e-6);
}

#[test]
fn every_opcode_of_the_coverage_kernels_is_supported() {
    assert_eq!(
        labelwise::ptx::unsupported_opcodes(COVERAGE),
        Vec::<String>::new()
    );
}

#[test]
fn barrier_reductions_and_device_printf() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(17);
    let x: Vec<f32> = (0..96).map(|_| rng.random_range(-60.0..60.0)).collect();
    let (dx, dout) = (upload(&m, &x), upload(&m, &[0i32; 96]));
    let params = module
        .kernel("barrier_reductions")
        .unwrap()
        .pack_params(&[&dx.to_le_bytes(), &dout.to_le_bytes()])
        .unwrap();
    let stats = m
        .launch(
            &module,
            "barrier_reductions",
            [1, 1, 1],
            [96, 1, 1],
            0,
            &params,
        )
        .unwrap();
    let count = x.iter().filter(|&&v| v > 0.0).count() as i32;
    let any = x.iter().any(|&v| v > 50.0) as i32;
    let want = count * 4 + 2 + any;
    assert!(download::<i32>(&m, dout, 96).iter().all(|&v| v == want));
    let line = format!("thread 3 of 96: count {count}, v={:.2} ok\n", x[3]);
    assert_eq!(stats.printf, vec![line]);
}

#[test]
fn out_of_line_device_functions_are_inlined() {
    let module = module();
    let m = Machine::default();
    let n = 200;
    let x: Vec<f32> = (0..n + 4).map(|i| (i % 13) as f32 * 0.25).collect();
    let (dx, dout) = (upload(&m, &x), upload(&m, &vec![f32::NAN; n]));
    launch(
        &m,
        &module,
        "calls_noinline",
        [2, 1, 1],
        [128, 1, 1],
        args(&[dx, dout], &[n as i32]),
    );
    let collatz = |mut v: i32| {
        let mut steps = 0;
        while v > 1 {
            if steps > 200 {
                return -1;
            }
            v = if v & 1 == 1 { 3 * v + 1 } else { v / 2 };
            steps += 1;
        }
        steps
    };
    let want: Vec<f32> = (0..n)
        .map(|i| {
            if i % 3 == 0 {
                let j = i & 3;
                x[i + j] * (0.5 + j as f32) + collatz(i as i32 + 1) as f32
            } else {
                collatz(i as i32 + 7) as f32
            }
        })
        .collect();
    assert_eq!(download::<f32>(&m, dout, n), want);
}

#[test]
fn u128_carry_chains_match_host() {
    let module = module();
    let m = Machine::default();
    let mut rng = StdRng::seed_from_u64(18);
    let n = 100;
    let mut a: Vec<u64> = (0..n).map(|_| rng.random()).collect();
    a[0] = u64::MAX;
    a[1] = u64::MAX;
    let (da, dout) = (upload(&m, &a), upload(&m, &vec![0u64; 2 * n]));
    launch(
        &m,
        &module,
        "wide_u128",
        [1, 1, 1],
        [128, 1, 1],
        args(&[da, dout], &[n as i32]),
    );
    let out: Vec<u64> = download(&m, dout, 2 * n);
    for i in 0..n {
        let mut x = (a[i] as u128)
            .wrapping_mul(a[(i + 1) % n] as u128)
            .wrapping_add(a[i] as u128);
        x = x.wrapping_add((a[i] as u128) << 64);
        x = x.wrapping_sub((a[(i + 2) % n] as u128) * 3);
        assert_eq!(
            (out[2 * i], out[2 * i + 1]),
            (x as u64, (x >> 64) as u64),
            "element {i}"
        );
    }
}
