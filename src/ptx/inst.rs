//! Decoded instructions: a compact form with registers resolved to indices, built once at load.

/// A PTX data type as written in an instruction suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    B8,
    B16,
    B32,
    B64,
    B128,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    F16x2,
    Bf16,
    Bf16x2,
    F32,
    F64,
    Pred,
}

impl Ty {
    pub(crate) fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "b128" => Ty::B128,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "f16x2" => Ty::F16x2,
            "bf16" => Ty::Bf16,
            "bf16x2" => Ty::Bf16x2,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }

    /// Width in bits (predicates count as 1).
    pub(crate) fn bits(self) -> u32 {
        match self {
            Ty::Pred => 1,
            Ty::B8 | Ty::U8 | Ty::S8 => 8,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::Bf16 => 16,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::F16x2 | Ty::Bf16x2 => 32,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 64,
            Ty::B128 => 128,
        }
    }

    /// Width in bytes of one memory element.
    pub(crate) fn bytes(self) -> u32 {
        self.bits().div_ceil(8)
    }

    pub(crate) fn is_signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }

    pub(crate) fn is_float(self) -> bool {
        matches!(
            self,
            Ty::F16 | Ty::F16x2 | Ty::Bf16 | Ty::Bf16x2 | Ty::F32 | Ty::F64
        )
    }
}

/// Special (read-only) registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
    WarpId,
    NWarpId,
    SmId,
    NSmId,
    GridId,
    Clock,
    Clock64,
    GlobalTimer,
    LaneMaskEq,
    LaneMaskLt,
    LaneMaskLe,
    LaneMaskGt,
    LaneMaskGe,
    DynamicSmemSize,
    TotalSmemSize,
}

impl Special {
    pub(crate) fn parse(s: &str) -> Option<Special> {
        let dim = |c: &str| match c {
            "x" => Some(0u8),
            "y" => Some(1),
            "z" => Some(2),
            _ => None,
        };
        if let Some((head, tail)) = s.split_once('.') {
            let d = dim(tail)?;
            return Some(match head {
                "%tid" => Special::Tid(d),
                "%ntid" => Special::Ntid(d),
                "%ctaid" => Special::Ctaid(d),
                "%nctaid" => Special::Nctaid(d),
                _ => return None,
            });
        }
        Some(match s {
            "%laneid" => Special::LaneId,
            "%warpid" => Special::WarpId,
            "%nwarpid" => Special::NWarpId,
            "%smid" => Special::SmId,
            "%nsmid" => Special::NSmId,
            "%gridid" => Special::GridId,
            "%clock" => Special::Clock,
            "%clock64" => Special::Clock64,
            "%globaltimer" => Special::GlobalTimer,
            "%lanemask_eq" => Special::LaneMaskEq,
            "%lanemask_lt" => Special::LaneMaskLt,
            "%lanemask_le" => Special::LaneMaskLe,
            "%lanemask_gt" => Special::LaneMaskGt,
            "%lanemask_ge" => Special::LaneMaskGe,
            "%dynamic_smem_size" => Special::DynamicSmemSize,
            "%total_smem_size" => Special::TotalSmemSize,
            _ => return None,
        })
    }
}

/// One instruction operand after name resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Operand {
    /// Absent operand or the sink `_`.
    #[default]
    None,
    /// A register, by index into the kernel's register file.
    Reg(u32),
    /// A predicate register read negated (`!%p`).
    NotReg(u32),
    /// An immediate, as raw bits.
    Imm(u64),
    /// A special register.
    Special(Special),
    /// The address of a module-scope `.global`/`.const` variable, by index; known at launch.
    Global(u32),
}

/// A memory operand `[base+offset]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Addr {
    pub base: Operand,
    pub offset: i64,
}

/// The state space an access names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Space {
    #[default]
    Generic,
    Global,
    Shared,
    Local,
    Param,
    Const,
}

/// Rounding modifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Rnd {
    #[default]
    None,
    Rn,
    Rz,
    Rm,
    Rp,
    Rni,
    Rzi,
    Rmi,
    Rpi,
}

/// Comparison of `setp`/`set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

/// Boolean combination of `setp` with a third predicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BoolOp {
    And,
    Or,
    Xor,
}

/// Which part of a product `mul`/`mad` keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum MulMode {
    #[default]
    Lo,
    Hi,
    Wide,
}

/// The arithmetic of a carry instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CarryKind {
    Add,
    Sub,
    MadLo,
    MadHi,
}

/// Read-modify-write operation of `atom`/`red`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtomOp {
    Add,
    Min,
    Max,
    Inc,
    Dec,
    Exch,
    Cas,
    And,
    Or,
    Xor,
}

/// Lane selection of `shfl.sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

/// Mode of `vote.sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VoteMode {
    All,
    Any,
    Uni,
    Ballot,
}

/// Reduction of `bar.red`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BarRed {
    Popc,
    And,
    Or,
}

/// Property tested by `testp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TestKind {
    Finite,
    Infinite,
    Number,
    NotANumber,
    Normal,
    Subnormal,
}

/// The operation; together with the types and modifiers in [`Inst`] it fixes the semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Mov,
    /// `mov.bN d, {a, b, ..}`: concatenate sources, first in the low bits.
    Pack,
    /// `mov.bN {a, b, ..}, s`: split a source.
    Unpack,
    Add,
    Sub,
    Mul(MulMode),
    Mad(MulMode),
    Mul24(MulMode),
    Mad24(MulMode),
    Sad,
    /// Extended-precision arithmetic through the carry flag (`add.cc`, `addc`, `sub.cc`,
    /// `subc`, `mad.lo.cc`, `madc.hi`, ...): `src[3]` is the flag register, read when
    /// `carry_in`, written (as `dst[1]`) when `carry_out`.
    Carry {
        kind: CarryKind,
        carry_in: bool,
        carry_out: bool,
    },
    Fma,
    Div,
    Rem,
    Abs,
    Neg,
    Min,
    Max,
    Copysign,
    And,
    Or,
    Xor,
    Not,
    Cnot,
    Shl,
    Shr,
    Bfe,
    Bfi,
    Popc,
    Clz,
    Brev,
    Bfind {
        shiftamt: bool,
    },
    Prmt,
    Lop3,
    Shf {
        left: bool,
        clamp: bool,
    },
    Setp {
        cmp: Cmp,
        combine: Option<BoolOp>,
    },
    Set {
        cmp: Cmp,
        combine: Option<BoolOp>,
    },
    Selp,
    Slct,
    Cvt,
    Cvta {
        to: bool,
        space: Space,
    },
    Rcp,
    Sqrt,
    Rsqrt,
    Ex2,
    Lg2,
    Sin,
    Cos,
    Tanh,
    Testp(TestKind),
    Ld {
        space: Space,
        vec: u8,
    },
    St {
        space: Space,
        vec: u8,
    },
    Atom {
        space: Space,
        op: AtomOp,
    },
    Red {
        space: Space,
        op: AtomOp,
    },
    /// `cp.async` (performed at once): copy `src[0]` bytes from `addr2` to `addr`, reading only
    /// `src[1]` bytes and zero-filling the rest.
    CpAsync,
    Nop,
    Bra,
    Exit,
    Bar,
    /// `bar.red`: a block barrier that also reduces a predicate over the block.
    BarRed(BarRed),
    BarWarp,
    /// `call __assertfail`: a failed device-side `assert`; `src` hold the arguments' local
    /// offsets (message, file, line, function).
    AssertFail,
    /// `call vprintf`: device `printf`; `src[0..2]` are the arguments' local offsets, `dst[0]`
    /// the return value's (an immediate, or none).
    Printf,
    Trap,
    Shfl(ShflMode),
    Vote(VoteMode),
    Activemask,
    Redux(AtomOp),
    MatchAny,
    MatchAll,
    /// An instruction the interpreter cannot run; index into the kernel's reasons.
    Unsupported(u32),
}

/// One decoded instruction.
#[derive(Debug, Clone)]
pub(crate) struct Inst {
    pub op: Op,
    /// Main type (the destination type for `cvt`).
    pub ty: Ty,
    /// Second type: the source type of `cvt`, `setp`'s compare type for `set`, `slct`'s selector.
    pub ty2: Ty,
    pub rnd: Rnd,
    pub ftz: bool,
    pub sat: bool,
    /// `min`/`max` with `.NaN`, `bra` target for branches is in `target`.
    pub nan: bool,
    /// Guard predicate register and whether it is negated.
    pub guard: Option<(u32, bool)>,
    /// Destinations (vector elements, or `d|p` pairs).
    pub dst: [Operand; 4],
    /// Sources.
    pub src: [Operand; 4],
    /// Memory operand of loads, stores and atomics (the destination of `cp.async`).
    pub addr: Addr,
    /// Source address of `cp.async`.
    pub addr2: Addr,
    /// Branch target (instruction index).
    pub target: u32,
    /// 1-based source line.
    pub line: u32,
    /// The specialised lane loop, if one applies (set after decoding).
    pub fast: super::alu::Fast,
}

impl Inst {
    pub(crate) fn new(op: Op, line: u32) -> Inst {
        Inst {
            op,
            ty: Ty::B32,
            ty2: Ty::B32,
            rnd: Rnd::None,
            ftz: false,
            sat: false,
            nan: false,
            guard: None,
            dst: [Operand::None; 4],
            src: [Operand::None; 4],
            addr: Addr::default(),
            addr2: Addr::default(),
            target: 0,
            line,
            fast: super::alu::Fast::None,
        }
    }
}
