//! Probes of one run on this machine: its training speed (`sweep plan`'s
//! estimates when nothing like it was trained before) and its memory on the
//! CPU (checked before a run starts, [`footprint`]): the run's model on its
//! device, a few optimiser steps on random images of the run's input size.
//! Pretrained weights are not loaded (they change neither).

use super::loss::cross_entropy;
use super::rng::Rng;
use super::{augment, models, optim, ConfigError, TrainError};
use crate::spec::{DatasetName, RunConfig};
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

/// What a probe measured, per image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Seconds per training image (forward, backward, optimiser step).
    pub train: f64,
    /// Seconds per test image (forward only: a third of a training step, as
    /// measured on the CPU for the ResNets).
    pub test: f64,
    /// On a GPU, the most bytes the probe's tensors held at once (the model,
    /// its gradients and the optimiser's state, and a step's activations at
    /// the run's batch: [`super::device::PeakMemory`]); None on the CPU,
    /// whose probe runs a smaller batch ([`footprint`] measures its memory).
    pub memory: Option<u64>,
}

/// The images a dataset of `cfg` has per split, where the file says or the
/// dataset is known; `None` for an image folder of unknown size.
pub fn split_sizes(cfg: &RunConfig) -> Option<(usize, usize)> {
    let d = &cfg.dataset;
    let (train, test) = match d.name {
        DatasetName::Synthetic => (super::data::SYNTHETIC_TRAIN, super::data::SYNTHETIC_TEST),
        DatasetName::Cifar10 | DatasetName::Cifar100 => (50_000, 10_000),
        DatasetName::Mnist | DatasetName::FashionMnist => (60_000, 10_000),
        DatasetName::Svhn => (73_257, 26_032),
        DatasetName::Stl10 => (5_000, 8_000),
        DatasetName::Folder => (d.train_size?, d.test_size?),
    };
    Some((d.train_size.unwrap_or(train), d.test_size.unwrap_or(test)))
}

/// How a probe times a run: the batch, the untimed warm-up steps and the
/// timed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSize {
    /// Images per step.
    pub batch: usize,
    /// Steps before the clock starts (cuDNN's plans, the allocator's pool).
    pub warmup: usize,
    /// Steps timed.
    pub steps: usize,
}

impl ProbeSize {
    /// The CPU's batch cap: a CPU's time per image hardly depends on the
    /// batch, and a step of 8 images of ResNet18 at 224 already takes half a
    /// second on two cores.
    pub const CPU_BATCH: usize = 8;

    /// How to time a run of `batch_size` on `device`. On the CPU: at most
    /// [`ProbeSize::CPU_BATCH`] images, two steps after one. On a GPU a step
    /// of a few images takes about as long as one of fifty (the launches,
    /// not the arithmetic, set its pace), so a small batch would put the
    /// time per image several times too high: the run's own batch, ten steps
    /// after three.
    pub fn for_device(device: &Device, batch_size: usize) -> ProbeSize {
        if device.is_cpu() {
            ProbeSize { batch: batch_size.clamp(1, Self::CPU_BATCH), warmup: 1, steps: 2 }
        } else {
            ProbeSize { batch: batch_size.max(1), warmup: 3, steps: 10 }
        }
    }
}

/// Times `size.steps` optimiser steps of `cfg`'s model, after `size.warmup`
/// untimed ones, on a batch of `size.batch` random images at the run's input
/// size (CIFAR's, SVHN's and the synthetic 32x32, MNIST's 28x28, STL-10's
/// 96x96, through its train transforms) in the run's precision.
///
/// # Errors
/// The model cannot be built, or a step fails (e.g. out of memory).
pub fn probe(cfg: &RunConfig, device: &Device, size: ProbeSize) -> Result<Pace, TrainError> {
    // From the threads the trainer runs on ([`super::threads`]).
    super::threads::for_device(device, || probe_here(cfg, device, size))
}

/// The classes of `cfg`'s dataset and its training input size, as far as the
/// file tells: CIFAR's, SVHN's and the synthetic 32x32 (and an image
/// folder's, unknown here), MNIST's 28x28, STL-10's 96x96, through its train
/// transforms; 10 classes but CIFAR-100's.
fn shapes(cfg: &RunConfig) -> Result<(usize, (usize, usize)), ConfigError> {
    let classes = match cfg.dataset.name {
        DatasetName::Cifar100 => 100,
        _ => 10,
    };
    let side = match cfg.dataset.name {
        DatasetName::Mnist | DatasetName::FashionMnist => 28,
        DatasetName::Stl10 => 96,
        _ => 32,
    };
    let hw = augment::output_size(&cfg.train_transforms, side, side).map_err(|detail| ConfigError::Augment {
        set: cfg.augment.clone(),
        which: "train",
        detail,
    })?;
    Ok((classes, hw))
}

fn probe_here(cfg: &RunConfig, device: &Device, size: ProbeSize) -> Result<Pace, TrainError> {
    let (classes, (h, w)) = shapes(cfg)?;
    // As the trainer sets it (TensorFloat-32 is a process-wide cuBLAS switch; a no-op on the CPU).
    candle_core::cuda::set_gemm_reduced_precision_f32(cfg.precision == crate::spec::Precision::Tf32);
    let mut peak = (!device.is_cpu()).then(|| super::device::PeakMemory::start(device));
    let mut bench = Bench::new(cfg, classes, device)?;
    let (n, steps) = (size.batch.max(1), size.steps.max(1));
    let batch = bench.batch(n, h, w)?;
    for _ in 0..size.warmup {
        bench.train_step(&batch)?.wait()?;
    }
    let t = Instant::now();
    let mut last = None;
    for _ in 0..steps {
        last = Some(bench.train_step(&batch)?);
    }
    // A GPU queues the steps: the clock stops when the last one has run.
    if let Some(loss) = last {
        loss.wait()?;
    }
    let per_image = t.elapsed().as_secs_f64() / (steps * n) as f64;
    let memory = peak.as_mut().and_then(|p| {
        p.sample(device);
        p.bytes()
    });
    Ok(Pace { train: per_image, test: per_image / 3.0, memory })
}

/// A run's model (not pretrained) and optimiser, for measuring steps on
/// random images.
struct Bench {
    built: models::Built,
    opt: optim::Optimizer,
    classes: usize,
    rng: Rng,
    device: Device,
}

impl Bench {
    fn new(cfg: &RunConfig, classes: usize, device: &Device) -> Result<Bench, TrainError> {
        let mut cfg = cfg.clone();
        cfg.pretrained = None;
        let built = models::build(&cfg, classes, device).map_err(ConfigError::from)?;
        let opt = optim::Optimizer::new(cfg.optimizer.clone(), built.trainable.clone());
        Ok(Bench { built, opt, classes, rng: Rng::derive(&[0x7072_6f62]), device: device.clone() })
    }

    /// `n` random images of `h` x `w` and their labels.
    fn batch(&self, n: usize, h: usize, w: usize) -> Result<(Tensor, Tensor), TrainError> {
        let x = Tensor::randn(0f32, 1f32, (n, 3, h, w), &self.device)?;
        let labels: Vec<u32> = (0..n as u32).map(|i| i % self.classes as u32).collect();
        Ok((x, Tensor::new(labels.as_slice(), &self.device)?))
    }

    /// One optimiser step, queued; its loss, to wait for it with.
    fn train_step(&mut self, (x, y): &(Tensor, Tensor)) -> Result<Queued, TrainError> {
        let logits = self.built.model.forward(x, true, &mut self.rng)?;
        let loss = cross_entropy(&logits, y, 0.0)?;
        let grads = loss.backward_freeing_graph()?;
        self.opt.step(&grads)?;
        Ok(Queued(loss.detach()))
    }
}

/// A step's loss: reading it waits for the device (a GPU queues work).
struct Queued(Tensor);

impl Queued {
    fn wait(self) -> Result<(), TrainError> {
        self.0.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok(())
    }
}

/// What a training step takes in memory on the CPU beyond what the process
/// held before the run, in bytes, as a line in the batch size: measured, not
/// modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// The bytes measured at batch [`Footprint::AT`]: the model, its
    /// gradients and the optimiser's state, and that batch's activations.
    pub at: (u64, u64),
}

impl Footprint {
    /// The two batch sizes measured.
    pub const AT: (usize, usize) = (8, 16);

    /// A training step of `batch` images: the line through the two
    /// measurements (never below the larger one, nor sloping down).
    pub fn training(&self, batch: usize) -> u64 {
        let ((a, b), (at_a, at_b)) = (Self::AT, self.at);
        let per = at_b.saturating_sub(at_a) / (b - a) as u64;
        if batch >= b {
            at_b + (batch - b) as u64 * per
        } else {
            at_b.saturating_sub((b - batch) as u64 * per)
        }
    }

    /// Whether a training step of `batch` images fits in `available` bytes;
    /// else what it would take and the largest batch size that fits, in
    /// words.
    pub fn verdict(&self, batch: usize, available: u64) -> Result<(), String> {
        let fits = |n: usize| self.training(n) <= available;
        if fits(batch) {
            return Ok(());
        }
        // The largest batch size that fits.
        let (mut lo, mut hi) = (0, batch);
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        // The line runs up to a quarter above what larger steps take, seldom below (ResNet18 at 224:
        // 4.1-5.1 GiB at 128 where a step took 4.1 GiB): a quarter below where it crosses.
        let instead = match lo * 3 / 4 {
            0 => "even one image does not fit: freeze more layers, use smaller images, or train on a GPU".to_owned(),
            n => format!(
                "a batch_size of {n} or less should fit; or freeze more layers, use smaller images, or train on a \
                 GPU (SWEEP_MEMORY=SIZE says how much sweep may take, where the system's figure is wrong)"
            ),
        };
        let (a, b) = Self::AT;
        Err(format!(
            "a training step of {batch} images would take about {} (measured here: {} for {a} images, {} for {b}), \
             and sweep may take {} more ({}): {instead}",
            crate::memory::describe(self.training(batch)),
            crate::memory::describe(self.at.0),
            crate::memory::describe(self.at.1),
            crate::memory::describe(available),
            crate::memory::SOURCE,
        ))
    }
}

/// Measures a run's [`Footprint`] on the CPU: the process's peak resident set
/// (`VmHWM`, reset before each) over a training step of 8 and one of 16
/// random images at the run's training input size (`hw`), on a model built
/// for it (not pretrained: the same sizes), counted from the resident set
/// before the model was built, with the allocator's free memory handed back
/// to the system before each (so that memory kept from earlier runs does not
/// hide a step's). `None` where the peak cannot be reset or read (not Linux).
///
/// # Errors
/// The model cannot be built, or a step fails.
pub fn footprint(cfg: &RunConfig, classes: usize, hw: (usize, usize)) -> Result<Option<Footprint>, TrainError> {
    use super::device::{cpu_resident, reset_cpu_peak};
    use crate::memory::release_freed;
    // The allocator keeps what it frees: hand it back before each measurement, so that earlier
    // runs' memory (or the first step's) does not hide what a step takes.
    release_freed();
    let Some((before, _)) = cpu_resident() else { return Ok(None) };
    let mut bench = Bench::new(cfg, classes, &Device::Cpu)?;
    let mut peak = |n: usize| -> Result<Option<u64>, TrainError> {
        let batch = bench.batch(n, hw.0, hw.1)?;
        release_freed();
        if !reset_cpu_peak() {
            return Ok(None);
        }
        bench.train_step(&batch)?;
        Ok(cpu_resident().map(|(_, high)| high.saturating_sub(before)))
    };
    let (a, b) = Footprint::AT;
    let points = (peak(a)?, peak(b)?);
    drop(bench);
    release_freed();
    let (Some(at_a), Some(at_b)) = points else { return Ok(None) };
    Ok(Some(Footprint { at: (at_a, at_b) }))
}

/// The batch a training step of `cfg` takes (its batch size, or the training
/// set's size where that is smaller: `train_images`, where known) and its
/// [`Footprint`], measured once per kind of run ([`footprint_cached`]), with
/// `classes` and the training input size `hw`. `None` for a batch of at most
/// [`Footprint::AT`]'s larger one (measuring would take more than the step),
/// or where the footprint cannot be measured (not Linux).
///
/// # Errors
/// As [`footprint`].
pub fn measured(
    cfg: &RunConfig,
    classes: usize,
    hw: (usize, usize),
    train_images: Option<usize>,
) -> Result<Option<(usize, Footprint)>, TrainError> {
    let batch = cfg.batch_size.min(train_images.unwrap_or(usize::MAX));
    if batch <= Footprint::AT.1 {
        return Ok(None);
    }
    Ok(footprint_cached(cfg, classes, hw)?.map(|f| (batch, f)))
}

/// What a training step of `cfg` would take on the CPU (`sweep plan`'s
/// figure): [`measured`], with the dataset's shapes as far as the file tells
/// ([`probe`]'s), on the trainer's threads.
///
/// # Errors
/// As [`footprint`].
pub fn step_memory(cfg: &RunConfig, train_images: Option<usize>) -> Result<Option<u64>, TrainError> {
    let (classes, hw) = shapes(cfg)?;
    let measured = super::threads::for_device(&Device::Cpu, || measured(cfg, classes, hw, train_images))?;
    Ok(measured.map(|(batch, f)| f.training(batch)))
}

/// [`footprint`] once per kind of run in this process: runs that differ in
/// their learning rate, schedule, seed or batch size take the same memory
/// per image.
///
/// # Errors
/// As [`footprint`].
pub fn footprint_cached(cfg: &RunConfig, classes: usize, hw: (usize, usize)) -> Result<Option<Footprint>, TrainError> {
    static SEEN: std::sync::Mutex<Vec<(String, Option<Footprint>)>> = std::sync::Mutex::new(Vec::new());
    // The optimiser's kind and settings but its learning rate (its state is what counts).
    let mut optimizer = serde_json::to_value(&cfg.optimizer).unwrap_or_default();
    if let Some(fields) = optimizer.as_object_mut() {
        fields.remove("lr");
    }
    let key = format!(
        "{} {:?} {} {:?} {:?} {optimizer} {:?} {classes} {hw:?}",
        cfg.model, cfg.freeze, cfg.freeze_bn, cfg.stem, cfg.head, cfg.precision
    );
    let seen = |k: &str| SEEN.lock().ok()?.iter().find(|(s, _)| s == k).map(|(_, f)| *f);
    if let Some(f) = seen(&key) {
        return Ok(f);
    }
    let f = footprint(cfg, classes, hw)?;
    if let Ok(mut all) = SEEN.lock() {
        all.push((key, f));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU is timed on at most 8 images, and never on none.
    #[test]
    fn the_cpu_times_a_few_images_of_a_run() {
        let cpu = Device::Cpu;
        assert_eq!(ProbeSize::for_device(&cpu, 128), ProbeSize { batch: 8, warmup: 1, steps: 2 });
        assert_eq!(ProbeSize::for_device(&cpu, 4).batch, 4);
        assert_eq!(ProbeSize::for_device(&cpu, 0).batch, 1);
    }

    /// The line through the two measurements, extended both ways, never
    /// sloping down; the verdict names what the batch would take, what was
    /// measured, and a batch a quarter below where the line crosses.
    #[test]
    fn a_footprint_extends_its_two_measurements_and_says_what_fits() {
        const MB: u64 = 1 << 20;
        let f = Footprint { at: (300 * MB, 500 * MB) };
        assert_eq!(f.training(16), 500 * MB);
        assert_eq!(f.training(128), 500 * MB + 112 * 25 * MB);
        assert_eq!(f.training(8), 300 * MB);
        assert_eq!(f.training(1), 125 * MB);
        // Less at 16 than at 8: flat.
        assert_eq!(Footprint { at: (300 * MB, 250 * MB) }.training(1000), 250 * MB);
        assert_eq!(f.verdict(128, 3300 * MB), Ok(()));
        let why = f.verdict(128, 1500 * MB).unwrap_err();
        // 500 + 25 (n - 16) <= 1500 up to n = 56; a quarter less is 42.
        for part in [
            "a training step of 128 images would take about 3.2 GiB",
            "(measured here: 300.0 MiB for 8 images, 500.0 MiB for 16)",
            "and sweep may take 1.5 GiB more (MemAvailable, its cgroup's limit, or SWEEP_MEMORY)",
            "a batch_size of 42 or less should fit",
        ] {
            assert!(why.contains(part), "{part}: {why}");
        }
        let none = f.verdict(128, 100 * MB).unwrap_err();
        assert!(
            none.ends_with("even one image does not fit: freeze more layers, use smaller images, or train on a GPU"),
            "{none}"
        );
    }
}
