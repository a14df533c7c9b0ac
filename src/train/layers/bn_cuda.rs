//! BatchNorm on CUDA with our own kernels (f32 or bf16 data with f32
//! parameters and statistics, NCHW): training forward as two kernels (the
//! per-channel sums, then the statistics and the normalised, scaled and
//! shifted output), backward as two (the per-channel sums of dy and
//! dy * (x - mean), then the input gradient with the weight and bias
//! gradients), and the eval pass (running statistics) as one.
//!
//! cuDNN's NCHW BatchNorm kernels ran at 180-400 GB/s on an H200 (565 µs
//! forward and 900 µs backward for ResNet18's 50x64x112x112 stem, a third of
//! a bf16 step's GPU time), where the memory allows about 4 TB/s; PyTorch
//! does not use them for bf16 either. Here each channel's N * H * W values
//! are split over enough blocks to fill the GPU (`splits`); each block sums
//! its share in f64 (so `E[x²] - mean²` loses nothing that matters at f32)
//! and writes one partial; the second kernel's blocks add a channel's
//! partials in a fixed order (deterministic) and apply the result. The
//! formulas are PyTorch's (biased variance for normalising; the backward
//! `dx = w * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))`).
//!
//! The forward kernel also updates the layer's running statistics in place
//! as PyTorch does (momentum, unbiased variance) and counts the batch
//! (`num_batches_tracked`), as cuDNN's call would: no kernel of their own. The
//! batch mean and inverse standard deviation it saves serve the backward pass.
//!
//! The forward and eval kernels can also apply what follows a BatchNorm in
//! the zoo: the ReLU (conv-BN-ReLU), or a residual added before the ReLU (a
//! ResNet block's `relu(bn(x) + identity)`, the normalised value rounded to
//! the output's dtype before the sum, as the unfused ops). The backward
//! kernels then mask the incoming gradient with the output (PyTorch's ReLU
//! backward) as they read it and write the residual's gradient beside dx.
//! candle keeps every op's operands alive for the backward pass, so unfused
//! the normalised tensor (the ReLU's or the sum's operand) stayed allocated
//! until then: one activation-sized tensor per BatchNorm of the training
//! step, and two full passes (the ReLU's) each way.

use super::cuda::{address, dims4_u32, function, launch, typed_function, view, Elem};
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc;
use candle_core::cuda::{CudaDevice, CudaStorage};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, LaunchConfig, PushKernelArg};
use std::sync::{Arc, Mutex};

/// The kernels (after `cuda::PRELUDE`). Each block of 256 threads takes
/// channel `blockIdx.x / S`, share `blockIdx.x % S` of its N * HW values.
pub(super) const SOURCE: &str = r#"
#define THREADS 256
#define OVER(c, s) \
    u32 c = blockIdx.x / S, s = blockIdx.x % S; \
    u32 m = N * HW; \
    for (u32 j = s * THREADS + threadIdx.x; j < m; j += S * THREADS)
#define AT(j) ((u64)((j) / HW) * C + c) * HW + (j) % HW

__device__ __forceinline__ float relu_of(float v) { return (v > 0.0f || v != v) ? v : 0.0f; }
// v as an output of T holds it (bf16 rounds): the normalised value before a residual is
// added to it, as the unfused ops (BatchNorm's output, then the sum) compute it
__device__ __forceinline__ float as_stored(const float*, float v) { return v; }
__device__ __forceinline__ float as_stored(const bf16*, float v) { return widen(narrow(v)); }
// the output at i for the normalised value v: plus the residual (when not null), then the
// ReLU (when relu is set)
template <typename T> __device__ __forceinline__ float finish(float v, const T* res, u64 i, int relu) {
    if (res) v = as_stored(res, v) + load(res, i);
    return relu ? relu_of(v) : v;
}
// the gradient that reaches the normalisation: dy, zero where the fused ReLU's output
// (when not null) is not positive (PyTorch's ReLU backward; a NaN output passes dy)
template <typename T> __device__ __forceinline__ float masked(const T* dy, const T* out, u64 i) {
    return (out && load(out, i) <= 0.0f) ? 0.0f : load(dy, i);
}

// Sums a pair over the block into thread 0's a, b.
__device__ void reduce2(double& a, double& b) {
    __shared__ double sa[THREADS], sb[THREADS];
    sa[threadIdx.x] = a; sb[threadIdx.x] = b;
    __syncthreads();
    for (u32 k = THREADS / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) { sa[threadIdx.x] += sa[threadIdx.x + k]; sb[threadIdx.x] += sb[threadIdx.x + k]; }
        __syncthreads();
    }
    a = sa[0]; b = sb[0];
}

// part[2 * block] = (sum x, sum x^2) over the block's share
template <typename T> __device__ void stats(const T* x, double* part, u32 N, u32 C, u32 HW, u32 S) {
    double a = 0.0, b = 0.0;
    OVER(c, s) { double v = load(x, AT(j)); a += v; b += v * v; }
    reduce2(a, b);
    if (threadIdx.x == 0) { part[2 * blockIdx.x] = a; part[2 * blockIdx.x + 1] = b; }
}

// y = finish((x - mean) * invstd * w + b), the statistics from the S partials of the channel
template <typename T> __device__ void forward(const T* x, const double* part, const float* w, const float* bias,
                                              const T* res, T* y, float* mean_out, float* invstd_out, float* rm,
                                              float* rv, long long* count, float momentum, u32 N, u32 C, u32 HW,
                                              u32 S, float eps, int relu) {
    __shared__ float mean_s, scale_s;
    if (threadIdx.x == 0) {
        u32 c = blockIdx.x / S;
        double a = 0.0, b = 0.0;
        for (u32 k = 0; k < S; k++) { a += part[2 * (c * S + k)]; b += part[2 * (c * S + k) + 1]; }
        double cnt = (double)N * HW, mean = a / cnt, var = b / cnt - mean * mean;
        if (var < 0.0) var = 0.0;
        float invstd = (float)(1.0 / sqrt(var + (double)eps));
        mean_s = (float)mean; scale_s = invstd * w[c];
        if (blockIdx.x % S == 0) {
            mean_out[c] = (float)mean; invstd_out[c] = invstd;
            // running = (1 - momentum) * running + momentum * batch (unbiased variance)
            if (rm) {
                rm[c] = (1.0f - momentum) * rm[c] + momentum * (float)mean;
                rv[c] = (1.0f - momentum) * rv[c] + momentum * (float)(var * cnt / (cnt > 1.0 ? cnt - 1.0 : 1.0));
            }
            if (count && c == 0) count[0] += 1;
        }
    }
    __syncthreads();
    float mean = mean_s, scale = scale_s;
    u32 c0 = blockIdx.x / S;
    float shift = bias[c0];
    OVER(c, s) { u64 i = AT(j); store(y, i, finish((load(x, i) - mean) * scale + shift, res, i, relu)); }
}

// part[2 * block] = (sum g, sum g * (x - mean)) over the block's share, g = masked(dy)
template <typename T> __device__ void back_stats(const T* x, const T* dy, const T* out, const float* mean,
                                                 double* part, u32 N, u32 C, u32 HW, u32 S) {
    double a = 0.0, b = 0.0;
    u32 c0 = blockIdx.x / S;
    float mu = mean[c0];
    OVER(c, s) { u64 i = AT(j); float g = masked(dy, out, i); a += g; b += (double)g * (load(x, i) - mu); }
    reduce2(a, b);
    if (threadIdx.x == 0) { part[2 * blockIdx.x] = a; part[2 * blockIdx.x + 1] = b; }
}

// dx = w * invstd * (g - sum_g / m - (x - mean) * invstd^2 * sum_gxc / m), g = masked(dy);
// dwdb[c] = invstd * sum_gxc, dwdb[C + c] = sum_g; dres = g (the residual's gradient, when not null)
template <typename T> __device__ void backward(const T* x, const T* dy, const T* out, const float* mean,
                                               const float* invstd, const float* w, const double* part, T* dx,
                                               T* dres, float* dwdb, u32 N, u32 C, u32 HW, u32 S) {
    __shared__ float k_s, mdy_s, proj_s;
    if (threadIdx.x == 0) {
        u32 c = blockIdx.x / S;
        double a = 0.0, b = 0.0;
        for (u32 k = 0; k < S; k++) { a += part[2 * (c * S + k)]; b += part[2 * (c * S + k) + 1]; }
        double cnt = (double)N * HW, is = invstd[c];
        k_s = (float)(w[c] * is); mdy_s = (float)(a / cnt); proj_s = (float)(b * is * is / cnt);
        if (blockIdx.x % S == 0) { dwdb[c] = (float)(b * is); dwdb[C + c] = (float)a; }
    }
    __syncthreads();
    float k = k_s, mdy = mdy_s, proj = proj_s, mu = mean[blockIdx.x / S];
    OVER(c, s) {
        u64 i = AT(j);
        float g = masked(dy, out, i);
        store(dx, i, k * (g - mdy - (load(x, i) - mu) * proj));
        if (dres) store(dres, i, g);
    }
}

// eval: y = finish((x - running_mean) / sqrt(running_var + eps) * w + b)
template <typename T> __device__ void eval(const T* x, const float* rm, const float* rv, const float* w,
                                           const float* bias, const T* res, T* y, u32 N, u32 C, u32 HW, u32 S,
                                           float eps, int relu) {
    u32 c0 = blockIdx.x / S;
    float scale = w[c0] / sqrtf(rv[c0] + eps), mu = rm[c0], shift = bias[c0];
    OVER(c, s) { u64 i = AT(j); store(y, i, finish((load(x, i) - mu) * scale + shift, res, i, relu)); }
}

// ---- Channels-last (NHWC): M = N * H * W rows of C channels. Blocks of 32 x 8 threads:
// channel blockIdx.y * 32 + threadIdx.x (a warp reads 32 neighbouring channels of a row),
// rows blockIdx.x * 8 + threadIdx.y, stepping by gridDim.x * 8. The statistics are
// partials per (row share, channel), summed per channel by one block (`cl_sums`, a fixed
// order: deterministic), then applied elementwise.
#define CL_ROWS(c) \
    u32 c = blockIdx.y * 32 + threadIdx.x; \
    for (u32 r = blockIdx.x * 8 + threadIdx.y; c < C && r < M; r += gridDim.x * 8)
#define CL_AT(r, c) ((u64)(r) * C + (c))

// Sums a pair over the block's 8 row lanes into part[2 * (blockIdx.x * C + c)].
__device__ void cl_reduce_store(double a, double b, double* part, u32 C) {
    __shared__ double sa[8][32], sb[8][32];
    sa[threadIdx.y][threadIdx.x] = a; sb[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.y == 0) {
        u32 c = blockIdx.y * 32 + threadIdx.x;
        for (u32 k = 1; k < 8; k++) { a += sa[k][threadIdx.x]; b += sb[k][threadIdx.x]; }
        if (c < C) { u64 o = 2 * ((u64)blockIdx.x * C + c); part[o] = a; part[o + 1] = b; }
    }
}

// Channel c's sums over the S row shares, into thread 0's a, b (a block of THREADS per channel).
__device__ void cl_sums(const double* part, u32 S, u32 C, u32 c, double& a, double& b) {
    a = 0.0; b = 0.0;
    for (u32 k = threadIdx.x; k < S; k += THREADS) { u64 o = 2 * ((u64)k * C + c); a += part[o]; b += part[o + 1]; }
    reduce2(a, b);
}

template <typename T> __device__ void cl_stats(const T* x, double* part, u32 M, u32 C) {
    double a = 0.0, b = 0.0;
    CL_ROWS(c) { double v = load(x, CL_AT(r, c)); a += v; b += v * v; }
    cl_reduce_store(a, b, part, C);
}

// One block per channel: the batch mean and inverse standard deviation, the running
// statistics and the counter (as `forward` does from a channel's first block).
__device__ void cl_finalize(const double* part, u32 S, float* mean_out, float* invstd_out, float* rm, float* rv,
                            long long* count, float momentum, u32 M, u32 C, float eps) {
    u32 c = blockIdx.x;
    double a, b;
    cl_sums(part, S, C, c, a, b);
    if (threadIdx.x == 0) {
        double cnt = (double)M, mean = a / cnt, var = b / cnt - mean * mean;
        if (var < 0.0) var = 0.0;
        float invstd = (float)(1.0 / sqrt(var + (double)eps));
        mean_out[c] = (float)mean; invstd_out[c] = invstd;
        if (rm) {
            rm[c] = (1.0f - momentum) * rm[c] + momentum * (float)mean;
            rv[c] = (1.0f - momentum) * rv[c] + momentum * (float)(var * cnt / (cnt > 1.0 ? cnt - 1.0 : 1.0));
        }
        if (count && c == 0) count[0] += 1;
    }
}

// y = finish((x - mean) * invstd * w + b); the eval pass passes the running mean and
// 1 / sqrt(running_var + eps) (eval = 1) instead of the batch's.
template <typename T> __device__ void cl_normalize(const T* x, const float* mean, const float* invstd, const float* w,
                                                   const float* bias, const T* res, T* y, u32 M, u32 C, float eps,
                                                   int relu, int eval) {
    u32 c0 = blockIdx.y * 32 + threadIdx.x;
    if (c0 >= C) return;
    // as `forward` and `eval` compute them
    float scale = eval ? w[c0] / sqrtf(invstd[c0] + eps) : invstd[c0] * w[c0], mu = mean[c0], shift = bias[c0];
    CL_ROWS(c) { u64 i = CL_AT(r, c); store(y, i, finish((load(x, i) - mu) * scale + shift, res, i, relu)); }
}

template <typename T> __device__ void cl_back_stats(const T* x, const T* dy, const T* out, const float* mean,
                                                    double* part, u32 M, u32 C) {
    double a = 0.0, b = 0.0;
    u32 c0 = blockIdx.y * 32 + threadIdx.x;
    float mu = c0 < C ? mean[c0] : 0.0f;
    CL_ROWS(c) { u64 i = CL_AT(r, c); float g = masked(dy, out, i); a += g; b += (double)g * (load(x, i) - mu); }
    cl_reduce_store(a, b, part, C);
}

// One block per channel: coef[3c..3c+3] = (w * invstd, mean(g), invstd^2 * mean(g * (x - mean))),
// the weight and bias gradients.
__device__ void cl_back_finalize(const double* part, u32 S, const float* invstd, const float* w, float* coef,
                                 float* dwdb, u32 M, u32 C) {
    u32 c = blockIdx.x;
    double a, b;
    cl_sums(part, S, C, c, a, b);
    if (threadIdx.x == 0) {
        double cnt = (double)M, is = invstd[c];
        coef[3 * c] = (float)(w[c] * is); coef[3 * c + 1] = (float)(a / cnt); coef[3 * c + 2] = (float)(b * is * is / cnt);
        dwdb[c] = (float)(b * is); dwdb[C + c] = (float)a;
    }
}

template <typename T> __device__ void cl_backward(const T* x, const T* dy, const T* out, const float* mean,
                                                  const float* coef, T* dx, T* dres, u32 M, u32 C) {
    u32 c0 = blockIdx.y * 32 + threadIdx.x;
    if (c0 >= C) return;
    float k = coef[3 * c0], mdy = coef[3 * c0 + 1], proj = coef[3 * c0 + 2], mu = mean[c0];
    CL_ROWS(c) {
        u64 i = CL_AT(r, c);
        float g = masked(dy, out, i);
        store(dx, i, k * (g - mdy - (load(x, i) - mu) * proj));
        if (dres) store(dres, i, g);
    }
}

extern "C" __global__ void bn_cl_finalize(const double* part, u32 S, float* mo, float* io, float* rm, float* rv,
    long long* count, float momentum, u32 M, u32 C, float eps)
    { cl_finalize(part, S, mo, io, rm, rv, count, momentum, M, C, eps); }
extern "C" __global__ void bn_cl_back_finalize(const double* part, u32 S, const float* invstd, const float* w,
    float* coef, float* dwdb, u32 M, u32 C)
    { cl_back_finalize(part, S, invstd, w, coef, dwdb, M, C); }

#define BN(T, SUF) \
extern "C" __global__ void bn_stats_##SUF(const T* x, double* part, u32 N, u32 C, u32 HW, u32 S) \
    { stats(x, part, N, C, HW, S); } \
extern "C" __global__ void bn_forward_##SUF(const T* x, const double* part, const float* w, const float* b, \
    const T* res, T* y, float* mo, float* io, float* rm, float* rv, long long* count, float momentum, u32 N, u32 C, \
    u32 HW, u32 S, float eps, int relu) \
    { forward(x, part, w, b, res, y, mo, io, rm, rv, count, momentum, N, C, HW, S, eps, relu); } \
extern "C" __global__ void bn_back_stats_##SUF(const T* x, const T* dy, const T* out, const float* mean, \
    double* part, u32 N, u32 C, u32 HW, u32 S) \
    { back_stats(x, dy, out, mean, part, N, C, HW, S); } \
extern "C" __global__ void bn_backward_##SUF(const T* x, const T* dy, const T* out, const float* mean, \
    const float* invstd, const float* w, const double* part, T* dx, T* dres, float* dwdb, u32 N, u32 C, u32 HW, \
    u32 S) \
    { backward(x, dy, out, mean, invstd, w, part, dx, dres, dwdb, N, C, HW, S); } \
extern "C" __global__ void bn_eval_##SUF(const T* x, const float* rm, const float* rv, const float* w, \
    const float* b, const T* res, T* y, u32 N, u32 C, u32 HW, u32 S, float eps, int relu) \
    { eval(x, rm, rv, w, b, res, y, N, C, HW, S, eps, relu); } \
extern "C" __global__ void bn_cl_stats_##SUF(const T* x, double* part, u32 M, u32 C) { cl_stats(x, part, M, C); } \
extern "C" __global__ void bn_cl_normalize_##SUF(const T* x, const float* mean, const float* invstd, \
    const float* w, const float* b, const T* res, T* y, u32 M, u32 C, float eps, int relu, int eval) \
    { cl_normalize(x, mean, invstd, w, b, res, y, M, C, eps, relu, eval); } \
extern "C" __global__ void bn_cl_back_stats_##SUF(const T* x, const T* dy, const T* out, const float* mean, \
    double* part, u32 M, u32 C) \
    { cl_back_stats(x, dy, out, mean, part, M, C); } \
extern "C" __global__ void bn_cl_backward_##SUF(const T* x, const T* dy, const T* out, const float* mean, \
    const float* coef, T* dx, T* dres, u32 M, u32 C) \
    { cl_backward(x, dy, out, mean, coef, dx, dres, M, C); }
BN(float, f32)
BN(bf16, bf16)
"#;

/// The module name of [`SOURCE`].
pub(super) const MODULE: &str = "sweep_batch_norm";

/// Threads per block (`THREADS` in the source).
const THREADS: u32 = 256;

/// Blocks per channel: enough blocks in all to fill a large GPU (about
/// 1,024), each with at least a few values per thread.
fn splits(n: u32, c: u32, hw: u32) -> u32 {
    let per_channel = n * hw;
    let by_gpu = 1024u32.div_ceil(c.max(1));
    let by_work = per_channel.div_ceil(THREADS * 4).max(1);
    by_gpu.min(by_work).max(1)
}

/// Kernel `base` for `dtype`.
fn kernel(dev: &CudaDevice, base: &str, dtype: DType) -> Result<cudarc::driver::CudaFunction> {
    typed_function(dev, (MODULE, SOURCE), base, dtype)
}

/// Kernel `name` (one for every dtype: the statistics are f64 and f32).
fn untyped(dev: &CudaDevice, name: &str) -> Result<cudarc::driver::CudaFunction> {
    function(dev, MODULE, SOURCE, name)
}

/// The launch shape of `blocks` blocks of [`THREADS`].
fn grid(blocks: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// (N, C, H * W) of an input: NCHW, or channels-last ((N, H, W, C) storage;
/// its N * H * W rows must index in 31 bits).
fn geometry(shape: &Shape, nhwc: bool) -> Result<(u32, u32, u32)> {
    let [a, b, c, d] = dims4_u32(shape, "batch_norm")?;
    if !nhwc {
        return Ok((a, b, c * d));
    }
    match b.checked_mul(c).and_then(|hw| hw.checked_mul(a).map(|m| (hw, m))) {
        Some((hw, m)) if m < 1 << 31 => Ok((a, d, hw)),
        _ => bail!("batch_norm: shape {:?} too large for the CUDA kernels", shape.dims()),
    }
}

/// Row shares of the channels-last statistics: about 1,024 blocks in all,
/// each row lane with at least a few rows.
fn cl_splits(m: u32, c: u32) -> u32 {
    let by_gpu = 1024u32.div_ceil(c.div_ceil(32).max(1));
    let by_work = m.div_ceil(8 * 4).max(1);
    by_gpu.min(by_work).max(1)
}

/// Row shares of the channels-last elementwise passes: about four rows per
/// row lane.
fn cl_elementwise_splits(m: u32) -> u32 {
    m.div_ceil(8 * 4).clamp(1, 1 << 20)
}

/// The launch shape of the channels-last kernels: `s` row shares by
/// channel groups of 32, blocks of 32 x 8 threads.
fn cl_grid(s: u32, c: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (s, c.div_ceil(32), 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 }
}

/// The batch mean and inverse standard deviation saved by the forward pass.
type Saved = Arc<Mutex<Option<(CudaSlice<f32>, CudaSlice<f32>)>>>;

/// A buffer a backward kernel wrote beside its output (the parameter
/// gradients, the residual's gradient), handed over by [`Take`].
type Slot = Arc<Mutex<Option<(CudaStorage, Shape)>>>;

/// What the kernels apply after the normalisation, in the same pass: a
/// residual added (`relu(bn(x) + residual)`, a ResNet block's end) and a
/// ReLU. With the residual the op's operands are (x, weight and bias as one
/// tensor of 2C, residual), else (x, weight, bias).
#[derive(Clone, Copy)]
struct Then {
    relu: bool,
    residual: bool,
}

/// The device address of an optional buffer (0 for none), with the guard
/// that must live until the launch.
fn address_or_null<'a, T, P: DevicePtr<T>>(
    v: Option<&'a P>,
    stream: &'a cudarc::driver::CudaStream,
) -> (u64, Option<impl Sized + 'a>) {
    match v {
        Some(v) => {
            let (ptr, sync) = v.device_ptr(stream);
            (ptr, Some(sync))
        }
        None => (0, None),
    }
}

struct BnForward {
    eps: f64,
    saved: Saved,
    /// Running mean, running variance (f32, C each), `num_batches_tracked`
    /// (i64) and the momentum: updated by the forward kernel.
    running: Option<(Tensor, Tensor, Tensor, f64)>,
    then: Then,
    /// The input (and output) is channels-last: (N, H, W, C) storage.
    nhwc: bool,
}

impl CustomOp3 for BnForward {
    fn name(&self) -> &'static str {
        "sweep-cuda-batch-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match xs.dtype() {
            DType::F32 => self.forward::<f32>(xs, xl, (s2, l2), (s3, l3)),
            DType::BF16 => self.forward::<half::bf16>(xs, xl, (s2, l2), (s3, l3)),
            other => bail!("{}: no CUDA kernel for {other:?}", self.name()),
        }
    }

    /// The input's, the parameters' and (with a residual) the residual's
    /// gradients from the two backward kernels, the ReLU's mask read from
    /// the output `res`.
    fn bwd(
        &self,
        x: &Tensor,
        a2: &Tensor,
        a3: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = x.dim(if self.nhwc { 3 } else { 1 })?;
        let (params, dres): (Slot, Slot) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new(None)));
        let back = BnBackward {
            saved: self.saved.clone(),
            params: params.clone(),
            out: self.then.relu.then(|| res.clone()),
            dres: (self.then.residual && a3.track_op()).then(|| dres.clone()),
            packed: self.then.residual,
            nhwc: self.nhwc,
        };
        let dx = x.apply_op3_no_bwd(&grad.contiguous()?, a2, &back)?;
        let both = a2.detach().apply_op1_no_bwd(&Take(params))?;
        if self.then.residual {
            let dr = a3.track_op().then(|| a3.detach().apply_op1_no_bwd(&Take(dres))).transpose()?;
            return Ok((x.track_op().then_some(dx), a2.track_op().then_some(both), dr));
        }
        let dw = a2.track_op().then(|| both.narrow(0, 0, c)).transpose()?;
        let db = a3.track_op().then(|| both.narrow(0, c, c)).transpose()?;
        Ok((x.track_op().then_some(dx), dw, db))
    }
}

/// The weight and bias (f32, C each) and the residual (x's type, as many
/// elements) of a forward op's second and third operands (see [`Then`]).
#[allow(clippy::type_complexity)]
fn operands<'a, T: Elem>(
    then: Then,
    c: u32,
    len: usize,
    (s2, l2): (&'a CudaStorage, &Layout),
    (s3, l3): (&'a CudaStorage, &Layout),
) -> Result<(CudaView<'a, f32>, CudaView<'a, f32>, Option<CudaView<'a, T>>)> {
    let c = c as usize;
    if then.residual {
        let wb = view::<f32>(s2, l2, "batch_norm")?;
        let r = view::<T>(s3, l3, "batch_norm")?;
        if wb.len() != 2 * c || r.len() != len {
            bail!("batch_norm: {} parameters for {c} channels, a residual of {} for {len} values", wb.len(), r.len());
        }
        Ok((wb.slice(..c), wb.slice(c..), Some(r)))
    } else {
        let (w, b) = (view::<f32>(s2, l2, "batch_norm")?, view::<f32>(s3, l3, "batch_norm")?);
        if w.len() != c || b.len() != c {
            bail!("batch_norm: {} weights and {} biases for {c} channels", w.len(), b.len());
        }
        Ok((w, b, None))
    }
}

impl BnForward {
    #[allow(unsafe_code)] // kernel launches and uninitialised device buffers: see the SAFETY comments
    fn forward<T: Elem>(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        a2: (&CudaStorage, &Layout),
        a3: (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let (n, c, hw) = geometry(xl.shape(), self.nhwc)?;
        let x = view::<T>(xs, xl, "batch_norm")?;
        let (w, b, r) = operands::<T>(self.then, c, x.len(), a2, a3)?;
        let s = if self.nhwc { cl_splits(n * hw, c) } else { splits(n, c, hw) };
        let blocks = c * s;
        // SAFETY: the stats kernel writes every partial (one pair per block), the
        // forward kernel every element of y and, from each channel's first block,
        // the C means and inverse standard deviations.
        let (mut part, mut y, mut mean, mut invstd) = unsafe {
            (
                dev.alloc::<f64>(2 * blocks as usize)?,
                dev.alloc::<T>(x.len())?,
                dev.alloc::<f32>(c as usize)?,
                dev.alloc::<f32>(c as usize)?,
            )
        };
        let stream = dev.cuda_stream();
        let m = n * hw;
        if self.nhwc {
            let f = kernel(&dev, "bn_cl_stats", T::DTYPE)?;
            let mut k = stream.launch_builder(&f);
            k.arg(&x).arg(&mut part).arg(&m).arg(&c);
            // SAFETY: (x, part, M, C) as bn_cl_stats takes them; x has M*C elements,
            // part 2 * S * C (S row shares, the grid's x).
            unsafe { launch(k, cl_grid(s, c)) }?;
        } else {
            let f = kernel(&dev, "bn_stats", T::DTYPE)?;
            let mut k = stream.launch_builder(&f);
            k.arg(&x).arg(&mut part).arg(&n).arg(&c).arg(&hw).arg(&s);
            // SAFETY: (x, part, N, C, HW, S) as bn_stats takes them; x has N*C*HW elements.
            unsafe { launch(k, grid(blocks)) }?;
        }
        // The running statistics and the counter, updated by the kernel (null: none).
        let held = match &self.running {
            Some((rm, rv, count, _)) => {
                if rm.elem_count() != c as usize || rv.elem_count() != c as usize || count.elem_count() != 1 {
                    bail!(
                        "batch_norm: running statistics of {} and {} values for {c} channels",
                        rm.elem_count(),
                        rv.elem_count()
                    );
                }
                Some((address::<f32>(rm)?, address::<f32>(rv)?, address::<i64>(count)?))
            }
            None => None,
        };
        let (rm, rv, count) = held.as_ref().map_or((0, 0, 0), |(a, b, c)| (a.1, b.1, c.1));
        let momentum = self.running.as_ref().map_or(0.0, |r| r.3) as f32;
        let (res, _res_guard) = address_or_null(r.as_ref(), &stream);
        let relu = i32::from(self.then.relu);
        let eps = self.eps as f32;
        if self.nhwc {
            let f = untyped(&dev, "bn_cl_finalize")?;
            let mut k = stream.launch_builder(&f);
            k.arg(&part).arg(&s).arg(&mut mean).arg(&mut invstd).arg(&rm).arg(&rv).arg(&count).arg(&momentum);
            k.arg(&m).arg(&c).arg(&eps);
            // SAFETY: the arguments of bn_cl_finalize in its order; one block per
            // channel; mean, invstd and the running statistics (or null) have C
            // elements, the counter one, part 2 * S * C.
            unsafe { launch(k, grid(c)) }?;
            let f = kernel(&dev, "bn_cl_normalize", T::DTYPE)?;
            let mut k = stream.launch_builder(&f);
            let eval = 0i32;
            k.arg(&x).arg(&mean).arg(&invstd).arg(&w).arg(&b).arg(&res).arg(&mut y);
            k.arg(&m).arg(&c).arg(&eps).arg(&relu).arg(&eval);
            // SAFETY: the arguments of bn_cl_normalize in its order; x, y and the
            // residual (or null) have M*C elements, the others C.
            unsafe { launch(k, cl_grid(cl_elementwise_splits(m), c)) }?;
            drop(held);
            *self.saved.lock().expect("batch norm lock") = Some((mean, invstd));
            return Ok((CudaStorage::wrap_cuda_slice(y, dev), xl.shape().clone()));
        }
        let f = kernel(&dev, "bn_forward", T::DTYPE)?;
        let mut k = stream.launch_builder(&f);
        k.arg(&x).arg(&part).arg(&w).arg(&b).arg(&res).arg(&mut y).arg(&mut mean).arg(&mut invstd);
        k.arg(&rm).arg(&rv).arg(&count).arg(&momentum);
        k.arg(&n).arg(&c).arg(&hw).arg(&s).arg(&eps).arg(&relu);
        // SAFETY: the arguments of bn_forward in its order; w, b, mean, invstd and
        // the running statistics have C elements (or are null), the counter one,
        // part 2 * C * S, x, y and the residual (or null) N*C*HW.
        unsafe { launch(k, grid(blocks)) }?;
        drop(held);
        *self.saved.lock().expect("batch norm lock") = Some((mean, invstd));
        Ok((CudaStorage::wrap_cuda_slice(y, dev), xl.shape().clone()))
    }
}

/// (x, dy, weight) -> dx (in x's dtype); the weight and bias gradients go to
/// `params`, the residual's (when asked for) to `dres`.
struct BnBackward {
    saved: Saved,
    params: Slot,
    /// The forward op's output, when it applied a ReLU (its mask).
    out: Option<Tensor>,
    dres: Option<Slot>,
    /// The weight operand is the weight and bias in one tensor (2C).
    packed: bool,
    /// Channels-last input and gradient ((N, H, W, C) storage).
    nhwc: bool,
}

impl CustomOp3 for BnBackward {
    fn name(&self) -> &'static str {
        "sweep-cuda-batch-norm-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        dys: &CudaStorage,
        dyl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match xs.dtype() {
            DType::F32 => self.backward::<f32>(xs, xl, dys, dyl, ws, wl),
            DType::BF16 => self.backward::<half::bf16>(xs, xl, dys, dyl, ws, wl),
            other => bail!("{}: no CUDA kernel for {other:?}", self.name()),
        }
    }
}

impl BnBackward {
    #[allow(unsafe_code)] // kernel launches and uninitialised device buffers: see the SAFETY comments
    fn backward<T: Elem>(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        dys: &CudaStorage,
        dyl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let (n, c, hw) = geometry(xl.shape(), self.nhwc)?;
        let (x, dy, w) =
            (view::<T>(xs, xl, "batch_norm")?, view::<T>(dys, dyl, "batch_norm")?, view::<f32>(ws, wl, "batch_norm")?);
        let want = if self.packed { 2 * c as usize } else { c as usize };
        if dy.len() != x.len() || w.len() != want {
            bail!(
                "batch_norm backward: {} gradients for {} inputs, {} weights for {c} channels",
                dy.len(),
                x.len(),
                w.len()
            );
        }
        let out = self.out.as_ref().map(address::<T>).transpose()?;
        if self.out.as_ref().is_some_and(|o| o.elem_count() != x.len()) {
            bail!("batch_norm backward: an output of another size than the input");
        }
        let saved = self.saved.lock().expect("batch norm lock");
        let Some((mean, invstd)) = saved.as_ref() else { bail!("sweep-cuda-batch-norm-backward: no saved statistics") };
        let s = if self.nhwc { cl_splits(n * hw, c) } else { splits(n, c, hw) };
        let blocks = c * s;
        // SAFETY: as in the forward pass: every partial, every element of dx (and
        // of the residual's gradient) and the 2C parameter gradients are written
        // before they are read.
        let (mut part, mut dx, mut params, dres) = unsafe {
            (
                dev.alloc::<f64>(2 * blocks as usize)?,
                dev.alloc::<T>(x.len())?,
                dev.alloc::<f32>(2 * c as usize)?,
                self.dres.as_ref().map(|_| dev.alloc::<T>(x.len())).transpose()?,
            )
        };
        let stream = dev.cuda_stream();
        let out_ptr = out.as_ref().map_or(0, |o| o.1);
        if self.nhwc {
            let m = n * hw;
            let f = kernel(&dev, "bn_cl_back_stats", T::DTYPE)?;
            let mut k = stream.launch_builder(&f);
            k.arg(&x).arg(&dy).arg(&out_ptr).arg(mean).arg(&mut part).arg(&m).arg(&c);
            // SAFETY: the arguments of bn_cl_back_stats in its order; x, dy and the
            // output (or null) have M*C elements, mean C, part 2 * S * C.
            unsafe { launch(k, cl_grid(s, c)) }?;
            // SAFETY: bn_cl_back_finalize writes all 3C coefficients before bn_cl_backward reads them.
            let mut coef = unsafe { dev.alloc::<f32>(3 * c as usize) }?;
            let f = untyped(&dev, "bn_cl_back_finalize")?;
            let mut k = stream.launch_builder(&f);
            k.arg(&part).arg(&s).arg(invstd).arg(&w).arg(&mut coef).arg(&mut params).arg(&m).arg(&c);
            // SAFETY: the arguments of bn_cl_back_finalize in its order; one block per
            // channel; invstd and the weight have (at least) C elements, coef 3C, params 2C.
            unsafe { launch(k, grid(c)) }?;
            let (dres_addr, dres_guard) = address_or_null(dres.as_ref(), &stream);
            let f = kernel(&dev, "bn_cl_backward", T::DTYPE)?;
            let mut k = stream.launch_builder(&f);
            k.arg(&x).arg(&dy).arg(&out_ptr).arg(mean).arg(&coef).arg(&mut dx).arg(&dres_addr).arg(&m).arg(&c);
            // SAFETY: the arguments of bn_cl_backward in its order; x, dy, dx, the
            // output and the residual's gradient (or null) have M*C elements.
            unsafe { launch(k, cl_grid(cl_elementwise_splits(m), c)) }?;
            drop(dres_guard);
            return Ok(self.hand_over(dev, params, dres, dx, out, xl, c));
        }
        let f = kernel(&dev, "bn_back_stats", T::DTYPE)?;
        let mut k = stream.launch_builder(&f);
        k.arg(&x).arg(&dy).arg(&out_ptr).arg(mean).arg(&mut part).arg(&n).arg(&c).arg(&hw).arg(&s);
        // SAFETY: the arguments of bn_back_stats in its order, of the sizes the
        // forward pass had; the output (or null) has N*C*HW elements.
        unsafe { launch(k, grid(blocks)) }?;
        let (dres_addr, dres_guard) = address_or_null(dres.as_ref(), &stream);
        let f = kernel(&dev, "bn_backward", T::DTYPE)?;
        let mut k = stream.launch_builder(&f);
        k.arg(&x).arg(&dy).arg(&out_ptr).arg(mean).arg(invstd).arg(&w).arg(&part).arg(&mut dx);
        k.arg(&dres_addr).arg(&mut params).arg(&n).arg(&c).arg(&hw).arg(&s);
        // SAFETY: the arguments of bn_backward in its order; params has 2C elements,
        // the weight at least C, the residual's gradient (or null) N*C*HW.
        unsafe { launch(k, grid(blocks)) }?;
        drop(dres_guard);
        Ok(self.hand_over(dev, params, dres, dx, out, xl, c))
    }

    /// Leaves the parameter and residual gradients in their slots and returns dx.
    #[allow(clippy::too_many_arguments)]
    fn hand_over<T: Elem, G>(
        &self,
        dev: CudaDevice,
        params: CudaSlice<f32>,
        dres: Option<CudaSlice<T>>,
        dx: CudaSlice<T>,
        out: G,
        xl: &Layout,
        c: u32,
    ) -> (CudaStorage, Shape) {
        drop(out);
        *self.params.lock().expect("batch norm lock") =
            Some((CudaStorage::wrap_cuda_slice(params, dev.clone()), Shape::from(2 * c as usize)));
        if let (Some(slot), Some(d)) = (&self.dres, dres) {
            *slot.lock().expect("batch norm lock") =
                Some((CudaStorage::wrap_cuda_slice(d, dev.clone()), xl.shape().clone()));
        }
        (CudaStorage::wrap_cuda_slice(dx, dev), xl.shape().clone())
    }
}

/// Hands over what a [`BnBackward`] left in a [`Slot`], as a tensor, without
/// a copy (the operand only names the device).
struct Take(Slot);

impl CustomOp1 for Take {
    fn name(&self) -> &'static str {
        "sweep-cuda-batch-norm-grads"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        let Some(taken) = self.0.lock().expect("batch norm lock").take() else {
            bail!("{}: the backward pass left nothing", self.name())
        };
        Ok(taken)
    }
}

/// BatchNorm with batch statistics on CUDA, for contiguous-able f32 or bf16
/// `x` (N, C, H, W) and f32 `weight` and `bias` (C): returns the output (in
/// x's dtype) and, in the same kernel, updates the f32 running statistics in
/// place as PyTorch (`running = (1 - momentum) * running + momentum * batch`,
/// the variance unbiased) and adds one to the i64 `num_batches_tracked`.
/// With `residual` (x's shape and dtype) the output is `bn(x) + residual`,
/// with `relu` passed through a ReLU, in the same kernel (and both gradients
/// from BatchNorm's backward kernels): no tensor of the normalised values is
/// kept for the backward pass.
pub fn batch_norm_train_cuda(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    (running_mean, running_var, num_batches_tracked, momentum): (&Tensor, &Tensor, &Tensor, f64),
    relu: bool,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let saved: Saved = Arc::new(Mutex::new(None));
    let running = Some((running_mean.clone(), running_var.clone(), num_batches_tracked.clone(), momentum));
    let then = Then { relu, residual: residual.is_some() };
    // Channels-last input: the kernels take its (N, H, W, C) view and the
    // residual in the same layout.
    super::layout::apply_in_layout(x, |x, nhwc| {
        let op = BnForward { eps, saved, running, then, nhwc };
        match residual {
            Some(r) => {
                let wb = Tensor::cat(&[weight, bias], 0)?;
                x.apply_op3(&wb, &super::layout::as_input(r, nhwc)?, op)
            }
            None => x.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op),
        }
    })
}

/// BatchNorm with fixed statistics (eval mode) as one kernel, for a pass
/// without gradients (the inference twin's).
struct BnEval {
    /// Running mean, running variance, weight, bias (f32, C each).
    params: [Tensor; 4],
    eps: f64,
    relu: bool,
    /// Added before the ReLU (x's shape, dtype and layout).
    residual: Option<Tensor>,
    /// Channels-last input ((N, H, W, C) storage).
    nhwc: bool,
}

impl CustomOp1 for BnEval {
    fn name(&self) -> &'static str {
        "sweep-cuda-batch-norm-eval"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        match s.dtype() {
            DType::F32 => self.eval::<f32>(s, l),
            DType::BF16 => self.eval::<half::bf16>(s, l),
            other => bail!("{}: no CUDA kernel for {other:?}", self.name()),
        }
    }
}

impl BnEval {
    #[allow(unsafe_code)] // a kernel launch and an uninitialised output: see the SAFETY comments
    fn eval<T: Elem>(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let (n, c, hw) = geometry(xl.shape(), self.nhwc)?;
        let x = view::<T>(xs, xl, "batch_norm")?;
        let guards: Vec<_> = self.params.iter().map(Tensor::storage_and_layout).collect();
        let mut params = Vec::new();
        for (storage, layout) in &guards {
            let candle_core::Storage::Cuda(cs) = &**storage else { bail!("batch_norm: statistics not on the GPU") };
            let v = view::<f32>(cs, layout, "batch_norm")?;
            if v.len() != c as usize {
                bail!("batch_norm: {} statistics for {c} channels", v.len());
            }
            params.push(v);
        }
        let residual = self.residual.as_ref().map(address::<T>).transpose()?;
        if self.residual.as_ref().is_some_and(|r| r.elem_count() != x.len()) {
            bail!("batch_norm: a residual of another size than the input");
        }
        let res = residual.as_ref().map_or(0, |r| r.1);
        let relu = i32::from(self.relu);
        let s = splits(n, c, hw);
        // SAFETY: bn_eval writes every element of y.
        let mut y = unsafe { dev.alloc::<T>(x.len()) }?;
        let stream = dev.cuda_stream();
        let eps = self.eps as f32;
        if self.nhwc {
            let (m, eval) = (n * hw, 1i32);
            let f = kernel(&dev, "bn_cl_normalize", T::DTYPE)?;
            let mut k = stream.launch_builder(&f);
            k.arg(&x).arg(&params[0]).arg(&params[1]).arg(&params[2]).arg(&params[3]).arg(&res).arg(&mut y);
            k.arg(&m).arg(&c).arg(&eps).arg(&relu).arg(&eval);
            // SAFETY: the arguments of bn_cl_normalize in its order (eval: the running
            // mean and variance in place of the batch's mean and inverse standard
            // deviation); the four parameters have C elements, x, y and the residual
            // (or null) M*C.
            unsafe { launch(k, cl_grid(cl_elementwise_splits(m), c)) }?;
            drop(residual);
            return Ok((CudaStorage::wrap_cuda_slice(y, dev), xl.shape().clone()));
        }
        let f = kernel(&dev, "bn_eval", T::DTYPE)?;
        let mut k = stream.launch_builder(&f);
        k.arg(&x).arg(&params[0]).arg(&params[1]).arg(&params[2]).arg(&params[3]).arg(&res).arg(&mut y);
        k.arg(&n).arg(&c).arg(&hw).arg(&s).arg(&eps).arg(&relu);
        // SAFETY: the arguments of bn_eval in its order; the four parameters have C
        // elements, x, y and the residual (or null) N*C*HW.
        unsafe { launch(k, grid(c * s)) }?;
        drop(residual);
        Ok((CudaStorage::wrap_cuda_slice(y, dev), xl.shape().clone()))
    }
}

/// BatchNorm with the running statistics on CUDA, for f32 or bf16 `x` that
/// needs no gradient (f32 statistics and parameters, C each): one kernel,
/// which also adds `residual` and applies the ReLU when asked (as
/// [`batch_norm_train_cuda`]).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval_cuda(
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let params = [running_mean, running_var, weight, bias].map(|t| t.detach().contiguous());
    let [a, b, c, d] = params;
    let params = [a?, b?, c?, d?];
    super::layout::apply_in_layout(x, |x, nhwc| {
        let residual = residual.map(|r| super::layout::as_input(&r.detach(), nhwc)).transpose()?;
        x.apply_op1_no_bwd(&BnEval { params, eps, relu, residual, nhwc })
    })
}

#[cfg(test)]
mod tests {

    /// NVRTC compiles the kernels.
    #[test]
    fn the_kernels_compile() {
        super::super::cuda::assert_compiles(
            super::SOURCE,
            &[
                "bn_stats_f32",
                "bn_forward_bf16",
                "bn_back_stats_f32",
                "bn_backward_bf16",
                "bn_eval_bf16",
                "bn_cl_stats_bf16",
                "bn_cl_finalize",
                "bn_cl_normalize_f32",
                "bn_cl_back_stats_bf16",
                "bn_cl_back_finalize",
                "bn_cl_backward_bf16",
            ],
        );
    }

    #[test]
    fn splits_fill_the_gpu_without_starving_threads() {
        // the ResNet18 stem at batch 50: 64 channels of 627,200 values
        assert_eq!(super::splits(50, 64, 112 * 112), 16);
        // layer4: 512 channels of 2,450 values: two blocks each
        assert_eq!(super::splits(50, 512, 49), 2);
        // tiny: one block
        assert_eq!(super::splits(2, 8, 4), 1);
    }

    #[test]
    fn channels_last_grids_cover_every_channel_and_row() {
        // the stem channels-last: 627,200 rows of 64 channels, 2 channel groups
        let m = 50 * 112 * 112;
        assert_eq!(super::cl_splits(m, 64), 512);
        let g = super::cl_grid(super::cl_elementwise_splits(m), 64);
        assert_eq!((g.grid_dim.1, g.block_dim), (2, (32, 8, 1)));
        assert!(g.grid_dim.0 * 8 * 4 >= m);
        // 2048 channels (ResNet50's last stage), 98 rows: 4 shares of about 4 rows per lane, 64 groups
        assert_eq!(super::cl_splits(98, 2048), 4);
        assert_eq!(super::cl_grid(1, 2048).grid_dim.1, 64);
        // 100 channels: the last group is partial (the kernels check c < C)
        assert_eq!(super::cl_grid(1, 100).grid_dim.1, 4);
        // (N, H, W, C) storage: the geometry is (N, C, H * W)
        let s = candle_core::Shape::from((2, 5, 7, 3));
        assert_eq!(super::geometry(&s, true).unwrap(), (2, 3, 35));
        assert_eq!(super::geometry(&s, false).unwrap(), (2, 5, 21));
    }
}
