//! The classifier's loss and its per-batch numbers on CUDA with our own
//! kernels: the mean cross-entropy of (N, C) f32 logits against u32 labels,
//! with PyTorch's label smoothing, as one kernel forward and one backward;
//! and the numbers the trainer and the test pass read back (the loss sum, the
//! top-1 and top-5 hits and each row's prediction) as one kernel.
//!
//! candle's cross-entropy is a log-softmax and a gather (nine kernels
//! forward, about sixteen backward) and the numbers four more kernels for
//! the accuracy and three for the top-5, each of them reading or writing a
//! few hundred bytes: launches, not work, on a GPU that runs the rest of a
//! ResNet18 step in 8 ms. Here each row's log-sum-exp is taken in double
//! (PyTorch's CUDA kernels keep f32), the batch's sums in one block in a
//! fixed order, so the numbers do not depend on the launch.
//!
//! PyTorch's definitions: `loss_i = (1 - ε) (lse_i - x_iy) + ε / C Σ_c
//! (lse_i - x_ic)`, the mean over the rows; `dx_ic = g / N (softmax_ic -
//! (1 - ε) [c = y_i] - ε / C)`; top-1: the first maximum is the label
//! (`argmax`); top-5: fewer than five logits are larger than the label's. A
//! label out of range gives a NaN loss (never a read outside the row).

use super::cuda::{function, launch, view};
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc;
use candle_core::cuda::CudaStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// The kernels' source (see the module doc). The sums over the rows run in
/// one block of 256 threads.
pub(super) const SOURCE: &str = r#"
struct Row { double lse; double sum; u32 arg; };

// Row `row` of C logits: log-sum-exp, the sum, the first maximum's index.
__device__ Row row_of(const float* row, u32 c) {
    float m = row[0];
    u32 arg = 0;
    for (u32 k = 1; k < c; k++) if (row[k] > m) { m = row[k]; arg = k; }
    double s = 0.0, sum = 0.0;
    for (u32 k = 0; k < c; k++) { s += exp((double)row[k] - (double)m); sum += (double)row[k]; }
    Row r;
    r.lse = (double)m + log(s);
    r.sum = sum;
    r.arg = arg;
    return r;
}

__device__ double row_loss(const float* row, u32 c, u32 label, float smoothing, Row r) {
    double own = label < c ? (double)row[label] : (double)__int_as_float(0x7fc00000);
    return r.lse - (1.0 - (double)smoothing) * own - (double)smoothing * r.sum / (double)c;
}

// Sums v over the block's 256 threads in a fixed order; thread 0 gets the total.
template <typename T> __device__ T block_sum(T* part, T v) {
    part[threadIdx.x] = v;
    __syncthreads();
    for (u32 w = 128; w > 0; w >>= 1) {
        if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    return part[0];
}

// loss[0] = the mean over the n rows (one block of 256 threads).
extern "C" __global__ void ce_loss(const float* x, const u32* y, float* loss, u32 n, u32 c, float smoothing) {
    __shared__ double part[256];
    double acc = 0.0;
    for (u32 i = threadIdx.x; i < n; i += 256) {
        const float* row = x + (u64)i * c;
        acc += row_loss(row, c, y[i], smoothing, row_of(row, c));
    }
    double total = block_sum(part, acc);
    if (threadIdx.x == 0) loss[0] = (float)(total / (double)n);
}

// dx = g[0] / n (softmax - target), a thread per row.
extern "C" __global__ void ce_backward(const float* x, const u32* y, const float* g, float* dx, u32 n, u32 c, float smoothing) {
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float* row = x + (u64)i * c;
        Row r = row_of(row, c);
        double scale = (double)g[0] / (double)n, off = (double)smoothing / (double)c;
        u32 label = y[i];
        for (u32 k = 0; k < c; k++) {
            double target = off + (k == label ? 1.0 - (double)smoothing : 0.0);
            dx[(u64)i * c + k] = (float)(scale * (exp((double)row[k] - r.lse) - target));
        }
    }
}

// out = [loss sum, top-1 hits, top-5 hits, the prediction of each row] (one block of 256 threads).
extern "C" __global__ void ce_stats(const float* x, const u32* y, float* out, u32 n, u32 c, float smoothing) {
    __shared__ double losses[256];
    __shared__ u32 hits[256];
    __shared__ u32 top5[256];
    double l = 0.0;
    u32 h = 0, t = 0;
    for (u32 i = threadIdx.x; i < n; i += 256) {
        const float* row = x + (u64)i * c;
        Row r = row_of(row, c);
        u32 label = y[i];
        l += row_loss(row, c, label, smoothing, r);
        h += r.arg == label ? 1u : 0u;
        if (label < c) {
            u32 above = 0;
            for (u32 k = 0; k < c; k++) above += row[k] > row[label] ? 1u : 0u;
            t += above < 5u ? 1u : 0u;
        }
        out[3 + (u64)i] = (float)r.arg;
    }
    double loss = block_sum(losses, l);
    u32 hit = block_sum(hits, h);
    u32 top = block_sum(top5, t);
    if (threadIdx.x == 0) { out[0] = (float)loss; out[1] = (float)hit; out[2] = (float)top; }
}
"#;

/// The module name of [`SOURCE`].
pub(super) const MODULE: &str = "sweep_ce";

/// (N, C) and (N) of contiguous f32 logits and u32 labels.
fn rows(l1: &Layout, s2: &CudaStorage, l2: &Layout, what: &str) -> Result<(u32, u32)> {
    let (n, c) = l1.shape().dims2()?;
    if s2.dtype() != DType::U32 || l2.shape().dims() != [n] {
        bail!("{what}: labels must be u32 of shape ({n}), not {:?} {:?}", s2.dtype(), l2.dims());
    }
    match (u32::try_from(n), u32::try_from(c)) {
        (Ok(n), Ok(c)) if n > 0 && c > 0 && u64::from(n) * u64::from(c) < 1 << 40 => Ok((n, c)),
        _ => bail!("{what}: logits of shape ({n}, {c})"),
    }
}

/// One block of 256 threads (the kernels' sums over the rows).
const ONE_BLOCK: LaunchConfig = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };

/// Runs a one-block kernel `(x, y, out, n, c, smoothing)` with `len` outputs.
#[allow(unsafe_code)] // an uninitialised output and a launch: see the SAFETY comments
fn one_block(
    kernel: &str,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    smoothing: f32,
    len: impl FnOnce(u32) -> usize,
    what: &str,
) -> Result<(CudaSlice<f32>, u32)> {
    let (n, c) = rows(l1, s2, l2, what)?;
    let (x, y) = (view::<f32>(s1, l1, what)?, view::<u32>(s2, l2, what)?);
    let dev = s1.device().clone();
    // SAFETY: the kernel writes every output (the sums and, for the stats, each row's prediction).
    let mut out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(len(n)) }?;
    let func = function(&dev, MODULE, SOURCE, kernel)?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&func);
    b.arg(&x).arg(&y).arg(&mut out).arg(&n).arg(&c).arg(&smoothing);
    // SAFETY: (x, y, out, n, c, smoothing) as the kernel takes them; x has n * c
    // elements, y n (`rows`), out what the kernel writes; one block of 256 threads.
    unsafe { launch(b, ONE_BLOCK) }?;
    Ok((out, n))
}

/// The mean cross-entropy; backward [`CrossEntropyBackward`].
struct CrossEntropy {
    smoothing: f32,
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "sweep-cuda-cross-entropy"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        let (out, _) = one_block("ce_loss", (s1, l1), (s2, l2), self.smoothing, |_| 1, self.name())?;
        Ok((CudaStorage::wrap_cuda_slice(out, s1.device().clone()), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F32)?.contiguous()?;
        let dx = x.apply_op3_no_bwd(y, &g, &CrossEntropyBackward { smoothing: self.smoothing })?;
        Ok((Some(dx), None))
    }
}

/// (logits, labels, the loss's gradient) -> the logits' gradient.
struct CrossEntropyBackward {
    smoothing: f32,
}

impl CustomOp3 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "sweep-cuda-cross-entropy-backward"
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

    #[allow(unsafe_code)] // an uninitialised output and a launch: see the SAFETY comments
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let what = self.name();
        let (n, c) = rows(l1, s2, l2, what)?;
        if l3.shape().elem_count() != 1 {
            bail!("{what}: the loss's gradient must be one value, not {:?}", l3.dims());
        }
        let (x, y, g) = (view::<f32>(s1, l1, what)?, view::<u32>(s2, l2, what)?, view::<f32>(s3, l3, what)?);
        let dev = s1.device().clone();
        let len = x.len();
        // SAFETY: the kernel writes each of the n * c elements (a thread per row, every column).
        let mut dx: CudaSlice<f32> = unsafe { dev.alloc::<f32>(len) }?;
        let func = function(&dev, MODULE, SOURCE, "ce_backward")?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        b.arg(&x).arg(&y).arg(&g).arg(&mut dx).arg(&n).arg(&c).arg(&self.smoothing);
        let cfg = LaunchConfig { grid_dim: (n.div_ceil(256), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: (x, y, g, dx, n, c, smoothing) as the kernel takes them; x and dx
        // have n * c elements, y n, g one; rows at or past n are not touched.
        unsafe { launch(b, cfg) }?;
        Ok((CudaStorage::wrap_cuda_slice(dx, dev), l1.shape().clone()))
    }
}

/// (logits, labels) -> `[loss sum, top-1 hits, top-5 hits, prediction of each row]`.
struct Stats {
    smoothing: f32,
}

impl CustomOp2 for Stats {
    fn name(&self) -> &'static str {
        "sweep-cuda-classifier-stats"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        let (out, n) = one_block("ce_stats", (s1, l1), (s2, l2), self.smoothing, |n| 3 + n as usize, self.name())?;
        Ok((CudaStorage::wrap_cuda_slice(out, s1.device().clone()), Shape::from(3 + n as usize)))
    }
}

/// The mean cross-entropy of (N, C) f32 CUDA logits against (N) u32 labels
/// with label smoothing `smoothing`, one kernel each way.
pub(crate) fn cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> Result<Tensor> {
    logits.contiguous()?.apply_op2(&labels.contiguous()?, CrossEntropy { smoothing: smoothing as f32 })
}

/// `[loss sum, top-1 hits, top-5 hits, prediction of each row]` (f32) of
/// (N, C) f32 CUDA logits against (N) u32 labels, one kernel, not tracked.
pub(crate) fn classifier_stats(logits: &Tensor, labels: &Tensor, smoothing: f64) -> Result<Tensor> {
    logits.detach().contiguous()?.apply_op2_no_bwd(&labels.contiguous()?, &Stats { smoothing: smoothing as f32 })
}

#[cfg(test)]
mod tests {

    /// NVRTC compiles the kernels.
    #[test]
    fn the_kernels_compile() {
        super::super::cuda::assert_compiles(super::SOURCE, &["ce_loss", "ce_backward", "ce_stats"]);
    }
}
