//! `relu(y + bias)` with one bias a channel (the end of a VGG convolution
//! without BatchNorm) as one op each way on the CPU, where candle takes a
//! broadcast add, a ReLU and, backwards, a comparison, a product and a sum;
//! in place when no gradient is tracked (frozen layers, evaluation).

use super::{cpu_f32, with_cpu_f32};
use candle_core::{CpuStorage, CustomOp2, DType, InplaceOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel task at least.
const GRAIN: usize = 1 << 14;

struct BiasRelu;

/// (images, channels, elements a channel plane) of an (N, C, ...) layout.
fn planes(l: &Layout) -> Result<(usize, usize, usize)> {
    let dims = l.dims();
    if dims.len() < 2 {
        candle_core::bail!("bias_relu: {dims:?} has no channel axis");
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

/// Planes a task: together at least [`GRAIN`] elements.
fn planes_per_task(plane: usize) -> usize {
    GRAIN.div_ceil(plane.max(1))
}

/// `out[p] = max(y[p] + bias[channel of p], 0)` over whole planes (`y`
/// None: `out`'s own values, in place).
pub(super) fn apply(out: &mut [f32], y: Option<&[f32]>, bias: &[f32], plane: usize) {
    let c = bias.len();
    let per = planes_per_task(plane);
    let body = |(task, out): (usize, &mut [f32])| {
        for (j, o) in out.chunks_mut(plane).enumerate() {
            let i = task * per + j;
            let b = bias[i % c];
            match y {
                Some(y) => o.iter_mut().zip(&y[i * plane..][..plane]).for_each(|(o, &y)| *o = (y + b).max(0.0)),
                None => o.iter_mut().for_each(|o| *o = (*o + b).max(0.0)),
            }
        }
    };
    out.par_chunks_mut(per * plane).enumerate().for_each(body);
}

impl CustomOp2 for BiasRelu {
    fn name(&self) -> &'static str {
        "sweep-bias-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c, plane) = planes(l1)?;
        let (y, bias) = (cpu_f32(s1, l1, "bias_relu")?, cpu_f32(s2, l2, "bias_relu")?);
        if bias.len() != c {
            candle_core::bail!("bias_relu: {} biases for {c} channels", bias.len());
        }
        let mut out = vec![0f32; y.len()];
        apply(&mut out, Some(y), bias, plane);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// The input gets the incoming gradient where the output is positive
    /// (PyTorch's ReLU backward), the bias its sum over each channel's planes
    /// (each plane summed, then the planes in image order: the same bits for
    /// any number of threads).
    fn bwd(&self, y: &Tensor, bias: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dy, dbias) = gradients(res, grad, bias.track_op())?;
        Ok((y.track_op().then_some(dy), dbias))
    }
}

/// The gradients of `relu(y + bias)` given its output `res` and the incoming
/// `grad`: y's, the incoming gradient where the output is positive (PyTorch's
/// ReLU backward), and (`want_bias`) the bias's, its sum over each channel's
/// planes (each plane summed, then the planes in image order: the same bits
/// for any number of threads).
pub(super) fn gradients(res: &Tensor, grad: &Tensor, want_bias: bool) -> Result<(Tensor, Option<Tensor>)> {
    let (n, c, plane) = planes(res.layout())?;
    let (g, sums) = with_cpu_f32(&res.detach(), |out| {
        with_cpu_f32(&grad.detach(), |dy| {
            let mut g = vec![0f32; dy.len()];
            let mut sums = vec![0f32; n * c];
            let per = planes_per_task(plane);
            g.par_chunks_mut(per * plane).zip(sums.par_chunks_mut(per)).enumerate().for_each(|(task, (g, sums))| {
                for (j, (g, sum)) in g.chunks_mut(plane).zip(sums).enumerate() {
                    let at = (task * per + j) * plane;
                    let (out, dy) = (&out[at..][..plane], &dy[at..][..plane]);
                    let mut s = 0f32;
                    for ((g, &d), &o) in g.iter_mut().zip(dy).zip(out) {
                        *g = if o > 0.0 { d } else { 0.0 };
                        s += *g;
                    }
                    *sum = s;
                }
            });
            (g, sums)
        })
    })??;
    let dbias = want_bias.then(|| {
        let per_channel: Vec<f32> = (0..c).map(|ci| (0..n).map(|i| sums[i * c + ci]).sum()).collect();
        Tensor::from_vec(per_channel, c, res.device())
    });
    Ok((Tensor::from_vec(g, res.shape(), res.device())?, dbias.transpose()?))
}

impl InplaceOp2 for BiasRelu {
    fn name(&self) -> &'static str {
        "sweep-bias-relu-in-place"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (_, c, plane) = planes(l1)?;
        let bias = cpu_f32(s2, l2, "bias_relu")?;
        let (CpuStorage::F32(data), Some((start, end))) = (s1, l1.contiguous_offsets()) else {
            candle_core::bail!("bias_relu: expected contiguous f32 storage");
        };
        if bias.len() != c {
            candle_core::bail!("bias_relu: {} biases for {c} channels", bias.len());
        }
        apply(&mut data[start..end], None, bias, plane);
        Ok(())
    }
}

/// `relu(y + bias)` for `y` of shape (N, C, ...) and `bias` of shape (C,).
///
/// On the CPU in f32 one op each way; when neither `y` nor `bias` tracks a
/// gradient, `y`'s storage is overwritten with the result, so `y` must be a
/// tensor nothing else reads (a layer's fresh output). Elsewhere candle's
/// broadcast add and ReLU (sweep's fused kernels on CUDA).
pub(crate) fn bias_relu(y: Tensor, bias: &Tensor) -> Result<Tensor> {
    let fused = y.device().is_cpu()
        && y.dtype() == DType::F32
        && bias.dtype() == DType::F32
        && y.rank() >= 2
        && bias.dims() == [y.dim(1)?];
    if !fused {
        return super::relu(&super::layout::add_channel_bias(&y, bias)?);
    }
    let y = if y.is_contiguous() { y } else { y.contiguous()? };
    let bias = bias.contiguous()?;
    if y.track_op() || bias.track_op() {
        return y.apply_op2(&bias, BiasRelu);
    }
    y.inplace_op2(&bias, &BiasRelu)?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// candle's `relu(y + bias)` and its gradients, beside the fused op's, on
    /// planes of several sizes (one element, smaller and larger than a task).
    #[test]
    fn values_and_gradients_equal_candles_ops() {
        let dev = Device::Cpu;
        let mut rng = crate::train::rng::Rng::new(7);
        for dims in [vec![3, 5, 1, 1], vec![2, 4, 7, 7], vec![2, 3, 130, 129], vec![4, 6]] {
            let c = dims[1];
            let x = super::super::randn(&mut rng, &dims);
            let b = super::super::randn(&mut rng, &[c]);
            let w = super::super::randn(&mut rng, &dims);
            let run = |fused: bool| {
                let xv = Var::from_vec(x.clone(), dims.as_slice(), &dev).unwrap();
                let bv = Var::from_vec(b.clone(), c, &dev).unwrap();
                // y is a fresh tensor (as a convolution's output is).
                let y = (xv.as_tensor() * 1.0).unwrap();
                let out = if fused {
                    bias_relu(y, bv.as_tensor()).unwrap()
                } else {
                    let shape: Vec<usize> = (0..dims.len()).map(|i| if i == 1 { c } else { 1 }).collect();
                    y.broadcast_add(&bv.as_tensor().reshape(shape).unwrap()).unwrap().relu().unwrap()
                };
                let wt = Tensor::from_vec(w.clone(), dims.as_slice(), &dev).unwrap();
                let g = (&out * &wt).unwrap().sum_all().unwrap().backward().unwrap();
                (flat(&out), flat(g.get(xv.as_tensor()).unwrap()), flat(g.get(bv.as_tensor()).unwrap()))
            };
            let (want, got) = (run(false), run(true));
            assert_eq!(got.0, want.0, "output, {dims:?}");
            assert_eq!(got.1, want.1, "input gradient, {dims:?}");
            for (g, w) in got.2.iter().zip(&want.2) {
                assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "bias gradient {g} against {w}, {dims:?}");
            }
        }
    }

    /// Without a gradient to track the result is written over the input's
    /// storage (no new buffer), with the same values.
    #[test]
    fn untracked_inputs_are_overwritten_in_place() {
        let dev = Device::Cpu;
        let y = Tensor::new(&[[[[-1f32, 2.0]], [[3.0, -4.0]]]], &dev).unwrap();
        let b = Tensor::new(&[0.5f32, 1.0], &dev).unwrap();
        let out = bias_relu(y.clone(), &b).unwrap();
        assert_eq!(flat(&out), [0.0, 2.5, 4.0, 0.0]);
        assert_eq!(flat(&y), [0.0, 2.5, 4.0, 0.0], "the input's storage holds the result");
    }
}
