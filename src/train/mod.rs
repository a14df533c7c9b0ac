//! The trainer: one run's epochs, from data to checkpoints. The only module
//! that uses candle; it knows nothing of SQLite or the command line.
//!
//! Reading order (the data flow of one run):
//! 1. [`data`] loads or generates the images; [`loader`] builds the batches on
//!    threads ahead of the trainer, applying the [`augment`] transforms;
//! 2. [`models`] builds the network with torchvision names and seeded weights;
//! 3. [`optim`] and [`schedule`] update the weights with PyTorch's rules;
//! 4. [`train`] (below) runs the epochs: a training pass, a test pass, the epoch
//!    record, the latest checkpoint and, when the metric improves, the best one;
//! 5. [`checkpoint`] writes and verifies the files; an [`EpochSink`] (the worker's
//!    database writer, or a `Vec` in tests) records each epoch before the next
//!    one starts.
//!
//! Everything random derives from the run seed and the position (epoch, batch,
//! image), so a run resumed from a checkpoint continues exactly as it would have.

pub mod augment;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod layers;
pub mod loader;
pub mod models;
pub mod optim;
pub mod pth;
pub mod rng;
pub mod schedule;
pub mod weights;

use crate::spec::RunConfig;
use crate::store::{CheckpointKind, CheckpointRecord, EpochRecord};
use candle_core::{DType, Device, Tensor};
use checkpoint::{Partial, Saved, TrainerState};
use rng::{stream, Rng};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;

/// Why a run could not train.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration asks for something this build cannot do.
    #[error("unsupported configuration: {0}")]
    Unsupported(String),
    /// The dataset could not be read.
    #[error("dataset: {0}")]
    Data(#[from] data::DataError),
    /// A checkpoint file is missing, corrupt or could not be written.
    #[error("checkpoint {path}: {detail}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The loss became NaN or infinite.
    #[error("diverged: loss {loss} at epoch {epoch}, batch {step}; try a smaller learning rate")]
    Diverged {
        /// 1-based epoch.
        epoch: u64,
        /// 1-based batch within the epoch.
        step: u64,
        /// The loss value.
        loss: f32,
    },
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The epoch could not be recorded (database error or lost ownership).
    #[error("recording the epoch failed: {0}")]
    Sink(String),
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every epoch finished.
    Finished,
    /// Stopped on request after a batch; a mid-epoch checkpoint was recorded.
    Interrupted,
    /// Early stopping ended the run after `epoch` epochs.
    StoppedEarly {
        /// Epochs trained.
        epoch: u64,
        /// Why, for the run's note.
        note: String,
    },
}

/// Receives what the trainer produces; implemented by the worker (database) and
/// by tests (memory). Each call returns only once the record is durable.
pub trait EpochSink {
    /// An epoch finished; its latest checkpoint (and best, if it improved) is on disk.
    fn epoch_end(
        &mut self,
        rec: &EpochRecord,
        latest: &CheckpointRecord,
        best: Option<&CheckpointRecord>,
    ) -> Result<(), String>;
    /// Training stopped on request; `latest` is the mid-epoch checkpoint.
    fn interrupted(&mut self, latest: &CheckpointRecord) -> Result<(), String>;
}

/// Live progress shared with the worker's heartbeat.
#[derive(Debug, Default)]
pub struct Progress {
    /// Batches done in the current epoch.
    pub step: AtomicI64,
    /// Batches per epoch.
    pub steps_per_epoch: AtomicI64,
}

/// Everything one call to [`train`] needs.
pub struct TrainRequest<'a> {
    /// The run's configuration.
    pub config: &'a RunConfig,
    /// Name shown in progress output.
    pub name: &'a str,
    /// The loaded dataset.
    pub dataset: &'a data::Dataset,
    /// The home folder (checkpoint paths are relative to it).
    pub home: &'a Path,
    /// The run's folder, relative to `home`.
    pub run_dir: &'a str,
    /// The latest checkpoint to resume from.
    pub resume: Option<&'a CheckpointRecord>,
    /// Where tensors live.
    pub device: &'a Device,
    /// Set to stop after the current batch.
    pub stop: &'a AtomicBool,
    /// Updated after every batch.
    pub progress: &'a Progress,
    /// Draw a progress bar and print a line per epoch on stderr.
    pub verbose: bool,
}

/// Process-wide settings that make candle fast on CPU; call once at start-up,
/// before any thread is spawned.
///
/// * candle asks for its thread count on every op and, unless `RAYON_NUM_THREADS`
///   is set, parses `/proc/cpuinfo` each time (2% of a training step): set it
///   once from the cores this process may use.
/// * glibc returns freed blocks above 128 KiB to the OS at once, so every tensor
///   of a training step is page-faulted in again (a third of the step's time on
///   the 2-core reference machine, measured with perf): serve blocks up to 32 MiB
///   from one heap that grows in 256 MiB steps and is never trimmed. This took
///   the quickstart's smallcnn from about 225 to 310 images/s; mimalloc with its
///   default settings was slower than glibc here (137 images/s).
pub fn tune_process() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        // SAFETY: called at start-up, before this process starts other threads.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    keep_freed_memory();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// glibc serves blocks up to 32 MiB from the heap and never trims it, so freed
/// memory is reused instead of being unmapped and page-faulted back. Part of
/// [`tune_process`]; the read-only commands take only this (`results` on
/// 10,000 runs allocates several multi-megabyte vectors).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Why `config` cannot be trained by this build, checked before anything is queued.
pub fn check(config: &RunConfig) -> Result<(), String> {
    models::check(config)?;
    for (which, list) in [("train", &config.train_transforms), ("test", &config.test_transforms)] {
        // The parameters; sizes are checked against the data when the run starts.
        if let Err(e) = augment::output_size(list, 4096, 4096) {
            return Err(format!("augmentation set `{}` ({which}): {e}", config.augment));
        }
    }
    Ok(())
}

/// The pipeline for `transforms` on `device`: resize and normalisation as
/// tensor ops on a GPU, everything on the loader threads on the CPU.
pub fn pipeline(
    transforms: &[crate::spec::Transform],
    split: &data::Split,
    device: &Device,
) -> candle_core::Result<loader::Pipeline> {
    if device.is_cpu() {
        return Ok(loader::Pipeline::host_only(transforms));
    }
    Ok(match loader::Pipeline::resident(transforms, split, device)? {
        Some(p) => p,
        None => loader::Pipeline::device_tail(transforms, split),
    })
}

/// Selects a device from `cpu`, `auto` or `cuda:N`; returns it with a description.
pub fn device(choice: &str) -> Result<(Device, String), String> {
    self::device::select(choice)
}

fn record(kind: CheckpointKind, saved: &Saved, state: &TrainerState, metric: Option<f64>) -> CheckpointRecord {
    CheckpointRecord {
        kind,
        epoch: state.epoch as i64,
        step: state.step as i64,
        path: saved.path.clone(),
        sha256: saved.sha256.clone(),
        state_path: saved.state_path.clone(),
        state_sha256: saved.state_sha256.clone(),
        metric,
    }
}

/// Mean cross-entropy of `logits` (N, C) against class indices `labels`, with
/// PyTorch's label smoothing: `(1 - ε) * nll + ε / C * Σ_c -log p_c`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> candle_core::Result<Tensor> {
    if smoothing == 0.0 {
        return candle_nn::loss::cross_entropy(logits, labels);
    }
    let log_p = candle_nn::ops::log_softmax(logits, 1)?;
    let nll = candle_nn::loss::nll(&log_p, labels)?;
    let uniform = (log_p.mean(1)?.mean_all()? * -1.0)?;
    (nll * (1.0 - smoothing))? + (uniform * smoothing)?
}

/// Sum of the batch loss x n and the number of correct top-1 predictions.
fn batch_stats(logits: &Tensor, labels: &Tensor, loss: &Tensor) -> candle_core::Result<(f32, u64)> {
    let loss = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let correct = logits.argmax(1)?.eq(labels)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()?;
    Ok((loss, u64::from(correct)))
}

/// Trains (or resumes) one run to its last epoch, or until `stop` is set.
pub fn train(req: &TrainRequest, sink: &mut dyn EpochSink) -> Result<Outcome, TrainError> {
    let cfg = req.config;
    check(cfg).map_err(TrainError::Unsupported)?;
    let ds = req.dataset;
    if ds.train.is_empty() || ds.test.is_empty() {
        return Err(TrainError::Unsupported("the dataset has an empty split".into()));
    }
    for (which, list, split) in [("train", &cfg.train_transforms, &ds.train), ("test", &cfg.test_transforms, &ds.test)]
    {
        augment::split_output_size(list, split)
            .map_err(|e| TrainError::Unsupported(format!("augmentation `{}` ({which}): {e}", cfg.augment)))?;
    }
    // TensorFloat-32 matmuls are a process-wide cuBLAS setting (a no-op without CUDA).
    candle_core::cuda::set_gemm_reduced_precision_f32(cfg.precision == crate::spec::Precision::Tf32);
    let built = models::build(cfg, ds.classes.len(), req.device).map_err(TrainError::Unsupported)?;
    let mut opt = optim::Optimizer::new(cfg.optimizer.clone(), built.trainable.clone());

    let mut state = TrainerState::default();
    if let Some(ck) = req.resume {
        let files = Saved {
            path: ck.path.clone(),
            sha256: ck.sha256.clone(),
            state_path: ck.state_path.clone(),
            state_sha256: ck.state_sha256.clone(),
        };
        state = checkpoint::load(req.home, &files, &built.varmap, &mut opt, req.device)?;
        tracing::info!(run = req.name, epoch = state.epoch, step = state.step, "resuming from {}", ck.path);
    }

    let (train_idx, val_idx) = validation_split(ds.train.len(), cfg.val_split, cfg.seed);
    let n_train = train_idx.len();
    let bs = cfg.batch_size;
    let steps = if cfg.drop_last { n_train / bs } else { n_train.div_ceil(bs) };
    if steps == 0 {
        return Err(TrainError::Unsupported(format!(
            "drop_last with batch_size {bs} leaves no batch of the {n_train} training images"
        )));
    }
    let mut peak = device::PeakMemory::start(req.device);
    let train_pipe = pipeline(&cfg.train_transforms, &ds.train, req.device)?;
    // Built (on a GPU: uploaded) once per run, not per evaluation.
    let test_pipe = pipeline(&cfg.test_transforms, &ds.test, req.device)?;
    let val_pipe = if val_idx.is_empty() { None } else { Some(pipeline(&cfg.test_transforms, &ds.train, req.device)?) };
    tracing::debug!(resident = train_pipe.is_resident(), "training data pipeline");
    let threads = loader::default_threads();
    req.progress.steps_per_epoch.store(steps as i64, Ordering::Relaxed);
    let epochs = cfg.epochs as u64;
    let seed = cfg.seed;

    if state.stopped_early {
        // Killed after the stopping epoch was recorded, before the run was marked done.
        return Ok(Outcome::StoppedEarly { epoch: state.epoch, note: stop_note(cfg, state.epoch) });
    }
    while state.epoch < epochs {
        let e = state.epoch;
        // The lr recorded for the epoch is the one of its first batch.
        let lr = schedule::at(cfg, e as usize, 0, steps).0;
        let mut order = train_idx.clone();
        Rng::derive(&[stream::SHUFFLE, seed, e]).shuffle(&mut order);

        req.progress.step.store(state.step as i64, Ordering::Relaxed);
        let bar = progress_bar(req, e + 1, epochs, steps);
        let mut timing = Timing::default();
        let mut partial = state.partial;
        let start = Instant::now();
        let all_batches = loader::batches(&order, bs, cfg.drop_last);
        let ended = std::thread::scope(|scope| -> Result<Option<Outcome>, TrainError> {
            let todo = all_batches[(state.step as usize).min(steps)..steps].to_vec();
            let mut loader = loader::Loader::start(scope, &train_pipe, &ds.train, todo, seed, e, threads, 2);
            for b in state.step as usize..steps {
                if req.stop.load(Ordering::SeqCst) {
                    bar.finish_and_clear();
                    partial.seconds += start.elapsed().as_secs_f64();
                    state.step = b as u64;
                    state.partial = partial;
                    state.optimizer_steps = opt.steps;
                    let saved = checkpoint::save(req.home, req.run_dir, &built.varmap, &opt, &state)?;
                    sink.interrupted(&record(CheckpointKind::Latest, &saved, &state, None))
                        .map_err(TrainError::Sink)?;
                    return Ok(Some(Outcome::Interrupted));
                }
                let (step_lr, momentum) = schedule::at(cfg, e as usize, b, steps);
                opt.set_lr(step_lr);
                if let Some(m) = momentum {
                    opt.set_momentum(m);
                }
                let t0 = Instant::now();
                let batch =
                    loader.next_batch().ok_or_else(|| TrainError::Unsupported("the data loader stopped".into()))?;
                let n_batch = batch.labels.len();
                let (x, y) = train_pipe.to_tensors(&batch, req.device)?;
                let t1 = Instant::now();
                let mut drop_rng = Rng::derive(&[stream::DROPOUT, seed, e, b as u64]);
                let logits = built.model.forward(&x, true, &mut drop_rng)?;
                let loss = cross_entropy(&logits, &y, cfg.label_smoothing)?;
                let t2 = Instant::now();
                let (loss_v, correct) = batch_stats(&logits, &y, &loss)?;
                if !loss_v.is_finite() {
                    bar.finish_and_clear();
                    return Err(TrainError::Diverged { epoch: e + 1, step: b as u64 + 1, loss: loss_v });
                }
                let t3 = Instant::now();
                let grads = loss.backward()?;
                let t4 = Instant::now();
                opt.step(&grads)?;
                let t5 = Instant::now();
                timing.data += (t1 - t0).as_secs_f64();
                timing.forward += (t2 - t1).as_secs_f64();
                timing.metrics += (t3 - t2).as_secs_f64();
                timing.backward += (t4 - t3).as_secs_f64();
                timing.optimizer += (t5 - t4).as_secs_f64();
                partial.loss_sum += f64::from(loss_v) * n_batch as f64;
                partial.correct += correct;
                partial.seen += n_batch as u64;
                req.progress.step.store(b as i64 + 1, Ordering::Relaxed);
                let secs = partial.seconds + start.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "loss {:.4} acc {:.1}% {:.0} img/s",
                    partial.loss_sum / partial.seen as f64,
                    100.0 * partial.correct as f64 / partial.seen as f64,
                    partial.seen as f64 / secs.max(1e-9)
                ));
                bar.inc(1);
            }
            Ok(None)
        })?;
        if let Some(outcome) = ended {
            return Ok(outcome);
        }
        let train_secs = partial.seconds + start.elapsed().as_secs_f64();
        bar.finish_and_clear();

        let test_start = Instant::now();
        let bs_eval = cfg.batch_size.max(256);
        let val = match &val_pipe {
            None => None,
            Some(pipe) => Some(evaluate_model(
                built.model.as_ref(),
                &ds.train,
                Some(&val_idx),
                pipe,
                bs_eval,
                cfg.seed,
                req.device,
            )?),
        };
        let test = evaluate_model(built.model.as_ref(), &ds.test, None, &test_pipe, bs_eval, cfg.seed, req.device)?;
        peak.sample(req.device);
        let seconds = train_secs + test_start.elapsed().as_secs_f64();
        let rec = EpochRecord {
            epoch: (e + 1) as i64,
            train_loss: partial.loss_sum / partial.seen.max(1) as f64,
            train_acc: 100.0 * partial.correct as f64 / partial.seen.max(1) as f64,
            test_loss: test.loss,
            test_acc: test.top1,
            test_top5: Some(test.top5),
            val_loss: val.as_ref().map(|v| v.loss),
            val_acc: val.as_ref().map(|v| v.top1),
            confusion: Some(test.confusion.clone()),
            lr,
            seconds,
            images_per_sec: partial.seen as f64 / train_secs.max(1e-9),
            peak_memory_bytes: peak.bytes().map(|b| b as i64),
        };
        let metric = rec.metric(cfg.metric);
        let improved = cfg.metric.improves(metric, state.best_metric);
        if improved {
            state.best_metric = Some(metric);
            state.best_epoch = Some(e + 1);
        }
        if let Some(es) = &cfg.early_stop {
            let m = es.metric.unwrap_or(cfg.metric);
            let v = rec.metric(m);
            let better = match state.stop_best {
                None => true,
                Some(b) if m.maximize() => v > b + es.min_delta,
                Some(b) => v < b - es.min_delta,
            };
            if better {
                state.stop_best = Some(v);
                state.since_improved = 0;
            } else {
                state.since_improved += 1;
                state.stopped_early = state.since_improved >= es.patience as u64 && e + 1 < epochs;
            }
        }
        state.epoch = e + 1;
        state.step = 0;
        state.partial = Partial::default();
        state.optimizer_steps = opt.steps;
        let t_ck = Instant::now();
        let saved = checkpoint::save(req.home, req.run_dir, &built.varmap, &opt, &state)?;
        timing.checkpoint = t_ck.elapsed().as_secs_f64();
        timing.test = seconds - train_secs;
        tracing::info!(
            run = req.name,
            epoch = e + 1,
            "time: data {:.2}s, forward {:.2}s, backward {:.2}s, optimizer {:.2}s, metrics {:.2}s, test {:.2}s, checkpoint {:.2}s",
            timing.data,
            timing.forward,
            timing.backward,
            timing.optimizer,
            timing.metrics,
            timing.test,
            timing.checkpoint
        );
        let latest = record(CheckpointKind::Latest, &saved, &state, Some(metric));
        let best = improved.then(|| record(CheckpointKind::Best, &saved, &state, Some(metric)));
        if req.verbose {
            eprintln!(
                "  {} epoch {}/{}: train loss {:.4} acc {:.1}% | test loss {:.4} acc {:.1}% | lr {:.3e} | {:.0} img/s | {:.1}s{}",
                req.name,
                rec.epoch,
                epochs,
                rec.train_loss,
                rec.train_acc,
                rec.test_loss,
                rec.test_acc,
                rec.lr,
                rec.images_per_sec,
                rec.seconds,
                if improved { " *" } else { "" }
            );
        }
        // The record sets the stored step to 0: so must the live progress, or a
        // heartbeat between here and the next epoch would write the old count back.
        req.progress.step.store(0, Ordering::Relaxed);
        sink.epoch_end(&rec, &latest, best.as_ref()).map_err(TrainError::Sink)?;
        if state.stopped_early {
            return Ok(Outcome::StoppedEarly { epoch: state.epoch, note: stop_note(cfg, state.epoch) });
        }
    }
    Ok(Outcome::Finished)
}

fn progress_bar(req: &TrainRequest, epoch: u64, epochs: u64, steps: usize) -> indicatif::ProgressBar {
    if !req.verbose {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps as u64);
    let style = indicatif::ProgressStyle::with_template("  {prefix} [{bar:25}] {pos}/{len} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{} epoch {epoch}/{epochs}", req.name));
    bar
}

/// The training and validation indices of a training set of `n` images: a
/// seeded share `val_split` (at least one image, leaving at least one) is held
/// out. Without a split, the training indices are `0..n` in order.
pub fn validation_split(n: usize, val_split: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    if val_split <= 0.0 || n < 2 {
        return ((0..n).collect(), Vec::new());
    }
    let n_val = ((n as f64 * val_split).round() as usize).clamp(1, n - 1);
    let mut perm: Vec<usize> = (0..n).collect();
    Rng::derive(&[stream::VALIDATION, seed]).shuffle(&mut perm);
    let mut val = perm[..n_val].to_vec();
    let mut train = perm[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    (train, val)
}

/// Where an epoch's time went (logged at info level, for the trainer-overhead
/// benchmark). On the CPU every op is synchronous, so the split is exact.
#[derive(Debug, Default)]
struct Timing {
    /// Batch assembly and augmentation.
    data: f64,
    /// Forward pass and loss.
    forward: f64,
    /// Reading the loss and accuracy back (`to_scalar`).
    metrics: f64,
    /// `loss.backward()`.
    backward: f64,
    /// Optimizer step.
    optimizer: f64,
    /// Test-set evaluation.
    test: f64,
    /// Writing the checkpoint.
    checkpoint: f64,
}

fn stop_note(cfg: &RunConfig, epoch: u64) -> String {
    let es = cfg.early_stop.as_ref().expect("early stopping configured");
    let plural = if es.patience == 1 { "" } else { "s" };
    format!(
        "stopped early after epoch {epoch}: {} did not improve for {} epoch{plural}",
        es.metric.unwrap_or(cfg.metric).as_str(),
        es.patience
    )
}

/// What [`evaluate_model`] measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EvalStats {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 accuracy, percent.
    pub top1: f64,
    /// Top-5 accuracy, percent (100 with fewer than 6 classes).
    pub top5: f64,
    /// Images evaluated.
    pub images: usize,
    /// Confusion matrix: `confusion[true][predicted]` image counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Accuracy (percent) of each class from a confusion matrix (`None` for a
/// class without test images).
pub fn per_class_accuracy(confusion: &[Vec<u64>]) -> Vec<Option<f64>> {
    confusion
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let n: u64 = row.iter().sum();
            (n > 0).then(|| 100.0 * row[i] as f64 / n as f64)
        })
        .collect()
}

/// Evaluates `model` in eval mode on the images of `split` (or its `subset`), through `pipe`
/// (see [`pipeline`]: built once per split, so a GPU upload is not repeated per evaluation).
pub fn evaluate_model(
    model: &dyn models::Classifier,
    split: &data::Split,
    subset: Option<&[usize]>,
    pipe: &loader::Pipeline,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<EvalStats, TrainError> {
    let (mut loss_sum, mut correct, mut top5) = (0.0f64, 0u64, 0u64);
    let mut confusion: Vec<Vec<u64>> = Vec::new();
    let mut rng = Rng::new(0);
    let all: Vec<usize>;
    let indices = match subset {
        Some(s) => s,
        None => {
            all = (0..split.len()).collect();
            &all
        }
    };
    let chunks: Vec<&[usize]> = indices.chunks(batch_size.max(1)).collect();
    std::thread::scope(|scope| -> Result<(), TrainError> {
        let mut batches =
            loader::Loader::start(scope, pipe, split, chunks.clone(), seed, 0, loader::default_threads(), 2);
        for chunk in &chunks {
            let batch =
                batches.next_batch().ok_or_else(|| TrainError::Unsupported("the data loader stopped".into()))?;
            let (x, y) = pipe.to_tensors(&batch, device)?;
            let logits = model.forward(&x.detach(), false, &mut rng)?.detach();
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let (l, c) = batch_stats(&logits, &y, &loss)?;
            loss_sum += f64::from(l) * chunk.len() as f64;
            correct += c;
            // The label is in the top 5 when fewer than 5 logits are larger.
            let own = logits.gather(&y.unsqueeze(1)?, 1)?;
            let above = logits.broadcast_gt(&own)?.to_dtype(DType::U32)?.sum(1)?;
            top5 += u64::from(above.lt(5u32)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()?);
            let classes = logits.dim(1)?;
            if confusion.is_empty() {
                confusion = vec![vec![0; classes]; classes];
            }
            let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
            for (&t, &p) in batch.labels.iter().zip(&predicted) {
                if let Some(cell) = confusion.get_mut(t as usize).and_then(|row| row.get_mut(p as usize)) {
                    *cell += 1;
                }
            }
        }
        Ok(())
    })?;
    let n = indices.len().max(1) as f64;
    Ok(EvalStats {
        loss: loss_sum / n,
        top1: 100.0 * correct as f64 / n,
        top5: 100.0 * top5 as f64 / n,
        images: indices.len(),
        confusion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_smoothing_matches_pytorch() {
        // torch: F.cross_entropy(l, y, label_smoothing=0.1) = 1.6054563522338867, plain 1.5754563808441162
        let l = Tensor::from_vec(vec![2.0f32, 0.5, -1.0, 0.1, 0.2, 3.0], (2, 3), &Device::Cpu).unwrap();
        let y = Tensor::from_vec(vec![0u32, 1], 2, &Device::Cpu).unwrap();
        let smoothed = cross_entropy(&l, &y, 0.1).unwrap().to_scalar::<f32>().unwrap();
        let plain = cross_entropy(&l, &y, 0.0).unwrap().to_scalar::<f32>().unwrap();
        assert!((smoothed - 1.605_456_4).abs() < 1e-6, "{smoothed}");
        assert!((plain - 1.575_456_4).abs() < 1e-6, "{plain}");
    }
}
