//! The optimiser, the learning-rate schedule and its warmup.

use super::{is_false, Deserialize, Serialize};

/// The optimiser, with PyTorch's update rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerSpec {
    /// `torch.optim.SGD`.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum factor.
        #[serde(default)]
        momentum: f64,
        /// Dampening for momentum.
        #[serde(default)]
        dampening: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
        /// `false`: no weight decay on BatchNorm weights and biases (parameters of
        /// rank 1), as with a second parameter group in PyTorch.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        decay_bn_bias: bool,
        /// Clip the gradients' global L2 norm to this value before each step
        /// (`torch.nn.utils.clip_grad_norm_`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clip_grad_norm: Option<f64>,
    },
    /// `torch.optim.Adam` (L2 penalty added to the gradient).
    Adam {
        /// Learning rate.
        lr: f64,
        /// Coefficients of the running averages.
        #[serde(default = "default_betas")]
        betas: [f64; 2],
        /// Term added to the denominator.
        #[serde(default = "default_eps")]
        eps: f64,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
        /// The AMSGrad variant (the maximum of the second moments).
        #[serde(default, skip_serializing_if = "is_false")]
        amsgrad: bool,
        /// `false`: no weight decay on BatchNorm weights and biases (parameters of
        /// rank 1), as with a second parameter group in PyTorch.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        decay_bn_bias: bool,
        /// Clip the gradients' global L2 norm to this value before each step
        /// (`torch.nn.utils.clip_grad_norm_`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clip_grad_norm: Option<f64>,
    },
    /// `torch.optim.AdamW` (decoupled weight decay).
    Adamw {
        /// Learning rate.
        lr: f64,
        /// Coefficients of the running averages.
        #[serde(default = "default_betas")]
        betas: [f64; 2],
        /// Term added to the denominator.
        #[serde(default = "default_eps")]
        eps: f64,
        /// Decoupled weight decay.
        #[serde(default = "default_adamw_wd")]
        weight_decay: f64,
        /// The AMSGrad variant (the maximum of the second moments).
        #[serde(default, skip_serializing_if = "is_false")]
        amsgrad: bool,
        /// `false`: no weight decay on BatchNorm weights and biases (parameters of
        /// rank 1), as with a second parameter group in PyTorch.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        decay_bn_bias: bool,
        /// Clip the gradients' global L2 norm to this value before each step
        /// (`torch.nn.utils.clip_grad_norm_`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clip_grad_norm: Option<f64>,
    },
}

fn default_pct_start() -> f64 {
    0.3
}
fn default_div_factor() -> f64 {
    25.0
}
fn default_final_div_factor() -> f64 {
    1e4
}
fn default_base_momentum() -> f64 {
    0.85
}
fn default_max_momentum() -> f64 {
    0.95
}

/// Linear warmup before the schedule (PyTorch's `LinearLR` then the schedule,
/// chained with `SequentialLR`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    /// Length in epochs (or in optimizer steps with `lr_interval = "step"`).
    pub iters: usize,
    /// The first lr is base lr x start_factor, rising linearly to the base lr.
    #[serde(default = "default_warmup_start")]
    pub start_factor: f64,
}

fn default_warmup_start() -> f64 {
    0.1
}

/// How often the schedule advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrInterval {
    /// Once per epoch: milestones, step sizes, t_max and warmup count epochs.
    #[default]
    Epoch,
    /// After every optimizer step: they count steps.
    Step,
}

impl LrInterval {
    pub(super) fn is_epoch(&self) -> bool {
        *self == LrInterval::Epoch
    }
}

fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_adamw_wd() -> f64 {
    0.01
}

impl OptimizerSpec {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerSpec::Sgd { lr, .. } | OptimizerSpec::Adam { lr, .. } | OptimizerSpec::Adamw { lr, .. } => *lr,
        }
    }

    /// Whether BatchNorm weights and biases (rank-1 parameters) are decayed.
    pub fn decay_bn_bias(&self) -> bool {
        match self {
            OptimizerSpec::Sgd { decay_bn_bias, .. }
            | OptimizerSpec::Adam { decay_bn_bias, .. }
            | OptimizerSpec::Adamw { decay_bn_bias, .. } => *decay_bn_bias,
        }
    }

    /// The maximum global gradient norm, if clipping.
    pub fn clip_grad_norm(&self) -> Option<f64> {
        match self {
            OptimizerSpec::Sgd { clip_grad_norm, .. }
            | OptimizerSpec::Adam { clip_grad_norm, .. }
            | OptimizerSpec::Adamw { clip_grad_norm, .. } => *clip_grad_norm,
        }
    }
}

/// Learning-rate schedule, stepped once per epoch as PyTorch's epoch schedulers are:
/// the lr of (0-based) epoch `e` is `lr_at(e)`; milestones count completed epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum ScheduleSpec {
    /// The base lr throughout.
    Constant,
    /// `MultiStepLR`: from each milestone on, base lr x factor (or x gamma^k).
    Multistep {
        /// Epoch counts at which the lr changes, increasing.
        milestones: Vec<usize>,
        /// Factor of the base lr from each milestone on (same length as milestones).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        factors: Option<Vec<f64>>,
        /// Multiplicative decay at each milestone (when `factors` is absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gamma: Option<f64>,
    },
    /// `StepLR`: x gamma every `step_size` epochs.
    Step {
        /// Epochs between decays.
        step_size: usize,
        /// Multiplicative decay.
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// `OneCycleLR` (cosine annealing, two phases), always stepped per batch over
    /// the whole run; cycles SGD's momentum (Adam's beta1) inversely, as PyTorch
    /// does by default.
    Onecycle {
        /// Peak learning rate (default: the optimizer's lr).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_lr: Option<f64>,
        /// Share of the steps spent increasing the lr.
        #[serde(default = "default_pct_start")]
        pct_start: f64,
        /// Initial lr = max_lr / div_factor.
        #[serde(default = "default_div_factor")]
        div_factor: f64,
        /// Final lr = initial lr / final_div_factor.
        #[serde(default = "default_final_div_factor")]
        final_div_factor: f64,
        /// Cycle momentum (beta1) between `max_momentum` and `base_momentum`.
        #[serde(default = "yes")]
        cycle_momentum: bool,
        /// Momentum at the lr peak.
        #[serde(default = "default_base_momentum")]
        base_momentum: f64,
        /// Momentum at the start and the end.
        #[serde(default = "default_max_momentum")]
        max_momentum: f64,
    },
    /// `CosineAnnealingLR` over `t_max` epochs (default: the run's epochs).
    Cosine {
        /// Half period in epochs; 0 means the run's epoch count.
        #[serde(default)]
        t_max: usize,
        /// Minimum learning rate.
        #[serde(default)]
        eta_min: f64,
    },
}

fn default_gamma() -> f64 {
    0.1
}
