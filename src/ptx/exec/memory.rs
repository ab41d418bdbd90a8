//! Memory for the block executor: address resolution, global/shared/local/param access,
//! atomics, the shared-memory race and initialisation checks, and device printf.

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::super::alu::rmw;
use super::super::error::{PtxError, PtxResult};
use super::super::inst::*;
use super::super::machine::{LOCAL_WINDOW, PARAM_WINDOW, SHARED_WINDOW, WINDOW_SIZE};
use super::{BlockExec, Warp, MANY_WARPS};

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
pub(super) enum Loc {
    Global(u64),
    Shared(u64),
    Local(u64),
    Param(u64),
}

/// Access kinds, for error messages and the race check.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    Write,
    Atomic,
}

impl Access {
    pub(super) fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Atomic => "atomic",
        }
    }
}

impl BlockExec<'_> {
    /// Reads a NUL-terminated string (at most 4 KiB) at a generic address.
    pub(super) fn read_cstr(
        &mut self,
        w: &Warp,
        addr: u64,
        lane: usize,
        pc: usize,
    ) -> PtxResult<String> {
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
    pub(super) fn format_printf(
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
    pub(super) fn address(&self, w: &Warp, a: &Addr, lane: usize) -> u64 {
        self.val(w, a.base, lane).wrapping_add(a.offset as u64)
    }

    #[inline]
    pub(super) fn locate(&self, space: Space, addr: u64) -> Loc {
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

    pub(super) fn check_align(
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
    pub(super) fn global_ptr(
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

    pub(super) fn global_oob(
        &self,
        addr: u64,
        size: u32,
        a: Access,
        lane: usize,
        pc: usize,
    ) -> PtxError {
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

    pub(super) fn shared_range(
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
    #[inline(always)]
    pub(super) fn shadow_access(
        &mut self,
        off: usize,
        size: u32,
        a: Access,
        lane: usize,
        pc: usize,
    ) -> PtxResult<()> {
        let tid = (self.cur_warp * 32 + lane as u32) as u16;
        let warp = self.cur_warp as u16;
        let step = self.step as u32;
        let (since, block) = (self.barrier_step as u32, self.block_step as u32);
        let pc16 = pc.min(u16::MAX as usize) as u16;
        let races = self.ctx.options.check_shared_races && a != Access::Atomic;
        // Strict mode: lanes of one warp are ordered only by a warp-synchronising instruction
        // since the other access (or by being the same instruction, for reads).
        let strict = races && self.ctx.options.check_warp_sync;
        let synced = self.warp_sync_step[self.cur_warp as usize].max(self.barrier_step) as u32;
        let uninit = self.ctx.options.check_uninitialized_shared && a != Access::Write;
        let Some(cells) = self.shadow.get_mut(off..off + size as usize) else {
            return Ok(());
        };
        let mut conflict = None;
        for (i, sh) in cells.iter_mut().enumerate() {
            if uninit && sh.w_step < block {
                conflict = Some((i, None));
                break;
            }
            if races {
                if sh.w_step > since
                    && sh.w_tid != tid
                    && (sh.w_tid / 32 != warp
                        || (a == Access::Write && sh.w_step == step)
                        || (strict && sh.w_step > synced && sh.w_step != step))
                {
                    conflict = Some((i, Some(("write", sh.w_tid, sh.w_pc))));
                    break;
                }
                if a == Access::Write
                    && sh.r_step > since
                    && (sh.r_tid & MANY_WARPS != 0 || sh.r_tid / 32 != warp)
                {
                    conflict = Some((i, Some(("read", sh.r_tid & !MANY_WARPS, sh.r_pc))));
                    break;
                }
                if strict
                    && a == Access::Write
                    && sh.r_step > synced
                    && sh.r_step != step
                    && sh.r_tid & MANY_WARPS == 0
                    && sh.r_tid != tid
                {
                    conflict = Some((i, Some(("read", sh.r_tid, sh.r_pc))));
                    break;
                }
            }
            if a == Access::Read {
                if sh.r_step <= since {
                    sh.r_step = step;
                    sh.r_tid = tid;
                    sh.r_pc = pc16;
                } else if (sh.r_tid & !MANY_WARPS) / 32 != warp {
                    sh.r_tid |= MANY_WARPS;
                }
            } else {
                sh.w_step = step;
                sh.w_tid = tid;
                sh.w_pc = pc16;
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
    pub(super) fn race(
        &self,
        off: usize,
        a: Access,
        other: &'static str,
        other_tid: u16,
        other_pc: u16,
        lane: usize,
        pc: usize,
    ) -> PtxError {
        PtxError::SharedRace {
            site: self.site(lane, pc),
            address: off as u64,
            this_access: a.name(),
            other_access: other,
            other_thread: self.thread_xyz(other_tid as u32),
            // Instruction indices past `u16::MAX` are not kept; the line is then unknown (0).
            other_line: match other_pc {
                u16::MAX => 0,
                pc => self.ctx.kernel.insts.get(pc as usize).map_or(0, |i| i.line),
            },
        }
    }

    #[inline]
    pub(super) fn load(
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
                self.check_align(a.wrapping_add(add), size, Access::Read, lane, pc)?;
                let p = self.global_ptr(a.wrapping_add(add), size, Access::Read, lane, pc)?;
                // SAFETY: `global_ptr` checked the range and `check_align` the alignment
                // (allocations start 256-aligned, their storage 8-aligned).
                Ok(unsafe { atomic_load(p, size) })
            }
            Loc::Shared(a) => {
                let off = self.shared_range(a.wrapping_add(add), size, Access::Read, lane, pc)?;
                if self.check_shadow {
                    self.shadow_access(off, size, Access::Read, lane, pc)?;
                }
                Ok(read_le(&self.shared[off..off + size as usize]))
            }
            Loc::Local(a) => {
                let ls = self.ctx.kernel.local_size as u64;
                let off = a.wrapping_add(add);
                if off.checked_add(size as u64).is_none_or(|end| end > ls) {
                    return Err(self.other_oob("local", Access::Read, off, size, lane, pc));
                }
                let base = lane * ls as usize + off as usize;
                Ok(read_le(&w.local[base..base + size as usize]))
            }
            Loc::Param(a) => {
                let off = a.wrapping_add(add);
                if off
                    .checked_add(size as u64)
                    .is_none_or(|end| end > self.ctx.params.len() as u64)
                {
                    return Err(self.other_oob("param", Access::Read, off, size, lane, pc));
                }
                Ok(read_le(
                    &self.ctx.params[off as usize..off as usize + size as usize],
                ))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn store(
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
                self.check_align(a.wrapping_add(add), size, Access::Write, lane, pc)?;
                let p = self.global_ptr(a.wrapping_add(add), size, Access::Write, lane, pc)?;
                // SAFETY: as in `load`.
                unsafe { atomic_store(p, size, v) };
            }
            Loc::Shared(a) => {
                let off = self.shared_range(a.wrapping_add(add), size, Access::Write, lane, pc)?;
                if self.check_shadow {
                    self.shadow_access(off, size, Access::Write, lane, pc)?;
                }
                write_le(&mut self.shared[off..off + size as usize], v);
            }
            Loc::Local(a) => {
                let ls = self.ctx.kernel.local_size as u64;
                let off = a.wrapping_add(add);
                if off.checked_add(size as u64).is_none_or(|end| end > ls) {
                    return Err(self.other_oob("local", Access::Write, off, size, lane, pc));
                }
                let base = lane * ls as usize + off as usize;
                write_le(&mut w.local[base..base + size as usize], v);
            }
            Loc::Param(a) => {
                return Err(self.other_oob(
                    "param (read-only)",
                    Access::Write,
                    a.wrapping_add(add),
                    size,
                    lane,
                    pc,
                ));
            }
        }
        Ok(())
    }

    pub(super) fn other_oob(
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
    pub(super) fn atomic(
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
                self.check_align(a, size, Access::Atomic, lane, pc)?;
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
pub(super) fn read_le(b: &[u8]) -> u64 {
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
pub(super) fn write_le(b: &mut [u8], v: u64) {
    match b.len() {
        4 => b.copy_from_slice(&(v as u32).to_le_bytes()),
        8 => b.copy_from_slice(&v.to_le_bytes()),
        2 => b.copy_from_slice(&(v as u16).to_le_bytes()),
        1 => b[0] = v as u8,
        n => b.copy_from_slice(&v.to_le_bytes()[..n.min(8)]),
    }
}
