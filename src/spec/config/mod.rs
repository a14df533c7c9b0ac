//! The canonical configuration of one run: every field filled in.
//!
//! A [`RunConfig`] is what the trainer reads, what the queue stores (as JSON) and
//! what the run's key is a hash of (see [`super::key`]). The types here are
//! the single typed home of every hyper-parameter; the sweep file (see
//! [`super::file`]) is merged into them field by field.
//!
//! **Hash stability.** A field added after runs have been recorded must not change
//! the key of configs that do not use it: give it a default and
//! `#[serde(default, skip_serializing_if = "…is default…")]`.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

mod data;
mod model;
mod optim;
mod training;
mod transform;

pub use data::*;
pub use model::*;
pub use optim::*;
pub use training::*;
pub use transform::*;

/// Everything a run needs to be trained, with all defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Which images to train and test on.
    pub dataset: DatasetSpec,
    /// Backbone architecture, e.g. `smallcnn` (see [`crate::train::models`]).
    pub model: String,
    /// `"imagenet"` or a weights file; `None` trains from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
    /// Which backbone parameters get no gradient update.
    #[serde(default)]
    pub freeze: Freeze,
    /// Frozen BatchNorm layers also keep their running statistics (eval mode in
    /// training). Off by default, as with `requires_grad = False` in PyTorch.
    #[serde(default, skip_serializing_if = "is_false")]
    pub freeze_bn: bool,
    /// The ResNet/DenseNet stem: `imagenet` (7x7/2 conv + max-pool) or `cifar`
    /// (3x3/1 conv, no max-pool).
    #[serde(default, skip_serializing_if = "Stem::is_imagenet")]
    pub stem: Stem,
    /// The classification head that replaces the backbone's last layer.
    #[serde(default)]
    pub head: Head,
    /// Name of the augmentation set (resolved into `train_transforms`/`test_transforms`).
    pub augment: String,
    /// Transforms applied to each training image, in order.
    pub train_transforms: Vec<Transform>,
    /// Transforms applied to each test image, in order.
    pub test_transforms: Vec<Transform>,
    /// Images per optimisation step.
    pub batch_size: usize,
    /// Number of passes over the training set.
    pub epochs: usize,
    /// Optimiser and its hyper-parameters.
    pub optimizer: OptimizerSpec,
    /// Learning-rate schedule.
    pub schedule: ScheduleSpec,
    /// Linear warmup before the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
    /// Which checkpoints a finished run keeps. Not part of the run's key: it
    /// does not change the numbers.
    #[serde(default, skip_serializing_if = "Keep::is_default")]
    pub keep: Keep,
    /// Share of the training set held out as a validation split (seeded by the
    /// run seed), evaluated every epoch; `metric = "val_acc"` then chooses the
    /// best epoch on it. 0: no split (the term report chose on the test set).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub val_split: f64,
    /// Drop the last training batch of an epoch when it is short
    /// (`DataLoader(drop_last=True)`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_last: bool,
    /// Stop when a metric has not improved for `patience` epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<EarlyStop>,
    /// Label smoothing of the training loss (`CrossEntropyLoss(label_smoothing=…)`);
    /// the test loss is always plain cross-entropy.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// Whether the schedule advances per epoch or per optimizer step.
    #[serde(default, skip_serializing_if = "LrInterval::is_epoch")]
    pub lr_interval: LrInterval,
    /// Arithmetic of convolutions and matrix products: `f32` (default),
    /// `tf32` (f32 with TensorFloat-32 matmuls on NVIDIA GPUs) or `bf16`.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// The metric whose best epoch is kept as the best checkpoint.
    pub metric: Metric,
    /// Seed for initialisation, shuffling, augmentation and dropout.
    pub seed: u64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_false(b: &bool) -> bool {
    !*b
}
