//! Decoding: PTX statements with their modifiers become [`Inst`]s with resolved operands.

use std::collections::HashMap;

use super::inline::MAX_INLINE_DEPTH;
use super::inst::*;
use super::lex::Literal;
use super::module::Kernel;
use super::parse::{RawInst, RawKernel, RawOp, Sym};

/// Modifiers of an opcode, split at the dots: `ld.global.nc.v4.f32` -> base `ld`, mods, types.
struct Mods<'a> {
    base: &'a str,
    mods: Vec<&'a str>,
    types: Vec<Ty>,
}

impl<'a> Mods<'a> {
    fn new(opcode: &'a str) -> Mods<'a> {
        let mut parts = opcode.split('.');
        let base = parts.next().unwrap_or("");
        let mut mods = Vec::new();
        let mut types = Vec::new();
        for m in parts {
            match Ty::parse(m) {
                Some(t) => types.push(t),
                None => mods.push(m),
            }
        }
        Mods { base, mods, types }
    }

    fn has(&self, m: &str) -> bool {
        self.mods.contains(&m)
    }

    fn ty(&self, i: usize) -> Result<Ty, String> {
        self.types
            .get(i)
            .copied()
            .ok_or_else(|| "missing type suffix".to_string())
    }

    fn space(&self) -> Space {
        for m in &self.mods {
            match *m {
                "global" => return Space::Global,
                "shared" | "shared::cta" => return Space::Shared,
                "local" => return Space::Local,
                "param" | "param::entry" => return Space::Param,
                "const" => return Space::Const,
                _ => {}
            }
        }
        Space::Generic
    }

    fn rnd(&self) -> Rnd {
        for m in &self.mods {
            match *m {
                "rn" => return Rnd::Rn,
                "rz" => return Rnd::Rz,
                "rm" => return Rnd::Rm,
                "rp" => return Rnd::Rp,
                "rni" => return Rnd::Rni,
                "rzi" => return Rnd::Rzi,
                "rmi" => return Rnd::Rmi,
                "rpi" => return Rnd::Rpi,
                _ => {}
            }
        }
        Rnd::None
    }

    fn vec(&self) -> u8 {
        if self.has("v2") {
            2
        } else if self.has("v4") {
            4
        } else if self.has("v8") {
            8
        } else {
            1
        }
    }

    fn mul_mode(&self) -> MulMode {
        if self.has("hi") {
            MulMode::Hi
        } else if self.has("wide") {
            MulMode::Wide
        } else {
            MulMode::Lo
        }
    }

    fn cmp(&self) -> Result<Cmp, String> {
        for m in &self.mods {
            let c = match *m {
                "eq" => Cmp::Eq,
                "ne" => Cmp::Ne,
                "lt" | "lo" => Cmp::Lt,
                "le" | "ls" => Cmp::Le,
                "gt" | "hi" => Cmp::Gt,
                "ge" | "hs" => Cmp::Ge,
                "equ" => Cmp::Equ,
                "neu" => Cmp::Neu,
                "ltu" => Cmp::Ltu,
                "leu" => Cmp::Leu,
                "gtu" => Cmp::Gtu,
                "geu" => Cmp::Geu,
                "num" => Cmp::Num,
                "nan" => Cmp::Nan,
                _ => continue,
            };
            return Ok(c);
        }
        Err("missing comparison".into())
    }

    fn bool_op(&self) -> Option<BoolOp> {
        if self.has("and") {
            Some(BoolOp::And)
        } else if self.has("or") {
            Some(BoolOp::Or)
        } else if self.has("xor") {
            Some(BoolOp::Xor)
        } else {
            None
        }
    }

    fn atom_op(&self) -> Result<AtomOp, String> {
        for m in &self.mods {
            let o = match *m {
                "add" => AtomOp::Add,
                "min" => AtomOp::Min,
                "max" => AtomOp::Max,
                "inc" => AtomOp::Inc,
                "dec" => AtomOp::Dec,
                "exch" => AtomOp::Exch,
                "cas" => AtomOp::Cas,
                "and" => AtomOp::And,
                "or" => AtomOp::Or,
                "xor" => AtomOp::Xor,
                _ => continue,
            };
            return Ok(o);
        }
        Err("missing atomic operation".into())
    }
}

/// Resolves names and literals of one kernel's instructions.
struct Decoder<'a> {
    syms: &'a HashMap<String, Sym>,
    globals: &'a HashMap<String, u32>,
    labels: &'a HashMap<String, u32>,
    /// The hidden carry-flag register.
    carry_reg: u32,
}

fn literal_bits(l: Literal, neg: bool, ty: Ty) -> u64 {
    match (l, ty) {
        (Literal::Int(v), Ty::F32) => (if neg { -v } else { v } as f32).to_bits() as u64,
        (Literal::Int(v), Ty::F64) => (if neg { -v } else { v } as f64).to_bits(),
        (Literal::Int(v), _) => (if neg { -v } else { v }) as u64,
        (Literal::F32Bits(b), Ty::F64) => {
            let f = f32::from_bits(b) as f64;
            (if neg { -f } else { f }).to_bits()
        }
        (Literal::F32Bits(b), _) => (if neg { b ^ 0x8000_0000 } else { b }) as u64,
        (Literal::F64Bits(b), Ty::F32) => {
            let f = f64::from_bits(b) as f32;
            (if neg { -f } else { f }).to_bits() as u64
        }
        (Literal::F64Bits(b), _) => {
            if neg {
                b ^ (1 << 63)
            } else {
                b
            }
        }
        (Literal::Float(f), Ty::F64) => (if neg { -f } else { f }).to_bits(),
        (Literal::Float(f), Ty::F16) => {
            half::f16::from_f64(if neg { -f } else { f }).to_bits() as u64
        }
        (Literal::Float(f), _) => ((if neg { -f } else { f }) as f32).to_bits() as u64,
    }
}

impl Decoder<'_> {
    /// The state space of an access; `.param` accesses to call parameters go to local memory.
    fn space_of(&self, m: &Mods, addr: &RawOp) -> Space {
        let space = m.space();
        if space == Space::Param && self.is_call_param(addr) {
            return Space::Local;
        }
        space
    }

    fn is_call_param(&self, r: &RawOp) -> bool {
        match r {
            RawOp::Addr(Some(b), _) => self.is_call_param(b),
            RawOp::Name(n) => matches!(self.syms.get(n), Some(Sym::CallParam(_))),
            _ => false,
        }
    }

    /// `call`: only the runtime's `__assertfail` and `vprintf` are implemented.
    fn decode_call(&self, ops: &[RawOp], inst: &mut Inst) -> Result<(), String> {
        let callee = ops
            .iter()
            .position(|o| matches!(o, RawOp::Name(_)) && !self.is_call_param(o));
        let Some(ci) = callee else {
            return Err("call without a callee".into());
        };
        let RawOp::Name(name) = &ops[ci] else {
            return Err("bad callee".into());
        };
        let offset = |o: &RawOp| -> Result<Operand, String> {
            match o {
                RawOp::Name(n) => match self.syms.get(n) {
                    Some(Sym::CallParam(off)) => Ok(Operand::Imm(*off as u64)),
                    _ => Err(format!("call argument `{n}` is not a call parameter")),
                },
                _ => Err("call arguments must be parameters".into()),
            }
        };
        let args = &ops[ci + 1..];
        match name.as_str() {
            // `__assertfail` (optimised builds) and `__assert_fail` (`-G`) share the first four
            // arguments: message, file, line, function.
            "__assertfail" | "__assert_fail" if args.len() >= 4 => {
                inst.op = Op::AssertFail;
                for (i, a) in args.iter().take(4).enumerate() {
                    inst.src[i] = offset(a)?;
                }
            }
            "vprintf" if args.len() == 2 => {
                inst.op = Op::Printf;
                inst.src[0] = offset(&args[0])?;
                inst.src[1] = offset(&args[1])?;
                if ci > 0 {
                    inst.dst[0] = offset(&ops[0])?;
                }
            }
            _ => {
                return Err(format!(
                "call of `{name}` cannot be inlined (recursive beyond {MAX_INLINE_DEPTH} levels, \
                     indirect, predicated, or without a body in this module)"
            ))
            }
        }
        Ok(())
    }
    fn operand(&self, r: &RawOp, ty: Ty) -> Result<Operand, String> {
        Ok(match r {
            RawOp::Reg(i) => Operand::Reg(*i),
            RawOp::Not(inner) => match **inner {
                RawOp::Reg(i) => Operand::NotReg(i),
                _ => return Err("`!` applies only to predicate registers".into()),
            },
            RawOp::Lit(l, neg) => Operand::Imm(literal_bits(*l, *neg, ty)),
            RawOp::Sink => Operand::None,
            RawOp::Name(n) => {
                if let Some(s) = Special::parse(n) {
                    Operand::Special(s)
                } else if let Some(s) = self.syms.get(n) {
                    match *s {
                        Sym::Param(o) | Sym::Shared(o) | Sym::Local(o) | Sym::CallParam(o) => {
                            Operand::Imm(o as u64)
                        }
                    }
                } else if let Some(&g) = self.globals.get(n) {
                    Operand::Global(g)
                } else if n.starts_with('%') {
                    return Err(format!("unknown register `{n}`"));
                } else {
                    return Err(format!("unknown symbol `{n}`"));
                }
            }
            RawOp::Vector(_) => return Err("unexpected vector operand".into()),
            RawOp::Pair(..) => return Err("unexpected `a|b` operand".into()),
            RawOp::Addr(..) => return Err("unexpected address operand".into()),
        })
    }

    fn addr(&self, r: &RawOp) -> Result<Addr, String> {
        let RawOp::Addr(base, off) = r else {
            return Err("expected an address `[...]`".into());
        };
        let mut a = Addr {
            base: Operand::None,
            offset: *off,
        };
        if let Some(b) = base {
            match self.operand(b, Ty::U64)? {
                Operand::Imm(v) => a.offset += v as i64,
                o @ (Operand::Reg(_) | Operand::Global(_)) => a.base = o,
                _ => return Err("bad address base".into()),
            }
        }
        Ok(a)
    }

    fn vector(&self, r: &RawOp, ty: Ty, out: &mut [Operand; 4]) -> Result<usize, String> {
        match r {
            RawOp::Vector(v) => {
                if v.len() > 4 {
                    return Err("vectors of more than 4 elements".into());
                }
                for (i, e) in v.iter().enumerate() {
                    out[i] = self.operand(e, ty)?;
                }
                Ok(v.len())
            }
            other => {
                out[0] = self.operand(other, ty)?;
                Ok(1)
            }
        }
    }

    /// Destination `d` or `d|p`.
    fn dst_pair(&self, r: &RawOp, ty: Ty, inst: &mut Inst) -> Result<(), String> {
        match r {
            RawOp::Pair(a, b) => {
                inst.dst[0] = self.operand(a, ty)?;
                inst.dst[1] = self.operand(b, Ty::Pred)?;
            }
            other => inst.dst[0] = self.operand(other, ty)?,
        }
        Ok(())
    }

    fn decode(&self, ri: &RawInst) -> Result<Inst, String> {
        let m = Mods::new(&ri.opcode);
        let ops = &ri.operands;
        let mut inst = Inst::new(Op::Nop, ri.line);
        inst.guard = ri.guard;
        inst.rnd = m.rnd();
        inst.ftz = m.has("ftz");
        inst.sat = m.has("sat") || m.has("satfinite");
        inst.nan = m.has("NaN");
        let need = |n: usize| -> Result<(), String> {
            if ops.len() < n {
                Err(format!("expected {n} operands, found {}", ops.len()))
            } else {
                Ok(())
            }
        };
        // Most ALU instructions: `op.type d, a[, b[, c]]` with sources of the main type.
        let simple = |inst: &mut Inst, op: Op, n_src: usize| -> Result<(), String> {
            need(1 + n_src)?;
            inst.op = op;
            inst.ty = m.ty(0)?;
            inst.dst[0] = self.operand(&ops[0], inst.ty)?;
            for i in 0..n_src {
                inst.src[i] = self.operand(&ops[1 + i], inst.ty)?;
            }
            Ok(())
        };
        match m.base {
            "mov" => {
                need(2)?;
                inst.ty = m.ty(0)?;
                let parts = |n: usize| Ty::parse(&format!("b{}", inst.ty.bits() / n as u32));
                match (&ops[0], &ops[1]) {
                    (RawOp::Vector(d), _) => {
                        inst.op = Op::Unpack;
                        let et = parts(d.len()).ok_or("bad unpack")?;
                        self.vector(&ops[0], et, &mut inst.dst)?;
                        inst.ty2 = et;
                        inst.src[0] = self.operand(&ops[1], inst.ty)?;
                    }
                    (_, RawOp::Vector(s)) => {
                        inst.op = Op::Pack;
                        let et = parts(s.len()).ok_or("bad pack")?;
                        inst.dst[0] = self.operand(&ops[0], inst.ty)?;
                        self.vector(&ops[1], et, &mut inst.src)?;
                        inst.ty2 = et;
                    }
                    _ => simple(&mut inst, Op::Mov, 1)?,
                }
            }
            "add" | "sub" | "addc" | "subc" | "madc" if m.has("cc") || m.base.ends_with('c') => {
                let kind = match m.base {
                    "add" | "addc" => CarryKind::Add,
                    "sub" | "subc" => CarryKind::Sub,
                    _ if m.has("hi") => CarryKind::MadHi,
                    _ => CarryKind::MadLo,
                };
                let carry_in = m.base.ends_with('c');
                let n = if matches!(kind, CarryKind::Add | CarryKind::Sub) {
                    2
                } else {
                    3
                };
                simple(
                    &mut inst,
                    Op::Carry {
                        kind,
                        carry_in,
                        carry_out: m.has("cc"),
                    },
                    n,
                )?;
                inst.src[3] = Operand::Reg(self.carry_reg);
                inst.dst[1] = Operand::Reg(self.carry_reg);
            }
            "mad" if m.has("cc") => {
                let kind = if m.has("hi") {
                    CarryKind::MadHi
                } else {
                    CarryKind::MadLo
                };
                simple(
                    &mut inst,
                    Op::Carry {
                        kind,
                        carry_in: false,
                        carry_out: true,
                    },
                    3,
                )?;
                inst.src[3] = Operand::Reg(self.carry_reg);
                inst.dst[1] = Operand::Reg(self.carry_reg);
            }
            "add" | "sub" => simple(
                &mut inst,
                if m.base == "add" { Op::Add } else { Op::Sub },
                2,
            )?,
            "mul" | "mad" | "mul24" | "mad24" => {
                let mode = m.mul_mode();
                let n = if m.base.starts_with("mul") { 2 } else { 3 };
                if m.has("cc") {
                    return Err("carry (`.cc`) arithmetic is not implemented".into());
                }
                let op = match m.base {
                    "mul" => Op::Mul(mode),
                    "mad" if m.ty(0)?.is_float() => Op::Fma,
                    "mad" => Op::Mad(mode),
                    "mul24" => Op::Mul24(mode),
                    _ => Op::Mad24(mode),
                };
                simple(&mut inst, op, n)?;
                if mode == MulMode::Wide {
                    // Sources have the suffix type, the destination (and `mad`'s addend) twice it.
                    let wide = match inst.ty {
                        Ty::U16 => Ty::U32,
                        Ty::S16 => Ty::S32,
                        Ty::U32 => Ty::U64,
                        Ty::S32 => Ty::S64,
                        _ => return Err("bad type for `.wide`".into()),
                    };
                    inst.ty2 = wide;
                    if n == 3 {
                        inst.src[2] = self.operand(&ops[3], wide)?;
                    }
                }
            }
            "sad" => simple(&mut inst, Op::Sad, 3)?,
            "fma" => simple(&mut inst, Op::Fma, 3)?,
            "div" => simple(&mut inst, Op::Div, 2)?,
            "rem" => simple(&mut inst, Op::Rem, 2)?,
            "abs" => simple(&mut inst, Op::Abs, 1)?,
            "neg" => simple(&mut inst, Op::Neg, 1)?,
            "min" | "max" => {
                if m.has("xorsign") || m.has("relu") {
                    return Err("`.xorsign`/`.relu` min/max are not implemented".into());
                }
                simple(
                    &mut inst,
                    if m.base == "min" { Op::Min } else { Op::Max },
                    2,
                )?
            }
            "copysign" => simple(&mut inst, Op::Copysign, 2)?,
            "and" => simple(&mut inst, Op::And, 2)?,
            "or" => simple(&mut inst, Op::Or, 2)?,
            "xor" => simple(&mut inst, Op::Xor, 2)?,
            "not" => simple(&mut inst, Op::Not, 1)?,
            "cnot" => simple(&mut inst, Op::Cnot, 1)?,
            "shl" | "shr" => {
                simple(
                    &mut inst,
                    if m.base == "shl" { Op::Shl } else { Op::Shr },
                    2,
                )?;
                inst.src[1] = self.operand(&ops[2], Ty::U32)?;
            }
            "bfe" => {
                simple(&mut inst, Op::Bfe, 3)?;
                inst.src[1] = self.operand(&ops[2], Ty::U32)?;
                inst.src[2] = self.operand(&ops[3], Ty::U32)?;
            }
            "bfi" => {
                need(5)?;
                simple(&mut inst, Op::Bfi, 4)?;
                inst.src[2] = self.operand(&ops[3], Ty::U32)?;
                inst.src[3] = self.operand(&ops[4], Ty::U32)?;
            }
            "popc" | "clz" | "brev" | "bfind" => {
                let op = match m.base {
                    "popc" => Op::Popc,
                    "clz" => Op::Clz,
                    "brev" => Op::Brev,
                    _ => Op::Bfind {
                        shiftamt: m.has("shiftamt"),
                    },
                };
                simple(&mut inst, op, 1)?;
                if m.base != "brev" {
                    inst.dst[0] = self.operand(&ops[0], Ty::U32)?;
                }
            }
            "prmt" => {
                if m.mods
                    .iter()
                    .any(|x| matches!(*x, "f4e" | "b4e" | "rc8" | "ecl" | "ecr" | "rc16"))
                {
                    return Err("`prmt` modes other than the default are not implemented".into());
                }
                simple(&mut inst, Op::Prmt, 3)?
            }
            "lop3" => {
                simple(&mut inst, Op::Lop3, 4)?;
            }
            "shf" => {
                let op = Op::Shf {
                    left: m.has("l"),
                    clamp: m.has("clamp"),
                };
                simple(&mut inst, op, 3)?;
            }
            "setp" | "set" => {
                let cmp = m.cmp()?;
                let combine = m.bool_op();
                let (dt, ct) = if m.base == "setp" {
                    (Ty::Pred, m.ty(0)?)
                } else {
                    (m.ty(0)?, m.ty(1)?)
                };
                let n = if combine.is_some() { 3 } else { 2 };
                need(1 + n)?;
                inst.op = if m.base == "setp" {
                    Op::Setp { cmp, combine }
                } else {
                    Op::Set { cmp, combine }
                };
                inst.ty = dt;
                inst.ty2 = ct;
                self.dst_pair(&ops[0], dt, &mut inst)?;
                inst.src[0] = self.operand(&ops[1], ct)?;
                inst.src[1] = self.operand(&ops[2], ct)?;
                if combine.is_some() {
                    inst.src[2] = self.operand(&ops[3], Ty::Pred)?;
                }
            }
            "selp" => {
                simple(&mut inst, Op::Selp, 3)?;
                inst.src[2] = self.operand(&ops[3], Ty::Pred)?;
            }
            "slct" => {
                simple(&mut inst, Op::Slct, 3)?;
                inst.ty2 = m.ty(1)?;
                inst.src[2] = self.operand(&ops[3], inst.ty2)?;
            }
            "cvt" => {
                need(2)?;
                inst.op = Op::Cvt;
                inst.ty = m.ty(0)?;
                inst.ty2 = m.ty(1)?;
                if matches!(inst.ty2, Ty::F16x2 | Ty::Bf16x2) {
                    return Err("conversions from packed halves are not implemented".into());
                }
                if matches!(inst.ty, Ty::F16x2 | Ty::Bf16x2) {
                    // `cvt.rn.f16x2.f32 d, a, b`: `a` goes to the upper half, `b` the lower.
                    need(3)?;
                    if inst.ty2 != Ty::F32 {
                        return Err("packed half conversions take f32 sources".into());
                    }
                    inst.src[1] = self.operand(&ops[2], inst.ty2)?;
                }
                inst.dst[0] = self.operand(&ops[0], inst.ty)?;
                inst.src[0] = self.operand(&ops[1], inst.ty2)?;
            }
            "cvta" => {
                let to = m.has("to");
                simple(
                    &mut inst,
                    Op::Cvta {
                        to,
                        space: m.space(),
                    },
                    1,
                )?;
            }
            "rcp" | "sqrt" | "rsqrt" | "ex2" | "lg2" | "sin" | "cos" | "tanh" => {
                let op = match m.base {
                    "rcp" => Op::Rcp,
                    "sqrt" => Op::Sqrt,
                    "rsqrt" => Op::Rsqrt,
                    "ex2" => Op::Ex2,
                    "lg2" => Op::Lg2,
                    "sin" => Op::Sin,
                    "cos" => Op::Cos,
                    _ => Op::Tanh,
                };
                simple(&mut inst, op, 1)?;
                if !matches!(inst.ty, Ty::F32 | Ty::F64) {
                    return Err("only f32 and f64 transcendentals are implemented".into());
                }
            }
            "testp" => {
                let kind = if m.has("finite") {
                    TestKind::Finite
                } else if m.has("infinite") {
                    TestKind::Infinite
                } else if m.has("number") {
                    TestKind::Number
                } else if m.has("notanumber") {
                    TestKind::NotANumber
                } else if m.has("normal") {
                    TestKind::Normal
                } else {
                    TestKind::Subnormal
                };
                need(2)?;
                inst.op = Op::Testp(kind);
                inst.ty = m.ty(0)?;
                inst.dst[0] = self.operand(&ops[0], Ty::Pred)?;
                inst.src[0] = self.operand(&ops[1], inst.ty)?;
            }
            "ld" | "ldu" => {
                need(2)?;
                inst.ty = m.ty(0)?;
                if inst.ty == Ty::B128 {
                    return Err("128-bit loads are not implemented".into());
                }
                let n = self.vector(&ops[0], inst.ty, &mut inst.dst)?;
                inst.op = Op::Ld {
                    space: self.space_of(&m, &ops[1]),
                    vec: n as u8,
                };
                if n as u8 != m.vec() {
                    return Err("vector width does not match the destination".into());
                }
                inst.addr = self.addr(&ops[1])?;
            }
            "st" => {
                need(2)?;
                inst.ty = m.ty(0)?;
                if inst.ty == Ty::B128 {
                    return Err("128-bit stores are not implemented".into());
                }
                let n = self.vector(&ops[1], inst.ty, &mut inst.src)?;
                inst.op = Op::St {
                    space: self.space_of(&m, &ops[0]),
                    vec: n as u8,
                };
                if n as u8 != m.vec() {
                    return Err("vector width does not match the source".into());
                }
                inst.addr = self.addr(&ops[0])?;
            }
            "atom" | "red" => {
                let op = m.atom_op()?;
                inst.ty = m.ty(0)?;
                if m.vec() != 1 || matches!(inst.ty, Ty::F16 | Ty::F16x2 | Ty::Bf16 | Ty::Bf16x2) {
                    return Err("vector and half-precision atomics are not implemented".into());
                }
                let space = m.space();
                let (a, first) = if m.base == "atom" {
                    need(3)?;
                    inst.dst[0] = self.operand(&ops[0], inst.ty)?;
                    inst.op = Op::Atom { space, op };
                    (1, 2)
                } else {
                    need(2)?;
                    inst.op = Op::Red { space, op };
                    (0, 1)
                };
                inst.addr = self.addr(&ops[a])?;
                for (i, o) in ops[first..].iter().enumerate().take(2) {
                    inst.src[i] = self.operand(o, inst.ty)?;
                }
                if op == AtomOp::Cas && ops.len() < first + 2 {
                    return Err("`atom.cas` needs two values".into());
                }
            }
            "cp" if m.has("async") => {
                if m.has("commit_group") || m.has("wait_group") || m.has("wait_all") {
                    inst.op = Op::Nop;
                } else if m.has("bulk") || m.has("mbarrier") {
                    return Err("bulk and mbarrier copies are not implemented".into());
                } else {
                    need(3)?;
                    inst.op = Op::CpAsync;
                    inst.addr = self.addr(&ops[0])?;
                    inst.addr2 = self.addr(&ops[1])?;
                    inst.src[0] = self.operand(&ops[2], Ty::U32)?;
                    inst.src[1] = match ops.get(3) {
                        Some(o) => self.operand(o, Ty::U32)?,
                        None => inst.src[0],
                    };
                }
            }
            "membar" | "fence" | "prefetch" | "prefetchu" | "nanosleep" | "pmevent" | "discard"
            | "applypriority" | "createpolicy" => {
                if m.base == "createpolicy" {
                    return Err("`createpolicy` is not implemented".into());
                }
                inst.op = Op::Nop;
            }
            "bra" | "brx" => {
                if m.base == "brx" {
                    return Err("indirect branches (`brx.idx`) are not implemented".into());
                }
                need(1)?;
                inst.op = Op::Bra;
                let RawOp::Name(l) = &ops[0] else {
                    return Err("bad branch target".into());
                };
                inst.target = *self
                    .labels
                    .get(l)
                    .ok_or_else(|| format!("unknown label `{l}`"))?;
            }
            "exit" | "ret" => inst.op = Op::Exit,
            "trap" | "brkpt" => inst.op = Op::Trap,
            "bar" | "barrier" => {
                if m.has("warp") {
                    inst.op = Op::BarWarp;
                } else if m.has("red") {
                    // `bar.red.popc.u32 d, id, p` / `bar.red.and.pred d, id, p`.
                    need(3)?;
                    let kind = if m.has("popc") {
                        BarRed::Popc
                    } else if m.has("and") {
                        BarRed::And
                    } else {
                        BarRed::Or
                    };
                    inst.op = Op::BarRed(kind);
                    inst.ty = m.ty(0)?;
                    inst.dst[0] = self.operand(&ops[0], inst.ty)?;
                    inst.src[0] = self.operand(&ops[1], Ty::U32)?;
                    let (count, pred) = if ops.len() == 4 {
                        (Some(&ops[2]), &ops[3])
                    } else {
                        (None, &ops[2])
                    };
                    inst.src[2] = self.operand(pred, Ty::Pred)?;
                    if let Some(c) = count {
                        inst.src[1] = self.operand(c, Ty::U32)?;
                    }
                } else if m.has("arrive") {
                    return Err("`bar.arrive` is not implemented".into());
                } else {
                    need(1)?;
                    inst.op = Op::Bar;
                    inst.src[0] = self.operand(&ops[0], Ty::U32)?;
                    if let Some(c) = ops.get(1) {
                        inst.src[1] = self.operand(c, Ty::U32)?;
                    }
                }
            }
            "shfl" => {
                let mode = if m.has("up") {
                    ShflMode::Up
                } else if m.has("down") {
                    ShflMode::Down
                } else if m.has("bfly") {
                    ShflMode::Bfly
                } else {
                    ShflMode::Idx
                };
                need(4)?;
                inst.op = Op::Shfl(mode);
                inst.ty = Ty::B32;
                self.dst_pair(&ops[0], Ty::B32, &mut inst)?;
                for i in 0..3 {
                    inst.src[i] = self.operand(&ops[1 + i], Ty::U32)?;
                }
                inst.src[3] = match ops.get(4) {
                    Some(o) => self.operand(o, Ty::U32)?,
                    None => Operand::Imm(u32::MAX as u64),
                };
            }
            "vote" => {
                let mode = if m.has("all") {
                    VoteMode::All
                } else if m.has("any") {
                    VoteMode::Any
                } else if m.has("uni") {
                    VoteMode::Uni
                } else {
                    VoteMode::Ballot
                };
                need(2)?;
                inst.op = Op::Vote(mode);
                inst.dst[0] = self.operand(&ops[0], Ty::U32)?;
                inst.src[0] = self.operand(&ops[1], Ty::Pred)?;
                inst.src[1] = match ops.get(2) {
                    Some(o) => self.operand(o, Ty::U32)?,
                    None => Operand::Imm(u32::MAX as u64),
                };
            }
            "activemask" => {
                need(1)?;
                inst.op = Op::Activemask;
                inst.dst[0] = self.operand(&ops[0], Ty::U32)?;
            }
            "redux" => {
                let op = m.atom_op()?;
                simple(&mut inst, Op::Redux(op), 2)?;
                if inst.ty.is_float() {
                    return Err("floating-point `redux` is not implemented".into());
                }
                inst.src[1] = self.operand(&ops[2], Ty::U32)?;
            }
            "match" => {
                need(3)?;
                inst.op = if m.has("all") {
                    Op::MatchAll
                } else {
                    Op::MatchAny
                };
                inst.ty = m.ty(0)?;
                self.dst_pair(&ops[0], Ty::B32, &mut inst)?;
                inst.src[0] = self.operand(&ops[1], inst.ty)?;
                inst.src[1] = self.operand(&ops[2], Ty::U32)?;
            }
            "call" => self.decode_call(ops, &mut inst)?,
            _ => return Err("unknown instruction".into()),
        }
        Ok(inst)
    }
}

pub(super) fn decode_kernel(
    rk: RawKernel,
    globals: &HashMap<String, u32>,
    files: &HashMap<u32, String>,
) -> Kernel {
    // A hidden register holds each thread's carry flag (`CC.CF`).
    let mut reg_names = rk.reg_names.clone();
    let carry_reg = reg_names.len() as u32;
    reg_names.push("%cc".to_string());
    let dec = Decoder {
        syms: &rk.syms,
        globals,
        labels: &rk.labels,
        carry_reg,
    };
    let mut insts = Vec::with_capacity(rk.insts.len() + 1);
    let mut texts = Vec::with_capacity(rk.insts.len() + 1);
    let mut unsupported = Vec::new();
    let mut sources = Vec::with_capacity(rk.insts.len() + 1);
    for ri in &rk.insts {
        let inst = match dec.decode(ri) {
            Ok(mut i) => {
                i.fast = super::alu::classify(&i);
                i
            }
            Err(reason) => {
                let mut i = Inst::new(Op::Unsupported(unsupported.len() as u32), ri.line);
                i.guard = ri.guard;
                unsupported.push(reason);
                i
            }
        };
        insts.push(inst);
        texts.push(ri.text.clone());
        sources.push(ri.loc.map(|(f, l)| {
            let file = files
                .get(&f)
                .map_or("?", |n| n.rsplit('/').next().unwrap_or(n));
            format!("{file}:{l}")
        }));
    }
    // Falling off the end of the body exits.
    insts.push(Inst::new(Op::Exit, rk.insts.last().map_or(0, |i| i.line)));
    texts.push("<end of kernel>".to_string());
    sources.push(None);
    Kernel {
        name: rk.name,
        params: rk.params,
        param_size: rk.param_size,
        insts,
        texts,
        sources,
        reg_names,
        static_shared: rk.static_shared,
        local_size: rk.local_size,
        unsupported,
    }
}
