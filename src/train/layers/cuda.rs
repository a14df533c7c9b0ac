//! What the CUDA ops of the `cudnn` kernel set share: their element types,
//! views of candle's storage, CUDA and cuDNN errors as candle's, and our own
//! kernels' compilation: each op file has its CUDA C source, which NVRTC
//! compiles (after [`PRELUDE`]) when one of its kernels is first used, once
//! per process (a thread started when the device is opened does it for all,
//! [`prewarm`]); no CUDA headers are needed, so the binary runs where only
//! the driver and the NVRTC library are installed.

use candle_core::cuda::cudarc;
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{bail, Layout, Result, Shape, Storage, Tensor};
use cudarc::driver::{CudaView, LaunchArgs, LaunchConfig};
use std::collections::HashMap;
use std::sync::Mutex;

/// Helpers every kernel source may use: bf16 as its 16 bits (widened to f32
/// exactly; narrowed with round-to-nearest-even, NaN kept NaN, as
/// `__float2bfloat16`), typed loads and stores through f32, and `EACH`, a
/// grid-stride loop over `i < n`.
pub(super) const PRELUDE: &str = r"
typedef unsigned short bf16;
typedef unsigned long long u64;
typedef unsigned int u32;

__device__ __forceinline__ float widen(bf16 v) { return __uint_as_float(((unsigned int)v) << 16); }
__device__ __forceinline__ bf16 narrow(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}
__device__ __forceinline__ float load(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, u64 i) { return widen(p[i]); }
__device__ __forceinline__ void store(float* p, u64 i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16* p, u64 i, float v) { p[i] = narrow(v); }

#define EACH for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
";

/// Kernel `name` of the module `module` whose source is `source` (compiled
/// with [`PRELUDE`] the first time any kernel of it is asked for). The
/// functions are kept per thread and device: a launch looks its kernel up in
/// a map, without a driver call.
pub(super) fn function(
    dev: &CudaDevice,
    module: &'static str,
    source: &'static str,
    name: &str,
) -> Result<cudarc::driver::CudaFunction> {
    type Functions =
        HashMap<(candle_core::cuda::DeviceId, &'static str), HashMap<String, cudarc::driver::CudaFunction>>;
    thread_local! {
        static FUNCTIONS: std::cell::RefCell<Functions> = std::cell::RefCell::new(HashMap::new());
    }
    if let Some(f) = FUNCTIONS.with(|fs| fs.borrow().get(&(dev.id(), module)).and_then(|m| m.get(name)).cloned()) {
        return Ok(f);
    }
    static PTX: Mutex<Option<HashMap<&'static str, std::result::Result<String, String>>>> = Mutex::new(None);
    let ptx = {
        let mut cache = PTX.lock().expect("ptx cache lock");
        let compiled = cache.get_or_insert_with(HashMap::new).entry(module).or_insert_with(|| {
            cudarc::nvrtc::compile_ptx(format!("{PRELUDE}{source}"))
                .map(|p| p.to_src())
                .map_err(|e| format!("NVRTC: {e:?}"))
        });
        match compiled {
            Ok(p) => p.clone(),
            Err(e) => bail!("sweep's CUDA kernels `{module}` did not compile: {e}"),
        }
    };
    let f = dev.get_or_load_custom_func(name, module, &ptx)?.into_cuda_function();
    FUNCTIONS.with(|fs| fs.borrow_mut().entry((dev.id(), module)).or_default().insert(name.to_owned(), f.clone()));
    Ok(f)
}

/// Every module of our kernels, with one kernel of each.
pub(super) const MODULES: [(&str, &str, &str); 7] = [
    (super::bn_cuda::MODULE, super::bn_cuda::SOURCE, "bn_stats_bf16"),
    (super::pool_cuda::MODULE, super::pool_cuda::SOURCE, "max_pool_forward_bf16"),
    (super::relu_cuda::MODULE, super::relu_cuda::SOURCE, "relu_fwd_bf16"),
    (super::optim_cuda::MODULE, super::optim_cuda::SOURCE, "sgd_all"),
    (super::krsc_cuda::MODULE, super::krsc_cuda::SOURCE, "to_krsc_bf16"),
    (super::ce_cuda::MODULE, super::ce_cuda::SOURCE, "ce_loss"),
    (super::pixels_cuda::MODULE, super::pixels_cuda::SOURCE, "resident_batch"),
];

/// Compiles (NVRTC) and loads onto `device` every module of our kernels on a
/// thread of its own, so that the first training step does not wait for
/// them (about half a second of NVRTC on a laptop-class core, plus the
/// driver's PTX compilation): started when the device is opened, while the
/// data and the model are prepared. A module that fails here fails again,
/// with its error, where it is first used.
pub(crate) fn prewarm(device: &candle_core::Device) {
    let Ok(dev) = device.as_cuda_device().cloned() else { return };
    let spawned = std::thread::Builder::new().name("sweep-kernels".into()).spawn(move || {
        for (module, source, kernel) in MODULES {
            if let Err(e) = function(&dev, module, source, kernel) {
                tracing::debug!("prewarming the CUDA kernels `{module}`: {e}");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::debug!("prewarming the CUDA kernels: {e}");
    }
}

/// Kernel `{base}_f32` or `{base}_bf16` of a module, for data of `dtype`
/// (the kernel sources instantiate each template for both).
pub(super) fn typed_function(
    dev: &CudaDevice,
    (module, source): (&'static str, &'static str),
    base: &str,
    dtype: candle_core::DType,
) -> Result<cudarc::driver::CudaFunction> {
    let suffix = match dtype {
        candle_core::DType::F32 => "f32",
        candle_core::DType::BF16 => "bf16",
        other => bail!("{base}: no CUDA kernel for {other:?}"),
    };
    function(dev, module, source, &format!("{base}_{suffix}"))
}

/// The launch shape of an elementwise kernel over `n` elements (each thread
/// takes about four, through `EACH`).
pub(super) fn elementwise_config(n: usize) -> LaunchConfig {
    LaunchConfig::for_num_elems(u32::try_from(n.div_ceil(4).max(1)).unwrap_or(u32::MAX))
}

/// Launches a kernel with the arguments pushed on `b`.
///
/// # Safety
/// The arguments must be those the kernel takes, in its order and types, and
/// the kernel must touch no element outside the buffers passed.
#[allow(unsafe_code)]
pub(super) unsafe fn launch(mut b: LaunchArgs<'_>, cfg: LaunchConfig) -> Result<()> {
    // SAFETY: the caller's promise.
    unsafe { b.launch(cfg) }.map_err(|e| candle_core::Error::Cuda(Box::new(e)).bt())?;
    Ok(())
}

/// The dims of a 4-D shape, each below 2^31 (the kernels index with u32 per
/// plane and u64 overall).
pub(super) fn dims4_u32(s: &Shape, what: &str) -> Result<[u32; 4]> {
    let (a, b, c, d) = s.dims4()?;
    let v = |x: usize| u32::try_from(x).ok().filter(|&x| x < 1 << 31);
    match (v(a), v(b), v(c), v(d), v(a * c * d)) {
        (Some(a), Some(b), Some(c), Some(d), Some(_)) => Ok([a, b, c, d]),
        _ => bail!("{what}: shape {:?} too large for the CUDA kernels", s.dims()),
    }
}

/// The device address of the first element of a contiguous CUDA tensor of
/// `T`, with its storage read-locked while the guard lives: for kernels that
/// read or update in place a tensor that is not one of a candle op's
/// operands (a layer's running statistics, the optimiser's state). All of a
/// device's work goes to one stream, so stream order orders those accesses.
pub(super) fn address<T: CudaDType>(t: &Tensor) -> Result<(impl Sized + '_, u64)> {
    use candle_core::backend::BackendStorage;
    use cudarc::driver::DevicePtr;
    let (guard, layout) = t.storage_and_layout();
    let Some((start, _)) = layout.contiguous_offsets() else { bail!("a non-contiguous tensor for a CUDA kernel") };
    let address = match &*guard {
        Storage::Cuda(cs) => {
            let slice = cs.as_cuda_slice::<T>()?;
            let stream = cs.device().cuda_stream();
            let (ptr, _sync) = slice.device_ptr(&stream);
            ptr + (start * std::mem::size_of::<T>()) as u64
        }
        _ => bail!("a tensor not on the GPU for a CUDA kernel"),
    };
    Ok((guard, address))
}

/// The element types of the CUDA ops' data (their parameters stay f32).
pub(super) trait Elem:
    cudarc::cudnn::CudnnDataType + cudarc::driver::DeviceRepr + candle_core::WithDType + CudaDType + 'static
{
}
impl Elem for f32 {}
impl Elem for half::bf16 {}

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

/// Asserts that NVRTC compiles `source` after [`PRELUDE`] and that each of
/// `kernels` is in the PTX (no GPU needed, only the library, which the CUDA
/// build links): each kernel file's test.
#[cfg(test)]
pub(super) fn assert_compiles(source: &str, kernels: &[&str]) {
    let ptx = cudarc::nvrtc::compile_ptx(format!("{PRELUDE}{source}")).unwrap_or_else(|e| panic!("NVRTC: {e:?}"));
    let src = ptx.to_src();
    for k in kernels {
        assert!(src.contains(k), "{k} missing from the PTX");
    }
}

#[cfg(test)]
mod tests {
    /// Each module the prewarm thread compiles has the kernel it names (NVRTC, no GPU).
    #[test]
    fn every_module_compiles_with_the_kernel_named() {
        for (module, source, kernel) in super::MODULES {
            let ptx = candle_core::cuda::cudarc::nvrtc::compile_ptx(format!("{}{source}", super::PRELUDE))
                .unwrap_or_else(|e| panic!("{module}: {e:?}"));
            assert!(ptx.to_src().contains(kernel), "{module}: no {kernel}");
        }
    }
}
