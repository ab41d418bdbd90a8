//! A PTX interpreter: runs the kernels nvcc compiled for labelwise on the CPU, with CUDA's
//! execution semantics and checks a GPU cannot make cheaply.
//!
//! # Use
//!
//! ```
//! use labelwise::ptx::{Machine, Module, LaunchOptions};
//!
//! let ptx = r#"
//! .version 8.0
//! .target sm_80
//! .address_size 64
//! .visible .entry twice(.param .u64 out, .param .u32 n)
//! {
//!     .reg .pred %p<2>;
//!     .reg .b32 %r<4>;
//!     .reg .b64 %rd<4>;
//!     ld.param.u64 %rd1, [out];
//!     ld.param.u32 %r1, [n];
//!     mov.u32 %r2, %tid.x;
//!     setp.ge.u32 %p1, %r2, %r1;
//!     @%p1 bra DONE;
//!     mul.wide.u32 %rd2, %r2, 4;
//!     add.s64 %rd3, %rd1, %rd2;
//!     shl.b32 %r3, %r2, 1;
//!     st.global.u32 [%rd3], %r3;
//! DONE:
//!     ret;
//! }
//! "#;
//! let module = Module::parse(ptx)?;
//! let machine = Machine::new(LaunchOptions::default());
//! let out = machine.alloc(4 * 40);
//! // One byte slice per parameter, laid out as the driver would.
//! let params = module.kernel("twice")?.pack_params(&[&out.to_le_bytes(), &40u32.to_le_bytes()])?;
//! machine.launch(&module, "twice", [1, 1, 1], [64, 1, 1], 0, &params)?;
//! let mut bytes = vec![0u8; 4 * 40];
//! machine.read(out, &mut bytes)?;
//! assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), 6);
//! # Ok::<(), labelwise::ptx::PtxError>(())
//! ```
//!
//! Kernels that take one `#[repr(C)]` struct by value (`.param .align 8 .b8 p[SIZE]`) get the
//! struct's bytes as the parameter buffer (`bytemuck::bytes_of(&params)`).
//!
//! # Execution model
//!
//! - Blocks run in parallel on rayon's threads; the threads of one block run on one host
//!   thread, as warps of 32 lanes.
//! - A warp executes one instruction at a time for all its lanes that are at the lowest
//!   program counter among its runnable lanes. Lanes that branch elsewhere wait; they rejoin
//!   when the others reach their pc. This reconverges structured control flow exactly where
//!   nvcc's layout puts the join point, like a GPU's reconvergence stack.
//! - Warps take turns in slices of thousands of instructions (so a warp spinning on another
//!   warp's flag makes progress) until all their lanes wait at `bar.sync` or have exited;
//!   when every live thread of the block waits, the barrier opens. Exited threads do not
//!   count. Blocks do not wait for each other: a block spinning on another block's progress
//!   (outside a cooperative launch) runs into [`LaunchOptions::max_warp_steps_per_block`].
//! - `shfl.sync`, `vote.sync`, `redux.sync` and `match.sync` act on the lanes executing them;
//!   a live lane named in the member mask but not converged there is reported as a fault.
//! - Global memory is shared by all blocks and updated with real atomics (relaxed order), so
//!   `atom`/`red` are atomic across blocks running at the same time.
//! - Registers, local and shared memory start zeroed (a GPU leaves them undefined); new
//!   allocations are zeroed too, or filled with `0xFF` under
//!   [`LaunchOptions::poison_allocations`] to expose reads of memory nothing wrote.
//!
//! # Checks
//!
//! Each check stops the launch with a typed [`PtxError`] naming kernel, block, thread, PTX
//! line and instruction text, plus the CUDA `file:line` when the PTX was compiled with
//! `nvcc -lineinfo`:
//! - global accesses outside every live allocation ([`PtxError::GlobalOutOfBounds`]; the
//!   message says when the address is past the end of a buffer or inside a freed one);
//!   allocations are separated by unmapped gaps, so an off-by-one is always caught;
//! - shared accesses past the block's static + dynamic shared size, local accesses outside
//!   the thread's frame, misaligned accesses;
//! - shared-memory races ([`PtxError::SharedRace`], on by default): two threads of a block
//!   touch the same byte between two barriers and at least one writes. Atomics are exempt.
//!   By default lanes of one warp are treated as ordered by lockstep execution, except that
//!   two lanes writing the same byte in one instruction is a race. Since Volta, lanes of a
//!   warp are not guaranteed to run in lockstep and warp-synchronous code through shared
//!   memory needs `__syncwarp`; [`LaunchOptions::check_warp_sync`] reports intra-warp
//!   accesses that no warp-synchronising instruction orders;
//! - optionally, reads of shared bytes that no thread wrote during the block
//!   ([`LaunchOptions::check_uninitialized_shared`]);
//! - a failed device-side `assert` ([`PtxError::Fault`] with the assertion text, file, line).
//!
//! Device `printf` output is returned in [`LaunchStats::printf`] and logged at `info` level.
//!
//! # Tracing one thread
//!
//! Set [`LaunchOptions::trace_thread`] to `Some((block, thread))` (3D indices) and launch with
//! [`Machine::launch_with`]. Every instruction that thread issues is recorded in
//! [`LaunchStats::trace`] as `line  instruction  -> register = value`; predicated-off
//! instructions say so. With `trace_to_stderr` the lines are also printed as they execute:
//!
//! ```text
//!    34  ld.global.f32 %f2, [%rd8];    -> %f2 = 1.5 (0x3fc00000)
//!    36  fma.rn.f32 %f4, %f1, %f2, %f3;    -> %f4 = 4 (0x40800000)
//! ```
//!
//! Without touching code, `LABELWISE_PTX_TRACE=1,0,0:3,0,0` traces thread (3,0,0) of block
//! (1,0,0) in every launch of a machine made with [`LaunchOptions::from_env`]; PTX compiled
//! with `-lineinfo` adds the CUDA `file:line` to each trace line.
//!
//! # Speed
//!
//! Instructions are decoded once into a compact form with register indices; each warp step
//! runs the instruction over 32 lanes in a loop that vectorises for common arithmetic. On
//! one core the tiled matmul of the bench (`cargo bench --bench ptx_interp`) runs about
//! 130 million thread-instructions per CPU-second with the race check on; turning the
//! shared-memory checks off (`LABELWISE_PTX_RACES=0`) saves about a third on shared-heavy
//! kernels.
//!
//! # Supported instructions
//!
//! - Integer: `add sub mul(.lo/.hi/.wide) mad(.lo/.hi/.wide) mul24 mad24 sad div rem abs neg
//!   min max`, `.sat` on `s32` add/sub, carry chains (`add.cc addc sub.cc subc mad.cc madc`);
//!   bits: `and or xor not cnot shl shr bfe bfi popc clz brev bfind prmt lop3 shf`.
//! - Float: `add sub mul fma mad div(.rn/.full/.approx) abs neg min max(.NaN) copysign rcp
//!   sqrt rsqrt ex2 lg2 sin cos tanh testp` on f32 and f64, with `.ftz`, `.sat` and rounding
//!   modifiers; `add sub mul fma min max abs neg` also on f16, bf16, `.f16x2` and `.bf16x2`.
//! - Compare and select: `setp` (all comparisons incl. unordered, `.and/.or/.xor` combining,
//!   `p|q` outputs), `set`, `selp`, `slct`.
//! - Conversion: `cvt` between every integer and float type (f16, bf16, f32, f64) with
//!   `.rn/.rz/.rm/.rp/.rni/.rzi/.rmi/.rpi`, `.sat`, `.ftz`; `cvta(.to)` for every space;
//!   `mov` (registers, immediates, special registers, symbol addresses, vector pack/unpack).
//! - Memory: `ld ldu st` (`.global .shared .local .param .const`, generic; `.v2/.v4`; `.nc`,
//!   `.volatile`, cache and ordering qualifiers accepted), `atom red` (`add min max inc dec exch
//!   cas and or xor`, integer, f32 and f64), `cp.async` (done at once), `membar fence
//!   prefetch` (no-ops: memory is sequentially consistent per host thread).
//! - Control: `bra(.uni) exit ret trap`, `bar.sync`/`barrier.sync`, `bar.red.popc/.and/.or`,
//!   `bar.warp.sync`; warp: `shfl.sync` (up/down/bfly/idx with clamp and segment masks),
//!   `vote.sync` (all/any/uni/ballot), `activemask`, `redux.sync`, `match.any/.all.sync`;
//!   `call` (device functions inlined at load; `vprintf`, `__assertfail`).
//! - Special registers: `%tid %ntid %ctaid %nctaid %laneid %warpid %nwarpid %smid %nsmid
//!   %gridid %clock %clock64 %globaltimer %lanemask_* %dynamic_smem_size %total_smem_size`.
//!
//! # Plugging into the CUDA backend
//!
//! The device layer maps one to one: `alloc` → [`Machine::alloc`] (returns the device
//! address), `free` → [`Machine::free`], `copy_h2d`/`copy_d2h`/`memset`/device copy →
//! [`Machine::write`]/[`Machine::read`]/[`Machine::memset`]/[`Machine::copy`],
//! `load_module(ptx)` → [`Module::parse`] (keep the `Module`, e.g. in an `Arc`, and reuse it),
//! `launch` → [`Machine::launch`] with the parameter struct's bytes, `synchronize` → nothing
//! (a launch returns when it is done). Create the machine with
//! `Machine::new(LaunchOptions::from_env())` so the environment can turn on checks and traces.
//! [`PtxError`] converts into the crate's error (`Error::Cuda`).
//!
//! # Limitations
//!
//! Unsupported, reported as [`PtxError::Unsupported`] at launch (and listed by
//! [`unsupported_opcodes`]): recursive, indirect or predicated `call`s (direct calls of
//! `.func`s are inlined at load, so `__noinline__` helpers and `-G` builds work; the
//! runtime's `vprintf` and `__assertfail` are built in), `bar.arrive`, barriers over a
//! subset of the block, comparisons of and conversions from packed halves, tensor-core
//! instructions (`mma`, `ldmatrix`, `wmma`), texture and surface instructions, `prmt` modes
//! other than the default, indirect branches, 128-bit loads and stores, cluster and TMA
//! instructions (sm_90).
//! Directed rounding (`.rz/.rm/.rp`) is exact for f32 `add/sub/mul/fma/div` and f64
//! `add/sub/mul/div`; f64 `fma` and half conversions round to nearest. Approximate
//! instructions (`ex2`, `lg2`, `sin`, `cos`, `rsqrt`, `tanh`, `rcp.approx`, ...) return the
//! correctly rounded result, which lies within every documented bound but is more accurate
//! than a GPU, so bit-exact comparisons with a GPU can differ in the last place.

mod alu;
mod decode;
mod error;
mod exec;
mod float;
mod inline;
mod inst;
mod lex;
mod machine;
mod module;
mod parse;

pub use error::{FaultSite, PtxError, PtxResult};
pub use machine::{
    LaunchOptions, LaunchStats, Machine, GLOBAL_BASE, LOCAL_WINDOW, PARAM_WINDOW, SHARED_WINDOW,
    WINDOW_SIZE,
};
pub use module::{unsupported_opcodes, Kernel, Module, ParamInfo};

#[cfg(test)]
mod tests;
