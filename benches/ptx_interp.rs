//! Interpreter speed in thread-instructions per second, on the tiled matmul and the block
//! reduction from tests/ptx/kernels.cu. Run: `cargo bench --bench ptx_interp`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use labelwise::ptx::{LaunchOptions, Machine, Module};

const KERNELS: &str = include_str!("../tests/ptx/kernels.ptx");

fn upload(m: &Machine, v: &[f32]) -> u64 {
    let a = m.alloc(4 * v.len() as u64);
    m.write(a, bytemuck::cast_slice(v)).unwrap();
    a
}

/// CPU time this thread has run, from Linux's scheduler statistics (None elsewhere). The
/// machines that run this bench are shared, so per-CPU-second figures are the stable ones.
fn thread_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? * 1e-9)
}

fn bench_kernels(c: &mut Criterion) {
    let module = Module::parse(KERNELS).unwrap();
    let mut group = c.benchmark_group("ptx_interp");
    group.sample_size(10);

    for (label, options) in [
        ("checks_on", LaunchOptions::default()),
        (
            "checks_off",
            LaunchOptions {
                check_shared_races: false,
                ..LaunchOptions::default()
            },
        ),
        (
            "one_thread",
            LaunchOptions {
                parallel: false,
                ..LaunchOptions::default()
            },
        ),
    ] {
        let m = Machine::new(options);
        let n = 128usize;
        let a: Vec<f32> = (0..n * n).map(|i| (i % 17) as f32 * 0.25).collect();
        let (da, db, dc) = (upload(&m, &a), upload(&m, &a), upload(&m, &a));
        let kern = module.kernel("matmul_tiled_f32").unwrap();
        let nb = (n as i32).to_le_bytes();
        let params = kern
            .pack_params(&[
                &da.to_le_bytes(),
                &db.to_le_bytes(),
                &dc.to_le_bytes(),
                &nb,
                &nb,
                &nb,
            ])
            .unwrap();
        let grid = [(n / 16) as u32, (n / 16) as u32, 1];
        let launch = || {
            m.launch(&module, "matmul_tiled_f32", grid, [16, 16, 1], 0, &params)
                .unwrap()
        };
        let stats = launch();
        eprintln!(
            "matmul 128^3 {label}: {} thread-instructions, {:.1} M/s in one launch",
            stats.thread_instructions,
            stats.thread_instructions as f64 / stats.elapsed.as_secs_f64() / 1e6
        );
        if label == "one_thread" {
            if let Some(t0) = thread_cpu_seconds() {
                let reps = 10;
                for _ in 0..reps {
                    launch();
                }
                let cpu = thread_cpu_seconds().unwrap_or(t0) - t0;
                eprintln!(
                    "matmul 128^3 on one thread: {:.1} M thread-instructions per CPU-second",
                    (reps * stats.thread_instructions) as f64 / cpu / 1e6
                );
            }
        }
        group.throughput(Throughput::Elements(stats.thread_instructions));
        group.bench_function(format!("matmul_tiled_128_{label}"), |b| b.iter(launch));
    }

    let m = Machine::default();
    let n: usize = 1 << 18;
    let x: Vec<f32> = (0..n).map(|i| (i % 5) as f32).collect();
    let (dx, dout) = (upload(&m, &x), upload(&m, &[0.0]));
    let kern = module.kernel("block_sum_f32").unwrap();
    let params = kern
        .pack_params(&[
            &dx.to_le_bytes(),
            &dout.to_le_bytes(),
            &(n as i32).to_le_bytes(),
        ])
        .unwrap();
    let launch = || {
        m.launch(
            &module,
            "block_sum_f32",
            [64, 1, 1],
            [256, 1, 1],
            0,
            &params,
        )
        .unwrap()
    };
    let stats = launch();
    group.throughput(Throughput::Elements(stats.thread_instructions));
    group.bench_function("block_sum_256k", |b| b.iter(launch));
    group.finish();
}

criterion_group!(benches, bench_kernels);
criterion_main!(benches);
