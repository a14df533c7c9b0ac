//! Where a run trains: choosing the device, describing it for the records,
//! the CUDA memory pool, peak memory, and out-of-memory errors.
//!
//! `auto` takes CUDA device 0 when this binary was built with the `cuda`
//! feature and a GPU answers, else the CPU, and says why. A run records its
//! device as one line (`cuda:0 (NVIDIA H100 80GB HBM3, CUDA 13.0, driver
//! 13.0)`, `cpu (AMD EPYC 7B13, 2 threads)`) and the peak memory it used: on a
//! GPU the device memory in use, sampled at the end of each epoch (with the
//! pool's release threshold raised, freed blocks stay in the pool, so that is
//! the pool's high-water mark, with no call added to the training step); on
//! the CPU the process's peak resident set (`VmHWM`, reset when the run starts).

use crate::spec::DeviceChoice;
use crate::train::layers::GpuKernels;
use candle_core::Device;

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// `cuda:N` was asked of a binary built without the `cuda` feature.
    #[error("device {0}: this binary was built without CUDA (rebuild with `--features cuda`)")]
    NoCuda(DeviceChoice),
    /// `SWEEP_GPU_KERNELS` names no kernel set this build has (checked
    /// before a GPU is opened, also for `auto`: a typo never means the CPU).
    #[error("device {0}: {1}")]
    Kernels(DeviceChoice, crate::train::layers::KernelsError),
    /// The GPU did not answer or could not be set up.
    #[error("device {choice}: {source}")]
    Open {
        /// What was asked for.
        choice: DeviceChoice,
        /// candle's (CUDA driver's) error.
        #[source]
        source: candle_core::Error,
    },
}

/// The device for `choice`, with its description.
///
/// # Errors
/// A GPU that this build cannot use or that does not answer.
pub fn select(choice: DeviceChoice) -> Result<(Device, String), DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::Cpu, describe_cpu())),
        DeviceChoice::Auto => {
            if !candle_core::utils::cuda_is_available() {
                tracing::info!("device {}, using the CPU", why_cpu());
                return Ok((Device::Cpu, describe_cpu()));
            }
            let kernels = GpuKernels::from_env().map_err(|e| DeviceError::Kernels(choice, e))?;
            match open_cuda(0, kernels) {
                Ok((d, text)) => {
                    tracing::info!("device auto: {text}");
                    Ok((d, text))
                }
                Err(e) => {
                    tracing::warn!("device auto: no usable GPU ({e}), using the CPU");
                    Ok((Device::Cpu, describe_cpu()))
                }
            }
        }
        DeviceChoice::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(DeviceError::NoCuda(choice));
            }
            let kernels = GpuKernels::from_env().map_err(|e| DeviceError::Kernels(choice, e))?;
            open_cuda(n, kernels).map_err(|source| DeviceError::Open { choice, source })
        }
    }
}

/// CUDA device `n`, set up (`prepare`), its layers given `kernels`, and described.
fn open_cuda(n: usize, kernels: GpuKernels) -> candle_core::Result<(Device, String)> {
    let d = Device::new_cuda(n)?;
    prepare(&d);
    crate::train::layers::set_gpu_kernels(kernels);
    #[cfg(feature = "cudnn")]
    if kernels != GpuKernels::Generic {
        crate::train::layers::prewarm(&d);
    }
    let text = format!("{}, {} kernels", describe(&d, &format!("cuda:{n}")), kernels.name());
    Ok((d, text))
}

/// How many CUDA devices this machine has (`sweep worker --gpus all`); 0
/// when this build has no CUDA or the driver does not answer.
pub fn cuda_device_count() -> usize {
    if !candle_core::utils::cuda_is_available() {
        return 0;
    }
    gpu::device_count()
}

/// Why `auto` chose the CPU, for the worker's first line.
pub fn why_cpu() -> &'static str {
    if candle_core::utils::cuda_is_available() {
        "auto: no usable GPU on this machine"
    } else {
        "auto: this binary was built without CUDA (`--features cuda`)"
    }
}

/// `cpu (MODEL, N threads)`.
pub fn describe_cpu() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            })
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    // The threads candle computes with (RAYON_NUM_THREADS, e.g. a share of the cores per worker
    // under `sweep worker --workers N`), else the cores this process may use.
    let threads = candle_core::utils::get_num_threads();
    format!("cpu ({model}, {threads} threads)")
}

/// `cuda:N (NAME, CUDA x.y, driver x.y)`.
fn describe(device: &Device, label: &str) -> String {
    match gpu::describe(device) {
        Some(text) => format!("{label} ({text})"),
        None => label.to_owned(),
    }
}

/// Per-device set-up: the memory pool keeps what it frees, and buffers are
/// made without cudarc's cross-stream events (sweep issues all of a device's
/// work on one stream, where they only cost four driver calls per buffer).
fn prepare(device: &Device) {
    if let Err(e) = gpu::keep_pool_memory(device) {
        tracing::warn!("could not raise the CUDA memory pool's release threshold: {e}");
    }
    gpu::single_stream(device);
}

/// The memory a run has used at most, in bytes, so far. On the CPU, the
/// process's peak resident set (reset when the run starts). On a GPU, the
/// most bytes the run's tensors (and cuDNN's workspace) held at once: the
/// CUDA memory pool's high-water mark, reset when the run starts, as
/// `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`; the
/// CUDA context and cuBLAS's workspace (about 0.7 GiB on an H200) are not in
/// it. The device's memory in use would count what the pool kept from the
/// worker's earlier runs and other processes on the GPU.
#[derive(Debug, Default, Clone, Copy)]
pub struct PeakMemory(u64);

impl PeakMemory {
    /// Starts measuring for a new run: on the CPU, resets the process's
    /// peak; on a GPU, hands the pool's unused memory (an earlier run's)
    /// back to the driver and resets its high-water marks.
    pub fn start(device: &Device) -> PeakMemory {
        if device.is_cpu() {
            reset_cpu_peak();
        } else {
            // The earlier run's frees done, so that the pool can release them.
            if let Err(e) = device.synchronize() {
                tracing::debug!("waiting for the GPU before a run: {e}");
            }
            gpu::trim_pool(device);
            gpu::pool_stats(device, true);
        }
        let mut p = PeakMemory(0);
        p.sample(device);
        p
    }

    /// Takes a sample (on a GPU whose allocations bypass the pool, the
    /// device's memory in use).
    pub fn sample(&mut self, device: &Device) {
        let now = if device.is_cpu() {
            cpu_peak_bytes()
        } else {
            gpu::pool_stats(device, false).map(|s| s.used_high).filter(|&b| b > 0).or_else(|| gpu::used_bytes(device))
        };
        self.0 = self.0.max(now.unwrap_or(0));
    }

    /// The largest sample, if any was measured.
    pub fn bytes(&self) -> Option<u64> {
        (self.0 > 0).then_some(self.0)
    }
}

/// The GPU's memory in use now, by every process (total less free), in
/// bytes; None on the CPU.
pub fn gpu_in_use(device: &Device) -> Option<u64> {
    gpu::used_bytes(device)
}

/// The CUDA memory pool's figures, in bytes: what candle's tensors hold now
/// and at most, and what the pool has taken from the GPU now and at most
/// (the device's own use, the CUDA context and cuBLAS's and cuDNN's
/// workspaces, are not in them).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PoolStats {
    /// Bytes in use now.
    pub used: u64,
    /// The most bytes in use since the high-water marks were last reset.
    pub used_high: u64,
    /// Bytes the pool holds now.
    pub reserved: u64,
    /// The most bytes the pool held since the marks were last reset.
    pub reserved_high: u64,
}

/// The pool figures of a CUDA device (None on the CPU or where the driver
/// does not answer); with `reset`, the high-water marks start again from now.
pub fn gpu_pool_stats(device: &Device, reset: bool) -> Option<PoolStats> {
    gpu::pool_stats(device, reset)
}

/// The process's peak resident set (`VmHWM`), in bytes.
fn cpu_peak_bytes() -> Option<u64> {
    cpu_resident().map(|(_, peak)| peak)
}

/// The process's resident set now and at most since the last
/// [`reset_cpu_peak`] (`VmRSS`, `VmHWM`), in bytes (Linux).
pub fn cpu_resident() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let kb: u64 =
            status.lines().find_map(|l| l.strip_prefix(name))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets the process's peak resident set to the current one (Linux: `5`
/// written to `/proc/self/clear_refs`); whether it could.
pub fn reset_cpu_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Whether a candle error is the GPU running out of memory: the CUDA driver's
/// `CUDA_ERROR_OUT_OF_MEMORY`, cuBLAS's `CUBLAS_STATUS_ALLOC_FAILED` or (in
/// the cuDNN ops) cuDNN's device or host allocation failure, found
/// by type through candle's wrappers (backtrace, context, path). The CPU
/// backend has no such error (an allocation that fails aborts the process).
pub fn is_out_of_memory(error: &candle_core::Error) -> bool {
    use candle_core::Error as E;
    match error {
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            is_out_of_memory(inner)
        }
        E::Cuda(cause) => gpu::is_out_of_memory(cause.as_ref()),
        _ => false,
    }
}

/// The message of a run that ran out of GPU memory.
pub fn out_of_memory_message(error: &str, batch_size: usize, device: &str) -> String {
    format!(
        "out of GPU memory on {device} at batch_size {batch_size}; try a smaller batch_size (e.g. {}), \
         precision = \"bf16\", or a smaller input size ({error})",
        (batch_size / 2).max(1)
    )
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // two CUDA driver calls, each with its SAFETY comment
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    use candle_core::Device;

    fn version(v: i32) -> String {
        format!("{}.{}", v / 1000, v % 1000 / 10)
    }

    pub fn describe(device: &Device) -> Option<String> {
        let Device::Cuda(d) = device else { return None };
        let ctx = d.cuda_stream().context().clone();
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let mut driver = 0;
        // SAFETY: writes one int.
        let driver = unsafe { sys::cuDriverGetVersion(&raw mut driver) }.result().ok().map(|()| version(driver));
        let built = option_env!("CUDARC_CUDA_VERSION").and_then(|v| v.parse::<i32>().ok()).map(version);
        let mut parts = vec![name];
        if let Some(b) = built {
            parts.push(format!("CUDA {b}"));
        }
        if let Some(d) = driver {
            parts.push(format!("driver CUDA {d}"));
        }
        if let Ok((_, total)) = ctx.mem_get_info() {
            parts.push(format!("{:.0} GiB", total as f64 / (1u64 << 30) as f64));
        }
        Some(parts.join(", "))
    }

    pub fn keep_pool_memory(device: &Device) -> Result<(), String> {
        let Device::Cuda(d) = device else { return Ok(()) };
        let ctx = d.cuda_stream().context().clone();
        ctx.bind_to_thread().map_err(|e| e.to_string())?;
        // SAFETY: the device handle comes from a live context; the attribute
        // value is a u64, as CU_MEMPOOL_ATTR_RELEASE_THRESHOLD expects.
        unsafe {
            let pool = result::device::get_default_mem_pool(ctx.cu_device()).map_err(|e| e.to_string())?;
            let mut threshold: u64 = u64::MAX;
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&raw mut threshold).cast(),
            )
            .map_err(|e| e.to_string())
        }
    }

    pub fn single_stream(device: &Device) {
        let Device::Cuda(d) = device else { return };
        // SAFETY: cudarc's events order a buffer's uses across streams; every
        // kernel, copy, cuBLAS and cuDNN call of sweep goes to the one stream
        // of candle's device on the thread that trains (the loader threads
        // only build host memory), so stream order alone orders them.
        unsafe { d.disable_event_tracking() };
    }

    pub fn is_out_of_memory(cause: &(dyn std::error::Error + 'static)) -> bool {
        use candle_core::cuda_backend::cudarc::cublas::{result::CublasError, sys::cublasStatus_t};
        use candle_core::cuda_backend::cudarc::driver::DriverError;
        use candle_core::cuda_backend::CudaError;
        let driver_oom = |e: &DriverError| e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY;
        let cublas_oom = |e: &CublasError| e.0 == cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED;
        #[cfg(feature = "cudnn")]
        {
            use candle_core::cuda_backend::cudarc::cudnn::{sys::cudnnStatus_t as S, CudnnError};
            if let Some(CudnnError(status)) = cause.downcast_ref::<CudnnError>() {
                return matches!(
                    status,
                    S::CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED
                        | S::CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED
                );
            }
        }
        match cause.downcast_ref::<CudaError>() {
            Some(CudaError::Cuda(e)) => driver_oom(e),
            Some(CudaError::Cublas(e)) => cublas_oom(e),
            Some(_) => false,
            None => cause.downcast_ref::<DriverError>().is_some_and(driver_oom),
        }
    }

    pub fn device_count() -> usize {
        candle_core::cuda_backend::cudarc::driver::CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
    }

    pub fn used_bytes(device: &Device) -> Option<u64> {
        let Device::Cuda(d) = device else { return None };
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        Some((total - free) as u64)
    }

    pub fn trim_pool(device: &Device) {
        let Device::Cuda(d) = device else { return };
        let ctx = d.cuda_stream().context().clone();
        if ctx.bind_to_thread().is_err() {
            return;
        }
        // SAFETY: the device handle comes from a live context; trimming only
        // releases memory no allocation holds.
        unsafe {
            if let Ok(pool) = result::device::get_default_mem_pool(ctx.cu_device()) {
                if let Err(e) = result::mem_pool::trim_to(pool, 0) {
                    tracing::debug!("trimming the CUDA memory pool: {e}");
                }
            }
        }
    }

    pub fn pool_stats(device: &Device, reset: bool) -> Option<super::PoolStats> {
        use sys::CUmemPool_attribute as A;
        let Device::Cuda(d) = device else { return None };
        let ctx = d.cuda_stream().context().clone();
        ctx.bind_to_thread().ok()?;
        // SAFETY: the device handle comes from a live context; each attribute
        // is a u64 (cuuint64_t), read into or written from one.
        unsafe {
            let pool = result::device::get_default_mem_pool(ctx.cu_device()).ok()?;
            let get = |a: A| {
                let mut v: u64 = 0;
                result::mem_pool::get_attribute(pool, a, (&raw mut v).cast()).ok().map(|()| v)
            };
            let stats = super::PoolStats {
                used: get(A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?,
                used_high: get(A::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
                reserved: get(A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?,
                reserved_high: get(A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
            };
            if reset {
                for a in [A::CU_MEMPOOL_ATTR_USED_MEM_HIGH, A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH] {
                    let mut zero: u64 = 0;
                    result::mem_pool::set_attribute(pool, a, (&raw mut zero).cast()).ok()?;
                }
            }
            Some(stats)
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod gpu {
    use candle_core::Device;

    pub fn describe(_: &Device) -> Option<String> {
        None
    }

    #[allow(clippy::unnecessary_wraps)] // the same signature as the CUDA build's
    pub fn keep_pool_memory(_: &Device) -> Result<(), String> {
        Ok(())
    }

    pub fn single_stream(_: &Device) {}

    pub fn used_bytes(_: &Device) -> Option<u64> {
        None
    }

    pub fn trim_pool(_: &Device) {}

    pub fn pool_stats(_: &Device, _: bool) -> Option<super::PoolStats> {
        None
    }

    pub fn device_count() -> usize {
        0
    }

    pub fn is_out_of_memory(_: &(dyn std::error::Error + 'static)) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_checked_and_the_cpu_is_described() {
        let (d, text) = select(DeviceChoice::Cpu).unwrap();
        assert!(d.is_cpu() && text.starts_with("cpu (") && text.ends_with(" threads)"), "{text}");
        #[cfg(not(feature = "cuda"))]
        {
            let e = select(DeviceChoice::Cuda(0)).unwrap_err();
            assert!(matches!(e, DeviceError::NoCuda(DeviceChoice::Cuda(0))), "{e}");
            assert!(e.to_string().contains("device cuda:0: this binary was built without CUDA"), "{e}");
            assert!(select(DeviceChoice::Auto).unwrap().0.is_cpu());
        }
    }

    #[test]
    fn peak_memory_on_the_cpu_sees_an_allocation() {
        let mut p = PeakMemory::start(&Device::Cpu);
        let before = p.bytes().unwrap();
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        drop(big);
        p.sample(&Device::Cpu);
        assert!(p.bytes().unwrap() >= before + (60 << 20), "{before} -> {:?}", p.bytes());
    }

    #[test]
    fn out_of_memory_errors_are_recognised_and_suggest_a_smaller_batch() {
        // A message that only reads like one is not one: the kind is decided by type.
        let text = candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY: out of memory".into());
        assert!(!is_out_of_memory(&text));
        assert!(!is_out_of_memory(&candle_core::Error::Msg("shape mismatch in matmul".into()).bt()));
        #[cfg(feature = "cuda")]
        {
            use candle_core::cuda_backend::cudarc::driver::{sys::CUresult, DriverError};
            use candle_core::cuda_backend::CudaError;
            let oom = candle_core::Error::from(CudaError::Cuda(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY)));
            assert!(is_out_of_memory(&oom.context("conv2d")));
            let other = candle_core::Error::from(CudaError::Cuda(DriverError(CUresult::CUDA_ERROR_INVALID_VALUE)));
            assert!(!is_out_of_memory(&other));
        }
        #[cfg(feature = "cudnn")]
        {
            use crate::train::layers::OrCuda;
            use candle_core::cuda_backend::cudarc::cudnn::{sys::cudnnStatus_t as S, CudnnError};
            let failed = |s: S| -> candle_core::Error { Err::<(), _>(CudnnError(s)).cu().unwrap_err() };
            assert!(is_out_of_memory(
                &failed(S::CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED).context("conv2d")
            ));
            assert!(!is_out_of_memory(&failed(S::CUDNN_STATUS_BAD_PARAM)));
        }
        let m = out_of_memory_message("CUDA_ERROR_OUT_OF_MEMORY", 128, "cuda:0");
        assert!(
            m.starts_with("out of GPU memory on cuda:0 at batch_size 128; try a smaller batch_size (e.g. 64)"),
            "{m}"
        );
    }
}
