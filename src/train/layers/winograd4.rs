//! 3x3 convolutions with stride 1 and padding 1 on the CPU by Winograd's
//! F(4x4, 3x3) (Lavin and Gray, 2016): the larger tile of `winograd.rs`.
//!
//! Each 4x4 block of output pixels is computed from the 6x6 input patch
//! around it, through the 36 points of the transform domain: 36 products
//! (C_out x C) · (C x tiles) per convolution, 36·C_out·C multiply-adds per 16
//! output pixels where F(2x2, 3x3) does 64 and a direct convolution 144: 1.78
//! and 4 times fewer. The transforms (`Bᵀ`, `G`, `Aᵀ` below, with the points
//! 0, ±1, ±2 and ∞) multiply by constants up to 8, and round more than
//! F(2x2, 3x3)'s: against the same convolution in f64, 1e-5 of the largest
//! output at 512 channels where F(2x2, 3x3) and im2col are under 1e-6
//! (`examples/conv_accuracy.rs`; BENCHMARKS.md). cuDNN's and oneDNN's f32
//! Winograd use the same tile and points.
//!
//! Layouts and the backward pass are those of `winograd.rs` with 36 points:
//! `U` (C_out, 36, C), `V` and `dM` (channel, 36, tile), `M`, `dV` and `dU`
//! (36, rows, columns), the gradients the adjoint maps. The transforms run
//! on blocks of 8 tiles (or 8 input channels for the kernels) at once, one
//! tile per SIMD lane; a patch row is read split into its four column
//! phases, so that the tiles of a block read contiguous lanes.
//!
//! The transforms pass and return arrays of 96 to 192 bytes: with a plain
//! `inline` LLVM kept `bt` a function and copied them through memory
//! (memmove was 13% of a convolution's profile), hence `inline(always)`.
#![allow(clippy::inline_always)]

use super::winograd::{Minimal, Tiles};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::{Add, Mul, Neg, Sub};

/// Points along one axis of the transform domain (a 6-pixel patch side).
const P: usize = 6;

/// Points of the transform domain.
const XI: usize = P * P;

/// Tiles (or channels) transformed at once.
const LANES: usize = 8;

/// One value of `LANES` tiles.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct L([f32; LANES]);

impl L {
    /// The first `n` values of `src`, zeros in the other lanes (one load of
    /// eight lanes and a select where `src` holds eight).
    #[inline]
    fn load(src: &[f32], n: usize) -> L {
        if let Some(v) = src.first_chunk::<LANES>() {
            return if n >= LANES { L(*v) } else { L(std::array::from_fn(|l| if l < n { v[l] } else { 0.0 })) };
        }
        let mut v = [0f32; LANES];
        for (d, s) in v.iter_mut().zip(&src[..n]) {
            *d = *s;
        }
        L(v)
    }
    /// Writes the first `n` lanes to `dst`.
    #[inline]
    fn store(self, dst: &mut [f32], n: usize) {
        if let Some(d) = dst.first_chunk_mut::<LANES>().filter(|_| n == LANES) {
            *d = self.0;
            return;
        }
        for (d, s) in dst[..n].iter_mut().zip(&self.0) {
            *d = *s;
        }
    }
    /// Writes the first `n` lanes to `dst`, and the others too where `dst`
    /// holds them: for stores in increasing order, where the next block
    /// writes those places again.
    #[inline]
    fn store_over(self, dst: &mut [f32], n: usize) {
        match dst.first_chunk_mut::<LANES>() {
            Some(d) => *d = self.0,
            None => self.store(dst, n),
        }
    }
    /// Adds every lane onto `dst`.
    #[inline]
    fn add_to(self, dst: &mut [f32]) {
        for (d, v) in dst[..LANES].iter_mut().zip(self.0) {
            *d += v;
        }
    }
}

impl Add for L {
    type Output = L;
    #[inline]
    fn add(self, o: L) -> L {
        L(std::array::from_fn(|i| self.0[i] + o.0[i]))
    }
}

impl Sub for L {
    type Output = L;
    #[inline]
    fn sub(self, o: L) -> L {
        L(std::array::from_fn(|i| self.0[i] - o.0[i]))
    }
}

impl Neg for L {
    type Output = L;
    #[inline]
    fn neg(self) -> L {
        L(self.0.map(|v| -v))
    }
}

impl Mul<f32> for L {
    type Output = L;
    #[inline]
    fn mul(self, k: f32) -> L {
        L(self.0.map(|v| v * k))
    }
}

/// `Bᵀ d` along one axis of a patch: the input transform.
///
/// ```text
/// Bᵀ = [4  0 -5  0 1 0; 0 -4 -4  1 1 0; 0 4 -4 -1 1 0;
///       0 -2 -1  2 1 0; 0  2 -1 -2 1 0; 0 4  0 -5 0 1]
/// ```
#[inline(always)]
fn bt(d: [L; 6]) -> [L; 6] {
    [
        d[0] * 4.0 - d[2] * 5.0 + d[4],
        d[3] + d[4] - (d[1] + d[2]) * 4.0,
        d[4] - d[3] + (d[1] - d[2]) * 4.0,
        (d[3] - d[1]) * 2.0 + d[4] - d[2],
        (d[1] - d[3]) * 2.0 + d[4] - d[2],
        d[1] * 4.0 - d[3] * 5.0 + d[5],
    ]
}

/// `B s`, the adjoint of [`bt`].
#[inline(always)]
fn b(s: [L; 6]) -> [L; 6] {
    [
        s[0] * 4.0,
        (s[2] - s[1] + s[5]) * 4.0 + (s[4] - s[3]) * 2.0,
        -(s[0] * 5.0) - (s[1] + s[2]) * 4.0 - s[3] - s[4],
        s[1] - s[2] + (s[3] - s[4]) * 2.0 - s[5] * 5.0,
        s[0] + s[1] + s[2] + s[3] + s[4],
        s[5],
    ]
}

/// `Aᵀ m`: the output transform, six points to four pixels.
///
/// ```text
/// Aᵀ = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
/// ```
#[inline(always)]
fn at(m: [L; 6]) -> [L; 4] {
    let (p1, m1) = (m[1] + m[2], m[1] - m[2]);
    let (p3, m3) = (m[3] + m[4], m[3] - m[4]);
    [m[0] + p1 + p3, m1 + m3 * 2.0, p1 + p3 * 4.0, m1 + m3 * 8.0 + m[5]]
}

/// `A y`, the adjoint of [`at`].
#[inline(always)]
fn a(y: [L; 4]) -> [L; 6] {
    let (e, o) = (y[0] + y[2], y[1] + y[3]);
    let (e4, o2) = (y[0] + y[2] * 4.0, y[1] * 2.0 + y[3] * 8.0);
    [y[0], e + o, e - o, e4 + o2, e4 - o2, y[3]]
}

/// `G k`: the kernel transform, three taps to six points.
///
/// ```text
/// G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
/// ```
#[inline(always)]
fn g(k: [L; 3]) -> [L; 6] {
    let s = k[0] + k[2];
    let (p, q) = (k[0] * (1.0 / 24.0) + k[2] * (1.0 / 6.0), k[1] * (1.0 / 12.0));
    [k[0] * 0.25, -(s + k[1]) * (1.0 / 6.0), (k[1] - s) * (1.0 / 6.0), p + q, p - q, k[2]]
}

/// `Gᵀ u`, the adjoint of [`g`].
#[inline(always)]
fn gt(u: [L; 6]) -> [L; 3] {
    let (s12, s34) = (u[1] + u[2], u[3] + u[4]);
    [
        u[0] * 0.25 - s12 * (1.0 / 6.0) + s34 * (1.0 / 24.0),
        (u[2] - u[1]) * (1.0 / 6.0) + (u[3] - u[4]) * (1.0 / 12.0),
        (s34 - s12) * (1.0 / 6.0) + u[5],
    ]
}

/// `U`, (C_out, 36, C): every kernel in the transform domain, `G g Gᵀ`, eight
/// input channels at a time.
fn kernels(w: &[f32], s: &Tiles) -> Vec<f32> {
    let c = s.c;
    // SAFETY: each output channel's 36 points take all C input channels, eight at a time.
    #[allow(unsafe_code)]
    unsafe {
        super::written(s.cout * XI * c, |u| kernels_into(w, s, u))
    }
}

/// [`kernels`] into `u` (every element written).
fn kernels_into(w: &[f32], s: &Tiles, u: &mut [MaybeUninit<f32>]) {
    let c = s.c;
    u.par_chunks_mut(XI * c).enumerate().for_each(|(co, u)| {
        let w = &w[co * c * 9..][..c * 9];
        for c0 in (0..c).step_by(LANES) {
            let n = LANES.min(c - c0);
            let tap = |t: usize| L(std::array::from_fn(|l| if l < n { w[(c0 + l) * 9 + t] } else { 0.0 }));
            // G along each kernel row, then down the columns: point (y, x) = u[(6y + x)·C..].
            let rows: [[L; 6]; 3] = std::array::from_fn(|ky| g([tap(3 * ky), tap(3 * ky + 1), tap(3 * ky + 2)]));
            for x in 0..P {
                for (y, v) in g([rows[0][x], rows[1][x], rows[2][x]]).into_iter().enumerate() {
                    for (d, v) in u[(P * y + x) * c + c0..][..n].iter_mut().zip(v.0) {
                        d.write(v);
                    }
                }
            }
        }
    });
}

/// The kernel gradient (C_out, C, 3, 3) from `dU` (36, C_out, C): `Gᵀ dU G`.
fn kernel_gradients(du: &[f32], s: &Tiles) -> Vec<f32> {
    // SAFETY: each output channel's C kernels take all nine taps, eight channels at a time.
    #[allow(unsafe_code)]
    unsafe {
        super::written(s.cout * s.c * 9, |dw| kernel_gradients_into(du, s, dw))
    }
}

/// [`kernel_gradients`] into `dw` (every element written).
fn kernel_gradients_into(du: &[f32], s: &Tiles, dw: &mut [MaybeUninit<f32>]) {
    let c = s.c;
    dw.par_chunks_mut(c * 9).enumerate().for_each(|(co, dw)| {
        for c0 in (0..c).step_by(LANES) {
            let n = LANES.min(c - c0);
            let pt = |xi: usize| L::load(&du[(xi * s.cout + co) * c + c0..], n);
            // Gᵀ along each row of points, then down the columns.
            let rows: [[L; 3]; 6] = std::array::from_fn(|y| gt(std::array::from_fn(|x| pt(P * y + x))));
            for kx in 0..3 {
                for (ky, v) in gt(std::array::from_fn(|y| rows[y][kx])).into_iter().enumerate() {
                    for (l, v) in v.0[..n].iter().enumerate() {
                        dw[(c0 + l) * 9 + 3 * ky + kx].write(*v);
                    }
                }
            }
        }
    });
}

/// One plane row, zero-padded by one pixel on the left, split into its four
/// column phases of `q` floats each: `ph[p·q + t]` is padded column `4t + p`
/// (input column `4t + p - 1`), so the patch of tile `j` reads phases 0-3 at
/// `j` and 0-1 at `j + 1`.
fn split_row(row: Option<&[f32]>, ph: &mut [f32], q: usize) {
    ph.fill(0.0);
    let Some(row) = row else { return };
    let mut quads = row.chunks_exact(4);
    for (t, v) in quads.by_ref().enumerate() {
        ph[q + t] = v[0];
        ph[2 * q + t] = v[1];
        ph[3 * q + t] = v[2];
        ph[t + 1] = v[3];
    }
    let t = row.len() / 4;
    for (p, v) in quads.remainder().iter().enumerate() {
        ph[(p + 1) * q + t] = *v;
    }
}

/// `V` (C, 36, nt) of the chunk's tiles: each patch in the transform domain,
/// eight tiles of a tile row at a time.
fn patches(x: &[f32], s: &Tiles, t0: usize, nt: usize, v: &mut [f32]) {
    v.par_chunks_mut(XI * nt)
        .enumerate()
        .for_each(|(ci, v)| run!(channel_patches / channel_patches_avx2(x, s, t0, nt, ci, v)));
}

twice! {
    /// Input channel `ci`'s part of [`patches`]: `v` (36, nt).
    fn channel_patches / channel_patches_avx2(
        x: &[f32],
        s: &Tiles,
        t0: usize,
        nt: usize,
        ci: usize,
        v: &mut [f32],
    ) {
        let (plane, q) = (s.h * s.w, s.tw + 1 + LANES);
        let mut buf = vec![0f32; P * 4 * q];
        for r in s.runs(t0, nt) {
            let img = &x[(r.b * s.c + ci) * plane..][..plane];
            for (y, ph) in buf.chunks_exact_mut(4 * q).enumerate() {
                let yy = (4 * r.i + y).wrapping_sub(1);
                split_row((yy < s.h).then(|| &img[yy * s.w..][..s.w]), ph, q);
            }
            for j in (r.j0..r.j1).step_by(LANES) {
                let n = LANES.min(r.j1 - j);
                let mut rows = [[L::default(); P]; P];
                for (y, row) in rows.iter_mut().enumerate() {
                    let ph = |p: usize, d: usize| L::load(&buf[(4 * y + p) * q + j + d..], LANES);
                    *row = bt([ph(0, 0), ph(1, 0), ph(2, 0), ph(3, 0), ph(0, 1), ph(1, 1)]);
                }
                for x in 0..P {
                    let col = bt([rows[0][x], rows[1][x], rows[2][x], rows[3][x], rows[4][x], rows[5][x]]);
                    for (y, val) in col.into_iter().enumerate() {
                        val.store_over(&mut v[(P * y + x) * nt..][..nt][r.tb + j - r.j0..], n);
                    }
                }
            }
        }
    }
}

/// Writes the chunk's tiles of the output `y` (NCHW) from the products `M`
/// (36, C_out, nt): `Aᵀ M A` per tile, eight tiles at a time.
fn outputs(m: &[f32], s: &Tiles, t0: usize, nt: usize, y: &mut [f32]) {
    let (plane, imgs) = (s.h * s.w, s.images(t0, nt));
    let out = &mut y[imgs.start * s.cout * plane..imgs.end * s.cout * plane];
    out.par_chunks_mut(plane).enumerate().for_each(|(k, out)| {
        let (b, co) = (imgs.start + k / s.cout, k % s.cout);
        run!(plane_outputs / plane_outputs_avx2(m, s, t0, nt, b, co, out));
    });
}

twice! {
    /// Output plane `co` of image `b`: part of [`outputs`].
    #[allow(clippy::needless_range_loop)] // the index picks one value of each of six arrays
    fn plane_outputs / plane_outputs_avx2(
        m: &[f32],
        s: &Tiles,
        t0: usize,
        nt: usize,
        b: usize,
        co: usize,
        out: &mut [f32],
    ) {
        for r in s.runs_of(b, t0, nt) {
            for j in (r.j0..r.j1).step_by(LANES) {
                let n = LANES.min(r.j1 - j);
                let pt = |xi: usize| L::load(&m[(xi * s.cout + co) * nt + r.tb + j - r.j0..], n);
                // Aᵀ down the columns of points, then along the rows: 4 x 4 pixels.
                let mut cols = [[L::default(); 4]; P];
                for (x, col) in cols.iter_mut().enumerate() {
                    *col = at([pt(x), pt(P + x), pt(2 * P + x), pt(3 * P + x), pt(4 * P + x), pt(5 * P + x)]);
                }
                for dy in 0..4 {
                    let yy = 4 * r.i + dy;
                    if yy >= s.h {
                        break;
                    }
                    let px = at([cols[0][dy], cols[1][dy], cols[2][dy], cols[3][dy], cols[4][dy], cols[5][dy]]);
                    let row = &mut out[yy * s.w..][..s.w];
                    for l in 0..n {
                        let x0 = 4 * (j + l);
                        for (o, p) in row[x0..].iter_mut().zip(&px) {
                            *o = p.0[l];
                        }
                    }
                }
            }
        }
    }
}

/// `dM` (C_out, 36, nt) of the chunk's tiles: each 4x4 block of the output
/// gradient in the transform domain (zeros past the plane's edge).
fn output_gradients(dy: &[f32], s: &Tiles, t0: usize, nt: usize, dm: &mut [f32]) {
    dm.par_chunks_mut(XI * nt)
        .enumerate()
        .for_each(|(co, dm)| run!(channel_output_gradients / channel_output_gradients_avx2(dy, s, t0, nt, co, dm)));
}

twice! {
    /// Output channel `co`'s part of [`output_gradients`]: `dm` (36, nt).
    fn channel_output_gradients / channel_output_gradients_avx2(
        dy: &[f32],
        s: &Tiles,
        t0: usize,
        nt: usize,
        co: usize,
        dm: &mut [f32],
    ) {
        let (plane, q) = (s.h * s.w, s.tw + LANES);
        // Rows 4i .. 4i + 3, each split into its column phases: tile j's pixels at [p·q + j].
        let mut buf = vec![0f32; 4 * 4 * q];
        for r in s.runs(t0, nt) {
            let src = &dy[(r.b * s.cout + co) * plane..][..plane];
            for (y, ph) in buf.chunks_exact_mut(4 * q).enumerate() {
                ph.fill(0.0);
                let yy = 4 * r.i + y;
                if yy < s.h {
                    let row = &src[yy * s.w..][..s.w];
                    let mut quads = row.chunks_exact(4);
                    for (t, v) in quads.by_ref().enumerate() {
                        for (p, v) in v.iter().enumerate() {
                            ph[p * q + t] = *v;
                        }
                    }
                    for (p, v) in quads.remainder().iter().enumerate() {
                        ph[p * q + s.w / 4] = *v;
                    }
                }
            }
            for j in (r.j0..r.j1).step_by(LANES) {
                let n = LANES.min(r.j1 - j);
                // A along each pixel row, then down the columns: the 36 points.
                let mut rows = [[L::default(); P]; 4];
                for (y, row) in rows.iter_mut().enumerate() {
                    let px = |x: usize| L::load(&buf[(4 * y + x) * q + j..], LANES);
                    *row = a([px(0), px(1), px(2), px(3)]);
                }
                for x in 0..P {
                    for (y, val) in a([rows[0][x], rows[1][x], rows[2][x], rows[3][x]]).into_iter().enumerate() {
                        val.store_over(&mut dm[(P * y + x) * nt..][..nt][r.tb + j - r.j0..], n);
                    }
                }
            }
        }
    }
}

/// Adds onto the input gradient `dx` (NCHW) the chunk's patch gradients
/// `B dV Bᵀ`, from `dV` (36, C, nt).
fn input_gradients(dv: &[f32], s: &Tiles, t0: usize, nt: usize, dx: &mut [f32]) {
    let (plane, q, imgs) = (s.h * s.w, s.tw + 1 + LANES, s.images(t0, nt));
    let dst = &mut dx[imgs.start * s.c * plane..imgs.end * s.c * plane];
    dst.par_chunks_mut(plane).enumerate().for_each_init(
        || vec![0f32; P * 4 * q],
        |acc, (k, dst)| {
            let (b, ci) = (imgs.start + k / s.c, k % s.c);
            run!(plane_input_gradients / plane_input_gradients_avx2(dv, s, t0, nt, b, ci, acc, dst));
        },
    );
}

twice! {
    /// Input plane `ci` of image `b`: part of [`input_gradients`], with `acc` (`P·4·q` floats) to
    /// gather the patches in.
    #[allow(clippy::needless_range_loop)] // the index picks one value of each of six arrays
    fn plane_input_gradients / plane_input_gradients_avx2(
        dv: &[f32],
        s: &Tiles,
        t0: usize,
        nt: usize,
        b: usize,
        ci: usize,
        acc: &mut [f32],
        dst: &mut [f32],
    ) {
        let q = s.tw + 1 + LANES;
        for r in s.runs_of(b, t0, nt) {
            // The patch rows of the run, split into column phases as `split_row` reads them.
            acc.fill(0.0);
            for j in (r.j0..r.j1).step_by(LANES) {
                let n = LANES.min(r.j1 - j);
                let pt = |xi: usize| L::load(&dv[(xi * s.c + ci) * nt + r.tb + j - r.j0..], n);
                // B down the columns of points, then along the rows onto the patches.
                let mut cols = [[L::default(); P]; P];
                for (x, col) in cols.iter_mut().enumerate() {
                    *col = self::b([pt(x), pt(P + x), pt(2 * P + x), pt(3 * P + x), pt(4 * P + x), pt(5 * P + x)]);
                }
                for y in 0..P {
                    let row = self::b([cols[0][y], cols[1][y], cols[2][y], cols[3][y], cols[4][y], cols[5][y]]);
                    let idx = |p: usize, d: usize| (4 * y + p) * q + j + d;
                    for (p, v) in row[..4].iter().enumerate() {
                        v.add_to(&mut acc[idx(p, 0)..]);
                    }
                    row[4].add_to(&mut acc[idx(0, 1)..]);
                    row[5].add_to(&mut acc[idx(1, 1)..]);
                }
            }
            for (y, ph) in acc.chunks_exact(4 * q).enumerate() {
                let yy = (4 * r.i + y).wrapping_sub(1);
                if yy >= s.h {
                    continue;
                }
                // Input column k is padded column k + 1: phases 1, 2, 3 at t, then 0 at t + 1.
                let row = &mut dst[yy * s.w..][..s.w];
                let mut quads = row.chunks_exact_mut(4);
                for (t, o) in quads.by_ref().enumerate() {
                    o[0] += ph[q + t];
                    o[1] += ph[2 * q + t];
                    o[2] += ph[3 * q + t];
                    o[3] += ph[t + 1];
                }
                let t = s.w / 4;
                for (p, o) in quads.into_remainder().iter_mut().enumerate() {
                    *o += ph[(p + 1) * q + t];
                }
            }
        }
    }
}

/// F(4x4, 3x3): this module's transforms, for `winograd.rs`'s driver.
pub(super) struct F4;

impl Minimal for F4 {
    fn kernels(w: &[f32], s: &Tiles) -> Vec<f32> {
        kernels(w, s)
    }
    fn kernel_gradients(du: &[f32], s: &Tiles) -> Vec<f32> {
        kernel_gradients(du, s)
    }
    fn patches(x: &[f32], s: &Tiles, t0: usize, nt: usize, v: &mut [f32]) {
        patches(x, s, t0, nt, v);
    }
    fn outputs(m: &[f32], s: &Tiles, t0: usize, nt: usize, y: &mut [f32]) {
        outputs(m, s, t0, nt, y);
    }
    fn output_gradients(dy: &[f32], s: &Tiles, t0: usize, nt: usize, dm: &mut [f32]) {
        output_gradients(dy, s, t0, nt, dm);
    }
    fn input_gradients(dv: &[f32], s: &Tiles, t0: usize, nt: usize, dx: &mut [f32]) {
        input_gradients(dv, s, t0, nt, dx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(v: &[f32]) -> Vec<L> {
        v.iter().map(|x| L([*x; LANES])).collect()
    }

    /// The transforms' adjoints are adjoint: ⟨f(r), s⟩ = ⟨r, f*(s)⟩.
    #[test]
    fn each_transform_and_its_adjoint_agree() {
        let dot = |a: &[L], b: &[L]| a.iter().zip(b).map(|(x, y)| x.0[0] * y.0[0]).sum::<f32>();
        let r6: [L; 6] = lanes(&[0.3, -1.2, 2.5, 0.7, -0.4, 1.6]).try_into().unwrap();
        let s6: [L; 6] = lanes(&[1.1, 0.4, -0.9, 2.0, 0.8, -1.3]).try_into().unwrap();
        assert!((dot(&bt(r6), &s6) - dot(&r6, &b(s6))).abs() < 1e-4);
        let s4: [L; 4] = lanes(&[0.6, -1.5, 0.9, 2.2]).try_into().unwrap();
        assert!((dot(&at(r6), &s4) - dot(&r6, &a(s4))).abs() < 1e-4);
        let r3: [L; 3] = lanes(&[0.2, -0.8, 1.9]).try_into().unwrap();
        assert!((dot(&g(r3), &s6) - dot(&r3, &gt(s6))).abs() < 1e-5);
    }

    /// One axis of F(4, 3) is a correlation: y_o = Σ_k g_k d_(o+k).
    #[test]
    fn one_axis_is_a_correlation() {
        let (d, k) = ([0.5f32, -1.0, 2.0, 3.0, -0.25, 1.5], [0.25f32, -0.5, 1.5]);
        let (u, v) = (g(lanes(&k).try_into().unwrap()), bt(lanes(&d).try_into().unwrap()));
        let y = at(std::array::from_fn(|i| L(std::array::from_fn(|l| u[i].0[l] * v[i].0[l]))));
        for (o, y) in y.iter().enumerate() {
            let want: f32 = (0..3).map(|t| k[t] * d[o + t]).sum();
            assert!((y.0[3] - want).abs() < 1e-5, "{} vs {want}", y.0[3]);
        }
    }

    /// The phases of a row hold the padded row's columns 4t + p.
    #[test]
    fn a_row_splits_into_its_phases() {
        for w in 1..=13usize {
            let row: Vec<f32> = (1..=w).map(|v| v as f32).collect();
            let q = w.div_ceil(4) + 1 + LANES;
            let mut ph = vec![f32::NAN; 4 * q];
            split_row(Some(&row), &mut ph, q);
            for t in 0..q {
                for p in 0..4 {
                    let col = 4 * t + p;
                    let want = if col >= 1 && col <= w { row[col - 1] } else { 0.0 };
                    assert_eq!(ph[p * q + t], want, "w {w}, column {col}");
                }
            }
        }
    }

    /// Each transform's AVX2 code gives the bits of its plain code, over the
    /// chunks of a plane that is not a multiple of 4 (or of 8 tiles) wide.
    #[cfg(target_arch = "x86_64")]
    #[test]
    #[allow(unsafe_code)]
    fn the_avx2_transforms_give_the_bits_of_the_plain_ones() {
        if !crate::train::layers::simd::simd() {
            return;
        }
        let mut s = Tiles::new((2, 3, 13, 37), 5, 4);
        s.budget = XI * (s.c + s.cout) * 23;
        let data = |len: usize, seed: u32| -> Vec<f32> {
            (0..len).map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5).collect()
        };
        let (x, dy) = (data(s.n * s.c * s.h * s.w, 1), data(s.n * s.cout * s.h * s.w, 2));
        for (t0, nt) in s.chunks() {
            let (m, dv) = (data(XI * s.cout * nt, 3), data(XI * s.c * nt, 4));
            for ci in 0..s.c {
                let (mut plain, mut fast) = (vec![0f32; XI * nt], vec![0f32; XI * nt]);
                channel_patches(&x, &s, t0, nt, ci, &mut plain);
                // SAFETY: the CPU has AVX2 (checked above).
                unsafe { channel_patches_avx2(&x, &s, t0, nt, ci, &mut fast) };
                assert_eq!(plain, fast, "patches, chunk {t0}, channel {ci}");
            }
            for co in 0..s.cout {
                let (mut plain, mut fast) = (vec![0f32; XI * nt], vec![0f32; XI * nt]);
                channel_output_gradients(&dy, &s, t0, nt, co, &mut plain);
                // SAFETY: the CPU has AVX2 (checked above).
                unsafe { channel_output_gradients_avx2(&dy, &s, t0, nt, co, &mut fast) };
                assert_eq!(plain, fast, "output gradients, chunk {t0}, channel {co}");
            }
            let plane = s.h * s.w;
            for b in s.images(t0, nt) {
                for co in 0..s.cout {
                    let (mut plain, mut fast) = (vec![0f32; plane], vec![0f32; plane]);
                    plane_outputs(&m, &s, t0, nt, b, co, &mut plain);
                    // SAFETY: the CPU has AVX2 (checked above).
                    unsafe { plane_outputs_avx2(&m, &s, t0, nt, b, co, &mut fast) };
                    assert_eq!(plain, fast, "outputs, chunk {t0}, image {b}, channel {co}");
                }
                let q = s.tw + 1 + LANES;
                for ci in 0..s.c {
                    let (mut plain, mut fast) = (data(plane, 5), data(plane, 5));
                    let mut acc = vec![0f32; P * 4 * q];
                    plane_input_gradients(&dv, &s, t0, nt, b, ci, &mut acc, &mut plain);
                    // SAFETY: the CPU has AVX2 (checked above).
                    unsafe { plane_input_gradients_avx2(&dv, &s, t0, nt, b, ci, &mut acc, &mut fast) };
                    assert_eq!(plain, fast, "input gradients, chunk {t0}, image {b}, channel {ci}");
                }
            }
        }
    }

    /// Output and both gradients against candle's own convolution, on planes
    /// of every size modulo 4 and wider than a block of lanes, with chunks
    /// that split images (and a chunk of one tile), each gradient also alone.
    #[test]
    fn matches_candles_convolution_forward_and_backward() {
        crate::train::layers::winograd::check_against_candle(
            4,
            1e-5,
            7,
            &[
                (1, 1, 1, 1, 1, 1 << 21),
                (2, 3, 8, 8, 4, 1 << 21),
                (2, 3, 7, 5, 4, 36 * 7 * 3),
                (3, 11, 6, 6, 6, 36 * 17 * 3),
                (2, 4, 3, 6, 3, 1),
                (1, 2, 9, 2, 2, 36 * 4 * 3),
                (2, 9, 10, 37, 10, 36 * 19 * 5),
                (1, 16, 14, 14, 17, 1 << 21),
            ],
        );
    }
}
