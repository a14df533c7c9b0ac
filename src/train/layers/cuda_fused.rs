//! Elementwise CUDA kernels of our own, one launch where candle's ops take
//! several: ReLU forward and backward, `relu(a + b)` forward (its backward is
//! ReLU's), and the SGD and Adam/AdamW updates, in place on the weights and
//! the optimiser's state.
//!
//! candle's ReLU backward is four kernels (zeros, a comparison, a cast of the
//! mask, a product; 8.8% of a bf16 ResNet18 step on an H200), its
//! `relu(a + b)` two with the sum kept for the backward pass, and an SGD step
//! with momentum six per parameter (250 launches per ResNet18 step).
//!
//! NVRTC compiles the source when a kernel is first used (`cuda.rs`). ReLU
//! follows PyTorch: `relu(NaN)` is NaN and
//! the backward pass passes the gradient where the output is not `<= 0`.

use super::cuda::{elementwise_config, launch, view};
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc;
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, DType, InplaceOp1, InplaceOp2, InplaceOp3, Layout, Result, Shape, Tensor,
};
use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};

/// The kernels' source (see the module doc).
pub(super) const SOURCE: &str = r#"
__device__ __forceinline__ float relu(float v) { return (v > 0.0f || v != v) ? v : 0.0f; }

template <typename T> __device__ void relu_fwd(const T* x, T* y, u64 n) { EACH store(y, i, relu(load(x, i))); }
template <typename T> __device__ void relu_bwd(const T* y, const T* dy, T* dx, u64 n) {
    EACH store(dx, i, load(y, i) <= 0.0f ? 0.0f : load(dy, i));
}
template <typename T> __device__ void add_relu_fwd(const T* a, const T* b, T* y, u64 n) {
    EACH store(y, i, relu(load(a, i) + load(b, i)));
}

extern "C" __global__ void relu_fwd_f32(const float* x, float* y, u64 n) { relu_fwd(x, y, n); }
extern "C" __global__ void relu_fwd_bf16(const bf16* x, bf16* y, u64 n) { relu_fwd(x, y, n); }
extern "C" __global__ void relu_bwd_f32(const float* y, const float* dy, float* dx, u64 n) { relu_bwd(y, dy, dx, n); }
extern "C" __global__ void relu_bwd_bf16(const bf16* y, const bf16* dy, bf16* dx, u64 n) { relu_bwd(y, dy, dx, n); }
extern "C" __global__ void add_relu_fwd_f32(const float* a, const float* b, float* y, u64 n) { add_relu_fwd(a, b, y, n); }
extern "C" __global__ void add_relu_fwd_bf16(const bf16* a, const bf16* b, bf16* y, u64 n) { add_relu_fwd(a, b, y, n); }

// torch.optim.SGD, in two passes so that each writes one buffer:
// d = g + wd * w; buf = first ? d : momentum * buf + (1 - dampening) * d
extern "C" __global__ void sgd_buf(float* buf, const float* g, const float* w, u64 n,
                                   float wd, float momentum, float dampening, int first) {
    EACH {
        float d = g[i] + wd * w[i];
        buf[i] = first ? d : momentum * buf[i] + (1.0f - dampening) * d;
    }
}
// w -= lr * (nesterov ? d + momentum * buf : buf), or lr * d without momentum (buf unused)
extern "C" __global__ void sgd_step(float* w, const float* g, const float* buf, u64 n,
                                    float lr, float wd, float momentum, int use_buf, int nesterov) {
    EACH {
        float d = g[i] + wd * w[i];
        float s = use_buf ? (nesterov ? d + momentum * buf[i] : buf[i]) : d;
        w[i] = w[i] - lr * s;
    }
}
// torch.optim.Adam/AdamW: g' = g + wd * w (Adam's coupled decay; wd = 0 for AdamW);
// m = b1 * m + (1 - b1) * g'; v = b2 * v + (1 - b2) * g'^2 (first: from zero)
extern "C" __global__ void adam_moment(float* m, const float* g, const float* w, u64 n,
                                       float wd, float beta, int squared, int first) {
    EACH {
        float d = g[i] + wd * w[i];
        float x = squared ? d * d : d;
        m[i] = first ? (1.0f - beta) * x : beta * m[i] + (1.0f - beta) * x;
    }
}
// AMSGrad: mx = max(mx, v) (first: v)
extern "C" __global__ void adam_max(float* mx, const float* v, u64 n, int first) {
    EACH { mx[i] = first ? v[i] : fmaxf(mx[i], v[i]); }
}
// num_batches_tracked += 1
extern "C" __global__ void count_up(long long* c, u64 n) { EACH c[i] += 1; }

// BatchNorm's running statistics from the batch's (cuDNN's saved mean or inverse
// standard deviation): running = (1 - momentum) * running + momentum * batch, where
// the variance is 1 / invstd^2 - eps, times m / (m - 1) (unbiased), as PyTorch.
extern "C" __global__ void bn_running(float* running, const float* stat, u64 n,
                                      float momentum, int is_var, float eps, float unbias) {
    EACH {
        float s = stat[i];
        float b = is_var ? (1.0f / (s * s) - eps) * unbias : s;
        running[i] = (1.0f - momentum) * running[i] + momentum * b;
    }
}
// w = w * keep - step_size * m / (sqrt(v) / bc2_sqrt + eps) (keep = 1 - lr * wd for AdamW)
extern "C" __global__ void adam_step(float* w, const float* m, const float* v, u64 n,
                                     float keep, float step_size, float bc2_sqrt, float eps) {
    EACH { w[i] = w[i] * keep - step_size * (m[i] / (sqrtf(v[i]) / bc2_sqrt + eps)); }
}
"#;

/// The module name of [`SOURCE`].
const MODULE: &str = "sweep_fused";

/// Kernel `name` of [`SOURCE`].
fn function(dev: &CudaDevice, name: &str) -> Result<cudarc::driver::CudaFunction> {
    super::cuda::function(dev, MODULE, SOURCE, name)
}

/// The kernel suffix of a dtype.
fn suffix(dtype: DType, what: &str) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => bail!("{what}: no fused CUDA kernel for {other:?}"),
    }
}

/// An elementwise op over `N` same-shaped inputs, output in their dtype.
#[allow(unsafe_code)] // an uninitialised output: see the SAFETY comment
fn elementwise<T: CudaDType + DeviceRepr + 'static>(
    kernel: &str,
    inputs: &[(&CudaStorage, &Layout)],
    what: &str,
) -> Result<(CudaStorage, Shape)> {
    let (s0, l0) = inputs[0];
    let dev = s0.device().clone();
    let views = inputs.iter().map(|(s, l)| view::<T>(s, l, what)).collect::<Result<Vec<_>>>()?;
    let n = views[0].len();
    if views.iter().any(|v| v.len() != n) || inputs.iter().any(|(_, l)| l.shape() != l0.shape()) {
        bail!("{what}: inputs of different shapes");
    }
    // SAFETY: the kernel writes every one of the n elements.
    let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(n) }?;
    let func = function(&dev, kernel)?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&func);
    for v in &views {
        b.arg(v);
    }
    b.arg(&mut out);
    let count = n as u64;
    b.arg(&count);
    // SAFETY: the elementwise kernels take (inputs, output, n), buffers of n
    // elements of T (checked above), and touch indices below n only.
    unsafe { launch(b, elementwise_config(n)) }?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev), l0.shape().clone()))
}

/// Dispatches [`elementwise`] on the dtype of the first input.
fn run(base: &str, inputs: &[(&CudaStorage, &Layout)], what: &str) -> Result<(CudaStorage, Shape)> {
    let dtype = inputs[0].0.dtype();
    if inputs.iter().any(|(s, _)| s.dtype() != dtype) {
        bail!("{what}: inputs of different dtypes");
    }
    let kernel = format!("{base}_{}", suffix(dtype, what)?);
    match dtype {
        DType::F32 => elementwise::<f32>(&kernel, inputs, what),
        _ => elementwise::<half::bf16>(&kernel, inputs, what),
    }
}

/// `max(x, 0)` (NaN kept), backward in one kernel from the output.
struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "sweep-cuda-relu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        run("relu_fwd", &[(s, l)], self.name())
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &ReluBackward)?))
    }
}

/// (y, dy) -> dy where y > 0, else 0.
struct ReluBackward;

impl CustomOp2 for ReluBackward {
    fn name(&self) -> &'static str {
        "sweep-cuda-relu-backward"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        run("relu_bwd", &[(s1, l1), (s2, l2)], self.name())
    }
}

/// `relu(a + b)`; both inputs get ReLU's backward of the incoming gradient.
struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "sweep-cuda-add-relu"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        run("add_relu_fwd", &[(s1, l1), (s2, l2)], self.name())
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = res.apply_op2_no_bwd(&grad.contiguous()?, &ReluBackward)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}

/// ReLU of an f32 or bf16 CUDA tensor as one kernel each way.
pub(super) fn relu(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Relu)
}

/// `relu(a + b)` of same-shaped f32 or bf16 CUDA tensors as one kernel each way.
pub(super) fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

/// One in-place optimiser kernel: `kernel` over the destination and two
/// sources (f32, contiguous, of one length), then `scalars`.
struct Update {
    kernel: &'static str,
    scalars: Vec<Scalar>,
}

/// A kernel argument after the buffers.
#[derive(Debug, Clone, Copy)]
enum Scalar {
    F(f32),
    I(i32),
}

impl Update {
    #[allow(unsafe_code)] // a kernel launch: see the SAFETY comment
    fn launch(&self, dst: &mut CudaStorage, dl: &Layout, srcs: &[(&CudaStorage, &Layout)]) -> Result<()> {
        let what = self.kernel;
        let dev = dst.device().clone();
        let Some((start, end)) = dl.contiguous_offsets() else { bail!("{what}: non-contiguous destination") };
        let views = srcs.iter().map(|(s, l)| view::<f32>(s, l, what)).collect::<Result<Vec<_>>>()?;
        if views.iter().any(|v| v.len() != end - start) {
            bail!("{what}: buffers of different lengths");
        }
        let mut out = dst.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
        let n = end - start;
        // (dst, sources, n, scalars), the optimiser kernels' order.
        let func = function(&dev, self.kernel)?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        b.arg(&mut out);
        for v in &views {
            b.arg(v);
        }
        let n = n as u64;
        b.arg(&n);
        for s in &self.scalars {
            match s {
                Scalar::F(f) => b.arg(f),
                Scalar::I(i) => b.arg(i),
            };
        }
        // SAFETY: the optimiser kernels take (destination, sources, n, scalars)
        // in this order, every buffer has n f32 elements (checked above), and
        // they touch indices below n only.
        unsafe { launch(b, elementwise_config(n as usize)) }
    }
}

impl InplaceOp2 for Update {
    fn name(&self) -> &'static str {
        self.kernel
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        bail!("{}: a CUDA op on the CPU", self.kernel)
    }

    fn cuda_fwd(&self, s1: &mut CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<()> {
        self.launch(s1, l1, &[(s2, l2)])
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        self.kernel
    }

    fn cpu_fwd(
        &self,
        _: &mut CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        bail!("{}: a CUDA op on the CPU", self.kernel)
    }

    fn cuda_fwd(
        &self,
        s1: &mut CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        self.launch(s1, l1, &[(s2, l2), (s3, l3)])
    }
}

/// BatchNorm's running mean (`var` false; `stat` the batch mean) or running
/// variance (`var` true; `stat` the inverse standard deviation cuDNN saved)
/// updated in place with `momentum`, from a batch of `m` values per channel.
#[allow(unsafe_code)] // a kernel launch: see the SAFETY comment
pub(super) fn bn_running(
    dst: &mut CudaStorage,
    layout: &Layout,
    stat: &CudaSlice<f32>,
    momentum: f64,
    var: Option<(f64, usize)>,
) -> Result<()> {
    let what = "bn_running";
    let dev = dst.device().clone();
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("{what}: non-contiguous statistics") };
    if end - start != stat.len() {
        bail!("{what}: {} running values for {} channels", end - start, stat.len());
    }
    let mut out = dst.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
    let (is_var, eps, unbias) = match var {
        Some((eps, m)) => (1i32, eps as f32, (m as f64 / (m.max(2) - 1) as f64) as f32),
        None => (0, 0.0, 1.0),
    };
    let func = function(&dev, "bn_running")?;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&func);
    b.arg(&mut out);
    b.arg(stat);
    let n = stat.len() as u64;
    b.arg(&n);
    let momentum = momentum as f32;
    b.arg(&momentum);
    b.arg(&is_var);
    b.arg(&eps);
    b.arg(&unbias);
    // SAFETY: bn_running takes (running, stat, n, momentum, is_var, eps,
    // unbias); both buffers have n f32 elements (checked above).
    unsafe { launch(b, elementwise_config(stat.len())) }
}

/// Adds one to an i64 counter in place (BatchNorm's `num_batches_tracked`).
struct CountUp;

impl InplaceOp1 for CountUp {
    fn name(&self) -> &'static str {
        "sweep-cuda-count-up"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    #[allow(unsafe_code)] // a kernel launch: see the SAFETY comment
    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> Result<()> {
        let dev = s.device().clone();
        let Some((start, end)) = l.contiguous_offsets() else { bail!("count_up: non-contiguous counter") };
        let mut c = s.as_cuda_slice_mut::<i64>()?.slice_mut(start..end);
        let func = function(&dev, "count_up")?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        let n = (end - start) as u64;
        b.arg(&mut c).arg(&n);
        // SAFETY: count_up takes (counters, n); c has n i64 elements.
        unsafe { launch(b, elementwise_config(end - start)) }
    }
}

/// `counter += 1` in place, for an i64 CUDA tensor (one kernel; candle's
/// `set(&(counter + 1))` is two).
pub fn count_up(counter: &Tensor) -> Result<()> {
    counter.inplace_op1(&CountUp)
}

/// `torch.optim.SGD`'s update of one f32 parameter in place: the momentum
/// buffer `buf` (updated in place; `first`: this is its first step, its
/// values are ignored) when `momentum` is not zero, then the weight.
#[allow(clippy::too_many_arguments)]
pub fn sgd_update(
    w: &Tensor,
    g: &Tensor,
    buf: Option<(&Tensor, bool)>,
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    dampening: f64,
    nesterov: bool,
) -> Result<()> {
    let f = |v: f64| Scalar::F(v as f32);
    let g = &g.contiguous()?;
    if let Some((buf, first)) = buf {
        let scalars = vec![f(weight_decay), f(momentum), f(dampening), Scalar::I(i32::from(first))];
        buf.inplace_op3(g, w, &Update { kernel: "sgd_buf", scalars })?;
    }
    let scalars =
        vec![f(lr), f(weight_decay), f(momentum), Scalar::I(i32::from(buf.is_some())), Scalar::I(i32::from(nesterov))];
    let b = buf.map_or(g, |(b, _)| b);
    w.inplace_op3(g, b, &Update { kernel: "sgd_step", scalars })
}

/// Adam's (and AdamW's) update of one f32 parameter in place: the first
/// and second moments `m` and `v` (and AMSGrad's running maximum `vmax`),
/// each updated in place (`first`: their first step), then the weight.
/// `weight_decay` is Adam's coupled decay (added to the gradient), `keep`
/// AdamW's decoupled factor `1 - lr * wd` (1 for Adam).
#[allow(clippy::too_many_arguments)]
pub fn adam_update(
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    vmax: Option<&Tensor>,
    first: bool,
    betas: (f64, f64),
    weight_decay: f64,
    keep: f64,
    step_size: f64,
    bc2_sqrt: f64,
    eps: f64,
) -> Result<()> {
    let f = |x: f64| Scalar::F(x as f32);
    let g = &g.contiguous()?;
    let first_i = Scalar::I(i32::from(first));
    m.inplace_op3(
        g,
        w,
        &Update { kernel: "adam_moment", scalars: vec![f(weight_decay), f(betas.0), Scalar::I(0), first_i] },
    )?;
    v.inplace_op3(
        g,
        w,
        &Update { kernel: "adam_moment", scalars: vec![f(weight_decay), f(betas.1), Scalar::I(1), first_i] },
    )?;
    let second = match vmax {
        Some(mx) => {
            mx.inplace_op2(v, &Update { kernel: "adam_max", scalars: vec![first_i] })?;
            mx
        }
        None => v,
    };
    w.inplace_op3(m, second, &Update { kernel: "adam_step", scalars: vec![f(keep), f(step_size), f(bc2_sqrt), f(eps)] })
}

#[cfg(test)]
mod tests {
    use super::cudarc;

    /// NVRTC compiles the kernels (it needs no GPU, only the library, which
    /// the CUDA build links).
    #[test]
    fn the_kernels_compile() {
        match cudarc::nvrtc::compile_ptx(format!("{}{}", super::super::cuda::PRELUDE, super::SOURCE)) {
            Ok(ptx) => {
                let src = ptx.to_src();
                for k in ["relu_fwd_bf16", "relu_bwd_f32", "add_relu_fwd_bf16", "sgd_buf", "sgd_step", "adam_step"] {
                    assert!(src.contains(k), "{k} missing from the PTX");
                }
            }
            Err(e) => panic!("NVRTC: {e:?}"),
        }
    }
}
