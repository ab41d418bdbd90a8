//! Splits PTX text into tokens that remember their line and byte position.

use super::error::{PtxError, PtxResult};

/// A token's kind and text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A name: directive (`.reg`), register (`%r1`), opcode (`ld.global.f32`), label, symbol.
    Ident(String),
    /// A numeric literal, still as text (`42`, `0x1F`, `0f3F800000`, `1.5`).
    Num(String),
    /// A string literal (only `.pragma` and `.file` use these).
    Str(String),
    /// One punctuation character.
    Punct(char),
}

/// A token with its 1-based line and byte offsets into the source.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    pub line: u32,
    pub start: usize,
    pub end: usize,
}

fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || matches!(c, b'_' | b'$' | b'%' | b'.')
}

fn ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'.')
}

/// Tokenizes `src`, dropping comments and whitespace.
pub(crate) fn tokenize(src: &str) -> PtxResult<Vec<Token>> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1u32;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                if b[i] == b'\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 2;
            continue;
        }
        let start = i;
        let tok = if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\n' {
                    return Err(PtxError::Parse {
                        line,
                        detail: "unterminated string".into(),
                    });
                }
                i += 1;
            }
            i += 1;
            Tok::Str(src[start + 1..i - 1].to_string())
        } else if ident_start(c) {
            i += 1;
            loop {
                if i < b.len() && ident_char(b[i]) {
                    i += 1;
                } else if i + 2 < b.len() && b[i] == b':' && b[i + 1] == b':' {
                    // Qualifiers such as `.L2::128B` or `.shared::cta`.
                    i += 2;
                } else {
                    break;
                }
            }
            Tok::Ident(src[start..i].to_string())
        } else if c.is_ascii_digit() {
            let hexlike = b
                .get(i + 1)
                .is_some_and(|n| matches!(n, b'x' | b'X' | b'f' | b'F'))
                || (c == b'0' && b.get(i + 1).is_some_and(|n| matches!(n, b'd' | b'D')));
            i += 1;
            while i < b.len() {
                let n = b[i];
                let exp_sign =
                    !hexlike && matches!(n, b'+' | b'-') && matches!(b[i - 1], b'e' | b'E');
                if n.is_ascii_alphanumeric() || n == b'.' || exp_sign {
                    i += 1;
                } else {
                    break;
                }
            }
            Tok::Num(src[start..i].to_string())
        } else {
            i += 1;
            Tok::Punct(c as char)
        };
        out.push(Token {
            tok,
            line,
            start,
            end: i,
        });
    }
    Ok(out)
}

/// A parsed numeric literal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Literal {
    Int(i128),
    F32Bits(u32),
    F64Bits(u64),
    Float(f64),
}

/// Parses a numeric literal (without sign).
pub(crate) fn parse_literal(s: &str) -> Option<Literal> {
    let t = s.trim_end_matches(['U', 'u']);
    if let Some(h) = t.strip_prefix("0f").or_else(|| t.strip_prefix("0F")) {
        return u32::from_str_radix(h, 16).ok().map(Literal::F32Bits);
    }
    if let Some(h) = t.strip_prefix("0d").or_else(|| t.strip_prefix("0D")) {
        return u64::from_str_radix(h, 16).ok().map(Literal::F64Bits);
    }
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16)
            .ok()
            .map(|v| Literal::Int(v as i128));
    }
    if let Some(h) = t.strip_prefix("0b").or_else(|| t.strip_prefix("0B")) {
        return u64::from_str_radix(h, 2)
            .ok()
            .map(|v| Literal::Int(v as i128));
    }
    if t.contains(['.', 'e', 'E']) {
        return t.parse::<f64>().ok().map(Literal::Float);
    }
    if t.len() > 1 && t.starts_with('0') {
        return u64::from_str_radix(&t[1..], 8)
            .ok()
            .map(|v| Literal::Int(v as i128));
    }
    t.parse::<u64>().ok().map(|v| Literal::Int(v as i128))
}
