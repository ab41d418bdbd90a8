//! The float trait the CPU kernels are generic over: f32 to run, f64 to check gradients.

use std::cell::Cell;
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// An f32 or f64 element. Sealed: `gemm` dispatches on the concrete type and supports exactly
/// these two real types, so no other implementation may exist.
pub trait Float:
    sealed::Sealed
    + Copy
    + Send
    + Sync
    + Default
    + Debug
    + PartialOrd
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;

    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;

    /// This thread's spare work buffer (empty if none), to be handed back with
    /// [`Float::keep_scratch`]. im2col buffers run to megabytes per convolution; reusing one
    /// skips the allocation and the zero fill on every call. Taking rather than borrowing
    /// keeps a nested call (rayon may run one while we wait) safe: it just gets a new buffer.
    fn take_scratch() -> Vec<Self>;

    /// Returns a work buffer for the next [`Float::take_scratch`] on this thread.
    fn keep_scratch(buf: Vec<Self>);

    fn from_usize(v: usize) -> Self {
        Self::from_f64(v as f64)
    }
}

macro_rules! impl_float {
    ($t:ty, $scratch:ident) => {
        thread_local! {
            static $scratch: Cell<Vec<$t>> = const { Cell::new(Vec::new()) };
        }

        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;

            fn take_scratch() -> Vec<Self> {
                $scratch.take()
            }
            fn keep_scratch(buf: Vec<Self>) {
                $scratch.set(buf);
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
        }
    };
}

impl_float!(f32, SCRATCH_F32);
impl_float!(f64, SCRATCH_F64);
