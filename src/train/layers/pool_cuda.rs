//! Max-pooling on CUDA through cuDNN (f32, NCHW): one kernel forward and one
//! backward (the gradient to each window's maximum, as PyTorch), instead of
//! the generic path's padded copy and one strided view and maximum per
//! window offset, each with its own backward.
//!
//! cuDNN's deterministic max mode; padding never wins (as in PyTorch). With
//! equal maxima in a window cuDNN may pick another one than PyTorch's first;
//! in the zoo every max-pool follows a ReLU, where such ties are zeros whose
//! gradient the ReLU drops anyway.

use super::cudnn::{dims4, view, with_cudnn, OrCuda};
use super::pool::PoolParams;
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc;
use candle_core::cuda::CudaStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use cudarc::cudnn::sys;
use cudarc::driver::{DevicePtr, DevicePtrMut};
use std::ffi::c_void;

struct MaxPool {
    p: PoolParams,
    out: (usize, usize),
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "sweep-cudnn-max-pool2d"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a cuDNN op on the CPU", self.name())
    }

    #[allow(unsafe_code)] // a cuDNN call and an uninitialised output: see the SAFETY comments
    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let d = dims4(xl.shape(), "max_pool2d")?;
        let od = [d[0], d[1], self.out.0 as i32, self.out.1 as i32];
        let x = view::<f32>(xs, xl, "max_pool2d")?;
        // SAFETY: beta = 0: cuDNN writes every element of y.
        let mut y = unsafe { dev.alloc::<f32>(od.iter().map(|&v| v as usize).product()) }?;
        let stream = dev.cuda_stream();
        with_cudnn(&dev, |cu| {
            cu.prepare(&[d, od])?;
            let pool = cu.pool(self.p)?;
            let (one, zero) = (1f32, 0f32);
            let (xp, _r1) = x.device_ptr(&stream);
            let (yp, _r2) = y.device_ptr_mut(&stream);
            // SAFETY: x and y are live f32 buffers of the descriptors' sizes.
            unsafe {
                sys::cudnnPoolingForward(
                    cu.handle(),
                    pool,
                    std::ptr::from_ref(&one).cast(),
                    cu.tensor(d),
                    xp as *const c_void,
                    std::ptr::from_ref(&zero).cast(),
                    cu.tensor(od),
                    yp as *mut c_void,
                )
                .result()
                .cu()?;
            }
            Ok(())
        })?;
        let shape = Shape::from(od.map(|v| v as usize).to_vec());
        Ok((CudaStorage::wrap_cuda_slice(y, dev), shape))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(y, &grad.contiguous()?, &MaxPoolBackward { p: self.p })?))
    }
}

/// (x, y, dy) -> dx.
struct MaxPoolBackward {
    p: PoolParams,
}

impl CustomOp3 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "sweep-cudnn-max-pool2d-backward"
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

    #[allow(unsafe_code)] // a cuDNN call and an uninitialised output: see the SAFETY comments
    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ys: &CudaStorage,
        yl: &Layout,
        dys: &CudaStorage,
        dyl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let (d, od) = (dims4(xl.shape(), "max_pool2d")?, dims4(yl.shape(), "max_pool2d")?);
        let (x, y, dy) = (
            view::<f32>(xs, xl, "max_pool2d")?,
            view::<f32>(ys, yl, "max_pool2d")?,
            view::<f32>(dys, dyl, "max_pool2d")?,
        );
        // SAFETY: beta = 0: cuDNN writes every element of dx.
        let mut dx = unsafe { dev.alloc::<f32>(x.len()) }?;
        let stream = dev.cuda_stream();
        with_cudnn(&dev, |cu| {
            cu.prepare(&[d, od])?;
            let pool = cu.pool(self.p)?;
            let (one, zero) = (1f32, 0f32);
            let (xp, _r1) = x.device_ptr(&stream);
            let (yp, _r2) = y.device_ptr(&stream);
            let (dyp, _r3) = dy.device_ptr(&stream);
            let (dxp, _r4) = dx.device_ptr_mut(&stream);
            // SAFETY: every buffer is live, f32, of its descriptor's size.
            unsafe {
                sys::cudnnPoolingBackward(
                    cu.handle(),
                    pool,
                    std::ptr::from_ref(&one).cast(),
                    cu.tensor(od),
                    yp as *const c_void,
                    cu.tensor(od),
                    dyp as *const c_void,
                    cu.tensor(d),
                    xp as *const c_void,
                    std::ptr::from_ref(&zero).cast(),
                    cu.tensor(d),
                    dxp as *mut c_void,
                )
                .result()
                .cu()?;
            }
            Ok(())
        })?;
        Ok((CudaStorage::wrap_cuda_slice(dx, dev), xl.shape().clone()))
    }
}

/// cuDNN's max-pool of contiguous-able f32 `xs` (N, C, H, W) to (N, C, `out`).
pub(super) fn max_pool2d(xs: &Tensor, p: PoolParams, out: (usize, usize)) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(MaxPool { p, out })
}
