//! A timed probe of one run's training speed on this machine (`sweep plan`'s
//! estimates when nothing like it was trained before): the run's model on
//! its device, a few optimiser steps on random images of the run's input
//! size. Pretrained weights are not loaded (they do not change the time).

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

/// Times `steps` optimiser steps of `cfg`'s model (after one untimed warm-up)
/// on a batch of at most `max_batch` random images at the run's input size
/// (CIFAR's, SVHN's and the synthetic 32x32, MNIST's 28x28, STL-10's 96x96,
/// through its train transforms).
///
/// # Errors
/// The model cannot be built, or a step fails (e.g. out of memory).
pub fn probe(cfg: &RunConfig, device: &Device, max_batch: usize, steps: usize) -> Result<Pace, TrainError> {
    // From the threads the trainer runs on ([`super::threads`]).
    super::threads::for_device(device, || probe_here(cfg, device, max_batch, steps))
}

fn probe_here(cfg: &RunConfig, device: &Device, max_batch: usize, steps: usize) -> Result<Pace, TrainError> {
    let mut cfg = cfg.clone();
    cfg.pretrained = None;
    let classes = match cfg.dataset.name {
        DatasetName::Cifar100 => 100,
        _ => 10,
    };
    let side = match cfg.dataset.name {
        DatasetName::Mnist | DatasetName::FashionMnist => 28,
        DatasetName::Stl10 => 96,
        _ => 32,
    };
    let (h, w) = augment::output_size(&cfg.train_transforms, side, side).map_err(|detail| ConfigError::Augment {
        set: cfg.augment.clone(),
        which: "train",
        detail,
    })?;
    let built = models::build(&cfg, classes, device).map_err(ConfigError::from)?;
    let mut opt = optim::Optimizer::new(cfg.optimizer.clone(), built.trainable.clone());
    let n = cfg.batch_size.min(max_batch).max(1);
    let x = Tensor::randn(0f32, 1f32, (n, 3, h, w), device)?;
    let labels: Vec<u32> = (0..n as u32).map(|i| i % classes as u32).collect();
    let y = Tensor::new(labels.as_slice(), device)?;
    let mut rng = Rng::derive(&[0x7072_6f62]);
    let mut step = || -> Result<(), TrainError> {
        let logits = built.model.forward(&x, true, &mut rng)?;
        let loss = cross_entropy(&logits, &y, 0.0)?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        // Wait for the device (a GPU queues work).
        loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok(())
    };
    step()?;
    let t = Instant::now();
    for _ in 0..steps.max(1) {
        step()?;
    }
    let per_image = t.elapsed().as_secs_f64() / (steps.max(1) * n) as f64;
    Ok(Pace { train: per_image, test: per_image / 3.0 })
}
