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
//!   kept for the process; BatchNorm, max-pool, ReLU, `relu(a + b)` and the
//!   optimiser's step as our own kernels (`bn_cuda.rs`, `pool_cuda.rs`,
//!   `relu_cuda.rs`, `optim_cuda.rs`).
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
}

/// The environment variable that chooses [`GpuKernels`].
pub const ENV: &str = crate::env::GPU_KERNELS.name;

/// A value of `SWEEP_GPU_KERNELS` that is not one of the kernel sets, or one
/// this build lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelsError {
    /// Neither `generic` nor `cudnn`.
    #[error("{ENV}={0:?}: expected `generic` or `cudnn`")]
    Unknown(String),
    /// `cudnn` asked of a build without the `cudnn` feature.
    #[error("{ENV}=cudnn: this binary was built without cuDNN (rebuild with `--features cudnn`)")]
    NotBuilt,
}

impl GpuKernels {
    /// The name used in `SWEEP_GPU_KERNELS` and in device descriptions.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            GpuKernels::Generic => "generic",
            GpuKernels::Cudnn => "cudnn",
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
            "" | "generic" => Ok(GpuKernels::Generic),
            "cudnn" => Err(KernelsError::NotBuilt),
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
    CURRENT.store(u8::from(k == GpuKernels::Cudnn), Ordering::Relaxed);
}

/// The kernel set the CUDA layers use now.
#[must_use]
pub fn gpu_kernels() -> GpuKernels {
    if CURRENT.load(Ordering::Relaxed) == 1 {
        GpuKernels::Cudnn
    } else {
        GpuKernels::Generic
    }
}

/// Whether a layer on `device` takes the cuDNN path.
#[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
pub(crate) fn use_cudnn(device: &candle_core::Device) -> bool {
    cfg!(feature = "cudnn") && device.is_cuda() && gpu_kernels() == GpuKernels::Cudnn
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
        assert_eq!(GpuKernels::parse("cudnn", false), Err(KernelsError::NotBuilt));
        let e = GpuKernels::parse("cuDNN9", true).unwrap_err();
        assert_eq!(e.to_string(), "SWEEP_GPU_KERNELS=\"cuDNN9\": expected `generic` or `cudnn`");
        assert!(KernelsError::NotBuilt.to_string().contains("--features cudnn"));
    }

    #[test]
    fn the_cpu_never_takes_the_cudnn_path() {
        assert!(!use_cudnn(&candle_core::Device::Cpu));
    }
}
