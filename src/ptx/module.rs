//! A loaded PTX module: its kernels, decoded once, and its module-scope variables.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{PtxError, PtxResult};
use super::inst::{Inst, Op};
use super::parse;

static NEXT_MODULE_ID: AtomicU64 = AtomicU64::new(1);

/// One kernel parameter as the driver lays it out in the parameter buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// The parameter's PTX name.
    pub name: String,
    /// Byte offset in the parameter buffer.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Alignment in bytes.
    pub align: u32,
}

/// A module-scope `.global` or `.const` variable; it lives in device memory once per machine.
#[derive(Debug, Clone)]
pub(crate) struct GlobalVar {
    pub name: String,
    pub size: u64,
    pub align: u32,
    pub init: Vec<u8>,
}

/// One `.entry` after decoding.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub(crate) name: String,
    pub(crate) params: Vec<ParamInfo>,
    pub(crate) param_size: u32,
    pub(crate) insts: Vec<Inst>,
    /// Source text of each instruction, for errors and traces.
    pub(crate) texts: Vec<String>,
    /// CUDA `file:line` of each instruction when the PTX carries line info (`-lineinfo`).
    pub(crate) sources: Vec<Option<String>>,
    pub(crate) reg_names: Vec<String>,
    pub(crate) static_shared: u32,
    pub(crate) local_size: u32,
    /// Why each `Op::Unsupported` instruction cannot run.
    pub(crate) unsupported: Vec<String>,
}

impl Kernel {
    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parameters in order, with the offsets at which the parameter buffer holds them.
    pub fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    /// Size in bytes of the parameter buffer a launch must pass.
    pub fn param_size(&self) -> u32 {
        self.param_size
    }

    /// Bytes of statically declared shared memory per block.
    pub fn static_shared_bytes(&self) -> u32 {
        self.static_shared
    }

    /// Bytes of local memory (stack frame) per thread.
    pub fn local_bytes(&self) -> u32 {
        self.local_size
    }

    /// Lays out one argument per parameter as the driver does for `cuLaunchKernel`'s
    /// `kernelParams`: each `args[i]` must have exactly parameter `i`'s size.
    pub fn pack_params(&self, args: &[&[u8]]) -> PtxResult<Vec<u8>> {
        let bad = |detail: String| PtxError::BadLaunch {
            kernel: self.name.clone(),
            detail,
        };
        if args.len() != self.params.len() {
            return Err(bad(format!(
                "{} arguments for {} parameters",
                args.len(),
                self.params.len()
            )));
        }
        let mut buf = vec![0u8; self.param_size as usize];
        for (p, a) in self.params.iter().zip(args) {
            if a.len() != p.size as usize {
                return Err(bad(format!(
                    "argument for `{}` has {} bytes, the parameter {}",
                    p.name,
                    a.len(),
                    p.size
                )));
            }
            buf[p.offset as usize..(p.offset + p.size) as usize].copy_from_slice(a);
        }
        Ok(buf)
    }

    /// Number of decoded instructions.
    pub fn instruction_count(&self) -> usize {
        self.insts.len()
    }

    /// The first instruction this kernel cannot run, as an error, if any.
    pub(crate) fn check_supported(&self) -> PtxResult<()> {
        for (i, inst) in self.insts.iter().enumerate() {
            if let Op::Unsupported(r) = inst.op {
                return Err(PtxError::Unsupported {
                    kernel: self.name.clone(),
                    line: inst.line,
                    instruction: self.texts[i].clone(),
                    detail: self.unsupported[r as usize].clone(),
                });
            }
        }
        Ok(())
    }
}

/// A parsed and decoded PTX module.
///
/// Parsing never fails on an instruction the interpreter lacks: such a kernel loads, reports
/// the instruction through [`Module::unsupported`], and its launch returns
/// [`PtxError::Unsupported`] before running anything.
#[derive(Debug, Clone)]
pub struct Module {
    pub(crate) id: u64,
    pub(crate) kernels: Vec<Kernel>,
    pub(crate) by_name: HashMap<String, usize>,
    pub(crate) globals: Vec<GlobalVar>,
    pub(crate) opcodes: BTreeSet<String>,
}

impl Module {
    /// Parses PTX text as nvcc writes it (`nvcc -ptx`) and decodes every kernel.
    pub fn parse(ptx: &str) -> PtxResult<Module> {
        let parsed = parse::parse_module(ptx)?;
        let by_name = parsed
            .kernels
            .iter()
            .enumerate()
            .map(|(i, k)| (k.name.clone(), i))
            .collect();
        Ok(Module {
            id: NEXT_MODULE_ID.fetch_add(1, Ordering::Relaxed),
            kernels: parsed.kernels,
            by_name,
            globals: parsed.globals,
            opcodes: parsed.opcodes,
        })
    }

    /// The kernel called `name`.
    pub fn kernel(&self, name: &str) -> PtxResult<&Kernel> {
        self.by_name
            .get(name)
            .map(|&i| &self.kernels[i])
            .ok_or_else(|| PtxError::NoSuchKernel(name.to_string()))
    }

    /// Names of all kernels (`.entry`) in the module.
    pub fn kernel_names(&self) -> Vec<&str> {
        self.kernels.iter().map(|k| k.name.as_str()).collect()
    }

    /// Every distinct opcode (with its modifiers, e.g. `ld.global.nc.v4.f32`) in the kernels.
    pub fn opcodes(&self) -> Vec<String> {
        self.opcodes.iter().cloned().collect()
    }

    /// Every instruction the interpreter cannot run, as `kernel:line: text (why)`.
    pub fn unsupported(&self) -> Vec<String> {
        let mut out = Vec::new();
        for k in &self.kernels {
            for (i, inst) in k.insts.iter().enumerate() {
                if let Op::Unsupported(r) = inst.op {
                    out.push(format!(
                        "{}:{}: {} ({})",
                        k.name, inst.line, k.texts[i], k.unsupported[r as usize]
                    ));
                }
            }
        }
        out
    }
}

/// The distinct opcodes in `ptx` that the interpreter cannot run (sorted), or the parse error.
///
/// A test over the project's compiled PTX asserts this is empty.
pub fn unsupported_opcodes(ptx: &str) -> Vec<String> {
    let module = match Module::parse(ptx) {
        Ok(m) => m,
        Err(e) => return vec![format!("<module does not parse: {e}>")],
    };
    let mut set = BTreeSet::new();
    for k in &module.kernels {
        for (i, inst) in k.insts.iter().enumerate() {
            if let Op::Unsupported(_) = inst.op {
                let text = &k.texts[i];
                let op = text.trim_start_matches('@').split_whitespace();
                let op = op
                    .clone()
                    .find(|w| !w.starts_with('%') && !w.starts_with('!'));
                set.insert(op.unwrap_or(text).trim_end_matches(';').to_string());
            }
        }
    }
    set.into_iter().collect()
}
