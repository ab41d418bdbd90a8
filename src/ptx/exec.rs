//! The block executor: runs the warps of one block in lockstep, with the memory checks.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use super::error::{FaultSite, PtxError, PtxResult};
use super::float::*;
use super::inst::*;
use super::machine::{
    LaunchOptions, Region, LOCAL_WINDOW, PARAM_WINDOW, SHARED_WINDOW, WINDOW_SIZE,
};
use super::module::Kernel;

/// Everything a launch shares between the blocks it runs.
pub(crate) struct LaunchCtx<'a> {
    pub kernel: &'a Kernel,
    /// Live allocations sorted by address.
    pub regions: &'a [Region],
    pub freed: &'a [(u64, u64)],
    pub globals: &'a [u64],
    pub params: &'a [u8],
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared: u32,
    pub shared_size: u32,
    pub options: &'a LaunchOptions,
    pub abort: &'a AtomicBool,
    /// Warp instructions and thread instructions, summed over workers.
    pub counters: &'a [AtomicU64; 2],
    pub trace: &'a Mutex<Vec<String>>,
    /// Lines written by device `printf`.
    pub printf: &'a Mutex<Vec<String>>,
}

/// One warp's state. Lanes in `active` are all at `cur`; `pc` is authoritative for the others.
#[derive(Default)]
struct Warp {
    /// Register file, `regs[register * 32 + lane]`.
    regs: Vec<u64>,
    pc: [u32; 32],
    cur: u32,
    active: u32,
    /// Lanes that exist and have not exited.
    live: u32,
    /// Lanes waiting at a block barrier.
    at_bar: u32,
    /// Local memory, `local_size` bytes per lane.
    local: Vec<u8>,
    /// Lanes waiting at a `bar.red`, and where their result goes.
    red_lanes: u32,
    red_dst: Operand,
    red_kind: Option<BarRed>,
}

/// Lanes of a mask, lowest first.
#[derive(Clone, Copy)]
struct Lanes(u32);

impl Iterator for Lanes {
    type Item = usize;
    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let l = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(l as usize)
    }
}

impl Warp {
    /// Moves the active lanes past a non-branching instruction and lets waiting lanes at the
    /// new pc join them (reconvergence).
    #[inline]
    fn advance(&mut self) {
        self.cur += 1;
        let waiting = self.live & !self.at_bar & !self.active;
        if waiting != 0 {
            for l in Lanes(waiting) {
                if self.pc[l] == self.cur {
                    self.active |= 1 << l;
                }
            }
        }
    }

    /// Picks the lowest pc among runnable lanes; lanes there become active.
    fn reschedule(&mut self) {
        let runnable = self.live & !self.at_bar;
        let mut min = u32::MAX;
        for l in Lanes(runnable) {
            min = min.min(self.pc[l]);
        }
        self.active = 0;
        for l in Lanes(runnable) {
            if self.pc[l] == min {
                self.active |= 1 << l;
            }
        }
        self.cur = min;
    }

    fn store_active_pc(&mut self) {
        for l in Lanes(self.active) {
            self.pc[l] = self.cur;
        }
    }
}

/// Shadow state of one shared byte for the race and initialisation checks.
#[derive(Clone, Copy, Default)]
struct Shadow {
    w_epoch: u32,
    w_step: u32,
    w_pc: u32,
    w_tid: u16,
    r_warp: u16,
    r_epoch: u32,
    r_pc: u32,
    r_tid: u16,
}

const MANY_WARPS: u16 = u16::MAX;

/// Executes blocks of one launch, one at a time; each worker thread owns one.
pub(crate) struct BlockExec<'a> {
    ctx: &'a LaunchCtx<'a>,
    nthreads: u32,
    nwarps: u32,
    block_idx: [u32; 3],
    shared: Vec<u8>,
    shadow: Vec<Shadow>,
    check_shadow: bool,
    /// Barrier epoch: increases at every barrier release and every block start.
    epoch: u32,
    block_epoch: u32,
    /// Warp steps in this block (the `%clock` value and the per-instruction stamp).
    step: u64,
    warps: Vec<Warp>,
    cur_warp: u32,
    region_hint: usize,
    warp_instrs: u64,
    thread_instrs: u64,
    trace: Option<(u32, u32)>,
    /// `bar.red` accumulators for the barrier now filling: true predicates, all, any.
    red_count: u32,
    red_all: bool,
    red_any: bool,
}

#[inline]
fn mask_of(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

#[inline]
fn sext(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        ((v << (64 - bits)) as i64) >> (64 - bits)
    }
}

#[inline]
fn f32v(x: u64) -> f32 {
    f32::from_bits(x as u32)
}

#[inline]
fn f32b(x: f32) -> u64 {
    x.to_bits() as u64
}

#[inline]
fn f64v(x: u64) -> f64 {
    f64::from_bits(x)
}

/// Reads a float of type `ty` as f64 (exact for f16, bf16 and f32).
fn float_in(x: u64, ty: Ty, ftz: bool) -> f64 {
    match ty {
        Ty::F16 => half::f16::from_bits(x as u16).to_f64(),
        Ty::Bf16 => half::bf16::from_bits(x as u16).to_f64(),
        Ty::F32 => {
            let v = f32v(x);
            (if ftz { ftz32(v) } else { v }) as f64
        }
        _ => f64v(x),
    }
}

fn sat01(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// Finishes an f32 result: saturation, then flush-to-zero.
#[inline]
fn fin32(r: f32, inst: &Inst) -> u64 {
    let mut r = r;
    if inst.sat {
        r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
    }
    if inst.ftz {
        r = ftz32(r);
    }
    f32b(r)
}

fn fmin32(a: f32, b: f32, nan: bool, max: bool) -> f32 {
    if a.is_nan() || b.is_nan() {
        if nan || (a.is_nan() && b.is_nan()) {
            return f32::from_bits(0x7fff_ffff);
        }
        return if a.is_nan() { b } else { a };
    }
    if a == 0.0 && b == 0.0 {
        // -0 orders below +0.
        let neg = a.is_sign_negative();
        return if neg != max { a } else { b };
    }
    if (a < b) != max {
        a
    } else {
        b
    }
}

fn fmin64(a: f64, b: f64, nan: bool, max: bool) -> f64 {
    if a.is_nan() || b.is_nan() {
        if nan || (a.is_nan() && b.is_nan()) {
            return f64::from_bits(0x7fff_ffff_ffff_ffff);
        }
        return if a.is_nan() { b } else { a };
    }
    if a == 0.0 && b == 0.0 {
        let neg = a.is_sign_negative();
        return if neg != max { a } else { b };
    }
    if (a < b) != max {
        a
    } else {
        b
    }
}

fn compare(cmp: Cmp, ty: Ty, a: u64, b: u64, ftz: bool) -> bool {
    if ty.is_float() {
        let (x, y) = (float_in(a, ty, ftz), float_in(b, ty, ftz));
        let unordered = x.is_nan() || y.is_nan();
        return match cmp {
            Cmp::Eq => !unordered && x == y,
            Cmp::Ne => !unordered && x != y,
            Cmp::Lt => !unordered && x < y,
            Cmp::Le => !unordered && x <= y,
            Cmp::Gt => !unordered && x > y,
            Cmp::Ge => !unordered && x >= y,
            Cmp::Equ => unordered || x == y,
            Cmp::Neu => unordered || x != y,
            Cmp::Ltu => unordered || x < y,
            Cmp::Leu => unordered || x <= y,
            Cmp::Gtu => unordered || x > y,
            Cmp::Geu => unordered || x >= y,
            Cmp::Num => !unordered,
            Cmp::Nan => unordered,
        };
    }
    let bits = ty.bits();
    let ord = if ty.is_signed() {
        sext(a, bits).cmp(&sext(b, bits))
    } else {
        (a & mask_of(bits)).cmp(&(b & mask_of(bits)))
    };
    use std::cmp::Ordering as O;
    match cmp {
        Cmp::Eq | Cmp::Equ => ord == O::Equal,
        Cmp::Ne | Cmp::Neu => ord != O::Equal,
        Cmp::Lt | Cmp::Ltu => ord == O::Less,
        Cmp::Le | Cmp::Leu => ord != O::Greater,
        Cmp::Gt | Cmp::Gtu => ord == O::Greater,
        Cmp::Ge | Cmp::Geu => ord != O::Less,
        Cmp::Num => true,
        Cmp::Nan => false,
    }
}

fn combine(op: Option<BoolOp>, r: bool, c: u64) -> bool {
    match op {
        None => r,
        Some(BoolOp::And) => r && c != 0,
        Some(BoolOp::Or) => r || c != 0,
        Some(BoolOp::Xor) => r != (c != 0),
    }
}

/// Integer result of `cvt` from a float: round as asked, saturate to the type, NaN to 0.
fn float_to_int(v: f64, rnd: Rnd, ty: Ty) -> u64 {
    let r = round_integral(v, rnd);
    let bits = ty.bits();
    if ty.is_signed() {
        let (lo, hi) = (
            -(2f64.powi(bits as i32 - 1)),
            2f64.powi(bits as i32 - 1) - 1.0,
        );
        let x = if r.is_nan() { 0.0 } else { r.clamp(lo, hi) };
        (x as i64 as u64) & mask_of(bits)
    } else {
        let hi = 2f64.powi(bits as i32) - 1.0;
        let x = if r.is_nan() { 0.0 } else { r.clamp(0.0, hi) };
        if bits == 64 {
            x as u64
        } else {
            (x as u64) & mask_of(bits)
        }
    }
}

/// Float result of `cvt` as raw bits of `dst`, from the exact value `s + t`.
fn float_out(s: f64, t: f64, inst: &Inst) -> u64 {
    let rnd = inst.rnd;
    let mut s = s;
    if inst.sat {
        s = sat01(s);
    }
    match inst.ty {
        Ty::F32 => {
            let r = if matches!(rnd, Rnd::Rni | Rnd::Rzi | Rnd::Rmi | Rnd::Rpi) {
                round_integral(s, rnd) as f32
            } else {
                round_f32(s, t, rnd)
            };
            f32b(if inst.ftz { ftz32(r) } else { r })
        }
        Ty::F64 => {
            if matches!(rnd, Rnd::Rni | Rnd::Rzi | Rnd::Rmi | Rnd::Rpi) {
                round_integral(s, rnd).to_bits()
            } else {
                round_f64(s, t, rnd).to_bits()
            }
        }
        Ty::F16 => {
            let v = if matches!(rnd, Rnd::Rni | Rnd::Rzi | Rnd::Rmi | Rnd::Rpi) {
                round_integral(s, rnd)
            } else {
                s
            };
            half::f16::from_f64(v).to_bits() as u64
        }
        _ => half::bf16::from_f64(s).to_bits() as u64,
    }
}

fn cvt(inst: &Inst, a: u64) -> u64 {
    let (dt, st) = (inst.ty, inst.ty2);
    if st.is_float() {
        let v = float_in(a, st, inst.ftz);
        if dt.is_float() {
            return float_out(v, 0.0, inst);
        }
        return float_to_int(v, inst.rnd, dt);
    }
    let bits = st.bits();
    let v: i128 = if st.is_signed() {
        sext(a, bits) as i128
    } else {
        (a & mask_of(bits)) as i128
    };
    if dt.is_float() {
        let s = v as f64;
        let t = if s.is_finite() {
            (v - s as i128) as f64
        } else {
            0.0
        };
        return float_out(s, t, inst);
    }
    let db = dt.bits();
    let v = if inst.sat {
        let (lo, hi) = if dt.is_signed() {
            (-(1i128 << (db - 1)), (1i128 << (db - 1)) - 1)
        } else {
            (0, (1i128 << db) - 1)
        };
        v.clamp(lo, hi)
    } else {
        v
    };
    (v as u64) & mask_of(db)
}

fn bfe(a: u64, pos: u64, len: u64, ty: Ty) -> u64 {
    let msb = ty.bits() as u64 - 1;
    let (pos, len) = (pos & 0xff, len & 0xff);
    let sbit = if ty.is_signed() && len > 0 {
        (a >> (pos + len - 1).min(msb)) & 1
    } else {
        0
    };
    let mut d = 0u64;
    for i in 0..=msb {
        let bit = if i < len && pos + i <= msb {
            (a >> (pos + i)) & 1
        } else {
            sbit
        };
        d |= bit << i;
    }
    d
}

fn bfi(a: u64, b: u64, pos: u64, len: u64, ty: Ty) -> u64 {
    let msb = ty.bits() as u64 - 1;
    let (pos, len) = (pos & 0xff, len & 0xff);
    let mut f = b;
    let mut i = 0;
    while i < len && pos + i <= msb {
        f = (f & !(1 << (pos + i))) | (((a >> i) & 1) << (pos + i));
        i += 1;
    }
    f & mask_of(ty.bits())
}

fn prmt(a: u64, b: u64, c: u64) -> u64 {
    let bytes = (a & 0xffff_ffff) | ((b & 0xffff_ffff) << 32);
    let mut d = 0u64;
    for i in 0..4 {
        let sel = (c >> (4 * i)) & 0xf;
        let mut byte = (bytes >> (8 * (sel & 7))) & 0xff;
        if sel & 8 != 0 {
            byte = if byte & 0x80 != 0 { 0xff } else { 0 };
        }
        d |= byte << (8 * i);
    }
    d
}

fn lop3(a: u64, b: u64, c: u64, lut: u64) -> u64 {
    let mut r = 0u64;
    for i in 0..8 {
        if (lut >> i) & 1 != 0 {
            let x = if i & 4 != 0 { a } else { !a };
            let y = if i & 2 != 0 { b } else { !b };
            let z = if i & 1 != 0 { c } else { !c };
            r |= x & y & z;
        }
    }
    r & 0xffff_ffff
}

/// Pure per-lane semantics of every instruction with one destination register and no
/// memory or cross-lane effects.
fn alu(inst: &Inst, s: [u64; 4]) -> u64 {
    let ty = inst.ty;
    let bits = ty.bits();
    let m = mask_of(bits);
    let [a, b, c, d] = s;
    let f32in = |x: u64| if inst.ftz { ftz32(f32v(x)) } else { f32v(x) };
    let signed = ty.is_signed();
    match inst.op {
        Op::Mov => {
            if ty == Ty::Pred {
                (a != 0) as u64
            } else {
                a & m
            }
        }
        Op::Add | Op::Sub => {
            let sub = inst.op == Op::Sub;
            match ty {
                Ty::F32 => {
                    let (x, y) = (f32in(a), f32in(b));
                    fin32(add32(x, if sub { -y } else { y }, inst.rnd), inst)
                }
                Ty::F64 => add64(f64v(a), if sub { -f64v(b) } else { f64v(b) }, inst.rnd).to_bits(),
                Ty::F16 | Ty::Bf16 => {
                    let (x, y) = (float_in(a, ty, false), float_in(b, ty, false));
                    let mut i2 = inst.clone();
                    i2.ty = ty;
                    float_out(if sub { x - y } else { x + y }, 0.0, &i2)
                }
                _ if inst.sat && ty == Ty::S32 => {
                    let (x, y) = (sext(a, 32), sext(b, 32));
                    let r = if sub { x - y } else { x + y };
                    (r.clamp(i32::MIN as i64, i32::MAX as i64) as u64) & m
                }
                _ => {
                    (if sub {
                        a.wrapping_sub(b)
                    } else {
                        a.wrapping_add(b)
                    }) & m
                }
            }
        }
        Op::Mul(mode) | Op::Mad(mode) => {
            let mad = matches!(inst.op, Op::Mad(_));
            match ty {
                Ty::F32 => fin32(mul32(f32in(a), f32in(b), inst.rnd), inst),
                Ty::F64 => mul64(f64v(a), f64v(b), inst.rnd).to_bits(),
                Ty::F16 | Ty::Bf16 => {
                    let mut i2 = inst.clone();
                    i2.ty = ty;
                    float_out(float_in(a, ty, false) * float_in(b, ty, false), 0.0, &i2)
                }
                _ => {
                    let (x, y): (i128, i128) = if signed {
                        (sext(a, bits) as i128, sext(b, bits) as i128)
                    } else {
                        ((a & m) as i128, (b & m) as i128)
                    };
                    let p = x.wrapping_mul(y);
                    match mode {
                        MulMode::Lo => {
                            let r = p as u64;
                            (if mad { r.wrapping_add(c) } else { r }) & m
                        }
                        MulMode::Hi => {
                            let r = (p >> bits) as u64;
                            (if mad { r.wrapping_add(c) } else { r }) & m
                        }
                        MulMode::Wide => {
                            let wm = mask_of(bits * 2);
                            let r = p as u64;
                            (if mad { r.wrapping_add(c) } else { r }) & wm
                        }
                    }
                }
            }
        }
        Op::Mul24(mode) | Op::Mad24(mode) => {
            let (x, y) = if signed {
                (sext(a, 24) as i128, sext(b, 24) as i128)
            } else {
                ((a & 0xff_ffff) as i128, (b & 0xff_ffff) as i128)
            };
            let p = x * y;
            let r = if mode == MulMode::Hi {
                (p >> 16) as u64
            } else {
                p as u64
            };
            let r = if matches!(inst.op, Op::Mad24(_)) {
                r.wrapping_add(c)
            } else {
                r
            };
            r & 0xffff_ffff
        }
        Op::Sad => {
            let diff = if signed {
                (sext(a, bits) - sext(b, bits)).unsigned_abs()
            } else {
                (a & m).abs_diff(b & m)
            };
            diff.wrapping_add(c) & m
        }
        Op::Fma => match ty {
            Ty::F32 => fin32(fma32(f32in(a), f32in(b), f32in(c), inst.rnd), inst),
            Ty::F64 => f64v(a).mul_add(f64v(b), f64v(c)).to_bits(),
            _ => {
                let mut i2 = inst.clone();
                i2.ty = ty;
                let (x, y, z) = (
                    float_in(a, ty, false),
                    float_in(b, ty, false),
                    float_in(c, ty, false),
                );
                float_out(x.mul_add(y, z), 0.0, &i2)
            }
        },
        Op::Div => match ty {
            Ty::F32 => {
                let (x, y) = (f32in(a), f32in(b));
                if matches!(inst.rnd, Rnd::None | Rnd::Rn) {
                    fin32(x / y, inst)
                } else {
                    let q = x as f64 / y as f64;
                    let res = (-q).mul_add(y as f64, x as f64);
                    fin32(round_f32(q, res / y as f64, inst.rnd), inst)
                }
            }
            Ty::F64 => {
                let (x, y) = (f64v(a), f64v(b));
                let q = x / y;
                if matches!(inst.rnd, Rnd::None | Rnd::Rn) || !q.is_finite() {
                    q.to_bits()
                } else {
                    let res = (-q).mul_add(y, x);
                    round_f64(q, res / y, inst.rnd).to_bits()
                }
            }
            _ => {
                if b & m == 0 {
                    m
                } else if signed {
                    (sext(a, bits).wrapping_div(sext(b, bits)) as u64) & m
                } else {
                    ((a & m) / (b & m)) & m
                }
            }
        },
        Op::Rem => {
            if b & m == 0 {
                a & m
            } else if signed {
                (sext(a, bits).wrapping_rem(sext(b, bits)) as u64) & m
            } else {
                ((a & m) % (b & m)) & m
            }
        }
        Op::Abs => match ty {
            Ty::F32 => fin32(f32in(a).abs(), inst),
            Ty::F64 => f64v(a).abs().to_bits(),
            Ty::F16 | Ty::Bf16 => a & 0x7fff,
            _ => (sext(a, bits).wrapping_abs() as u64) & m,
        },
        Op::Neg => match ty {
            Ty::F32 => fin32(-f32in(a), inst),
            Ty::F64 => (-f64v(a)).to_bits(),
            Ty::F16 | Ty::Bf16 => (a ^ 0x8000) & 0xffff,
            _ => (a.wrapping_neg()) & m,
        },
        Op::Min | Op::Max => {
            let max = inst.op == Op::Max;
            match ty {
                Ty::F32 => fin32(fmin32(f32in(a), f32in(b), inst.nan, max), inst),
                Ty::F64 => fmin64(f64v(a), f64v(b), inst.nan, max).to_bits(),
                Ty::F16 | Ty::Bf16 => {
                    let (x, y) = (float_in(a, ty, false), float_in(b, ty, false));
                    let r = fmin64(x, y, inst.nan, max);
                    if r == x && !(r == 0.0 && x.is_sign_negative() != r.is_sign_negative()) {
                        a & 0xffff
                    } else {
                        b & 0xffff
                    }
                }
                _ if signed => {
                    let (x, y) = (sext(a, bits), sext(b, bits));
                    (if max { x.max(y) } else { x.min(y) } as u64) & m
                }
                _ => {
                    let (x, y) = (a & m, b & m);
                    if max {
                        x.max(y)
                    } else {
                        x.min(y)
                    }
                }
            }
        }
        Op::Copysign => match ty {
            Ty::F64 => f64v(b).copysign(f64v(a)).to_bits(),
            _ => f32b(f32v(b).copysign(f32v(a))),
        },
        Op::And => a & b & m,
        Op::Or => (a | b) & m,
        Op::Xor => (a ^ b) & m,
        Op::Not => !a & m,
        Op::Cnot => ((a & m) == 0) as u64,
        Op::Shl => {
            let n = b & 0xffff_ffff;
            if n >= bits as u64 {
                0
            } else {
                (a << n) & m
            }
        }
        Op::Shr => {
            let n = (b & 0xffff_ffff).min(bits as u64);
            if signed {
                ((sext(a, bits) >> n.min(bits as u64 - 1)) as u64) & m
            } else if n >= bits as u64 {
                0
            } else {
                ((a & m) >> n) & m
            }
        }
        Op::Bfe => bfe(a, b, c, ty) & m,
        Op::Bfi => bfi(a, b, c, d, ty),
        Op::Popc => (a & m).count_ones() as u64,
        Op::Clz => ((a & m).leading_zeros() - (64 - bits)) as u64,
        Op::Brev => (a & m).reverse_bits() >> (64 - bits),
        Op::Bfind { shiftamt } => {
            let x = a & m;
            let x = if signed && sext(x, bits) < 0 {
                !x & m
            } else {
                x
            };
            if x == 0 {
                0xffff_ffff
            } else {
                let pos = 63 - x.leading_zeros() as u64;
                if shiftamt {
                    bits as u64 - 1 - pos
                } else {
                    pos
                }
            }
        }
        Op::Prmt => prmt(a, b, c),
        Op::Lop3 => lop3(a, b, c, d),
        Op::Shf { left, clamp } => {
            let n = if clamp {
                (c & 0xffff_ffff).min(32)
            } else {
                c & 31
            };
            let wide = (a & 0xffff_ffff) | ((b & 0xffff_ffff) << 32);
            if left {
                ((wide << n) >> 32) & 0xffff_ffff
            } else {
                (wide >> n) & 0xffff_ffff
            }
        }
        Op::Set { cmp, combine: comb } => {
            let r = combine(comb, compare(cmp, inst.ty2, a, b, inst.ftz), c);
            match ty {
                Ty::F32 => f32b(if r { 1.0 } else { 0.0 }),
                _ => {
                    if r {
                        m
                    } else {
                        0
                    }
                }
            }
        }
        Op::Selp => {
            if c != 0 {
                a & m
            } else {
                b & m
            }
        }
        Op::Slct => {
            let take_a = match inst.ty2 {
                Ty::F32 => f32in(c) >= 0.0,
                _ => sext(c, 32) >= 0,
            };
            if take_a {
                a & m
            } else {
                b & m
            }
        }
        Op::Cvt => cvt(inst, a),
        Op::Cvta { to, space } => {
            let window = match space {
                Space::Shared => SHARED_WINDOW,
                Space::Local => LOCAL_WINDOW,
                Space::Param => PARAM_WINDOW,
                _ => 0,
            };
            (if to {
                a.wrapping_sub(window)
            } else {
                a.wrapping_add(window)
            }) & m
        }
        Op::Rcp | Op::Sqrt | Op::Rsqrt | Op::Ex2 | Op::Lg2 | Op::Sin | Op::Cos | Op::Tanh => {
            // Computed in f64 and rounded once: within every documented approximation bound.
            let x = if ty == Ty::F64 {
                f64v(a)
            } else {
                f32in(a) as f64
            };
            let r = match inst.op {
                Op::Rcp => 1.0 / x,
                Op::Sqrt => x.sqrt(),
                Op::Rsqrt => 1.0 / x.sqrt(),
                Op::Ex2 => x.exp2(),
                Op::Lg2 => x.log2(),
                Op::Sin => x.sin(),
                Op::Cos => x.cos(),
                _ => x.tanh(),
            };
            if ty == Ty::F64 {
                r.to_bits()
            } else {
                fin32(r as f32, inst)
            }
        }
        Op::Testp(kind) => {
            let x = float_in(a, ty, false);
            let sub = match ty {
                Ty::F32 => f32v(a).is_subnormal(),
                _ => x.is_subnormal(),
            };
            (match kind {
                TestKind::Finite => x.is_finite(),
                TestKind::Infinite => x.is_infinite(),
                TestKind::Number => !x.is_nan(),
                TestKind::NotANumber => x.is_nan(),
                TestKind::Normal => x.is_finite() && x != 0.0 && !sub,
                TestKind::Subnormal => sub,
            }) as u64
        }
        _ => 0,
    }
}

/// A specialised lane loop for the most frequent instruction forms (see [`classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Fast {
    /// Use the general per-lane [`alu`].
    #[default]
    None,
    AddU32,
    AddU64,
    SubU32,
    SubU64,
    MulLoU32,
    MulLoU64,
    MulWideU32,
    MulWideS32,
    MadLoU32,
    ShlB32,
    ShlB64,
    ShrU32,
    AndB,
    OrB,
    XorB,
    Mov32,
    Mov64,
    AddF32,
    SubF32,
    MulF32,
    FmaF32,
    Selp,
}

/// Picks the specialised loop for an instruction whose result equals [`alu`]'s, if any.
pub(crate) fn classify(inst: &Inst) -> Fast {
    use Ty::*;
    let plain_float = !inst.ftz && !inst.sat && matches!(inst.rnd, Rnd::None | Rnd::Rn);
    let int32 = matches!(inst.ty, U32 | S32 | B32);
    let int64 = matches!(inst.ty, U64 | S64 | B64);
    match inst.op {
        Op::Add if int32 && !inst.sat => Fast::AddU32,
        Op::Add if int64 => Fast::AddU64,
        Op::Sub if int32 && !inst.sat => Fast::SubU32,
        Op::Sub if int64 => Fast::SubU64,
        Op::Mul(MulMode::Lo) if int32 => Fast::MulLoU32,
        Op::Mul(MulMode::Lo) if int64 => Fast::MulLoU64,
        Op::Mul(MulMode::Wide) if inst.ty == U32 => Fast::MulWideU32,
        Op::Mul(MulMode::Wide) if inst.ty == S32 => Fast::MulWideS32,
        Op::Mad(MulMode::Lo) if int32 => Fast::MadLoU32,
        Op::Shl if int32 => Fast::ShlB32,
        Op::Shl if int64 => Fast::ShlB64,
        Op::Shr if matches!(inst.ty, U32 | B32) => Fast::ShrU32,
        Op::And if int32 || int64 || inst.ty == Pred => Fast::AndB,
        Op::Or if int32 || int64 || inst.ty == Pred => Fast::OrB,
        Op::Xor if int32 || int64 || inst.ty == Pred => Fast::XorB,
        Op::Mov if int32 || inst.ty == F32 => Fast::Mov32,
        Op::Mov if int64 || inst.ty == F64 => Fast::Mov64,
        Op::Add if inst.ty == F32 && plain_float => Fast::AddF32,
        Op::Sub if inst.ty == F32 && plain_float => Fast::SubF32,
        Op::Mul(_) if inst.ty == F32 && plain_float => Fast::MulF32,
        Op::Fma if inst.ty == F32 && plain_float => Fast::FmaF32,
        Op::Selp if inst.ty != Pred => Fast::Selp,
        _ => Fast::None,
    }
}

/// Atomic read-modify-write: the new value from the old one.
fn rmw(op: AtomOp, ty: Ty, old: u64, b: u64, c: u64) -> u64 {
    let bits = ty.bits();
    let m = mask_of(bits);
    match op {
        AtomOp::Add => match ty {
            Ty::F32 => f32b(f32v(old) + f32v(b)),
            Ty::F64 => (f64v(old) + f64v(b)).to_bits(),
            _ => old.wrapping_add(b) & m,
        },
        AtomOp::Min | AtomOp::Max => {
            let max = op == AtomOp::Max;
            match ty {
                Ty::F32 => f32b(fmin32(f32v(old), f32v(b), false, max)),
                Ty::F64 => fmin64(f64v(old), f64v(b), false, max).to_bits(),
                _ if ty.is_signed() => {
                    let (x, y) = (sext(old, bits), sext(b, bits));
                    (if max { x.max(y) } else { x.min(y) } as u64) & m
                }
                _ => {
                    let (x, y) = (old & m, b & m);
                    if max {
                        x.max(y)
                    } else {
                        x.min(y)
                    }
                }
            }
        }
        AtomOp::Inc => {
            if old & m >= b & m {
                0
            } else {
                (old + 1) & m
            }
        }
        AtomOp::Dec => {
            if old & m == 0 || old & m > b & m {
                b & m
            } else {
                (old - 1) & m
            }
        }
        AtomOp::Exch => b & m,
        AtomOp::Cas => {
            if old & m == b & m {
                c & m
            } else {
                old & m
            }
        }
        AtomOp::And => old & b & m,
        AtomOp::Or => (old | b) & m,
        AtomOp::Xor => (old ^ b) & m,
    }
}

/// Loads `size` bytes (1, 2, 4 or 8) at an address aligned to `size`.
///
/// # Safety
/// `p` must point into a live allocation's atomic storage, aligned to `size`.
#[inline]
unsafe fn atomic_load(p: *mut u8, size: u32) -> u64 {
    match size {
        1 => AtomicU8::from_ptr(p).load(Ordering::Relaxed) as u64,
        2 => AtomicU16::from_ptr(p as *mut u16).load(Ordering::Relaxed) as u64,
        4 => AtomicU32::from_ptr(p as *mut u32).load(Ordering::Relaxed) as u64,
        _ => AtomicU64::from_ptr(p as *mut u64).load(Ordering::Relaxed),
    }
}

/// Stores the low `size` bytes of `v`; same contract as [`atomic_load`].
#[inline]
unsafe fn atomic_store(p: *mut u8, size: u32, v: u64) {
    match size {
        1 => AtomicU8::from_ptr(p).store(v as u8, Ordering::Relaxed),
        2 => AtomicU16::from_ptr(p as *mut u16).store(v as u16, Ordering::Relaxed),
        4 => AtomicU32::from_ptr(p as *mut u32).store(v as u32, Ordering::Relaxed),
        _ => AtomicU64::from_ptr(p as *mut u64).store(v, Ordering::Relaxed),
    }
}

/// Compare-and-swap of `size` (4 or 8) bytes; returns whether it succeeded.
#[inline]
unsafe fn atomic_cas(p: *mut u8, size: u32, old: u64, new: u64) -> bool {
    match size {
        4 => AtomicU32::from_ptr(p as *mut u32)
            .compare_exchange_weak(old as u32, new as u32, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok(),
        8 => AtomicU64::from_ptr(p as *mut u64)
            .compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok(),
        2 => AtomicU16::from_ptr(p as *mut u16)
            .compare_exchange_weak(old as u16, new as u16, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok(),
        _ => AtomicU8::from_ptr(p)
            .compare_exchange_weak(old as u8, new as u8, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok(),
    }
}

/// A concrete location after resolving generic addresses.
#[derive(Clone, Copy)]
enum Loc {
    Global(u64),
    Shared(u64),
    Local(u64),
    Param(u64),
}

/// Access kinds, for error messages and the race check.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    Atomic,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Atomic => "atomic",
        }
    }
}

impl<'a> BlockExec<'a> {
    pub(crate) fn new(ctx: &'a LaunchCtx<'a>) -> BlockExec<'a> {
        let nthreads = ctx.block.iter().product::<u32>();
        let nwarps = nthreads.div_ceil(32);
        let check_shadow = ctx.options.check_shared_races || ctx.options.check_uninitialized_shared;
        let nregs = ctx.kernel.reg_names.len();
        let local = ctx.kernel.local_size as usize * 32;
        let warps = (0..nwarps)
            .map(|_| Warp {
                regs: vec![0; nregs * 32],
                local: vec![0; local],
                ..Warp::default()
            })
            .collect();
        BlockExec {
            ctx,
            nthreads,
            nwarps,
            block_idx: [0; 3],
            shared: vec![0; ctx.shared_size as usize],
            shadow: if check_shadow {
                vec![Shadow::default(); ctx.shared_size as usize]
            } else {
                Vec::new()
            },
            check_shadow,
            epoch: 0,
            block_epoch: 0,
            step: 0,
            warps,
            cur_warp: 0,
            region_hint: 0,
            warp_instrs: 0,
            thread_instrs: 0,
            trace: None,
            red_count: 0,
            red_all: true,
            red_any: false,
        }
    }

    /// Adds this executor's instruction counts to the launch totals.
    pub(crate) fn flush_counters(&mut self) {
        self.ctx.counters[0].fetch_add(self.warp_instrs, Ordering::Relaxed);
        self.ctx.counters[1].fetch_add(self.thread_instrs, Ordering::Relaxed);
        self.warp_instrs = 0;
        self.thread_instrs = 0;
    }

    fn thread_xyz(&self, tid: u32) -> [u32; 3] {
        let [bx, by, _] = self.ctx.block;
        [tid % bx, (tid / bx) % by, tid / (bx * by)]
    }

    fn site(&self, lane: usize, pc: usize) -> Box<FaultSite> {
        let k = self.ctx.kernel;
        Box::new(FaultSite {
            kernel: k.name.clone(),
            block: self.block_idx,
            thread: self.thread_xyz(self.cur_warp * 32 + lane as u32),
            line: k.insts[pc].line,
            instruction: k.texts[pc].clone(),
            source: k.sources[pc].clone(),
        })
    }

    fn fault(&self, lane: usize, pc: usize, detail: impl Into<String>) -> PtxError {
        PtxError::Fault {
            site: self.site(lane, pc),
            detail: detail.into(),
        }
    }

    /// Runs block `linear` (x fastest) to completion.
    pub(crate) fn run_block(&mut self, linear: u64) -> PtxResult<()> {
        let [gx, gy, _] = self.ctx.grid;
        let (gx, gy) = (gx as u64, gy as u64);
        self.block_idx = [
            (linear % gx) as u32,
            ((linear / gx) % gy) as u32,
            (linear / (gx * gy)) as u32,
        ];
        self.shared.fill(0);
        self.epoch += 1;
        self.block_epoch = self.epoch;
        self.step = 0;
        self.trace = None;
        if let Some((b, t)) = self.ctx.options.trace_thread {
            let [bx, by, _] = self.ctx.block;
            if b == self.block_idx {
                let tid = t[0] + t[1] * bx + t[2] * bx * by;
                self.trace = Some((tid / 32, tid % 32));
            }
        }
        for (wi, w) in self.warps.iter_mut().enumerate() {
            let lanes = (self.nthreads - wi as u32 * 32).min(32);
            let exists = if lanes == 32 {
                u32::MAX
            } else {
                (1u32 << lanes) - 1
            };
            w.regs.fill(0);
            w.local.fill(0);
            w.pc = [0; 32];
            w.cur = 0;
            w.live = exists;
            w.active = exists;
            w.at_bar = 0;
            w.red_lanes = 0;
        }
        (self.red_count, self.red_all, self.red_any) = (0, true, false);
        let mut warps = std::mem::take(&mut self.warps);
        let result = self.run_warps(&mut warps);
        self.warps = warps;
        result
    }

    fn run_warps(&mut self, warps: &mut [Warp]) -> PtxResult<()> {
        loop {
            for (wi, w) in warps.iter_mut().enumerate() {
                if w.active != 0 {
                    self.cur_warp = wi as u32;
                    self.run_warp(w)?;
                }
            }
            // Every warp now waits at the barrier or has exited.
            if warps.iter().all(|w| w.live == 0) || self.ctx.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            self.epoch += 1;
            let red = (self.red_count, self.red_all, self.red_any);
            (self.red_count, self.red_all, self.red_any) = (0, true, false);
            for w in warps.iter_mut() {
                if w.red_lanes != 0 {
                    let v = match w.red_kind {
                        Some(BarRed::Popc) => red.0 as u64,
                        Some(BarRed::And) => red.1 as u64,
                        _ => red.2 as u64,
                    };
                    for l in Lanes(w.red_lanes) {
                        Self::write(w, w.red_dst, l, v);
                    }
                    w.red_lanes = 0;
                }
                w.at_bar = 0;
                if w.live != 0 {
                    w.reschedule();
                }
            }
        }
    }

    #[inline]
    fn pred_mask(w: &Warp, reg: u32, neg: bool, lanes: u32) -> u32 {
        let base = reg as usize * 32;
        let mut m = 0u32;
        for l in Lanes(lanes) {
            if (w.regs[base + l] != 0) != neg {
                m |= 1 << l;
            }
        }
        m
    }

    fn run_warp(&mut self, w: &mut Warp) -> PtxResult<()> {
        let kernel = self.ctx.kernel;
        let limit = self
            .ctx
            .options
            .max_warp_steps_per_block
            .unwrap_or(u64::MAX);
        while w.active != 0 {
            let pc = w.cur as usize;
            let inst = &kernel.insts[pc];
            let active = w.active;
            let mask = match inst.guard {
                Some((p, neg)) => Self::pred_mask(w, p, neg, active),
                None => active,
            };
            self.step += 1;
            self.warp_instrs += 1;
            self.thread_instrs += active.count_ones() as u64;
            if self.step > limit {
                let lane = active.trailing_zeros() as usize;
                return Err(self.fault(lane, pc, "step limit exceeded (kernel hung?)"));
            }
            match inst.op {
                Op::Bra => {
                    let waiting = w.live & !w.at_bar & !active;
                    if mask == active && (waiting == 0 || inst.target < w.cur) {
                        w.cur = inst.target;
                    } else if mask == 0 {
                        w.advance();
                    } else {
                        for l in Lanes(active) {
                            w.pc[l] = if mask & (1 << l) != 0 {
                                inst.target
                            } else {
                                w.cur + 1
                            };
                        }
                        w.reschedule();
                    }
                }
                Op::Exit => {
                    w.live &= !mask;
                    w.active &= !mask;
                    if w.active != 0 {
                        w.advance();
                    } else {
                        w.reschedule();
                    }
                    if w.live == 0 {
                        w.active = 0;
                    }
                }
                Op::Bar => {
                    if mask != 0 {
                        self.check_barrier(w, inst, mask, pc)?;
                    }
                    w.at_bar |= mask;
                    w.cur += 1;
                    w.store_active_pc();
                    w.reschedule();
                }
                Op::BarRed(kind) => {
                    if mask != 0 {
                        self.check_barrier(w, inst, mask, pc)?;
                    }
                    for l in Lanes(mask) {
                        let p = self.val(w, inst.src[2], l) != 0;
                        self.red_count += p as u32;
                        self.red_all &= p;
                        self.red_any |= p;
                    }
                    w.red_lanes |= mask;
                    w.red_dst = inst.dst[0];
                    w.red_kind = Some(kind);
                    w.at_bar |= mask;
                    w.cur += 1;
                    w.store_active_pc();
                    w.reschedule();
                }
                Op::Trap if mask != 0 => {
                    let lane = mask.trailing_zeros() as usize;
                    return Err(self.fault(lane, pc, "trap instruction executed"));
                }
                _ => {
                    if mask != 0 {
                        self.exec(w, inst, mask, pc)?;
                    }
                    w.advance();
                }
            }
            if let Some((tw, tl)) = self.trace {
                if tw == self.cur_warp && active & (1 << tl) != 0 {
                    self.trace_line(w, inst, pc, tl as usize, mask & (1 << tl) != 0);
                }
            }
        }
        Ok(())
    }

    fn check_barrier(&self, w: &Warp, inst: &Inst, mask: u32, pc: usize) -> PtxResult<()> {
        let lane = mask.trailing_zeros() as usize;
        let count = match inst.src[1] {
            Operand::None => return Ok(()),
            o => self.val(w, o, lane),
        };
        if count as u32 != self.nthreads.div_ceil(32) * 32 {
            return Err(self.fault(
                lane,
                pc,
                format!("barriers over a subset of the block ({count} threads) are not supported"),
            ));
        }
        Ok(())
    }

    fn trace_line(&self, w: &Warp, inst: &Inst, pc: usize, lane: usize, executed: bool) {
        let k = self.ctx.kernel;
        let mut s = format!("{:>5}  {}", inst.line, k.texts[pc]);
        if !executed {
            s.push_str("    (predicated off)");
        } else {
            let mut first = true;
            for d in inst.dst {
                if let Operand::Reg(r) = d {
                    let v = w.regs[r as usize * 32 + lane];
                    s.push_str(if first { "    -> " } else { ", " });
                    first = false;
                    let name = &k.reg_names[r as usize];
                    match inst.ty {
                        Ty::F32 if !matches!(inst.op, Op::Setp { .. }) => {
                            s.push_str(&format!("{name} = {} ({v:#x})", f32v(v)))
                        }
                        Ty::F64 if !matches!(inst.op, Op::Setp { .. }) => {
                            s.push_str(&format!("{name} = {} ({v:#x})", f64v(v)))
                        }
                        _ => s.push_str(&format!("{name} = {v:#x}")),
                    }
                }
            }
            if inst.op == Op::Bra {
                s.push_str("    (taken)");
            }
        }
        if let Some(src) = &k.sources[pc] {
            s.push_str(&format!("    // {src}"));
        }
        if self.ctx.options.trace_to_stderr {
            eprintln!("{s}");
        }
        if let Ok(mut t) = self.ctx.trace.lock() {
            t.push(s);
        }
    }

    #[inline(always)]
    fn val(&self, w: &Warp, o: Operand, lane: usize) -> u64 {
        match o {
            Operand::Reg(r) => w.regs[r as usize * 32 + lane],
            Operand::Imm(v) => v,
            Operand::NotReg(r) => (w.regs[r as usize * 32 + lane] == 0) as u64,
            Operand::None => 0,
            Operand::Special(s) => self.special(s, lane),
            Operand::Global(g) => self.ctx.globals[g as usize],
        }
    }

    fn special(&self, s: Special, lane: usize) -> u64 {
        let tid = self.cur_warp * 32 + lane as u32;
        let l = lane as u32;
        (match s {
            Special::Tid(d) => self.thread_xyz(tid)[d as usize],
            Special::Ntid(d) => self.ctx.block[d as usize],
            Special::Ctaid(d) => self.block_idx[d as usize],
            Special::Nctaid(d) => self.ctx.grid[d as usize],
            Special::LaneId => l,
            Special::WarpId => self.cur_warp,
            Special::NWarpId => self.nwarps,
            Special::SmId => rayon::current_thread_index().unwrap_or(0) as u32,
            Special::NSmId => rayon::current_num_threads() as u32,
            Special::GridId => 0,
            Special::Clock => self.step as u32,
            Special::Clock64 | Special::GlobalTimer => return self.step,
            Special::LaneMaskEq => 1 << l,
            Special::LaneMaskLt => (1u32 << l) - 1,
            Special::LaneMaskLe => ((1u64 << (l + 1)) - 1) as u32,
            Special::LaneMaskGt => !(((1u64 << (l + 1)) - 1) as u32),
            Special::LaneMaskGe => !((1u32 << l) - 1),
            Special::DynamicSmemSize => self.ctx.dynamic_shared,
            Special::TotalSmemSize => self.ctx.shared_size,
        }) as u64
    }

    /// The values of operand `o` in all 32 lanes.
    #[inline(always)]
    fn gather(&self, w: &Warp, o: Operand) -> [u64; 32] {
        match o {
            Operand::Reg(r) => {
                let b = r as usize * 32;
                let mut v = [0u64; 32];
                v.copy_from_slice(&w.regs[b..b + 32]);
                v
            }
            Operand::Imm(v) => [v; 32],
            Operand::None => [0; 32],
            Operand::Global(g) => [self.ctx.globals[g as usize]; 32],
            Operand::NotReg(r) => {
                let b = r as usize * 32;
                std::array::from_fn(|l| (w.regs[b + l] == 0) as u64)
            }
            Operand::Special(s) => std::array::from_fn(|l| self.special(s, l)),
        }
    }

    /// Writes the lanes of `mask` from `vals` into register `d`.
    #[inline(always)]
    fn scatter(w: &mut Warp, d: Operand, vals: &[u64; 32], mask: u32) {
        if let Operand::Reg(r) = d {
            let b = r as usize * 32;
            if mask == u32::MAX {
                w.regs[b..b + 32].copy_from_slice(vals);
            } else {
                for l in Lanes(mask) {
                    w.regs[b + l] = vals[l];
                }
            }
        }
    }

    #[inline]
    fn write(w: &mut Warp, d: Operand, lane: usize, v: u64) {
        if let Operand::Reg(r) = d {
            w.regs[r as usize * 32 + lane] = v;
        }
    }

    /// Executes a non-control instruction for the lanes in `mask`.
    fn exec(&mut self, w: &mut Warp, inst: &Inst, mask: u32, pc: usize) -> PtxResult<()> {
        match inst.op {
            Op::Ld { space, vec } => {
                let size = inst.ty.bytes();
                for lane in Lanes(mask) {
                    let addr = self.address(w, &inst.addr, lane);
                    let loc = self.locate(space, addr);
                    self.check_align(addr, size * vec as u32, Access::Read, lane, pc)?;
                    for i in 0..vec as usize {
                        let raw = self.load(w, loc, i as u64 * size as u64, size, lane, pc)?;
                        let v = if inst.ty.is_signed() {
                            sext(raw, size * 8) as u64
                        } else {
                            raw
                        };
                        Self::write(w, inst.dst[i], lane, v);
                    }
                }
            }
            Op::St { space, vec } => {
                let size = inst.ty.bytes();
                for lane in Lanes(mask) {
                    let addr = self.address(w, &inst.addr, lane);
                    let loc = self.locate(space, addr);
                    self.check_align(addr, size * vec as u32, Access::Write, lane, pc)?;
                    for i in 0..vec as usize {
                        let v = self.val(w, inst.src[i], lane);
                        self.store(w, loc, i as u64 * size as u64, size, v, lane, pc)?;
                    }
                }
            }
            Op::Atom { space, op } | Op::Red { space, op } => {
                let size = inst.ty.bytes();
                for lane in Lanes(mask) {
                    let addr = self.address(w, &inst.addr, lane);
                    self.check_align(addr, size, Access::Atomic, lane, pc)?;
                    let (b, c) = (
                        self.val(w, inst.src[0], lane),
                        self.val(w, inst.src[1], lane),
                    );
                    let old =
                        self.atomic(w, self.locate(space, addr), size, inst, op, b, c, lane, pc)?;
                    let v = if inst.ty.is_signed() {
                        sext(old, size * 8) as u64
                    } else {
                        old
                    };
                    Self::write(w, inst.dst[0], lane, v);
                }
            }
            Op::CpAsync => {
                for lane in Lanes(mask) {
                    let total = self.val(w, inst.src[0], lane) as u32;
                    let src_bytes = self.val(w, inst.src[1], lane) as u32;
                    let dst = self.address(w, &inst.addr, lane);
                    let src = self.address(w, &inst.addr2, lane);
                    let (dl, sl) = (
                        self.locate(Space::Shared, dst),
                        self.locate(Space::Global, src),
                    );
                    self.check_align(dst, total, Access::Write, lane, pc)?;
                    self.check_align(src, total, Access::Read, lane, pc)?;
                    let chunk = total.min(4);
                    for off in (0..total).step_by(chunk as usize) {
                        let v = if off < src_bytes {
                            self.load(w, sl, off as u64, chunk, lane, pc)?
                        } else {
                            0
                        };
                        self.store(w, dl, off as u64, chunk, v, lane, pc)?;
                    }
                }
            }
            Op::Setp { cmp, combine: comb } => {
                for lane in Lanes(mask) {
                    let a = self.val(w, inst.src[0], lane);
                    let b = self.val(w, inst.src[1], lane);
                    let c = self.val(w, inst.src[2], lane);
                    let r = compare(cmp, inst.ty2, a, b, inst.ftz);
                    Self::write(w, inst.dst[0], lane, combine(comb, r, c) as u64);
                    Self::write(w, inst.dst[1], lane, combine(comb, !r, c) as u64);
                }
            }
            Op::Pack => {
                let eb = inst.ty2.bits();
                for lane in Lanes(mask) {
                    let mut v = 0u64;
                    for (i, s) in inst.src.iter().enumerate() {
                        if *s != Operand::None && (i as u32) * eb < 64 {
                            v |= (self.val(w, *s, lane) & mask_of(eb)) << (i as u32 * eb);
                        }
                    }
                    Self::write(w, inst.dst[0], lane, v);
                }
            }
            Op::Unpack => {
                let eb = inst.ty2.bits();
                for lane in Lanes(mask) {
                    let v = self.val(w, inst.src[0], lane);
                    for i in 0..4u32 {
                        if i * eb < 64 {
                            Self::write(
                                w,
                                inst.dst[i as usize],
                                lane,
                                (v >> (i * eb)) & mask_of(eb),
                            );
                        }
                    }
                }
            }
            Op::Shfl(mode) => self.shfl(w, inst, mask, mode, pc)?,
            Op::Vote(mode) => {
                let member = self.member_mask(w, inst.src[1], mask, pc)?;
                let mut ballot = 0u32;
                for lane in Lanes(mask) {
                    if self.val(w, inst.src[0], lane) != 0 {
                        ballot |= 1 << lane;
                    }
                }
                let group = mask & member;
                let v = match mode {
                    VoteMode::Ballot => (ballot & member) as u64,
                    VoteMode::All => (ballot & group == group) as u64,
                    VoteMode::Any => (ballot & group != 0) as u64,
                    VoteMode::Uni => (ballot & group == group || ballot & group == 0) as u64,
                };
                for lane in Lanes(mask) {
                    Self::write(w, inst.dst[0], lane, v);
                }
            }
            Op::Activemask => {
                for lane in Lanes(mask) {
                    Self::write(w, inst.dst[0], lane, mask as u64);
                }
            }
            Op::Redux(op) => {
                let member = self.member_mask(w, inst.src[1], mask, pc)?;
                let group = mask & member;
                let mut acc: Option<u64> = None;
                for lane in Lanes(group) {
                    let v = self.val(w, inst.src[0], lane) & 0xffff_ffff;
                    acc = Some(match acc {
                        None => v,
                        Some(x) => rmw(op, inst.ty, x, v, 0),
                    });
                }
                for lane in Lanes(mask) {
                    Self::write(w, inst.dst[0], lane, acc.unwrap_or(0));
                }
            }
            Op::MatchAny | Op::MatchAll => {
                let member = self.member_mask(w, inst.src[1], mask, pc)?;
                let group = mask & member;
                let m = mask_of(inst.ty.bits());
                let vals: Vec<u64> = (0..32).map(|l| self.val(w, inst.src[0], l) & m).collect();
                for lane in Lanes(mask) {
                    let same = Lanes(group)
                        .filter(|&l| vals[l] == vals[lane])
                        .fold(0u32, |a, l| a | 1 << l);
                    let (d, p) = if inst.op == Op::MatchAny {
                        (same, true)
                    } else if same == group {
                        (group, true)
                    } else {
                        (0, false)
                    };
                    Self::write(w, inst.dst[0], lane, d as u64);
                    Self::write(w, inst.dst[1], lane, p as u64);
                }
            }
            Op::Nop | Op::BarWarp | Op::Trap => {}
            Op::AssertFail => {
                let lane = mask.trailing_zeros() as usize;
                let arg = |i: usize| -> u64 {
                    let off = self.val(w, inst.src[i], lane) as usize;
                    let base = lane * self.ctx.kernel.local_size as usize + off;
                    w.local.get(base..base + 8).map_or(0, read_le)
                };
                let (msg, file, line, func) = (arg(0), arg(1), arg(2) as u32, arg(3));
                let msg = self.read_cstr(w, msg, lane, pc)?;
                let file = self.read_cstr(w, file, lane, pc)?;
                let func = self.read_cstr(w, func, lane, pc)?;
                return Err(self.fault(
                    lane,
                    pc,
                    format!("device assertion `{msg}` failed at {file}:{line} in `{func}`"),
                ));
            }
            Op::Printf => {
                for lane in Lanes(mask) {
                    let local = lane * self.ctx.kernel.local_size as usize;
                    let arg = |o: Operand| -> u64 {
                        let base = local + self.val(w, o, lane) as usize;
                        w.local.get(base..base + 8).map_or(0, read_le)
                    };
                    let (fmt, args) = (arg(inst.src[0]), arg(inst.src[1]));
                    let fmt = self.read_cstr(w, fmt, lane, pc)?;
                    let text = self.format_printf(w, &fmt, args, lane, pc)?;
                    log::info!("device printf: {}", text.trim_end());
                    if let Ok(mut out) = self.ctx.printf.lock() {
                        out.push(text.clone());
                    }
                    if let Operand::Imm(off) = inst.dst[0] {
                        let base = local + off as usize;
                        if let Some(b) = w.local.get_mut(base..base + 4) {
                            write_le(b, text.len() as u64);
                        }
                    }
                }
            }
            Op::Unsupported(_) | Op::Bra | Op::Exit | Op::Bar | Op::BarRed(_) => {
                let lane = mask.trailing_zeros() as usize;
                return Err(self.fault(lane, pc, "internal: control instruction reached exec"));
            }
            _ => {
                // Pure per-lane arithmetic: computed for all 32 lanes on copies of the source
                // registers (inactive lanes' results are dropped), which lets the hot cases
                // below vectorize.
                if !matches!(inst.dst[0], Operand::Reg(_)) {
                    return Ok(());
                }
                let a = self.gather(w, inst.src[0]);
                let b = self.gather(w, inst.src[1]);
                let mut d = [0u64; 32];
                let m = mask_of(inst.ty.bits());
                macro_rules! lanes {
                    ($f:expr) => {{
                        let f = $f;
                        for i in 0..32 {
                            d[i] = f(a[i], b[i]);
                        }
                    }};
                }
                match inst.fast {
                    Fast::AddU32 => lanes!(|x: u64, y: u64| x.wrapping_add(y) & 0xffff_ffff),
                    Fast::AddU64 => lanes!(|x: u64, y: u64| x.wrapping_add(y)),
                    Fast::SubU32 => lanes!(|x: u64, y: u64| x.wrapping_sub(y) & 0xffff_ffff),
                    Fast::SubU64 => lanes!(|x: u64, y: u64| x.wrapping_sub(y)),
                    Fast::MulLoU32 => lanes!(|x: u64, y: u64| x.wrapping_mul(y) & 0xffff_ffff),
                    Fast::MulLoU64 => lanes!(|x: u64, y: u64| x.wrapping_mul(y)),
                    Fast::MulWideU32 => {
                        lanes!(|x: u64, y: u64| (x & 0xffff_ffff) * (y & 0xffff_ffff))
                    }
                    Fast::MulWideS32 => lanes!(|x: u64, y: u64| {
                        ((x as u32 as i32 as i64) * (y as u32 as i32 as i64)) as u64
                    }),
                    Fast::ShlB32 => lanes!(|x: u64, y: u64| {
                        let n = y & 0xffff_ffff;
                        if n >= 32 {
                            0
                        } else {
                            (x << n) & 0xffff_ffff
                        }
                    }),
                    Fast::ShlB64 => lanes!(|x: u64, y: u64| {
                        let n = y & 0xffff_ffff;
                        if n >= 64 {
                            0
                        } else {
                            x << n
                        }
                    }),
                    Fast::ShrU32 => lanes!(|x: u64, y: u64| {
                        let n = y & 0xffff_ffff;
                        if n >= 32 {
                            0
                        } else {
                            (x & 0xffff_ffff) >> n
                        }
                    }),
                    Fast::AndB => lanes!(|x: u64, y: u64| x & y & m),
                    Fast::OrB => lanes!(|x: u64, y: u64| (x | y) & m),
                    Fast::XorB => lanes!(|x: u64, y: u64| (x ^ y) & m),
                    Fast::Mov32 => lanes!(|x: u64, _| x & 0xffff_ffff),
                    Fast::Mov64 => lanes!(|x: u64, _| x),
                    Fast::AddF32 => lanes!(|x: u64, y: u64| f32b(f32v(x) + f32v(y))),
                    Fast::SubF32 => lanes!(|x: u64, y: u64| f32b(f32v(x) - f32v(y))),
                    Fast::MulF32 => lanes!(|x: u64, y: u64| f32b(f32v(x) * f32v(y))),
                    Fast::MadLoU32 => {
                        let c = self.gather(w, inst.src[2]);
                        for i in 0..32 {
                            d[i] = a[i].wrapping_mul(b[i]).wrapping_add(c[i]) & 0xffff_ffff;
                        }
                    }
                    Fast::FmaF32 => {
                        let c = self.gather(w, inst.src[2]);
                        for i in 0..32 {
                            d[i] = f32b(f32v(a[i]).mul_add(f32v(b[i]), f32v(c[i])));
                        }
                    }
                    Fast::Selp => {
                        let c = self.gather(w, inst.src[2]);
                        for i in 0..32 {
                            d[i] = if c[i] != 0 { a[i] & m } else { b[i] & m };
                        }
                    }
                    Fast::None => {
                        let c = self.gather(w, inst.src[2]);
                        let e = self.gather(w, inst.src[3]);
                        for l in Lanes(mask) {
                            d[l] = alu(inst, [a[l], b[l], c[l], e[l]]);
                        }
                    }
                }
                Self::scatter(w, inst.dst[0], &d, mask);
            }
        }
        Ok(())
    }

    /// The member mask of a `.sync` warp instruction; every live lane it names must be
    /// executing this instruction with the others.
    fn member_mask(&self, w: &Warp, o: Operand, mask: u32, pc: usize) -> PtxResult<u32> {
        let lane = mask.trailing_zeros() as usize;
        let member = self.val(w, o, lane) as u32;
        let missing = member & w.live & !mask;
        if missing != 0 {
            return Err(self.fault(
                lane,
                pc,
                format!(
                    "warp-synchronous instruction with member mask {member:#010x}: lane {} is \
                     live but not converged here (active lanes {mask:#010x})",
                    missing.trailing_zeros()
                ),
            ));
        }
        Ok(member)
    }

    fn shfl(
        &mut self,
        w: &mut Warp,
        inst: &Inst,
        mask: u32,
        mode: ShflMode,
        pc: usize,
    ) -> PtxResult<()> {
        self.member_mask(w, inst.src[3], mask, pc)?;
        let mut src = [0u64; 32];
        for (l, v) in src.iter_mut().enumerate() {
            *v = self.val(w, inst.src[0], l) & 0xffff_ffff;
        }
        for lane in Lanes(mask) {
            let b = self.val(w, inst.src[1], lane) as u32 & 31;
            let c = self.val(w, inst.src[2], lane) as u32;
            let l = lane as u32;
            let clamp = c & 31;
            let seg = (c >> 8) & 31;
            let max_lane = (l & seg) | (clamp & !seg);
            let min_lane = l & seg;
            let (j, ok) = match mode {
                ShflMode::Up => {
                    let j = l as i32 - b as i32;
                    (j, j >= max_lane as i32)
                }
                ShflMode::Down => {
                    let j = (l + b) as i32;
                    (j, j <= max_lane as i32)
                }
                ShflMode::Bfly => {
                    let j = (l ^ b) as i32;
                    (j, j <= max_lane as i32)
                }
                ShflMode::Idx => {
                    let j = (min_lane | (b & !seg)) as i32;
                    (j, j <= max_lane as i32)
                }
            };
            let j = if ok { j as usize } else { lane };
            Self::write(w, inst.dst[0], lane, src[j]);
            Self::write(w, inst.dst[1], lane, ok as u64);
        }
        Ok(())
    }

    /// Reads a NUL-terminated string (at most 4 KiB) at a generic address.
    fn read_cstr(&mut self, w: &Warp, addr: u64, lane: usize, pc: usize) -> PtxResult<String> {
        let loc = self.locate(Space::Generic, addr);
        let mut bytes = Vec::new();
        for i in 0..4096 {
            let b = self.load(w, loc, i, 1, lane, pc)? as u8;
            if b == 0 {
                break;
            }
            bytes.push(b);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Formats device `printf` output: the arguments sit in a buffer at generic address
    /// `args`, each aligned to its size (ints 4 bytes, longs, doubles and pointers 8).
    fn format_printf(
        &mut self,
        w: &Warp,
        fmt: &str,
        args: u64,
        lane: usize,
        pc: usize,
    ) -> PtxResult<String> {
        let loc = self.locate(Space::Generic, args);
        let mut off = 0u64;
        let mut out = String::new();
        let mut chars = fmt.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let mut spec = String::new();
            while let Some(&n) = chars.peek() {
                if "-+ #0123456789.".contains(n) {
                    spec.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            let mut long = false;
            while let Some(&n) = chars.peek() {
                if "hlzjt".contains(n) {
                    long |= matches!(n, 'l' | 'z' | 'j' | 't');
                    chars.next();
                } else {
                    break;
                }
            }
            let Some(conv) = chars.next() else { break };
            let left = spec.starts_with('-');
            let zero = spec
                .trim_start_matches(['-', '+', ' ', '#'])
                .starts_with('0');
            let (width, prec) = match spec
                .trim_start_matches(['-', '+', ' ', '#', '0'])
                .split_once('.')
            {
                Some((w, p)) => (
                    w.parse::<usize>().unwrap_or(0),
                    Some(p.parse::<usize>().unwrap_or(0)),
                ),
                None => (
                    spec.trim_start_matches(['-', '+', ' ', '#', '0'])
                        .parse()
                        .unwrap_or(0),
                    None,
                ),
            };
            let size: u32 = match conv {
                'd' | 'i' | 'u' | 'x' | 'X' | 'o' | 'c' if !long => 4,
                '%' => 0,
                _ => 8,
            };
            let mut raw = 0;
            if size > 0 {
                off = off.div_ceil(size as u64) * size as u64;
                raw = self.load(w, loc, off, size, lane, pc)?;
                off += size as u64;
            }
            let body = match conv {
                'd' | 'i' => {
                    if size == 4 {
                        (raw as u32 as i32).to_string()
                    } else {
                        (raw as i64).to_string()
                    }
                }
                'u' => raw.to_string(),
                'x' => format!("{raw:x}"),
                'X' => format!("{raw:X}"),
                'o' => format!("{raw:o}"),
                'c' => ((raw as u8) as char).to_string(),
                'p' => format!("{raw:#x}"),
                's' => self.read_cstr(w, raw, lane, pc)?,
                'f' | 'F' => format!("{:.*}", prec.unwrap_or(6), f64::from_bits(raw)),
                'e' | 'E' => format!("{:.*e}", prec.unwrap_or(6), f64::from_bits(raw)),
                'g' | 'G' | 'a' | 'A' => format!("{}", f64::from_bits(raw)),
                '%' => "%".to_string(),
                other => format!("%{other}"),
            };
            let pad = width.saturating_sub(body.chars().count());
            if left {
                out.push_str(&body);
                out.extend(std::iter::repeat_n(' ', pad));
            } else {
                out.extend(std::iter::repeat_n(if zero { '0' } else { ' ' }, pad));
                out.push_str(&body);
            }
        }
        Ok(out)
    }

    #[inline]
    fn address(&self, w: &Warp, a: &Addr, lane: usize) -> u64 {
        self.val(w, a.base, lane).wrapping_add(a.offset as u64)
    }

    #[inline]
    fn locate(&self, space: Space, addr: u64) -> Loc {
        match space {
            Space::Global | Space::Const => Loc::Global(addr),
            Space::Shared => Loc::Shared(addr & 0xffff_ffff_ffff),
            Space::Local => Loc::Local(addr),
            Space::Param => Loc::Param(addr),
            Space::Generic => {
                let in_window = |base: u64| addr.wrapping_sub(base) < WINDOW_SIZE;
                if in_window(SHARED_WINDOW) {
                    Loc::Shared(addr - SHARED_WINDOW)
                } else if in_window(LOCAL_WINDOW) {
                    Loc::Local(addr - LOCAL_WINDOW)
                } else if in_window(PARAM_WINDOW) {
                    Loc::Param(addr - PARAM_WINDOW)
                } else {
                    Loc::Global(addr)
                }
            }
        }
    }

    fn check_align(
        &self,
        addr: u64,
        size: u32,
        a: Access,
        lane: usize,
        pc: usize,
    ) -> PtxResult<()> {
        if size.is_power_of_two() && addr & (size as u64 - 1) != 0 {
            return Err(PtxError::Misaligned {
                site: self.site(lane, pc),
                access: a.name(),
                address: addr,
                size,
            });
        }
        Ok(())
    }

    /// Finds the allocation holding `[addr, addr + size)` and returns a pointer to `addr`.
    #[inline]
    fn global_ptr(
        &mut self,
        addr: u64,
        size: u32,
        a: Access,
        lane: usize,
        pc: usize,
    ) -> PtxResult<*mut u8> {
        let regions = self.ctx.regions;
        let end = addr.wrapping_add(size as u64);
        if let Some(r) = regions.get(self.region_hint) {
            if addr >= r.base && end <= r.end && end >= addr {
                // SAFETY: the range lies inside the region's storage.
                return Ok(unsafe { r.ptr.add((addr - r.base) as usize) });
            }
        }
        let i = regions.partition_point(|r| r.base <= addr);
        if i > 0 {
            let r = regions[i - 1];
            if end <= r.end && end >= addr {
                self.region_hint = i - 1;
                // SAFETY: as above.
                return Ok(unsafe { r.ptr.add((addr - r.base) as usize) });
            }
        }
        Err(self.global_oob(addr, size, a, lane, pc))
    }

    fn global_oob(&self, addr: u64, size: u32, a: Access, lane: usize, pc: usize) -> PtxError {
        let regions = self.ctx.regions;
        let i = regions.partition_point(|r| r.base <= addr);
        let mut note = String::new();
        if let Some(&(b, s)) = self
            .ctx
            .freed
            .iter()
            .find(|(b, s)| addr >= *b && addr < b + s.max(&1))
        {
            note = format!(" (inside freed allocation {b:#x} of {s} bytes)");
        } else if i > 0 {
            let r = regions[i - 1];
            if addr < r.end {
                note = format!(
                    " (straddles the end of allocation {:#x} of {} bytes)",
                    r.base,
                    r.end - r.base
                );
            } else if addr - r.end < 1 << 20 {
                note = format!(
                    " ({} bytes past the end of allocation {:#x} of {} bytes)",
                    addr - r.end,
                    r.base,
                    r.end - r.base
                );
            }
        }
        if note.is_empty() && addr < 1 << 16 {
            note = " (null pointer?)".into();
        }
        PtxError::GlobalOutOfBounds {
            site: self.site(lane, pc),
            access: a.name(),
            address: addr,
            size,
            note,
        }
    }

    fn shared_range(
        &self,
        off: u64,
        size: u32,
        a: Access,
        lane: usize,
        pc: usize,
    ) -> PtxResult<usize> {
        let end = off.wrapping_add(size as u64);
        if end > self.ctx.shared_size as u64 || end < off {
            return Err(PtxError::SharedOutOfBounds {
                site: self.site(lane, pc),
                access: a.name(),
                address: off,
                size,
                shared_size: self.ctx.shared_size,
            });
        }
        Ok(off as usize)
    }

    /// Race and initialisation bookkeeping for one shared access.
    #[inline]
    fn shadow_access(
        &mut self,
        off: usize,
        size: u32,
        a: Access,
        lane: usize,
        pc: usize,
    ) -> PtxResult<()> {
        let tid = (self.cur_warp * 32 + lane as u32) as u16;
        let warp = self.cur_warp as u16;
        let (epoch, step, block_epoch) = (self.epoch, self.step as u32, self.block_epoch);
        let races = self.ctx.options.check_shared_races && a != Access::Atomic;
        let uninit = self.ctx.options.check_uninitialized_shared && a != Access::Write;
        let Some(cells) = self.shadow.get_mut(off..off + size as usize) else {
            return Ok(());
        };
        let mut conflict = None;
        for (i, sh) in cells.iter_mut().enumerate() {
            if uninit && sh.w_epoch < block_epoch {
                conflict = Some((i, None));
                break;
            }
            if races {
                if sh.w_epoch == epoch
                    && sh.w_tid != tid
                    && (sh.w_tid / 32 != warp || (a == Access::Write && sh.w_step == step))
                {
                    conflict = Some((i, Some(("write", sh.w_tid, sh.w_pc))));
                    break;
                }
                if a == Access::Write
                    && sh.r_epoch == epoch
                    && (sh.r_warp == MANY_WARPS || sh.r_warp != warp)
                {
                    conflict = Some((i, Some(("read", sh.r_tid, sh.r_pc))));
                    break;
                }
            }
            if a == Access::Read {
                if sh.r_epoch != epoch {
                    sh.r_epoch = epoch;
                    sh.r_warp = warp;
                    sh.r_tid = tid;
                    sh.r_pc = pc as u32;
                } else if sh.r_warp != warp {
                    sh.r_warp = MANY_WARPS;
                }
            } else {
                sh.w_epoch = epoch;
                sh.w_step = step;
                sh.w_tid = tid;
                sh.w_pc = pc as u32;
            }
        }
        match conflict {
            None => Ok(()),
            Some((i, None)) => Err(PtxError::UninitializedShared {
                site: self.site(lane, pc),
                address: (off + i) as u64,
            }),
            Some((i, Some((kind, other, other_pc)))) => {
                Err(self.race(off + i, a, kind, other, other_pc, lane, pc))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn race(
        &self,
        off: usize,
        a: Access,
        other: &'static str,
        other_tid: u16,
        other_pc: u32,
        lane: usize,
        pc: usize,
    ) -> PtxError {
        PtxError::SharedRace {
            site: self.site(lane, pc),
            address: off as u64,
            this_access: a.name(),
            other_access: other,
            other_thread: self.thread_xyz(other_tid as u32),
            other_line: self.ctx.kernel.insts[other_pc as usize].line,
        }
    }

    fn load(
        &mut self,
        w: &Warp,
        loc: Loc,
        add: u64,
        size: u32,
        lane: usize,
        pc: usize,
    ) -> PtxResult<u64> {
        match loc {
            Loc::Global(a) => {
                let p = self.global_ptr(a + add, size, Access::Read, lane, pc)?;
                // SAFETY: `global_ptr` checked the range; alignment was checked by the caller.
                Ok(unsafe { atomic_load(p, size) })
            }
            Loc::Shared(a) => {
                let off = self.shared_range(a + add, size, Access::Read, lane, pc)?;
                if self.check_shadow {
                    self.shadow_access(off, size, Access::Read, lane, pc)?;
                }
                Ok(read_le(&self.shared[off..off + size as usize]))
            }
            Loc::Local(a) => {
                let ls = self.ctx.kernel.local_size as u64;
                let off = a + add;
                if off + size as u64 > ls {
                    return Err(self.other_oob("local", Access::Read, off, size, lane, pc));
                }
                let base = lane * ls as usize + off as usize;
                Ok(read_le(&w.local[base..base + size as usize]))
            }
            Loc::Param(a) => {
                let off = a + add;
                if off + size as u64 > self.ctx.params.len() as u64 {
                    return Err(self.other_oob("param", Access::Read, off, size, lane, pc));
                }
                Ok(read_le(
                    &self.ctx.params[off as usize..off as usize + size as usize],
                ))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        w: &mut Warp,
        loc: Loc,
        add: u64,
        size: u32,
        v: u64,
        lane: usize,
        pc: usize,
    ) -> PtxResult<()> {
        match loc {
            Loc::Global(a) => {
                let p = self.global_ptr(a + add, size, Access::Write, lane, pc)?;
                // SAFETY: as in `load`.
                unsafe { atomic_store(p, size, v) };
            }
            Loc::Shared(a) => {
                let off = self.shared_range(a + add, size, Access::Write, lane, pc)?;
                if self.check_shadow {
                    self.shadow_access(off, size, Access::Write, lane, pc)?;
                }
                write_le(&mut self.shared[off..off + size as usize], v);
            }
            Loc::Local(a) => {
                let ls = self.ctx.kernel.local_size as u64;
                let off = a + add;
                if off + size as u64 > ls {
                    return Err(self.other_oob("local", Access::Write, off, size, lane, pc));
                }
                let base = lane * ls as usize + off as usize;
                write_le(&mut w.local[base..base + size as usize], v);
            }
            Loc::Param(a) => {
                return Err(self.other_oob(
                    "param (read-only)",
                    Access::Write,
                    a + add,
                    size,
                    lane,
                    pc,
                ));
            }
        }
        Ok(())
    }

    fn other_oob(
        &self,
        space: &'static str,
        a: Access,
        addr: u64,
        size: u32,
        lane: usize,
        pc: usize,
    ) -> PtxError {
        PtxError::OtherOutOfBounds {
            site: self.site(lane, pc),
            space,
            access: a.name(),
            address: addr,
            size,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn atomic(
        &mut self,
        w: &mut Warp,
        loc: Loc,
        size: u32,
        inst: &Inst,
        op: AtomOp,
        b: u64,
        c: u64,
        lane: usize,
        pc: usize,
    ) -> PtxResult<u64> {
        match loc {
            Loc::Global(a) => {
                let p = self.global_ptr(a, size, Access::Atomic, lane, pc)?;
                loop {
                    // SAFETY: as in `load`.
                    let old = unsafe { atomic_load(p, size) };
                    let new = rmw(op, inst.ty, old, b, c);
                    // SAFETY: as above.
                    if unsafe { atomic_cas(p, size, old, new) } {
                        return Ok(old);
                    }
                }
            }
            Loc::Shared(a) => {
                let off = self.shared_range(a, size, Access::Atomic, lane, pc)?;
                if self.check_shadow {
                    self.shadow_access(off, size, Access::Atomic, lane, pc)?;
                }
                let old = read_le(&self.shared[off..off + size as usize]);
                write_le(
                    &mut self.shared[off..off + size as usize],
                    rmw(op, inst.ty, old, b, c),
                );
                Ok(old)
            }
            Loc::Local(_) | Loc::Param(_) => {
                let _ = w;
                Err(self.fault(lane, pc, "atomic on local or param memory"))
            }
        }
    }
}

#[inline]
fn read_le(b: &[u8]) -> u64 {
    match b.len() {
        4 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64,
        8 => u64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
        2 => u16::from_le_bytes([b[0], b[1]]) as u64,
        1 => b[0] as u64,
        n => {
            let mut buf = [0u8; 8];
            buf[..n.min(8)].copy_from_slice(&b[..n.min(8)]);
            u64::from_le_bytes(buf)
        }
    }
}

#[inline]
fn write_le(b: &mut [u8], v: u64) {
    match b.len() {
        4 => b.copy_from_slice(&(v as u32).to_le_bytes()),
        8 => b.copy_from_slice(&v.to_le_bytes()),
        2 => b.copy_from_slice(&(v as u16).to_le_bytes()),
        1 => b[0] = v as u8,
        n => b.copy_from_slice(&v.to_le_bytes()[..n.min(8)]),
    }
}
