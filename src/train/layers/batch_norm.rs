//! BatchNorm's normalisation on the CPU as one op with a hand-written backward,
//! optionally followed by a ReLU in the same pass each way (every
//! conv-BN-ReLU of ResNet, DenseNet, VGG and smallcnn).

use super::{cpu_f32, with_cpu_f32};
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;

/// Floats summed in f32 before the running total (in f64) takes them: short
/// enough to keep f32's rounding negligible, long enough for eight-wide SIMD.
const BLOCK: usize = 512;

/// Σ f(x) over `xs`: eight f32 lanes per block of [`BLOCK`], blocks added in f64.
pub(super) fn sum_map(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for block in xs.chunks(BLOCK) {
        let mut acc = [0f32; 8];
        let mut it = block.chunks_exact(8);
        for c in &mut it {
            for l in 0..8 {
                acc[l] += f(c[l]);
            }
        }
        let s = acc.iter().sum::<f32>() + it.remainder().iter().map(|&v| f(v)).sum::<f32>();
        total += f64::from(s);
    }
    total
}

/// (Σ f(a, b, c).0, Σ f(a, b, c).1) over three slices of one length, as [`sum_map`].
/// Never inlined, so that [`plane_sum3`], which calls it for long planes,
/// stays small enough to be inlined into the small-plane loops (it was not
/// otherwise: 128x1632x1x1's backward took 1.7 ms instead of 0.8).
#[inline(never)]
fn sum_map3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> (f32, f32)) -> (f64, f64) {
    let mut total = (0f64, 0f64);
    for ((a, b), c) in a.chunks(BLOCK).zip(b.chunks(BLOCK)).zip(c.chunks(BLOCK)) {
        let (mut s, mut t) = ([0f32; 8], [0f32; 8]);
        let (mut ia, mut ib, mut ic) = (a.chunks_exact(8), b.chunks_exact(8), c.chunks_exact(8));
        for ((a, b), c) in (&mut ia).zip(&mut ib).zip(&mut ic) {
            for l in 0..8 {
                let (x, y) = f(a[l], b[l], c[l]);
                s[l] += x;
                t[l] += y;
            }
        }
        let (mut s, mut t) = (s.iter().sum::<f32>(), t.iter().sum::<f32>());
        for ((&a, &b), &c) in ia.remainder().iter().zip(ib.remainder()).zip(ic.remainder()) {
            let (x, y) = f(a, b, c);
            s += x;
            t += y;
        }
        total.0 += f64::from(s);
        total.1 += f64::from(t);
    }
    total
}

/// [`sum_map`] of a plane, the same bits, without its block and lane set-up
/// for a plane shorter than a lane group: such a plane is all remainder,
/// summed in order from zero, which is what the fold here does (a total of
/// `-0.0` cannot come out of either: both start from `+0.0`).
#[inline]
fn plane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    if xs.len() < 8 {
        f64::from(xs.iter().fold(0f32, |a, &v| a + f(v)))
    } else {
        sum_map(xs, f)
    }
}

/// [`sum_map3`] of a plane as [`plane_sum`] is [`sum_map`]'s: the same bits.
#[inline]
fn plane_sum3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> (f32, f32)) -> (f64, f64) {
    if a.len() < 8 {
        let (s, t) = a.iter().zip(b).zip(c).fold((0f32, 0f32), |(s, t), ((&a, &b), &c)| {
            let (x, y) = f(a, b, c);
            (s + x, t + y)
        });
        (f64::from(s), f64::from(t))
    } else {
        sum_map3(a, b, c, f)
    }
}

/// Planes of fewer pixels than this (the last stages at 32x32: ResNet's and
/// DenseNet's 8x8, 4x4, 2x2 and 1x1) are gone through image by image, every
/// channel of an image in one contiguous run, instead of channel by channel,
/// where each of a channel's `n` planes, `c` planes apart, was a slice of its
/// own (and the forward pass a task per plane). Each plane's sum is the same
/// [`sum_map`] of the same values ([`plane_sum`]), added in the same order:
/// the same bits either way. (DenseNet121 64x32 steps about 3% faster,
/// BENCHMARKS.md.) The plane sizes of those stages are also constants of the
/// loops ([`by_plane_size`]): DenseNet169's BatchNorms at 32x32 take a
/// tenth (1x1) to a half (8x8) of the time they took through the channel
/// by channel loops (BENCHMARKS.md, "small planes").
const SMALL_PLANE: usize = 65;

/// Channel ranges for the tasks of the image-by-image passes: about four a thread.
fn channel_groups(c: usize) -> Vec<std::ops::Range<usize>> {
    let per = c.div_ceil(4 * rayon::current_num_threads()).max(1);
    super::conv3x3::groups(c, per).map(|(c0, k)| c0..c0 + k).collect()
}

/// Per-channel mean and biased variance of NCHW `x` (f32 on the CPU), in two
/// passes (the variance from the centred values), in f32 lanes per block, blocks in f64.
pub fn channel_stats(x: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
    let (n, c, h, w) = x.dims4()?;
    let stats = with_cpu_f32(x, |data| stats_of(data, (n, c, h * w), h * w < SMALL_PLANE))?;
    Ok(stats.into_iter().unzip())
}

/// [`channel_stats`] of `data`, channel by channel or (`by_image`) image by image.
fn stats_of(data: &[f32], (n, c, hw): (usize, usize, usize), by_image: bool) -> Vec<(f32, f32)> {
    use rayon::prelude::*;
    let m = (n * hw) as f64;
    let plane = |b: usize, ch: usize| &data[(b * c + ch) * hw..][..hw];
    if by_image {
        return channel_groups(c)
            .into_par_iter()
            .flat_map_iter(|r| by_plane_size!(hw, group_stats(data, (n, c, hw), r)))
            .collect();
    }
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..n).map(|b| plane(b, ch));
            let mean = planes().map(|p| sum_map(p, |v| v)).fold(0f64, |a, v| a + v) / m;
            let mean32 = mean as f32;
            let var = planes().map(|p| sum_map(p, |v| (v - mean32) * (v - mean32))).fold(0f64, |a, v| a + v) / m;
            (mean32, var as f32)
        })
        .collect()
}

/// `$f::<HW>(args)` with `HW` the plane size `$hw` where it is 1 to 7, 16
/// (4x4) or 64 (8x8), so that the loops over a plane have a constant length
/// (they unroll, and the loops over channels around them vectorise), and
/// `HW` = 0 (the length `hw` at run time) otherwise.
macro_rules! by_plane_size {
    ($hw:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $hw {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            16 => $f::<16>($($arg),*),
            64 => $f::<64>($($arg),*),
            _ => $f::<0>($($arg),*),
        }
    };
}
use by_plane_size;

/// The plane size: `HW` where it is a constant, else `hw` (at least 1, for
/// `chunks_exact`; a plane of none has no floats to go through).
fn plane_len<const HW: usize>(hw: usize) -> usize {
    if HW == 0 {
        hw.max(1)
    } else {
        HW
    }
}

/// [`channel_stats`] of the channels `r` of `data`, image by image: for each
/// image the group's planes, one after another.
fn group_stats<const HW: usize>(
    data: &[f32],
    (n, c, hw): (usize, usize, usize),
    r: std::ops::Range<usize>,
) -> Vec<(f32, f32)> {
    let m = (n * hw) as f64;
    let planes = |b: usize| planes_at(data, (b * c + r.start) * hw, r.len() * hw, plane_len::<HW>(hw));
    let mut sums = vec![0f64; r.len()];
    for b in 0..n {
        for (s, p) in sums.iter_mut().zip(planes(b)) {
            *s += plane_sum(p, |v| v);
        }
    }
    let means: Vec<f32> = sums.iter().map(|s| (s / m) as f32).collect();
    let mut vars = vec![0f64; r.len()];
    for b in 0..n {
        for ((s, p), &mean) in vars.iter_mut().zip(planes(b)).zip(&means) {
            *s += plane_sum(p, |v| (v - mean) * (v - mean));
        }
    }
    means.into_iter().zip(vars).map(|(mean, var)| (mean, (var / m) as f32)).collect()
}

/// Consecutive planes of `x` normalised into `o`, each with its channel's
/// (scale, shift), then (`relu`) clamped at zero; with a residual `r` (the
/// same planes of it), `max(0, x * scale + shift + r)`.
fn normalize_planes<const HW: usize>(
    o: &mut [MaybeUninit<f32>],
    x: &[f32],
    r: Option<&[f32]>,
    scales: &[(f32, f32)],
    hw: usize,
    relu: bool,
) {
    let len = plane_len::<HW>(hw);
    if let Some(r) = r {
        let planes = o.chunks_exact_mut(len).zip(x.chunks_exact(len)).zip(r.chunks_exact(len)).zip(scales);
        for (((o, x), r), &(scale, shift)) in planes {
            for ((o, &x), &r) in o.iter_mut().zip(x).zip(r) {
                o.write((x * scale + shift + r).max(0.0));
            }
        }
        return;
    }
    let planes = o.chunks_exact_mut(len).zip(x.chunks_exact(len)).zip(scales);
    if relu {
        for ((o, x), &(scale, shift)) in planes {
            for (o, &x) in o.iter_mut().zip(x) {
                o.write((x * scale + shift).max(0.0));
            }
        }
    } else {
        for ((o, x), &(scale, shift)) in planes {
            for (o, &x) in o.iter_mut().zip(x) {
                o.write(x * scale + shift);
            }
        }
    }
}

/// The ReLU's part of the backward pass: the incoming gradient where the
/// output is positive (everywhere without the ReLU).
#[derive(Clone, Copy)]
struct Mask {
    relu: bool,
}

impl Mask {
    fn apply(self, d: f32, o: f32) -> f32 {
        if !self.relu || o > 0.0 {
            d
        } else {
            0.0
        }
    }
}

/// Σ dy and Σ dy * x̂ over one plane (dy masked by the ReLU) of a channel
/// with this mean and invstd.
#[inline]
fn plane_grad_sums(dy: &[f32], xs: &[f32], out: &[f32], (mean, inv): (f32, f32), mask: Mask) -> (f64, f64) {
    plane_sum3(dy, xs, out, |d, v, o| {
        let g = mask.apply(d, o);
        (g, g * (v - mean) * inv)
    })
}

/// (Σ dy, Σ dy * x̂) of the channels `r`, image by image: for each image the
/// group's planes one after another, each plane's sums added to its
/// channel's in image order.
#[allow(clippy::too_many_arguments)]
fn group_grad_sums<const HW: usize>(
    dy: &[f32],
    xs: &[f32],
    out: &[f32],
    (n, c, hw): (usize, usize, usize),
    r: std::ops::Range<usize>,
    stats: &[(f32, f32)],
    mask: Mask,
) -> Vec<(f64, f64)> {
    let mut t = vec![(0f64, 0f64); r.len()];
    for bi in 0..n {
        let planes = |s| planes_at(s, (bi * c + r.start) * hw, r.len() * hw, plane_len::<HW>(hw));
        let each = t.iter_mut().zip(&stats[r.clone()]).zip(planes(dy)).zip(planes(xs)).zip(planes(out));
        for ((((t, &st), dy), xs), out) in each {
            let s = plane_grad_sums(dy, xs, out, st, mask);
            *t = (t.0 + s.0, t.1 + s.1);
        }
    }
    t
}

/// What a plane of dx needs of its channel: mean, invstd, weight * invstd
/// and Σ dy / m, Σ dy * x̂ / m.
type DxCoefficients = (f32, f32, f32, f32, f32);

/// Consecutive planes of dx, each with its channel's coefficients: with
/// `batch_stats` through the batch's mean and variance too, else only the
/// scale.
#[allow(clippy::too_many_arguments)]
fn planes_dx<const HW: usize>(
    d: &mut [MaybeUninit<f32>],
    dy: &[f32],
    xs: &[f32],
    out: &[f32],
    coefficients: &[DxCoefficients],
    hw: usize,
    mask: Mask,
    batch_stats: bool,
) {
    let len = plane_len::<HW>(hw);
    let planes = d.chunks_exact_mut(len).zip(dy.chunks_exact(len)).zip(xs.chunks_exact(len)).zip(out.chunks_exact(len));
    for ((((d, dy), xs), out), &(mean, inv, k, sdy, sdyx)) in planes.zip(coefficients) {
        if batch_stats {
            for (((d, &g), &v), &o) in d.iter_mut().zip(dy).zip(xs).zip(out) {
                d.write(k * (mask.apply(g, o) - sdy - (v - mean) * inv * sdyx));
            }
        } else {
            for ((d, &g), &o) in d.iter_mut().zip(dy).zip(out) {
                d.write(k * mask.apply(g, o));
            }
        }
    }
}

/// `(x - mean) * invstd * weight + bias` per channel, with a hand-written
/// backward. With `batch_stats`, mean and invstd are the batch's own (training
/// BatchNorm: the gradient flows through them too); otherwise they are constants
/// (running statistics). With `relu` the output is `max(0, ·)` and the
/// incoming gradient is kept only where the output is positive (PyTorch's
/// ReLU backward).
///
/// With `residual` the op's inputs are (x, [weight, bias], r) and its output
/// `max(0, · + r)` (the end of a ResNet block; `relu` is then unused): the
/// normalised values are never a tensor of their own, so candle's graph does
/// not keep them for the backward pass, as it did as the input of a separate
/// `relu(a + b)` (a tensor of the block's output size per block). Its
/// backward pass masks the gradient once (the residual's gradient) and takes
/// BatchNorm's backward of that.
struct BatchNormOp {
    mean: Vec<f32>,
    invstd: Vec<f32>,
    batch_stats: bool,
    relu: bool,
    residual: bool,
    /// Planes of fewer pixels than this go image by image ([`SMALL_PLANE`]).
    by_image_below: usize,
}

impl BatchNormOp {
    /// The op with these statistics (the variance's invstd taken here).
    fn new(mean: Vec<f32>, var: &[f32], eps: f64, batch_stats: bool, relu: bool, residual: bool) -> Self {
        BatchNormOp { mean, invstd: invstd(var, eps), batch_stats, relu, residual, by_image_below: SMALL_PLANE }
    }

    fn dims(&self, l: &Layout) -> Result<(usize, usize, usize)> {
        let (n, c, h, w) = l.shape().dims4()?;
        if c != self.mean.len() {
            candle_core::bail!("batch_norm: {c} channels, {} statistics", self.mean.len());
        }
        Ok((n, c, h * w))
    }
}

impl candle_core::CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "sweep-batch-norm"
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
        let (n, c, hw) = self.dims(l1)?;
        let x = cpu_f32(s1, l1, "batch_norm")?;
        let (a, b) = (cpu_f32(s2, l2, "batch_norm")?, cpu_f32(s3, l3, "batch_norm")?);
        let out = if self.residual {
            // (x, [weight, bias], residual)
            if l3.shape() != l1.shape() || a.len() != 2 * c {
                candle_core::bail!(
                    "batch_norm: x {:?}, weight and bias {:?}, residual {:?}",
                    l1.dims(),
                    l2.dims(),
                    l3.dims()
                );
            }
            self.forward(x, Some(b), &a[..c], &a[c..], (n, c, hw))
        } else {
            self.forward(x, None, a, b, (n, c, hw))
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, wd) = x.dims4()?;
        let wv = w.detach().to_vec1::<f32>()?;
        let (x, grad) = (x.detach(), grad.detach());
        let dims = (n, c, h, wd);
        if self.residual {
            // (x, [weight, bias], residual): the masked gradient is the residual's
            // and what BatchNorm's backward takes.
            let g = super::add_relu::relu_grad(res, &grad)?;
            let (dx, dw, db) =
                with_cpu_f32(&x, |xs| with_cpu_f32(&g, |dy| self.backward(xs, dy, dy, &wv[..c], dims, x.device())))???;
            let dwb = match (dw, db) {
                (Some(dw), Some(db)) => Some(Tensor::cat(&[dw, db], 0)?),
                _ => None,
            };
            return Ok((dx, dwb, b.track_op().then_some(g)));
        }
        // Without the ReLU the output is never read (any slice of its length will do).
        let out = if self.relu { res.detach() } else { grad.clone() };
        with_cpu_f32(&x, |xs| {
            with_cpu_f32(&grad, |dy| with_cpu_f32(&out, |out| self.backward(xs, dy, out, &wv, dims, x.device())))
        })???
    }
}

impl BatchNormOp {
    /// The output of `x` (N, C, H*W) with weight `w` and bias `b`, plus the
    /// residual `r` and the ReLU where one is given.
    fn forward(
        &self,
        x: &[f32],
        r: Option<&[f32]>,
        w: &[f32],
        b: &[f32],
        (n, c, hw): (usize, usize, usize),
    ) -> Vec<f32> {
        use rayon::prelude::*;
        let scales: Vec<(f32, f32)> = (0..c)
            .map(|ch| {
                let scale = self.invstd[ch] * w[ch];
                (scale, b[ch] - self.mean[ch] * scale)
            })
            .collect();
        // Small planes an image at a time (see SMALL_PLANE), others a plane at a time.
        let planes_per_task = if hw < self.by_image_below { c } else { 1 };
        let len = (planes_per_task * hw).max(1);
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(len).zip(x.par_chunks(len)).enumerate().for_each(|(t, (o, x))| {
                // The task's planes start at channel `first` and go on in order.
                let first = t * planes_per_task % c.max(1);
                let scales = &scales[first..][..planes_per_task];
                let r = r.map(|r| &r[t * len..][..o.len()]);
                by_plane_size!(hw, normalize_planes(o, x, r, scales, hw, self.relu));
            });
        };
        // SAFETY: `fill` writes every element: each plane of `hw` floats, one per input float.
        #[allow(unsafe_code)]
        unsafe {
            super::written(n * c * hw, fill)
        }
    }

    /// Gradients with respect to x, weight and bias, given x, dy and (with the
    /// ReLU) the output, all NCHW, and the weight. The ReLU's backward (dy where
    /// the output is positive) is applied as each element is read.
    fn backward(
        &self,
        xs: &[f32],
        dy: &[f32],
        out: &[f32],
        wv: &[f32],
        (n, c, h, wd): (usize, usize, usize, usize),
        dev: &candle_core::Device,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let hw = h * wd;
        let hw1 = hw.max(1);
        let mask = Mask { relu: self.relu };
        let m = (n * hw) as f32;
        let stats: Vec<(f32, f32)> = self.mean.iter().copied().zip(self.invstd.iter().copied()).collect();
        let coefficients = |ch: usize, sum: (f64, f64)| {
            (self.mean[ch], self.invstd[ch], wv[ch] * self.invstd[ch], sum.0 as f32 / m, sum.1 as f32 / m)
        };
        let mut sums: Vec<(f64, f64)> = Vec::new();
        let fill = |dx: &mut [MaybeUninit<f32>]| {
            if hw < self.by_image_below {
                // Image by image (see SMALL_PLANE): the sums of channel
                // groups, then dx an image at a time.
                sums = channel_groups(c)
                    .into_par_iter()
                    .flat_map_iter(|r| by_plane_size!(hw, group_grad_sums(dy, xs, out, (n, c, hw), r, &stats, mask)))
                    .collect();
                let coefficients: Vec<_> = sums.iter().enumerate().map(|(ch, &s)| coefficients(ch, s)).collect();
                let image = c * hw;
                dx.par_chunks_mut(image.max(1)).enumerate().for_each(|(bi, d)| {
                    let (dy, xs, out) =
                        (&dy[bi * image..][..image], &xs[bi * image..][..image], &out[bi * image..][..image]);
                    by_plane_size!(hw, planes_dx(d, dy, xs, out, &coefficients, hw, mask, self.batch_stats));
                });
                return;
            }
            // One channel at a time, both passes: Σ dy and Σ dy * x̂ over its n
            // planes, then its planes of dx while dy, x and the output are still
            // in cache (one pass over all channels' sums, then another over all of
            // dx, read the three from memory twice: DenseNet's BatchNorms on the
            // concatenated features were a tenth of its step).
            let mut by_channel: Vec<Vec<&mut [MaybeUninit<f32>]>> = (0..c).map(|_| Vec::with_capacity(n)).collect();
            for (p, plane) in dx.chunks_mut(hw1).enumerate() {
                by_channel[p % c].push(plane);
            }
            let plane = |bi: usize, ch: usize| (bi * c + ch) * hw..(bi * c + ch + 1) * hw;
            sums = by_channel
                .into_par_iter()
                .enumerate()
                .map(|(ch, planes)| {
                    let sum = (0..n)
                        .map(|bi| {
                            let at = plane(bi, ch);
                            plane_grad_sums(&dy[at.clone()], &xs[at.clone()], &out[at], stats[ch], mask)
                        })
                        .fold((0f64, 0f64), |a, b| (a.0 + b.0, a.1 + b.1));
                    let k = [coefficients(ch, sum)];
                    for (bi, d) in planes.into_iter().enumerate() {
                        let at = plane(bi, ch);
                        planes_dx::<0>(d, &dy[at.clone()], &xs[at.clone()], &out[at], &k, hw, mask, self.batch_stats);
                    }
                    sum
                })
                .collect();
        };
        // SAFETY: `fill` writes every element: each plane, one per input float
        // (the planes of every channel, `n` each).
        #[allow(unsafe_code)]
        let dx = unsafe { super::written(n * c * hw, fill) };
        let dw: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
        let db: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
        Ok((
            Some(Tensor::from_vec(dx, (n, c, h, wd), dev)?),
            Some(Tensor::from_vec(dw, c, dev)?),
            Some(Tensor::from_vec(db, c, dev)?),
        ))
    }
}

/// The `len` floats of `s` from `i` on, as planes of `hw1` floats.
fn planes_at(s: &[f32], i: usize, len: usize, hw1: usize) -> std::slice::ChunksExact<'_, f32> {
    s[i..][..len].chunks_exact(hw1)
}

/// 1 / sqrt(var + eps) per channel, computed in f64.
pub(super) fn invstd(var: &[f32], eps: f64) -> Vec<f32> {
    var.iter().map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32).collect()
}

/// BatchNorm's normalisation on the CPU (f32): `x` (N, C, H, W) normalised with
/// `mean` and `var` per channel, scaled by `weight` and shifted by `bias`.
/// `batch_stats` says that mean and var are `x`'s own (training), so that the
/// gradient includes their dependence on `x`; `relu` applies a ReLU to the
/// result in the same op.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_cpu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    mean: Vec<f32>,
    var: &[f32],
    eps: f64,
    batch_stats: bool,
    relu: bool,
) -> Result<Tensor> {
    let op = BatchNormOp::new(mean, var, eps, batch_stats, relu, false);
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// `max(0, batch_norm(x) + residual)` on the CPU (f32) as one op: as
/// [`batch_norm_cpu`] followed by `add_relu`, the same values and gradients,
/// without keeping the normalised values for the backward pass.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_add_relu_cpu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    residual: &Tensor,
    mean: Vec<f32>,
    var: &[f32],
    eps: f64,
    batch_stats: bool,
) -> Result<Tensor> {
    let op = BatchNormOp::new(mean, var, eps, batch_stats, false, true);
    let wb = Tensor::cat(&[weight.contiguous()?, bias.contiguous()?], 0)?;
    x.contiguous()?.apply_op3(&wb, &residual.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small planes image by image give the bits of the channel-by-channel
    /// passes: the statistics, the output and the three gradients.
    #[test]
    fn small_planes_image_by_image_give_the_same_bits() {
        use candle_core::{Device, Var};
        let mut rng = crate::train::rng::Rng::new(4);
        for dims in [
            (5, 6, 1, 1),
            (4, 9, 1, 2),
            (3, 5, 1, 3),
            (4, 9, 2, 2),
            (2, 7, 1, 5),
            (3, 40, 2, 3),
            (4, 3, 4, 4),
            (2, 5, 1, 7),
            (3, 4, 8, 8),
            (2, 3, 5, 9),
        ] {
            let (n, c, h, w) = dims;
            let xs = crate::train::layers::randn(&mut rng, &[n, c, h, w]);
            let stats = stats_of(&xs, (n, c, h * w), false);
            assert!(stats == stats_of(&xs, (n, c, h * w), true), "{dims:?}");
            let wv = crate::train::layers::randn(&mut rng, &[c]);
            let bv = crate::train::layers::randn(&mut rng, &[c]);
            let run = |by_image_below: usize, batch_stats: bool| {
                let x = Var::from_vec(xs.clone(), dims, &Device::Cpu).unwrap();
                let wt = Var::from_vec(wv.clone(), c, &Device::Cpu).unwrap();
                let b = Var::from_vec(bv.clone(), c, &Device::Cpu).unwrap();
                let (mean, var): (Vec<f32>, Vec<f32>) = stats.iter().copied().unzip();
                let op = BatchNormOp { by_image_below, ..BatchNormOp::new(mean, &var, 1e-5, batch_stats, true, false) };
                let y = x.as_tensor().apply_op3(wt.as_tensor(), b.as_tensor(), op).unwrap();
                let k = Tensor::arange(0f32, y.elem_count() as f32, &Device::Cpu).unwrap().reshape(dims).unwrap();
                let g = y.mul(&k.sin().unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                [flat(&y), flat(g.get(&x).unwrap()), flat(g.get(&wt).unwrap()), flat(g.get(&b).unwrap())]
            };
            for batch_stats in [true, false] {
                let (planes, images) = (run(0, batch_stats), run(usize::MAX, batch_stats));
                assert!(planes == images, "{dims:?}, batch statistics {batch_stats}");
                assert!(planes[0].contains(&0.0) && planes[1].iter().any(|v| *v != 0.0));
            }
        }
    }

    /// Training BatchNorm (with and without the ReLU) on planes of every
    /// size with constant-length loops of its own (1-7, 4x4, 8x8), of one
    /// without (3x3) and of one channel by channel (9x9): the output and the three gradients of
    /// candle's autograd through the same formula in its own ops, within
    /// 1e-4.
    #[test]
    fn every_small_plane_size_matches_candle_ops() {
        use candle_core::{Device, Var, D};
        let dev = Device::Cpu;
        let mut rng = crate::train::rng::Rng::new(11);
        for (hw, (h, w)) in [(1, 1), (1, 2), (1, 3), (2, 2), (1, 5), (2, 3), (1, 7), (3, 3), (4, 4), (8, 8), (9, 9)]
            .into_iter()
            .enumerate()
        {
            let dims = (3 + hw, 5, h, w);
            let xs = crate::train::layers::randn(&mut rng, &[dims.0, dims.1, h, w]);
            let (wv, bv) = (crate::train::layers::randn(&mut rng, &[5]), crate::train::layers::randn(&mut rng, &[5]));
            let k = Tensor::arange(0f32, xs.len() as f32, &dev).unwrap().reshape(dims).unwrap().cos().unwrap();
            for relu in [false, true] {
                let run = |ours: bool| {
                    let x = Var::from_vec(xs.clone(), dims, &dev).unwrap();
                    let wt = Var::from_vec(wv.clone(), 5, &dev).unwrap();
                    let b = Var::from_vec(bv.clone(), 5, &dev).unwrap();
                    let y = if ours {
                        let (mean, var) = channel_stats(x.as_tensor()).unwrap();
                        batch_norm_cpu(x.as_tensor(), wt.as_tensor(), b.as_tensor(), mean, &var, 1e-5, true, relu)
                            .unwrap()
                    } else {
                        // (x - mean) / sqrt(var + eps) * w + b, the statistics over (N, H, W).
                        let per_channel = |t: &Tensor| t.transpose(0, 1).unwrap().flatten_from(1).unwrap();
                        let mean = per_channel(x.as_tensor()).mean_keepdim(D::Minus1).unwrap();
                        let centred = per_channel(x.as_tensor()).broadcast_sub(&mean).unwrap();
                        let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                        let normed = centred.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap();
                        let y = normed
                            .broadcast_mul(&wt.as_tensor().unsqueeze(1).unwrap())
                            .unwrap()
                            .broadcast_add(&b.as_tensor().unsqueeze(1).unwrap())
                            .unwrap()
                            .reshape((dims.1, dims.0, h, w))
                            .unwrap()
                            .transpose(0, 1)
                            .unwrap();
                        if relu {
                            y.relu().unwrap()
                        } else {
                            y
                        }
                    };
                    let g = y.mul(&k).unwrap().sum_all().unwrap().backward().unwrap();
                    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    [flat(&y), flat(g.get(&x).unwrap()), flat(g.get(&wt).unwrap()), flat(g.get(&b).unwrap())]
                };
                let (ours, theirs) = (run(true), run(false));
                for (what, (a, b)) in
                    ["output", "input grad", "weight grad", "bias grad"].iter().zip(ours.iter().zip(&theirs))
                {
                    let worst = a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(a.len() == b.len() && worst < 1e-4, "{h}x{w}, relu {relu}: {what} differs by {worst}");
                }
            }
        }
    }

    /// `max(0, bn(x) + r)` as one op gives the bits of BatchNorm then
    /// `add_relu`: the output and the gradients of x, weight, bias and the
    /// residual, with batch and running statistics, on small planes (image
    /// by image) and large ones; a residual that tracks no gradient gets none.
    #[test]
    fn batch_norm_add_relu_gives_the_bits_of_batch_norm_then_add_relu() {
        use candle_core::{Device, Var};
        let dev = Device::Cpu;
        let mut rng = crate::train::rng::Rng::new(21);
        for dims in [(3, 5, 1, 1), (2, 4, 3, 3), (2, 3, 9, 11)] {
            let (n, c, h, w) = dims;
            let xs = crate::train::layers::randn(&mut rng, &[n, c, h, w]);
            let rs = crate::train::layers::randn(&mut rng, &[n, c, h, w]);
            let (wv, bv) = (crate::train::layers::randn(&mut rng, &[c]), crate::train::layers::randn(&mut rng, &[c]));
            let k = Tensor::arange(0f32, xs.len() as f32, &dev).unwrap().reshape(dims).unwrap().sin().unwrap();
            for (batch_stats, residual_tracks) in [(true, true), (false, true), (true, false)] {
                let run = |fused: bool| {
                    let x = Var::from_vec(xs.clone(), dims, &dev).unwrap();
                    let wt = Var::from_vec(wv.clone(), c, &dev).unwrap();
                    let b = Var::from_vec(bv.clone(), c, &dev).unwrap();
                    let r = Var::from_vec(rs.clone(), dims, &dev).unwrap();
                    let rt = if residual_tracks { r.as_tensor().clone() } else { r.as_tensor().detach() };
                    let (mean, var) = if batch_stats {
                        channel_stats(x.as_tensor()).unwrap()
                    } else {
                        ((0..c).map(|i| i as f32 * 0.1).collect(), (0..c).map(|i| 0.5 + i as f32).collect())
                    };
                    let (xt, wtt, bt) = (x.as_tensor(), wt.as_tensor(), b.as_tensor());
                    let y = if fused {
                        batch_norm_add_relu_cpu(xt, wtt, bt, &rt, mean, &var, 1e-5, batch_stats).unwrap()
                    } else {
                        let bn = batch_norm_cpu(xt, wtt, bt, mean, &var, 1e-5, batch_stats, false).unwrap();
                        crate::train::layers::add_relu(&bn, &rt).unwrap()
                    };
                    let g = y.mul(&k).unwrap().sum_all().unwrap().backward().unwrap();
                    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let gr = g.get(r.as_tensor()).map(flat);
                    (flat(&y), flat(g.get(&x).unwrap()), flat(g.get(&wt).unwrap()), flat(g.get(&b).unwrap()), gr)
                };
                let (fused, reference) = (run(true), run(false));
                let case = format!("{dims:?}, batch statistics {batch_stats}, residual tracks {residual_tracks}");
                assert!(fused == reference, "{case}");
                assert!(fused.0.contains(&0.0) && fused.0.iter().any(|v| *v > 0.0), "{case}");
                assert_eq!(fused.4.is_some(), residual_tracks, "{case}");
            }
        }
    }

    /// The fused BatchNorm + ReLU equals BatchNorm then candle's ReLU: values
    /// and the gradients of the input, weight and bias, with batch and with
    /// running statistics.
    #[test]
    fn fused_relu_matches_batch_norm_then_relu() {
        crate::train::layers::assert_bn_variants_agree(
            9,
            (3, 4, 3, 5),
            |x, w, b, mean, var, batch_stats| batch_norm_cpu(x, w, b, mean, var, 1e-5, batch_stats, true).unwrap(),
            |x, w, b, mean, var, batch_stats| {
                batch_norm_cpu(x, w, b, mean, var, 1e-5, batch_stats, false).unwrap().relu().unwrap()
            },
        );
    }
}
