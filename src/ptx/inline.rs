//! Inlining of device-function calls: each `call` of a `.func` with a body becomes a copy of
//! that body with fresh registers, local memory and labels.

use std::collections::HashMap;

use super::parse::{align_up, RawInst, RawKernel, RawOp, Sym, CALL_PARAM_PREFIX};

/// Deepest chain of device-function calls the inliner follows (recursion stops here).
pub(super) const MAX_INLINE_DEPTH: u32 = 16;

/// Replaces each `call` of a device function that has a body with a copy of that body, with
/// fresh registers, local memory and labels; `ret` becomes a branch past the copy, and the
/// callee's parameters become the caller's call-sequence slots. Calls it cannot inline stay
/// and decode as `vprintf`, `__assertfail` or unsupported.
pub(super) fn inline_calls(
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
