//! The optimisers' step on the CPU, in place (see `optim_step.rs`): one pass
//! over each state buffer, then one over the weight, each element computed
//! with exactly the operations, in the same order and precision, as the
//! candle ops of `optim.rs` (a product by a scalar is candle's `affine`,
//! `x * a + 0`), so the two agree to the bit. The passes read and write
//! memory once each; candle's ops allocated six (SGD with momentum) to
//! twelve (Adam) fresh tensors per parameter per step.

use super::optim_step::{length, AdamParam, SgdParam};
use candle_core::{bail, CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

/// Elements per rayon task (and the size below which a pass stays on the
/// calling thread).
const GRAIN: usize = 1 << 14;

/// candle's `affine` on one f32: `x * mul + add` (the scalars rounded from
/// f64 before the pass, as candle does).
#[inline]
fn affine(x: f32, mul: f32, add: f32) -> f32 {
    x * mul + add
}

/// The f32 values of a contiguous CPU storage, to write.
fn values_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else { bail!("{what}: a non-contiguous buffer") };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => bail!("{what}: a buffer of other values than f32"),
    }
}

/// `dst[i] = f(dst[i], a[i], b[i])` over contiguous f32 buffers of one length.
struct Map3<F> {
    name: &'static str,
    f: F,
}

impl<F: Fn(f32, f32, f32) -> f32 + Sync + Copy> InplaceOp3 for Map3<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        d: &mut CpuStorage,
        dl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<()> {
        let d = values_mut(d, dl, self.name)?;
        let (a, b) = (super::cpu_f32(a, al, self.name)?, super::cpu_f32(b, bl, self.name)?);
        if a.len() != d.len() || b.len() != d.len() {
            bail!("{}: buffers of {}, {} and {} values", self.name, d.len(), a.len(), b.len());
        }
        // A copy of its own, so that the compiler sees the flags it captured
        // stay put and takes their branches out of the loop.
        let f = self.f;
        let run = move |d: &mut [f32], a: &[f32], b: &[f32]| {
            for ((d, a), b) in d.iter_mut().zip(a).zip(b) {
                *d = f(*d, *a, *b);
            }
        };
        if d.len() <= GRAIN {
            run(d, a, b);
        } else {
            d.par_chunks_mut(GRAIN)
                .zip(a.par_chunks(GRAIN))
                .zip(b.par_chunks(GRAIN))
                .for_each(|((d, a), b)| run(d, a, b));
        }
        Ok(())
    }
}

/// `dst[i] = f(dst[i], a[i])` (through [`Map3`] with `a` twice).
struct Map2<F> {
    name: &'static str,
    f: F,
}

impl<F: Fn(f32, f32) -> f32 + Sync + Copy> InplaceOp2 for Map2<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, d: &mut CpuStorage, dl: &Layout, a: &CpuStorage, al: &Layout) -> Result<()> {
        let f = self.f;
        Map3 { name: self.name, f: move |d, a, _| f(d, a) }.cpu_fwd(d, dl, a, al, a, al)
    }
}

/// Σ x² over an f32 tensor on the CPU, for `clip_grad_norm_`: in f32 lanes
/// per block of 512 values, the blocks in f64 (candle's way, a copy in f64
/// and its square, allocated twice the gradient's size per parameter).
pub fn sum_of_squares(t: &Tensor) -> Result<f64> {
    super::with_cpu_f32(t, |v| v.par_chunks(1 << 16).map(|c| super::batch_norm::sum_map(c, |x| x * x)).sum())
}

/// `torch.optim.SGD`'s step (see `optim_step::sgd_step_all`): the momentum
/// buffer from the gradient and the old weight, then the weight.
pub(super) fn sgd_step(params: &[SgdParam<'_>], lr: f64, momentum: f64, dampening: f64, nesterov: bool) -> Result<()> {
    let (lr, mom, damp1) = (lr as f32, momentum as f32, (1.0 - dampening) as f32);
    for p in params {
        length(p.w, &[Some(p.g), p.buf])?;
        let (decays, wd, first) = (p.weight_decay != 0.0, p.weight_decay as f32, p.first);
        // d = g + wd * w, as optim.rs: the sum only with weight decay.
        let d = move |g: f32, w: f32| if decays { g + affine(w, wd, 0.0) } else { g };
        if let Some(buf) = p.buf {
            let op = move |b: f32, g: f32, w: f32| {
                let d = d(g, w);
                if first {
                    d
                } else {
                    affine(b, mom, 0.0) + affine(d, damp1, 0.0)
                }
            };
            buf.inplace_op3(p.g, p.w, &Map3 { name: "sgd-momentum", f: op })?;
            let op = move |w: f32, g: f32, b: f32| {
                let s = if nesterov { d(g, w) + affine(b, mom, 0.0) } else { b };
                w - affine(s, lr, 0.0)
            };
            p.w.inplace_op3(p.g, buf, &Map3 { name: "sgd-weight", f: op })?;
        } else {
            p.w.inplace_op2(p.g, &Map2 { name: "sgd-weight", f: move |w: f32, g: f32| w - affine(d(g, w), lr, 0.0) })?;
        }
    }
    Ok(())
}

/// Adam's (`decoupled`: AdamW's) step (see `optim_step::adam_step_all`): the
/// two moments from the gradient and the old weight, AMSGrad's maximum, then
/// the weight.
pub(super) fn adam_step(
    params: &[AdamParam<'_>],
    (b1, b2): (f64, f64),
    lr: f64,
    step_size: f64,
    bc2_sqrt: f64,
    eps: f64,
    decoupled: bool,
) -> Result<()> {
    let (step_size, inv_bc2_sqrt, eps) = (step_size as f32, (1.0 / bc2_sqrt) as f32, eps as f32);
    for p in params {
        length(p.w, &[Some(p.g), Some(p.m), Some(p.v), p.vmax])?;
        let first = p.first;
        let (coupled, shrinks) = (p.weight_decay != 0.0 && !decoupled, p.weight_decay != 0.0 && decoupled);
        let (wd, shrink) = (p.weight_decay as f32, (1.0 - lr * p.weight_decay) as f32);
        let d = move |g: f32, w: f32| if coupled { g + affine(w, wd, 0.0) } else { g };
        let moment = move |beta: f64, square: bool| {
            let (beta, one_minus) = (beta as f32, (1.0 - beta) as f32);
            move |x: f32, g: f32, w: f32| {
                let d = d(g, w);
                let d = if square { d * d } else { d };
                if first {
                    affine(d, one_minus, 0.0)
                } else {
                    affine(x, beta, 0.0) + affine(d, one_minus, 0.0)
                }
            }
        };
        p.m.inplace_op3(p.g, p.w, &Map3 { name: "adam-exp-avg", f: moment(b1, false) })?;
        p.v.inplace_op3(p.g, p.w, &Map3 { name: "adam-exp-avg-sq", f: moment(b2, true) })?;
        let second = match p.vmax {
            Some(vmax) => {
                // candle's `maximum`; the first step takes `v` itself.
                let max = move |x: f32, v: f32| if first || x < v { v } else { x };
                vmax.inplace_op2(p.v, &Map2 { name: "adam-max-exp-avg-sq", f: max })?;
                vmax
            }
            None => p.v,
        };
        let op = move |w: f32, m: f32, s: f32| {
            let w = if shrinks { affine(w, shrink, 0.0) } else { w };
            let denom = affine(affine(s.sqrt(), inv_bc2_sqrt, 0.0), 1.0, eps);
            w - affine(m / denom, step_size, 0.0)
        };
        p.w.inplace_op3(p.m, second, &Map3 { name: "adam-weight", f: op })?;
    }
    Ok(())
}
