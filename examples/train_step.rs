//! One training step of a model on random data, for the memory and speed
//! benchmarks (bench/memory.sh): prints peak RSS and step times as JSON.
//!
//!     cargo run --release --example train_step -- resnet18 8 224 [steps] [cpu|cuda:N] [f32|tf32|bf16]
//!
//! In place of a model's name, `FILE#RUN` trains run RUN of sweep file FILE
//! as it is configured there (head, frozen layers, optimiser), from random
//! weights, e.g. `experiments/report.toml#resnet50-layer3-4+mlp 128 32`;
//! otherwise the model is torchvision's, nothing frozen, under SGD with
//! momentum 0.9.
//!
//! On a GPU each phase ends with a device synchronisation, so the split is
//! the GPU's time (the kernels `SWEEP_GPU_KERNELS` chooses), and the JSON has
//! the memory figures: the device's memory in use (all of it, as
//! `nvidia-smi` counts it) after the model is built and at the end, the CUDA
//! pool's bytes in use after each phase of the last step and its high-water
//! marks over the steps after the first (in use: what PyTorch's
//! `max_memory_allocated` counts; reserved: its `max_memory_reserved`), and
//! the cuDNN convolution workspace with each shape's algorithms.
//!
//! The backward pass frees the graph as it goes (`backward_freeing_graph`, as
//! the trainer runs it); `KEEP_GRAPH=1` runs candle's `backward()`, which keeps
//! every activation until the loss is dropped, to compare. `heap_mib_last_step`
//! is the process heap (the CPU's tensors) in the last step: in use after the
//! forward pass, at most during the backward pass, and after it.

use candle_core::Tensor;
use sweep::train::models::ModelSpec;
use sweep::train::optim::Optimizer;
use sweep::train::rng::Rng;

/// The cuDNN convolution workspace (MiB) and plans (none without the feature).
fn workspace() -> (f64, Vec<String>) {
    #[cfg(feature = "cudnn")]
    {
        let (bytes, plans) = sweep::train::layers::workspace_report();
        (bytes as f64 / (1u64 << 20) as f64, plans)
    }
    #[cfg(not(feature = "cudnn"))]
    (0.0, Vec::new())
}

/// The heap's bytes in use and their high-water mark (the CPU's tensors live
/// there): where in a step the memory peaks, which peak RSS cannot say.
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    static LIVE: AtomicUsize = AtomicUsize::new(0);
    static HIGH: AtomicUsize = AtomicUsize::new(0);

    /// The system allocator, counting.
    pub struct Counting;

    /// Counts `size` more bytes in use where `p` was allocated; returns `p`.
    fn counted(p: *mut u8, size: usize) -> *mut u8 {
        if !p.is_null() {
            let now = LIVE.fetch_add(size, Relaxed) + size;
            HIGH.fetch_max(now, Relaxed);
        }
        p
    }

    #[allow(unsafe_code)]
    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract, passed on.
            counted(unsafe { System.alloc(layout) }, layout.size())
        }

        // alloc_zeroed and realloc are the system's own too (calloc's zero pages,
        // realloc's moves in place), not the trait's alloc-and-fill/copy defaults,
        // which would slow the step this example times.
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract, passed on.
            counted(unsafe { System.alloc_zeroed(layout) }, layout.size())
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: the caller's contract, passed on.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                LIVE.fetch_sub(layout.size(), Relaxed);
            }
            counted(p, new_size)
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            LIVE.fetch_sub(layout.size(), Relaxed);
            // SAFETY: the caller's contract, passed on.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    /// MiB in use now.
    pub fn live() -> f64 {
        LIVE.load(Relaxed) as f64 / (1u64 << 20) as f64
    }

    /// The most MiB in use since the last reset; resets the mark to now's.
    pub fn high(reset: bool) -> f64 {
        let v = HIGH.load(Relaxed) as f64 / (1u64 << 20) as f64;
        if reset {
            HIGH.store(LIVE.load(Relaxed), Relaxed);
        }
        v
    }
}

#[global_allocator]
static HEAP: heap::Counting = heap::Counting;

#[allow(unsafe_code)]
fn peak_rss_mib() -> f64 {
    // SAFETY: rusage is plain integers, for which all-zero bytes are valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

fn main() -> anyhow::Result<()> {
    sweep::process::tune_for_training();
    let args: Vec<String> = std::env::args().collect();
    let choice: sweep::spec::DeviceChoice = args.get(5).map_or("cpu", String::as_str).parse()?;
    let (device, described) = sweep::train::device(choice)?;
    // On the CPU from a thread of its own pool, as the trainer runs.
    sweep::train::threads::for_device(&device, || measure(&args, &device, &described))
}

fn measure(args: &[String], device: &candle_core::Device, described: &str) -> anyhow::Result<()> {
    let model = args.get(1).map_or("resnet18", String::as_str);
    let batch: usize = args.get(2).map_or(Ok(8), |s| s.parse())?;
    let size: usize = args.get(3).map_or(Ok(224), |s| s.parse())?;
    let steps: usize = args.get(4).map_or(Ok(1), |s| s.parse())?;
    let precision = args.get(6).map_or("f32", String::as_str);
    let (model, spec, opt_spec) = match model.split_once('#') {
        Some((file, run)) => {
            let sweep = sweep::spec::load(std::path::Path::new(file))?;
            let Some(planned) = sweep.runs.into_iter().find(|r| r.name == run) else {
                anyhow::bail!("{file} has no run named `{run}`");
            };
            // Random weights: the speed is the same and nothing is downloaded.
            let config = sweep::spec::RunConfig { pretrained: None, ..planned.config };
            (run, ModelSpec::of(&config).map_err(anyhow::Error::msg)?, config.optimizer)
        }
        None => (
            model,
            ModelSpec::plain(model).map_err(anyhow::Error::msg)?,
            serde_json::from_str(r#"{"name": "sgd", "lr": 0.01, "momentum": 0.9}"#)?,
        ),
    };
    #[cfg(feature = "cuda")]
    candle_core::cuda::set_gemm_reduced_precision_f32(precision == "tf32");
    let compute = if precision == "bf16" { candle_core::DType::BF16 } else { candle_core::DType::F32 };
    let built = spec.build_with(10, device, 0, compute).map_err(anyhow::Error::msg)?;
    let mut opt = Optimizer::new(opt_spec, built.trainable.clone());
    let after_build = peak_rss_mib();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let device_mib = || sweep::train::device::gpu_in_use(device).map(mib);
    let device_after_build = device_mib();
    let pool = |reset: bool| sweep::train::device::gpu_pool_stats(device, reset);
    let mut phases = serde_json::Value::Null;
    let mut heap_mib = serde_json::Value::Null;
    let keep_graph = std::env::var("KEEP_GRAPH").is_ok_and(|v| v == "1");
    let mut rng = Rng::new(1);
    let mut times = Vec::new();
    // Seconds of each step in the forward pass (with the loss), the backward
    // pass, and the optimizer step (with freeing the gradients).
    let mut split = Vec::new();
    // Seconds the host spent in the backward pass before waiting for the GPU
    // (near the synchronised time: the GPU waits for the host's launches).
    let mut enqueue = Vec::new();
    // The same for the forward pass (with the loss).
    let mut forward_host = Vec::new();
    for i in 0..steps {
        if i == 1 {
            pool(true);
        }
        let x: Vec<f32> = (0..batch * 3 * size * size).map(|_| rng.normal() as f32).collect();
        let x = Tensor::from_vec(x, (batch, 3, size, size), device)?;
        let y = Tensor::from_vec((0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(), batch, device)?;
        let start = std::time::Instant::now();
        let logits = built.model.forward(&x, true, &mut rng)?;
        let loss = sweep::train::cross_entropy(&logits, &y, 0.0)?;
        forward_host.push(start.elapsed().as_secs_f64());
        device.synchronize()?;
        let forward = start.elapsed().as_secs_f64();
        let after_forward = pool(false);
        let heap_after_forward = heap::live();
        heap::high(true);
        // KEEP_GRAPH=1: candle's backward(), which keeps the graph until the loss is dropped
        let grads = if keep_graph { loss.backward()? } else { loss.backward_freeing_graph()? };
        enqueue.push(start.elapsed().as_secs_f64() - forward);
        device.synchronize()?;
        let backward = start.elapsed().as_secs_f64();
        let after_backward = pool(false);
        heap_mib = serde_json::json!({
            "after_forward": heap_after_forward, "high_in_backward": heap::high(false), "after_backward": heap::live(),
        });
        opt.step(&grads)?;
        drop(grads);
        loss.to_scalar::<f32>()?;
        drop((logits, loss));
        phases = serde_json::json!({
            "after_forward": after_forward, "after_backward": after_backward, "after_step": pool(false),
        });
        let total = start.elapsed().as_secs_f64();
        times.push(total);
        split.push([forward, backward - forward, total - backward]);
    }
    // The same steps without a synchronisation between phases or steps (the
    // loss read once at the end), as the trainer and PyTorch's loop run them:
    // the host queues work while the GPU computes.
    let mut pipelined = None;
    if !device.is_cpu() && steps > 2 {
        let x: Vec<f32> = (0..batch * 3 * size * size).map(|_| rng.normal() as f32).collect();
        let x = Tensor::from_vec(x, (batch, 3, size, size), device)?;
        let y = Tensor::from_vec((0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(), batch, device)?;
        device.synchronize()?;
        let start = std::time::Instant::now();
        let mut last = None;
        for _ in 0..steps {
            let logits = built.model.forward(&x, true, &mut rng)?;
            let loss = sweep::train::cross_entropy(&logits, &y, 0.0)?;
            opt.step(&loss.backward_freeing_graph()?)?;
            last = Some(loss.detach());
        }
        if let Some(l) = last {
            l.to_scalar::<f32>()?;
        }
        pipelined = Some(start.elapsed().as_secs_f64() / steps as f64);
    }
    // EVAL_STEPS: forward passes in eval mode (running statistics, no gradient: the detached
    // network) on one batch of random images each, as a test pass runs them.
    let eval_steps: usize = std::env::var("EVAL_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut eval_times = Vec::new();
    for _ in 0..eval_steps {
        let x: Vec<f32> = (0..batch * 3 * size * size).map(|_| rng.normal() as f32).collect();
        let x = Tensor::from_vec(x, (batch, 3, size, size), device)?;
        let start = std::time::Instant::now();
        let logits = built.inference.forward(&x, false, &mut rng)?;
        logits.argmax(1)?.to_vec1::<u32>()?;
        eval_times.push(start.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({
            "eval_step_seconds": eval_times,
            "pipelined_step_seconds": pipelined,
            "impl": "sweep", "model": model, "batch": batch, "size": size, "device": described, "precision": precision,
            "trainable_parameters": built.trainable.iter().map(|(_, v)| v.elem_count()).sum::<usize>(),
            "peak_rss_mib": peak_rss_mib(), "heap_mib_last_step": heap_mib, "graph": if keep_graph { "kept" } else { "freed" }, "rss_after_build_mib": after_build, "step_seconds": times,
            "forward_backward_optimizer_seconds": split, "backward_host_seconds": enqueue,
            "forward_host_seconds": forward_host,
            "gpu_memory": {
                "device_used_after_build_mib": device_after_build, "device_used_at_end_mib": device_mib(),
                "pool_last_step": phases, "pool_steps_after_first": pool(false),
                "cudnn_workspace_mib": workspace().0, "cudnn_plans": workspace().1,
            },
        })
    );
    Ok(())
}
