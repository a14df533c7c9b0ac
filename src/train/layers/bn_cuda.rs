//! BatchNorm's training pass on CUDA through cuDNN (f32, NCHW, per-channel
//! "spatial" mode): one kernel forward (batch statistics and the normalised,
//! scaled and shifted output) and one backward (the input, weight and bias
//! gradients from the statistics saved by the forward pass), instead of
//! about ten elementwise and reduction kernels each way.
//!
//! The op returns the batch mean and the inverse standard deviation beside
//! the output, so the layer updates its running statistics as PyTorch does
//! (momentum, unbiased variance) with tensor ops on C values.

use super::cudnn::{dims4, view, with_cudnn, OrCuda};
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc;
use candle_core::cuda::CudaStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use cudarc::cudnn::sys;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// The batch mean and inverse standard deviation saved by the forward pass.
type Saved = Arc<Mutex<Option<(CudaSlice<f32>, CudaSlice<f32>)>>>;

struct BnForward {
    eps: f64,
    saved: Saved,
}

impl CustomOp3 for BnForward {
    fn name(&self) -> &'static str {
        "sweep-cudnn-batch-norm"
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
        bail!("{}: a cuDNN op on the CPU", self.name())
    }

    #[allow(unsafe_code)] // cuDNN calls and uninitialised device buffers: see the SAFETY comments
    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let d = dims4(xl.shape(), "batch_norm")?;
        let (x, w, b) = (
            view::<f32>(xs, xl, "batch_norm")?,
            view::<f32>(ws, wl, "batch_norm")?,
            view::<f32>(bs, bl, "batch_norm")?,
        );
        let c = d[1] as usize;
        // SAFETY: cuDNN writes every element of the three outputs (beta = 0).
        let (mut y, mut mean, mut invstd) =
            unsafe { (dev.alloc::<f32>(x.len())?, dev.alloc::<f32>(c)?, dev.alloc::<f32>(c)?) };
        let stream = dev.cuda_stream();
        let cd = [1, d[1], 1, 1];
        with_cudnn(&dev, |cu| {
            cu.prepare(&[d, cd])?;
            let (h, xd, cd) = (cu.handle(), cu.tensor(d), cu.tensor(cd));
            let (one, zero) = (1f32, 0f32);
            let (xp, _r1) = x.device_ptr(&stream);
            let (wp, _r2) = w.device_ptr(&stream);
            let (bp, _r3) = b.device_ptr(&stream);
            let (yp, _r4) = y.device_ptr_mut(&stream);
            let (mp, _r5) = mean.device_ptr_mut(&stream);
            let (ip, _r6) = invstd.device_ptr_mut(&stream);
            // SAFETY: every pointer is a live f32 buffer of the size its descriptor gives;
            // the running statistics are not passed (null, factor 0): the layer updates them.
            unsafe {
                sys::cudnnBatchNormalizationForwardTraining(
                    h,
                    sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL,
                    std::ptr::from_ref(&one).cast(),
                    std::ptr::from_ref(&zero).cast(),
                    xd,
                    xp as *const c_void,
                    xd,
                    yp as *mut c_void,
                    cd,
                    wp as *const c_void,
                    bp as *const c_void,
                    0.0,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    self.eps,
                    mp as *mut c_void,
                    ip as *mut c_void,
                )
                .result()
                .cu()?;
            }
            Ok(())
        })?;
        *self.saved.lock().expect("batch norm lock") = Some((mean, invstd));
        Ok((CudaStorage::wrap_cuda_slice(y, dev), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = x.elem_count();
        let c = w.elem_count();
        let all =
            x.apply_op3_no_bwd(&grad.contiguous()?, w, &BnBackward { eps: self.eps, saved: self.saved.clone() })?;
        let dx = x.track_op().then(|| all.narrow(0, 0, n)?.reshape(x.shape())).transpose()?;
        let dw = w.track_op().then(|| all.narrow(0, n, c)).transpose()?;
        let db = b.track_op().then(|| all.narrow(0, n + c, c)).transpose()?;
        Ok((dx, dw, db))
    }
}

/// (x, dy, weight) -> one flat tensor: dx, then the weight and bias gradients.
struct BnBackward {
    eps: f64,
    saved: Saved,
}

impl CustomOp3 for BnBackward {
    fn name(&self) -> &'static str {
        "sweep-cudnn-batch-norm-backward"
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
        bail!("{}: a cuDNN op on the CPU", self.name())
    }

    #[allow(unsafe_code)] // cuDNN calls and uninitialised device buffers: see the SAFETY comments
    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        dys: &CudaStorage,
        dyl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let d = dims4(xl.shape(), "batch_norm")?;
        let (x, dy, w) = (
            view::<f32>(xs, xl, "batch_norm")?,
            view::<f32>(dys, dyl, "batch_norm")?,
            view::<f32>(ws, wl, "batch_norm")?,
        );
        let (n, c) = (x.len(), d[1] as usize);
        let saved = self.saved.lock().expect("batch norm lock");
        let Some((mean, invstd)) = saved.as_ref() else { bail!("{}: no saved statistics", self.name()) };
        // SAFETY: cuDNN writes dx and both parameter gradients entirely (beta = 0).
        let mut out = unsafe { dev.alloc::<f32>(n + 2 * c) }?;
        let stream = dev.cuda_stream();
        let cd = [1, d[1], 1, 1];
        with_cudnn(&dev, |cu| {
            cu.prepare(&[d, cd])?;
            let (h, xd, cd) = (cu.handle(), cu.tensor(d), cu.tensor(cd));
            let (one, zero) = (1f32, 0f32);
            let (xp, _r1) = x.device_ptr(&stream);
            let (dyp, _r2) = dy.device_ptr(&stream);
            let (wp, _r3) = w.device_ptr(&stream);
            let (mp, _r4) = mean.device_ptr(&stream);
            let (ip, _r5) = invstd.device_ptr(&stream);
            let (op, _r6) = out.device_ptr_mut(&stream);
            let f = std::mem::size_of::<f32>() as u64;
            // SAFETY: as in the forward pass; out holds n + 2c floats: dx, dweight, dbias.
            unsafe {
                sys::cudnnBatchNormalizationBackward(
                    h,
                    sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL,
                    std::ptr::from_ref(&one).cast(),
                    std::ptr::from_ref(&zero).cast(),
                    std::ptr::from_ref(&one).cast(),
                    std::ptr::from_ref(&zero).cast(),
                    xd,
                    xp as *const c_void,
                    xd,
                    dyp as *const c_void,
                    xd,
                    op as *mut c_void,
                    cd,
                    wp as *const c_void,
                    (op + n as u64 * f) as *mut c_void,
                    (op + (n + c) as u64 * f) as *mut c_void,
                    self.eps,
                    mp as *const c_void,
                    ip as *const c_void,
                )
                .result()
                .cu()?;
            }
            Ok(())
        })?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(n + 2 * c)))
    }
}

/// Reads one of the saved statistics (0: mean, 1: inverse std) as a tensor.
struct SavedStat {
    saved: Saved,
    which: usize,
}

impl CustomOp1 for SavedStat {
    fn name(&self) -> &'static str {
        "sweep-cudnn-batch-norm-stat"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a cuDNN op on the CPU", self.name())
    }

    fn cuda_fwd(&self, s: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        let saved = self.saved.lock().expect("batch norm lock");
        let Some(pair) = saved.as_ref() else { bail!("{}: no saved statistics", self.name()) };
        let src = if self.which == 0 { &pair.0 } else { &pair.1 };
        let dev = s.device().clone();
        let copy = dev.cuda_stream().clone_dtod(src).cu()?;
        Ok((CudaStorage::wrap_cuda_slice(copy, dev), Shape::from(src.len())))
    }
}

/// BatchNorm with batch statistics on CUDA: returns the output and the batch
/// mean and biased variance (per channel, detached), for contiguous-able f32
/// `x` (N, C, H, W), `weight` and `bias` (C).
pub fn batch_norm_train_cudnn(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let saved: Saved = Arc::new(Mutex::new(None));
    let y = x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        BnForward { eps, saved: saved.clone() },
    )?;
    let w = weight.detach();
    let mean = w.apply_op1_no_bwd(&SavedStat { saved: saved.clone(), which: 0 })?;
    let invstd = w.apply_op1_no_bwd(&SavedStat { saved, which: 1 })?;
    let var = (invstd.sqr()?.recip()? - eps)?;
    Ok((y, mean, var))
}
