//! BatchNorm, ReLU and a 2x2/2 max-pool as one op each way: the end of each
//! smallcnn block. Only the pooled output is written; the backward pass
//! visits each window's maximum instead of routing a full-size gradient
//! through the pool, the ReLU and the BatchNorm in turn (three tensors the
//! size of the input less, and candle's zeroed accumulator for each).

use super::batch_norm::invstd;
use super::pool::scan;
use super::{cpu_f32, with_cpu_f32};
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `max_pool2d(relu(batch_norm(x)), 2, 2)` with per-channel `mean` and
/// `invstd`; `batch_stats` as in [`super::batch_norm_cpu`]. The forward pass
/// keeps each window's argmax (within its plane) for the backward pass.
pub(super) struct BnReluPoolOp {
    pub(super) mean: Vec<f32>,
    pub(super) invstd: Vec<f32>,
    pub(super) batch_stats: bool,
    pub(super) argmax: std::sync::Mutex<Option<Vec<u32>>>,
}

impl BnReluPoolOp {
    /// The pooled output and each window's argmax, for NCHW `x`.
    fn windows(&self, x: &[f32], w: &[f32], b: &[f32], (c, h, wd): (usize, usize, usize)) -> (Vec<f32>, Vec<u32>) {
        let (oh, ow) = (h / 2, wd / 2);
        let planes = x.len() / (h * wd);
        let mut out = vec![0f32; planes * oh * ow];
        let mut idx = vec![0u32; planes * oh * ow];
        out.par_chunks_mut(oh * ow).zip(idx.par_chunks_mut(oh * ow)).zip(x.par_chunks(h * wd)).enumerate().for_each(
            |(p, ((out, idx), plane))| {
                let ch = p % c;
                let scale = self.invstd[ch] * w[ch];
                let shift = b[ch] - self.mean[ch] * scale;
                let y = |i: usize| (plane[i] * scale + shift).max(0.0);
                for oy in 0..oh {
                    let (top, bottom) = (2 * oy * wd, (2 * oy + 1) * wd);
                    for ox in 0..ow {
                        let i = 2 * ox;
                        let (mut best_v, mut best) = (y(top + i), top + i);
                        scan(&mut best_v, &mut best, y(top + i + 1), top + i + 1);
                        scan(&mut best_v, &mut best, y(bottom + i), bottom + i);
                        scan(&mut best_v, &mut best, y(bottom + i + 1), bottom + i + 1);
                        out[oy * ow + ox] = best_v;
                        idx[oy * ow + ox] = best as u32;
                    }
                }
            },
        );
        (out, idx)
    }
}

impl candle_core::CustomOp3 for BnReluPoolOp {
    fn name(&self) -> &'static str {
        "sweep-batch-norm-relu-max-pool"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        if c != self.mean.len() || h < 2 || w < 2 {
            candle_core::bail!("batch_norm_relu_max_pool: input {n}x{c}x{h}x{w}, {} statistics", self.mean.len());
        }
        let x = cpu_f32(s1, l1, "batch_norm_relu_max_pool")?;
        let (wt, b) = (cpu_f32(s2, l2, "batch_norm_relu_max_pool")?, cpu_f32(s3, l3, "batch_norm_relu_max_pool")?);
        let (out, idx) = self.windows(x, wt, b, (c, h, w));
        *self.argmax.lock().expect("pool lock") = Some(idx);
        Ok((CpuStorage::F32(out), Shape::from((n, c, h / 2, w / 2))))
    }

    /// The gradient reaches a window's maximum where the pooled output is
    /// positive (ReLU); BatchNorm's closed-form backward then needs its sums
    /// over those positions only, and one pass over the input for dx.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, wd) = x.dims4()?;
        let (oh, ow) = (h / 2, wd / 2);
        let (plane, pooled) = (h * wd, oh * ow);
        let wv = w.detach().to_vec1::<f32>()?;
        let (x, res, grad) = (x.detach(), res.detach(), grad.detach());
        let idx = match self.argmax.lock().expect("pool lock").take() {
            Some(idx) => idx,
            None => {
                let bv = b.detach().to_vec1::<f32>()?;
                with_cpu_f32(&x, |xs| self.windows(xs, &wv, &bv, (c, h, wd)).1)?
            }
        };
        let (dx, sums) = with_cpu_f32(&x, |xs| {
            with_cpu_f32(&res, |out| {
                with_cpu_f32(&grad, |dp| {
                    let g = |j: usize| if out[j] > 0.0 { dp[j] } else { 0.0 };
                    // Σ g and Σ g·x̂ per channel, over the windows.
                    let sums: Vec<(f64, f64)> = (0..c)
                        .into_par_iter()
                        .map(|ch| {
                            let (mean, inv) = (self.mean[ch], self.invstd[ch]);
                            (0..n).fold((0f64, 0f64), |acc, bi| {
                                let p = bi * c + ch;
                                let (mut s, mut t) = (0f32, 0f32);
                                for j in p * pooled..(p + 1) * pooled {
                                    let gj = g(j);
                                    s += gj;
                                    t += gj * (xs[p * plane + idx[j] as usize] - mean) * inv;
                                }
                                (acc.0 + f64::from(s), acc.1 + f64::from(t))
                            })
                        })
                        .collect();
                    let m = (n * plane) as f32;
                    let mut dx = vec![0f32; n * c * plane];
                    dx.par_chunks_mut(plane).zip(xs.par_chunks(plane)).enumerate().for_each(|(p, (d, xp))| {
                        let ch = p % c;
                        let (mean, inv) = (self.mean[ch], self.invstd[ch]);
                        let k = wv[ch] * inv;
                        if self.batch_stats {
                            let (sdy, sdyx) = (sums[ch].0 as f32 / m, sums[ch].1 as f32 / m);
                            for (d, &v) in d.iter_mut().zip(xp) {
                                *d = -k * (sdy + (v - mean) * inv * sdyx);
                            }
                        }
                        for j in p * pooled..(p + 1) * pooled {
                            d[idx[j] as usize] += k * g(j);
                        }
                    });
                    (dx, sums)
                })
            })
        })???;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (n, c, h, wd), dev)?),
            Some(Tensor::from_vec(sums.iter().map(|s| s.1 as f32).collect::<Vec<_>>(), c, dev)?),
            Some(Tensor::from_vec(sums.iter().map(|s| s.0 as f32).collect::<Vec<_>>(), c, dev)?),
        ))
    }
}

/// `max_pool2d(relu(batch_norm(x)), 2, 2)` on the CPU (f32) as one op; the
/// arguments as [`super::batch_norm_cpu`]'s.
pub fn batch_norm_relu_max_pool2_cpu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    mean: Vec<f32>,
    var: &[f32],
    eps: f64,
    batch_stats: bool,
) -> Result<Tensor> {
    let op = BnReluPoolOp { mean, invstd: invstd(var, eps), batch_stats, argmax: std::sync::Mutex::new(None) };
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::layers::{batch_norm_cpu, max_pool2d, PoolParams};

    /// The fused op equals BatchNorm + ReLU, then max-pool 2x2/2: values and
    /// the gradients of input, weight and bias, with batch and running
    /// statistics, on odd sizes (a last row and column no window covers).
    #[test]
    fn matches_batch_norm_relu_then_max_pool() {
        crate::train::layers::assert_bn_variants_agree(
            21,
            (3, 4, 7, 9),
            |x, w, b, mean, var, batch_stats| {
                batch_norm_relu_max_pool2_cpu(x, w, b, mean, var, 1e-5, batch_stats).unwrap()
            },
            |x, w, b, mean, var, batch_stats| {
                let y = batch_norm_cpu(x, w, b, mean, var, 1e-5, batch_stats, true).unwrap();
                max_pool2d(&y, PoolParams { kernel: 2, stride: 2, padding: 0 }).unwrap()
            },
        );
    }
}
