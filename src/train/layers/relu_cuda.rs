//! ReLU and `relu(a + b)` on CUDA with our own kernels (f32 or bf16), one
//! launch each way where candle's ops take several: candle's ReLU backward is
//! four kernels (zeros, a comparison, a cast of the mask, a product; 8.8% of a
//! bf16 ResNet18 step on an H200), its `relu(a + b)` two, with the sum kept
//! for the backward pass.
//!
//! NVRTC compiles the source when a kernel is first used (`cuda.rs`). ReLU
//! follows PyTorch: `relu(NaN)` is NaN, and the backward pass passes the
//! gradient where the output is not `<= 0`.

use super::cuda::{elementwise_config, launch, typed_function, view, Elem};
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc;
use candle_core::cuda::CudaStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use cudarc::driver::{CudaSlice, PushKernelArg};

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

"#;

/// The module name of [`SOURCE`].
pub(super) const MODULE: &str = "sweep_relu";

/// An elementwise op over `N` same-shaped inputs, output in their dtype.
#[allow(unsafe_code)] // an uninitialised output: see the SAFETY comment
fn elementwise<T: Elem>(base: &str, inputs: &[(&CudaStorage, &Layout)], what: &str) -> Result<(CudaStorage, Shape)> {
    let (s0, l0) = inputs[0];
    let dev = s0.device().clone();
    let views = inputs.iter().map(|(s, l)| view::<T>(s, l, what)).collect::<Result<Vec<_>>>()?;
    let n = views[0].len();
    if views.iter().any(|v| v.len() != n) || inputs.iter().any(|(_, l)| l.shape() != l0.shape()) {
        bail!("{what}: inputs of different shapes");
    }
    // SAFETY: the kernel writes every one of the n elements.
    let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(n) }?;
    let func = typed_function(&dev, (MODULE, SOURCE), base, T::DTYPE)?;
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
    match dtype {
        DType::F32 => elementwise::<f32>(base, inputs, what),
        DType::BF16 => elementwise::<half::bf16>(base, inputs, what),
        other => bail!("{what}: no CUDA kernel for {other:?}"),
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

/// ReLU of an f32 or bf16 CUDA tensor as one kernel each way (a
/// channels-last input under the `cudnn-nhwc` kernel set stays so: the
/// kernels are elementwise over its storage).
pub(super) fn relu(xs: &Tensor) -> Result<Tensor> {
    super::layout::apply_in_layout(xs, |x, _| x.apply_op1(Relu))
}

/// `relu(a + b)` of same-shaped f32 or bf16 CUDA tensors as one kernel each
/// way (in a's layout when a is channels-last, see [`relu`]).
pub(super) fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    super::layout::apply_in_layout(a, |a, nhwc| a.apply_op2(&super::layout::as_input(b, nhwc)?, AddRelu))
}

#[cfg(test)]
mod tests {

    /// NVRTC compiles the kernels.
    #[test]
    fn the_kernels_compile() {
        super::super::cuda::assert_compiles(super::SOURCE, &["relu_fwd_bf16", "relu_bwd_f32", "add_relu_fwd_bf16"]);
    }
}
