//! What training produces, as the trainer hands it over: one [`EpochRecord`]
//! per finished epoch and the [`CheckpointRecord`]s of the files it wrote.
//!
//! These types belong to neither side: the trainer (`train`) creates them and
//! reports them through an [`EpochSink`]; the store (`store`) persists them;
//! `report` reads them back. So `train` depends on this module, not on the
//! store, and the store depends on it, not on the trainer.
//!
//! [`MemorySink`] keeps the records in memory, for tests and for callers that
//! train without a database.

use serde::{Deserialize, Serialize};

/// One finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: i64,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training top-1 accuracy, percent.
    pub train_acc: f64,
    /// Mean test loss.
    pub test_loss: f64,
    /// Test top-1 accuracy, percent.
    pub test_acc: f64,
    /// Test top-5 accuracy, percent (absent in records of older versions).
    pub test_top5: Option<f64>,
    /// Validation loss (with `val_split`).
    pub val_loss: Option<f64>,
    /// Validation top-1 accuracy, percent (with `val_split`).
    pub val_acc: Option<f64>,
    /// Test confusion matrix (rows: true class, columns: predicted). Stored
    /// for the best epoch only (`Store::best_confusion`); never read back here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confusion: Option<Vec<Vec<u64>>>,
    /// Learning rate used in this epoch.
    pub lr: f64,
    /// Wall-clock seconds of the epoch (train + test).
    pub seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
    /// The most memory used so far in the run, in bytes (see `train::device::PeakMemory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<i64>,
}

impl EpochRecord {
    /// The value of one metric.
    pub fn metric(&self, m: crate::spec::Metric) -> f64 {
        use crate::spec::Metric::{TestAcc, TestLoss, TrainAcc, TrainLoss, ValAcc, ValLoss};
        match m {
            TestAcc => self.test_acc,
            TestLoss => self.test_loss,
            TrainAcc => self.train_acc,
            TrainLoss => self.train_loss,
            ValAcc => self.val_acc.unwrap_or(f64::NAN),
            ValLoss => self.val_loss.unwrap_or(f64::NAN),
        }
    }
}

/// Which of a run's two checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// The most recent one, to resume from.
    Latest,
    /// The one with the best metric so far.
    Best,
}

impl CheckpointKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Latest => "latest",
            CheckpointKind::Best => "best",
        }
    }
}

/// A checkpoint as recorded: files relative to the home folder, with checksums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Latest or best.
    pub kind: CheckpointKind,
    /// Finished epochs at the time of the checkpoint.
    pub epoch: i64,
    /// Batches done in the next epoch (non-zero only for a mid-epoch checkpoint).
    pub step: i64,
    /// The weights (safetensors, torchvision names).
    pub path: String,
    /// SHA-256 of the weights file.
    pub sha256: String,
    /// The trainer state (optimizer buffers, position; safetensors).
    pub state_path: String,
    /// SHA-256 of the state file.
    pub state_sha256: String,
    /// The selection metric at that epoch.
    pub metric: Option<f64>,
}

/// Why a sink could not make a record durable. The trainer stops at the first
/// one; the run is then failed by whoever owns it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The record was refused (a database error, or another worker holds the run now).
    #[error("{0}")]
    Refused(String),
    /// A service the record needs (the artifact store) failed: not the run's
    /// doing. The worker stops; the run resumes from its last recorded
    /// checkpoint once the service works again.
    #[error("{0}")]
    Unavailable(String),
    /// Nobody is listening any more (the worker stopped).
    #[error("the record's receiver is gone: {0}")]
    Disconnected(&'static str),
}

/// What the trainer does after an epoch is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Train on.
    Continue,
    /// Stop here (ASHA across runs): the run ends with this note; its latest
    /// checkpoint stays, so that it can resume later.
    Stop(String),
}

/// Receives what the trainer produces; implemented by the worker (the
/// database, through a channel) and by [`MemorySink`]. Each call returns only
/// once the record is durable.
pub trait EpochSink: Send {
    /// An epoch finished; its latest checkpoint (and best, if it improved) is
    /// on disk. The answer says whether to train on.
    ///
    /// # Errors
    /// When the record could not be made durable.
    fn epoch_end(
        &mut self,
        rec: &EpochRecord,
        latest: &CheckpointRecord,
        best: Option<&CheckpointRecord>,
    ) -> Result<Verdict, SinkError>;
    /// Training stopped on request; `latest` is the mid-epoch checkpoint.
    ///
    /// # Errors
    /// When the record could not be made durable.
    fn interrupted(&mut self, latest: &CheckpointRecord) -> Result<(), SinkError>;
}

/// Keeps what the trainer reports in memory, as the worker's database would:
/// every epoch, the latest and the best checkpoint.
#[derive(Debug, Default, Clone)]
pub struct MemorySink {
    /// Every epoch record, in order.
    pub epochs: Vec<EpochRecord>,
    /// The latest checkpoint (after an epoch or an interruption).
    pub latest: Option<CheckpointRecord>,
    /// The best checkpoint so far.
    pub best: Option<CheckpointRecord>,
    /// Whether [`EpochSink::interrupted`] was called.
    pub interrupted: bool,
}

impl EpochSink for MemorySink {
    fn epoch_end(
        &mut self,
        rec: &EpochRecord,
        latest: &CheckpointRecord,
        best: Option<&CheckpointRecord>,
    ) -> Result<Verdict, SinkError> {
        self.epochs.push(rec.clone());
        self.latest = Some(latest.clone());
        if let Some(b) = best {
            self.best = Some(b.clone());
        }
        Ok(Verdict::Continue)
    }

    fn interrupted(&mut self, latest: &CheckpointRecord) -> Result<(), SinkError> {
        self.latest = Some(latest.clone());
        self.interrupted = true;
        Ok(())
    }
}

impl EpochRecord {
    /// The line the worker prints (and logs) after the epoch, `*` marking a new best.
    pub fn summary_line(&self, name: &str, epochs: u64, improved: bool) -> String {
        format!(
            "  {} epoch {}/{epochs}: train loss {:.4} acc {:.1}% | test loss {:.4} acc {:.1}% | lr {:.3e} | {:.0} img/s | {:.1}s{}",
            crate::text::printable(name),
            self.epoch,
            self.train_loss,
            self.train_acc,
            self.test_loss,
            self.test_acc,
            self.lr,
            self.images_per_sec,
            self.seconds,
            if improved { " *" } else { "" }
        )
    }
}
