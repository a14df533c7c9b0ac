//! Max, average and adaptive average pooling.

use super::cpu_f32;
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};

/// Geometry of a 2-D pooling window (square, symmetric padding, floor mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// The input rows (or columns) `lo..hi` under window `o` of an axis of `len`
/// inputs (the padding clipped off).
fn window(o: usize, len: usize, p: PoolParams) -> (usize, usize) {
    let start = o * p.stride;
    (start.saturating_sub(p.padding), (start + p.kernel).saturating_sub(p.padding).min(len))
}

/// One step of the scan for a window's first maximum: `v` (at `i`) replaces
/// the best so far if it is larger or NaN, unless the best is a NaN already.
/// Written as selects, not branches: on real activations which candidate wins
/// is a coin toss, and mispredicted branches cost more than the rest of the scan.
/// The index may be of any type (`()` where only the value is wanted).
#[inline]
pub(super) fn scan<I: Copy>(best_v: &mut f32, best: &mut I, v: f32, i: I) {
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(v <= best)` is meant: true for a NaN `v`
    let take = !best_v.is_nan() && !(v <= *best_v);
    *best_v = if take { v } else { *best_v };
    *best = if take { i } else { *best };
}

/// The flat input index of the maximum of each window, in PyTorch's scan order
/// (row-major within the window, the first maximum wins, NaN propagates).
fn window_argmax(plane: &[f32], h: usize, w: usize, p: PoolParams, oh: usize, ow: usize, out: &mut [u32]) {
    if p.kernel == 2 && p.stride == 2 && p.padding == 0 {
        // VGG's and smallcnn's pools: four candidates, no clipping.
        for (oy, out) in out.chunks_exact_mut(ow).enumerate().take(oh) {
            let (top, bottom) = (2 * oy * w, (2 * oy + 1) * w);
            let (r0, r1) = (&plane[top..top + w], &plane[bottom..bottom + w]);
            for (ox, o) in out.iter_mut().enumerate() {
                let i = 2 * ox;
                let (mut best_v, mut best) = (r0[i], top + i);
                scan(&mut best_v, &mut best, r0[i + 1], top + i + 1);
                scan(&mut best_v, &mut best, r1[i], bottom + i);
                scan(&mut best_v, &mut best, r1[i + 1], bottom + i + 1);
                *o = best as u32;
            }
        }
        return;
    }
    windows_argmax(plane, h, w, p, oh, ow, out);
}

/// [`window_argmax`] for any window.
fn windows_argmax(plane: &[f32], h: usize, w: usize, p: PoolParams, oh: usize, ow: usize, out: &mut [u32]) {
    let cols: Vec<(usize, usize)> = (0..ow).map(|ox| window(ox, w, p)).collect();
    for (oy, out) in out.chunks_exact_mut(ow).enumerate().take(oh) {
        let (y0, y1) = window(oy, h, p);
        for (o, &(x0, x1)) in out.iter_mut().zip(&cols) {
            let (mut best_v, mut best) = (plane[y0 * w + x0], y0 * w + x0);
            for y in y0..y1 {
                let row = &plane[y * w + x0..y * w + x1];
                for (j, &v) in row.iter().enumerate() {
                    scan(&mut best_v, &mut best, v, y * w + x0 + j);
                }
            }
            *o = best as u32;
        }
    }
}

/// [`scan`] without the index: the maximum so far takes `v` if `v` is larger or NaN, unless it
/// is a NaN already.
#[inline]
fn scan_value(mut best: f32, v: f32) -> f32 {
    scan(&mut best, &mut (), v, ());
    best
}

/// Each window's maximum of one plane, without its index (a pass that no gradient goes through:
/// evaluation, frozen layers): the maximum of each row's window first (`rows`, `h` x `ow`),
/// then of those rows' maxima, a pass that runs along whole output rows. The value is the
/// element [`window_argmax`] picks, bit for bit: the first row that holds a window's first
/// maximum holds it first in its own window too (ties, `0.0` and `-0.0` among them, keep the
/// earlier element in both orders, and a NaN wins in both).
/// `cols` holds each output column's window, [`window`]`(ox, w, p)`.
fn window_max(
    plane: &[f32],
    (h, w): (usize, usize),
    p: PoolParams,
    (oh, cols): (usize, &[(usize, usize)]),
    rows: &mut [f32],
    out: &mut [f32],
) {
    let ow = cols.len();
    let stem = p == PoolParams { kernel: 3, stride: 2, padding: 1 } && w >= 2;
    for (y, r) in rows.chunks_exact_mut(ow).enumerate().take(h) {
        let line = &plane[y * w..(y + 1) * w];
        if stem {
            // Window ox covers columns 2ox-1, 2ox and 2ox+1: the odd column of pair ox-1, then
            // both of pair ox (a loop over pairs, which the compiler turns into lanes).
            let pairs = line.chunks_exact(2);
            r[0] = scan_value(line[0], line[1]);
            for (r, (prev, pair)) in r[1..].iter_mut().zip(pairs.clone().zip(pairs.skip(1))) {
                *r = scan_value(scan_value(prev[1], pair[0]), pair[1]);
            }
            if w % 2 == 1 && ow > 1 {
                // The last window is clipped to columns w-2 and w-1.
                r[ow - 1] = scan_value(line[w - 2], line[w - 1]);
            }
            continue;
        }
        for (r, &(x0, x1)) in r.iter_mut().zip(cols) {
            *r = line[x0 + 1..x1].iter().fold(line[x0], |b, &v| scan_value(b, v));
        }
    }
    for (oy, o) in out.chunks_exact_mut(ow).enumerate().take(oh) {
        let (y0, y1) = window(oy, h, p);
        o.copy_from_slice(&rows[y0 * ow..(y0 + 1) * ow]);
        for y in y0 + 1..y1 {
            for (o, &v) in o.iter_mut().zip(&rows[y * ow..(y + 1) * ow]) {
                *o = scan_value(*o, v);
            }
        }
    }
}

/// [`window_max`] that also keeps the index of each window's maximum within its plane, the one
/// [`window_argmax`] gives (the training pass of the windows that [`window_argmax`] has no
/// shortcut for). `rows` and `rows_at` hold each row's window maxima and their indices.
#[allow(clippy::cast_possible_truncation)] // a plane's index fits u32: `argmax_of` stores them so
fn window_max_at(
    plane: &[f32],
    (h, w): (usize, usize),
    p: PoolParams,
    (oh, cols): (usize, &[(usize, usize)]),
    (rows, rows_at): (&mut [f32], &mut [u32]),
    (out, at): (&mut [f32], &mut [u32]),
) {
    let ow = cols.len();
    let stem = p == PoolParams { kernel: 3, stride: 2, padding: 1 } && w >= 2;
    for (y, (r, ra)) in rows.chunks_exact_mut(ow).zip(rows_at.chunks_exact_mut(ow)).enumerate().take(h) {
        let line = &plane[y * w..(y + 1) * w];
        // Windows 1..=done go as lanes (the stem's unclipped windows), the rest one by one.
        let mut done = 0;
        if stem {
            // Window ox covers columns 2ox-1, 2ox and 2ox+1: the odd column of pair ox-1, then
            // both of pair ox.
            let pairs = line.chunks_exact(2);
            let inner = r[1..].iter_mut().zip(ra[1..].iter_mut()).zip(pairs.clone().zip(pairs.skip(1)));
            for (base, ((r, ra), (prev, pair))) in (0u32..).step_by(2).zip(inner) {
                let (mut best_v, mut best) = (prev[1], base + 1);
                scan(&mut best_v, &mut best, pair[0], base + 2);
                scan(&mut best_v, &mut best, pair[1], base + 3);
                *r = best_v;
                *ra = (y * w) as u32 + best;
            }
            done = (ow - 1).min(w / 2 - 1);
        }
        for (ox, &(x0, x1)) in cols.iter().enumerate() {
            if (1..=done).contains(&ox) {
                continue;
            }
            let (mut best_v, mut best) = (line[x0], x0);
            for (x, &v) in line.iter().enumerate().take(x1).skip(x0 + 1) {
                scan(&mut best_v, &mut best, v, x);
            }
            r[ox] = best_v;
            ra[ox] = (y * w + best) as u32;
        }
    }
    for (oy, (o, a)) in out.chunks_exact_mut(ow).zip(at.chunks_exact_mut(ow)).enumerate().take(oh) {
        let (y0, y1) = window(oy, h, p);
        o.copy_from_slice(&rows[y0 * ow..(y0 + 1) * ow]);
        a.copy_from_slice(&rows_at[y0 * ow..(y0 + 1) * ow]);
        for y in y0 + 1..y1 {
            let (rv, ri) = (&rows[y * ow..(y + 1) * ow], &rows_at[y * ow..(y + 1) * ow]);
            // A later row wins only with a larger value or a NaN.
            for (((o, a), &v), &i) in o.iter_mut().zip(a.iter_mut()).zip(rv).zip(ri) {
                scan(o, a, v, i);
            }
        }
    }
}

/// Max pooling that keeps no indices, for input that tracks no gradient.
struct MaxPool2dValues(PoolParams);

impl candle_core::CustomOp1 for MaxPool2dValues {
    fn name(&self) -> &'static str {
        "sweep-max-pool2d-values"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (n, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = (self.0.out(h)?, self.0.out(w)?);
        let x = cpu_f32(storage, layout, "max_pool2d")?;
        let cols: Vec<(usize, usize)> = (0..ow).map(|ox| window(ox, w, self.0)).collect();
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).for_each_init(
            || vec![0f32; h * ow],
            |rows, (o, plane)| window_max(plane, (h, w), self.0, (oh, &cols), rows, o),
        );
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

/// The max-pool op; the forward pass keeps the index of each window's maximum
/// for the backward pass, so the windows are scanned once per step.
struct MaxPool2dOp {
    p: PoolParams,
    argmax: std::sync::Mutex<Option<Vec<u32>>>,
}

/// Each window's maximum's index within its plane, for every plane of NCHW `x`.
fn argmax_of(x: &[f32], (h, w): (usize, usize), p: PoolParams) -> Result<Vec<u32>> {
    use rayon::prelude::*;
    let (oh, ow) = (p.out(h)?, p.out(w)?);
    let mut idx = vec![0u32; x.len() / (h * w) * oh * ow];
    idx.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(i, plane)| window_argmax(plane, h, w, p, oh, ow, i));
    Ok(idx)
}

impl candle_core::CustomOp1 for MaxPool2dOp {
    fn name(&self) -> &'static str {
        "sweep-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (n, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = (self.p.out(h)?, self.p.out(w)?);
        let x = cpu_f32(storage, layout, "max_pool2d")?;
        if self.p != (PoolParams { kernel: 2, stride: 2, padding: 0 }) {
            // Rows, then columns: the values and their indices in one pass.
            let cols: Vec<(usize, usize)> = (0..ow).map(|ox| window(ox, w, self.p)).collect();
            let (mut out, mut idx) = (vec![0f32; n * c * oh * ow], vec![0u32; n * c * oh * ow]);
            out.par_chunks_mut(oh * ow).zip(idx.par_chunks_mut(oh * ow)).zip(x.par_chunks(h * w)).for_each_init(
                || (vec![0f32; h * ow], vec![0u32; h * ow]),
                |(rows, rows_at), ((o, i), plane)| {
                    window_max_at(plane, (h, w), self.p, (oh, &cols), (rows, rows_at), (o, i));
                },
            );
            *self.argmax.lock().expect("max-pool lock") = Some(idx);
            return Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))));
        }
        let idx = argmax_of(x, (h, w), self.p)?;
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow).zip(idx.par_chunks(oh * ow)).zip(x.par_chunks(h * w)).for_each(
            |((o, i), plane)| {
                for (o, &i) in o.iter_mut().zip(i) {
                    *o = plane[i as usize];
                }
            },
        );
        *self.argmax.lock().expect("max-pool lock") = Some(idx);
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        // A second backward pass through the same graph scans the windows again.
        let idx = match self.argmax.lock().expect("max-pool lock").take() {
            Some(idx) => idx,
            None => super::with_cpu_f32(&arg.detach(), |x| argmax_of(x, (h, w), self.p))??,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&MaxPool2dBackward { idx, h, w })?))
    }
}

/// Routes each output gradient to its window's maximum (summed where windows overlap).
struct MaxPool2dBackward {
    idx: Vec<u32>,
    h: usize,
    w: usize,
}

impl candle_core::CustomOp1 for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        "sweep-max-pool2d-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (n, c, oh, ow) = layout.shape().dims4()?;
        let g = cpu_f32(storage, layout, "max_pool2d backward")?;
        if self.idx.len() != g.len() {
            candle_core::bail!("max_pool2d backward: {} gradients for {} windows", g.len(), self.idx.len());
        }
        let plane = self.h * self.w;
        let mut out = vec![0f32; n * c * plane];
        out.par_chunks_mut(plane).zip(self.idx.par_chunks(oh * ow)).zip(g.par_chunks(oh * ow)).for_each(
            |((o, idx), g)| {
                for (&i, &gv) in idx.iter().zip(g) {
                    o[i as usize] += gv;
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((n, c, self.h, self.w))))
    }
}

/// 2-D max pooling as `torch.nn.functional.max_pool2d(x, kernel, stride, padding)`.
///
/// On CPU (f32) a custom op whose gradient goes to the first maximum of each
/// window with weight one, as PyTorch's; for input that tracks no gradient (a test
/// pass, a frozen stem) the same maxima without their indices. Elsewhere the windows
/// are gathered with tensor ops and reduced with `max` (correct values; a tie shares
/// the gradient).
pub fn max_pool2d(xs: &Tensor, p: PoolParams) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 {
        if !xs.track_op() {
            return xs.contiguous()?.apply_op1_no_bwd(&MaxPool2dValues(p));
        }
        return xs.contiguous()?.apply_op1(MaxPool2dOp { p, argmax: std::sync::Mutex::new(None) });
    }
    let (n, c, h, w) = xs.dims4()?;
    let (oh, ow) = (p.out(h)?, p.out(w)?);
    #[cfg(feature = "cudnn")]
    if matches!(xs.dtype(), candle_core::DType::F32 | candle_core::DType::BF16)
        && super::kernels::use_cudnn(xs.device())
    {
        return super::pool_cuda::max_pool2d(xs, p, (oh, ow));
    }
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

/// Average pooling with kernel == stride `k`, no padding, floor mode, on the
/// CPU: one pass each way (candle's mean over the middle axis of a reshaped
/// view is a strided scalar loop, 15 ms for DenseNet's first transition).
struct AvgPool2dOp(usize);

impl candle_core::CustomOp1 for AvgPool2dOp {
    fn name(&self) -> &'static str {
        "sweep-avg-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let k = self.0;
        let (n, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = (h / k, w / k);
        let x = cpu_f32(storage, layout, "avg_pool2d")?;
        let scale = 1.0 / (k * k) as f32;
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).for_each(|(o, plane)| {
            for (oy, o) in o.chunks_exact_mut(ow).enumerate() {
                for dy in 0..k {
                    let row = &plane[(oy * k + dy) * w..][..ow * k];
                    for (o, win) in o.iter_mut().zip(row.chunks_exact(k)) {
                        *o += win.iter().sum::<f32>();
                    }
                }
                for o in o.iter_mut() {
                    *o *= scale;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&AvgPool2dBackward { k: self.0, h, w })?))
    }
}

/// Spreads each output gradient over its window, divided by the window's size
/// (the rows and columns that fit no window get zero).
struct AvgPool2dBackward {
    k: usize,
    h: usize,
    w: usize,
}

impl candle_core::CustomOp1 for AvgPool2dBackward {
    fn name(&self) -> &'static str {
        "sweep-avg-pool2d-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (k, h, w) = (self.k, self.h, self.w);
        let (n, c, oh, ow) = layout.shape().dims4()?;
        let g = cpu_f32(storage, layout, "avg_pool2d backward")?;
        let scale = 1.0 / (k * k) as f32;
        let mut out = vec![0f32; n * c * h * w];
        out.par_chunks_mut(h * w).zip(g.par_chunks(oh * ow)).for_each(|(plane, g)| {
            for (oy, g) in g.chunks_exact(ow).enumerate() {
                for dy in 0..k {
                    let row = &mut plane[(oy * k + dy) * w..][..ow * k];
                    for (win, &gv) in row.chunks_exact_mut(k).zip(g) {
                        win.fill(gv * scale);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }
}

/// 2-D average pooling with `kernel == stride`, no padding, floor mode (the
/// last rows and columns that do not fill a window are dropped, as in PyTorch).
pub fn avg_pool2d(xs: &Tensor, k: usize) -> Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    let (oh, ow) = (h / k, w / k);
    if oh == 0 || ow == 0 {
        candle_core::bail!("avg_pool2d: input {h}x{w} is smaller than the kernel {k}");
    }
    if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 {
        return xs.contiguous()?.apply_op1(AvgPool2dOp(k));
    }
    let xs = if oh * k != h || ow * k != w { xs.narrow(2, 0, oh * k)?.narrow(3, 0, ow * k)? } else { xs.clone() };
    if super::is_channels_last(&xs) {
        // (N, H, W, C) storage: the windows are a view of it, the result stays channels-last
        let v = super::layout::to_nhwc(&xs)?.reshape((n, oh, k, ow, k, c))?;
        return super::layout::from_nhwc(&v.mean(4)?.mean(2)?);
    }
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
/// rectangles, so the mean separates by axis). bf16 activations are averaged
/// in f32 (the result is f32, as the f32 weights of the head that follows).
pub fn adaptive_avg_pool2d(xs: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    if xs.dtype() == candle_core::DType::BF16 {
        return adaptive_avg_pool2d(&xs.to_dtype(candle_core::DType::F32)?, oh, ow);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU op gives the values and gradient of the reshape-and-mean path
    /// (odd sizes: the last row and column fit no window).
    #[test]
    fn average_pool_matches_the_generic_path() {
        use candle_core::{Device, Var};
        let data: Vec<f32> = (0..2 * 3 * 7 * 9).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
        let x = Var::from_vec(data.clone(), (2, 3, 7, 9), &Device::Cpu).unwrap();
        let x2 = Var::from_vec(data, (2, 3, 7, 9), &Device::Cpu).unwrap();
        let ours = avg_pool2d(x.as_tensor(), 2).unwrap();
        let generic =
            x2.as_tensor().narrow(2, 0, 6).unwrap().narrow(3, 0, 8).unwrap().reshape((2, 3, 3, 2, 4, 2)).unwrap();
        let generic = generic.mean(5).unwrap().mean(3).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(ours.dims(), &[2, 3, 3, 4]);
        assert_eq!(flat(&ours), flat(&generic));
        let w = Tensor::arange(0f32, 72., &Device::Cpu).unwrap().reshape((2, 3, 3, 4)).unwrap();
        let g1 = ours.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = generic.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(flat(g1.get(&x).unwrap()), flat(g2.get(&x2).unwrap()));
    }

    /// The four-candidate path for 2x2/2 windows picks what the general one
    /// picks: the first maximum on ties, the first NaN.
    #[test]
    fn two_by_two_windows_pick_as_the_general_path() {
        let (h, w) = (6, 8);
        let mut rng = crate::train::rng::Rng::new(4);
        let mut plane: Vec<f32> = (0..h * w).map(|_| (rng.next_f64() * 4.0).floor() as f32).collect();
        plane[9] = f32::NAN;
        plane[18] = f32::NAN;
        plane[19] = f32::NAN;
        let p = PoolParams { kernel: 2, stride: 2, padding: 0 };
        let (mut fast, mut general) = (vec![0u32; 12], vec![0u32; 12]);
        window_argmax(&plane, h, w, p, 3, 4, &mut fast);
        windows_argmax(&plane, h, w, p, 3, 4, &mut general);
        assert_eq!(fast, general);
        assert_eq!(fast[0], 9, "the window's NaN");
        assert_eq!(fast[5], 18, "the first of two NaNs");
    }

    /// Without a gradient to route, the pool takes each window's maximum without its index: the
    /// same bits as the indexed op's, for the stem's 3x3/2 pad 1 windows, VGG's 2x2/2, 3x3/1
    /// pad 1 and 3x3/3, on planes with ties, both zeros and NaNs; and the rows-then-columns
    /// scan with indices picks the general scan's indices.
    #[test]
    fn the_pool_without_indices_gives_the_indexed_ops_bits() {
        let mut rng = Rng::new(6);
        for (k, s, pad) in [(3, 2, 1), (2, 2, 0), (3, 1, 1), (3, 3, 0), (1, 1, 0)] {
            let p = PoolParams { kernel: k, stride: s, padding: pad };
            for (h, w) in [(1, 1), (2, 3), (3, 2), (5, 5), (6, 7), (8, 8), (9, 4)] {
                if h + 2 * pad < k || w + 2 * pad < k {
                    continue;
                }
                let n = 2 * 3 * h * w;
                let mut v: Vec<f32> = (0..n).map(|_| ((rng.next_f64() * 6.0).floor() - 3.0) as f32).collect();
                for x in &mut v {
                    match (rng.next_f64() * 20.0) as u32 {
                        0 => *x = f32::NAN,
                        1 => *x = -0.0,
                        2 => *x = 0.0,
                        _ => {}
                    }
                }
                let tracked = Var::from_vec(v.clone(), (2, 3, h, w), &Device::Cpu).unwrap();
                let plain = Tensor::from_vec(v, (2, 3, h, w), &Device::Cpu).unwrap();
                let a = max_pool2d(tracked.as_tensor(), p).unwrap();
                let b = max_pool2d(&plain, p).unwrap();
                assert!(a.track_op() && !b.track_op());
                assert_eq!(a.dims(), b.dims());
                let bits = |t: &Tensor| -> Vec<u32> {
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
                };
                assert_eq!(bits(&a), bits(&b), "{p:?} on {h}x{w}");
                // Rows then columns with indices: the general scan's indices and values.
                let (oh, ow) = (p.out(h).unwrap(), p.out(w).unwrap());
                let cols: Vec<(usize, usize)> = (0..ow).map(|ox| window(ox, w, p)).collect();
                let flat = plain.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for plane in flat.chunks(h * w) {
                    let mut want = vec![0u32; oh * ow];
                    windows_argmax(plane, h, w, p, oh, ow, &mut want);
                    let (mut rows, mut rows_at) = (vec![0f32; h * ow], vec![0u32; h * ow]);
                    let (mut got_v, mut got) = (vec![0f32; oh * ow], vec![0u32; oh * ow]);
                    window_max_at(plane, (h, w), p, (oh, &cols), (&mut rows, &mut rows_at), (&mut got_v, &mut got));
                    assert_eq!(got, want, "{p:?} on {h}x{w}");
                    let picked: Vec<u32> = want.iter().map(|&i| plane[i as usize].to_bits()).collect();
                    assert_eq!(got_v.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), picked);
                }
            }
        }
    }

    use crate::train::layers::randn;
    use crate::train::rng::Rng;
    use candle_core::{Device, Var};

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
