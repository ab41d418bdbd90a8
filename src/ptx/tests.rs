//! Unit tests of the interpreter on hand-written PTX: instruction semantics at their edges,
//! control flow, barriers with exited threads, and the launch-time checks.

use super::*;

const HEADER: &str = ".version 8.0\n.target sm_80\n.address_size 64\n";

/// Runs `body` as kernel `k(.param .u64 out)` with `threads` threads in one block and returns
/// the first `n` u32 words of `out`.
fn run_words(body: &str, threads: u32, n: usize) -> PtxResult<Vec<u32>> {
    run_words_with(
        body,
        [1, 1, 1],
        [threads, 1, 1],
        n,
        &LaunchOptions::default(),
    )
}

fn run_words_with(
    body: &str,
    grid: [u32; 3],
    block: [u32; 3],
    n: usize,
    opts: &LaunchOptions,
) -> PtxResult<Vec<u32>> {
    let ptx = format!("{HEADER}.visible .entry k(.param .u64 out)\n{{\n{body}\n}}\n");
    let module = Module::parse(&ptx)?;
    let m = Machine::default();
    let out = m.alloc(4 * n as u64);
    m.launch_with(&module, "k", grid, block, 0, &out.to_le_bytes(), opts)?;
    let mut bytes = vec![0u8; 4 * n];
    m.read(out, &mut bytes)?;
    Ok(bytes
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

/// Declarations and a prologue computing `%rd9 = out + 4 * tid` in every test body.
const PROLOGUE: &str = "
    .reg .pred %p<8>;
    .reg .b16 %rs<8>;
    .reg .b32 %r<40>;
    .reg .f32 %f<16>;
    .reg .b64 %rd<16>;
    .reg .f64 %fd<8>;
    ld.param.u64 %rd8, [out];
    mov.u32 %r39, %tid.x;
    mul.wide.u32 %rd10, %r39, 4;
    add.s64 %rd9, %rd8, %rd10;
";

/// Evaluates one instruction sequence in a single thread; each listed register is stored.
fn eval(code: &str, results: &[&str]) -> Vec<u32> {
    let mut body = String::from(PROLOGUE);
    body.push_str(code);
    for (i, r) in results.iter().enumerate() {
        body.push_str(&format!("    st.global.b32 [%rd8+{}], {r};\n", 4 * i));
    }
    body.push_str("    ret;\n");
    run_words(&body, 1, results.len()).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

#[test]
fn bit_manipulation_matches_the_isa() {
    let got = eval(
        "
    bfe.u32 %r1, 0xF0F0F0F0, 4, 8;
    bfe.s32 %r2, 0x00000F00, 8, 4;
    bfi.b32 %r3, 0xFF, 0x12345678, 8, 8;
    prmt.b32 %r4, 0x33221100, 0x77665544, 0x4321;
    prmt.b32 %r5, 0x00008000, 0, 0x0009;
    lop3.b32 %r6, 0xF0F0, 0xCCCC, 0xAAAA, 0x96;
    shf.l.wrap.b32 %r7, 0x80000001, 0x00000001, 4;
    shf.r.clamp.b32 %r8, 0x80000001, 0x00000001, 40;
    brev.b32 %r9, 1;
    clz.b32 %r10, 0x00010000;
    bfind.u32 %r11, 0x00010000;
    bfind.s32 %r12, -2;
    bfind.shiftamt.u32 %r13, 0x00010000;
    popc.b32 %r14, 0xF0F0F0F0;
    bfind.u32 %r15, 0;
    ",
        &[
            "%r1", "%r2", "%r3", "%r4", "%r5", "%r6", "%r7", "%r8", "%r9", "%r10", "%r11", "%r12",
            "%r13", "%r14", "%r15",
        ],
    );
    assert_eq!(got[0], 0x0F);
    assert_eq!(got[1], 0xFFFF_FFFF, "signed bfe sign-extends");
    assert_eq!(got[2], 0x1234_FF78);
    assert_eq!(got[3], 0x4433_2211);
    assert_eq!(got[4], 0x0000_00FF, "selector bit 3 replicates the sign");
    assert_eq!(got[5], 0xF0F0 ^ 0xCCCC ^ 0xAAAA);
    assert_eq!(got[6], 0x0000_0018);
    assert_eq!(
        got[7], 0x0000_0001,
        "clamped right funnel shift of 32 yields the high word"
    );
    assert_eq!(got[8], 0x8000_0000);
    assert_eq!(got[9], 15);
    assert_eq!(got[10], 16);
    assert_eq!(
        got[11], 0,
        "for negative values bfind finds the highest clear bit"
    );
    assert_eq!(got[12], 15);
    assert_eq!(got[13], 16);
    assert_eq!(got[14], 0xFFFF_FFFF);
}

#[test]
fn integer_arithmetic_edges() {
    let got = eval(
        "
    mul.hi.s32 %r1, -2, 0x40000000;
    mul.hi.u32 %r2, 0xFFFFFFFF, 0xFFFFFFFF;
    mul.wide.s32 %rd1, -3, 5;
    cvt.u32.u64 %r3, %rd1;
    shr.u64 %rd2, %rd1, 32;
    cvt.u32.u64 %r4, %rd2;
    add.sat.s32 %r5, 0x7FFFFFF0, 0x100;
    div.s32 %r6, -7, 2;
    rem.s32 %r7, -7, 2;
    shr.s32 %r8, -16, 40;
    shl.b32 %r9, 1, 32;
    min.s32 %r10, -1, 1;
    min.u32 %r11, -1, 1;
    abs.s32 %r12, -5;
    mad.lo.s32 %r13, 3, 4, 5;
    mul24.lo.u32 %r14, 0x01000003, 2;
    sad.u32 %r15, 3, 10, 100;
    ",
        &[
            "%r1", "%r2", "%r3", "%r4", "%r5", "%r6", "%r7", "%r8", "%r9", "%r10", "%r11", "%r12",
            "%r13", "%r14", "%r15",
        ],
    );
    assert_eq!(got[0] as i32, -1);
    assert_eq!(got[1], 0xFFFF_FFFE);
    assert_eq!((got[2], got[3]), ((-15i32) as u32, 0xFFFF_FFFF));
    assert_eq!(got[4], 0x7FFF_FFFF);
    assert_eq!(got[5] as i32, -3);
    assert_eq!(got[6] as i32, -1);
    assert_eq!(got[7], 0xFFFF_FFFF);
    assert_eq!(got[8], 0);
    assert_eq!(got[9] as i32, -1);
    assert_eq!(got[10], 1);
    assert_eq!(got[11], 5);
    assert_eq!(got[12], 17);
    assert_eq!(got[13], 6, "mul24 ignores the top byte");
    assert_eq!(got[14], 107);
}

#[test]
fn float_comparisons_min_max_and_conversions() {
    let nan = "0f7FC00000";
    let got = eval(
        &format!(
            "
    setp.lt.f32 %p1, {nan}, 1.0;
    selp.u32 %r1, 1, 0, %p1;
    setp.ltu.f32 %p2, {nan}, 1.0;
    selp.u32 %r2, 1, 0, %p2;
    setp.ne.f32 %p3, {nan}, 1.0;
    selp.u32 %r3, 1, 0, %p3;
    setp.nan.f32 %p4, {nan}, 1.0;
    selp.u32 %r4, 1, 0, %p4;
    min.f32 %f1, {nan}, 0f40000000;
    mov.b32 %r5, %f1;
    max.NaN.f32 %f2, {nan}, 0f40000000;
    mov.b32 %r6, %f2;
    min.f32 %f3, 0f80000000, 0f00000000;
    mov.b32 %r7, %f3;
    cvt.rzi.u8.f32 %r8, 0f43960000;
    cvt.rni.s32.f32 %r9, 0fC0200000;
    cvt.rzi.s32.f32 %r10, {nan};
    cvt.rmi.s32.f32 %r11, 0fBFC00000;
    cvt.rpi.s32.f32 %r12, 0f3FC00000;
    cvt.sat.f32.f32 %f4, 0f40000000;
    mov.b32 %r13, %f4;
    cvt.rn.f32.u32 %f5, 0xFFFFFFFF;
    mov.b32 %r14, %f5;
    cvt.rz.f32.u32 %f6, 0xFFFFFFFF;
    mov.b32 %r15, %f6;
    cvt.rzi.s32.f32 %r16, 0f7F800000;
    cvt.sat.s8.s32 %r17, 300;
    cvt.s32.s8 %r18, 0xF0;
    "
        ),
        &[
            "%r1", "%r2", "%r3", "%r4", "%r5", "%r6", "%r7", "%r8", "%r9", "%r10", "%r11", "%r12",
            "%r13", "%r14", "%r15", "%r16", "%r17", "%r18",
        ],
    );
    assert_eq!(
        &got[..4],
        &[0, 1, 0, 1],
        "ordered comparisons fail on NaN, unordered pass"
    );
    assert_eq!(
        f32::from_bits(got[4]),
        2.0,
        "min returns the non-NaN operand"
    );
    assert!(f32::from_bits(got[5]).is_nan(), "max.NaN propagates NaN");
    assert_eq!(got[6], 0x8000_0000, "min(-0, +0) is -0");
    assert_eq!(got[7], 255, "float to u8 saturates");
    assert_eq!(got[8] as i32, -2, "rni rounds half to even");
    assert_eq!(got[9], 0, "NaN converts to 0");
    assert_eq!(got[10] as i32, -2);
    assert_eq!(got[11], 2);
    assert_eq!(f32::from_bits(got[12]), 1.0);
    assert_eq!(f32::from_bits(got[13]), 4294967296.0);
    assert_eq!(
        f32::from_bits(got[14]),
        4294967040.0,
        "rz rounds toward zero"
    );
    assert_eq!(got[15], i32::MAX as u32);
    assert_eq!(got[16], 127);
    assert_eq!(got[17] as i32, -16);
}

#[test]
fn flush_to_zero_and_approximations() {
    let got = eval(
        "
    add.ftz.f32 %f1, 0f00000001, 0f00000000;
    mov.b32 %r1, %f1;
    add.f32 %f2, 0f00000001, 0f00000000;
    mov.b32 %r2, %f2;
    ex2.approx.f32 %f3, 0f40400000;
    mov.b32 %r3, %f3;
    lg2.approx.f32 %f4, 0f41000000;
    mov.b32 %r4, %f4;
    rsqrt.approx.f32 %f5, 0f40800000;
    mov.b32 %r5, %f5;
    sqrt.rn.f32 %f6, 0f40000000;
    mov.b32 %r6, %f6;
    rcp.rn.f32 %f7, 0f40400000;
    mov.b32 %r7, %f7;
    fma.rm.f32 %f8, 0f3F800000, 0f3F800001, 0f33800000;
    mov.b32 %r8, %f8;
    fma.rp.f32 %f9, 0f3F800000, 0f3F800001, 0f33800000;
    mov.b32 %r9, %f9;
    ",
        &[
            "%r1", "%r2", "%r3", "%r4", "%r5", "%r6", "%r7", "%r8", "%r9",
        ],
    );
    assert_eq!(got[0], 0, "ftz flushes subnormal inputs");
    assert_eq!(got[1], 1);
    assert_eq!(f32::from_bits(got[2]), 8.0);
    assert_eq!(f32::from_bits(got[3]), 3.0);
    assert_eq!(f32::from_bits(got[4]), 0.5);
    assert_eq!(f32::from_bits(got[5]), 2f32.sqrt());
    assert_eq!(f32::from_bits(got[6]), 1.0 / 3.0);
    // 1 * (1 + 2^-23) + 2^-24 lies halfway between two floats: rm and rp bracket it.
    assert_eq!(got[7], 0x3F80_0001);
    assert_eq!(got[8], 0x3F80_0002);
}

#[test]
fn divergent_exit_and_barrier_with_exited_threads() {
    // Odd threads exit early; even threads loop tid times, meet at a barrier and read a
    // neighbour's shared value. The barrier must open without the exited threads.
    let body = format!(
        "{PROLOGUE}
    .shared .align 4 .b32 s[64];
    and.b32 %r1, %r39, 1;
    setp.ne.u32 %p1, %r1, 0;
    @%p1 exit;
    mov.u32 %r2, 0;
    mov.u32 %r3, 0;
LOOP:
    add.u32 %r2, %r2, %r3;
    add.u32 %r3, %r3, 1;
    setp.lt.u32 %p2, %r3, %r39;
    @%p2 bra LOOP;
    shl.b32 %r4, %r39, 2;
    mov.u32 %r5, s;
    add.u32 %r6, %r5, %r4;
    st.shared.u32 [%r6], %r2;
    bar.sync 0;
    xor.b32 %r7, %r39, 2;
    shl.b32 %r8, %r7, 2;
    add.u32 %r9, %r5, %r8;
    ld.shared.u32 %r10, [%r9];
    st.global.u32 [%rd9], %r10;
    ret;
"
    );
    let got = run_words(&body, 64, 64).unwrap();
    for t in 0..64u32 {
        let want = if t % 2 == 1 {
            0
        } else {
            let n = t ^ 2;
            (0..n.max(1)).sum::<u32>()
        };
        assert_eq!(got[t as usize], want, "thread {t}");
    }
}

#[test]
fn shuffle_up_with_segments_and_predicate() {
    let body = format!(
        "{PROLOGUE}
    shfl.sync.up.b32 %r1|%p1, %r39, 2, 0x1800, -1;
    selp.u32 %r2, 1000, 0, %p1;
    add.u32 %r3, %r1, %r2;
    st.global.u32 [%rd9], %r3;
    ret;
"
    );
    let got = run_words(&body, 32, 32).unwrap();
    for l in 0..32u32 {
        let want = if l % 8 >= 2 { l - 2 + 1000 } else { l };
        assert_eq!(got[l as usize], want, "lane {l}");
    }
}

#[test]
fn shuffle_with_a_diverged_member_is_reported() {
    let body = format!(
        "{PROLOGUE}
    setp.lt.u32 %p1, %r39, 16;
    @%p1 bra SKIP;
    shfl.sync.bfly.b32 %r1, %r39, 1, 31, -1;
    st.global.u32 [%rd9], %r1;
SKIP:
    ret;
"
    );
    let err = run_words(&body, 32, 32).unwrap_err();
    assert!(matches!(err, PtxError::Fault { .. }), "{err}");
    assert!(err.to_string().contains("not converged"), "{err}");
}

#[test]
fn generic_shared_addresses_and_struct_params() {
    let ptx = format!(
        "{HEADER}.visible .entry k(.param .align 8 .b8 p[24])
{{
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;
    .shared .align 8 .b8 buf[256];
    ld.param.u64 %rd1, [p];
    ld.param.v2.u32 {{%r1, %r2}}, [p+8];
    ld.param.u32 %r7, [p+16];
    mov.u32 %r3, %tid.x;
    mov.u64 %rd2, buf;
    cvta.shared.u64 %rd3, %rd2;
    mul.wide.u32 %rd4, %r3, 4;
    add.s64 %rd5, %rd3, %rd4;
    mad.lo.s32 %r4, %r3, %r1, %r2;
    add.s32 %r4, %r4, %r7;
    st.u32 [%rd5], %r4;
    bar.sync 0;
    ld.u32 %r5, [%rd5];
    cvta.to.global.u64 %rd6, %rd1;
    add.s64 %rd7, %rd6, %rd4;
    st.global.u32 [%rd7], %r5;
    ret;
}}
"
    );
    let module = Module::parse(&ptx).unwrap();
    let m = Machine::default();
    let out = m.alloc(4 * 40);
    let mut params = out.to_le_bytes().to_vec();
    params.extend_from_slice(&3u32.to_le_bytes());
    params.extend_from_slice(&7u32.to_le_bytes());
    params.extend_from_slice(&100u32.to_le_bytes());
    params.extend_from_slice(&[0; 4]);
    m.launch(&module, "k", [1, 1, 1], [40, 1, 1], 0, &params)
        .unwrap();
    let mut bytes = vec![0u8; 160];
    m.read(out, &mut bytes).unwrap();
    for t in 0..40u32 {
        let v = u32::from_le_bytes(
            bytes[4 * t as usize..4 * t as usize + 4]
                .try_into()
                .unwrap(),
        );
        assert_eq!(v, 3 * t + 107);
    }
    let err = m
        .launch(&module, "k", [1, 1, 1], [40, 1, 1], 0, &params[..20])
        .unwrap_err();
    assert!(matches!(err, PtxError::BadLaunch { .. }), "{err}");
    let err = m
        .launch(&module, "k", [1, 1, 1], [2048, 1, 1], 0, &params)
        .unwrap_err();
    assert!(matches!(err, PtxError::BadLaunch { .. }), "{err}");
}

#[test]
fn misaligned_and_local_out_of_bounds_accesses_are_reported() {
    let misaligned = format!("{PROLOGUE}\n    st.global.u32 [%rd9+2], %r39;\n    ret;\n");
    let err = run_words(&misaligned, 1, 4).unwrap_err();
    assert!(matches!(err, PtxError::Misaligned { .. }), "{err}");

    let local = format!(
        "{PROLOGUE}
    .local .align 4 .b8 frame[16];
    mov.u64 %rd1, frame;
    st.local.u32 [%rd1+16], %r39;
    ret;
"
    );
    let err = run_words(&local, 1, 4).unwrap_err();
    assert!(
        matches!(err, PtxError::OtherOutOfBounds { space: "local", .. }),
        "{err}"
    );
}

#[test]
fn hung_kernel_hits_the_step_limit() {
    let body = format!("{PROLOGUE}\nSPIN:\n    bra.uni SPIN;\n");
    let opts = LaunchOptions {
        max_warp_steps_per_block: Some(10_000),
        ..LaunchOptions::default()
    };
    let err = run_words_with(&body, [1, 1, 1], [32, 1, 1], 1, &opts).unwrap_err();
    assert!(err.to_string().contains("step limit"), "{err}");
}

#[test]
fn device_functions_are_inlined_and_recursion_is_reported() {
    let func = ".func (.param .b32 r) f(.param .b32 a)\n{\n .reg .b32 %r<3>;\n \
                ld.param.b32 %r1, [a];\n add.s32 %r2, %r1, 1;\n st.param.b32 [r], %r2;\n ret;\n}\n";
    let body = |callee: &str| {
        format!(
            ".visible .entry k(.param .u64 out)\n{{\n .reg .b32 %r<3>;\n .reg .b64 %rd<2>;\n \
             ld.param.u64 %rd1, [out];\n mov.u32 %r1, 41;\n {{\n .param .b32 a0;\n \
             .param .b32 r0;\n st.param.b32 [a0], %r1;\n call.uni (r0), {callee}, (a0);\n \
             ld.param.b32 %r2, [r0];\n }}\n st.global.u32 [%rd1], %r2;\n ret;\n}}\n"
        )
    };
    let ptx = format!("{HEADER}{func}{}", body("f"));
    let module = Module::parse(&ptx).unwrap();
    let m = Machine::default();
    let out = m.alloc(4);
    m.launch(&module, "k", [1, 1, 1], [1, 1, 1], 0, &out.to_le_bytes())
        .unwrap();
    let mut b = [0u8; 4];
    m.read(out, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 42);

    let recursive = ".func (.param .b32 r) g(.param .b32 a)\n{\n .reg .b32 %r<3>;\n \
                     ld.param.b32 %r1, [a];\n {\n .param .b32 a1;\n .param .b32 r1;\n \
                     st.param.b32 [a1], %r1;\n call.uni (r1), g, (a1);\n \
                     ld.param.b32 %r2, [r1];\n }\n st.param.b32 [r], %r2;\n ret;\n}\n";
    let ptx = format!("{HEADER}{recursive}{}", body("g"));
    let module = Module::parse(&ptx).unwrap();
    match m
        .launch(&module, "k", [1, 1, 1], [1, 1, 1], 0, &out.to_le_bytes())
        .unwrap_err()
    {
        PtxError::Unsupported {
            instruction,
            detail,
            ..
        } => {
            assert!(instruction.starts_with("call.uni"), "{instruction}");
            assert!(detail.contains("`g`"), "{detail}");
        }
        other => panic!("expected Unsupported, got {other}"),
    }
}

#[test]
fn trace_shows_predicated_off_instructions() {
    let body = format!(
        "{PROLOGUE}
    setp.eq.u32 %p1, %r39, 5;
    @%p1 mov.u32 %r1, 77;
    @!%p1 mov.u32 %r1, 88;
    st.global.u32 [%rd9], %r1;
    ret;
"
    );
    let opts = LaunchOptions {
        trace_thread: Some(([0, 0, 0], [5, 0, 0])),
        ..LaunchOptions::default()
    };
    let ptx = format!("{HEADER}.visible .entry k(.param .u64 out)\n{{\n{body}\n}}\n");
    let module = Module::parse(&ptx).unwrap();
    let m = Machine::default();
    let out = m.alloc(4 * 8);
    let stats = m
        .launch_with(
            &module,
            "k",
            [1, 1, 1],
            [8, 1, 1],
            0,
            &out.to_le_bytes(),
            &opts,
        )
        .unwrap();
    let t = stats.trace.join("\n");
    assert!(t.contains("@%p1 mov.u32 %r1, 77;    -> %r1 = 0x4d"), "{t}");
    assert!(
        t.contains("@!%p1 mov.u32 %r1, 88;    (predicated off)"),
        "{t}"
    );
}

#[test]
fn host_memory_operations_and_module_globals() {
    let ptx = format!(
        "{HEADER}.global .align 4 .b8 table[8] = {{1, 2, 3, 4, 5, 6, 7, 8}};
.visible .entry k(.param .u64 out)
{{
    .reg .b32 %r<4>;
    .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [out];
    mov.u64 %rd2, table;
    ld.global.u32 %r1, [%rd2+4];
    st.global.u32 [%rd1], %r1;
    ret;
}}
"
    );
    let module = Module::parse(&ptx).unwrap();
    let m = Machine::default();
    let out = m.alloc(16);
    m.memset(out, 0xAB, 16).unwrap();
    m.launch(&module, "k", [1, 1, 1], [1, 1, 1], 0, &out.to_le_bytes())
        .unwrap();
    let mut b = [0u8; 8];
    m.read(out, &mut b).unwrap();
    assert_eq!(b, [5, 6, 7, 8, 0xAB, 0xAB, 0xAB, 0xAB]);

    // Like cuModuleGetGlobal + cuMemcpyHtoD: rewrite the table, launch again.
    let table = m.global_address(&module, "table").unwrap();
    m.write(table + 4, &[9, 9, 9, 9]).unwrap();
    m.launch(&module, "k", [1, 1, 1], [1, 1, 1], 0, &out.to_le_bytes())
        .unwrap();
    let other = m.alloc(16);
    m.copy(other, out, 16).unwrap();
    m.read(other, &mut b).unwrap();
    assert_eq!(&b[..4], &[9, 9, 9, 9]);

    assert!(
        m.write(out + 12, &[0; 8]).is_err(),
        "host writes are bounds-checked"
    );
    m.free(other).unwrap();
    assert!(m.free(other).is_err(), "double free is an error");
    let kernel = module.kernel("k").unwrap();
    assert!(
        kernel.pack_params(&[&[0u8; 4]]).is_err(),
        "argument sizes are checked"
    );
    assert_eq!(kernel.params()[0].size, 8);
}

#[test]
fn trace_spec_parses() {
    assert_eq!(
        super::machine::parse_trace_spec("1,2,0:3"),
        Some(([1, 2, 0], [3, 0, 0]))
    );
    assert_eq!(super::machine::parse_trace_spec("1:2:3"), None);
    assert_eq!(super::machine::parse_trace_spec("x:1"), None);
}

#[test]
fn line_info_names_the_cuda_source_in_faults() {
    let ptx = format!(
        "{HEADER}.visible .entry k(.param .u64 out)
{{
    .reg .b64 %rd<3>;
    .loc 1 7 3
    ld.param.u64 %rd1, [out];
    .loc 1 9 5
    st.global.u32 [%rd1+64], 1;
    ret;
}}
    .file 1 \"/home/dev/kernels/bug.cu\"
    .section .debug_str
    {{
$L__info_string0:
.b8 95,0
    }}
"
    );
    let module = Module::parse(&ptx).unwrap();
    let m = Machine::default();
    let out = m.alloc(16);
    let err = m
        .launch(&module, "k", [1, 1, 1], [1, 1, 1], 0, &out.to_le_bytes())
        .unwrap_err();
    match &err {
        PtxError::GlobalOutOfBounds { site, .. } => {
            assert_eq!(site.source.as_deref(), Some("bug.cu:9"));
        }
        other => panic!("expected an out-of-bounds write, got {other}"),
    }
    assert!(err.to_string().contains("(bug.cu:9)"), "{err}");
}

#[test]
fn a_warp_spinning_on_a_flag_lets_the_producer_warp_run() {
    // Warp 1 spins until warp 0 publishes a value through shared memory (volatile accesses,
    // no barrier): this needs warps to take turns. The race check is off, the spin is a race
    // by design.
    let body = format!(
        "{PROLOGUE}
    .shared .align 4 .b32 flag[1];
    setp.lt.u32 %p1, %r39, 32;
    @%p1 bra PRODUCER;
SPIN:
    ld.volatile.shared.u32 %r1, [flag];
    setp.eq.u32 %p2, %r1, 0;
    @%p2 bra SPIN;
    st.global.u32 [%rd9], %r1;
    ret;
PRODUCER:
    mov.u32 %r2, 0;
WORK:
    add.u32 %r2, %r2, 1;
    setp.lt.u32 %p3, %r2, 100000;
    @%p3 bra WORK;
    st.volatile.shared.u32 [flag], %r2;
    ret;
"
    );
    let opts = LaunchOptions {
        check_shared_races: false,
        ..LaunchOptions::default()
    };
    let got = run_words_with(&body, [1, 1, 1], [64, 1, 1], 64, &opts).unwrap();
    assert!(got[32..].iter().all(|&v| v == 100_000));
}

#[test]
fn warp_votes_reductions_and_lane_masks_in_a_partial_warp() {
    // 40 threads: warp 1 has lanes 0..8 only. Each thread writes 8 words.
    let body = format!(
        "{PROLOGUE}
    mul.wide.u32 %rd11, %r39, 32;
    add.s64 %rd12, %rd8, %rd11;
    and.b32 %r1, %r39, 3;
    activemask.b32 %r2;
    setp.lt.u32 %p1, %r1, 2;
    vote.sync.uni.pred %p2, %p1, %r2;
    selp.u32 %r3, 1, 0, %p2;
    match.all.sync.b32 %r4|%p3, %r1, %r2;
    selp.u32 %r5, 1, 0, %p3;
    redux.sync.max.u32 %r6, %r39, %r2;
    redux.sync.min.s32 %r7, %r39, %r2;
    redux.sync.xor.b32 %r8, %r39, %r2;
    mov.u32 %r9, %lanemask_lt;
    st.global.v4.u32 [%rd12], {{%r2, %r3, %r4, %r5}};
    st.global.v4.u32 [%rd12+16], {{%r6, %r7, %r8, %r9}};
    ret;
"
    );
    let got = run_words(&body, 40, 40 * 8).unwrap();
    for t in 0..40u32 {
        let w = &got[t as usize * 8..t as usize * 8 + 8];
        let (lo, hi) = if t < 32 { (0, 32) } else { (32, 40) };
        let active = if t < 32 { u32::MAX } else { 0xFF };
        assert_eq!(w[0], active, "activemask of thread {t}");
        assert_eq!(w[1], 0, "vote.uni: lanes disagree");
        assert_eq!((w[2], w[3]), (0, 0), "match.all: values differ");
        assert_eq!(w[4], hi - 1);
        assert_eq!(w[5], lo);
        assert_eq!(w[6], (lo..hi).fold(0, |a, v| a ^ v));
        assert_eq!(w[7], (1u32 << (t % 32)) - 1);
    }
}

#[test]
fn atomic_wraparounds_and_64_bit_compare_and_swap() {
    let body = format!(
        "{PROLOGUE}
    .shared .align 8 .b8 cells[16];
    setp.ne.u32 %p1, %r39, 0;
    @%p1 bra SKIP;
    mov.u32 %r20, cells;
    st.shared.u32 [%r20], 3;
    st.shared.u32 [%r20+4], 0;
    st.shared.u64 [%r20+8], 5;
    atom.shared.inc.u32 %r1, [%r20], 3;
    atom.shared.dec.u32 %r2, [%r20+4], 7;
    atom.shared.cas.b64 %rd1, [%r20+8], 5, 0x100000000;
    atom.shared.cas.b64 %rd2, [%r20+8], 5, 9;
    atom.shared.min.s32 %r3, [%r20], -4;
    ld.shared.u32 %r4, [%r20];
    ld.shared.u32 %r5, [%r20+4];
    ld.shared.u64 %rd3, [%r20+8];
    cvt.u32.u64 %r6, %rd1;
    shr.u64 %rd4, %rd3, 32;
    cvt.u32.u64 %r7, %rd4;
    cvt.u32.u64 %r8, %rd2;
    st.global.v4.u32 [%rd8], {{%r1, %r2, %r3, %r4}};
    st.global.v4.u32 [%rd8+16], {{%r5, %r6, %r7, %r8}};
SKIP:
    ret;
"
    );
    let got = run_words(&body, 32, 8).unwrap();
    // inc at the limit wraps to 0; dec of 0 wraps to the limit; the second cas fails.
    assert_eq!(&got[..4], &[3, 0, 0, (-4i32) as u32]);
    assert_eq!(&got[4..], &[7, 5, 1, 0]);
}

#[test]
fn machine_and_module_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Machine>();
    shareable::<Module>();
    shareable::<PtxError>();
}

#[test]
fn carry_chains_add_subtract_and_multiply_wide_numbers() {
    let got = eval(
        "
    add.cc.u32 %r1, 0xFFFFFFFF, 1;
    addc.u32 %r2, 5, 6;
    sub.cc.u32 %r3, 0, 1;
    subc.u32 %r4, 10, 3;
    mad.lo.cc.u32 %r5, 0x80000000, 2, 1;
    madc.hi.u32 %r6, 0x80000000, 2, 0;
    add.cc.u32 %r7, 1, 1;
    addc.cc.u32 %r8, 0xFFFFFFFF, 0;
    addc.u32 %r9, 0, 0;
    ",
        &[
            "%r1", "%r2", "%r3", "%r4", "%r5", "%r6", "%r7", "%r8", "%r9",
        ],
    );
    assert_eq!(
        &got[..2],
        &[0, 12],
        "carry out of the low word into the high word"
    );
    assert_eq!(&got[2..4], &[u32::MAX, 6], "borrow");
    assert_eq!(
        &got[4..6],
        &[1, 1],
        "lo(2^31 * 2) = 0 + 1, hi = 1 + no carry"
    );
    assert_eq!(&got[6..], &[2, u32::MAX, 0]);
}

#[test]
fn packed_half_arithmetic_and_conversions() {
    let got = eval(
        "
    cvt.rn.f16x2.f32 %r1, 0f40400000, 0f3F000000;
    cvt.rn.f16x2.f32 %r2, 0f3F800000, 0fC0000000;
    add.rn.f16x2 %r3, %r1, %r2;
    fma.rn.f16x2 %r4, %r1, %r2, %r1;
    mov.b32 {%rs1, %rs2}, %r3;
    cvt.f32.f16 %f1, %rs2;
    mov.b32 %r5, %f1;
    cvt.rn.bf16x2.f32 %r6, 0f3F800000, 0f40000000;
    ",
        &["%r1", "%r3", "%r4", "%r5", "%r6"],
    );
    let h = |v: f32| half::f16::from_f32(v).to_bits() as u32;
    assert_eq!(
        got[0],
        h(3.0) << 16 | h(0.5),
        "upper half from the first source"
    );
    assert_eq!(got[1], h(4.0) << 16 | h(-1.5));
    assert_eq!(got[2], h(6.0) << 16 | h(-0.5));
    assert_eq!(f32::from_bits(got[3]), 4.0);
    let b = |v: f32| half::bf16::from_f32(v).to_bits() as u32;
    assert_eq!(got[4], b(1.0) << 16 | b(2.0));
}

#[test]
fn poisoned_allocations_read_as_nan() {
    let m = Machine::new(LaunchOptions {
        poison_allocations: true,
        ..LaunchOptions::default()
    });
    let a = m.alloc(8);
    let mut b = [0u8; 8];
    m.read(a, &mut b).unwrap();
    assert!(f32::from_le_bytes(b[..4].try_into().unwrap()).is_nan());
    assert_eq!(i32::from_le_bytes(b[4..].try_into().unwrap()), -1);
    let z = Machine::default().alloc(8);
    assert_eq!(
        z, GLOBAL_BASE,
        "fresh machines hand out the same first address"
    );
}
