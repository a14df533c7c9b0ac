//! Layers whose candle versions are wrong or slow for training.
//!
//! * [`conv2d`]: on the CPU, one im2col matrix of the whole batch (patches as
//!   rows, channels contiguous) and one large matrix product for the forward
//!   pass; the backward pass recomputes the im2col matrix and gets the weight
//!   gradient and the input gradient (then col2im) from two more products.
//!   candle's CPU conv builds a strided im2col tile per 512 pixels and its
//!   backward uses a direct `conv_transpose2d` loop, both far slower.
//! * [`max_pool2d`]: any kernel, stride and padding (the ResNet/DenseNet stem's
//!   3x3/2 with padding 1), with the gradient going to the first maximum of each
//!   window with weight one, as in PyTorch. candle's max-pool backward scales it by
//!   #max/k² and exists only for kernel == stride without padding.
//! * [`avg_pool2d`] (floor mode) and [`adaptive_avg_pool2d`] (VGG's 7x7).

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

/// Geometry of a 2-D pooling window (square, symmetric padding, floor mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolParams {
    /// Window size.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit padding on every side (never the maximum, as in PyTorch).
    pub padding: usize,
}

impl PoolParams {
    fn out(&self, size: usize) -> Result<usize> {
        if 2 * self.padding > self.kernel {
            candle_core::bail!("max_pool2d: padding {} is more than half the kernel {}", self.padding, self.kernel);
        }
        let padded = size + 2 * self.padding;
        if padded < self.kernel {
            candle_core::bail!("max_pool2d: input size {size} is smaller than the kernel {}", self.kernel);
        }
        Ok((padded - self.kernel) / self.stride + 1)
    }
}

/// The flat input index of the maximum of each window, in PyTorch's scan order
/// (row-major within the window, the first maximum wins, NaN propagates).
fn window_argmax(plane: &[f32], h: usize, w: usize, p: PoolParams, oh: usize, ow: usize, out: &mut [usize]) {
    for oy in 0..oh {
        let y0 = (oy * p.stride) as isize - p.padding as isize;
        for ox in 0..ow {
            let x0 = (ox * p.stride) as isize - p.padding as isize;
            let mut best = usize::MAX;
            let mut best_v = f32::NEG_INFINITY;
            for dy in 0..p.kernel as isize {
                let y = y0 + dy;
                if y < 0 || y >= h as isize {
                    continue;
                }
                for dx in 0..p.kernel as isize {
                    let x = x0 + dx;
                    if x < 0 || x >= w as isize {
                        continue;
                    }
                    let i = y as usize * w + x as usize;
                    let v = plane[i];
                    if best == usize::MAX || v > best_v || v.is_nan() {
                        best = i;
                        best_v = v;
                        if v.is_nan() {
                            break;
                        }
                    }
                }
            }
            out[oy * ow + ox] = best;
        }
    }
}

fn cpu_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("{what}: non-contiguous input") };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

struct MaxPool2dOp(PoolParams);

impl candle_core::CustomOp1 for MaxPool2dOp {
    fn name(&self) -> &'static str {
        "sweep-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (n, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = (self.0.out(h)?, self.0.out(w)?);
        let x = cpu_f32(storage, layout, "max_pool2d")?;
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).for_each(|(o, plane)| {
            let mut idx = vec![0usize; oh * ow];
            window_argmax(plane, h, w, self.0, oh, ow, &mut idx);
            for (o, &i) in o.iter_mut().zip(&idx) {
                *o = plane[i];
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &MaxPool2dBackward(self.0))?))
    }
}

/// Routes each output gradient to its window's maximum (summed where windows overlap).
struct MaxPool2dBackward(PoolParams);

impl CustomOp2 for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        "sweep-max-pool2d-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (n, c, h, w) = l1.shape().dims4()?;
        let (oh, ow) = (self.0.out(h)?, self.0.out(w)?);
        let x = cpu_f32(s1, l1, "max_pool2d backward")?;
        let g = cpu_f32(s2, l2, "max_pool2d backward")?;
        let mut out = vec![0f32; n * c * h * w];
        out.par_chunks_mut(h * w).zip(x.par_chunks(h * w)).zip(g.par_chunks(oh * ow)).for_each(|((o, plane), g)| {
            let mut idx = vec![0usize; oh * ow];
            window_argmax(plane, h, w, self.0, oh, ow, &mut idx);
            for (&i, &gv) in idx.iter().zip(g) {
                o[i] += gv;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }
}

/// 2-D max pooling as `torch.nn.functional.max_pool2d(x, kernel, stride, padding)`.
///
/// On CPU (f32) a custom op whose gradient goes to the first maximum of each
/// window with weight one, as PyTorch's. Elsewhere the windows are gathered with
/// tensor ops and reduced with `max` (correct values; a tie shares the gradient).
pub fn max_pool2d(xs: &Tensor, p: PoolParams) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 {
        return xs.contiguous()?.apply_op1(MaxPool2dOp(p));
    }
    let (n, c, h, w) = xs.dims4()?;
    let (oh, ow) = (p.out(h)?, p.out(w)?);
    // Pad with -inf to (stride * out + kernel) on each axis, then take each
    // window offset as a strided view via narrow + reshape.
    let (ph, pw) = (p.stride * oh + p.kernel, p.stride * ow + p.kernel);
    let pad = |xs: &Tensor, dim: usize, before: usize, after: usize| -> Result<Tensor> {
        let mut dims = xs.dims().to_vec();
        let mut parts = Vec::new();
        for amount in [before, after] {
            dims[dim] = amount;
            parts
                .push((amount > 0).then(|| Tensor::full(f32::NEG_INFINITY, dims.as_slice(), xs.device())).transpose()?);
        }
        let mut all: Vec<Tensor> = Vec::new();
        all.extend(parts[0].take().map(|t| t.to_dtype(xs.dtype())).transpose()?);
        all.push(xs.clone());
        all.extend(parts[1].take().map(|t| t.to_dtype(xs.dtype())).transpose()?);
        Tensor::cat(&all, dim)
    };
    let xs = pad(xs, 3, p.padding, pw.saturating_sub(w + p.padding))?.narrow(3, 0, pw)?;
    let xs = pad(&xs, 2, p.padding, ph.saturating_sub(h + p.padding))?.narrow(2, 0, ph)?;
    let mut best: Option<Tensor> = None;
    for dy in 0..p.kernel {
        for dx in 0..p.kernel {
            let v = xs
                .narrow(2, dy, p.stride * oh)?
                .reshape((n, c, oh, p.stride, pw))?
                .narrow(3, 0, 1)?
                .squeeze(3)?
                .narrow(3, dx, p.stride * ow)?
                .reshape((n, c, oh, ow, p.stride))?
                .narrow(4, 0, 1)?
                .squeeze(4)?;
            best = Some(match best {
                None => v,
                Some(b) => b.maximum(&v)?,
            });
        }
    }
    Ok(best.expect("kernel >= 1"))
}

/// 2-D average pooling with `kernel == stride`, no padding, floor mode (the
/// last rows and columns that do not fill a window are dropped, as in PyTorch).
pub fn avg_pool2d(xs: &Tensor, k: usize) -> Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    let (oh, ow) = (h / k, w / k);
    if oh == 0 || ow == 0 {
        candle_core::bail!("avg_pool2d: input {h}x{w} is smaller than the kernel {k}");
    }
    let xs = if oh * k != h || ow * k != w { xs.narrow(2, 0, oh * k)?.narrow(3, 0, ow * k)? } else { xs.clone() };
    xs.reshape((n, c, oh, k, ow, k))?.mean(5)?.mean(3)
}

/// The averaging matrix of one axis of PyTorch's adaptive average pooling:
/// output bin `i` averages inputs `floor(i*n/m) .. ceil((i+1)*n/m)`.
fn adaptive_matrix(n: usize, m: usize) -> Vec<f32> {
    let mut a = vec![0f32; m * n];
    for i in 0..m {
        let start = i * n / m;
        let end = ((i + 1) * n).div_ceil(m);
        for j in start..end {
            a[i * n + j] = 1.0 / (end - start) as f32;
        }
    }
    a
}

/// `torch.nn.AdaptiveAvgPool2d((oh, ow))`: a global mean for 1x1, identity when
/// the size already matches, otherwise two small matrix products (the bins are
/// rectangles, so the mean separates by axis).
pub fn adaptive_avg_pool2d(xs: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    if (h, w) == (oh, ow) {
        return Ok(xs.clone());
    }
    if (oh, ow) == (1, 1) {
        return xs.mean_keepdim(3)?.mean_keepdim(2);
    }
    let dev = xs.device();
    let rows = Tensor::from_vec(adaptive_matrix(h, oh), (oh, h), dev)?.to_dtype(xs.dtype())?;
    let cols = Tensor::from_vec(adaptive_matrix(w, ow), (ow, w), dev)?.to_dtype(xs.dtype())?.t()?;
    let xs = xs.reshape((n * c * h, w))?.matmul(&cols)?.reshape((n * c, h, ow))?;
    rows.broadcast_left(n * c)?.matmul(&xs)?.reshape((n, c, oh, ow))
}

/// Runs `f` on the f32 values of a CPU tensor, in place when it is contiguous.
fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("expected a CPU tensor") };
    Ok(f(cpu_f32(cpu, layout, "batch_norm")?))
}

/// Per-channel mean and biased variance of NCHW `x` (f32 on the CPU),
/// accumulated in f64.
pub fn channel_stats(x: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
    use rayon::prelude::*;
    let (n, c, h, w) = x.dims4()?;
    let hw = h * w;
    let m = (n * hw) as f64;
    let stats: Vec<(f32, f32)> = with_cpu_f32(x, |data| {
        (0..c)
            .into_par_iter()
            .map(|ch| {
                let planes = || (0..n).map(|b| &data[(b * c + ch) * hw..][..hw]);
                let mean = planes().map(|p| p.iter().map(|&v| f64::from(v)).sum::<f64>()).sum::<f64>() / m;
                let var =
                    planes().map(|p| p.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>()).sum::<f64>() / m;
                (mean as f32, var as f32)
            })
            .collect()
    })?;
    Ok(stats.into_iter().unzip())
}

/// `(x - mean) * invstd * weight + bias` per channel, with a hand-written
/// backward. With `batch_stats`, mean and invstd are the batch's own (training
/// BatchNorm: the gradient flows through them too); otherwise they are constants
/// (running statistics).
struct BatchNormOp {
    mean: Vec<f32>,
    invstd: Vec<f32>,
    batch_stats: bool,
}

impl BatchNormOp {
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
        use rayon::prelude::*;
        let (n, c, hw) = self.dims(l1)?;
        let x = cpu_f32(s1, l1, "batch_norm")?;
        let (w, b) = (cpu_f32(s2, l2, "batch_norm")?, cpu_f32(s3, l3, "batch_norm")?);
        let mut out = vec![0f32; n * c * hw];
        out.par_chunks_mut(hw).zip(x.par_chunks(hw)).enumerate().for_each(|(p, (o, x))| {
            let ch = p % c;
            let scale = self.invstd[ch] * w[ch];
            let shift = b[ch] - self.mean[ch] * scale;
            for (o, &x) in o.iter_mut().zip(x) {
                *o = x * scale + shift;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, wd) = x.dims4()?;
        let wv = w.detach().to_vec1::<f32>()?;
        let (x, grad) = (x.detach(), grad.detach());
        with_cpu_f32(&x, |xs| with_cpu_f32(&grad, |dy| self.backward(xs, dy, &wv, (n, c, h, wd), x.device())))??
    }
}

impl BatchNormOp {
    /// Gradients with respect to x, weight and bias, given x and dy (NCHW) and
    /// the weight.
    fn backward(
        &self,
        xs: &[f32],
        dy: &[f32],
        wv: &[f32],
        (n, c, h, wd): (usize, usize, usize, usize),
        dev: &candle_core::Device,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let hw = h * wd;
        // Σ dy and Σ dy * x̂ per channel.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut sdy, mut sdyx) = (0f64, 0f64);
                for bi in 0..n {
                    let at = (bi * c + ch) * hw;
                    for (&g, &v) in dy[at..at + hw].iter().zip(&xs[at..at + hw]) {
                        sdy += f64::from(g);
                        sdyx += f64::from(g) * f64::from((v - self.mean[ch]) * self.invstd[ch]);
                    }
                }
                (sdy, sdyx)
            })
            .collect();
        let m = (n * hw) as f32;
        let mut dx = vec![0f32; n * c * hw];
        dx.par_chunks_mut(hw).enumerate().for_each(|(p, d)| {
            let ch = p % c;
            let at = p * hw;
            let (mean, inv) = (self.mean[ch], self.invstd[ch]);
            let k = wv[ch] * inv;
            if self.batch_stats {
                let (sdy, sdyx) = (sums[ch].0 as f32 / m, sums[ch].1 as f32 / m);
                for ((d, &g), &v) in d.iter_mut().zip(&dy[at..at + hw]).zip(&xs[at..at + hw]) {
                    *d = k * (g - sdy - (v - mean) * inv * sdyx);
                }
            } else {
                for (d, &g) in d.iter_mut().zip(&dy[at..at + hw]) {
                    *d = k * g;
                }
            }
        });
        let dw: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
        let db: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
        Ok((
            Some(Tensor::from_vec(dx, (n, c, h, wd), dev)?),
            Some(Tensor::from_vec(dw, c, dev)?),
            Some(Tensor::from_vec(db, c, dev)?),
        ))
    }
}

/// BatchNorm's normalisation on the CPU (f32): `x` (N, C, H, W) normalised with
/// `mean` and `var` per channel, scaled by `weight` and shifted by `bias`.
/// `batch_stats` says that mean and var are `x`'s own (training), so that the
/// gradient includes their dependence on `x`.
pub fn batch_norm_cpu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    mean: Vec<f32>,
    var: &[f32],
    eps: f64,
    batch_stats: bool,
) -> Result<Tensor> {
    let invstd = var.iter().map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32).collect();
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, BatchNormOp { mean, invstd, batch_stats })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::rng::Rng;
    use candle_core::{Device, Var};

    fn randn(rng: &mut Rng, shape: &[usize]) -> Vec<f32> {
        (0..shape.iter().product::<usize>()).map(|_| rng.normal() as f32).collect()
    }

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

    #[test]
    fn max_pool_gradient_goes_to_the_maximum_with_weight_one() {
        // torch: x = tensor([[1., 2.], [3., 4.]]).view(1,1,2,2).requires_grad_();
        //        F.max_pool2d(x, 2).sum().backward(); x.grad == [[0, 0], [0, 1]]
        let x = Var::from_vec(vec![1f32, 2., 3., 4., 5., 9., 7., 8.], (1, 2, 2, 2), &Device::Cpu).unwrap();
        let y = max_pool2d(x.as_tensor(), PoolParams { kernel: 2, stride: 2, padding: 0 }).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![4., 9.]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, vec![0., 0., 0., 1., 0., 1., 0., 0.]);
    }

    #[test]
    fn max_pool_gradient_matches_finite_differences() {
        let mut rng = Rng::new(1);
        // Distinct values 0.1 apart, so a finite-difference step never changes the argmax.
        let mut vals: Vec<f32> = (0..2 * 3 * 4 * 4).map(|i| i as f32 * 0.1).collect();
        rng.shuffle(&mut vals);
        let wt = Tensor::from_vec(randn(&mut rng, &[2, 3, 2, 2]), (2, 3, 2, 2), &Device::Cpu).unwrap();
        let f = |v: &[f32]| -> f32 {
            let x = Tensor::from_vec(v.to_vec(), (2, 3, 4, 4), &Device::Cpu).unwrap();
            max_pool2d(&x, PoolParams { kernel: 2, stride: 2, padding: 0 })
                .unwrap()
                .mul(&wt)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let x = Var::from_vec(vals.clone(), (2, 3, 4, 4), &Device::Cpu).unwrap();
        let loss = max_pool2d(x.as_tensor(), PoolParams { kernel: 2, stride: 2, padding: 0 })
            .unwrap()
            .mul(&wt)
            .unwrap()
            .sum_all()
            .unwrap();
        let g = loss.backward().unwrap().get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in 0..vals.len() {
            let (mut a, mut b) = (vals.clone(), vals.clone());
            a[i] += 1e-2;
            b[i] -= 1e-2;
            let fd = (f(&a) - f(&b)) / 2e-2;
            assert!((fd - g[i]).abs() < 1e-3, "element {i}: finite difference {fd}, autograd {}", g[i]);
        }
    }

    /// The ResNet/DenseNet stem's pool (3x3, stride 2, padding 1) on odd and
    /// even sizes: the CPU op equals the tensor-op formulation used on other
    /// devices, and its gradient equals finite differences.
    #[test]
    fn overlapping_padded_max_pool_matches_the_generic_path_and_finite_differences() {
        let p = PoolParams { kernel: 3, stride: 2, padding: 1 };
        for hw in [5usize, 6, 7] {
            let n = 2 * 2 * hw * hw;
            let mut vals: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 3.0).collect();
            Rng::new(hw as u64).shuffle(&mut vals);
            let x = Tensor::from_vec(vals.clone(), (2, 2, hw, hw), &Device::Cpu).unwrap();
            let ours = max_pool2d(&x, p).unwrap();
            // The generic path runs for any dtype other than f32 on the CPU.
            let generic = max_pool2d(&x.to_dtype(candle_core::DType::F64).unwrap(), p).unwrap();
            let a = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = generic.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a, b, "size {hw}");
            assert_eq!(ours.dims(), &[2, 2, (hw - 1) / 2 + 1, (hw - 1) / 2 + 1]);

            let wt = Tensor::from_vec(randn(&mut Rng::new(9), ours.dims()), ours.dims(), &Device::Cpu).unwrap();
            let f = |v: &[f32]| -> f32 {
                let x = Tensor::from_vec(v.to_vec(), (2, 2, hw, hw), &Device::Cpu).unwrap();
                max_pool2d(&x, p).unwrap().mul(&wt).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
            };
            let xv = Var::from_vec(vals.clone(), (2, 2, hw, hw), &Device::Cpu).unwrap();
            let loss = max_pool2d(xv.as_tensor(), p).unwrap().mul(&wt).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap().get(&xv).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for i in 0..n {
                let (mut hi, mut lo) = (vals.clone(), vals.clone());
                hi[i] += 1e-2;
                lo[i] -= 1e-2;
                let fd = (f(&hi) - f(&lo)) / 2e-2;
                assert!((fd - g[i]).abs() < 1e-3, "size {hw}, element {i}: finite difference {fd}, autograd {}", g[i]);
            }
        }
    }

    #[test]
    fn adaptive_average_pool_bins_match_pytorch() {
        // torch: F.adaptive_avg_pool2d(torch.arange(25.).view(1,1,5,5), 3)
        // = [[3, 4.5, 6], [10.5, 12, 13.5], [18, 19.5, 21]]
        let x = Tensor::arange(0f32, 25., &Device::Cpu).unwrap().reshape((1, 1, 5, 5)).unwrap();
        let y = adaptive_avg_pool2d(&x, 3, 3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expected = [3.0, 4.5, 6.0, 10.5, 12.0, 13.5, 18.0, 19.5, 21.0];
        assert!(y.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-5), "{y:?}");
        // 2x2 -> 7x7 (VGG at small inputs): each bin covers one or two pixels.
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let y = adaptive_avg_pool2d(&x, 7, 7).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!((y[0], y[3], y[6], y[24], y[48]), (1.0, 1.5, 2.0, 2.5, 4.0));
    }
}
