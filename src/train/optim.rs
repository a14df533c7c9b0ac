//! Optimisers with PyTorch's update rules, and their state for checkpoints.
//!
//! candle-nn's SGD has no momentum and its AdamW no state export, so sweep has
//! its own. Parameters without a gradient in a step are skipped (as PyTorch skips
//! `p.grad is None`). The state is a map of named tensors
//! (`momentum_buffer.<param>`, `exp_avg.<param>`, `exp_avg_sq.<param>`,
//! `max_exp_avg_sq.<param>` with AMSGrad) plus the step count, saved in the
//! checkpoint's state file. Options: AMSGrad, gradient clipping by global norm
//! (`clip_grad_norm_`), and no weight decay on rank-1 parameters (biases and
//! BatchNorm weights) with `decay_bn_bias = false`. Parity with `torch.optim` is
//! tested on fixtures written by `scripts/optim_fixtures.py`.

use crate::spec::OptimizerSpec;
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use std::collections::HashMap;

/// An optimiser over named parameters.
pub struct Optimizer {
    spec: OptimizerSpec,
    params: Vec<(String, Var)>,
    state: HashMap<String, Tensor>,
    /// Steps taken (Adam's bias correction uses it).
    pub steps: u64,
    lr: f64,
}

impl Optimizer {
    /// An optimiser for `params` (name, variable).
    pub fn new(spec: OptimizerSpec, params: Vec<(String, Var)>) -> Self {
        let lr = spec.lr();
        Optimizer { spec, params, state: HashMap::new(), steps: 0, lr }
    }

    /// Sets the learning rate for the following steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Sets SGD's momentum or Adam's beta1 for the following steps (onecycle's
    /// momentum cycling).
    pub fn set_momentum(&mut self, m: f64) {
        match &mut self.spec {
            OptimizerSpec::Sgd { momentum, .. } => *momentum = m,
            OptimizerSpec::Adam { betas, .. } | OptimizerSpec::Adamw { betas, .. } => betas[0] = m,
        }
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// The optimiser's state tensors, by name.
    pub fn state(&self) -> &HashMap<String, Tensor> {
        &self.state
    }

    /// Restores state saved by [`Optimizer::state`].
    pub fn load_state(&mut self, state: HashMap<String, Tensor>, steps: u64) {
        self.state = state;
        self.steps = steps;
    }

    /// The factor `clip_grad_norm_` scales every gradient by: `max_norm / (norm +
    /// 1e-6)`, at most 1, where `norm` is the L2 norm of all gradients together.
    fn clip_factor(&self, grads: &GradStore, max_norm: f64) -> Result<f64> {
        let mut sum = 0f64;
        for (_, var) in &self.params {
            if let Some(g) = grads.get(var.as_tensor()) {
                sum += if g.device().is_cpu() && g.dtype() == candle_core::DType::F32 {
                    crate::train::layers::sum_of_squares(g)?
                } else {
                    g.detach().to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?
                };
            }
        }
        Ok((max_norm / (sum.sqrt() + 1e-6)).min(1.0))
    }

    /// One update from `grads` (after clipping them, if configured).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let fused = self.params.first().is_some_and(|(_, v)| crate::train::layers::fused_step_on(v.device()))
            && self.params.iter().all(|(_, v)| v.dtype() == candle_core::DType::F32);
        self.step_by(grads, fused)
    }

    /// [`Optimizer::step`] by the fused step or by candle's ops.
    fn step_by(&mut self, grads: &GradStore, fused: bool) -> Result<()> {
        self.steps += 1;
        let clip = match self.spec.clip_grad_norm() {
            Some(max_norm) => Some(self.clip_factor(grads, max_norm)?),
            None => None,
        };
        if fused {
            self.fused_step(grads, clip)
        } else {
            self.candle_step(grads, clip)
        }
    }

    /// [`Optimizer::step`] by candle's ops (CUDA with `SWEEP_GPU_KERNELS=generic`,
    /// parameters that are not f32): fresh tensors for the new weight and state.
    fn candle_step(&mut self, grads: &GradStore, clip: Option<f64>) -> Result<()> {
        let lr = self.lr;
        let decay_bn_bias = self.spec.decay_bn_bias();
        for (name, var) in &self.params {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            // Detached: an op on the Var's tensor is recorded for autograd, and a
            // momentum buffer built from it would chain every earlier step's graph
            // (memory grew by about 1 GB every few seconds before this). Everything
            // computed below from these two is graph-free too.
            let grad = match clip {
                Some(f) => (grad.detach() * f)?,
                None => grad.detach(),
            };
            let grad = &grad;
            let p = &var.as_tensor().detach();
            // Rank-1 parameters are biases and BatchNorm weights.
            let decays = decay_bn_bias || var.rank() > 1;
            match self.spec {
                OptimizerSpec::Sgd { momentum, dampening, nesterov, weight_decay, .. } => {
                    let weight_decay = if decays { weight_decay } else { 0.0 };
                    let mut d_p = if weight_decay == 0.0 { grad.clone() } else { (grad + (p * weight_decay)?)? };
                    if momentum != 0.0 {
                        let key = format!("momentum_buffer.{name}");
                        let buf = match self.state.get(&key) {
                            None => d_p.clone(),
                            Some(buf) => ((buf * momentum)? + (&d_p * (1.0 - dampening))?)?,
                        };
                        d_p = if nesterov { (&d_p + (&buf * momentum)?)? } else { buf.clone() };
                        self.state.insert(key, buf);
                    }
                    var.set(&(p - (d_p * lr)?)?)?;
                }
                OptimizerSpec::Adam { betas, eps, weight_decay, amsgrad, .. }
                | OptimizerSpec::Adamw { betas, eps, weight_decay, amsgrad, .. } => {
                    let weight_decay = if decays { weight_decay } else { 0.0 };
                    let decoupled = matches!(self.spec, OptimizerSpec::Adamw { .. });
                    let mut p = p.clone();
                    let g = if weight_decay != 0.0 && !decoupled {
                        (grad + (&p * weight_decay)?)?
                    } else {
                        if weight_decay != 0.0 {
                            p = (&p * (1.0 - lr * weight_decay))?;
                        }
                        grad.clone()
                    };
                    let (b1, b2) = (betas[0], betas[1]);
                    let m_key = format!("exp_avg.{name}");
                    let v_key = format!("exp_avg_sq.{name}");
                    let m = match self.state.get(&m_key) {
                        None => (&g * (1.0 - b1))?,
                        Some(m) => ((m * b1)? + (&g * (1.0 - b1))?)?,
                    };
                    let g2 = g.sqr()?;
                    let v = match self.state.get(&v_key) {
                        None => (&g2 * (1.0 - b2))?,
                        Some(v) => ((v * b2)? + (&g2 * (1.0 - b2))?)?,
                    };
                    let t = self.steps as i32;
                    let bc1 = 1.0 - b1.powi(t);
                    let bc2 = 1.0 - b2.powi(t);
                    let second = if amsgrad {
                        let key = format!("max_exp_avg_sq.{name}");
                        let max = match self.state.get(&key) {
                            None => v.clone(),
                            Some(prev) => prev.maximum(&v)?,
                        };
                        self.state.insert(key, max.clone());
                        max
                    } else {
                        v.clone()
                    };
                    let denom = ((second.sqrt()? / bc2.sqrt())? + eps)?;
                    let update = ((&m / denom)? * (lr / bc1))?;
                    var.set(&(p - update)?)?;
                    self.state.insert(m_key, m);
                    self.state.insert(v_key, v);
                }
            }
        }
        Ok(())
    }

    /// [`Optimizer::step`] on the CPU, and on CUDA with `SWEEP_GPU_KERNELS=cudnn`:
    /// the same rule for every parameter with a gradient, the weights and the
    /// state updated in place (`layers::optim_step`: one pass per buffer on
    /// the CPU, to the bit what [`Optimizer::candle_step`] computes; one kernel
    /// launch on CUDA), instead of six to twelve candle ops and fresh tensors
    /// per parameter.
    fn fused_step(&mut self, grads: &GradStore, clip: Option<f64>) -> Result<()> {
        use crate::train::layers::{adam_step_all, sgd_step_all, AdamParam, SgdParam};
        let lr = self.lr;
        let decay_bn_bias = self.spec.decay_bn_bias();
        // (name, weight, gradient made contiguous, decays)
        let mut rows: Vec<(&str, &Var, Tensor, bool)> = Vec::new();
        for (name, var) in &self.params {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let grad = match clip {
                Some(f) => (grad.detach() * f)?,
                None => grad.detach().contiguous()?,
            };
            rows.push((name, var, grad, decay_bn_bias || var.rank() > 1));
        }
        let states = &mut self.state;
        // A state tensor of its own (zeros: `first` makes the kernel ignore it).
        let mut state = |key: String, like: &Tensor| -> Result<(Tensor, bool)> {
            match states.get(&key) {
                Some(t) => Ok((t.clone(), false)),
                None => {
                    let t = like.detach().zeros_like()?;
                    states.insert(key, t.clone());
                    Ok((t, true))
                }
            }
        };
        match self.spec {
            OptimizerSpec::Sgd { momentum, dampening, nesterov, weight_decay, .. } => {
                let mut bufs = Vec::new();
                for (name, var, _, _) in &rows {
                    bufs.push(if momentum == 0.0 {
                        None
                    } else {
                        Some(state(format!("momentum_buffer.{name}"), var)?)
                    });
                }
                let params: Vec<SgdParam<'_>> = rows
                    .iter()
                    .zip(&bufs)
                    .map(|((_, var, grad, decays), buf)| SgdParam {
                        w: var.as_tensor(),
                        g: grad,
                        buf: buf.as_ref().map(|(b, _)| b),
                        weight_decay: if *decays { weight_decay } else { 0.0 },
                        first: buf.as_ref().is_some_and(|(_, f)| *f),
                    })
                    .collect();
                sgd_step_all(&params, lr, momentum, dampening, nesterov)
            }
            OptimizerSpec::Adam { betas, eps, weight_decay, amsgrad, .. }
            | OptimizerSpec::Adamw { betas, eps, weight_decay, amsgrad, .. } => {
                let decoupled = matches!(self.spec, OptimizerSpec::Adamw { .. });
                let mut moments = Vec::new();
                for (name, var, _, _) in &rows {
                    let (m, first) = state(format!("exp_avg.{name}"), var)?;
                    let (v, _) = state(format!("exp_avg_sq.{name}"), var)?;
                    let vmax = if amsgrad { Some(state(format!("max_exp_avg_sq.{name}"), var)?.0) } else { None };
                    moments.push((m, v, vmax, first));
                }
                let params: Vec<AdamParam<'_>> = rows
                    .iter()
                    .zip(&moments)
                    .map(|((_, var, grad, decays), (m, v, vmax, first))| AdamParam {
                        w: var.as_tensor(),
                        g: grad,
                        m,
                        v,
                        vmax: vmax.as_ref(),
                        weight_decay: if *decays { weight_decay } else { 0.0 },
                        first: *first,
                    })
                    .collect();
                let t = self.steps as i32;
                let (bc1, bc2) = (1.0 - betas[0].powi(t), 1.0 - betas[1].powi(t));
                adam_step_all(&params, (betas[0], betas[1]), lr, lr / bc1, bc2.sqrt(), eps, decoupled, amsgrad)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn run(spec: OptimizerSpec, steps: usize) -> Vec<f32> {
        // Loss = sum(w * c) with a fixed c, so each gradient is c.
        let w = Var::from_vec(vec![1.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let c = Tensor::new(&[0.5f32, -1.0], &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(spec, vec![("w".into(), w.clone())]);
        for _ in 0..steps {
            let loss = w.as_tensor().mul(&c).unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        w.as_tensor().to_vec1().unwrap()
    }

    fn close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn sgd_momentum_and_weight_decay_match_torch() {
        // w = torch.tensor([1., -2.], requires_grad=True); c = torch.tensor([.5, -1.])
        // opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.01)
        // for _ in range(3): opt.zero_grad(); (w*c).sum().backward(); opt.step()
        // w -> tensor([ 0.7225, -1.4357]) (to 4 places; exact values below from float64)
        let spec = OptimizerSpec::Sgd {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.01,
            decay_bn_bias: true,
            clip_grad_norm: None,
        };
        let mut w = [1.0f64, -2.0];
        let c = [0.5, -1.0];
        let mut buf = [0.0f64; 2];
        for s in 0..3 {
            for i in 0..2 {
                let g = c[i] + 0.01 * w[i];
                buf[i] = if s == 0 { g } else { 0.9 * buf[i] + g };
                w[i] -= 0.1 * buf[i];
            }
        }
        close(&run(spec, 3), &[w[0] as f32, w[1] as f32]);
        let plain = OptimizerSpec::Sgd {
            lr: 0.1,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            decay_bn_bias: true,
            clip_grad_norm: None,
        };
        close(&run(plain, 2), &[0.9, -1.8]);
    }

    #[test]
    fn adam_matches_the_closed_form() {
        // With a constant gradient g, Adam's bias-corrected m/sqrt(v) = sign(g) each step,
        // so w moves by lr/(1+eps/|g|) per step: torch gives [0.9700, -1.9700] after 3 steps.
        let spec = OptimizerSpec::Adam {
            lr: 0.01,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            decay_bn_bias: true,
            clip_grad_norm: None,
        };
        close(&run(spec, 3), &[0.97, -1.97]);
        let spec = OptimizerSpec::Adamw {
            lr: 0.01,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.1,
            amsgrad: false,
            decay_bn_bias: true,
            clip_grad_norm: None,
        };
        // Decoupled: w <- w(1 - lr*wd) - lr*sign(g), step by step.
        let mut w = [1.0f64, -2.0];
        for _ in 0..2 {
            w = [w[0] * 0.999 - 0.01, w[1] * 0.999 + 0.01];
        }
        close(&run(spec, 2), &[w[0] as f32, w[1] as f32]);
    }

    #[test]
    fn the_fused_cpu_step_is_candles_to_the_bit() {
        // Every rule and option, three steps (the state's first and later
        // ones), on a matrix long enough for the passes' parallel chunks and a
        // rank-1 parameter (no decay with decay_bn_bias = false).
        let sgd = |momentum: f64,
                   dampening: f64,
                   nesterov: bool,
                   weight_decay: f64,
                   decay_bn_bias: bool,
                   clip: Option<f64>| {
            OptimizerSpec::Sgd {
                lr: 0.05,
                momentum,
                dampening,
                nesterov,
                weight_decay,
                decay_bn_bias,
                clip_grad_norm: clip,
            }
        };
        let adam = |adamw: bool, weight_decay: f64, amsgrad: bool, decay_bn_bias: bool| {
            let (lr, betas, eps, clip_grad_norm) = (3e-3, [0.85, 0.995], 1e-7, None);
            if adamw {
                OptimizerSpec::Adamw { lr, betas, eps, weight_decay, amsgrad, decay_bn_bias, clip_grad_norm }
            } else {
                OptimizerSpec::Adam { lr, betas, eps, weight_decay, amsgrad, decay_bn_bias, clip_grad_norm }
            }
        };
        let specs = [
            sgd(0.9, 0.0, false, 5e-4, true, None),
            sgd(0.9, 0.1, true, 1e-2, false, None),
            sgd(0.0, 0.0, false, 1e-3, true, None),
            sgd(0.8, 0.0, false, 0.0, true, Some(0.5)),
            adam(false, 0.0, false, true),
            adam(false, 1e-2, true, false),
            adam(true, 5e-2, false, true),
            adam(true, 1e-2, true, false),
        ];
        let mut rng = crate::train::rng::Rng::new(7);
        let mut randn = |n: usize| (0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
        let (w0, b0) = (randn(3 * 20_000), randn(64));
        let pushes: Vec<(Vec<f32>, Vec<f32>)> = (0..3).map(|_| (randn(3 * 20_000), randn(64))).collect();
        for spec in specs {
            let run = |fused: bool| {
                let w = Var::from_vec(w0.clone(), (3, 20_000), &Device::Cpu).unwrap();
                let b = Var::from_vec(b0.clone(), 64, &Device::Cpu).unwrap();
                let mut opt = Optimizer::new(spec.clone(), vec![("w".into(), w.clone()), ("b".into(), b.clone())]);
                for (cw, cb) in &pushes {
                    // Gradients cw + 2 w and cb + 2 b: they depend on the weights.
                    let cw = Tensor::from_vec(cw.clone(), (3, 20_000), &Device::Cpu).unwrap();
                    let cb = Tensor::from_vec(cb.clone(), 64, &Device::Cpu).unwrap();
                    let loss = (w.as_tensor().mul(&cw).unwrap().sum_all().unwrap()
                        + w.as_tensor().sqr().unwrap().sum_all().unwrap()
                        + b.as_tensor().mul(&cb).unwrap().sum_all().unwrap()
                        + b.as_tensor().sqr().unwrap().sum_all().unwrap())
                    .unwrap();
                    opt.step_by(&loss.backward().unwrap(), fused).unwrap();
                }
                let bits = |t: &Tensor| {
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
                };
                let mut all: Vec<(String, Vec<u32>)> = opt.state().iter().map(|(k, t)| (k.clone(), bits(t))).collect();
                all.sort();
                all.push(("w".into(), bits(w.as_tensor())));
                all.push(("b".into(), bits(b.as_tensor())));
                all
            };
            let (fused, candle) = (run(true), run(false));
            let names = |a: &[(String, Vec<u32>)]| a.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
            assert_eq!(names(&fused), names(&candle), "{spec:?}");
            for ((name, f), (_, c)) in fused.iter().zip(&candle) {
                let differ = f.iter().zip(c).filter(|(a, b)| a != b).count();
                assert_eq!(differ, 0, "{spec:?}: {name} differs in {differ} of {} values", f.len());
            }
            assert_ne!(fused.last().unwrap().1, b0.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "{spec:?}");
        }
    }

    #[test]
    fn the_squared_norm_on_the_cpu_is_candles_in_f64() {
        // A gradient of many values with a wide range (where summing in f32 would drift).
        let mut rng = crate::train::rng::Rng::new(3);
        let v: Vec<f32> = (0..300_003).map(|i| rng.normal() as f32 * if i % 7 == 0 { 1e3 } else { 1e-2 }).collect();
        let t = Tensor::from_vec(v, (3, 100_001), &Device::Cpu).unwrap();
        let ours = crate::train::layers::sum_of_squares(&t).unwrap();
        let f64s = t.to_dtype(candle_core::DType::F64).unwrap().sqr().unwrap().sum_all().unwrap();
        let exact = f64s.to_scalar::<f64>().unwrap();
        assert!((ours - exact).abs() <= 1e-6 * exact, "{ours} against {exact}");
        // A strided view is read as its values.
        let view = t.t().unwrap();
        assert!((crate::train::layers::sum_of_squares(&view).unwrap() - exact).abs() <= 1e-6 * exact);
    }

    #[test]
    fn state_holds_no_autograd_graph() {
        // Regression: a momentum buffer built from the Var's tensor kept every
        // earlier step's graph alive (memory grew without bound).
        for spec in [
            OptimizerSpec::Sgd {
                lr: 0.1,
                momentum: 0.9,
                dampening: 0.0,
                nesterov: true,
                weight_decay: 0.01,
                decay_bn_bias: true,
                clip_grad_norm: None,
            },
            OptimizerSpec::Adam {
                lr: 0.01,
                betas: [0.9, 0.999],
                eps: 1e-8,
                weight_decay: 0.01,
                amsgrad: false,
                decay_bn_bias: true,
                clip_grad_norm: None,
            },
            OptimizerSpec::Adamw {
                lr: 0.01,
                betas: [0.9, 0.999],
                eps: 1e-8,
                weight_decay: 0.01,
                amsgrad: false,
                decay_bn_bias: true,
                clip_grad_norm: None,
            },
        ] {
            let w = Var::from_vec(vec![1.0f32, -2.0], 2, &Device::Cpu).unwrap();
            let mut opt = Optimizer::new(spec, vec![("w".into(), w.clone())]);
            for _ in 0..2 {
                let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
                opt.step(&loss.backward().unwrap()).unwrap();
            }
            assert!(!opt.state().is_empty());
            assert!(opt.state().values().all(|t| !t.track_op()), "{:?}", opt.state().keys());
        }
    }
}
