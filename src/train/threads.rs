//! The CPU threads a run trains on.
//!
//! sweep's CPU kernels split their work among rayon's threads. A trainer
//! called from a thread outside the pool (the worker's `train-N` thread)
//! does its serial work there (candle's graph and autograd bookkeeping, the
//! small ops, the loader's hand-over) while the pool's threads, idle between
//! parallel ops, spin and yield beside it: three busy threads on two cores.
//! Run from a thread of the pool, the trainer's serial work takes one of its
//! threads and only the others wait. On the 2-core reference machine
//! (BENCHMARKS.md, 2026-12-05, "the trainer on a pool thread"): DenseNet121
//! steps at 32x32 about 12% faster, ResNet18's and smallcnn's 0-10% (within
//! the machine's noise on real data, where the loader's threads share the cores).

/// Stack of each thread a run trains on: candle's backward pass and the
/// models' recursion are deep for the largest networks (the worker's training
/// thread has always had this much; only what is touched is committed).
pub const STACK_BYTES: usize = 256 << 20;

/// Runs `f` on a thread of a new pool of rayon threads (as many as
/// `RAYON_NUM_THREADS` or the cores this process may use, [`STACK_BYTES`]
/// each) that every parallel op inside `f` uses; the pool ends with `f`.
/// Where the threads cannot be started, runs `f` on this thread (and the
/// parallel ops on rayon's global pool), as before.
pub fn on_own_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let pool = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("compute-{i}")).stack_size(STACK_BYTES).build();
    match pool {
        Ok(pool) => pool.install(f),
        Err(e) => {
            tracing::warn!("cannot start the training threads ({e}); training from this thread");
            f()
        }
    }
}

/// Runs `f` as a run's training, probe or evaluation runs on `device`: on
/// the CPU from a thread of its own pool ([`on_own_pool`]), on a GPU from
/// this thread (which only queues the device's work).
pub fn for_device<R: Send>(device: &candle_core::Device, f: impl FnOnce() -> R + Send) -> R {
    if device.is_cpu() {
        on_own_pool(f)
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// `f` runs on a thread of the new pool, whose parallel ops stay in it.
    #[test]
    fn the_work_runs_on_the_pools_threads() {
        let caller = std::thread::current().id();
        let names = on_own_pool(|| {
            assert_ne!(std::thread::current().id(), caller);
            let mut names: Vec<String> = (0..64)
                .into_par_iter()
                .map(|_| std::thread::current().name().unwrap_or_default().to_string())
                .collect();
            names.push(std::thread::current().name().unwrap_or_default().to_string());
            names
        });
        assert!(names.iter().all(|n| n.starts_with("compute-")), "{names:?}");
    }
}
