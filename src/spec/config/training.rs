//! How a run trains and what it keeps: early stopping, retention, precision, the metric.

use super::{fmt, Deserialize, Serialize};

/// Early stopping: after each epoch, a run whose `metric` has not improved by
/// more than `min_delta` on its best value for `patience` epochs stops (done,
/// with a note), like Keras'/Lightning's `EarlyStopping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStop {
    /// The metric watched (default: the sweep's metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// The smallest change that counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
}

/// Checkpoint retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The best and the latest checkpoint (the latest resumes; both are kept).
    #[default]
    BestAndLatest,
    /// Only the best once the run is finished (the latest is needed only while
    /// it trains): one weights file per run for big sweeps.
    Best,
}

impl Keep {
    pub(super) fn is_default(&self) -> bool {
        *self == Keep::BestAndLatest
    }
}

/// The arithmetic of a run's convolutions and matrix products.
///
/// `bf16` follows PyTorch's autocast split: convolutions and linear layers
/// compute in bfloat16 from f32 master weights (cast at each use, so the
/// optimizer updates f32 weights), their outputs return to f32, and
/// BatchNorm, activations, pooling and the loss stay in f32. `tf32` keeps f32
/// tensors and lets cuBLAS use TensorFloat-32 for f32 matmuls (no effect on a CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Plain f32.
    #[default]
    F32,
    /// f32 with TensorFloat-32 matmuls on the GPU.
    Tf32,
    /// bfloat16 convolutions and matmuls, f32 master weights.
    Bf16,
}

impl Precision {
    pub(super) fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

/// The per-epoch metric that decides which epoch is "best".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Top-1 accuracy on the test split (maximised).
    TestAcc,
    /// Mean cross-entropy on the test split (minimised).
    TestLoss,
    /// Top-1 accuracy on the training batches (maximised).
    TrainAcc,
    /// Mean cross-entropy on the training batches (minimised).
    TrainLoss,
    /// Top-1 accuracy on the validation split (`val_split`; maximised).
    ValAcc,
    /// Mean cross-entropy on the validation split (minimised).
    ValLoss,
}

impl Metric {
    /// Whether larger values are better.
    pub fn maximize(self) -> bool {
        matches!(self, Metric::TestAcc | Metric::TrainAcc | Metric::ValAcc)
    }

    /// Whether the metric needs a validation split.
    pub fn needs_validation(self) -> bool {
        matches!(self, Metric::ValAcc | Metric::ValLoss)
    }
    /// `maximize` or `minimize`.
    pub fn goal(self) -> &'static str {
        if self.maximize() {
            "maximize"
        } else {
            "minimize"
        }
    }
    /// The column name used in the database and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::TestAcc => "test_acc",
            Metric::TestLoss => "test_loss",
            Metric::TrainAcc => "train_acc",
            Metric::TrainLoss => "train_loss",
            Metric::ValAcc => "val_acc",
            Metric::ValLoss => "val_loss",
        }
    }
    /// The metric a stored name ([`Metric::as_str`]) stands for.
    pub fn from_name(name: &str) -> Option<Metric> {
        [Metric::TestAcc, Metric::TestLoss, Metric::TrainAcc, Metric::TrainLoss, Metric::ValAcc, Metric::ValLoss]
            .into_iter()
            .find(|m| m.as_str() == name)
    }
    /// Whether `new` is better than `old` under this metric's goal.
    pub fn improves(self, new: f64, old: Option<f64>) -> bool {
        match old {
            None => new.is_finite(),
            Some(old) => {
                if self.maximize() {
                    new > old
                } else {
                    new < old
                }
            }
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
