//! 3x3 convolutions with stride 1 and padding 1 on small planes (8x8 and
//! less) on the CPU, with the batch in the SIMD lanes.
//!
//! On an 8x8 plane a fifth of the direct path's domain (`conv3x3.rs`) is
//! border, and every output pixel multiplies all nine taps, zeros included:
//! 16% of an 8x8 plane's taps and 31% of a 4x4 plane's read the padding. Here
//! the images go across the lanes instead: blocks of [`L`] images stored as
//! `[block][channel][y][x][lane]` ([`Lanes`], with a zero border of one pixel
//! around each plane), so that all lanes of a tile share one output pixel and
//! with it one set of live taps. A tile of 6 output channels x 16 lanes
//! multiplies only those taps, and no position of its domain is border.
//!
//! * Forward: tiles over (block, output channels, pixel).
//! * Input gradient: the same tiles on the output gradient with the kernel
//!   flipped and transposed (`conv3x3::pack`).
//! * Kernel gradient: `dw[o][c][ky][kx] = Σ_{b,y,x,lane} dy[o][y][x] · x[c][y + ky - 1][x + kx - 1]`,
//!   tiles of 3 output channels x 3 taps of a kernel row, summed over the
//!   lanes in a fixed order (the result does not depend on the threads).
//!
//! The tiles use AVX2 and FMA where the CPU has them and the same arithmetic
//! in plain Rust elsewhere. Lanes past the batch are zeros.

use super::conv3x3::{groups, pack, put_dw, simd, OB};
use rayon::prelude::*;

/// Images per block: the lanes of two 8-float vectors.
const L: usize = 16;
/// Output channels per kernel-gradient tile (3 x 3 taps of a row accumulated).
const DB: usize = 3;

/// Where each pixel of a batch of `n` images of `h` x `w` lives: blocks of
/// [`L`] images, a channel plane of each block padded with one zero pixel on
/// every side, each pixel's [`L`] lanes together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lanes {
    n: usize,
    h: usize,
    w: usize,
    blocks: usize,
}

impl Lanes {
    fn new(n: usize, h: usize, w: usize) -> Lanes {
        Lanes { n, h, w, blocks: n.div_ceil(L) }
    }
    /// Floats per padded channel plane of a block.
    fn plane(&self) -> usize {
        (self.h + 2) * (self.w + 2) * L
    }
    /// Index in a padded plane of pixel (y, x) (-1 and `h`/`w` are the border).
    fn at(&self, y: usize, x: usize) -> usize {
        (y * (self.w + 2) + x) * L
    }
    /// The kernel rows and columns (ky, kx ranges) whose taps read a pixel
    /// of output pixel (y, x), not the padding.
    fn live(&self, y: usize, x: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let rows = usize::from(y == 0)..if y + 1 == self.h { 2 } else { 3 };
        let cols = usize::from(x == 0)..if x + 1 == self.w { 2 } else { 3 };
        (rows, cols)
    }
}

/// `c` channels of the NCHW images in `x` in the [`Lanes`] layout (zeros on
/// the border and in lanes past the batch).
fn to_lanes(x: &[f32], c: usize, l: &Lanes) -> Vec<f32> {
    let hw = l.h * l.w;
    assert_eq!(x.len(), l.n * c * hw);
    let mut out = vec![0f32; l.blocks * c * l.plane()];
    out.par_chunks_mut(l.plane()).enumerate().for_each(|(i, plane)| {
        let (b, ch) = (i / c, i % c);
        for lane in 0..L.min(l.n - b * L) {
            let src = &x[((b * L + lane) * c + ch) * hw..][..hw];
            for y in 0..l.h {
                for (xi, v) in src[y * l.w..][..l.w].iter().enumerate() {
                    plane[l.at(y + 1, xi + 1) + lane] = *v;
                }
            }
        }
    });
    out
}

/// One forward tile of `W` output channels at output pixel (y, x) of one
/// block: `out[j·L + i] (+)= Σ_c Σ_live t wk[c][t][j] · xb[c·plane + at(y + ky, x + kx) + i]`
/// (added to `out` with `add`).
#[allow(clippy::too_many_arguments)]
fn tile_fwd<const W: usize>(
    xb: &[f32],
    l: &Lanes,
    (y, x): (usize, usize),
    cin: usize,
    wk: &[f32],
    out: &mut [f32],
    add: bool,
    fast: bool,
) {
    // Every read lies inside `xb` and every weight inside `wk`: checked here
    // once for the tile, so the SIMD version may read unchecked.
    assert!(y < l.h && x < l.w && xb.len() >= cin * l.plane() && wk.len() == cin * 9 * W && out.len() >= W * L);
    let (rows, cols) = l.live(y, x);
    // (tap, offset from the plane's start) of the live taps.
    let mut taps = [(0usize, 0usize); 9];
    let mut live = 0;
    for ky in rows {
        for kx in cols.clone() {
            taps[live] = (ky * 3 + kx, l.at(y + ky, x + kx));
            live += 1;
        }
    }
    let taps = &taps[..live];
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` is only set when `simd()` found AVX2 and FMA; the
        // taps' offsets lie inside a plane and the bounds were asserted above.
        #[allow(unsafe_code)]
        unsafe {
            return avx2::tile_fwd::<W>(xb, l.plane(), taps, cin, wk, out, add);
        }
    }
    let _ = fast;
    let mut acc = [[0f32; L]; W];
    if add {
        for (j, a) in acc.iter_mut().enumerate() {
            a.copy_from_slice(&out[j * L..][..L]);
        }
    }
    for c in 0..cin {
        for &(t, off) in taps {
            let xs = &xb[c * l.plane() + off..][..L];
            for (j, a) in acc.iter_mut().enumerate() {
                let wv = wk[(c * 9 + t) * W + j];
                for (a, x) in a.iter_mut().zip(xs) {
                    *a = wv.mul_add(*x, *a);
                }
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        out[j * L..][..L].copy_from_slice(a);
    }
}

/// One kernel-gradient tile of `R` output channels and one kernel row `ky`
/// over `pixels` (each (y, x) with its row y + ky - 1 inside the plane):
/// `acc[j·3 + kx] += Σ_{pixel, lane} dyb[j·plane + at(y + 1, x + 1) + lane] · xb[at(y + ky, x + kx) + lane]`.
fn tile_dw<const R: usize>(
    dyb: &[f32],
    xb: &[f32],
    l: &Lanes,
    ky: usize,
    rows: std::ops::Range<usize>,
    acc: &mut [f32],
    fast: bool,
) {
    assert!(rows.end <= l.h && (R - 1) * l.plane() + l.plane() <= dyb.len() && xb.len() >= l.plane());
    assert!(ky < 3 && acc.len() == R * 3);
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: as in `tile_fwd`: AVX2 and FMA present, bounds asserted above.
        #[allow(unsafe_code)]
        unsafe {
            return avx2::tile_dw::<R>(dyb, xb, l, ky, rows, acc);
        }
    }
    let _ = fast;
    // Eight partial sums per tap, as the SIMD version keeps them.
    let mut lanes = [[[0f32; 8]; 3]; R];
    for y in rows {
        for x in 0..l.w {
            for half in 0..L / 8 {
                let xs = &xb[l.at(y + ky, x) + half * 8..];
                for (j, lanes) in lanes.iter_mut().enumerate() {
                    let d = &dyb[j * l.plane() + l.at(y + 1, x + 1) + half * 8..][..8];
                    for (kx, lanes) in lanes.iter_mut().enumerate() {
                        for (i, lane) in lanes.iter_mut().enumerate() {
                            *lane = d[i].mul_add(xs[kx * L + i], *lane);
                        }
                    }
                }
            }
        }
    }
    for (j, lanes) in lanes.iter().enumerate() {
        for (kx, lanes) in lanes.iter().enumerate() {
            acc[j * 3 + kx] += super::conv3x3::hsum(lanes);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use super::{Lanes, L};
    use std::arch::x86_64::{
        _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };

    /// [`super::tile_fwd`] with `2 W` vector accumulators.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; the bounds `super::tile_fwd` asserts must hold.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_fwd<const W: usize>(
        xb: &[f32],
        plane: usize,
        taps: &[(usize, usize)],
        cin: usize,
        wk: &[f32],
        out: &mut [f32],
        add: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; W];
        if add {
            for (j, a) in acc.iter_mut().enumerate() {
                for (v, a) in a.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(out.as_ptr().add(j * L + v * 8));
                }
            }
        }
        let mut x = xb.as_ptr();
        let mut w = wk.as_ptr();
        for _ in 0..cin {
            for &(t, off) in taps {
                let p = x.add(off);
                let xs = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))];
                for (j, a) in acc.iter_mut().enumerate() {
                    let wv = _mm256_broadcast_ss(&*w.add(t * W + j));
                    for (a, xv) in a.iter_mut().zip(xs) {
                        *a = _mm256_fmadd_ps(wv, xv, *a);
                    }
                }
            }
            x = x.add(plane);
            w = w.add(9 * W);
        }
        let o = out.as_mut_ptr();
        for (j, a) in acc.iter().enumerate() {
            for (v, a) in a.iter().enumerate() {
                _mm256_storeu_ps(o.add(j * L + v * 8), *a);
            }
        }
    }

    /// [`super::tile_dw`] with `3 R` vector accumulators.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; the bounds `super::tile_dw` asserts must hold.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_dw<const R: usize>(
        dyb: &[f32],
        xb: &[f32],
        l: &Lanes,
        ky: usize,
        rows: std::ops::Range<usize>,
        acc: &mut [f32],
    ) {
        let mut a = [[_mm256_setzero_ps(); 3]; R];
        let (d, xp, plane) = (dyb.as_ptr(), xb.as_ptr(), l.plane());
        for y in rows {
            for x in 0..l.w {
                for half in 0..L / 8 {
                    let p = xp.add(l.at(y + ky, x) + half * 8);
                    let xs = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(L)), _mm256_loadu_ps(p.add(2 * L))];
                    let q = d.add(l.at(y + 1, x + 1) + half * 8);
                    for (j, a) in a.iter_mut().enumerate() {
                        let dv = _mm256_loadu_ps(q.add(j * plane));
                        for (a, xv) in a.iter_mut().zip(xs) {
                            *a = _mm256_fmadd_ps(dv, xv, *a);
                        }
                    }
                }
            }
        }
        for (j, a) in a.iter().enumerate() {
            for (kx, v) in a.iter().enumerate() {
                acc[j * 3 + kx] += super::super::conv3x3::avx2::hsum(*v);
            }
        }
    }
}

/// The convolution of `xb` (`cin` channels in the [`Lanes`] layout) with the
/// packed kernel `wk`: `outs` NCHW channels.
fn conv(xb: &[f32], cin: usize, wk: &[f32], outs: usize, l: &Lanes, fast: bool) -> Vec<f32> {
    // Input channels per pass: their planes of a block stay in L2 (147 KiB
    // at 4x4, 410 KiB at 8x8) and a tile's weights for them (13.5 KiB) in L1.
    const CHANNELS: usize = 64;
    let hw = l.h * l.w;
    let mut out = vec![0f32; l.n * outs * hw];
    // One task per block and tile of output channels, which owns those
    // channels of the block's images.
    let mut tasks = Vec::new();
    for (b, block) in out.chunks_mut(L * outs * hw).enumerate() {
        let mut images: Vec<&mut [f32]> = block.chunks_exact_mut(outs * hw).collect();
        for (o0, width) in groups(outs, OB) {
            let parts: Vec<&mut [f32]> = images
                .iter_mut()
                .map(|img| {
                    let (part, rest) = std::mem::take(img).split_at_mut(width * hw);
                    *img = rest;
                    part
                })
                .collect();
            tasks.push((b, o0, width, parts));
        }
    }
    tasks.into_par_iter().for_each(|(b, o0, width, mut parts)| {
        // Each pixel's tile, [pixel][j][lane], summed over the passes.
        let mut sums = vec![0f32; hw * OB * L];
        for c0 in (0..cin).step_by(CHANNELS) {
            let cs = CHANNELS.min(cin - c0);
            let xb = &xb[(b * cin + c0) * l.plane()..][..cs * l.plane()];
            let wk = &wk[(o0 * cin + c0 * width) * 9..][..width * cs * 9];
            let add = c0 > 0;
            for (p, tile) in sums.chunks_exact_mut(OB * L).enumerate() {
                let at = (p / l.w, p % l.w);
                match width {
                    6 => tile_fwd::<6>(xb, l, at, cs, wk, tile, add, fast),
                    5 => tile_fwd::<5>(xb, l, at, cs, wk, tile, add, fast),
                    4 => tile_fwd::<4>(xb, l, at, cs, wk, tile, add, fast),
                    3 => tile_fwd::<3>(xb, l, at, cs, wk, tile, add, fast),
                    2 => tile_fwd::<2>(xb, l, at, cs, wk, tile, add, fast),
                    _ => tile_fwd::<1>(xb, l, at, cs, wk, tile, add, fast),
                }
            }
        }
        for (p, tile) in sums.chunks_exact(OB * L).enumerate() {
            for (lane, img) in parts.iter_mut().enumerate() {
                for j in 0..width {
                    img[j * hw + p] = tile[j * L + lane];
                }
            }
        }
    });
    out
}

/// The kernel gradient `(cout, cin, 3, 3)` from the input and the output
/// gradient, both in the [`Lanes`] layout.
fn kernel_grad(xb: &[f32], cin: usize, dyb: &[f32], cout: usize, l: &Lanes, fast: bool) -> Vec<f32> {
    /// Input channels per task: their planes of a block stay in L2 while
    /// every tile of output channels goes over them.
    const CHANNELS: usize = 16;
    let plane = l.plane();
    // One task per block and run of input channels, consecutive tasks on the
    // same block (whose output gradient then stays in L2).
    let runs: Vec<usize> = (0..cin).step_by(CHANNELS).collect();
    let tasks: Vec<(usize, usize)> = (0..l.blocks).flat_map(|b| runs.iter().map(move |&c0| (b, c0))).collect();
    // Per task, for each tile of output channels (o0, rows): from o0 · cs · 9
    // on, [channel][ky][row][kx].
    let parts: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(b, c0)| {
            let cs = CHANNELS.min(cin - c0);
            let mut acc = vec![0f32; cout * cs * 9];
            for (o0, rows) in groups(cout, DB) {
                let dy = &dyb[(b * cout + o0) * plane..][..rows * plane];
                let acc = &mut acc[o0 * cs * 9..][..rows * cs * 9];
                for (ci, acc) in acc.chunks_exact_mut(3 * rows * 3).enumerate() {
                    let x = &xb[(b * cin + c0 + ci) * plane..][..plane];
                    for (ky, acc) in acc.chunks_exact_mut(rows * 3).enumerate() {
                        // Output rows whose tap row ky reads a pixel row.
                        let ys = usize::from(ky == 0)..if ky == 2 { l.h - 1 } else { l.h };
                        match rows {
                            3 => tile_dw::<3>(dy, x, l, ky, ys, acc, fast),
                            2 => tile_dw::<2>(dy, x, l, ky, ys, acc, fast),
                            _ => tile_dw::<1>(dy, x, l, ky, ys, acc, fast),
                        }
                    }
                }
            }
            acc
        })
        .collect();
    // The blocks' sums added in block order, then into (cout, cin, 3, 3).
    let mut dw = vec![0f32; cout * cin * 9];
    for (k, &c0) in runs.iter().enumerate() {
        let cs = CHANNELS.min(cin - c0);
        let mut sum = parts[k].clone();
        for b in 1..l.blocks {
            sum.iter_mut().zip(&parts[b * runs.len() + k]).for_each(|(s, v)| *s += v);
        }
        for (o0, rows) in groups(cout, DB) {
            put_dw(&mut dw, &sum[o0 * cs * 9..][..rows * cs * 9], (o0, rows), c0, cin);
        }
    }
    dw
}

/// A 3x3, stride 1, padding 1 convolution of NCHW `x` (`n` x `cin` x `h` x `w`)
/// with `w` (`cout` x `cin` x 3 x 3).
pub(super) fn forward(x: &[f32], w: &[f32], dims: (usize, usize, usize, usize), cout: usize) -> Vec<f32> {
    forward_with(x, w, dims, cout, simd())
}

fn forward_with(
    x: &[f32],
    w: &[f32],
    (n, cin, h, wd): (usize, usize, usize, usize),
    cout: usize,
    fast: bool,
) -> Vec<f32> {
    let l = Lanes::new(n, h, wd);
    let xb = to_lanes(x, cin, &l);
    let wk = pack(w, cout, cin, false);
    conv(&xb, cin, &wk, cout, &l, fast)
}

/// The input gradient (when `need_dx`, else empty) and the kernel gradient
/// (when `need_dw`, else empty) of [`forward`].
pub(super) fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dims: (usize, usize, usize, usize),
    cout: usize,
    need: (bool, bool),
) -> (Vec<f32>, Vec<f32>) {
    backward_with(x, w, dy, dims, cout, need, simd())
}

fn backward_with(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (n, cin, h, wd): (usize, usize, usize, usize),
    cout: usize,
    (need_dx, need_dw): (bool, bool),
    fast: bool,
) -> (Vec<f32>, Vec<f32>) {
    let l = Lanes::new(n, h, wd);
    let dyb = to_lanes(dy, cout, &l);
    let mut dw = Vec::new();
    if need_dw {
        dw = kernel_grad(&to_lanes(x, cin, &l), cin, &dyb, cout, &l, fast);
    }
    let mut dx = Vec::new();
    if need_dx {
        let wk = pack(w, cout, cin, true);
        dx = conv(&dyb, cout, &wk, cin, &l, fast);
    }
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::layers::randn;
    use crate::train::rng::Rng;

    /// Blocks without border (`[block][channel][pixel][lane]`) back to NCHW.
    fn from_lanes(y: &[f32], c: usize, l: &Lanes) -> Vec<f32> {
        let hw = l.h * l.w;
        let mut out = vec![0f32; l.n * c * hw];
        out.par_chunks_mut(hw).enumerate().for_each(|(i, dst)| {
            let (img, ch) = (i / c, i % c);
            let (b, lane) = (img / L, img % L);
            let src = &y[(b * c + ch) * hw * L..][..hw * L];
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(L)) {
                *d = s[lane];
            }
        });
        out
    }

    /// The layout puts each pixel in its image's lane, inside a zero border,
    /// and `from_lanes` reads it back.
    #[test]
    fn the_lanes_layout_puts_the_batch_across_the_lanes() {
        let (n, c, h, w) = (18, 2, 3, 5);
        let x: Vec<f32> = (1..=n * c * h * w).map(|v| v as f32).collect();
        let l = Lanes::new(n, h, w);
        assert_eq!(l.blocks, 2);
        let xb = to_lanes(&x, c, &l);
        assert_eq!(xb.iter().filter(|v| **v != 0.0).count(), x.len());
        // Image 17 (block 1, lane 1), channel 1, pixel (2, 4).
        let at = (c + 1) * l.plane() + l.at(3, 5) + 1;
        assert_eq!(xb[at], x[((17 * c + 1) * h + 2) * w + 4]);
        // Its right neighbour is border.
        assert_eq!(xb[at + L], 0.0);
        // Without the border, the same blocks read back as NCHW.
        let mut unpadded = vec![0f32; l.blocks * c * h * w * L];
        for (i, plane) in unpadded.chunks_exact_mut(h * w * L).enumerate() {
            for y in 0..h {
                for xi in 0..w {
                    plane[(y * w + xi) * L..][..L].copy_from_slice(&xb[i * l.plane() + l.at(y + 1, xi + 1)..][..L]);
                }
            }
        }
        assert_eq!(from_lanes(&unpadded, c, &l), x);
    }

    /// Output and both gradients against the general direct path
    /// (`conv3x3.rs`, itself checked against the definition), with the SIMD
    /// tiles and the plain ones, for batches that fill no whole block,
    /// ragged channel counts and planes from 1x1 to 8x8.
    #[test]
    fn lanes_convolution_and_its_gradients_match_the_direct_path() {
        let mut rng = Rng::new(11);
        for (n, cin, cout, h, wd) in
            [(1, 3, 4, 8, 8), (17, 5, 7, 4, 4), (16, 2, 6, 1, 1), (3, 9, 11, 2, 2), (20, 4, 3, 3, 5), (2, 70, 5, 1, 3)]
        {
            let dims = (n, cin, h, wd);
            let x = randn(&mut rng, &[n, cin, h, wd]);
            let w = randn(&mut rng, &[cout, cin, 3, 3]);
            let dy = randn(&mut rng, &[n, cout, h, wd]);
            let want = (
                super::super::conv3x3::forward(&x, &w, dims, cout),
                super::super::conv3x3::backward(&x, &w, &dy, dims, cout, (true, true)),
            );
            let plain =
                (forward_with(&x, &w, dims, cout, false), backward_with(&x, &w, &dy, dims, cout, (true, true), false));
            for fast in [false, simd()] {
                let got = (
                    forward_with(&x, &w, dims, cout, fast),
                    backward_with(&x, &w, &dy, dims, cout, (true, true), fast),
                );
                // The SIMD tiles do the plain tiles' arithmetic in the same order.
                assert!(got == plain, "{dims:?} {cout}: SIMD and plain tiles differ");
                let close = |a: &[f32], b: &[f32]| {
                    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs()))
                };
                assert!(close(&got.0, &want.0), "forward {dims:?} {cout} fast {fast}");
                assert!(close(&got.1 .0, &want.1 .0), "dx {dims:?} {cout} fast {fast}");
                assert!(close(&got.1 .1, &want.1 .1), "dw {dims:?} {cout} fast {fast}");
                let (none, only_dw) = backward_with(&x, &w, &dy, dims, cout, (false, true), fast);
                assert!(none.is_empty() && only_dw == got.1 .1);
            }
        }
    }
}
