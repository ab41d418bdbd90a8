//! Planted-bug tests: each kernel in tests/ptx/planted_bugs.cu hides one bug the interpreter
//! must report with its location.

use labelwise::ptx::{LaunchOptions, Machine, Module, PtxError};

const BUGS: &str = include_str!("ptx/planted_bugs.ptx");

fn setup(n: usize) -> (Module, Machine, u64, u64) {
    let module = Module::parse(BUGS).expect("planted_bugs.ptx parses");
    let m = Machine::default();
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let dx = m.alloc(4 * n as u64);
    m.write(dx, bytemuck::cast_slice(&x)).unwrap();
    let dy = m.alloc(4 * n as u64);
    (module, m, dx, dy)
}

fn params(module: &Module, kernel: &str, args: &[&[u8]]) -> Vec<u8> {
    module.kernel(kernel).unwrap().pack_params(args).unwrap()
}

#[test]
fn off_by_one_global_read_is_reported_with_its_location() {
    let n = 100usize;
    let (module, m, dx, dy) = setup(n);
    let p = params(
        &module,
        "scale_off_by_one",
        &[
            &dx.to_le_bytes(),
            &dy.to_le_bytes(),
            &(n as i32).to_le_bytes(),
        ],
    );
    let err = m
        .launch(&module, "scale_off_by_one", [1, 1, 1], [128, 1, 1], 0, &p)
        .unwrap_err();
    match &err {
        PtxError::GlobalOutOfBounds {
            site,
            address,
            size,
            access,
            note,
        } => {
            assert_eq!(*address, dx + 4 * n as u64);
            assert_eq!(*size, 4);
            assert_eq!(*access, "read");
            assert_eq!(site.kernel, "scale_off_by_one");
            assert_eq!(site.block, [0, 0, 0]);
            assert_eq!(site.thread, [100, 0, 0]);
            assert!(
                site.instruction.starts_with("ld.global"),
                "{}",
                site.instruction
            );
            assert!(note.contains("0 bytes past the end"), "{note}");
        }
        other => panic!("expected an out-of-bounds read, got {other}"),
    }
    assert!(err.to_string().contains("scale_off_by_one"));
}

#[test]
fn missing_barrier_is_a_shared_race() {
    let (module, m, dx, dy) = setup(256);
    let p = params(
        &module,
        "shift_missing_barrier",
        &[&dx.to_le_bytes(), &dy.to_le_bytes()],
    );
    let err = m
        .launch(
            &module,
            "shift_missing_barrier",
            [1, 1, 1],
            [64, 1, 1],
            0,
            &p,
        )
        .unwrap_err();
    match &err {
        PtxError::SharedRace {
            site,
            this_access,
            other_access,
            other_thread,
            ..
        } => {
            // Warp 0 ran first and read s[32], which lane 0 of warp 1 writes afterwards.
            assert_eq!(*this_access, "write");
            assert_eq!(*other_access, "read");
            assert_eq!(site.thread, [32, 0, 0]);
            assert_eq!(*other_thread, [31, 0, 0]);
            assert!(
                site.instruction.starts_with("st.shared"),
                "{}",
                site.instruction
            );
        }
        other => panic!("expected a shared race, got {other}"),
    }
}

#[test]
fn the_same_kernel_with_its_barrier_runs_clean() {
    let (module, m, dx, dy) = setup(256);
    let p = params(
        &module,
        "shift_with_barrier",
        &[&dx.to_le_bytes(), &dy.to_le_bytes()],
    );
    let opts = LaunchOptions {
        check_uninitialized_shared: true,
        ..LaunchOptions::default()
    };
    m.launch_with(
        &module,
        "shift_with_barrier",
        [2, 1, 1],
        [128, 1, 1],
        0,
        &p,
        &opts,
    )
    .unwrap();
    let mut y = vec![0f32; 256];
    m.read(dy, bytemuck::cast_slice_mut(&mut y)).unwrap();
    assert_eq!(y[0], 1.0);
    assert_eq!(y[127], 0.0);
    assert_eq!(y[128], 129.0);
}

#[test]
fn write_write_race_within_one_warp_instruction() {
    let (module, m, dx, dy) = setup(32);
    let p = params(
        &module,
        "last_writer_race",
        &[&dx.to_le_bytes(), &dy.to_le_bytes()],
    );
    let err = m
        .launch(&module, "last_writer_race", [1, 1, 1], [32, 1, 1], 0, &p)
        .unwrap_err();
    match &err {
        PtxError::SharedRace {
            site,
            this_access,
            other_access,
            other_thread,
            ..
        } => {
            assert_eq!((*this_access, *other_access), ("write", "write"));
            assert_eq!(site.thread, [1, 0, 0]);
            assert_eq!(*other_thread, [0, 0, 0]);
        }
        other => panic!("expected a write-write race, got {other}"),
    }
    // With the race check off the kernel runs (the last writer wins).
    let opts = LaunchOptions {
        check_shared_races: false,
        ..LaunchOptions::default()
    };
    m.launch_with(
        &module,
        "last_writer_race",
        [1, 1, 1],
        [32, 1, 1],
        0,
        &p,
        &opts,
    )
    .unwrap();
}

#[test]
fn shared_out_of_bounds_is_reported() {
    let (module, m, dx, dy) = setup(128);
    let p = params(
        &module,
        "tile_overflow",
        &[&dx.to_le_bytes(), &dy.to_le_bytes()],
    );
    let err = m
        .launch(&module, "tile_overflow", [1, 1, 1], [128, 1, 1], 0, &p)
        .unwrap_err();
    match &err {
        PtxError::SharedOutOfBounds {
            site,
            address,
            shared_size,
            ..
        } => {
            assert_eq!(*address, 256);
            assert_eq!(*shared_size, 256);
            assert_eq!(site.thread, [64, 0, 0]);
        }
        other => panic!("expected a shared out-of-bounds write, got {other}"),
    }
}

#[test]
fn unwritten_shared_read_is_reported_when_asked() {
    let (module, m, _dx, dy) = setup(64);
    let p = params(&module, "reads_unwritten_shared", &[&dy.to_le_bytes()]);
    m.launch(
        &module,
        "reads_unwritten_shared",
        [1, 1, 1],
        [64, 1, 1],
        0,
        &p,
    )
    .unwrap();
    let opts = LaunchOptions {
        check_uninitialized_shared: true,
        ..LaunchOptions::default()
    };
    let err = m
        .launch_with(
            &module,
            "reads_unwritten_shared",
            [1, 1, 1],
            [64, 1, 1],
            0,
            &p,
            &opts,
        )
        .unwrap_err();
    match &err {
        PtxError::UninitializedShared { site, address } => {
            assert_eq!(*address, 4);
            assert_eq!(site.thread, [0, 0, 0]);
        }
        other => panic!("expected an uninitialised shared read, got {other}"),
    }
}

#[test]
fn unknown_instruction_is_a_typed_error_naming_kernel_and_text() {
    let ptx = ".version 8.0\n.target sm_80\n.address_size 64\n\
               .visible .entry odd()\n{\n .reg .b32 %r<3>;\n frobnicate.b32 %r1, %r2;\n ret;\n}\n";
    let module = Module::parse(ptx).unwrap();
    assert_eq!(
        labelwise::ptx::unsupported_opcodes(ptx),
        vec!["frobnicate.b32".to_string()]
    );
    let err = Machine::default()
        .launch(&module, "odd", [1, 1, 1], [1, 1, 1], 0, &[])
        .unwrap_err();
    match err {
        PtxError::Unsupported {
            kernel,
            line,
            instruction,
            ..
        } => {
            assert_eq!(kernel, "odd");
            assert_eq!(line, 7);
            assert_eq!(instruction, "frobnicate.b32 %r1, %r2;");
        }
        other => panic!("expected Unsupported, got {other}"),
    }
}

#[test]
fn use_after_free_is_reported() {
    let (module, m, dx, dy) = setup(100);
    m.free(dx).unwrap();
    let p = params(
        &module,
        "scale_off_by_one",
        &[&dx.to_le_bytes(), &dy.to_le_bytes(), &99i32.to_le_bytes()],
    );
    let err = m
        .launch(&module, "scale_off_by_one", [1, 1, 1], [128, 1, 1], 0, &p)
        .unwrap_err();
    assert!(err.to_string().contains("freed allocation"), "{err}");
}

#[test]
fn failed_device_assert_is_reported_with_its_message() {
    let (module, m, dx, _dy) = setup(64);
    m.write(dx + 4 * 40, &(-1.0f32).to_le_bytes()).unwrap();
    let p = params(&module, "asserts_non_negative", &[&dx.to_le_bytes()]);
    let err = m
        .launch(
            &module,
            "asserts_non_negative",
            [1, 1, 1],
            [64, 1, 1],
            0,
            &p,
        )
        .unwrap_err();
    match &err {
        PtxError::Fault { site, detail } => {
            assert_eq!(site.thread, [40, 0, 0]);
            assert!(detail.contains("x[threadIdx.x] >= 0.0f"), "{detail}");
            assert!(detail.contains("planted_bugs.cu"), "{detail}");
        }
        other => panic!("expected a failed assertion, got {other}"),
    }
}

#[test]
fn warp_synchronous_code_without_syncwarp_is_flagged_in_strict_mode() {
    let (module, m, dx, dy) = setup(32);
    let strict = LaunchOptions {
        check_warp_sync: true,
        ..LaunchOptions::default()
    };
    for kernel in ["warp_reduce_no_syncwarp", "warp_reduce_syncwarp"] {
        let p = params(&module, kernel, &[&dx.to_le_bytes(), &dy.to_le_bytes()]);
        // The default treats the warp as lockstep: both versions run and sum 0 + 1 + ... + 31.
        m.launch(&module, kernel, [1, 1, 1], [32, 1, 1], 0, &p)
            .unwrap();
        let mut y = [0u8; 4];
        m.read(dy, &mut y).unwrap();
        assert_eq!(f32::from_le_bytes(y), 496.0, "{kernel}");
        let strict_result = m.launch_with(&module, kernel, [1, 1, 1], [32, 1, 1], 0, &p, &strict);
        if kernel == "warp_reduce_syncwarp" {
            strict_result.unwrap();
        } else {
            match strict_result.unwrap_err() {
                PtxError::SharedRace {
                    site, other_thread, ..
                } => {
                    assert_eq!(site.kernel, kernel);
                    assert_eq!(site.thread[0] / 32, other_thread[0] / 32, "same warp");
                }
                other => panic!("expected an intra-warp race, got {other}"),
            }
        }
    }
}

#[test]
fn truncated_or_corrupted_ptx_is_an_error_not_a_panic() {
    let text = include_str!("ptx/kernels.ptx");
    let bytes = text.as_bytes();
    for cut in (0..bytes.len()).step_by(bytes.len() / 300 + 1) {
        let Ok(prefix) = std::str::from_utf8(&bytes[..cut]) else {
            continue;
        };
        let _ = Module::parse(prefix);
        let _ = labelwise::ptx::unsupported_opcodes(prefix);
    }
    // Flip punctuation here and there.
    let mut state = 12345u64;
    for _ in 0..200 {
        let mut corrupted = bytes.to_vec();
        for _ in 0..5 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (state >> 33) as usize % corrupted.len();
            corrupted[i] = b"{}[];,%.@!|<>+-0"[(state >> 20) as usize % 16];
        }
        if let Ok(s) = std::str::from_utf8(&corrupted) {
            if let Ok(module) = Module::parse(s) {
                // Whatever decodes must also launch without panicking (errors are fine).
                let m = Machine::default();
                for name in module.kernel_names() {
                    let size = module.kernel(name).unwrap().param_size() as usize;
                    let opts = LaunchOptions {
                        max_warp_steps_per_block: Some(100_000),
                        ..LaunchOptions::default()
                    };
                    let _ = m.launch_with(
                        &module,
                        name,
                        [1, 1, 1],
                        [32, 1, 1],
                        64,
                        &vec![0; size],
                        &opts,
                    );
                }
            }
        }
    }
}
