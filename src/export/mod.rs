//! `sweep export`: the recorded runs in the formats of other tools, written
//! from the same [`Comparison`] a report reads, never from live training.
//!
//! - [`tensorboard`]: one folder per run with a TensorBoard event file
//!   (TFRecord framing, `Event`/`Summary` protocol buffers written by hand):
//!   every epoch's scalars, and the hparams plugin's session records, so
//!   TensorBoard's HPARAMS tab lists the runs with their parameters.
//! - [`mlflow`]: an MLflow file store (`MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri DIR`):
//!   an experiment per sweep, a run per run with its parameters, per-epoch
//!   metrics, tags, and the best checkpoint as an artifact.
//!
//! Exporting again writes the same files (names come from the run keys), so
//! an export folder can be refreshed in place.

pub mod mlflow;
mod proto;
pub mod tensorboard;

use crate::report::{Comparison, RunReport};
use std::path::{Path, PathBuf};

/// An export failure.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Shorthand for this module's results.
pub type Result<T> = std::result::Result<T, ExportError>;

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io { path: path.to_owned(), source }
}

/// What the store knows of a run beyond its report: when each epoch was
/// recorded (Unix seconds, in order) and where its best checkpoint is.
#[derive(Debug, Clone, Default)]
pub struct RunFacts {
    /// Each epoch's record time.
    pub times: Vec<f64>,
    /// The best checkpoint's weights file (absolute), if it has one.
    pub best_checkpoint: Option<PathBuf>,
    /// The run's `config.json` (absolute), if it was written.
    pub config_file: Option<PathBuf>,
}

/// [`RunFacts`] by run id.
pub type Facts = std::collections::HashMap<i64, RunFacts>;

/// A run's start: its first epoch's record time less that epoch's duration.
pub(crate) fn start_time(r: &RunReport, f: &RunFacts) -> f64 {
    f.times.first().map_or(0.0, |t| t - r.epochs.first().map_or(0.0, |e| e.seconds))
}

/// Every metric of an epoch under its exported name (losses, accuracies in
/// percent, the lr, speed and time); validation and top-5 only when recorded.
pub fn epoch_metrics(e: &crate::record::EpochRecord) -> Vec<(&'static str, f64)> {
    let mut m = vec![
        ("train_loss", e.train_loss),
        ("train_acc", e.train_acc),
        ("test_loss", e.test_loss),
        ("test_acc", e.test_acc),
    ];
    if let Some(v) = e.test_top5 {
        m.push(("test_top5", v));
    }
    if let Some(v) = e.val_loss {
        m.push(("val_loss", v));
    }
    if let Some(v) = e.val_acc {
        m.push(("val_acc", v));
    }
    m.extend([("lr", e.lr), ("img_per_s", e.images_per_sec), ("seconds", e.seconds)]);
    m
}

/// A folder name for a run: its sweep, name and id, with anything but
/// letters, digits, `-`, `_`, `.`, `=` and `,` replaced by `_`.
pub fn run_folder(r: &RunReport) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.=,".contains(c) { c } else { '_' }).collect()
    };
    format!("{}-{}-{}", clean(&r.row.sweep), clean(&r.row.name), &r.row.key[..10])
}

/// What an export wrote.
#[derive(Debug, Default)]
pub struct Written {
    /// Runs exported.
    pub runs: usize,
    /// Epoch records exported.
    pub epochs: usize,
    /// Files written.
    pub files: usize,
}

/// Runs that have at least one epoch: a queued run has nothing to show.
pub fn exportable(cmp: &Comparison) -> impl Iterator<Item = &RunReport> {
    cmp.runs.iter().filter(|r| !r.epochs.is_empty())
}
