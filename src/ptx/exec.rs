//! The block executor: schedules the warps of one block (divergence, reconvergence, barriers)
//! and executes instructions; memory access and its checks live in `memory`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::error::{FaultSite, PtxError, PtxResult};
mod memory;

use memory::{read_le, write_le, Access};

use super::alu::*;
use super::inst::*;
use super::machine::{LaunchOptions, Region};
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

/// `d = a * b + c` on the f32 bits of 32 lanes, rounded once.
#[inline]
fn fma_lanes(a: &[u64; 32], b: &[u64; 32], c: &[u64; 32], d: &mut [u64; 32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports FMA, checked just above.
            unsafe { fma_lanes_hw(a, b, c, d) };
            return;
        }
    }
    for i in 0..32 {
        d[i] = f32b(f32v(a[i]).mul_add(f32v(b[i]), f32v(c[i])));
    }
}

/// [`fma_lanes`] compiled with the FMA instruction set, so `mul_add` is one instruction
/// rather than a libm call (the default x86-64 target has no FMA).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn fma_lanes_hw(a: &[u64; 32], b: &[u64; 32], c: &[u64; 32], d: &mut [u64; 32]) {
    for i in 0..32 {
        d[i] = f32b(f32v(a[i]).mul_add(f32v(b[i]), f32v(c[i])));
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

/// Shadow state of one shared byte for the race and initialisation checks, 16 bytes so the
/// shadow of a typical tile stays in the L1 cache. Steps are [`BlockExec::step`] stamps (0:
/// never); an access belongs to the current barrier interval when its stamp is later than
/// `barrier_step`.
#[derive(Clone, Copy, Default)]
struct Shadow {
    /// Last write: stamp, thread, instruction index (saturated at `u16::MAX`).
    w_step: u32,
    w_tid: u16,
    w_pc: u16,
    /// First read of the interval: stamp, thread (`MANY_WARPS` set once a second warp read),
    /// instruction index.
    r_step: u32,
    r_tid: u16,
    r_pc: u16,
}

/// Warp instructions a warp runs before the next warp's turn. Long slices keep a warp's
/// registers in cache; the slice only matters for warps that wait on each other by spinning.
const WARP_SLICE: u64 = 1 << 14;

/// Flag in `Shadow::r_tid`: threads of more than one warp read the byte in this interval.
const MANY_WARPS: u16 = 0x8000;

/// Executes blocks of one launch, one at a time; each worker thread owns one.
pub(crate) struct BlockExec<'a> {
    ctx: &'a LaunchCtx<'a>,
    nthreads: u32,
    nwarps: u32,
    block_idx: [u32; 3],
    shared: Vec<u8>,
    shadow: Vec<Shadow>,
    check_shadow: bool,
    /// Warp steps executed by this executor: a unique stamp per warp instruction, never reset
    /// between blocks (so stale shadow entries look old), restarted only before it overflows.
    step: u64,
    /// `step` of each warp's last warp-synchronising instruction (`bar.warp.sync`,
    /// `shfl.sync`, `vote.sync`, ...), for the strict intra-warp race check.
    warp_sync_step: Vec<u64>,
    /// `step` when the current block started, and when its last barrier opened.
    block_step: u64,
    barrier_step: u64,
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
            block_step: 0,
            barrier_step: 0,
            warp_sync_step: vec![0; nwarps as usize],
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

    /// Records that the current warp executed a warp-synchronising instruction.
    fn warp_synced(&mut self) {
        self.warp_sync_step[self.cur_warp as usize] = self.step;
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
        if self.step > (u32::MAX / 2) as u64 {
            // Shadow stamps are 32-bit: start over before they could wrap within a block.
            self.shadow.fill(Shadow::default());
            self.step = 0;
        }
        self.step += 1;
        self.block_step = self.step;
        self.barrier_step = self.step;
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
            // Round-robin in slices, so a warp spinning on a flag another warp sets (through
            // shared or global memory) lets that warp run.
            let mut any_ran = true;
            while any_ran {
                any_ran = false;
                for (wi, w) in warps.iter_mut().enumerate() {
                    if w.active != 0 {
                        self.cur_warp = wi as u32;
                        self.run_warp(w)?;
                        any_ran = true;
                    }
                }
            }
            // Every warp now waits at the barrier or has exited.
            if warps.iter().all(|w| w.live == 0) || self.ctx.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            self.barrier_step = self.step;
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
        let slice_end = self.step + WARP_SLICE;
        while w.active != 0 && self.step < slice_end {
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
            if self.step - self.block_step > limit {
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
            Special::Clock => (self.step - self.block_step) as u32,
            Special::Clock64 | Special::GlobalTimer => return self.step - self.block_step,
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
                    if total == 0 {
                        continue;
                    }
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
            Op::Carry {
                kind,
                carry_in,
                carry_out,
            } => {
                let bits = inst.ty.bits();
                let m = mask_of(bits) as u128;
                for lane in Lanes(mask) {
                    let a = self.val(w, inst.src[0], lane) as u128 & m;
                    let b = self.val(w, inst.src[1], lane) as u128 & m;
                    let c = self.val(w, inst.src[2], lane) as u128 & m;
                    let cin = (carry_in && self.val(w, inst.src[3], lane) != 0) as u128;
                    let product = |hi: bool| -> u128 {
                        let p = if inst.ty.is_signed() {
                            (sext(a as u64, bits) as i128 * sext(b as u64, bits) as i128) as u128
                        } else {
                            a * b
                        };
                        (if hi { p >> bits } else { p }) & m
                    };
                    let (r, cout) = match kind {
                        CarryKind::Add => {
                            let r = a + b + cin;
                            (r, r >> bits != 0)
                        }
                        CarryKind::Sub => (a.wrapping_sub(b).wrapping_sub(cin), a < b + cin),
                        CarryKind::MadLo | CarryKind::MadHi => {
                            let r = product(kind == CarryKind::MadHi) + c + cin;
                            (r, r >> bits != 0)
                        }
                    };
                    Self::write(w, inst.dst[0], lane, (r & m) as u64);
                    if carry_out {
                        Self::write(w, inst.dst[1], lane, cout as u64);
                    }
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
            Op::Shfl(mode) => {
                self.warp_synced();
                self.shfl(w, inst, mask, mode, pc)?
            }
            Op::Vote(mode) => {
                self.warp_synced();
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
                self.warp_synced();
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
                self.warp_synced();
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
            Op::BarWarp => self.warp_synced(),
            Op::Nop | Op::Trap => {}
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
                        fma_lanes(&a, &b, &c, &mut d);
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
}
