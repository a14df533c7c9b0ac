//! The optimisers' update on CUDA as one kernel launch for all parameters
//! ("multi-tensor apply", as PyTorch's `foreach`/`fused` optimisers): a table
//! of every parameter's buffers goes to the GPU with one copy, and one kernel
//! updates the weights and the optimiser's state in place, block row `y`
//! taking parameter `y`. candle's ops took six (SGD with momentum) to twelve
//! (Adam) launches per parameter, 250-500 per ResNet18 step, each a few
//! microseconds of the host's time.
//!
//! The rules are `torch.optim`'s, as `optim.rs` computes them on the CPU:
//! SGD `d = g + wd * w; buf = first ? d : momentum * buf + (1 - dampening) * d;
//! w -= lr * (nesterov ? d + momentum * buf : buf)` (`d` without momentum);
//! Adam `d = g + wd * w` (AdamW: `w *= 1 - lr * wd` instead),
//! `m = b1 * m + (1 - b1) * d`, `v = b2 * v + (1 - b2) * d²` (from zero the
//! first time), AMSGrad's running maximum of `v`, then
//! `w -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)`.

use super::cuda::{address, function, launch};
use super::optim_step::{length, AdamParam, SgdParam};
use candle_core::cuda::cudarc;
use candle_core::{bail, Device, Result, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// The kernels (after `cuda::PRELUDE`). The table holds, for `T`
/// parameters, `T` entries of each column in turn (see the Rust callers).
pub(super) const SOURCE: &str = r#"
#define ROWS(t) for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)

// columns: w, g, buf, n, wd (f32 bits), first
extern "C" __global__ void sgd_all(const u64* table, u32 T, float lr, float momentum, float dampening,
                                   int nesterov, int use_buf) {
    u32 t = blockIdx.y;
    float* w = (float*)table[t];
    const float* g = (const float*)table[T + t];
    float* buf = (float*)table[2 * T + t];
    u64 n = table[3 * T + t];
    float wd = __uint_as_float((u32)table[4 * T + t]);
    int first = (int)table[5 * T + t];
    ROWS(t) {
        float d = g[i] + wd * w[i];
        float s = d;
        if (use_buf) {
            float b = first ? d : momentum * buf[i] + (1.0f - dampening) * d;
            buf[i] = b;
            s = nesterov ? d + momentum * b : b;
        }
        w[i] = w[i] - lr * s;
    }
}

// columns: w, g, m, v, vmax, n, wd (f32 bits), first
extern "C" __global__ void adam_all(const u64* table, u32 T, float b1, float b2, float lr, float step_size,
                                    float bc2_sqrt, float eps, int decoupled, int amsgrad) {
    u32 t = blockIdx.y;
    float* w = (float*)table[t];
    const float* g = (const float*)table[T + t];
    float* m = (float*)table[2 * T + t];
    float* v = (float*)table[3 * T + t];
    float* vmax = (float*)table[4 * T + t];
    u64 n = table[5 * T + t];
    float wd = __uint_as_float((u32)table[6 * T + t]);
    int first = (int)table[7 * T + t];
    ROWS(t) {
        float p = w[i];
        float d = decoupled ? g[i] : g[i] + wd * p;
        if (decoupled) p = p * (1.0f - lr * wd);
        float mi = first ? (1.0f - b1) * d : b1 * m[i] + (1.0f - b1) * d;
        float vi = first ? (1.0f - b2) * (d * d) : b2 * v[i] + (1.0f - b2) * (d * d);
        m[i] = mi;
        v[i] = vi;
        float second = vi;
        if (amsgrad) {
            second = first ? vi : fmaxf(vmax[i], vi);
            vmax[i] = second;
        }
        w[i] = p - step_size * (mi / (sqrtf(second) / bc2_sqrt + eps));
    }
}
"#;

/// The module name of [`SOURCE`].
pub(super) const MODULE: &str = "sweep_optim";

/// Device addresses of contiguous f32 CUDA tensors, their storages read-locked
/// while `f` runs (the kernels write some of them in place: each is a
/// parameter or the optimiser's own state, which nothing else reads or
/// writes while the step's kernel is queued on the device's one stream).
fn with_addresses<R>(
    tensors: &[&Tensor],
    f: impl FnOnce(&[u64], &candle_core::cuda::CudaDevice) -> Result<R>,
) -> Result<R> {
    let Some(Device::Cuda(device)) = tensors.first().map(|t| t.device().clone()) else {
        bail!("optimiser: parameters not on the GPU")
    };
    let held = tensors.iter().map(|t| address::<f32>(t)).collect::<Result<Vec<_>>>()?;
    let addresses: Vec<u64> = held.iter().map(|(_, a)| *a).collect();
    f(&addresses, &device)
}

/// A kernel argument after (table, count).
enum Scalar {
    F(f32),
    I(i32),
}

/// Uploads `table` and launches `kernel` over `count` parameters of at most
/// `longest` elements, with `scalars` after (table, count).
#[allow(unsafe_code)] // a kernel launch: see the SAFETY comment
fn run(
    dev: &candle_core::cuda::CudaDevice,
    kernel: &str,
    table: &[u64],
    count: u32,
    longest: usize,
    scalars: &[Scalar],
) -> Result<()> {
    let stream = dev.cuda_stream();
    let table = stream.clone_htod(table).map_err(|e| candle_core::Error::Cuda(Box::new(e)).bt())?;
    let func = function(dev, MODULE, SOURCE, kernel)?;
    let mut b = stream.launch_builder(&func);
    b.arg(&table).arg(&count);
    for s in scalars {
        match s {
            Scalar::F(f) => b.arg(f),
            Scalar::I(i) => b.arg(i),
        };
    }
    let blocks = u32::try_from(longest.div_ceil(256 * 8).clamp(1, 256)).unwrap_or(256);
    let cfg = LaunchConfig { grid_dim: (blocks, count, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the table holds `count` entries of each column the kernel reads,
    // every address that of a live f32 buffer of at least its row's n
    // elements (`with_addresses`, lengths checked by the callers), and the
    // scalars follow in the kernel's order.
    unsafe { launch(b, cfg) }
}

fn bits(x: f64) -> u64 {
    u64::from((x as f32).to_bits())
}

/// `torch.optim.SGD`'s step of every parameter in `params` (f32, on one
/// CUDA device, contiguous, at least one; all with a momentum buffer or none,
/// as `optim_step::sgd_step_all` checked), in one kernel launch.
pub(super) fn sgd_step_all(
    params: &[SgdParam<'_>],
    lr: f64,
    momentum: f64,
    dampening: f64,
    nesterov: bool,
) -> Result<()> {
    let use_buf = params.iter().all(|p| p.buf.is_some());
    let mut tensors: Vec<&Tensor> = Vec::new();
    let mut lens = Vec::new();
    for p in params {
        lens.push(length(p.w, &[Some(p.g), p.buf])?);
        tensors.extend([p.w, p.g, p.buf.unwrap_or(p.g)]);
    }
    with_addresses(&tensors, |a, dev| {
        let t = params.len();
        let mut table = vec![0u64; 6 * t];
        for (i, p) in params.iter().enumerate() {
            table[i] = a[3 * i];
            table[t + i] = a[3 * i + 1];
            table[2 * t + i] = a[3 * i + 2];
            table[3 * t + i] = lens[i] as u64;
            table[4 * t + i] = bits(p.weight_decay);
            table[5 * t + i] = u64::from(p.first);
        }
        let longest = lens.iter().copied().max().unwrap_or(1);
        let f = |x: f64| Scalar::F(x as f32);
        let scalars = [f(lr), f(momentum), f(dampening), Scalar::I(i32::from(nesterov)), Scalar::I(i32::from(use_buf))];
        run(dev, "sgd_all", &table, t as u32, longest, &scalars)
    })
}

/// Adam's (`decoupled`: AdamW's) step of every parameter in `params` (f32,
/// on one CUDA device, contiguous, at least one; AMSGrad's maximum for all or
/// none, as `optim_step::adam_step_all` checked), in one kernel launch;
/// `step_size` is `lr / (1 - b1^t)`, `bc2_sqrt` `sqrt(1 - b2^t)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn adam_step_all(
    params: &[AdamParam<'_>],
    betas: (f64, f64),
    lr: f64,
    step_size: f64,
    bc2_sqrt: f64,
    eps: f64,
    decoupled: bool,
    amsgrad: bool,
) -> Result<()> {
    let mut tensors: Vec<&Tensor> = Vec::new();
    let mut lens = Vec::new();
    for p in params {
        lens.push(length(p.w, &[Some(p.g), Some(p.m), Some(p.v), p.vmax])?);
        tensors.extend([p.w, p.g, p.m, p.v, p.vmax.unwrap_or(p.v)]);
    }
    with_addresses(&tensors, |a, dev| {
        let t = params.len();
        let mut table = vec![0u64; 8 * t];
        for (i, p) in params.iter().enumerate() {
            for col in 0..5 {
                table[col * t + i] = a[5 * i + col];
            }
            table[5 * t + i] = lens[i] as u64;
            table[6 * t + i] = bits(p.weight_decay);
            table[7 * t + i] = u64::from(p.first);
        }
        let longest = lens.iter().copied().max().unwrap_or(1);
        let f = |x: f64| Scalar::F(x as f32);
        let scalars = [
            f(betas.0),
            f(betas.1),
            f(lr),
            f(step_size),
            f(bc2_sqrt),
            f(eps),
            Scalar::I(i32::from(decoupled)),
            Scalar::I(i32::from(amsgrad)),
        ];
        run(dev, "adam_all", &table, t as u32, longest, &scalars)
    })
}

#[cfg(test)]
mod tests {

    /// NVRTC compiles the kernels.
    #[test]
    fn the_kernels_compile() {
        super::super::cuda::assert_compiles(super::SOURCE, &["sgd_all", "adam_all"]);
    }
}
