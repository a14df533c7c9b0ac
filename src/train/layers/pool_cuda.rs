//! Max-pooling on CUDA with our own kernels (f32 or bf16; NCHW, or
//! channels-last: (N, H, W, C) storage, `layout.rs`), with
//! PyTorch's semantics: padding never wins, the first maximum of a window
//! in row-major order takes the gradient, a NaN wins its window.
//!
//! Indices are 32-bit inside the kernels (64-bit division made the first
//! version's backward 570 µs for ResNet18's stem at batch 50); tensors of
//! 2^32 elements or more are refused.
//!
//! The forward kernel (one thread per output) writes the output and the
//! position of each window's maximum (one byte: the offset in the window);
//! the backward kernel (one thread per input) sums the gradients of the
//! outputs whose maximum it was, in a fixed order: deterministic, no atomics,
//! no zero fill. cuDNN's deterministic max-pool backward took 940 µs for
//! ResNet18's stem at batch 50 on an H200 (9% of a bf16 step).

use super::cuda::{dims4_u32, elementwise_config, launch, typed_function, view, Elem};
use super::pool::PoolParams;
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc;
use candle_core::cuda::{CudaDevice, CudaStorage};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use cudarc::driver::{CudaSlice, PushKernelArg};
use std::sync::{Arc, Mutex};

/// The kernels (after `cuda::PRELUDE`).
pub(super) const SOURCE: &str = r#"
// Output (oh, ow) of a plane whose element (h, w) is src[(h * W + w) * step] (step 1: NCHW,
// C: channels-last): the window's maximum into `best` and its offset in the window (ky * K + kx)
// into the returned value (padding never wins; the first maximum in row-major order, a NaN wins).
template <typename T> __device__ int window_max(const T* src, u32 step, u32 H, u32 W, u32 oh, u32 ow, u32 K, u32 S,
                                                u32 P, float& best) {
    int h0 = (int)(oh * S) - (int)P, w0 = (int)(ow * S) - (int)P;
    best = __int_as_float(0xff800000);
    int at = -1;
    for (u32 ky = 0; ky < K; ky++) {
        int ih = h0 + (int)ky;
        if (ih < 0 || ih >= (int)H) continue;
        for (u32 kx = 0; kx < K; kx++) {
            int iw = w0 + (int)kx;
            if (iw < 0 || iw >= (int)W) continue;
            float v = load(src, ((u64)ih * W + iw) * step);
            if (at < 0 || v > best || v != v) { best = v; at = ky * K + kx; }
        }
    }
    return at < 0 ? 0 : at;
}

// The gradient of input (ih, iw): the sum over the outputs whose window holds it
// (o * S - P <= i <= o * S - P + K - 1) and whose maximum it was, in a fixed order; dy and arg
// of output (oh, ow) at o0 + (oh * OW + ow) * step.
template <typename T> __device__ float window_grad(const T* dy, const unsigned char* arg, u64 o0, u32 step, u32 ih,
                                                   u32 iw, u32 OH, u32 OW, u32 K, u32 S, u32 P) {
    u32 oh0 = ih + P < K ? 0 : (ih + P - K) / S + 1, oh1 = (ih + P) / S;
    u32 ow0 = iw + P < K ? 0 : (iw + P - K) / S + 1, ow1 = (iw + P) / S;
    if (oh1 >= OH) oh1 = OH - 1;
    if (ow1 >= OW) ow1 = OW - 1;
    float g = 0.0f;
    for (u32 oh = oh0; oh <= oh1 && oh < OH; oh++) {
        for (u32 ow = ow0; ow <= ow1 && ow < OW; ow++) {
            u64 o = o0 + ((u64)oh * OW + ow) * step;
            u32 at = arg[o];
            if (oh * S + at / K == ih + P && ow * S + at % K == iw + P) g += load(dy, o);
        }
    }
    return g;
}

// NCHW: one thread per output (i = (plane * OH + oh) * OW + ow), then one per input.
template <typename T> __device__ void forward(const T* x, T* y, unsigned char* arg, u32 NC, u32 H, u32 W,
                                              u32 OH, u32 OW, u32 K, u32 S, u32 P) {
    u64 n = (u64)NC * OH * OW;
    EACH {
        u32 k = (u32)i, ow = k % OW, t = k / OW, oh = t % OH;
        u64 plane = t / OH;
        float best;
        arg[i] = (unsigned char)window_max(x + plane * H * W, 1, H, W, oh, ow, K, S, P, best);
        store(y, i, best);
    }
}

template <typename T> __device__ void backward(const T* dy, const unsigned char* arg, T* dx, u32 NC, u32 H, u32 W,
                                               u32 OH, u32 OW, u32 K, u32 S, u32 P) {
    u64 n = (u64)NC * H * W;
    EACH {
        u32 k = (u32)i, iw = k % W, t = k / W, ih = t % H;
        u64 plane = t / H;
        store(dx, i, window_grad(dy, arg, plane * OH * OW, 1, ih, iw, OH, OW, K, S, P));
    }
}

// Channels-last: the channel innermost (i = ((b * OH + oh) * OW + ow) * C + c).
template <typename T> __device__ void forward_cl(const T* x, T* y, unsigned char* arg, u32 N, u32 C, u32 H, u32 W,
                                                 u32 OH, u32 OW, u32 K, u32 S, u32 P) {
    u64 n = (u64)N * OH * OW * C;
    EACH {
        u32 k = (u32)i, c = k % C, t = k / C, ow = t % OW;
        t /= OW;
        u32 oh = t % OH, b = t / OH;
        float best;
        arg[i] = (unsigned char)window_max(x + (u64)b * H * W * C + c, C, H, W, oh, ow, K, S, P, best);
        store(y, i, best);
    }
}

template <typename T> __device__ void backward_cl(const T* dy, const unsigned char* arg, T* dx, u32 N, u32 C, u32 H,
                                                  u32 W, u32 OH, u32 OW, u32 K, u32 S, u32 P) {
    u64 n = (u64)N * H * W * C;
    EACH {
        u32 k = (u32)i, c = k % C, t = k / C, iw = t % W;
        t /= W;
        u32 ih = t % H, b = t / H;
        store(dx, i, window_grad(dy, arg, (u64)b * OH * OW * C + c, C, ih, iw, OH, OW, K, S, P));
    }
}

#define POOL(T, SUF) \
extern "C" __global__ void max_pool_forward_##SUF(const T* x, T* y, unsigned char* arg, u32 NC, u32 H, u32 W, \
    u32 OH, u32 OW, u32 K, u32 S, u32 P) { forward(x, y, arg, NC, H, W, OH, OW, K, S, P); } \
extern "C" __global__ void max_pool_backward_##SUF(const T* dy, const unsigned char* arg, T* dx, u32 NC, u32 H, \
    u32 W, u32 OH, u32 OW, u32 K, u32 S, u32 P) { backward(dy, arg, dx, NC, H, W, OH, OW, K, S, P); } \
extern "C" __global__ void max_pool_cl_forward_##SUF(const T* x, T* y, unsigned char* arg, u32 N, u32 C, u32 H, \
    u32 W, u32 OH, u32 OW, u32 K, u32 S, u32 P) { forward_cl(x, y, arg, N, C, H, W, OH, OW, K, S, P); } \
extern "C" __global__ void max_pool_cl_backward_##SUF(const T* dy, const unsigned char* arg, T* dx, u32 N, u32 C, \
    u32 H, u32 W, u32 OH, u32 OW, u32 K, u32 S, u32 P) { backward_cl(dy, arg, dx, N, C, H, W, OH, OW, K, S, P); }
POOL(float, f32)
POOL(bf16, bf16)
"#;

/// The module name of [`SOURCE`].
pub(super) const MODULE: &str = "sweep_max_pool";

/// Kernel `base` for `dtype`.
fn kernel(dev: &CudaDevice, base: &str, dtype: DType) -> Result<cudarc::driver::CudaFunction> {
    typed_function(dev, (MODULE, SOURCE), base, dtype)
}

/// Each window's maximum's offset, from the forward pass to the backward.
type Argmax = Arc<Mutex<Option<CudaSlice<u8>>>>;

/// The pooling geometry as the kernels take it: kernel, stride, padding.
fn geometry(p: PoolParams) -> Result<[u32; 3]> {
    if p.kernel == 0 || p.kernel * p.kernel > 256 || p.stride == 0 {
        bail!("max_pool2d: kernel {} stride {} not supported by the CUDA kernels", p.kernel, p.stride);
    }
    Ok([p.kernel as u32, p.stride as u32, p.padding as u32])
}

struct MaxPool {
    p: PoolParams,
    out: (usize, usize),
    argmax: Argmax,
    /// Channels-last input and output ((N, H, W, C) storage).
    nhwc: bool,
}

/// (N, C, H, W) of an input stored NCHW or, `nhwc`, (N, H, W, C).
fn nchw(shape: &Shape, nhwc: bool) -> Result<[u32; 4]> {
    let [a, b, c, d] = dims4_u32(shape, "max_pool2d")?;
    Ok(if nhwc { [a, d, b, c] } else { [a, b, c, d] })
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "sweep-cuda-max-pool2d"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        match xs.dtype() {
            DType::F32 => self.forward::<f32>(xs, xl),
            DType::BF16 => self.forward::<half::bf16>(xs, xl),
            other => bail!("{}: no CUDA kernel for {other:?}", self.name()),
        }
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = MaxPoolBackward { p: self.p, argmax: self.argmax.clone(), nhwc: self.nhwc };
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &back)?))
    }
}

impl MaxPool {
    #[allow(unsafe_code)] // a kernel launch and uninitialised outputs: see the SAFETY comments
    fn forward<T: Elem>(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let [n, c, h, w] = nchw(xl.shape(), self.nhwc)?;
        let (oh, ow) = (self.out.0 as u32, self.out.1 as u32);
        let [k, s, p] = geometry(self.p)?;
        let x = view::<T>(xs, xl, "max_pool2d")?;
        if x.len() >= 1 << 32 {
            bail!("max_pool2d: {} elements, more than the CUDA kernels index", x.len());
        }
        // below 2^32 elements in all, so N * C fits
        let (nc, outs) = (n * c, (n * c) as usize * (oh * ow) as usize);
        // SAFETY: the kernel writes every output and every offset.
        let (mut y, mut arg) = unsafe { (dev.alloc::<T>(outs)?, dev.alloc::<u8>(outs)?) };
        let stream = dev.cuda_stream();
        if self.nhwc {
            let f = kernel(&dev, "max_pool_cl_forward", T::DTYPE)?;
            let mut b = stream.launch_builder(&f);
            b.arg(&x).arg(&mut y).arg(&mut arg).arg(&n).arg(&c).arg(&h).arg(&w).arg(&oh).arg(&ow);
            b.arg(&k).arg(&s).arg(&p);
            // SAFETY: the arguments of max_pool_cl_forward in its order; x has
            // N*H*W*C elements, y and arg N*OH*OW*C; the window stays within each image.
            unsafe { launch(b, elementwise_config(outs)) }?;
        } else {
            let f = kernel(&dev, "max_pool_forward", T::DTYPE)?;
            let mut b = stream.launch_builder(&f);
            b.arg(&x).arg(&mut y).arg(&mut arg).arg(&nc).arg(&h).arg(&w).arg(&oh).arg(&ow).arg(&k).arg(&s).arg(&p);
            // SAFETY: the arguments of max_pool_forward in its order; x has NC*H*W
            // elements, y and arg NC*OH*OW; the window stays within each plane.
            unsafe { launch(b, elementwise_config(outs)) }?;
        }
        *self.argmax.lock().expect("max-pool lock") = Some(arg);
        let (n, c, oh, ow) = (n as usize, c as usize, oh as usize, ow as usize);
        let shape = Shape::from(if self.nhwc { vec![n, oh, ow, c] } else { vec![n, c, oh, ow] });
        Ok((CudaStorage::wrap_cuda_slice(y, dev), shape))
    }
}

/// (x, dy) -> dx (x gives the input's shape).
struct MaxPoolBackward {
    p: PoolParams,
    argmax: Argmax,
    nhwc: bool,
}

impl CustomOp2 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "sweep-cuda-max-pool2d-backward"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, dys: &CudaStorage, dyl: &Layout) -> Result<(CudaStorage, Shape)> {
        match dys.dtype() {
            DType::F32 => self.backward::<f32>(xs, xl, dys, dyl),
            DType::BF16 => self.backward::<half::bf16>(xs, xl, dys, dyl),
            other => bail!("{}: no CUDA kernel for {other:?}", self.name()),
        }
    }
}

impl MaxPoolBackward {
    #[allow(unsafe_code)] // a kernel launch and an uninitialised output: see the SAFETY comments
    fn backward<T: Elem>(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        dys: &CudaStorage,
        dyl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let [n, c, h, w] = nchw(xl.shape(), self.nhwc)?;
        let [_, _, oh, ow] = nchw(dyl.shape(), self.nhwc)?;
        let [k, s, p] = geometry(self.p)?;
        let dy = view::<T>(dys, dyl, "max_pool2d")?;
        let argmax = self.argmax.lock().expect("max-pool lock");
        let Some(arg) = argmax.as_ref() else { bail!("{}: no saved maxima", "max_pool2d backward") };
        let ins = n as usize * c as usize * (h * w) as usize;
        if ins >= 1 << 32 {
            bail!("max_pool2d: {ins} elements, more than the CUDA kernels index");
        }
        let nc = n * c;
        if arg.len() != dy.len() || dy.len() != nc as usize * (oh * ow) as usize {
            bail!("max_pool2d backward: {} gradients, {} saved maxima", dy.len(), arg.len());
        }
        // SAFETY: the kernel writes every element of dx.
        let mut dx = unsafe { dev.alloc::<T>(ins) }?;
        let stream = dev.cuda_stream();
        if self.nhwc {
            let f = kernel(&dev, "max_pool_cl_backward", T::DTYPE)?;
            let mut b = stream.launch_builder(&f);
            b.arg(&dy).arg(arg).arg(&mut dx).arg(&n).arg(&c).arg(&h).arg(&w).arg(&oh).arg(&ow);
            b.arg(&k).arg(&s).arg(&p);
            // SAFETY: the arguments of max_pool_cl_backward in its order; dy and arg
            // have N*OH*OW*C elements, dx N*H*W*C.
            unsafe { launch(b, elementwise_config(ins)) }?;
            return Ok((CudaStorage::wrap_cuda_slice(dx, dev), xl.shape().clone()));
        }
        let f = kernel(&dev, "max_pool_backward", T::DTYPE)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&dy).arg(arg).arg(&mut dx).arg(&nc).arg(&h).arg(&w).arg(&oh).arg(&ow).arg(&k).arg(&s).arg(&p);
        // SAFETY: the arguments of max_pool_backward in its order; dy and arg have
        // NC*OH*OW elements, dx NC*H*W.
        unsafe { launch(b, elementwise_config(ins)) }?;
        Ok((CudaStorage::wrap_cuda_slice(dx, dev), xl.shape().clone()))
    }
}

/// Max-pool of f32 or bf16 `xs` (N, C, H, W) on CUDA to (N, C, `out`); a
/// channels-last input under the `cudnn-nhwc` kernel set gives a
/// channels-last output.
pub(super) fn max_pool2d(xs: &Tensor, p: PoolParams, out: (usize, usize)) -> Result<Tensor> {
    let argmax = Arc::new(Mutex::new(None));
    super::layout::apply_in_layout(xs, |x, nhwc| x.apply_op1(MaxPool { p, out, argmax, nhwc }))
}

#[cfg(test)]
mod tests {

    /// NVRTC compiles the kernels.
    #[test]
    fn the_kernels_compile() {
        super::super::cuda::assert_compiles(
            super::SOURCE,
            &[
                "max_pool_forward_f32",
                "max_pool_forward_bf16",
                "max_pool_backward_f32",
                "max_pool_backward_bf16",
                "max_pool_cl_forward_bf16",
                "max_pool_cl_backward_f32",
            ],
        );
    }
}
