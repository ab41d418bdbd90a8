//! The PTX parser: module directives, kernel bodies, and decoding of each instruction.

use std::collections::{BTreeSet, HashMap};

use super::error::{PtxError, PtxResult};
use super::inst::*;
use super::lex::{parse_literal, tokenize, Literal, Tok, Token};
use super::module::{GlobalVar, Kernel, ParamInfo};

/// What parsing a module produces.
pub(crate) struct Parsed {
    pub kernels: Vec<Kernel>,
    pub globals: Vec<GlobalVar>,
    pub opcodes: BTreeSet<String>,
}

/// An operand before its names are resolved against the kernel's symbols.
#[derive(Debug, Clone)]
enum RawOp {
    Reg(u32),
    Not(Box<RawOp>),
    Name(String),
    Lit(Literal, bool),
    Sink,
    Vector(Vec<RawOp>),
    Pair(Box<RawOp>, Box<RawOp>),
    Addr(Option<Box<RawOp>>, i64),
}

/// An instruction statement before decoding.
struct RawInst {
    guard: Option<(u32, bool)>,
    opcode: String,
    operands: Vec<RawOp>,
    line: u32,
    text: String,
    /// CUDA source `(file index, line)` from the last `.loc`, if the PTX has line info.
    loc: Option<(u32, u32)>,
}

/// Symbols a kernel body can name, besides registers and labels.
#[derive(Clone, Copy)]
enum Sym {
    Param(u32),
    /// A call-sequence `.param` inside a body; it lives in the thread's local memory.
    CallParam(u32),
    Shared(u32),
    Local(u32),
}

/// Marks a scope entry as a call parameter rather than a register.
const CALL_PARAM_FLAG: u32 = 1 << 31;
/// Prefix of the unique names call parameters get (not a valid PTX identifier start).
const CALL_PARAM_PREFIX: &str = "@callparam";

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    pos: usize,
}

fn type_of_directive(s: &str) -> Option<Ty> {
    s.strip_prefix('.').and_then(Ty::parse)
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn line(&self) -> u32 {
        self.toks
            .get(self.pos)
            .or(self.toks.last())
            .map_or(0, |t| t.line)
    }

    fn err<T>(&self, detail: impl Into<String>) -> PtxResult<T> {
        Err(PtxError::Parse {
            line: self.line(),
            detail: detail.into(),
        })
    }

    fn next(&mut self) -> PtxResult<Tok> {
        match self.toks.get(self.pos) {
            Some(t) => {
                self.pos += 1;
                Ok(t.tok.clone())
            }
            None => self.err("unexpected end of input"),
        }
    }

    fn is_punct(&self, c: char) -> bool {
        self.peek() == Some(&Tok::Punct(c))
    }

    fn eat_punct(&mut self, c: char) -> bool {
        if self.is_punct(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_punct(&mut self, c: char) -> PtxResult<()> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            self.err(format!("expected `{c}`, found {:?}", self.peek()))
        }
    }

    fn ident(&mut self) -> PtxResult<String> {
        match self.next()? {
            Tok::Ident(s) => Ok(s),
            t => self.err(format!("expected a name, found {t:?}")),
        }
    }

    fn number(&mut self) -> PtxResult<i128> {
        let neg = self.eat_punct('-');
        match self.next()? {
            Tok::Num(s) => match parse_literal(&s) {
                Some(Literal::Int(v)) => Ok(if neg { -v } else { v }),
                _ => self.err(format!("expected an integer, found `{s}`")),
            },
            t => self.err(format!("expected a number, found {t:?}")),
        }
    }

    fn peek_ident(&self) -> Option<&str> {
        match self.peek() {
            Some(Tok::Ident(s)) => Some(s),
            _ => None,
        }
    }

    /// Skips the rest of the current source line (for `.loc`, `.file`, `.version`, ...).
    fn skip_line(&mut self) {
        let line = self.toks[self.pos.saturating_sub(1)].line;
        while self.pos < self.toks.len() && self.toks[self.pos].line == line {
            self.pos += 1;
        }
    }

    /// Skips to just past the matching `}` of a body that starts at the current `{`.
    fn skip_braces(&mut self) -> PtxResult<()> {
        let mut depth = 0;
        loop {
            match self.next()? {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
    }
}

/// A variable declaration: `[.align N] [.vN] .type name[dims] [= init]`, after the space.
struct VarDecl {
    name: String,
    elem: Ty,
    align: u32,
    size: u64,
    unsized_array: bool,
    init: Vec<u8>,
}

fn parse_var_decl(p: &mut Parser) -> PtxResult<VarDecl> {
    let mut align = 0;
    let mut vec = 1;
    let mut elem = None;
    while let Some(s) = p.peek_ident().map(str::to_string) {
        if !s.starts_with('.') {
            break;
        }
        p.pos += 1;
        match s.as_str() {
            ".align" => align = p.number()? as u32,
            ".v2" => vec = 2,
            ".v4" => vec = 4,
            ".v8" => vec = 8,
            ".ptr" | ".global" | ".shared" | ".local" | ".const" => {}
            _ => match type_of_directive(&s) {
                Some(t) => elem = Some(t),
                None => return p.err(format!("unexpected `{s}` in a declaration")),
            },
        }
    }
    let Some(elem) = elem else {
        return p.err("declaration without a type");
    };
    let name = p.ident()?;
    let mut count: u64 = vec;
    let mut unsized_array = false;
    while p.eat_punct('[') {
        if p.eat_punct(']') {
            unsized_array = true;
            count = 0;
            continue;
        }
        count = count.saturating_mul(p.number()?.clamp(0, u32::MAX as i128) as u64);
        p.expect_punct(']')?;
    }
    let ebytes = elem.bytes() as u64;
    let size = count.saturating_mul(ebytes);
    if size > 1 << 32 {
        return p.err(format!("`{name}` is too large ({size} bytes)"));
    }
    let mut init = Vec::new();
    if p.eat_punct('=') {
        let mut vals = Vec::new();
        parse_initializer(p, &mut vals)?;
        for v in vals {
            let bits = match v {
                Literal::Int(i) => i as u64,
                Literal::F32Bits(b) if elem == Ty::F64 => (f32::from_bits(b) as f64).to_bits(),
                Literal::F32Bits(b) => b as u64,
                Literal::F64Bits(b) if elem == Ty::F32 => {
                    (f64::from_bits(b) as f32).to_bits() as u64
                }
                Literal::F64Bits(b) => b,
                Literal::Float(f) if elem == Ty::F32 => (f as f32).to_bits() as u64,
                Literal::Float(f) => f.to_bits(),
            };
            init.extend_from_slice(&bits.to_le_bytes()[..ebytes as usize]);
        }
        init.resize(size.max(init.len() as u64) as usize, 0);
    }
    let align = if align == 0 {
        elem.bytes().max(1)
    } else {
        align
    };
    Ok(VarDecl {
        name,
        elem,
        align,
        size,
        unsized_array,
        init,
    })
}

fn parse_initializer(p: &mut Parser, out: &mut Vec<Literal>) -> PtxResult<()> {
    if p.eat_punct('{') {
        loop {
            if p.eat_punct('}') {
                return Ok(());
            }
            parse_initializer(p, out)?;
            if !p.eat_punct(',') {
                p.expect_punct('}')?;
                return Ok(());
            }
        }
    }
    let neg = p.eat_punct('-');
    match p.next()? {
        Tok::Num(s) => match parse_literal(&s) {
            Some(Literal::Int(v)) => out.push(Literal::Int(if neg { -v } else { v })),
            Some(Literal::Float(f)) => out.push(Literal::Float(if neg { -f } else { f })),
            Some(l) if !neg => out.push(l),
            _ => return p.err(format!("bad initializer `{s}`")),
        },
        t => return p.err(format!("unsupported initializer {t:?} (only numbers are)")),
    }
    Ok(())
}

/// Parses a whole module.
pub(crate) fn parse_module(src: &str) -> PtxResult<Parsed> {
    let toks = tokenize(src)?;
    let mut p = Parser { src, toks, pos: 0 };
    let mut globals: Vec<GlobalVar> = Vec::new();
    let mut raw_kernels = Vec::new();
    let mut module_shared: Vec<VarDecl> = Vec::new();
    let mut files: HashMap<u32, String> = HashMap::new();
    let mut funcs: HashMap<String, RawKernel> = HashMap::new();
    while p.pos < p.toks.len() {
        let t = p.next()?;
        let s = match t {
            Tok::Ident(s) => s,
            Tok::Punct(';') => continue,
            t => return p.err(format!("unexpected {t:?} at module scope")),
        };
        match s.as_str() {
            ".file" => {
                // `.file N "name" [, timestamp, size]`
                if let (Ok(n), Some(Tok::Str(name))) = (p.number(), p.peek().cloned()) {
                    files.insert(n as u32, name);
                }
                p.skip_line();
            }
            ".version" | ".target" | ".address_size" => p.skip_line(),
            ".section" => {
                // Debug sections (`-lineinfo`, `-G`): a name, then a braced block of data.
                p.skip_line();
                if p.is_punct('{') {
                    p.skip_braces()?;
                }
            }
            ".visible" | ".extern" | ".weak" | ".common" => {}
            ".global" | ".const" => {
                let d = parse_var_decl(&mut p)?;
                p.expect_punct(';')?;
                globals.push(GlobalVar {
                    name: d.name,
                    size: d.size.max(1),
                    align: d.align,
                    init: d.init,
                });
            }
            ".shared" => {
                // Module-scope shared variables (`extern __shared__` arrays land here); each
                // kernel that names one gets its own copy.
                let d = parse_var_decl(&mut p)?;
                p.expect_punct(';')?;
                module_shared.push(d);
            }
            ".local" => {
                return p.err("module-scope `.local` variables are not supported");
            }
            ".entry" => {
                if let Some(k) = parse_entry(&mut p, &module_shared, false)? {
                    raw_kernels.push(k);
                }
            }
            ".func" => {
                // Device functions are inlined at their call sites when kernels are decoded.
                if let Some(f) = parse_entry(&mut p, &module_shared, true)? {
                    funcs.insert(f.name.clone(), f);
                }
            }
            ".pragma" => {
                while !p.eat_punct(';') {
                    p.next()?;
                }
            }
            other => return p.err(format!("unexpected `{other}` at module scope")),
        }
    }

    let global_index: HashMap<String, u32> = globals
        .iter()
        .enumerate()
        .map(|(i, g)| (g.name.clone(), i as u32))
        .collect();
    let mut kernels = Vec::new();
    let mut opcodes = BTreeSet::new();
    for mut rk in raw_kernels {
        let mut inlined = 0;
        let insts = std::mem::take(&mut rk.insts);
        rk.insts = inline_calls(&mut rk, insts, &funcs, &mut inlined, 0);
        for ri in &rk.insts {
            opcodes.insert(ri.opcode.clone());
        }
        kernels.push(decode_kernel(rk, &global_index, &files));
    }
    Ok(Parsed {
        kernels,
        globals,
        opcodes,
    })
}

/// A kernel body before decoding.
struct RawKernel {
    name: String,
    /// Return parameters of a `.func`.
    rets: Vec<ParamInfo>,
    /// Local-memory offsets of call-sequence parameters.
    call_params: Vec<u32>,
    params: Vec<ParamInfo>,
    param_size: u32,
    insts: Vec<RawInst>,
    labels: HashMap<String, u32>,
    reg_names: Vec<String>,
    syms: HashMap<String, Sym>,
    static_shared: u32,
    local_size: u32,
}

fn align_up(x: u32, a: u32) -> u32 {
    x.div_ceil(a.max(1)).saturating_mul(a.max(1))
}

/// Parses `( .param ..., .param ... )` at the current `(`, laying the parameters out.
fn parse_param_list(p: &mut Parser) -> PtxResult<(Vec<ParamInfo>, u32)> {
    let mut params = Vec::new();
    let mut param_size = 0;
    if p.eat_punct('(') {
        while !p.eat_punct(')') {
            let d = p.ident()?;
            if d != ".param" && d != ".reg" {
                return p.err(format!("expected `.param`, found `{d}`"));
            }
            let v = parse_var_decl(p)?;
            let size = if v.unsized_array { 0 } else { v.size as u32 };
            let offset = align_up(param_size, v.align);
            param_size = offset.saturating_add(size);
            params.push(ParamInfo {
                name: v.name,
                offset,
                size,
                align: v.align,
            });
            p.eat_punct(',');
        }
    }
    Ok((params, param_size))
}

/// Parses an `.entry` (`is_func == false`) or a `.func` with its optional return parameters;
/// `None` for a declaration without a body.
fn parse_entry(
    p: &mut Parser,
    module_shared: &[VarDecl],
    is_func: bool,
) -> PtxResult<Option<RawKernel>> {
    let rets = if is_func && p.is_punct('(') {
        parse_param_list(p)?.0
    } else {
        Vec::new()
    };
    let name = p.ident()?;
    let (params, param_size) = parse_param_list(p)?;
    // Performance directives (`.maxntid 256, 1, 1`, ...) up to the body or a declaration's `;`.
    while !p.is_punct('{') {
        if p.eat_punct(';') {
            return Ok(None);
        }
        p.next()?;
    }
    let mut k = RawKernel {
        name,
        rets,
        call_params: Vec::new(),
        params,
        param_size,
        insts: Vec::new(),
        labels: HashMap::new(),
        reg_names: Vec::new(),
        syms: HashMap::new(),
        static_shared: 0,
        local_size: 0,
    };
    for prm in k.params.iter().chain(&k.rets) {
        k.syms.insert(prm.name.clone(), Sym::Param(prm.offset));
    }
    let mut dynamic_shared = Vec::new();
    let mut scopes: Vec<HashMap<String, u32>> = Vec::new();
    let mut loc = None;
    p.expect_punct('{')?;
    scopes.push(HashMap::new());
    while !scopes.is_empty() {
        let start = p.pos;
        let t = p.next()?;
        match t {
            Tok::Punct('{') => {
                scopes.push(HashMap::new());
                continue;
            }
            Tok::Punct('}') => {
                scopes.pop();
                continue;
            }
            Tok::Punct(';') => continue,
            _ => {}
        }
        if let Tok::Ident(s) = &t {
            match s.as_str() {
                ".reg" => {
                    parse_reg_decl(p, &mut k.reg_names, scopes.last_mut().expect("scope"))?;
                    continue;
                }
                ".shared" | ".local" | ".extern" => {
                    let space = if s == ".extern" {
                        p.ident()?
                    } else {
                        s.clone()
                    };
                    let v = parse_var_decl(p)?;
                    p.expect_punct(';')?;
                    if space == ".shared" {
                        if v.unsized_array {
                            dynamic_shared.push(v.name);
                        } else {
                            let off = align_up(k.static_shared, v.align);
                            k.static_shared = off.saturating_add(v.size as u32);
                            k.syms.insert(v.name, Sym::Shared(off));
                        }
                    } else if space == ".local" {
                        let off = align_up(k.local_size, v.align);
                        k.local_size = off.saturating_add(v.size as u32);
                        k.syms.insert(v.name, Sym::Local(off));
                    } else {
                        return p.err(format!("unsupported declaration space `{space}`"));
                    }
                    let _ = v.elem;
                    continue;
                }
                ".param" => {
                    // A call-sequence parameter: a slot in local memory, scoped like a register
                    // because every call sequence reuses the names `param0`, `retval0`, ...
                    let v = parse_var_decl(p)?;
                    p.expect_punct(';')?;
                    let off = align_up(k.local_size, v.align);
                    k.local_size = off.saturating_add(v.size as u32);
                    let unique = format!("{CALL_PARAM_PREFIX}{}", k.call_params.len());
                    k.syms.insert(unique, Sym::CallParam(off));
                    let scope = scopes.last_mut().expect("scope");
                    scope.insert(v.name, CALL_PARAM_FLAG | k.call_params.len() as u32);
                    k.call_params.push(off);
                    continue;
                }
                ".pragma" => {
                    while !p.eat_punct(';') {
                        p.next()?;
                    }
                    continue;
                }
                ".loc" => {
                    // `.loc file line column [...]`: the CUDA source of what follows.
                    let file = p.number().ok();
                    let line = p.number().ok();
                    if let (Some(f), Some(l)) = (file, line) {
                        loc = (l > 0).then_some((f as u32, l as u32));
                    }
                    p.skip_line();
                    continue;
                }
                ".file" => {
                    p.skip_line();
                    continue;
                }
                _ => {}
            }
            // A label.
            if p.is_punct(':') && !s.starts_with('.') {
                p.pos += 1;
                k.labels.insert(s.clone(), k.insts.len() as u32);
                continue;
            }
        }
        p.pos = start;
        let mut inst = parse_statement(p, &scopes)?;
        inst.loc = loc;
        k.insts.push(inst);
    }
    // Module-scope shared variables this kernel names.
    for v in module_shared {
        if !k
            .insts
            .iter()
            .any(|i| i.operands.iter().any(|o| names(o, &v.name)))
        {
            continue;
        }
        if v.unsized_array {
            dynamic_shared.push(v.name.clone());
        } else {
            let off = align_up(k.static_shared, v.align);
            k.static_shared = off.saturating_add(v.size as u32);
            k.syms.insert(v.name.clone(), Sym::Shared(off));
        }
    }
    // Dynamic shared memory starts after the static part, aligned for any access.
    let dyn_off = align_up(k.static_shared, 16);
    for name in dynamic_shared {
        k.syms.insert(name, Sym::Shared(dyn_off));
    }
    Ok(Some(k))
}

/// Deepest chain of device-function calls the inliner follows (recursion stops here).
const MAX_INLINE_DEPTH: u32 = 16;

/// Replaces each `call` of a device function that has a body with a copy of that body, with
/// fresh registers, local memory and labels; `ret` becomes a branch past the copy, and the
/// callee's parameters become the caller's call-sequence slots. Calls it cannot inline stay
/// and decode as `vprintf`, `__assertfail` or unsupported.
fn inline_calls(
    k: &mut RawKernel,
    insts: Vec<RawInst>,
    funcs: &HashMap<String, RawKernel>,
    counter: &mut u32,
    depth: u32,
) -> Vec<RawInst> {
    let is_call = |ri: &RawInst| ri.opcode.split('.').next() == Some("call");
    if !insts.iter().any(is_call) || depth > MAX_INLINE_DEPTH {
        return insts;
    }
    // Where each old instruction index lands, for the labels already in `k`.
    let mut new_index = Vec::with_capacity(insts.len() + 1);
    let mut added: HashMap<String, u32> = HashMap::new();
    let mut out: Vec<RawInst> = Vec::with_capacity(insts.len());
    for ri in insts {
        new_index.push(out.len() as u32);
        let callee = ri.operands.iter().enumerate().find_map(|(i, o)| match o {
            RawOp::Name(n) if is_call(&ri) && !n.starts_with(CALL_PARAM_PREFIX) => {
                Some((i, n.clone()))
            }
            _ => None,
        });
        let Some((ci, f)) = callee.and_then(|(ci, n)| funcs.get(&n).map(|f| (ci, f))) else {
            out.push(ri);
            continue;
        };
        let (rets, args) = (&ri.operands[..ci], &ri.operands[ci + 1..]);
        if rets.len() > f.rets.len() || args.len() != f.params.len() || ri.guard.is_some() {
            out.push(ri);
            continue;
        }
        *counter += 1;
        let tag = format!("@inline{}:{}", *counter, f.name);

        // Fresh registers and local memory for this copy.
        let reg_base = k.reg_names.len() as u32;
        k.reg_names
            .extend(f.reg_names.iter().map(|r| format!("{}::{r}", f.name)));
        let local_base = align_up(k.local_size, 16);
        k.local_size = local_base.saturating_add(f.local_size);

        // The callee's symbols under names unique to this copy; its parameters are the
        // caller's call-sequence slots.
        let mut rename: HashMap<String, String> = HashMap::new();
        for (prm, arg) in f.params.iter().zip(args).chain(f.rets.iter().zip(rets)) {
            if let RawOp::Name(slot) = arg {
                rename.insert(prm.name.clone(), slot.clone());
            }
        }
        for (name, sym) in &f.syms {
            let moved = match *sym {
                Sym::Local(off) => Sym::Local(local_base + off),
                Sym::CallParam(off) => Sym::CallParam(local_base + off),
                // Shared variables resolve only if the kernel has them too (module scope).
                Sym::Shared(_) | Sym::Param(_) => continue,
            };
            // Call-sequence slots keep the prefix that marks them as such.
            let fresh = match moved {
                Sym::CallParam(_) => format!("{CALL_PARAM_PREFIX}{tag}:{name}"),
                _ => format!("{tag}:{name}"),
            };
            k.syms.insert(fresh.clone(), moved);
            rename.insert(name.clone(), fresh);
        }
        for label in f.labels.keys() {
            rename.insert(label.clone(), format!("{tag}:{label}"));
        }
        let ret_label = format!("{tag}:return");
        let body: Vec<RawInst> = f
            .insts
            .iter()
            .map(|fi| {
                let mut c = RawInst {
                    guard: fi.guard.map(|(r, n)| (r + reg_base, n)),
                    opcode: fi.opcode.clone(),
                    operands: fi
                        .operands
                        .iter()
                        .map(|o| remap(o, reg_base, &rename))
                        .collect(),
                    line: fi.line,
                    text: format!("{}    [inlined {}]", fi.text, f.name),
                    loc: fi.loc.or(ri.loc),
                };
                if c.opcode.split('.').next() == Some("ret") {
                    c.opcode = "bra.uni".into();
                    c.operands = vec![RawOp::Name(ret_label.clone())];
                }
                c
            })
            .collect();

        // Calls inside the copy are inlined in turn, against the kernel's tables.
        let mut sub = raw_shell(k);
        for (label, idx) in &f.labels {
            sub.labels.insert(format!("{tag}:{label}"), *idx);
        }
        let body = inline_calls(&mut sub, body, funcs, counter, depth + 1);
        k.reg_names = sub.reg_names;
        k.syms = sub.syms;
        k.local_size = sub.local_size;
        let start = out.len() as u32;
        for (label, idx) in sub.labels {
            added.insert(label, start + idx);
        }
        out.extend(body);
        added.insert(ret_label, out.len() as u32);
    }
    new_index.push(out.len() as u32);
    for idx in k.labels.values_mut() {
        *idx = new_index[*idx as usize];
    }
    k.labels.extend(added);
    out
}

/// A kernel record that borrows `k`'s registers, symbols and local size, for nested inlining.
fn raw_shell(k: &mut RawKernel) -> RawKernel {
    RawKernel {
        name: k.name.clone(),
        rets: Vec::new(),
        call_params: Vec::new(),
        params: Vec::new(),
        param_size: 0,
        insts: Vec::new(),
        labels: HashMap::new(),
        reg_names: std::mem::take(&mut k.reg_names),
        syms: std::mem::take(&mut k.syms),
        static_shared: k.static_shared,
        local_size: k.local_size,
    }
}

/// An operand of an inlined instruction: registers shifted, names renamed.
fn remap(o: &RawOp, reg_base: u32, rename: &HashMap<String, String>) -> RawOp {
    match o {
        RawOp::Reg(r) => RawOp::Reg(r + reg_base),
        RawOp::Name(n) => RawOp::Name(rename.get(n).cloned().unwrap_or_else(|| n.clone())),
        RawOp::Not(b) => RawOp::Not(Box::new(remap(b, reg_base, rename))),
        RawOp::Vector(v) => RawOp::Vector(v.iter().map(|e| remap(e, reg_base, rename)).collect()),
        RawOp::Pair(a, b) => RawOp::Pair(
            Box::new(remap(a, reg_base, rename)),
            Box::new(remap(b, reg_base, rename)),
        ),
        RawOp::Addr(b, off) => RawOp::Addr(
            b.as_ref().map(|b| Box::new(remap(b, reg_base, rename))),
            *off,
        ),
        other => other.clone(),
    }
}

/// Whether operand `o` mentions symbol `name`.
fn names(o: &RawOp, name: &str) -> bool {
    match o {
        RawOp::Name(n) => n == name,
        RawOp::Not(b) => names(b, name),
        RawOp::Vector(v) => v.iter().any(|e| names(e, name)),
        RawOp::Pair(a, b) => names(a, name) || names(b, name),
        RawOp::Addr(Some(b), _) => names(b, name),
        _ => false,
    }
}

fn parse_reg_decl(
    p: &mut Parser,
    names: &mut Vec<String>,
    scope: &mut HashMap<String, u32>,
) -> PtxResult<()> {
    // `.reg .type name<N>, name2, ...;` (an optional `.v2`/`.v4` is accepted and ignored).
    while let Some(s) = p.peek_ident() {
        if !s.starts_with('.') {
            break;
        }
        p.pos += 1;
    }
    loop {
        let name = p.ident()?;
        if p.eat_punct('<') {
            let n = p.number()?;
            if !(0..=1 << 20).contains(&n) {
                return p.err(format!("register count {n} out of range"));
            }
            p.expect_punct('>')?;
            for i in 0..n {
                let full = format!("{name}{i}");
                scope.insert(full.clone(), names.len() as u32);
                names.push(full);
            }
        } else {
            scope.insert(name.clone(), names.len() as u32);
            names.push(name);
        }
        if p.eat_punct(';') {
            return Ok(());
        }
        p.expect_punct(',')?;
    }
}

fn lookup_reg(scopes: &[HashMap<String, u32>], name: &str) -> Option<u32> {
    scopes.iter().rev().find_map(|s| s.get(name).copied())
}

fn parse_statement(p: &mut Parser, scopes: &[HashMap<String, u32>]) -> PtxResult<RawInst> {
    let first = p.pos;
    let line = p.line();
    let mut guard = None;
    if p.eat_punct('@') {
        let neg = p.eat_punct('!');
        let name = p.ident()?;
        let Some(r) = lookup_reg(scopes, &name) else {
            return p.err(format!("unknown guard predicate `{name}`"));
        };
        guard = Some((r, neg));
    }
    let opcode = p.ident()?;
    let mut operands = Vec::new();
    loop {
        // `call` wraps operand lists in parentheses; they carry no meaning for decoding.
        while p.eat_punct('(') || p.eat_punct(')') {}
        if p.is_punct(';') {
            break;
        }
        operands.push(parse_operand(p, scopes)?);
        while p.eat_punct('(') || p.eat_punct(')') {}
        if !p.eat_punct(',') && !p.is_punct(';') {
            return p.err(format!(
                "unexpected {:?} in operands of `{opcode}`",
                p.peek()
            ));
        }
    }
    let last = p.pos;
    p.expect_punct(';')?;
    let text = {
        let a = p.toks[first].start;
        let b = p.toks[last].end;
        p.src[a..b].split_whitespace().collect::<Vec<_>>().join(" ")
    };
    Ok(RawInst {
        loc: None,
        guard,
        opcode,
        operands,
        line,
        text,
    })
}

fn parse_operand(p: &mut Parser, scopes: &[HashMap<String, u32>]) -> PtxResult<RawOp> {
    let op = parse_simple_operand(p, scopes)?;
    if p.eat_punct('|') {
        let q = parse_simple_operand(p, scopes)?;
        return Ok(RawOp::Pair(Box::new(op), Box::new(q)));
    }
    Ok(op)
}

fn parse_simple_operand(p: &mut Parser, scopes: &[HashMap<String, u32>]) -> PtxResult<RawOp> {
    if p.eat_punct('!') {
        return Ok(RawOp::Not(Box::new(parse_simple_operand(p, scopes)?)));
    }
    if p.eat_punct('{') {
        let mut v = Vec::new();
        loop {
            v.push(parse_simple_operand(p, scopes)?);
            if p.eat_punct('}') {
                return Ok(RawOp::Vector(v));
            }
            p.expect_punct(',')?;
        }
    }
    if p.eat_punct('[') {
        let mut base = None;
        let mut offset: i64 = 0;
        if let Some(Tok::Ident(_)) = p.peek() {
            base = Some(Box::new(parse_simple_operand(p, scopes)?));
            if p.eat_punct('+') || p.is_punct('-') {
                offset = p.number()? as i64;
            }
        } else {
            offset = p.number()? as i64;
        }
        p.expect_punct(']')?;
        return Ok(RawOp::Addr(base, offset));
    }
    if p.is_punct('-') || matches!(p.peek(), Some(Tok::Num(_))) {
        let neg = p.eat_punct('-');
        return match p.next()? {
            Tok::Num(s) => match parse_literal(&s) {
                Some(l) => Ok(RawOp::Lit(l, neg)),
                None => p.err(format!("bad number `{s}`")),
            },
            t => p.err(format!("expected a number, found {t:?}")),
        };
    }
    let name = p.ident()?;
    if name == "_" {
        return Ok(RawOp::Sink);
    }
    if let Some(r) = lookup_reg(scopes, &name) {
        if r & CALL_PARAM_FLAG != 0 {
            return Ok(RawOp::Name(format!(
                "{CALL_PARAM_PREFIX}{}",
                r & !CALL_PARAM_FLAG
            )));
        }
        return Ok(RawOp::Reg(r));
    }
    Ok(RawOp::Name(name))
}

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
            "add" | "sub" => {
                if m.has("cc") {
                    return Err("carry (`.cc`) arithmetic is not implemented".into());
                }
                simple(
                    &mut inst,
                    if m.base == "add" { Op::Add } else { Op::Sub },
                    2,
                )?
            }
            "addc" | "subc" | "madc" => {
                return Err("carry (`.cc`) arithmetic is not implemented".into());
            }
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
                if ops.len() > 2 {
                    return Err(
                        "packing conversions (`cvt` with two sources) are not implemented".into(),
                    );
                }
                inst.op = Op::Cvt;
                inst.ty = m.ty(0)?;
                inst.ty2 = m.ty(1)?;
                if matches!(inst.ty, Ty::F16x2 | Ty::Bf16x2)
                    || matches!(inst.ty2, Ty::F16x2 | Ty::Bf16x2)
                {
                    return Err("packed half conversions are not implemented".into());
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

fn decode_kernel(
    rk: RawKernel,
    globals: &HashMap<String, u32>,
    files: &HashMap<u32, String>,
) -> Kernel {
    let dec = Decoder {
        syms: &rk.syms,
        globals,
        labels: &rk.labels,
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
        reg_names: rk.reg_names,
        static_shared: rk.static_shared,
        local_size: rk.local_size,
        unsupported,
    }
}
