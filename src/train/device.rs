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

use candle_core::Device;

/// The device for `choice` (`cpu`, `auto`, `cuda:N`), with its description.
pub fn select(choice: &str) -> Result<(Device, String), String> {
    match choice {
        "cpu" => Ok((Device::Cpu, describe_cpu())),
        "auto" => {
            if !candle_core::utils::cuda_is_available() {
                tracing::info!("device {}, using the CPU", why_cpu());
                return Ok((Device::Cpu, describe_cpu()));
            }
            match open_cuda(0) {
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
        other => {
            let Some(n) = other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) else {
                return Err(format!("unknown device `{other}`: use cpu, auto or cuda:N"));
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(format!(
                    "device {other}: this binary was built without CUDA (rebuild with `--features cuda`)"
                ));
            }
            open_cuda(n).map_err(|e| format!("device {other}: {e}"))
        }
    }
}

/// CUDA device `n`, set up (`prepare`) and described.
fn open_cuda(n: usize) -> candle_core::Result<(Device, String)> {
    let d = Device::new_cuda(n)?;
    prepare(&d);
    let text = describe(&d, &format!("cuda:{n}"));
    Ok((d, text))
}

pub use crate::spec::valid_device as valid_choice;

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
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    format!("cpu ({model}, {threads} threads)")
}

/// `cuda:N (NAME, CUDA x.y, driver x.y)`.
fn describe(device: &Device, label: &str) -> String {
    match gpu::describe(device) {
        Some(text) => format!("{label} ({text})"),
        None => label.to_owned(),
    }
}

/// Per-device set-up: the memory pool keeps what it frees.
fn prepare(device: &Device) {
    if let Err(e) = gpu::keep_pool_memory(device) {
        tracing::warn!("could not raise the CUDA memory pool's release threshold: {e}");
    }
}

/// The memory a run has used at most, in bytes, so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct PeakMemory(u64);

impl PeakMemory {
    /// Starts measuring for a new run (on the CPU, resets the process's peak).
    pub fn start(device: &Device) -> PeakMemory {
        if device.is_cpu() {
            // Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
            let _ = std::fs::write("/proc/self/clear_refs", "5");
        }
        let mut p = PeakMemory(0);
        p.sample(device);
        p
    }

    /// Takes a sample.
    pub fn sample(&mut self, device: &Device) {
        let now = if device.is_cpu() { cpu_peak_bytes() } else { gpu::used_bytes(device) };
        self.0 = self.0.max(now.unwrap_or(0));
    }

    /// The largest sample, if any was measured.
    pub fn bytes(&self) -> Option<u64> {
        (self.0 > 0).then_some(self.0)
    }
}

/// The process's peak resident set (`VmHWM`), in bytes.
fn cpu_peak_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Whether an error text is the GPU running out of memory.
pub fn is_out_of_memory(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("out_of_memory") || e.contains("out of memory")
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
        let driver = unsafe { sys::cuDriverGetVersion(&mut driver) }.result().ok().map(|()| version(driver));
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
                (&mut threshold as *mut u64).cast(),
            )
            .map_err(|e| e.to_string())
        }
    }

    pub fn used_bytes(device: &Device) -> Option<u64> {
        let Device::Cuda(d) = device else { return None };
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        Some((total - free) as u64)
    }
}

#[cfg(not(feature = "cuda"))]
mod gpu {
    use candle_core::Device;

    pub fn describe(_: &Device) -> Option<String> {
        None
    }

    pub fn keep_pool_memory(_: &Device) -> Result<(), String> {
        Ok(())
    }

    pub fn used_bytes(_: &Device) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_checked_and_the_cpu_is_described() {
        assert!(valid_choice("cpu") && valid_choice("auto") && valid_choice("cuda:1"));
        assert!(!valid_choice("gpu") && !valid_choice("cuda:x") && !valid_choice("cuda"));
        let (d, text) = select("cpu").unwrap();
        assert!(d.is_cpu() && text.starts_with("cpu (") && text.ends_with(" threads)"), "{text}");
        assert!(select("tpu").unwrap_err().contains("use cpu, auto or cuda:N"));
        #[cfg(not(feature = "cuda"))]
        {
            assert!(select("cuda:0").unwrap_err().contains("built without CUDA"));
            assert!(select("auto").unwrap().0.is_cpu());
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
        assert!(is_out_of_memory("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"));
        assert!(!is_out_of_memory("shape mismatch in matmul"));
        let m = out_of_memory_message("CUDA_ERROR_OUT_OF_MEMORY", 128, "cuda:0");
        assert!(
            m.starts_with("out of GPU memory on cuda:0 at batch_size 128; try a smaller batch_size (e.g. 64)"),
            "{m}"
        );
    }
}
