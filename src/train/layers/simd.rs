//! What the CPU can run, checked once (AVX2 and FMA, AVX-512F), for sweep's
//! own CPU kernels; and code compiled twice, for the x86-64 baseline and for
//! AVX2, the one the CPU can run picked at run time (Winograd F(4x4, 3x3)'s
//! transforms, `winograd4.rs`). The binary stays runnable on any x86-64.

/// Defines a task (`$name`, inlined where it is called) and the same code
/// compiled for AVX2 (`$avx2`): without a target feature, the x86-64
/// baseline, a loop over floats or an 8-float array is vectorised into
/// 128-bit SSE instructions, with AVX2 into 256-bit ones. Each float gets the
/// same multiplies and adds in the same order (Rust fuses none into an FMA
/// and reorders no float arithmetic), so both give the same bits.
macro_rules! twice {
    ($(#[$m:meta])* fn $name:ident / $avx2:ident ($($a:ident: $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[inline(always)]
        #[allow(clippy::too_many_arguments)] // a task takes its convolution's sizes and buffers
        fn $name($($a: $t),*) $body

        /// The task above compiled for AVX2.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        #[allow(clippy::too_many_arguments)]
        fn $avx2($($a: $t),*) {
            $name($($a),*)
        }
    };
}

/// Runs a task of `twice!`, its AVX2 code where the CPU has AVX2 (and FMA, as [`simd`] checks).
macro_rules! run {
    ($name:ident / $avx2:ident ($($e:expr),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if $crate::train::layers::simd::simd() {
                // SAFETY: the CPU has AVX2 (`simd` checked).
                #[allow(unsafe_code)]
                unsafe {
                    $avx2($($e),*)
                }
            } else {
                $name($($e),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        $name($($e),*)
    }};
}

/// Whether the AVX2 + FMA code can run here (checked once): the direct 3x3
/// and batch-in-lanes tiles (`conv3x3.rs`, `conv_lanes.rs`), the tasks of `twice!`.
pub(super) fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether sweep's own convolution tiles run in 512-bit registers (AVX-512F, checked once):
/// the direct 3x3 forward tiles and the batch-in-lanes forward and input-gradient tiles (the
/// same bits as the AVX2 tiles) and kernel-gradient tiles (16 partial sums a tap, not 8).
/// `SWEEP_CPU_SIMD=avx2` keeps them at 256 bits, for comparison.
pub(super) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f") && crate::env::CPU_SIMD.get().is_none_or(|v| v != "avx2")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}
