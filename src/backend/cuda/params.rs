//! The `#[repr(C)]` parameter structs, one per kernel family, mirrored field for field in
//! `kernels/*.cu` (see `kernels/common.cuh` for the convention).
//!
//! Device pointers are `u64` (0 for "none"), sizes `i32` (the host refuses tensors of 2^31
//! elements or more), scalars `f32`; pointers come first and `pad` fields make every size a
//! multiple of 8, so `bytemuck::Pod` holds and the layout has no implicit padding. Each struct
//! has a const size check here and a `static_assert` in C, and the `cuda_kernels` test compares
//! the size with the `.param` declaration of every PTX entry.

use bytemuck::{Pod, Zeroable};

/// Checks at compile time that a struct has the byte size its C mirror asserts.
macro_rules! check_size {
    ($t:ty, $bytes:expr) => {
        const _: () = assert!(std::mem::size_of::<$t>() == $bytes);
    };
}

/// `EwParams` in `elementwise.cu`: the simple elementwise kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct EwParams {
    pub out: u64,
    pub a: u64,
    pub b: u64,
    pub n: i32,
    pub alpha: f32,
    pub weight: f32,
    pub pad: i32,
}
check_size!(EwParams, 40);

/// `BroadcastParams` in `elementwise.cu`: global average pool backward.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BroadcastParams {
    pub dx: u64,
    pub dy: u64,
    pub n: i32,
    pub hw: i32,
    pub c: i32,
    pub scale: f32,
}
check_size!(BroadcastParams, 32);

/// `AdamParams` in `elementwise.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct AdamKernelParams {
    pub param: u64,
    pub grad: u64,
    pub m: u64,
    pub v: u64,
    pub n: i32,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step_size: f32,
    pub bias2_sqrt: f32,
    pub decoupled: i32,
    pub pad: i32,
}
check_size!(AdamKernelParams, 72);

/// `CountParams` in `elementwise.cu`: `count` points at one `u32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct CountParams {
    pub x: u64,
    pub count: u64,
    pub n: i32,
    pub pad: i32,
}
check_size!(CountParams, 24);

/// `ColumnSumParams` in `reduce.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ColumnSumParams {
    pub x: u64,
    pub out: u64,
    pub rows: i32,
    pub cols: i32,
    pub rows_per_chunk: i32,
    pub scale: f32,
}
check_size!(ColumnSumParams, 32);

/// `BatchNormParams` in `reduce.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BatchNormKernelParams {
    pub x: u64,
    pub dy: u64,
    pub mean: u64,
    pub var: u64,
    pub gamma: u64,
    pub beta: u64,
    pub dgamma: u64,
    pub dbeta: u64,
    pub out: u64,
    pub rows: i32,
    pub cols: i32,
    pub rows_per_chunk: i32,
    pub eps: f32,
}
check_size!(BatchNormKernelParams, 88);

/// `MaxPoolParams` in `pool.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct MaxPoolParams {
    pub x: u64,
    pub y: u64,
    pub dy: u64,
    pub out: u64,
    pub n: i32,
    pub h: i32,
    pub w: i32,
    pub c: i32,
    pub ho: i32,
    pub wo: i32,
    pub kernel: i32,
    pub stride: i32,
    pub padding: i32,
    pub pad: i32,
}
check_size!(MaxPoolParams, 72);

/// `ConvParams` in `conv.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConvParams {
    pub x: u64,
    pub w: u64,
    pub bias: u64,
    pub dy: u64,
    pub out: u64,
    pub n: i32,
    pub in_h: i32,
    pub in_w: i32,
    pub ci: i32,
    pub out_h: i32,
    pub out_w: i32,
    pub co: i32,
    pub kernel: i32,
    pub stride: i32,
    pub padding: i32,
    pub pixels_per_split: i32,
    pub pad: i32,
}
check_size!(ConvParams, 88);

/// `RowNormParams` in `head.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct RowNormParams {
    pub x: u64,
    pub inv_norm: u64,
    pub rows: i32,
    pub cols: i32,
    pub eps: f32,
    pub pad: i32,
}
check_size!(RowNormParams, 32);

/// `CosFaceParams` in `head.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct CosFaceKernelParams {
    pub emb: u64,
    pub weight: u64,
    pub emb_inv: u64,
    pub weight_inv: u64,
    pub targets: u64,
    pub logits: u64,
    pub n: i32,
    pub l: i32,
    pub d: i32,
    pub margin: f32,
    pub scale: f32,
    pub multilabel: i32,
}
check_size!(CosFaceKernelParams, 72);

/// `CosFaceBwdParams` in `head.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct CosFaceBwdParams {
    pub x: u64,
    pub x_inv: u64,
    pub other: u64,
    pub other_inv: u64,
    pub dlogits: u64,
    pub dx: u64,
    pub rows: i32,
    pub others: i32,
    pub cols: i32,
    pub coef_row_stride: i32,
    pub coef_col_stride: i32,
    pub scale: f32,
    pub eps: f32,
    pub pad: i32,
}
check_size!(CosFaceBwdParams, 80);

/// `RowParams` in `head.cu`: losses and probabilities.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct RowParams {
    pub logits: u64,
    pub targets: u64,
    pub out: u64,
    pub rows: i32,
    pub cols: i32,
    pub scale: f32,
    pub pad: i32,
}
check_size!(RowParams, 40);

/// `ScoreParams` in `head.cu`; the enums travel as their declaration index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ScoreKernelParams {
    pub logits: u64,
    pub scores: u64,
    pub rows: i32,
    pub cols: i32,
    pub uncertainty: i32,
    pub aggregate: i32,
    pub multilabel: i32,
    pub pad: i32,
}
check_size!(ScoreKernelParams, 40);

/// `TopKParams` in `head.cu`: `order` points at `u32` slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct TopKParams {
    pub scores: u64,
    pub order: u64,
    pub n: i32,
    pub k: i32,
}
check_size!(TopKParams, 24);
