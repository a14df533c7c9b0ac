//! The trainer: one run's epochs, from data to checkpoints. The only module
//! that uses candle; it knows nothing of SQLite or the command line.
//!
//! Reading order (the data flow of one run):
//! 1. [`data`] loads or generates the images; [`loader`] builds the batches on
//!    threads ahead of the trainer, applying the [`augment`] transforms;
//! 2. [`models`] builds the network with torchvision names and seeded weights;
//! 3. [`optim`] and [`schedule`] update the weights with PyTorch's rules;
//! 4. [`train`] (`epoch.rs`) runs the epochs: a training pass, a test pass, the epoch
//!    record, the latest checkpoint and, when the metric improves, the best one;
//! 5. [`checkpoint`] writes and verifies the files; an [`EpochSink`] (the worker's
//!    database writer, or [`crate::record::MemorySink`]) records each epoch before
//!    the next one starts.
//!
//! Everything random derives from the run seed and the position (epoch, batch,
//! image), so a run resumed from a checkpoint continues exactly as it would have.

pub mod augment;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod early_stop;
mod epoch;
mod eval;
pub mod layers;
pub mod loader;
mod loss;
pub mod models;
pub mod optim;
pub mod probe;
pub mod pth;
pub use crate::rng;
pub mod schedule;
pub mod threads;
pub mod weights;

pub use epoch::{train, validation_split};
pub use eval::{eval_batch, evaluate_model, evaluate_with_progress, per_class_accuracy, EvalStats};
pub use loss::{batch_numbers, cross_entropy, read_numbers, BatchNumbers, QueuedNumbers};

use crate::record::CheckpointRecord;
pub use crate::record::{EpochSink, SinkError};
use crate::spec::RunConfig;
use candle_core::Device;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64};

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
    /// The disk holding the home folder is full (or the quota is used up).
    #[error("the disk is full: cannot write {path}; free space there, then `sweep worker` goes on with the queue")]
    DiskFull {
        /// The file that could not be written.
        path: PathBuf,
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
    Candle(candle_core::Error),
    /// The GPU ran out of memory (see [`device::is_out_of_memory`]).
    #[error("out of memory: {0}")]
    OutOfMemory(candle_core::Error),
    /// On the CPU, the run would take more memory than the machine has
    /// (measured before it starts, [`probe::footprint`]): what it would take
    /// and what fits.
    #[error("out of memory before it starts: {0}")]
    WontFit(String),
    /// The configuration cannot be trained by this build.
    #[error("unsupported configuration: {0}")]
    Config(#[from] ConfigError),
    /// The batch loader's threads ended before the epoch did.
    #[error("the data loader stopped")]
    LoaderStopped,
    /// The epoch could not be recorded (database error or lost ownership).
    #[error("recording the epoch failed: {0}")]
    Sink(#[from] SinkError),
    /// The training thread panicked (a bug, or a value that slipped past validation).
    #[error(
        "the trainer crashed ({0}): a value no check caught, or a bug in sweep; the run is failed, the queue goes on"
    )]
    Panicked(String),
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        if device::is_out_of_memory(&e) {
            TrainError::OutOfMemory(e)
        } else {
            TrainError::Candle(e)
        }
    }
}

/// Why a configuration cannot be trained by this build.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The model cannot be built (architecture, head, freezing, weights).
    #[error(transparent)]
    Model(#[from] models::ModelError),
    /// An augmentation does not fit.
    #[error("augmentation set `{set}` ({which}): {detail}")]
    Augment {
        /// The set's name.
        set: String,
        /// `train` or `test`.
        which: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every epoch finished.
    Finished,
    /// Stopped on request after a batch; a mid-epoch checkpoint was recorded.
    Interrupted,
    /// The sink stopped the run after `epoch` epochs (ASHA); it may resume later.
    Halted {
        /// Epochs trained.
        epoch: u64,
        /// Why, for the run's note.
        note: String,
    },
    /// Early stopping ended the run after `epoch` epochs.
    StoppedEarly {
        /// Epochs trained.
        epoch: u64,
        /// Why, for the run's note.
        note: String,
    },
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
    /// Set to stop after the current batch (Ctrl-C, SIGTERM: the worker stops).
    pub stop: &'a AtomicBool,
    /// Set to stop this run after the current batch (`sweep cancel`: the
    /// worker goes on with the next run). Both end in a mid-epoch checkpoint.
    pub cancel: &'a AtomicBool,
    /// Updated after every batch.
    pub progress: &'a Progress,
    /// Draw a progress bar and print a line per epoch on stderr.
    pub verbose: bool,
    /// This run is the i-th of n the worker has in hand (shown in the bar).
    pub position: Option<(usize, usize)>,
}

/// Why `config` cannot be trained by this build, checked before anything is queued.
///
/// # Errors
/// The first problem found.
pub fn check(config: &RunConfig) -> Result<(), ConfigError> {
    models::check(config)?;
    for (which, list) in [("train", &config.train_transforms), ("test", &config.test_transforms)] {
        // The parameters; sizes are checked against the data when the run starts.
        if let Err(detail) = augment::output_size(list, 4096, 4096) {
            return Err(ConfigError::Augment { set: config.augment.clone(), which, detail });
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

/// Opens the device a user chose; returns it with a description.
///
/// # Errors
/// A GPU that this build cannot use or that does not answer.
pub fn device(choice: crate::spec::DeviceChoice) -> Result<(Device, String), device::DeviceError> {
    self::device::select(choice)
}
