//! Which kernels the layers use on a CUDA device: `SWEEP_GPU_KERNELS`.
//!
//! * `generic` (the default of a build without the `cudnn` feature): candle's
//!   own CUDA path for every layer (its
//!   convolution, with `--features cudnn` a cuDNN forward pass, and candle's
//!   `conv_transpose2d` kernel for the input gradient; BatchNorm and pooling
//!   as elementwise and reduction kernels).
//! * `cudnn` (the default of a build with `--features cudnn`, verified on an
//!   H200 against the CPU and faster than PyTorch's eager step there,
//!   BENCHMARKS.md): convolutions forward, backward data and backward filter
//!   through cuDNN, with descriptors, algorithms and one growing workspace
//!   kept for the process; BatchNorm, max-pool, ReLU, `relu(a + b)`, the
//!   optimiser's step, the cross-entropy with the numbers read back from it,
//!   and a resident split's batches as our own kernels (`bn_cuda.rs`,
//!   `pool_cuda.rs`, `relu_cuda.rs`, `optim_cuda.rs`, `ce_cuda.rs`,
//!   `pixels_cuda.rs`).
//! * `cudnn-nhwc`: the `cudnn` set with channels-last activations: every
//!   convolution takes and returns (N, H, W, C) storage (seen by the model as
//!   an NCHW view with those strides), so that cuDNN's bf16 tensor-core
//!   kernels need no NCHW<->NHWC transposes around each call (22.6% of a
//!   bf16 ResNet18 step's GPU time on an H200); BatchNorm, max-pool, ReLU
//!   and the residual sums follow the layout of their input. Opt-in until
//!   `bench/gpu.sh` has checked it on a GPU (`layout.rs`).
//!
//! The CPU path does not depend on it. The choice is read once, when a CUDA
//! device is opened ([`crate::train::device`]), and recorded in the device's
//! description, so a run's record says which kernels trained it.

use std::sync::atomic::{AtomicU8, Ordering};

/// The kernel set of the CUDA path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuKernels {
    /// candle's CUDA kernels.
    Generic,
    /// cuDNN's convolutions (needs a build with the `cudnn` feature).
    Cudnn,
    /// [`GpuKernels::Cudnn`] with channels-last activations.
    CudnnNhwc,
}

/// The environment variable that chooses [`GpuKernels`].
pub const ENV: &str = crate::env::GPU_KERNELS.name;

/// A value of `SWEEP_GPU_KERNELS` that is not one of the kernel sets, or one
/// this build lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelsError {
    /// Not one of `generic`, `cudnn`, `cudnn-nhwc`.
    #[error("{ENV}={0:?}: expected `generic`, `cudnn` or `cudnn-nhwc`")]
    Unknown(String),
    /// `cudnn` or `cudnn-nhwc` asked of a build without the `cudnn` feature.
    #[error("{ENV}={0}: this binary was built without cuDNN (rebuild with `--features cudnn`)")]
    NotBuilt(&'static str),
}

impl GpuKernels {
    /// The name used in `SWEEP_GPU_KERNELS` and in device descriptions.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            GpuKernels::Generic => "generic",
            GpuKernels::Cudnn => "cudnn",
            GpuKernels::CudnnNhwc => "cudnn-nhwc",
        }
    }

    /// Parses a value of `SWEEP_GPU_KERNELS` for a build that has cuDNN
    /// (`with_cudnn`) or not; empty is the default: `cudnn` where the build
    /// has it, else `generic`.
    ///
    /// # Errors
    /// An unknown name, or `cudnn` without cuDNN in the build.
    pub fn parse(value: &str, with_cudnn: bool) -> Result<GpuKernels, KernelsError> {
        match value.trim() {
            "" | "cudnn" if with_cudnn => Ok(GpuKernels::Cudnn),
            "cudnn-nhwc" if with_cudnn => Ok(GpuKernels::CudnnNhwc),
            "" | "generic" => Ok(GpuKernels::Generic),
            "cudnn" => Err(KernelsError::NotBuilt("cudnn")),
            "cudnn-nhwc" => Err(KernelsError::NotBuilt("cudnn-nhwc")),
            other => Err(KernelsError::Unknown(other.to_string())),
        }
    }

    /// The choice in the environment, for this build.
    ///
    /// # Errors
    /// As [`GpuKernels::parse`].
    pub fn from_env() -> Result<GpuKernels, KernelsError> {
        GpuKernels::parse(&std::env::var(ENV).unwrap_or_default(), cfg!(feature = "cudnn"))
    }
}

static CURRENT: AtomicU8 = AtomicU8::new(0);

/// Makes `k` the kernel set of every CUDA layer from now on.
pub fn set_gpu_kernels(k: GpuKernels) {
    let v = match k {
        GpuKernels::Generic => 0,
        GpuKernels::Cudnn => 1,
        GpuKernels::CudnnNhwc => 2,
    };
    CURRENT.store(v, Ordering::Relaxed);
}

/// The kernel set the CUDA layers use now.
#[must_use]
pub fn gpu_kernels() -> GpuKernels {
    match CURRENT.load(Ordering::Relaxed) {
        1 => GpuKernels::Cudnn,
        2 => GpuKernels::CudnnNhwc,
        _ => GpuKernels::Generic,
    }
}

/// Whether a layer on `device` takes the cuDNN path.
#[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
pub(crate) fn use_cudnn(device: &candle_core::Device) -> bool {
    cfg!(feature = "cudnn") && device.is_cuda() && gpu_kernels() != GpuKernels::Generic
}

/// Whether convolutions on `device` turn their input channels-last.
#[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
pub(crate) fn channels_last(device: &candle_core::Device) -> bool {
    cfg!(feature = "cudnn") && device.is_cuda() && gpu_kernels() == GpuKernels::CudnnNhwc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_two_kernel_sets_and_refuses_others() {
        assert_eq!(GpuKernels::parse("", false), Ok(GpuKernels::Generic));
        assert_eq!(GpuKernels::parse("", true), Ok(GpuKernels::Cudnn));
        assert_eq!(GpuKernels::parse("generic", true), Ok(GpuKernels::Generic));
        assert_eq!(GpuKernels::parse(" cudnn ", true), Ok(GpuKernels::Cudnn));
        assert_eq!(GpuKernels::parse("cudnn-nhwc", true), Ok(GpuKernels::CudnnNhwc));
        assert_eq!(GpuKernels::parse("cudnn", false), Err(KernelsError::NotBuilt("cudnn")));
        assert_eq!(GpuKernels::parse("cudnn-nhwc", false), Err(KernelsError::NotBuilt("cudnn-nhwc")));
        let e = GpuKernels::parse("cuDNN9", true).unwrap_err();
        assert_eq!(e.to_string(), "SWEEP_GPU_KERNELS=\"cuDNN9\": expected `generic`, `cudnn` or `cudnn-nhwc`");
        assert!(KernelsError::NotBuilt("cudnn").to_string().contains("--features cudnn"));
        for k in [GpuKernels::Generic, GpuKernels::Cudnn, GpuKernels::CudnnNhwc] {
            assert_eq!(GpuKernels::parse(k.name(), true), Ok(k));
        }
    }

    #[test]
    fn the_cpu_never_takes_the_cudnn_path() {
        assert!(!use_cudnn(&candle_core::Device::Cpu));
        assert!(!channels_last(&candle_core::Device::Cpu));
    }
}
