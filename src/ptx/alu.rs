//! Pure per-lane semantics: integer, float, bit and conversion instructions, comparisons,
//! atomic updates, and the specialised lane loops' classification.

use super::float::*;
use super::inst::*;
use super::machine::{LOCAL_WINDOW, PARAM_WINDOW, SHARED_WINDOW};

#[inline]
pub(crate) fn mask_of(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

#[inline]
pub(crate) fn sext(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        ((v << (64 - bits)) as i64) >> (64 - bits)
    }
}

#[inline]
pub(crate) fn f32v(x: u64) -> f32 {
    f32::from_bits(x as u32)
}

#[inline]
pub(crate) fn f32b(x: f32) -> u64 {
    x.to_bits() as u64
}

#[inline]
pub(crate) fn f64v(x: u64) -> f64 {
    f64::from_bits(x)
}

/// Reads a float of type `ty` as f64 (exact for f16, bf16 and f32).
pub(crate) fn float_in(x: u64, ty: Ty, ftz: bool) -> f64 {
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

pub(crate) fn sat01(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// Finishes an f32 result: saturation, then flush-to-zero.
#[inline]
pub(crate) fn fin32(r: f32, inst: &Inst) -> u64 {
    let mut r = r;
    if inst.sat {
        r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
    }
    if inst.ftz {
        r = ftz32(r);
    }
    f32b(r)
}

pub(crate) fn fmin32(a: f32, b: f32, nan: bool, max: bool) -> f32 {
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

pub(crate) fn fmin64(a: f64, b: f64, nan: bool, max: bool) -> f64 {
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

pub(crate) fn compare(cmp: Cmp, ty: Ty, a: u64, b: u64, ftz: bool) -> bool {
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

pub(crate) fn combine(op: Option<BoolOp>, r: bool, c: u64) -> bool {
    match op {
        None => r,
        Some(BoolOp::And) => r && c != 0,
        Some(BoolOp::Or) => r || c != 0,
        Some(BoolOp::Xor) => r != (c != 0),
    }
}

/// Integer result of `cvt` from a float: round as asked, saturate to the type, NaN to 0.
pub(crate) fn float_to_int(v: f64, rnd: Rnd, ty: Ty) -> u64 {
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
pub(crate) fn float_out(s: f64, t: f64, inst: &Inst) -> u64 {
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

pub(crate) fn cvt(inst: &Inst, a: u64) -> u64 {
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

pub(crate) fn bfe(a: u64, pos: u64, len: u64, ty: Ty) -> u64 {
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

pub(crate) fn bfi(a: u64, b: u64, pos: u64, len: u64, ty: Ty) -> u64 {
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

pub(crate) fn prmt(a: u64, b: u64, c: u64) -> u64 {
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

pub(crate) fn lop3(a: u64, b: u64, c: u64, lut: u64) -> u64 {
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

/// Packed halves (`.f16x2`, `.bf16x2`): the scalar operation on each 16-bit half; `cvt` to a
/// packed type converts two f32 sources.
fn alu_packed(inst: &Inst, s: [u64; 4]) -> u64 {
    let half = if inst.ty == Ty::F16x2 {
        Ty::F16
    } else {
        Ty::Bf16
    };
    let mut scalar = inst.clone();
    scalar.ty = half;
    if inst.op == Op::Cvt {
        let (hi, lo) = (alu(&scalar, [s[0], 0, 0, 0]), alu(&scalar, [s[1], 0, 0, 0]));
        return (hi & 0xffff) << 16 | (lo & 0xffff);
    }
    let part = |shift: u32| -> u64 {
        let h = |x: u64| (x >> shift) & 0xffff;
        alu(&scalar, [h(s[0]), h(s[1]), h(s[2]), h(s[3])]) & 0xffff
    };
    part(16) << 16 | part(0)
}

/// Pure per-lane semantics of every instruction with one destination register and no
/// memory or cross-lane effects.
pub(crate) fn alu(inst: &Inst, s: [u64; 4]) -> u64 {
    if matches!(inst.ty, Ty::F16x2 | Ty::Bf16x2) {
        return alu_packed(inst, s);
    }
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
                (sext(a, bits) as i128 - sext(b, bits) as i128).unsigned_abs() as u64
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
pub(crate) fn rmw(op: AtomOp, ty: Ty, old: u64, b: u64, c: u64) -> u64 {
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
