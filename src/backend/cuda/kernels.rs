//! Every kernel entry point, named once, and the kernel images build.rs embedded.
//!
//! [`MODULES`] and [`PTX_MODULES`] hold exactly what build.rs produced from `kernels/*.cu`
//! (both empty when it found no nvcc, see [`BUILT_WITH_NVCC`]): the PTX interpreter and the
//! tests load from here.

use super::params::*;

/// One compiled kernel file.
#[derive(Debug, Clone, Copy)]
pub struct ModuleImage {
    /// The file stem: `conv` for `kernels/conv.cu`.
    pub name: &'static str,
    /// PTX for [`PTX_ARCH`], NUL-free text.
    pub ptx: &'static str,
    /// A fatbin with that PTX and native code for [`NATIVE_CODE`].
    pub fatbin: &'static [u8],
}

/// One kernel entry point: the file it lives in, its name, and the size of its one parameter
/// struct (the launch checks the bytes it passes against it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kernel {
    pub module: &'static str,
    pub name: &'static str,
    pub param_bytes: usize,
}

include!(concat!(env!("OUT_DIR"), "/kernels_generated.rs"));

/// The image of module `name`, if build.rs compiled it.
pub fn module(name: &str) -> Option<&'static ModuleImage> {
    MODULES.iter().find(|m| m.name == name)
}

/// Declares one constant per kernel and [`ALL`], the list the tests check against the PTX.
macro_rules! kernel_table {
    ($($module:literal { $($id:ident = $name:literal ($params:ty),)* })*) => {
        $($(
            #[doc = concat!("`", $name, "` in `kernels/", $module, ".cu`.")]
            pub const $id: Kernel = Kernel {
                module: $module,
                name: $name,
                param_bytes: std::mem::size_of::<$params>(),
            };
        )*)*
        /// Every kernel the backend launches.
        pub const ALL: &[Kernel] = &[$($($id,)*)*];
    };
}

kernel_table! {
    "elementwise" {
        ADD_FWD = "add_fwd_f32" (EwParams),
        ADD_ASSIGN_FWD = "add_assign_fwd_f32" (EwParams),
        SCALE_FWD = "scale_fwd_f32" (EwParams),
        LERP_ASSIGN_FWD = "lerp_assign_fwd_f32" (EwParams),
        RELU_FWD = "relu_fwd_f32" (EwParams),
        RELU_BWD = "relu_bwd_f32" (EwParams),
        SIGMOID_FWD = "sigmoid_fwd_f32" (EwParams),
        AVG_POOL_GLOBAL_BWD = "avg_pool_global_bwd_f32" (BroadcastParams),
        ADAM_UPDATE_FWD = "adam_update_fwd_f32" (AdamKernelParams),
        NON_FINITE_COUNT_FWD = "non_finite_count_fwd_f32" (CountParams),
    }
    "reduce" {
        CHANNEL_SUM_FWD = "channel_sum_fwd_f32" (ColumnSumParams),
        BATCH_NORM_SQDEV_FWD = "batch_norm_sqdev_fwd_f32" (BatchNormKernelParams),
        BATCH_NORM_APPLY_FWD = "batch_norm_apply_fwd_f32" (BatchNormKernelParams),
        BATCH_NORM_REDUCE_BWD = "batch_norm_reduce_bwd_f32" (BatchNormKernelParams),
        BATCH_NORM_APPLY_BWD = "batch_norm_apply_bwd_f32" (BatchNormKernelParams),
    }
    "pool" {
        MAX_POOL_FWD = "max_pool_fwd_f32" (MaxPoolParams),
        MAX_POOL_BWD = "max_pool_bwd_f32" (MaxPoolParams),
    }
    "conv" {
        CONV2D_FWD = "conv2d_fwd_f32" (ConvParams),
        CONV2D_DATA_BWD = "conv2d_data_bwd_f32" (ConvParams),
        CONV2D_FILTER_BWD = "conv2d_filter_bwd_f32" (ConvParams),
    }
    "head" {
        COSFACE_NORM_FWD = "cosface_norm_fwd_f32" (RowNormParams),
        COSFACE_FWD = "cosface_fwd_f32" (CosFaceKernelParams),
        COSFACE_BWD = "cosface_bwd_f32" (CosFaceBwdParams),
        SOFTMAX_XENT_FWD = "softmax_xent_fwd_f32" (RowParams),
        SOFTMAX_XENT_BWD = "softmax_xent_bwd_f32" (RowParams),
        SOFTMAX_FWD = "softmax_fwd_f32" (RowParams),
        SIGMOID_XENT_FWD = "sigmoid_xent_fwd_f32" (RowParams),
        SIGMOID_XENT_BWD = "sigmoid_xent_bwd_f32" (RowParams),
        SCORE_POOL_FWD = "score_pool_fwd_f32" (ScoreKernelParams),
        TOP_K_FWD = "top_k_fwd_f32" (TopKParams),
    }
}
