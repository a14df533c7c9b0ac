//! Layers whose candle versions are wrong or slow for training.
//!
//! * [`conv2d`]: on the CPU, one im2col matrix of the whole batch (patches as
//!   rows, channels contiguous) and one large matrix product for the forward
//!   pass; the backward pass recomputes the im2col matrix and gets the weight
//!   gradient and the input gradient (then col2im) from two more products.
//!   candle's CPU conv builds a strided im2col tile per 512 pixels and its
//!   backward uses a direct `conv_transpose2d` loop, both far slower.
//!   3x3 stride-1 convolutions skip the column matrix where that is faster
//!   (`conv3x3.rs`: register tiles over a padded copy of the batch).
//! * [`max_pool2d`]: any kernel, stride and padding (the ResNet/DenseNet stem's
//!   3x3/2 with padding 1), with the gradient going to the first maximum of each
//!   window with weight one, as in PyTorch. candle's max-pool backward scales it by
//!   #max/k² and exists only for kernel == stride without padding.
//! * [`avg_pool2d`] (floor mode) and [`adaptive_avg_pool2d`] (VGG's 7x7).
//! * [`batch_norm_cpu`]: BatchNorm's normalisation as one op with PyTorch's
//!   closed-form backward, statistics accumulated in f64, optionally with the
//!   ReLU that follows it in the same op; [`batch_norm_add_relu_cpu`] with a
//!   ResNet block's residual sum and ReLU in the same op.
//! * [`add_relu`]: a ResNet block's `relu(out + identity)` as one op, and
//!   `bias_relu`: a VGG convolution's `relu(out + bias)`.
//! * [`batch_norm_relu_max_pool2_cpu`]: BatchNorm, ReLU and a 2x2/2 max-pool as
//!   one op (smallcnn's blocks).
//!
//! * On CUDA, [`GpuKernels`] (`SWEEP_GPU_KERNELS`) chooses between candle's
//!   kernels and the `cudnn` set: cuDNN's convolutions (`conv_cudnn.rs`) and
//!   our own kernels, compiled by NVRTC at first use, for BatchNorm
//!   (`bn_cuda.rs`, with the ReLU or a ResNet block's residual and ReLU in
//!   the same kernels), max-pool (`pool_cuda.rs`), ReLU and `relu(a + b)`
//!   (`relu_cuda.rs`), f32 or bf16, the optimisers' step (`optim_cuda.rs`),
//!   the cross-entropy with the test pass's numbers (`ce_cuda.rs`) and a
//!   resident split's batches (`pixels_cuda.rs`), all with `--features cudnn` (what they share: `cuda.rs`); with
//!   `cudnn-nhwc` the same with channels-last activations (`layout.rs`).
//!
//! One op per file: `conv.rs` (and its direct 3x3 path, `conv3x3.rs`), `conv_cudnn.rs` (and the channels-last filter, `krsc_cuda.rs`), `bn_cuda.rs`, `pool.rs`, `pool_cuda.rs`, `relu_cuda.rs`, `optim_step.rs` (`optim_cpu.rs`, `optim_cuda.rs`), `batch_norm.rs`, `add_relu.rs`, `bias_relu.rs`,
//! `bn_relu_pool.rs` (and
//! the matrix product in `gemm.rs`, code compiled for AVX2 as well in
//! `simd.rs`); the CPU-storage helpers they share are here.

#[macro_use]
mod simd;
mod add_relu;
mod batch_norm;
mod bias_relu;
#[cfg(feature = "cudnn")]
mod bn_cuda;
mod bn_relu_pool;
#[cfg(feature = "cudnn")]
mod ce_cuda;
mod conv;
mod conv3x3;
#[cfg(feature = "cudnn")]
mod conv_cudnn;
mod conv_lanes;
#[cfg(feature = "cudnn")]
mod cuda;
mod gemm;
mod kernels;
#[cfg(feature = "cudnn")]
mod krsc_cuda;
mod layout;
mod optim_cpu;
pub use optim_cpu::sum_of_squares;
#[cfg(feature = "cudnn")]
mod optim_cuda;
mod optim_step;
#[cfg(feature = "cudnn")]
mod pixels_cuda;
mod pool;
#[cfg(feature = "cudnn")]
mod pool_cuda;
#[cfg(feature = "cudnn")]
mod relu_cuda;
mod winograd;
mod winograd4;

pub use add_relu::{add_relu, relu};
pub use batch_norm::{batch_norm_add_relu_cpu, batch_norm_cpu, channel_stats};
pub(crate) use bias_relu::bias_relu;
#[cfg(feature = "cudnn")]
pub use bn_cuda::{batch_norm_eval_cuda, batch_norm_train_cuda};
pub use bn_relu_pool::batch_norm_relu_max_pool2_cpu;
#[cfg(feature = "cudnn")]
pub(crate) use ce_cuda::{classifier_stats, cross_entropy as cross_entropy_cuda};
pub use conv::{conv2d, ConvParams};
pub(crate) use conv::{conv2d_bias_relu, conv2d_layer};
#[cfg(feature = "cudnn")]
pub use conv_cudnn::workspace_report;
#[cfg(feature = "cudnn")]
pub(crate) use cuda::prewarm;
#[cfg(all(feature = "cudnn", test))]
pub(crate) use cuda::OrCuda;
#[cfg(feature = "cudnn")]
pub(crate) use kernels::use_cudnn;
pub use kernels::{gpu_kernels, set_gpu_kernels, GpuKernels, KernelsError};
pub(crate) use layout::add_channel_bias;
pub use layout::{as_activation, cat_channels, is_channels_last};
pub use optim_step::{adam_step_all, fused_step_on, sgd_step_all, AdamParam, SgdParam};
#[cfg(feature = "cudnn")]
pub(crate) use pixels_cuda::{axis_taps, resident_batch, AxisTaps, Tail};
pub use pool::{adaptive_avg_pool2d, avg_pool2d, max_pool2d, PoolParams};

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};
use std::mem::MaybeUninit;

/// A vector of `len` floats written by `fill` without zeroing its memory
/// first (zeroing the layers' outputs took 4-5% of a DenseNet training step).
///
/// # Safety
/// `fill` must write every element of the slice it is given.
#[allow(unsafe_code)]
unsafe fn written(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v: Vec<MaybeUninit<f32>> = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`, and a MaybeUninit needs no initialisation.
    unsafe { v.set_len(len) };
    fill(&mut v);
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `fill` wrote every element (the caller's promise), so they are
    // initialised f32s; MaybeUninit<f32> has f32's layout, and the allocation
    // moves over with its length and capacity unchanged (`v` is not dropped).
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// `dst[i] = src[i]` for every i.
fn write_all(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    for (d, s) in dst.iter_mut().zip(src) {
        d.write(*s);
    }
}

/// `dst[i] = v` for every i.
fn write_each(dst: &mut [MaybeUninit<f32>], v: f32) {
    for d in dst {
        d.write(v);
    }
}

/// The f32 values of a contiguous CPU storage (`what` names the op in the error).
fn cpu_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("{what}: non-contiguous input") };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// Runs `f` on the f32 values of a CPU tensor, in place when it is contiguous.
fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("expected a CPU tensor") };
    Ok(f(cpu_f32(cpu, layout, "a CPU op")?))
}

#[cfg(test)]
fn randn(rng: &mut crate::train::rng::Rng, shape: &[usize]) -> Vec<f32> {
    (0..shape.iter().product::<usize>()).map(|_| rng.normal() as f32).collect()
}

/// A BatchNorm variant under test: (x, weight, bias, mean, var, batch statistics) -> output.
#[cfg(test)]
type BnVariant<'a> = dyn Fn(&Tensor, &Tensor, &Tensor, Vec<f32>, &[f32], bool) -> Tensor + 'a;

/// Asserts that two BatchNorm variants agree (within 1e-5) on a random input
/// of `dims` (4 channels; fixed weight and bias): output and the gradients of
/// input, weight and bias, with batch statistics and with fixed running ones;
/// and that the first clips some outputs to zero.
#[cfg(test)]
fn assert_bn_variants_agree(
    seed: u64,
    dims: (usize, usize, usize, usize),
    fused: impl Fn(&Tensor, &Tensor, &Tensor, Vec<f32>, &[f32], bool) -> Tensor,
    reference: impl Fn(&Tensor, &Tensor, &Tensor, Vec<f32>, &[f32], bool) -> Tensor,
) {
    use candle_core::{Device, Var};
    let xs = randn(&mut crate::train::rng::Rng::new(seed), &[dims.0, dims.1, dims.2, dims.3]);
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let close = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    let run = |op: &BnVariant<'_>, batch_stats: bool| {
        let x = Var::from_vec(xs.clone(), dims, &Device::Cpu).unwrap();
        let w = Var::from_vec(vec![1.0f32, 0.5, -1.5, 2.0], 4, &Device::Cpu).unwrap();
        let b = Var::from_vec(vec![0.1f32, -0.2, 0.3, 0.0], 4, &Device::Cpu).unwrap();
        let (mean, var) = if batch_stats {
            channel_stats(x.as_tensor()).unwrap()
        } else {
            (vec![0.1, -0.1, 0.2, 0.0], vec![1.5, 0.7, 1.0, 2.0])
        };
        let y = op(x.as_tensor(), w.as_tensor(), b.as_tensor(), mean, &var, batch_stats);
        let n = y.elem_count();
        let weights = Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap().reshape(y.shape()).unwrap();
        let grads = y.mul(&weights.sin().unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        [flat(&y), flat(grads.get(&x).unwrap()), flat(grads.get(&w).unwrap()), flat(grads.get(&b).unwrap())]
    };
    for batch_stats in [true, false] {
        let (a, b) = (run(&fused, batch_stats), run(&reference, batch_stats));
        assert!(a[0].contains(&0.0), "some outputs are clipped");
        for (what, (a, b)) in ["output", "input grad", "weight grad", "bias grad"].iter().zip(a.iter().zip(&b)) {
            assert!(close(a, b), "{what} (batch statistics: {batch_stats}): {a:?} vs {b:?}");
        }
    }
}
