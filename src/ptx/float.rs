//! Floating-point helpers: directed rounding, flush-to-zero and PTX's conversion rules.

use super::inst::Rnd;

/// Flushes an f32 subnormal to a zero of the same sign (`.ftz`).
#[inline]
pub(crate) fn ftz32(x: f32) -> f32 {
    if x.is_subnormal() {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

/// The next f32 towards +infinity.
pub(crate) fn next_up32(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let b = x.to_bits();
    f32::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

/// The next f32 towards -infinity.
pub(crate) fn next_down32(x: f32) -> f32 {
    -next_up32(-x)
}

/// The next f64 towards +infinity.
pub(crate) fn next_up64(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f64::from_bits(1);
    }
    let b = x.to_bits();
    f64::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

/// The next f64 towards -infinity.
pub(crate) fn next_down64(x: f64) -> f64 {
    -next_up64(-x)
}

/// `a + b == s + t` exactly, with `s` the rounded sum (Knuth's two-sum).
#[inline]
pub(crate) fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let t = (a - (s - bb)) + (b - bb);
    (s, if t.is_finite() { t } else { 0.0 })
}

/// Rounds the exact value `s + t` (`|t|` at most half an f64 ulp of `s`) to f32 with `rnd`.
pub(crate) fn round_f32(s: f64, t: f64, rnd: Rnd) -> f32 {
    let f = s as f32;
    if matches!(rnd, Rnd::None | Rnd::Rn) || s.is_nan() {
        return f;
    }
    if f.is_infinite() && s.is_finite() {
        // Overflow: directed modes stop at the largest finite value on their side.
        let max = f32::MAX.copysign(f);
        return match rnd {
            Rnd::Rz => max,
            Rnd::Rm if f > 0.0 => max,
            Rnd::Rp if f < 0.0 => max,
            _ => f,
        };
    }
    let diff = s - f as f64;
    let dir = if diff != 0.0 { diff } else { t };
    let (above, below) = (dir > 0.0, dir < 0.0);
    match rnd {
        Rnd::Rm if below => next_down32(f),
        Rnd::Rp if above => next_up32(f),
        Rnd::Rz if below && s > 0.0 => next_down32(f),
        Rnd::Rz if above && s < 0.0 => next_up32(f),
        _ => f,
    }
}

/// Rounds the exact value `s + t` (`s` already round-to-nearest) to f64 with `rnd`.
pub(crate) fn round_f64(s: f64, t: f64, rnd: Rnd) -> f64 {
    if t == 0.0 || !s.is_finite() {
        return s;
    }
    match rnd {
        Rnd::Rm if t < 0.0 => next_down64(s),
        Rnd::Rp if t > 0.0 => next_up64(s),
        Rnd::Rz if t < 0.0 && s > 0.0 => next_down64(s),
        Rnd::Rz if t > 0.0 && s < 0.0 => next_up64(s),
        _ => s,
    }
}

/// f32 `a + b` with rounding mode `rnd`.
pub(crate) fn add32(a: f32, b: f32, rnd: Rnd) -> f32 {
    if matches!(rnd, Rnd::None | Rnd::Rn) {
        return a + b;
    }
    let (s, t) = two_sum(a as f64, b as f64);
    round_f32(s, t, rnd)
}

/// f32 `a * b` with rounding mode `rnd` (the f64 product of two f32 is exact).
pub(crate) fn mul32(a: f32, b: f32, rnd: Rnd) -> f32 {
    if matches!(rnd, Rnd::None | Rnd::Rn) {
        return a * b;
    }
    round_f32(a as f64 * b as f64, 0.0, rnd)
}

/// f32 `a * b + c` rounded once with `rnd`.
pub(crate) fn fma32(a: f32, b: f32, c: f32, rnd: Rnd) -> f32 {
    if matches!(rnd, Rnd::None | Rnd::Rn) {
        return a.mul_add(b, c);
    }
    let (s, t) = two_sum(a as f64 * b as f64, c as f64);
    round_f32(s, t, rnd)
}

/// f64 `a + b` with rounding mode `rnd`.
pub(crate) fn add64(a: f64, b: f64, rnd: Rnd) -> f64 {
    let (s, t) = two_sum(a, b);
    round_f64(s, t, rnd)
}

/// f64 `a * b` with rounding mode `rnd`.
pub(crate) fn mul64(a: f64, b: f64, rnd: Rnd) -> f64 {
    let s = a * b;
    if matches!(rnd, Rnd::None | Rnd::Rn) || !s.is_finite() {
        return s;
    }
    round_f64(s, a.mul_add(b, -s), rnd)
}

/// Rounds a float to an integral value as `.rni/.rzi/.rmi/.rpi` say (others: nearest-even).
pub(crate) fn round_integral(x: f64, rnd: Rnd) -> f64 {
    match rnd {
        Rnd::Rzi | Rnd::Rz => x.trunc(),
        Rnd::Rmi | Rnd::Rm => x.floor(),
        Rnd::Rpi | Rnd::Rp => x.ceil(),
        _ => round_half_even(x),
    }
}

fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directed_rounding_brackets_the_exact_sum() {
        let (a, b) = (1.0f32, 1e-10f32);
        assert_eq!(add32(a, b, Rnd::Rn), 1.0);
        assert_eq!(add32(a, b, Rnd::Rz), 1.0);
        assert_eq!(add32(a, b, Rnd::Rm), 1.0);
        assert_eq!(add32(a, b, Rnd::Rp), next_up32(1.0));
        assert_eq!(add32(-a, -b, Rnd::Rm), -next_up32(1.0));
        assert_eq!(add32(-a, -b, Rnd::Rz), -1.0);
        assert!(fma32(3.0, 1.0 / 3.0, 0.0, Rnd::Rm) <= 1.0);
        assert_eq!(round_integral(2.5, Rnd::Rni), 2.0);
        assert_eq!(round_integral(-2.5, Rnd::Rni), -2.0);
        assert_eq!(round_integral(3.5, Rnd::Rni), 4.0);
    }
}
