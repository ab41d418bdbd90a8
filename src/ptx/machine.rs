//! The simulated device: global memory with allocation tracking, and kernel launches.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::error::{PtxError, PtxResult};
use super::exec::{BlockExec, LaunchCtx};
use super::module::Module;

/// First device address handed out by [`Machine::alloc`].
pub const GLOBAL_BASE: u64 = 0x0000_7f00_0000_0000;
/// Generic addresses in `[SHARED_WINDOW, SHARED_WINDOW + 2^32)` name the block's shared memory.
pub const SHARED_WINDOW: u64 = 0x0000_1000_0000_0000;
/// Generic addresses in `[LOCAL_WINDOW, LOCAL_WINDOW + 2^32)` name the thread's local memory.
pub const LOCAL_WINDOW: u64 = 0x0000_2000_0000_0000;
/// Generic addresses in `[PARAM_WINDOW, PARAM_WINDOW + 2^32)` name the kernel parameters.
pub const PARAM_WINDOW: u64 = 0x0000_3000_0000_0000;
/// Size of each generic window.
pub const WINDOW_SIZE: u64 = 1 << 32;

/// Allocations start on this boundary, like `cudaMalloc`'s.
const ALLOC_ALIGN: u64 = 256;
/// Unmapped bytes between allocations, so that running off one never lands in the next.
const ALLOC_GAP: u64 = 4096;

/// One device allocation. The bytes live in atomic words so that blocks running on several
/// host threads may touch them (and update them atomically) without undefined behaviour.
pub(crate) struct Allocation {
    pub base: u64,
    pub size: u64,
    words: Box<[AtomicU64]>,
}

impl Allocation {
    fn new(base: u64, size: u64, fill: u8) -> Allocation {
        let word = u64::from_ne_bytes([fill; 8]);
        let words = (0..size.div_ceil(8).max(1))
            .map(|_| AtomicU64::new(word))
            .collect();
        Allocation { base, size, words }
    }

    /// Pointer to the first byte; valid for `size` bytes while the allocation lives.
    pub fn ptr(&self) -> *mut u8 {
        self.words.as_ptr() as *mut u8
    }
}

/// A live allocation as the executor sees it during one launch.
#[derive(Clone, Copy)]
pub(crate) struct Region {
    pub base: u64,
    pub end: u64,
    pub ptr: *mut u8,
}

// SAFETY: the pointer targets `AtomicU64` storage owned by an `Allocation` that the machine's
// lock keeps alive for the whole launch; every access through it is atomic.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

/// Which checks a launch performs, and how it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOptions {
    /// Report two threads of a block touching one shared byte between barriers (one writing).
    pub check_shared_races: bool,
    /// Also report races between lanes of one warp that no warp-synchronising instruction
    /// (`__syncwarp`, `__shfl_sync`, `__ballot_sync`, ...) orders: since Volta, lanes of a
    /// warp are not guaranteed to run in lockstep, so warp-synchronous code through shared
    /// memory needs `__syncwarp`. Off by default (the default treats a warp as lockstep).
    pub check_warp_sync: bool,
    /// Fill new allocations with `0xFF` bytes (NaN as f32, -1 as integers) instead of zeros,
    /// so code that reads device memory it never wrote shows it (`cudaMalloc` does not zero).
    /// A machine-level option: it applies to [`Machine::alloc`] of the machine created with it.
    pub poison_allocations: bool,
    /// Report reads of shared bytes that no thread of the block wrote before.
    pub check_uninitialized_shared: bool,
    /// Run blocks on all rayon threads (`false`: one after another, in order).
    pub parallel: bool,
    /// Trace one thread: `(block index, thread index)` in 3D. Each instruction it executes is
    /// recorded with the registers it wrote, in [`LaunchStats::trace`].
    pub trace_thread: Option<([u32; 3], [u32; 3])>,
    /// Also print the trace to stderr as it runs.
    pub trace_to_stderr: bool,
    /// Give up on a block after this many warp instructions (a hung kernel), if set.
    pub max_warp_steps_per_block: Option<u64>,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            check_shared_races: true,
            check_warp_sync: false,
            poison_allocations: false,
            check_uninitialized_shared: false,
            parallel: true,
            trace_thread: None,
            trace_to_stderr: false,
            max_warp_steps_per_block: Some(1 << 30),
        }
    }
}

impl LaunchOptions {
    /// The defaults, changed by environment variables so a whole program can be checked or
    /// traced without code changes:
    /// - `LABELWISE_PTX_RACES=0` turns the shared-memory race check off;
    /// - `LABELWISE_PTX_WARP_SYNC=1` turns the strict intra-warp race check on;
    /// - `LABELWISE_PTX_UNINIT=1` turns the uninitialised-shared-read check on;
    /// - `LABELWISE_PTX_POISON=1` fills new allocations with `0xFF` bytes;
    /// - `LABELWISE_PTX_SERIAL=1` runs blocks one after another, in order;
    /// - `LABELWISE_PTX_TRACE=bx,by,bz:tx,ty,tz` traces that thread to stderr in every launch.
    pub fn from_env() -> LaunchOptions {
        let mut o = LaunchOptions::default();
        let flag = |name: &str| std::env::var(name).ok().map(|v| v.trim() != "0");
        if let Some(v) = flag("LABELWISE_PTX_RACES") {
            o.check_shared_races = v;
        }
        if let Some(v) = flag("LABELWISE_PTX_WARP_SYNC") {
            o.check_warp_sync = v;
        }
        if let Some(v) = flag("LABELWISE_PTX_POISON") {
            o.poison_allocations = v;
        }
        if let Some(v) = flag("LABELWISE_PTX_UNINIT") {
            o.check_uninitialized_shared = v;
        }
        if let Some(v) = flag("LABELWISE_PTX_SERIAL") {
            o.parallel = !v;
        }
        if let Ok(spec) = std::env::var("LABELWISE_PTX_TRACE") {
            match parse_trace_spec(&spec) {
                Some(t) => {
                    o.trace_thread = Some(t);
                    o.trace_to_stderr = true;
                }
                None => log::warn!("LABELWISE_PTX_TRACE={spec:?} is not `bx,by,bz:tx,ty,tz`"),
            }
        }
        o
    }
}

/// Parses `bx,by,bz:tx,ty,tz` (missing trailing coordinates are 0).
pub(crate) fn parse_trace_spec(spec: &str) -> Option<([u32; 3], [u32; 3])> {
    let (b, t) = spec.split_once(':')?;
    let triple = |s: &str| -> Option<[u32; 3]> {
        let mut out = [0u32; 3];
        for (i, part) in s.split(',').enumerate() {
            *out.get_mut(i)? = part.trim().parse().ok()?;
        }
        Some(out)
    };
    Some((triple(b)?, triple(t)?))
}

/// What a launch did.
#[derive(Debug, Clone, Default)]
pub struct LaunchStats {
    /// Blocks run.
    pub blocks: u64,
    /// Warp instructions issued (one per warp step, whatever the number of active lanes).
    pub warp_instructions: u64,
    /// Thread instructions: the sum over warp steps of the active lanes.
    pub thread_instructions: u64,
    /// Wall time of the launch.
    pub elapsed: Duration,
    /// The traced thread's instructions, if [`LaunchOptions::trace_thread`] was set.
    pub trace: Vec<String>,
    /// Output of device-side `printf`, one entry per call (also logged at `info` level).
    pub printf: Vec<String>,
}

#[derive(Default)]
struct MemState {
    allocs: BTreeMap<u64, Arc<Allocation>>,
    next: u64,
    freed: Vec<(u64, u64)>,
    /// Addresses of each loaded module's `.global`/`.const` variables, by module id.
    module_globals: HashMap<u64, Vec<u64>>,
}

/// A simulated GPU: device memory plus a launcher that runs kernels from a [`Module`].
///
/// Methods take `&self`; calls are serialised like operations on one CUDA stream.
pub struct Machine {
    state: Mutex<MemState>,
    options: LaunchOptions,
}

impl Default for Machine {
    fn default() -> Self {
        Machine::new(LaunchOptions::default())
    }
}

impl Machine {
    /// A machine whose launches use `options` (see [`Machine::launch_with`] to override).
    pub fn new(options: LaunchOptions) -> Machine {
        Machine {
            state: Mutex::new(MemState {
                next: GLOBAL_BASE,
                ..MemState::default()
            }),
            options,
        }
    }

    /// The options [`Machine::launch`] uses.
    pub fn options(&self) -> &LaunchOptions {
        &self.options
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        // A panic while holding the lock leaves memory consistent enough to keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates `bytes` of zeroed device memory and returns its device address.
    pub fn alloc(&self, bytes: u64) -> u64 {
        let fill = if self.options.poison_allocations {
            0xFF
        } else {
            0
        };
        let mut st = self.lock();
        alloc_locked(&mut st, bytes, fill)
    }

    /// Frees the allocation starting at `addr`.
    pub fn free(&self, addr: u64) -> PtxResult<()> {
        let mut st = self.lock();
        match st.allocs.remove(&addr) {
            Some(a) => {
                st.freed.push((a.base, a.size));
                Ok(())
            }
            None => Err(PtxError::HostOutOfBounds {
                address: addr,
                size: 0,
            }),
        }
    }

    /// Bytes in live allocations.
    pub fn allocated_bytes(&self) -> u64 {
        self.lock().allocs.values().map(|a| a.size).sum()
    }

    fn host_region(st: &MemState, addr: u64, len: u64) -> PtxResult<Arc<Allocation>> {
        let a = st.allocs.range(..=addr).next_back().map(|(_, a)| a.clone());
        match a {
            Some(a) if addr + len <= a.base + a.size => Ok(a),
            _ => Err(PtxError::HostOutOfBounds {
                address: addr,
                size: len,
            }),
        }
    }

    /// Copies `data` to device address `addr` (host to device).
    pub fn write(&self, addr: u64, data: &[u8]) -> PtxResult<()> {
        let st = self.lock();
        let a = Self::host_region(&st, addr, data.len() as u64)?;
        // SAFETY: the range is inside the allocation, and the lock excludes running kernels.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                a.ptr().add((addr - a.base) as usize),
                data.len(),
            )
        };
        Ok(())
    }

    /// Copies device memory at `addr` into `out` (device to host).
    pub fn read(&self, addr: u64, out: &mut [u8]) -> PtxResult<()> {
        let st = self.lock();
        let a = Self::host_region(&st, addr, out.len() as u64)?;
        // SAFETY: as in `write`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                a.ptr().add((addr - a.base) as usize),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Ok(())
    }

    /// Sets `len` bytes at `addr` to `value`.
    pub fn memset(&self, addr: u64, value: u8, len: u64) -> PtxResult<()> {
        let st = self.lock();
        let a = Self::host_region(&st, addr, len)?;
        // SAFETY: as in `write`.
        unsafe {
            std::ptr::write_bytes(a.ptr().add((addr - a.base) as usize), value, len as usize)
        };
        Ok(())
    }

    /// Copies `len` bytes between two device ranges (which may be in different allocations).
    pub fn copy(&self, dst: u64, src: u64, len: u64) -> PtxResult<()> {
        let st = self.lock();
        let s = Self::host_region(&st, src, len)?;
        let d = Self::host_region(&st, dst, len)?;
        // SAFETY: both ranges are inside live allocations; `copy` allows overlap.
        unsafe {
            std::ptr::copy(
                s.ptr().add((src - s.base) as usize),
                d.ptr().add((dst - d.base) as usize),
                len as usize,
            )
        };
        Ok(())
    }

    /// Device address of a module-scope `.global`/`.const` variable (like `cuModuleGetGlobal`).
    pub fn global_address(&self, module: &Module, name: &str) -> PtxResult<u64> {
        let mut st = self.lock();
        let addrs = module_globals(&mut st, module)?;
        module
            .globals
            .iter()
            .position(|g| g.name == name)
            .map(|i| addrs[i])
            .ok_or_else(|| PtxError::NoSuchKernel(format!("global variable {name}")))
    }

    /// Runs `kernel` from `module` with this machine's options; see [`Machine::launch_with`].
    pub fn launch(
        &self,
        module: &Module,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        dynamic_shared_bytes: u32,
        params: &[u8],
    ) -> PtxResult<LaunchStats> {
        self.launch_with(
            module,
            kernel,
            grid,
            block,
            dynamic_shared_bytes,
            params,
            &self.options,
        )
    }

    /// Runs `kernel` over `grid` blocks of `block` threads and waits for it to finish.
    ///
    /// `params` is the parameter buffer as the driver lays it out: each parameter at the
    /// offset [`super::Kernel::params`] gives; for a kernel taking one `#[repr(C)]` struct by
    /// value it is simply the struct's bytes. Its length must equal the kernel's parameter size.
    ///
    /// The first fault (out-of-bounds access, race, unsupported instruction, ...) stops the
    /// launch and is returned; memory may then hold the partial results of other blocks.
    #[allow(clippy::too_many_arguments)]
    pub fn launch_with(
        &self,
        module: &Module,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        dynamic_shared_bytes: u32,
        params: &[u8],
        options: &LaunchOptions,
    ) -> PtxResult<LaunchStats> {
        let start = Instant::now();
        let k = module.kernel(kernel)?;
        k.check_supported()?;
        let bad = |detail: String| PtxError::BadLaunch {
            kernel: kernel.to_string(),
            detail,
        };
        let threads = block.iter().map(|&d| d as u64).product::<u64>();
        if threads == 0 || threads > 1024 {
            return Err(bad(format!(
                "block {block:?} has {threads} threads (1..=1024 allowed)"
            )));
        }
        let blocks = grid.iter().map(|&d| d as u64).product::<u64>();
        if blocks == 0 || grid[1] > 65535 || grid[2] > 65535 {
            return Err(bad(format!("grid {grid:?} is empty or too large")));
        }
        if params.len() != k.param_size as usize {
            return Err(bad(format!(
                "parameter buffer has {} bytes, the kernel's parameters take {}",
                params.len(),
                k.param_size
            )));
        }
        let shared_size = k.static_shared.div_ceil(16) as u64 * 16 + dynamic_shared_bytes as u64;
        if shared_size > 228 * 1024 {
            return Err(bad(format!(
                "{shared_size} bytes of shared memory per block"
            )));
        }
        let shared_size = shared_size as u32;
        if k.local_size > 512 * 1024 {
            return Err(bad(format!(
                "{} bytes of local memory per thread",
                k.local_size
            )));
        }

        let mut st = self.lock();
        let globals = module_globals(&mut st, module)?;
        let regions: Vec<Region> = st
            .allocs
            .values()
            .map(|a| Region {
                base: a.base,
                end: a.base + a.size,
                ptr: a.ptr(),
            })
            .collect();
        let abort = AtomicBool::new(false);
        let counters = [AtomicU64::new(0), AtomicU64::new(0)];
        let trace = Mutex::new(Vec::new());
        let printf = Mutex::new(Vec::new());
        let ctx = LaunchCtx {
            kernel: k,
            regions: &regions,
            freed: &st.freed,
            globals: &globals,
            params,
            grid,
            block,
            dynamic_shared: dynamic_shared_bytes,
            shared_size,
            options,
            abort: &abort,
            counters: &counters,
            trace: &trace,
            printf: &printf,
        };
        let run = |range: std::ops::Range<u64>| -> Vec<(u64, PtxError)> {
            let mut errors = Vec::new();
            let mut exec = BlockExec::new(&ctx);
            for b in range {
                if abort.load(Ordering::Relaxed) {
                    break;
                }
                if let Err(e) = exec.run_block(b) {
                    abort.store(true, Ordering::Relaxed);
                    errors.push((b, e));
                }
            }
            exec.flush_counters();
            errors
        };
        let mut errors = if options.parallel && blocks > 1 {
            // Contiguous chunks keep each worker's executor (and its buffers) warm.
            let workers = rayon::current_num_threads() as u64;
            let chunk = blocks.div_ceil(workers * 4).max(1);
            let chunks: Vec<_> = (0..blocks.div_ceil(chunk))
                .map(|c| c * chunk..((c + 1) * chunk).min(blocks))
                .collect();
            chunks
                .into_par_iter()
                .flat_map_iter(run)
                .collect::<Vec<_>>()
        } else {
            run(0..blocks)
        };
        drop(st);
        if !errors.is_empty() {
            errors.sort_by_key(|(b, _)| *b);
            return Err(errors.swap_remove(0).1);
        }
        Ok(LaunchStats {
            blocks,
            warp_instructions: counters[0].load(Ordering::Relaxed),
            thread_instructions: counters[1].load(Ordering::Relaxed),
            elapsed: start.elapsed(),
            trace: trace.into_inner().unwrap_or_else(|e| e.into_inner()),
            printf: printf.into_inner().unwrap_or_else(|e| e.into_inner()),
        })
    }
}

fn alloc_locked(st: &mut MemState, bytes: u64, fill: u8) -> u64 {
    let base = st.next;
    st.next = (base + bytes.max(1) + ALLOC_GAP).div_ceil(ALLOC_ALIGN) * ALLOC_ALIGN;
    st.allocs
        .insert(base, Arc::new(Allocation::new(base, bytes, fill)));
    base
}

/// Allocates and initialises a module's variables on first use by this machine.
fn module_globals(st: &mut MemState, module: &Module) -> PtxResult<Vec<u64>> {
    if let Some(a) = st.module_globals.get(&module.id) {
        return Ok(a.clone());
    }
    let mut addrs = Vec::with_capacity(module.globals.len());
    for g in &module.globals {
        let addr = alloc_locked(st, g.size, 0);
        let a = st.allocs[&addr].clone();
        let n = g.init.len().min(g.size as usize);
        // SAFETY: `n` bytes fit in the fresh allocation, which no kernel is using.
        unsafe { std::ptr::copy_nonoverlapping(g.init.as_ptr(), a.ptr(), n) };
        let _ = g.align;
        addrs.push(addr);
    }
    st.module_globals.insert(module.id, addrs.clone());
    Ok(addrs)
}
