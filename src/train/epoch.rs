//! The epoch loop: a training pass, the evaluations, the epoch record, the
//! latest checkpoint and, when the metric improves, the best one. Decisions
//! are taken elsewhere ([`super::early_stop`], [`super::schedule`]); this file
//! runs them and hands the records to the [`EpochSink`].

use super::checkpoint::{self, Partial, Saved, TrainerState};
use super::eval::evaluate_with_progress;
use super::loss::{batch_stats, batch_stats_on_device, cross_entropy};
use super::rng::{stream, Rng};
use super::{augment, check, ConfigError, Outcome, TrainError, TrainRequest};
use super::{device, early_stop, loader, models, optim, pipeline, schedule};
use crate::record::{CheckpointKind, CheckpointRecord, EpochRecord, EpochSink, Verdict};
use crate::spec::RunConfig;
use std::sync::atomic::Ordering;
use std::time::Instant;

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

/// Trains (or resumes) one run to its last epoch, or until `stop` is set.
/// On the CPU it trains from a thread of its own pool ([`super::threads`]).
pub fn train(req: &TrainRequest, sink: &mut dyn EpochSink) -> Result<Outcome, TrainError> {
    super::threads::for_device(req.device, || train_here(req, sink))
}

/// On the CPU, where an allocation that fails kills the process (and the queue
/// with it): fails a run whose training step would take more memory than the
/// process may still take, measured on a model of its kind
/// ([`super::probe::footprint`]), before anything of it is built. Its test
/// batches take less ([`super::eval_batch`]); a run of at most
/// [`super::probe::Footprint::AT`]'s larger batch is not measured.
fn fits_in_memory(cfg: &RunConfig, images: usize, classes: usize, hw: (usize, usize)) -> Result<(), TrainError> {
    let Some((batch, footprint)) = super::probe::measured(cfg, classes, hw, Some(images))? else { return Ok(()) };
    // What earlier runs freed is this process's to reuse: not counted as taken.
    crate::memory::release_freed();
    let Some(available) = crate::memory::available() else { return Ok(()) };
    tracing::debug!(?footprint, available, "memory of a training step");
    footprint.verdict(batch, available).map_err(TrainError::WontFit)
}

fn train_here(req: &TrainRequest, sink: &mut dyn EpochSink) -> Result<Outcome, TrainError> {
    let cfg = req.config;
    check(cfg)?;
    let ds = req.dataset;
    if ds.train.is_empty() || ds.test.is_empty() {
        return Err(TrainError::Unsupported("the dataset has an empty split".into()));
    }
    let mut input = [(0, 0); 2];
    for ((which, list, split), hw) in
        [("train", &cfg.train_transforms, &ds.train), ("test", &cfg.test_transforms, &ds.test)]
            .into_iter()
            .zip(&mut input)
    {
        *hw = augment::split_output_size(list, split)
            .map_err(|e| TrainError::Unsupported(format!("augmentation `{}` ({which}): {e}", cfg.augment)))?;
    }
    if req.device.is_cpu() {
        fits_in_memory(cfg, ds.train.len(), ds.classes.len(), input[0])?;
    }
    // TensorFloat-32 matmuls are a process-wide cuBLAS setting (a no-op without CUDA).
    candle_core::cuda::set_gemm_reduced_precision_f32(cfg.precision == crate::spec::Precision::Tf32);
    let built = models::build(cfg, ds.classes.len(), req.device).map_err(ConfigError::from)?;
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

    // The validation images: a folder's own (val/ beside test/), or a seeded share of the
    // training set (`val_split`); not both.
    let (train_idx, val_idx, val_set) = match &ds.val {
        Some(_) if cfg.val_split > 0.0 => {
            return Err(TrainError::Unsupported(format!(
                "the dataset has a validation folder of its own and the run sets val_split = {}: leave out \
                 val_split to validate on the folder, or remove the folder to hold out a share of the training set",
                cfg.val_split
            )))
        }
        Some(val) => ((0..ds.train.len()).collect(), (0..val.len()).collect(), val),
        None => {
            let (t, v) = validation_split(ds.train.len(), cfg.val_split, cfg.seed);
            (t, v, &ds.train)
        }
    };
    if val_idx.is_empty()
        && (cfg.metric.needs_validation()
            || cfg.early_stop.as_ref().and_then(|e| e.metric).is_some_and(crate::spec::Metric::needs_validation))
    {
        return Err(TrainError::Unsupported(
            "the run's metric needs a validation split: set val_split (e.g. 0.1), or give the image folder a val/ \
             folder beside its test/"
                .into(),
        ));
    }
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
    let val_pipe = if val_idx.is_empty() { None } else { Some(pipeline(&cfg.test_transforms, val_set, req.device)?) };
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
            let mut pending: Vec<Pending> = Vec::new();
            for b in state.step as usize..steps {
                if req.stop.load(Ordering::SeqCst) || req.cancel.load(Ordering::SeqCst) {
                    bar.finish_and_clear();
                    flush(&mut pending, &mut partial, e)?;
                    partial.seconds += start.elapsed().as_secs_f64();
                    state.step = b as u64;
                    state.partial = partial;
                    state.optimizer_steps = opt.steps;
                    let saved = checkpoint::save(req.home, req.run_dir, &built.varmap, &opt, &state)?;
                    sink.interrupted(&record(CheckpointKind::Latest, &saved, &state, None))?;
                    return Ok(Some(Outcome::Interrupted));
                }
                let (step_lr, momentum) = schedule::at(cfg, e as usize, b, steps);
                opt.set_lr(step_lr);
                if let Some(m) = momentum {
                    opt.set_momentum(m);
                }
                let t0 = Instant::now();
                let batch = loader.next_batch().ok_or(TrainError::LoaderStopped)?;
                let n_batch = batch.labels.len();
                let (x, y) = train_pipe.to_tensors(&batch, req.device)?;
                timing.data += t0.elapsed().as_secs_f64();
                let mut drop_rng = Rng::derive(&[stream::DROPOUT, seed, e, b as u64]);
                let step = Step { model: built.model.as_ref(), smoothing: cfg.label_smoothing };
                match step.run(&x, &y, &mut drop_rng, &mut opt, &mut timing)? {
                    StepEnd::Updated { loss, correct } => {
                        partial.loss_sum += f64::from(loss) * n_batch as f64;
                        partial.correct += correct;
                        partial.seen += n_batch as u64;
                    }
                    StepEnd::Queued { loss, correct } => {
                        pending.push(Pending { loss, correct, images: n_batch, step: b });
                        if pending.len() >= READ_EVERY || b + 1 == steps {
                            let read = Instant::now();
                            flush(&mut pending, &mut partial, e).inspect_err(|_| bar.finish_and_clear())?;
                            timing.metrics += read.elapsed().as_secs_f64();
                        }
                    }
                    StepEnd::NotFinite(loss) => {
                        bar.finish_and_clear();
                        return Err(TrainError::Diverged { epoch: e + 1, step: b as u64 + 1, loss });
                    }
                }
                req.progress.step.store(b as i64 + 1, Ordering::Relaxed);
                let secs = partial.seconds + start.elapsed().as_secs_f64();
                // (on a GPU the numbers arrive every READ_EVERY steps)
                if partial.seen > 0 {
                    bar.set_message(format!(
                        "loss {:.4} acc {:.1}% {:.0} img/s",
                        partial.loss_sum / partial.seen as f64,
                        100.0 * partial.correct as f64 / partial.seen as f64,
                        partial.seen as f64 / secs.max(1e-9)
                    ));
                }
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
        let bs_eval = super::eval_batch(cfg.batch_size, req.device);
        let val = match &val_pipe {
            None => None,
            Some(pipe) => {
                let bar = eval_bar(req, "validation", e + 1, epochs, val_idx.len());
                let stats = evaluate_with_progress(
                    built.inference.as_ref(),
                    val_set,
                    Some(&val_idx),
                    pipe,
                    bs_eval,
                    cfg.seed,
                    req.device,
                    &|n| bar.inc(n as u64),
                )?;
                bar.finish_and_clear();
                Some(stats)
            }
        };
        let bar = eval_bar(req, "test", e + 1, epochs, ds.test.len());
        let test = evaluate_with_progress(
            built.inference.as_ref(),
            &ds.test,
            None,
            &test_pipe,
            bs_eval,
            cfg.seed,
            req.device,
            &|n| bar.inc(n as u64),
        )?;
        bar.finish_and_clear();
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
        if let Some(rule) = &cfg.early_stop {
            let m = early_stop::watched(rule, cfg.metric);
            let before = early_stop::Counters { best: state.stop_best, since_improved: state.since_improved };
            let d = early_stop::after_epoch(rule, m.maximize(), rec.metric(m), before, e + 1, epochs);
            state.stop_best = d.counters.best;
            state.since_improved = d.counters.since_improved;
            state.stopped_early = d.stop;
        }
        state.epoch = e + 1;
        state.step = 0;
        state.partial = Partial::default();
        state.optimizer_steps = opt.steps;
        let t_ck = Instant::now();
        let saved = checkpoint::save(req.home, req.run_dir, &built.varmap, &opt, &state)?;
        timing.checkpoint = t_ck.elapsed().as_secs_f64();
        timing.test = seconds - train_secs;
        timing.log(req.name, e + 1);
        let latest = record(CheckpointKind::Latest, &saved, &state, Some(metric));
        let best = improved.then(|| record(CheckpointKind::Best, &saved, &state, Some(metric)));
        if req.verbose {
            eprintln!("{}", rec.summary_line(req.name, epochs, improved));
        }
        // The record sets the stored step to 0: so must the live progress, or a
        // heartbeat between here and the next epoch would write the old count back.
        req.progress.step.store(0, Ordering::Relaxed);
        if let Verdict::Stop(note) = sink.epoch_end(&rec, &latest, best.as_ref())? {
            return Ok(Outcome::Halted { epoch: state.epoch, note });
        }
        if state.stopped_early {
            return Ok(Outcome::StoppedEarly { epoch: state.epoch, note: stop_note(cfg, state.epoch) });
        }
    }
    Ok(Outcome::Finished)
}

/// `[2/5] name epoch 3/10`: where the run is in the worker's queue and in its epochs.
fn bar_prefix(req: &TrainRequest, epoch: u64, epochs: u64) -> String {
    let at = req.position.map(|(i, n)| format!("[run {i}/{n}] ")).unwrap_or_default();
    format!("{at}{} epoch {epoch}/{epochs}", crate::text::printable(req.name))
}

fn progress_bar(req: &TrainRequest, epoch: u64, epochs: u64, steps: usize) -> indicatif::ProgressBar {
    if !req.verbose {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps as u64);
    let style = indicatif::ProgressStyle::with_template("  {prefix} [{bar:25}] {pos}/{len} {elapsed}<{eta} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(bar_prefix(req, epoch, epochs));
    bar
}

/// The bar of an evaluation pass over `images` images.
fn eval_bar(req: &TrainRequest, what: &str, epoch: u64, epochs: u64, images: usize) -> indicatif::ProgressBar {
    if !req.verbose {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(images as u64);
    let style =
        indicatif::ProgressStyle::with_template("  {prefix} {msg} [{bar:25}] {pos}/{len} images {elapsed}<{eta}")
            .expect("valid template")
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(bar_prefix(req, epoch, epochs));
    bar.set_message(what.to_owned());
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
    /// `loss.backward_freeing_graph()`.
    backward: f64,
    /// Optimizer step.
    optimizer: f64,
    /// Test-set evaluation.
    test: f64,
    /// Writing the checkpoint.
    checkpoint: f64,
}

/// One optimisation step: forward, loss, the numbers read back, backward, update.
struct Step<'a> {
    model: &'a dyn models::Classifier,
    smoothing: f64,
}

/// How a [`Step`] ended.
enum StepEnd {
    /// The weights were updated; the batch's mean loss and correct predictions.
    Updated { loss: f32, correct: u64 },
    /// The weights were updated; the numbers are still on the device ([`Pending`]).
    Queued { loss: candle_core::Tensor, correct: candle_core::Tensor },
    /// The loss was NaN or infinite; nothing was updated.
    NotFinite(f32),
}

/// Steps between reads of the loss and accuracy on a GPU: each read waits
/// for the device, so the host stops queueing work while it drains (on the
/// CPU every op is synchronous and each step is read at once).
const READ_EVERY: usize = 20;

/// A GPU step whose loss and correct count are not read yet.
struct Pending {
    loss: candle_core::Tensor,
    correct: candle_core::Tensor,
    images: usize,
    /// The step's index in the epoch.
    step: usize,
}

/// Reads the pending steps' numbers at once (one synchronisation) into
/// `partial`, in step order. A non-finite loss ends the run as diverged at
/// its step; the steps queued after it updated the weights, but the run
/// stops here and no checkpoint of them is written (every checkpoint is
/// preceded by a flush).
fn flush(pending: &mut Vec<Pending>, partial: &mut Partial, epoch: u64) -> Result<(), TrainError> {
    if pending.is_empty() {
        return Ok(());
    }
    let losses: Vec<candle_core::Tensor> = pending.iter().map(|p| p.loss.clone()).collect();
    let corrects: Vec<candle_core::Tensor> = pending.iter().map(|p| p.correct.clone()).collect();
    let losses = candle_core::Tensor::stack(&losses, 0)?.to_vec1::<f32>()?;
    // u32 counts (candle's ops) or f32 ones (the CUDA stats kernel), exact either way
    let corrects = candle_core::Tensor::stack(&corrects, 0)?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    for ((p, loss), correct) in pending.iter().zip(losses).zip(corrects) {
        if !loss.is_finite() {
            return Err(TrainError::Diverged { epoch: epoch + 1, step: p.step as u64 + 1, loss });
        }
        partial.loss_sum += f64::from(loss) * p.images as f64;
        partial.correct += correct as u64;
        partial.seen += p.images as u64;
    }
    pending.clear();
    Ok(())
}

impl Step<'_> {
    /// Runs the step on one batch, adding its phases to `timing`.
    fn run(
        &self,
        x: &candle_core::Tensor,
        y: &candle_core::Tensor,
        dropout: &mut Rng,
        opt: &mut optim::Optimizer,
        timing: &mut Timing,
    ) -> Result<StepEnd, TrainError> {
        let t1 = Instant::now();
        let logits = self.model.forward(x, true, dropout)?;
        let loss = cross_entropy(&logits, y, self.smoothing)?;
        let t2 = Instant::now();
        // On a GPU the numbers stay on the device (read every READ_EVERY steps);
        // on the CPU they are read now, and a non-finite loss updates nothing.
        let end = if x.device().is_cpu() {
            let (loss, correct) = batch_stats(&logits, y, &loss)?;
            if loss.is_finite() {
                StepEnd::Updated { loss, correct }
            } else {
                StepEnd::NotFinite(loss)
            }
        } else {
            let (loss, correct) = batch_stats_on_device(&logits, y, &loss)?;
            StepEnd::Queued { loss, correct }
        };
        let t3 = Instant::now();
        timing.forward += (t2 - t1).as_secs_f64();
        timing.metrics += (t3 - t2).as_secs_f64();
        if matches!(end, StepEnd::NotFinite(_)) {
            return Ok(end);
        }
        let grads = loss.backward_freeing_graph()?;
        let t4 = Instant::now();
        opt.step(&grads)?;
        timing.backward += (t4 - t3).as_secs_f64();
        timing.optimizer += t4.elapsed().as_secs_f64();
        Ok(end)
    }
}

impl Timing {
    fn log(&self, run: &str, epoch: u64) {
        tracing::info!(
            run,
            epoch,
            "time: data {:.2}s, forward {:.2}s, backward {:.2}s, optimizer {:.2}s, metrics {:.2}s, test {:.2}s, checkpoint {:.2}s",
            self.data,
            self.forward,
            self.backward,
            self.optimizer,
            self.metrics,
            self.test,
            self.checkpoint
        );
    }
}

fn stop_note(cfg: &RunConfig, epoch: u64) -> String {
    let rule = cfg.early_stop.as_ref().expect("early stopping configured");
    early_stop::note(rule, cfg.metric, epoch)
}
