//! The optimisers' fused step: every parameter's weight and state updated in
//! place by one pass of our own code per buffer, instead of candle's six (SGD
//! with momentum) to twelve (Adam) ops per parameter, each allocating a fresh
//! tensor. The rules are `torch.optim`'s, as `optim.rs` writes them with
//! candle's ops; [`sgd_step_all`] and [`adam_step_all`] take the parameters
//! of one device to its version: `optim_cpu.rs` on the CPU (the same
//! arithmetic as candle's ops, to the bit), `optim_cuda.rs` on CUDA with
//! `--features cudnn` (one kernel launch for all parameters).

use candle_core::{bail, Device, Result, Tensor};

/// One parameter of an SGD step.
pub struct SgdParam<'a> {
    /// The weight (updated in place).
    pub w: &'a Tensor,
    /// Its gradient.
    pub g: &'a Tensor,
    /// The momentum buffer (updated in place), when momentum is not zero.
    pub buf: Option<&'a Tensor>,
    /// Weight decay for this parameter.
    pub weight_decay: f64,
    /// The buffer's first step (its values are ignored).
    pub first: bool,
}

/// One parameter of an Adam or AdamW step.
pub struct AdamParam<'a> {
    /// The weight (updated in place).
    pub w: &'a Tensor,
    /// Its gradient.
    pub g: &'a Tensor,
    /// First moment (updated in place).
    pub m: &'a Tensor,
    /// Second moment (updated in place).
    pub v: &'a Tensor,
    /// AMSGrad's running maximum of `v` (updated in place).
    pub vmax: Option<&'a Tensor>,
    /// Weight decay for this parameter.
    pub weight_decay: f64,
    /// The state's first step (its values are ignored).
    pub first: bool,
}

/// The length of `w`, checked against the other buffers of its row.
pub(super) fn length(w: &Tensor, others: &[Option<&Tensor>]) -> Result<usize> {
    let n = w.elem_count();
    if others.iter().flatten().any(|t| t.elem_count() != n) {
        bail!("optimiser: a gradient or state of another size than its parameter {:?}", w.dims());
    }
    Ok(n)
}

/// Whether the fused step runs on `device` (f32 parameters): always on the
/// CPU; on CUDA with `--features cudnn` and `SWEEP_GPU_KERNELS=cudnn`.
pub fn fused_step_on(device: &Device) -> bool {
    device.is_cpu() || super::kernels::use_cudnn(device)
}

/// `torch.optim.SGD`'s step of every parameter in `params` (f32, on one
/// device, contiguous), in place.
pub fn sgd_step_all(params: &[SgdParam<'_>], lr: f64, momentum: f64, dampening: f64, nesterov: bool) -> Result<()> {
    let Some(first) = params.first() else { return Ok(()) };
    if params.iter().any(|p| p.buf.is_some() != first.buf.is_some()) {
        bail!("optimiser: momentum buffers for some parameters only");
    }
    match first.w.device() {
        Device::Cpu => super::optim_cpu::sgd_step(params, lr, momentum, dampening, nesterov),
        #[cfg(feature = "cudnn")]
        Device::Cuda(_) => super::optim_cuda::sgd_step_all(params, lr, momentum, dampening, nesterov),
        d => bail!("optimiser: no fused step on {:?}", d.location()),
    }
}

/// Adam's (`decoupled`: AdamW's) step of every parameter in `params` (f32,
/// on one device, contiguous), in place; `step_size` is `lr / (1 - b1^t)`,
/// `bc2_sqrt` `sqrt(1 - b2^t)`.
#[allow(clippy::too_many_arguments)]
pub fn adam_step_all(
    params: &[AdamParam<'_>],
    betas: (f64, f64),
    lr: f64,
    step_size: f64,
    bc2_sqrt: f64,
    eps: f64,
    decoupled: bool,
    amsgrad: bool,
) -> Result<()> {
    let Some(first) = params.first() else { return Ok(()) };
    if params.iter().any(|p| p.vmax.is_some() != amsgrad) {
        bail!("optimiser: AMSGrad's maximum missing for some parameters");
    }
    match first.w.device() {
        Device::Cpu => super::optim_cpu::adam_step(params, betas, lr, step_size, bc2_sqrt, eps, decoupled),
        #[cfg(feature = "cudnn")]
        Device::Cuda(_) => {
            super::optim_cuda::adam_step_all(params, betas, lr, step_size, bc2_sqrt, eps, decoupled, amsgrad)
        }
        d => bail!("optimiser: no fused step on {:?}", d.location()),
    }
}
