//! 2-D convolution on CUDA through cuDNN: forward, backward data and backward
//! filter, each a candle custom op (f32 and bf16; NCHW, or with the
//! `cudnn-nhwc` kernel set channels-last: NHWC activations and KRSC filters,
//! `layout.rs`).
//!
//! One cuDNN handle per device and thread, bound to candle's stream, so the
//! calls are ordered with candle's own kernels. Per shape (input, kernel,
//! padding, stride, dtype, math mode) the descriptors and the three algorithms
//! (cuDNN's heuristics, asked once; an algorithm that wants more than 256 MiB
//! of workspace is replaced by an implicit-GEMM one) are kept for the process,
//! and one workspace per device grows to the largest any algorithm asked for:
//! no allocation or algorithm search per call.
//!
//! Math: f32 without TensorFloat-32 unless candle's reduced-precision f32
//! switch is on (the `tf32` precision), bf16 data with f32 accumulation on
//! tensor cores.

use super::conv::ConvParams;
use super::cuda::{dims4, view, Elem, OrCuda};
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc;
use candle_core::cuda::{CudaDevice, CudaStorage};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use cudarc::cudnn::sys::{cudnnConvolutionMode_t, cudnnMathType_t, cudnnTensorFormat_t};
use cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor, TensorDescriptor,
};
use cudarc::driver::CudaSlice;
use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// A shape's identity: input and kernel dims (logical: NCHW and KCRS),
/// padding, stride, dtype, tf32, layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    x: [i32; 4],
    w: [i32; 4],
    p: ConvParams,
    dtype: DType,
    tf32: bool,
    nhwc: bool,
}

/// The logical (N, C, H, W) dims of a tensor of `physical` dims: the same,
/// or, channels-last, (N, H, W, C) reordered.
fn logical(physical: [i32; 4], nhwc: bool) -> [i32; 4] {
    let [a, b, c, d] = physical;
    if nhwc {
        [a, d, b, c]
    } else {
        physical
    }
}

/// The physical dims of logical (N, C, H, W) dims (see [`logical`]).
fn physical(logical: [i32; 4], nhwc: bool) -> [i32; 4] {
    let [a, b, c, d] = logical;
    if nhwc {
        [a, c, d, b]
    } else {
        logical
    }
}

impl Key {
    fn y(&self) -> [i32; 4] {
        let out = |i: i32| (i + 2 * self.p.padding as i32 - self.w[2]) / self.p.stride as i32 + 1;
        [self.x[0], self.w[0], out(self.x[2]), out(self.x[3])]
    }
}

/// Descriptors and algorithms (with their workspace sizes) of one shape.
struct Plan<T> {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
    fwd: Option<(cudarc::cudnn::sys::cudnnConvolutionFwdAlgo_t, usize)>,
    bwd_data: Option<(cudarc::cudnn::sys::cudnnConvolutionBwdDataAlgo_t, usize)>,
    bwd_filter: Option<(cudarc::cudnn::sys::cudnnConvolutionBwdFilterAlgo_t, usize)>,
}

/// One device's cuDNN state on this thread.
struct State {
    handle: Arc<Cudnn>,
    workspace: Option<CudaSlice<u8>>,
    plans: HashMap<Key, Box<dyn Any>>,
}

thread_local! {
    static STATES: RefCell<HashMap<candle_core::cuda::DeviceId, State>> = RefCell::new(HashMap::new());
}

fn count(d: [i32; 4]) -> usize {
    d.iter().map(|&v| v as usize).product()
}

fn new_plan<T: Elem>(h: &Arc<Cudnn>, key: &Key) -> Result<Plan<T>> {
    let (p, s) = (key.p.padding as i32, key.p.stride as i32);
    let mut conv =
        h.create_conv2d::<f32>([p, p], [s, s], [1, 1], cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION).cu()?;
    let math = match (key.dtype, key.tf32) {
        (DType::F32, false) => cudnnMathType_t::CUDNN_FMA_MATH,
        (DType::F32, true) => cudnnMathType_t::CUDNN_DEFAULT_MATH,
        _ => cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
    };
    conv.set_math_type(math).cu()?;
    // The format names the memory order of the logical NCHW / KCRS dims.
    let format = if key.nhwc { cudnnTensorFormat_t::CUDNN_TENSOR_NHWC } else { cudnnTensorFormat_t::CUDNN_TENSOR_NCHW };
    Ok(Plan {
        conv,
        x: h.create_4d_tensor::<T>(format, key.x).cu()?,
        w: h.create_4d_filter::<T>(format, key.w).cu()?,
        y: h.create_4d_tensor::<T>(format, key.y()).cu()?,
        fwd: None,
        bwd_data: None,
        bwd_filter: None,
    })
}

/// Runs `f` with this device's handle, the plan of `key` and the workspace
/// (grown by `f`'s request through [`grow`]).
fn with_plan<T: Elem, R>(
    dev: &CudaDevice,
    key: Key,
    f: impl FnOnce(&mut Plan<T>, &mut Option<CudaSlice<u8>>) -> Result<R>,
) -> Result<R> {
    STATES.with(|states| {
        let mut states = states.borrow_mut();
        let state = match states.entry(dev.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(State { handle: Cudnn::new(dev.cuda_stream()).cu()?, workspace: None, plans: HashMap::new() })
            }
        };
        if !state.plans.contains_key(&key) {
            let plan = new_plan::<T>(&state.handle, &key)?;
            state.plans.insert(key, Box::new(plan));
        }
        let Some(plan) = state.plans.get_mut(&key).and_then(|p| p.downcast_mut::<Plan<T>>()) else {
            bail!("conv2d: cuDNN plan of another dtype")
        };
        f(plan, &mut state.workspace)
    })
}

/// The most workspace one algorithm may take (cuDNN's heuristics sometimes
/// rank first an FFT or Winograd algorithm that asks for gigabytes; the
/// workspace is kept for the process).
const WORKSPACE_CAP: usize = 256 << 20;

/// The algorithm in `slot` with its workspace size: the first time, cuDNN's
/// heuristics' first choice, or, where that needs more than
/// [`WORKSPACE_CAP`], the first of `fallbacks` that runs within it.
fn algorithm<A: Copy + std::fmt::Debug>(
    slot: &mut Option<(A, usize)>,
    pick: impl FnOnce() -> std::result::Result<A, cudarc::cudnn::CudnnError>,
    size: impl Fn(A) -> std::result::Result<usize, cudarc::cudnn::CudnnError>,
    fallbacks: &[A],
) -> Result<(A, usize)> {
    if let Some(a) = *slot {
        return Ok(a);
    }
    let first = pick().cu()?;
    let mut chosen = (first, size(first).cu()?);
    if chosen.1 > WORKSPACE_CAP {
        if let Some(a) = fallbacks.iter().find_map(|&a| size(a).ok().filter(|&b| b <= WORKSPACE_CAP).map(|b| (a, b))) {
            chosen = a;
        }
    }
    Ok(*slot.insert(chosen))
}

/// The workspace of this thread's cuDNN convolutions on every device, in
/// bytes, and each plan's algorithms with their workspace sizes (for the
/// memory figures of `examples/train_step.rs`).
pub fn workspace_report() -> (usize, Vec<String>) {
    STATES.with(|states| {
        let states = states.borrow();
        let bytes = states.values().filter_map(|s| s.workspace.as_ref().map(CudaSlice::len)).sum();
        let mut lines = Vec::new();
        for s in states.values() {
            for (k, p) in &s.plans {
                let line = |fwd: &dyn std::fmt::Debug, bd: &dyn std::fmt::Debug, bf: &dyn std::fmt::Debug| {
                    format!(
                        "x {:?} w {:?} s{} p{} {:?}{}: fwd {fwd:?} bwd_data {bd:?} bwd_filter {bf:?}",
                        k.x,
                        k.w,
                        k.p.stride,
                        k.p.padding,
                        k.dtype,
                        if k.nhwc { " NHWC" } else { "" }
                    )
                };
                if let Some(p) = p.downcast_ref::<Plan<f32>>() {
                    lines.push(line(&p.fwd, &p.bwd_data, &p.bwd_filter));
                } else if let Some(p) = p.downcast_ref::<Plan<half::bf16>>() {
                    lines.push(line(&p.fwd, &p.bwd_data, &p.bwd_filter));
                }
            }
        }
        lines.sort();
        (bytes, lines)
    })
}

/// The workspace, at least `bytes` long (none when no bytes are needed).
#[allow(unsafe_code)] // cuDNN calls and uninitialised device buffers: see the SAFETY comments
fn grow<'a>(
    dev: &CudaDevice,
    ws: &'a mut Option<CudaSlice<u8>>,
    bytes: usize,
) -> Result<Option<&'a mut CudaSlice<u8>>> {
    if bytes == 0 {
        return Ok(None);
    }
    if ws.as_ref().is_none_or(|w| w.len() < bytes) {
        *ws = None;
        // SAFETY: cuDNN uses the workspace as scratch and never reads what it did not write.
        *ws = Some(unsafe { dev.alloc::<u8>(bytes) }?);
    }
    Ok(ws.as_mut())
}

fn tf32() -> bool {
    candle_core::cuda::gemm_reduced_precision_f32()
}

/// Which of the three cuDNN calls an op makes (dims logical, NCHW / KCRS).
#[derive(Debug, Clone, Copy)]
enum Pass {
    /// (x, w) -> y.
    Forward,
    /// (dy, w) -> dx of input dims `x`.
    BackwardData { x: [i32; 4] },
    /// (x, dy) -> dw of kernel dims `w`.
    BackwardFilter { w: [i32; 4] },
}

#[allow(unsafe_code)] // cuDNN calls and uninitialised device buffers: see the SAFETY comments
fn run<T: Elem>(
    pass: Pass,
    p: ConvParams,
    nhwc: bool,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let (a, b) = (view::<T>(s1, l1, "conv2d")?, view::<T>(s2, l2, "conv2d")?);
    let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
    let key = |x, w| Key { x, w, p, dtype: T::DTYPE, tf32: tf32(), nhwc };
    // The operands' logical dims (the ops take and return physical tensors).
    let dims = |l: &Layout| -> Result<[i32; 4]> { Ok(logical(dims4(l.shape(), "conv2d")?, nhwc)) };
    let (out, dims_out) = match pass {
        Pass::Forward => {
            let key = key(dims(l1)?, dims(l2)?);
            let y_dims = key.y();
            // SAFETY: beta = 0, so cuDNN writes every element of y before anything reads it.
            let mut y = unsafe { dev.alloc::<T>(count(y_dims)) }?;
            with_plan::<T, _>(&dev, key, |plan, ws| {
                let op = ConvForward { conv: &plan.conv, x: &plan.x, w: &plan.w, y: &plan.y };
                use cudarc::cudnn::sys::cudnnConvolutionFwdAlgo_t as F;
                let (algo, bytes) = algorithm(
                    &mut plan.fwd,
                    || op.pick_algorithm(),
                    |a| op.get_workspace_size(a),
                    &[F::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, F::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM],
                )?;
                let ws = grow(&dev, ws, bytes)?;
                // SAFETY: the views and y have the dtype, dims and layout of the descriptors.
                unsafe { op.launch(algo, ws, (one, zero), &a, &b, &mut y) }.cu()?;
                Ok(())
            })?;
            (y, y_dims)
        }
        Pass::BackwardData { x } => {
            let key = key(x, dims(l2)?);
            // SAFETY: beta = 0: every element of dx is written.
            let mut dx = unsafe { dev.alloc::<T>(count(x)) }?;
            with_plan::<T, _>(&dev, key, |plan, ws| {
                let op = ConvBackwardData { conv: &plan.conv, dx: &plan.x, w: &plan.w, dy: &plan.y };
                use cudarc::cudnn::sys::cudnnConvolutionBwdDataAlgo_t as D;
                let (algo, bytes) = algorithm(
                    &mut plan.bwd_data,
                    || op.pick_algorithm(),
                    |a| op.get_workspace_size(a),
                    &[D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0],
                )?;
                let ws = grow(&dev, ws, bytes)?;
                // SAFETY: as above; a is dy (the y descriptor), b the kernel.
                unsafe { op.launch(algo, ws, (one, zero), &mut dx, &b, &a) }.cu()?;
                Ok(())
            })?;
            (dx, x)
        }
        Pass::BackwardFilter { w } => {
            let key = key(dims(l1)?, w);
            // SAFETY: beta = 0: every element of dw is written.
            let mut dw = unsafe { dev.alloc::<T>(count(w)) }?;
            with_plan::<T, _>(&dev, key, |plan, ws| {
                let op = ConvBackwardFilter { conv: &plan.conv, x: &plan.x, dw: &plan.w, dy: &plan.y };
                use cudarc::cudnn::sys::cudnnConvolutionBwdFilterAlgo_t as W;
                let (algo, bytes) = algorithm(
                    &mut plan.bwd_filter,
                    || op.pick_algorithm(),
                    |a| op.get_workspace_size(a),
                    &[W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0],
                )?;
                let ws = grow(&dev, ws, bytes)?;
                // SAFETY: as above; a is x, b is dy.
                unsafe { op.launch(algo, ws, (one, zero), &a, &mut dw, &b) }.cu()?;
                Ok(())
            })?;
            (dw, w)
        }
    };
    let shape = Shape::from(physical(dims_out, nhwc).map(|v| v as usize).to_vec());
    Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
}

/// One of the three passes as a candle op (the backward passes have no
/// backward of their own: second derivatives are not needed for training).
struct CudnnConv {
    pass: Pass,
    p: ConvParams,
    /// The operands and the result are channels-last: (N, H, W, C) and (K, R, S, C).
    nhwc: bool,
}

impl CustomOp2 for CudnnConv {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::Forward => "sweep-cudnn-conv2d",
            Pass::BackwardData { .. } => "sweep-cudnn-conv2d-backward-data",
            Pass::BackwardFilter { .. } => "sweep-cudnn-conv2d-backward-filter",
        }
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a cuDNN op on the CPU", self.name())
    }

    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        match s1.dtype() {
            DType::F32 => run::<f32>(self.pass, self.p, self.nhwc, s1, l1, s2, l2),
            DType::BF16 => run::<half::bf16>(self.pass, self.p, self.nhwc, s1, l1, s2, l2),
            other => bail!("{}: no cuDNN path for {other:?}", self.name()),
        }
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Pass::Forward = self.pass else { bail!("{}: no second derivative", self.name()) };
        let grad = grad.contiguous()?;
        let (p, nhwc) = (self.p, self.nhwc);
        let dx = if x.track_op() {
            let pass = Pass::BackwardData { x: logical(dims4(x.shape(), "conv2d")?, nhwc) };
            Some(grad.apply_op2_no_bwd(w, &CudnnConv { pass, p, nhwc })?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let pass = Pass::BackwardFilter { w: logical(dims4(w.shape(), "conv2d")?, nhwc) };
            Some(x.apply_op2_no_bwd(&grad, &CudnnConv { pass, p, nhwc })?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// The cuDNN convolution of `x` (N, C, H, W) and `w` (C_out, C, K, K), both
/// f32 or both bf16, on one CUDA device. With the `cudnn-nhwc` kernel set the
/// input is taken channels-last (a view when it is stored so, else one copy),
/// the weight as KRSC (one copy), and the result is an NCHW view of
/// channels-last storage (`layout.rs`).
pub(super) fn conv2d(x: &Tensor, w: &Tensor, p: ConvParams) -> Result<Tensor> {
    if super::kernels::channels_last(x.device()) {
        let (x, w) = (super::layout::to_nhwc(x)?, super::layout::to_nhwc(w)?);
        let y = x.apply_op2(&w, CudnnConv { pass: Pass::Forward, p, nhwc: true })?;
        return super::layout::from_nhwc(&y);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, CudnnConv { pass: Pass::Forward, p, nhwc: false })
}

/// A convolution layer's forward pass under the `cudnn-nhwc` kernel set: `x`
/// (N, C, H, W; cast to `compute` where it is not already) taken
/// channels-last, the f32 weight turned into the KRSC filter in `compute` by
/// one kernel (its gradient back to f32 KCRS by one more), the result an
/// NCHW view of channels-last storage.
pub(super) fn conv2d_channels_last(x: &Tensor, w: &Tensor, p: ConvParams, compute: DType) -> Result<Tensor> {
    // An NCHW input (the images) is cast and laid out channels-last by one strided cast.
    let x = match super::layout::stored_nhwc(x)? {
        Some(v) => v.to_dtype(compute)?,
        None if x.dtype() != compute => x.permute((0, 2, 3, 1))?.to_dtype(compute)?,
        None => super::layout::to_nhwc(x)?,
    };
    let w = super::krsc_cuda::to_krsc(w, compute)?;
    let y = x.apply_op2(&w, CudnnConv { pass: Pass::Forward, p, nhwc: true })?;
    super::layout::from_nhwc(&y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_last_dims_map_both_ways_and_give_the_output_shape() {
        // x (N, C, H, W) = (2, 3, 10, 12) stored (N, H, W, C)
        assert_eq!(logical([2, 10, 12, 3], true), [2, 3, 10, 12]);
        assert_eq!(physical([2, 3, 10, 12], true), [2, 10, 12, 3]);
        assert_eq!(logical([2, 3, 10, 12], false), [2, 3, 10, 12]);
        for d in [[1, 2, 3, 4], [50, 64, 56, 56]] {
            assert_eq!(physical(logical(d, true), true), d);
        }
        // A KRSC filter (64, 7, 7, 3) is the KCRS (64, 3, 7, 7) of the descriptor.
        assert_eq!(logical([64, 7, 7, 3], true), [64, 3, 7, 7]);
        let key = Key {
            x: [50, 3, 224, 224],
            w: [64, 3, 7, 7],
            p: ConvParams { padding: 3, stride: 2 },
            dtype: DType::BF16,
            tf32: false,
            nhwc: true,
        };
        assert_eq!(physical(key.y(), true), [50, 112, 112, 64]);
    }
}
