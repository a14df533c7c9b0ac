//! Process-wide tuning, called once by the binary's start-up (and by the
//! benchmark examples, so that they measure what the binary does), before any
//! thread is spawned. Library code never calls it.

/// candle's setting of how long its elementwise pool's idle workers spin.
const BARRIER_SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Settings that make candle fast on the CPU, for the commands that train.
///
/// * candle asks for its thread count on every op and, unless `RAYON_NUM_THREADS`
///   is set, parses `/proc/cpuinfo` each time (2% of a training step): set it
///   once from the cores this process may use.
/// * candle 0.11 runs its large elementwise ops (the gradients' sums among them)
///   on a second pool of threads beside rayon's, whose idle workers spin 25,000
///   `pause`s (about 0.6 ms on the 2-core reference machine) before they sleep,
///   taking a core from rayon's workers after every such op (5% of DenseNet121's
///   CPU samples at 32x32): unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` is set, they
///   spin 1,000 (about 25 µs, enough for a run of such ops) and then sleep.
/// * glibc returns freed blocks above 128 KiB to the OS at once, so every tensor
///   of a training step is page-faulted in again (a third of the step's time on
///   the 2-core reference machine, measured with perf): serve blocks up to 32 MiB
///   from one heap that grows in 256 MiB steps and is never trimmed. This took
///   the quickstart's smallcnn from about 225 to 310 images/s; mimalloc with its
///   default settings was slower than glibc here (137 images/s). Blocks above
///   32 MiB (glibc's largest threshold: the activations of a batch at 224x224,
///   160 MiB a layer for ResNet18's 50 images) come from that heap too, not from
///   a fresh mapping each time (the kernel zeroing every page at its first
///   touch): the term report's ResNet18 step at batch 50 took 2.8-2.9 s instead
///   of 3.4-3.7 s, peak RSS 2% higher.
#[allow(unsafe_code)] // process-wide settings at start-up: see the SAFETY comments
pub fn tune_for_training() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        // SAFETY: called at start-up, before this process starts other threads.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    if std::env::var_os(BARRIER_SPIN).is_none() {
        // SAFETY: as above; candle reads it when its pool starts, at the first op.
        unsafe { std::env::set_var(BARRIER_SPIN, "1000") };
    }
    keep_freed_memory();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // No block is mmapped on its own (glibc still maps memory for the heap
        // when it cannot grow it).
        libc::mallopt(libc::M_MMAP_MAX, 0);
    }
}

/// glibc serves blocks up to 32 MiB from the heap and never trims it, so freed
/// memory is reused instead of being unmapped and page-faulted back. Part of
/// [`tune_for_training`]; the read-only commands take only this (`results` on
/// 10,000 runs allocates several multi-megabyte vectors).
#[allow(unsafe_code)] // mallopt: see the SAFETY comment
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
