//! The PTX parser: module directives, variable declarations and kernel bodies, up to raw
//! statements whose names are resolved later by `decode`.

use std::collections::{BTreeSet, HashMap};

use super::decode::decode_kernel;
use super::error::{PtxError, PtxResult};
use super::inline::inline_calls;
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
pub(super) enum RawOp {
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
pub(super) struct RawInst {
    pub(super) guard: Option<(u32, bool)>,
    pub(super) opcode: String,
    pub(super) operands: Vec<RawOp>,
    pub(super) line: u32,
    pub(super) text: String,
    /// CUDA source `(file index, line)` from the last `.loc`, if the PTX has line info.
    pub(super) loc: Option<(u32, u32)>,
}

/// Symbols a kernel body can name, besides registers and labels.
#[derive(Clone, Copy)]
pub(super) enum Sym {
    Param(u32),
    /// A call-sequence `.param` inside a body; it lives in the thread's local memory.
    CallParam(u32),
    Shared(u32),
    Local(u32),
}

/// Marks a scope entry as a call parameter rather than a register.
const CALL_PARAM_FLAG: u32 = 1 << 31;
/// Prefix of the unique names call parameters get (not a valid PTX identifier start).
pub(super) const CALL_PARAM_PREFIX: &str = "@callparam";

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
pub(super) struct RawKernel {
    pub(super) name: String,
    /// Return parameters of a `.func`.
    pub(super) rets: Vec<ParamInfo>,
    /// Local-memory offsets of call-sequence parameters.
    pub(super) call_params: Vec<u32>,
    pub(super) params: Vec<ParamInfo>,
    pub(super) param_size: u32,
    pub(super) insts: Vec<RawInst>,
    pub(super) labels: HashMap<String, u32>,
    pub(super) reg_names: Vec<String>,
    pub(super) syms: HashMap<String, Sym>,
    pub(super) static_shared: u32,
    pub(super) local_size: u32,
}

pub(super) fn align_up(x: u32, a: u32) -> u32 {
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
                    let Some(scope) = scopes.last_mut() else {
                        return p.err("`.reg` outside a body");
                    };
                    parse_reg_decl(p, &mut k.reg_names, scope)?;
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
                    let Some(scope) = scopes.last_mut() else {
                        return p.err("`.param` outside a body");
                    };
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
