//! What the store's reads return.

use crate::spec::Reference;
use crate::store::Status;
use serde::Serialize;

/// What submitting one planned run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmitOutcome {
    /// New configuration, queued.
    Queued,
    /// Finished before (maybe by another sweep): not run again.
    AlreadyDone,
    /// Already waiting, running or interrupted: it will run (or resume) once.
    AlreadyQueued,
    /// Had failed; queued again.
    Requeued,
}

/// A run found abandoned by a dead worker (see `Store::recover_stale`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Database id.
    pub id: i64,
    /// Display name (from the first sweep that asked for it).
    pub name: String,
    /// The worker that held it.
    pub worker: String,
    /// Set when the run was failed (its worker died too often) instead of
    /// marked for resumption.
    pub error: Option<String>,
}

/// A run handed to a worker.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    /// Database id.
    pub id: i64,
    /// Configuration hash.
    pub key: String,
    /// The configuration (JSON of [`crate::spec::RunConfig`]).
    pub config_json: String,
    /// Display name (from the first sweep that asked for it).
    pub name: String,
    /// How many times it has been claimed, this time included.
    pub attempts: i64,
    /// The worker that claimed it.
    pub worker: String,
}

impl ClaimedRun {
    /// The lease this claim gave: what every write about the run carries.
    pub fn lease(&self) -> super::Lease {
        super::Lease { run_id: self.id, worker: self.worker.clone(), attempt: self.attempts }
    }
}

/// A run with its summary numbers, as `status`, `results` and `report` show it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    /// Database id.
    pub id: i64,
    /// Configuration hash.
    pub key: String,
    /// Sweep it is shown under.
    pub sweep: String,
    /// Name within that sweep.
    pub name: String,
    /// The configuration as JSON text.
    #[serde(skip)]
    pub config_json: String,
    /// Current status.
    pub status: Status,
    /// Epochs asked for.
    pub epochs_total: i64,
    /// Epochs finished.
    pub epochs_done: i64,
    /// Batches done in the current epoch.
    pub step: i64,
    /// Batches per epoch, once known.
    pub steps_per_epoch: Option<i64>,
    /// Times claimed.
    pub attempts: i64,
    /// The worker holding it.
    pub worker: Option<String>,
    /// Seconds since its worker's last heartbeat.
    pub heartbeat_age: Option<f64>,
    /// Device it trained on.
    pub device: Option<String>,
    /// Error text of a failed run.
    pub error: Option<String>,
    /// Metric that defines best.
    pub metric: String,
    /// Best epoch so far.
    pub best_epoch: Option<i64>,
    /// Best metric value so far.
    pub best_metric: Option<f64>,
    /// Last epoch's training accuracy.
    pub final_train_acc: Option<f64>,
    /// Last epoch's test accuracy.
    pub final_test_acc: Option<f64>,
    /// Last epoch's test loss.
    pub final_test_loss: Option<f64>,
    /// Mean training images per second over its epochs.
    pub images_per_sec: Option<f64>,
    /// Seconds spent training.
    pub train_seconds: f64,
    /// How the run ended, when there is something to say (e.g. stopped early).
    pub note: Option<String>,
    /// The dataset's class names, once the run has started.
    pub classes: Option<Vec<String>>,
    /// Published numbers to compare with.
    pub reference: Option<Reference>,
    /// The most memory the run used, in bytes (GPU memory on a GPU, peak RSS on the CPU).
    pub peak_memory_bytes: Option<i64>,
    /// The last ASHA rung (an epoch) the run reached, in a sweep with `early_terminate`.
    pub rung: Option<i64>,
}

/// A sweep as stored.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    /// Database id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// The file it was submitted from.
    pub source_path: String,
    /// Selection metric.
    pub metric: String,
    /// maximize or minimize.
    pub goal: String,
}
