//! A convolution weight as the filter of a channels-last cuDNN convolution
//! (`SWEEP_GPU_KERNELS=cudnn-nhwc`): the f32 (K, C, R, S) master weight
//! becomes the (K, R, S, C) filter in the compute dtype in one kernel (the
//! cast the NCHW path launches anyway, with the transpose in it), and its
//! gradient goes back to f32 (K, C, R, S) in one.

use super::cuda::{elementwise_config, launch, typed_function, view};
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc;
use candle_core::cuda::CudaStorage;
use candle_core::{bail, CpuStorage, DType, Layout, Result, Shape, Tensor};
use cudarc::driver::PushKernelArg;

/// The kernels (after `cuda::PRELUDE`).
pub(super) const SOURCE: &str = r#"
template <typename T> __device__ void to_krsc(const float* w, T* out, u32 K, u32 C, u32 RS) {
    u64 n = (u64)K * C * RS;
    EACH { u32 j = (u32)i, c = j % C, t = j / C, rs = t % RS, k = t / RS; store(out, i, w[((u64)k * C + c) * RS + rs]); }
}
template <typename T> __device__ void from_krsc(const T* g, float* out, u32 K, u32 C, u32 RS) {
    u64 n = (u64)K * C * RS;
    EACH { u32 j = (u32)i, rs = j % RS, t = j / RS, c = t % C, k = t / C; out[i] = load(g, ((u64)k * RS + rs) * C + c); }
}
extern "C" __global__ void to_krsc_f32(const float* w, float* out, u32 K, u32 C, u32 RS) { to_krsc(w, out, K, C, RS); }
extern "C" __global__ void to_krsc_bf16(const float* w, bf16* out, u32 K, u32 C, u32 RS) { to_krsc(w, out, K, C, RS); }
extern "C" __global__ void from_krsc_f32(const float* g, float* out, u32 K, u32 C, u32 RS) { from_krsc(g, out, K, C, RS); }
extern "C" __global__ void from_krsc_bf16(const bf16* g, float* out, u32 K, u32 C, u32 RS) { from_krsc(g, out, K, C, RS); }
"#;

/// (K, C, R * S) of a weight's logical dims, each below 2^32 in all.
fn weight_dims(k: usize, c: usize, rs: usize) -> Result<[u32; 3]> {
    match (u32::try_from(k), u32::try_from(c), u32::try_from(rs), u32::try_from(k * c * rs)) {
        (Ok(k), Ok(c), Ok(rs), Ok(_)) => Ok([k, c, rs]),
        _ => bail!("conv2d: a weight of {k}x{c}x{rs} too large for the CUDA kernels"),
    }
}

/// f32 (K, C, R, S) -> (K, R, S, C) in `dtype`, one kernel each way.
struct ToKrsc {
    dtype: DType,
}

impl candle_core::CustomOp1 for ToKrsc {
    fn name(&self) -> &'static str {
        "sweep-cuda-weight-to-krsc"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    #[allow(unsafe_code)] // a kernel launch and an uninitialised output: see the SAFETY comments
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let (k, c, r, sw) = l.shape().dims4()?;
        let dims = weight_dims(k, c, r * sw)?;
        let w = view::<f32>(s, l, "conv2d weight")?;
        let f = typed_function(&dev, (MODULE, SOURCE), "to_krsc", self.dtype)?;
        let stream = dev.cuda_stream();
        let n = w.len();
        let shape = Shape::from((k, r, sw, c));
        macro_rules! go {
            ($t:ty) => {{
                // SAFETY: to_krsc writes every one of the n elements.
                let mut out = unsafe { dev.alloc::<$t>(n) }?;
                let mut b = stream.launch_builder(&f);
                b.arg(&w).arg(&mut out).arg(&dims[0]).arg(&dims[1]).arg(&dims[2]);
                // SAFETY: (w, out, K, C, RS) as to_krsc takes them; both have K*C*RS elements.
                unsafe { launch(b, elementwise_config(n)) }?;
                Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
            }};
        }
        match self.dtype {
            DType::F32 => go!(f32),
            DType::BF16 => go!(half::bf16),
            other => bail!("{}: no CUDA kernel for {other:?}", self.name()),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (k, c, r, s) = arg.dims4()?;
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&FromKrsc { dims: (k, c, r, s) })?))
    }
}

/// (K, R, S, C) gradient in f32 or bf16 -> f32 (K, C, R, S).
struct FromKrsc {
    dims: (usize, usize, usize, usize),
}

impl candle_core::CustomOp1 for FromKrsc {
    fn name(&self) -> &'static str {
        "sweep-cuda-weight-from-krsc"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    #[allow(unsafe_code)] // a kernel launch and an uninitialised output: see the SAFETY comments
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let (k, c, r, sw) = self.dims;
        let dims = weight_dims(k, c, r * sw)?;
        if l.shape().dims() != [k, r, sw, c] {
            bail!("{}: a gradient of {:?} for a {k}x{c}x{r}x{sw} weight", self.name(), l.shape().dims());
        }
        let f = typed_function(&dev, (MODULE, SOURCE), "from_krsc", s.dtype())?;
        let stream = dev.cuda_stream();
        let n = k * c * r * sw;
        // SAFETY: from_krsc writes every one of the n elements.
        let mut out = unsafe { dev.alloc::<f32>(n) }?;
        macro_rules! go {
            ($t:ty) => {{
                let g = view::<$t>(s, l, "conv2d weight gradient")?;
                let mut b = stream.launch_builder(&f);
                b.arg(&g).arg(&mut out).arg(&dims[0]).arg(&dims[1]).arg(&dims[2]);
                // SAFETY: (g, out, K, C, RS) as from_krsc takes them; both have K*C*RS elements.
                unsafe { launch(b, elementwise_config(n)) }?;
            }};
        }
        match s.dtype() {
            DType::F32 => go!(f32),
            DType::BF16 => go!(half::bf16),
            other => bail!("{}: no CUDA kernel for {other:?}", self.name()),
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((k, c, r, sw))))
    }
}

/// The module name of [`SOURCE`].
pub(super) const MODULE: &str = "sweep_conv_layout";

/// The (K, R, S, C) filter in `dtype` of an f32 (K, C, R, S) weight, with
/// the gradient back to the weight.
pub(super) fn to_krsc(w: &Tensor, dtype: DType) -> Result<Tensor> {
    w.to_dtype(DType::F32)?.contiguous()?.apply_op1(ToKrsc { dtype })
}

#[cfg(test)]
mod tests {
    /// NVRTC compiles the kernels.
    #[test]
    fn the_kernels_compile() {
        super::super::cuda::assert_compiles(
            super::SOURCE,
            &["to_krsc_f32", "to_krsc_bf16", "from_krsc_f32", "from_krsc_bf16"],
        );
    }
}
