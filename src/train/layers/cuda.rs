//! What the raw cuDNN ops share (`bn_cudnn.rs`, `pool_cudnn.rs`): one cuDNN
//! handle per device and thread on candle's stream, so the calls are ordered
//! with candle's kernels, and the f32 NCHW tensor and pooling descriptors,
//! made once per shape and kept for the process.

use super::pool::PoolParams;
use candle_core::cuda::cudarc;
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{bail, Layout, Result, Shape};
use cudarc::cudnn::result as cr;
use cudarc::cudnn::sys;
use cudarc::driver::CudaView;
use std::cell::RefCell;
use std::collections::HashMap;

/// A raw cuDNN handle, destroyed with its thread.
struct Handle(sys::cudnnHandle_t);

impl Drop for Handle {
    #[allow(unsafe_code)] // cuDNN's destructor: see the SAFETY comment
    fn drop(&mut self) {
        // SAFETY: the handle was created by `with_cudnn` and is destroyed once.
        let _ = unsafe { cr::destroy_handle(self.0) };
    }
}

/// A 4-D f32 NCHW tensor descriptor.
pub(super) struct Desc(pub(super) sys::cudnnTensorDescriptor_t);

impl Desc {
    #[allow(unsafe_code)] // cuDNN's setter: see the SAFETY comment
    fn new(dims: [i32; 4]) -> Result<Desc> {
        let d = Desc(cr::create_tensor_descriptor().cu()?);
        // SAFETY: a freshly created descriptor, set once.
        unsafe {
            cr::set_tensor4d_descriptor(
                d.0,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                dims,
            )
        }
        .cu()?;
        Ok(d)
    }
}

impl Drop for Desc {
    #[allow(unsafe_code)] // cuDNN's destructor: see the SAFETY comment
    fn drop(&mut self) {
        // SAFETY: created by `Desc::new`, destroyed once.
        let _ = unsafe { cr::destroy_tensor_descriptor(self.0) };
    }
}

/// A 2-D max-pooling descriptor (gradient to the maximum, NaN propagated).
pub(super) struct PoolDesc(pub(super) sys::cudnnPoolingDescriptor_t);

impl PoolDesc {
    #[allow(unsafe_code)] // cuDNN's setter: see the SAFETY comment
    fn new(p: PoolParams) -> Result<PoolDesc> {
        let d = PoolDesc(cr::create_pooling_descriptor().cu()?);
        let (k, pad, s) = (int(p.kernel, "max_pool2d")?, int(p.padding, "max_pool2d")?, int(p.stride, "max_pool2d")?);
        // SAFETY: a freshly created descriptor, set once, with 2 dims in each array.
        unsafe {
            cr::set_pooling_descriptor(
                d.0,
                sys::cudnnPoolingMode_t::CUDNN_POOLING_MAX_DETERMINISTIC,
                sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                2,
                &[k, k],
                &[pad, pad],
                &[s, s],
            )
        }
        .cu()?;
        Ok(d)
    }
}

impl Drop for PoolDesc {
    #[allow(unsafe_code)] // cuDNN's destructor: see the SAFETY comment
    fn drop(&mut self) {
        // SAFETY: created by `PoolDesc::new`, destroyed once.
        let _ = unsafe { sys::cudnnDestroyPoolingDescriptor(self.0) };
    }
}

/// One device's handle and descriptors on this thread.
pub(super) struct Cudnn {
    handle: Handle,
    tensors: HashMap<[i32; 4], Desc>,
    pools: HashMap<PoolParams, PoolDesc>,
}

impl Cudnn {
    /// The raw handle.
    pub(super) fn handle(&self) -> sys::cudnnHandle_t {
        self.handle.0
    }

    /// Makes sure the descriptors of these dims exist (then [`Cudnn::tensor`] finds them).
    pub(super) fn prepare(&mut self, dims: &[[i32; 4]]) -> Result<()> {
        for d in dims {
            if let std::collections::hash_map::Entry::Vacant(e) = self.tensors.entry(*d) {
                e.insert(Desc::new(*d)?);
            }
        }
        Ok(())
    }

    /// The descriptor of `dims` (made by [`Cudnn::prepare`]).
    pub(super) fn tensor(&self, dims: [i32; 4]) -> sys::cudnnTensorDescriptor_t {
        self.tensors[&dims].0
    }

    /// The max-pooling descriptor of `p`.
    pub(super) fn pool(&mut self, p: PoolParams) -> Result<sys::cudnnPoolingDescriptor_t> {
        let d = match self.pools.entry(p) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(PoolDesc::new(p)?),
        };
        Ok(d.0)
    }
}

thread_local! {
    static STATES: RefCell<HashMap<candle_core::cuda::DeviceId, Cudnn>> = RefCell::new(HashMap::new());
}

/// Runs `f` with this thread's cuDNN state of `dev` (made on first use).
#[allow(unsafe_code)] // binding the handle to candle's stream: see the SAFETY comment
pub(super) fn with_cudnn<R>(dev: &CudaDevice, f: impl FnOnce(&mut Cudnn) -> Result<R>) -> Result<R> {
    STATES.with(|states| {
        let mut states = states.borrow_mut();
        let state = match states.entry(dev.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let stream = dev.cuda_stream();
                stream.context().bind_to_thread().cu()?;
                let handle = Handle(cr::create_handle().cu()?);
                // SAFETY: the stream outlives the handle (candle's device keeps it for the process).
                unsafe { cr::set_stream(handle.0, stream.cu_stream().cast()) }.cu()?;
                e.insert(Cudnn { handle, tensors: HashMap::new(), pools: HashMap::new() })
            }
        };
        f(state)
    })
}

/// cuDNN's and the CUDA driver's errors as candle's CUDA errors (not
/// candle's opaque `Wrapped`), so that a failed allocation inside them is
/// recognised as the GPU running out of memory (`train::device`).
pub(crate) trait OrCuda<T> {
    /// The error as `candle_core::Error::Cuda`.
    fn cu(self) -> Result<T>;
}

impl<T> OrCuda<T> for std::result::Result<T, cudarc::cudnn::CudnnError> {
    fn cu(self) -> Result<T> {
        self.map_err(|e| candle_core::Error::Cuda(Box::new(e)).bt())
    }
}

impl<T> OrCuda<T> for std::result::Result<T, cudarc::driver::DriverError> {
    fn cu(self) -> Result<T> {
        self.map_err(|e| candle_core::Error::Cuda(Box::new(e)).bt())
    }
}

/// A size as cuDNN's int (`what` names the op in the error).
pub(super) fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what}: dimension {v} too large")))
}

/// The dims of a 4-D shape as cuDNN's ints.
pub(super) fn dims4(s: &Shape, what: &str) -> Result<[i32; 4]> {
    let (a, b, c, d) = s.dims4()?;
    Ok([int(a, what)?, int(b, what)?, int(c, what)?, int(d, what)?])
}

/// The elements of a contiguous CUDA storage.
pub(super) fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else { bail!("{what}: non-contiguous input") };
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}
