//! 2-D convolution on the CPU: whole-batch im2col and one gemm each way.

use super::cpu_f32;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};

/// Geometry of a 2-D convolution (square kernels, symmetric padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    /// Zero padding on every side.
    pub padding: usize,
    /// Stride.
    pub stride: usize,
}

struct Conv2dOp(ConvParams);

fn contiguous_f32(storage: &CpuStorage, layout: &Layout) -> Result<Tensor> {
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("conv2d: non-contiguous input") };
    let data = storage.as_slice::<f32>()?[start..end].to_vec();
    Tensor::from_vec(data, layout.shape(), &candle_core::Device::Cpu)
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    oh: usize,
    ow: usize,
    p: ConvParams,
}

impl Geom {
    fn new(x: &Tensor, w: &Tensor, p: ConvParams) -> Result<Geom> {
        let (n, c, h, wd) = x.dims4()?;
        let k = w.dim(2)?;
        if h + 2 * p.padding < k || wd + 2 * p.padding < k {
            candle_core::bail!("conv2d: input {h}x{wd} with padding {} is smaller than the kernel {k}", p.padding);
        }
        let (oh, ow) = ((h + 2 * p.padding - k) / p.stride + 1, (wd + 2 * p.padding - k) / p.stride + 1);
        Ok(Geom { n, c, h, w: wd, k, oh, ow, p })
    }
    /// Columns of the im2col matrix: (kh, kw, channel), channel fastest.
    fn cols(&self) -> usize {
        self.k * self.k * self.c
    }
    /// The input pixel under kernel tap (ky, kx) of output pixel (oy, ox), if any.
    fn tap(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let y = (oy * self.p.stride + ky).checked_sub(self.p.padding).filter(|&y| y < self.h)?;
        let x = (ox * self.p.stride + kx).checked_sub(self.p.padding).filter(|&x| x < self.w)?;
        Some((y, x))
    }
}

/// NHWC input -> (N * OH * OW, K * K * C) patches (zeros where padded).
struct Im2Col(Geom);

impl candle_core::CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "sweep-im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let g = self.0;
        let x = cpu_f32(storage, layout, "im2col")?;
        let (kc, l) = (g.cols(), g.oh * g.ow);
        let mut out = vec![0f32; g.n * l * kc];
        out.par_chunks_mut(g.ow * kc).enumerate().for_each(|(row, dst)| {
            let (b, oy) = (row / g.oh, row % g.oh);
            let img = &x[b * g.h * g.w * g.c..(b + 1) * g.h * g.w * g.c];
            for ox in 0..g.ow {
                let patch = &mut dst[ox * kc..(ox + 1) * kc];
                for ky in 0..g.k {
                    for kx in 0..g.k {
                        if let Some((y, xx)) = g.tap(oy, ox, ky, kx) {
                            let src = (y * g.w + xx) * g.c;
                            let at = (ky * g.k + kx) * g.c;
                            patch[at..at + g.c].copy_from_slice(&img[src..src + g.c]);
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.n * l, kc))))
    }
}

/// The adjoint of [`Im2Col`]: (N * OH * OW, K * K * C) -> NHWC, overlapping taps summed.
struct Col2Im(Geom);

impl candle_core::CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "sweep-col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let g = self.0;
        let cols = cpu_f32(storage, layout, "col2im")?;
        let (kc, l) = (g.cols(), g.oh * g.ow);
        let mut out = vec![0f32; g.n * g.h * g.w * g.c];
        out.par_chunks_mut(g.h * g.w * g.c).enumerate().for_each(|(b, img)| {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let patch = &cols[(b * l + oy * g.ow + ox) * kc..][..kc];
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            if let Some((y, xx)) = g.tap(oy, ox, ky, kx) {
                                let dst = &mut img[(y * g.w + xx) * g.c..][..g.c];
                                let src = &patch[(ky * g.k + kx) * g.c..][..g.c];
                                for (d, s) in dst.iter_mut().zip(src) {
                                    *d += s;
                                }
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.h, g.w, g.c))))
    }
}

/// The im2col matrix of NCHW `x`.
fn patches(x: &Tensor, g: Geom) -> Result<Tensor> {
    let nhwc = x.permute((0, 2, 3, 1))?.contiguous()?;
    if g.k == 1 && g.p.stride == 1 && g.p.padding == 0 {
        return nhwc.reshape((g.n * g.h * g.w, g.c));
    }
    nhwc.apply_op1_no_bwd(&Im2Col(g))
}

/// The kernel as (C_out, K * K * C_in), matching the columns of [`patches`].
fn kernel_rows(w: &Tensor) -> Result<Tensor> {
    let cout = w.dim(0)?;
    w.permute((0, 2, 3, 1))?.contiguous()?.reshape((cout, ()))
}

/// (N * OH * OW, C) rows back to NCHW.
fn rows_to_nchw(rows: &Tensor, n: usize, h: usize, w: usize) -> Result<Tensor> {
    let c = rows.dim(1)?;
    rows.reshape((n, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()
}

/// Images per im2col matrix, so that one matrix stays under 64 MiB (VGG's first
/// layers at 224x224 would otherwise need about 1 GB for a batch of 8).
fn images_per_chunk(g: &Geom) -> usize {
    const MAX_FLOATS: usize = 16 << 20;
    (MAX_FLOATS / (g.oh * g.ow * g.cols()).max(1)).clamp(1, g.n)
}

/// Runs `f` on consecutive chunks of images of `x` (and of `grad`, if given).
fn by_chunks<T>(
    x: &Tensor,
    grad: Option<&Tensor>,
    g: Geom,
    mut f: impl FnMut(&Tensor, Option<&Tensor>, Geom) -> Result<T>,
) -> Result<Vec<T>> {
    let per = images_per_chunk(&g);
    let mut out = Vec::new();
    for start in (0..g.n).step_by(per) {
        let len = per.min(g.n - start);
        let (xc, gc) = if len == g.n {
            (x.clone(), grad.cloned())
        } else {
            (x.narrow(0, start, len)?, grad.map(|t| t.narrow(0, start, len)).transpose()?)
        };
        out.push(f(&xc, gc.as_ref(), Geom { n: len, ..g })?);
    }
    Ok(out)
}

fn forward(x: &Tensor, w: &Tensor, p: ConvParams) -> Result<Tensor> {
    let g = Geom::new(x, w, p)?;
    let wt = kernel_rows(w)?.t()?;
    let parts = by_chunks(x, None, g, |x, _, g| rows_to_nchw(&patches(x, g)?.matmul(&wt)?, g.n, g.oh, g.ow))?;
    if parts.len() == 1 {
        return Ok(parts.into_iter().next().expect("one part"));
    }
    Tensor::cat(&parts, 0)
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "sweep-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = forward(&contiguous_f32(s1, l1)?, &contiguous_f32(s2, l2)?, self.0)?;
        let shape = y.shape().clone();
        let (storage, layout) = y.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("conv2d: expected CPU storage") };
        let (start, end) = layout.contiguous_offsets().expect("fresh conv output is contiguous");
        Ok((CpuStorage::F32(cpu.as_slice::<f32>()?[start..end].to_vec()), shape))
    }

    /// Both gradients from one im2col of the input (recomputed rather than kept
    /// from the forward pass, to save memory) and two matrix products.
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.detach(), w.detach(), grad.detach());
        let g = Geom::new(&x, &w, self.0)?;
        let (cout, cin, k) = (w.dim(0)?, w.dim(1)?, g.k);
        let wr = kernel_rows(&w)?;
        let parts = by_chunks(&x, Some(&grad), g, |x, grad, g| {
            let grad = grad.expect("given");
            let grad_rows = grad.permute((0, 2, 3, 1))?.contiguous()?.reshape((g.n * g.oh * g.ow, cout))?;
            let dw = grad_rows.t()?.matmul(&patches(x, g)?)?;
            let dcols = grad_rows.matmul(&wr)?;
            let dx = if k == 1 && g.p.stride == 1 && g.p.padding == 0 {
                rows_to_nchw(&dcols, g.n, g.h, g.w)?
            } else {
                dcols.apply_op1_no_bwd(&Col2Im(g))?.permute((0, 3, 1, 2))?.contiguous()?
            };
            Ok((dx, dw))
        })?;
        let (dxs, dws): (Vec<Tensor>, Vec<Tensor>) = parts.into_iter().unzip();
        let mut dw = dws[0].clone();
        for d in &dws[1..] {
            dw = (dw + d)?;
        }
        let dw = dw.reshape((cout, k, k, cin))?.permute((0, 3, 1, 2))?.contiguous()?;
        let dx = if dxs.len() == 1 { dxs.into_iter().next().expect("one part") } else { Tensor::cat(&dxs, 0)? };
        Ok((Some(dx), Some(dw)))
    }
}

/// 2-D convolution without bias, groups 1, dilation 1.
///
/// On CPU with f32 this is the op with the fast backward described in the module
/// doc; elsewhere it is candle's conv2d.
pub fn conv2d(x: &Tensor, w: &Tensor, p: ConvParams) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && w.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op2(&w.contiguous()?, Conv2dOp(p))
    } else {
        x.conv2d(w, p.padding, p.stride, 1, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::layers::randn;
    use crate::train::rng::Rng;
    use candle_core::{Device, Var};

    /// Gradients of our conv equal those of candle's native conv2d (whose
    /// backward is a direct transcription of the definition).
    #[test]
    fn conv_gradients_match_candles_native_conv() {
        let mut rng = Rng::new(11);
        for (cin, cout, hw, k, padding, stride) in [
            (3, 4, 8, 3, 1, 1),
            (4, 5, 9, 3, 1, 2),
            (4, 5, 10, 3, 1, 2),
            (4, 6, 8, 1, 0, 2),
            (2, 3, 10, 7, 3, 2),
            (2, 3, 11, 7, 3, 2),
            (3, 2, 7, 3, 0, 1),
        ] {
            let xs = randn(&mut rng, &[2, cin, hw, hw]);
            let ws = randn(&mut rng, &[cout, cin, k, k]);
            let x = Var::from_vec(xs.clone(), (2, cin, hw, hw), &Device::Cpu).unwrap();
            let w = Var::from_vec(ws.clone(), (cout, cin, k, k), &Device::Cpu).unwrap();
            let x2 = Var::from_vec(xs, (2, cin, hw, hw), &Device::Cpu).unwrap();
            let w2 = Var::from_vec(ws, (cout, cin, k, k), &Device::Cpu).unwrap();
            let ours = conv2d(x.as_tensor(), w.as_tensor(), ConvParams { padding, stride }).unwrap();
            let native = x2.as_tensor().conv2d(w2.as_tensor(), padding, stride, 1, 1).unwrap();
            let weights = Tensor::from_vec(randn(&mut rng, ours.dims()), ours.dims(), &Device::Cpu).unwrap();
            let diff = |a: &Tensor, b: &Tensor| -> f32 {
                a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
            };
            assert!(diff(&ours, &native) < 1e-4);
            let g1 = ours.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = native.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
            let case = format!("cin {cin} cout {cout} hw {hw} k {k} pad {padding} stride {stride}");
            assert!(diff(g1.get(&x).unwrap(), g2.get(&x2).unwrap()) < 1e-4, "input grad, {case}");
            assert!(diff(g1.get(&w).unwrap(), g2.get(&w2).unwrap()) < 1e-3, "weight grad, {case}");
        }
    }

    /// A batch whose im2col matrix is split into chunks gives the same output
    /// and gradients as candle's conv2d.
    #[test]
    fn chunked_conv_matches_candles_native_conv() {
        let mut rng = Rng::new(5);
        let (n, cin, cout, hw) = (9, 64, 3, 64);
        let p = ConvParams { padding: 1, stride: 1 };
        let g = Geom { n, c: cin, h: hw, w: hw, k: 3, oh: hw, ow: hw, p };
        assert!(images_per_chunk(&g) < n, "the test must split the batch");
        let xs = randn(&mut rng, &[n, cin, hw, hw]);
        let ws = randn(&mut rng, &[cout, cin, 3, 3]);
        let x = Var::from_vec(xs.clone(), (n, cin, hw, hw), &Device::Cpu).unwrap();
        let w = Var::from_vec(ws.clone(), (cout, cin, 3, 3), &Device::Cpu).unwrap();
        let x2 = Var::from_vec(xs, (n, cin, hw, hw), &Device::Cpu).unwrap();
        let w2 = Var::from_vec(ws, (cout, cin, 3, 3), &Device::Cpu).unwrap();
        let ours = conv2d(x.as_tensor(), w.as_tensor(), p).unwrap();
        let native = x2.as_tensor().conv2d(w2.as_tensor(), 1, 1, 1, 1).unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(diff(&ours, &native) < 1e-3);
        let g1 = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = native.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(diff(g1.get(&x).unwrap(), g2.get(&x2).unwrap()) < 1e-2);
        let (a, b) = (g1.get(&w).unwrap(), g2.get(&w2).unwrap());
        let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff(a, b) / scale < 1e-4);
    }
}
