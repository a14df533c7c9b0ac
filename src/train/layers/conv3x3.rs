//! 3x3 convolutions with stride 1 and padding 1 on the CPU, computed directly
//! from a padded copy of the input: no column matrix.
//!
//! im2col writes nine floats per input float and reads them back; when the
//! layer has few output channels (DenseNet's 128 → 32 growth layers) that
//! traffic, not the arithmetic, sets the speed. Here every channel plane of
//! the batch is laid out once with its zero border ([`Padded`]): rows of
//! `W + 1` floats (the extra zero is also the left neighbour of the next
//! row's first pixel) and one zero row between images (below one, above the
//! next). In that layout the nine taps of an output position are nine fixed
//! offsets from its centre, so the whole batch is one long 1-D domain and a
//! register tile of 6 output channels x 16 positions accumulates 9 x C_in
//! broadcast-multiply-adds straight from it. The few positions of the domain
//! that are border, not pixels, are computed and dropped.
//!
//! * Forward: `y = conv(x, w)`, tiles over (position block, output channels).
//! * Input gradient: the same kernel on the padded output gradient with the
//!   kernel flipped and transposed, `dx = conv(dy, w̃)`, `w̃[c][o][t] = w[o][c][8 - t]`.
//! * Kernel gradient: `dw[o][c][ky][kx] = Σ_q dy[o][q] · x[c][q + (ky-1)(W+1) + kx-1]`
//!   over the domain (the padded `dy` is zero off the pixels), tiles of
//!   3 output channels x 3 taps per (channel, ky), summed in a fixed order
//!   (the result does not depend on the number of threads).
//!
//! The tiles use AVX2 and FMA where the CPU has them (checked once at run
//! time) and the same arithmetic in plain Rust elsewhere.

use super::simd::{avx512, simd};
use super::{write_all, write_each, written};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Output channels per forward tile (the last tile of a layer may have fewer).
pub(super) const OB: usize = 6;
/// Positions per forward tile (two 8-float vectors): 6 x 2 accumulators, two
/// input vectors and one broadcast weight fill the 16 AVX registers.
const QB: usize = 16;
/// Output channels per kernel-gradient tile (3 x 3 taps of a row accumulated).
const DB: usize = 3;

/// The tiles of `outs` output channels: (first, count), `count` = `width`
/// except for the last.
pub(super) fn groups(outs: usize, width: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..outs).step_by(width).map(move |o| (o, width.min(outs - o)))
}

/// Where each pixel of a batch of `n` images of `h` x `w` lives in a padded
/// channel plane, and the domain of positions the kernels compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Padded {
    n: usize,
    h: usize,
    w: usize,
    /// Floats per padded row (`w + 1`).
    wp: usize,
    /// Index in a plane of image 0's pixel (0, 0): domain position 0.
    origin: usize,
    /// Positions computed, a multiple of [`QB`]; position `q` is plane index `origin + q`.
    d: usize,
    /// Floats per channel plane.
    plane: usize,
}

impl Padded {
    pub(super) fn new(n: usize, h: usize, w: usize) -> Padded {
        let wp = w + 1;
        // At least one float before the first read (origin - wp - 1), and the
        // origin on a multiple of 8.
        let front = 8 - wp % 8;
        let origin = front + wp;
        let d = ((n * (h + 1)).saturating_sub(1) * wp).div_ceil(QB).max(1) * QB;
        // The last read of an image's last tile (which may start up to
        // QB - 1 positions before the domain's end): origin + d + wp + QB.
        let plane = (origin + d + wp + QB + 1).div_ceil(8) * 8;
        Padded { n, h, w, wp, origin, d, plane }
    }

    /// Domain position of pixel (0, y) of image b.
    fn pos(&self, b: usize, y: usize) -> usize {
        (b * (self.h + 1) + y) * self.wp
    }

    /// Offsets of the nine taps (ky, kx) from an output position's centre.
    fn taps(&self) -> [isize; 9] {
        let wp = self.wp as isize;
        [-wp - 1, -wp, -wp + 1, -1, 0, 1, wp - 1, wp, wp + 1]
    }
}

/// `c` channels of the NCHW images in `x` into `dst` (`c` planes), zero
/// everywhere else.
pub(super) fn pad(x: &[f32], c: usize, l: &Padded) -> Vec<f32> {
    assert_eq!(x.len(), l.n * c * l.h * l.w);
    let fill = |dst: &mut [MaybeUninit<f32>]| {
        dst.par_chunks_mut(l.plane).enumerate().for_each(|(ch, p)| {
            let mut next = 0;
            for b in 0..l.n {
                for y in 0..l.h {
                    let at = l.origin + l.pos(b, y);
                    write_each(&mut p[next..at], 0.0);
                    write_all(&mut p[at..at + l.w], &x[((b * c + ch) * l.h + y) * l.w..][..l.w]);
                    next = at + l.w;
                }
            }
            write_each(&mut p[next..], 0.0);
        });
    };
    // SAFETY: `fill` writes each plane from its start to its end, in runs of
    // zeros and pixels that follow one another.
    #[allow(unsafe_code)]
    unsafe {
        written(c * l.plane, fill)
    }
}

/// A kernel `(cout, cin, 3, 3)` as the tiles read it: the tile of outputs
/// `o0..o0 + width` from `o0 · cin · 9` on, as `[c][tap][o - o0]`; `flip`
/// packs the input gradient's kernel instead (`cout` and `cin` swapped, taps
/// reversed).
fn pack(w: &[f32], cout: usize, cin: usize, flip: bool) -> Vec<f32> {
    assert_eq!(w.len(), cout * cin * 9);
    let (outs, ins) = if flip { (cin, cout) } else { (cout, cin) };
    let mut packed = vec![0f32; outs * ins * 9];
    for (o0, width) in groups(outs, OB) {
        let tile = &mut packed[o0 * ins * 9..][..width * ins * 9];
        for j in 0..width {
            let o = o0 + j;
            for c in 0..ins {
                for t in 0..9 {
                    let v = if flip { w[(c * cin + o) * 9 + 8 - t] } else { w[(o * cin + c) * 9 + t] };
                    tile[(c * 9 + t) * width + j] = v;
                }
            }
        }
    }
    packed
}

/// One forward tile of `W` output channels:
/// `out[j·stride + i] (+)= Σ_c Σ_t wk[c][t][j] · xp[c·plane + centre + taps[t] + i]` for j < W, i < QB
/// (added to `out` with `add`).
#[allow(clippy::too_many_arguments)]
fn tile_fwd<const W: usize>(
    xp: &[f32],
    centre: usize,
    l: &Padded,
    cin: usize,
    wk: &[f32],
    out: &mut [f32],
    stride: usize,
    add: bool,
    fast: bool,
) {
    // Every read lies inside `xp` and every weight inside `wk`: checked here
    // once for the whole tile, so the SIMD version may read unchecked.
    assert!(centre > l.wp && (cin - 1) * l.plane + centre + l.wp + QB < xp.len());
    assert!(wk.len() == cin * 9 * W && stride >= QB && out.len() >= (W - 1) * stride + QB);
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` is only set when `simd()` found AVX2 and FMA, and the
        // 512-bit tile runs only where `avx512()` found AVX-512F; the bounds the
        // tile reads and writes were asserted just above.
        #[allow(unsafe_code)]
        unsafe {
            if avx512() {
                return avx512::tile_fwd::<W>(xp, centre, l, cin, wk, out, stride, add);
            }
            return avx2::tile_fwd::<W>(xp, centre, l, cin, wk, out, stride, add);
        }
    }
    let _ = fast;
    let taps = l.taps();
    let mut acc = [[0f32; QB]; W];
    if add {
        for (j, a) in acc.iter_mut().enumerate() {
            a.copy_from_slice(&out[j * stride..][..QB]);
        }
    }
    for c in 0..cin {
        for (t, off) in taps.iter().enumerate() {
            let start = (c * l.plane + centre).wrapping_add_signed(*off);
            let xs = &xp[start..start + QB];
            for (j, a) in acc.iter_mut().enumerate() {
                let wv = wk[(c * 9 + t) * W + j];
                for (a, x) in a.iter_mut().zip(xs) {
                    *a = wv.mul_add(*x, *a);
                }
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        out[j * stride..][..QB].copy_from_slice(a);
    }
}

/// One kernel-gradient tile of `R` output channels: for the positions
/// `q0..q0 + len` (a multiple of 8), `acc[j·3 + kx] += Σ_i dyp[j·plane + i] · xrow[i + kx]`,
/// where `dyp` starts at position `q0` of the first channel's plane and `xrow`
/// at tap (ky, 0) of position `q0`'s centre in one input plane.
fn tile_dw<const R: usize>(dyp: &[f32], xrow: &[f32], plane: usize, len: usize, acc: &mut [f32], fast: bool) {
    assert!(len.is_multiple_of(8) && (R - 1) * plane + len <= dyp.len() && len + 2 <= xrow.len() && acc.len() == R * 3);
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: as in `tile_fwd`: AVX2 and FMA present, bounds asserted above.
        #[allow(unsafe_code)]
        unsafe {
            return avx2::tile_dw::<R>(dyp, xrow, plane, len, acc);
        }
    }
    let _ = fast;
    for j in 0..R {
        let d = &dyp[j * plane..][..len];
        for kx in 0..3 {
            // Eight partial sums, as the SIMD version keeps them.
            let mut lanes = [0f32; 8];
            for (i, dv) in d.iter().enumerate() {
                lanes[i % 8] = dv.mul_add(xrow[i + kx], lanes[i % 8]);
            }
            acc[j * 3 + kx] += hsum(&lanes);
        }
    }
}

/// The eight lanes summed in the order the SIMD version sums them.
pub(super) fn hsum(l: &[f32; 8]) -> f32 {
    let q = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let h = [q[0] + q[2], q[1] + q[3]];
    h[0] + h[1]
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(super) mod avx2 {
    use super::Padded;
    use std::arch::x86_64::{
        __m256, _mm256_broadcast_ss, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_ps,
        _mm256_setzero_ps, _mm256_storeu_ps, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehl_ps, _mm_shuffle_ps,
    };

    /// [`super::tile_fwd`] with `2 W` vector accumulators.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; the bounds `super::tile_fwd` asserts must hold.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_fwd<const W: usize>(
        xp: &[f32],
        centre: usize,
        l: &Padded,
        cin: usize,
        wk: &[f32],
        out: &mut [f32],
        stride: usize,
        add: bool,
    ) {
        let taps = l.taps();
        let mut acc = [[_mm256_setzero_ps(); 2]; W];
        if add {
            for (j, a) in acc.iter_mut().enumerate() {
                for (v, a) in a.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(out.as_ptr().add(j * stride + v * 8));
                }
            }
        }
        let mut x = xp.as_ptr().add(centre);
        let mut w = wk.as_ptr();
        for _ in 0..cin {
            for (t, off) in taps.iter().enumerate() {
                let p = x.offset(*off);
                let xs = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))];
                for (j, a) in acc.iter_mut().enumerate() {
                    let wv = _mm256_broadcast_ss(&*w.add(t * W + j));
                    for (a, xv) in a.iter_mut().zip(xs) {
                        *a = _mm256_fmadd_ps(wv, xv, *a);
                    }
                }
            }
            x = x.add(l.plane);
            w = w.add(9 * W);
        }
        let o = out.as_mut_ptr();
        for (j, a) in acc.iter().enumerate() {
            for (v, a) in a.iter().enumerate() {
                _mm256_storeu_ps(o.add(j * stride + v * 8), *a);
            }
        }
    }

    /// [`super::tile_dw`] with `3 R` vector accumulators.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; the bounds `super::tile_dw` asserts must hold.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_dw<const R: usize>(dyp: &[f32], xrow: &[f32], plane: usize, len: usize, acc: &mut [f32]) {
        let mut a = [[_mm256_setzero_ps(); 3]; R];
        let (d, x) = (dyp.as_ptr(), xrow.as_ptr());
        let mut i = 0;
        while i < len {
            let xs = [_mm256_loadu_ps(x.add(i)), _mm256_loadu_ps(x.add(i + 1)), _mm256_loadu_ps(x.add(i + 2))];
            for (j, a) in a.iter_mut().enumerate() {
                let dv = _mm256_loadu_ps(d.add(j * plane + i));
                for (a, xv) in a.iter_mut().zip(xs) {
                    *a = _mm256_fmadd_ps(dv, xv, *a);
                }
            }
            i += 8;
        }
        for (j, a) in a.iter().enumerate() {
            for (kx, v) in a.iter().enumerate() {
                acc[j * 3 + kx] += hsum(*v);
            }
        }
    }

    /// The lanes summed as [`super::hsum`] sums them.
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) unsafe fn hsum(v: __m256) -> f32 {
        let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_add_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)))
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(super) mod avx512 {
    use super::{Padded, QB};
    use std::arch::x86_64::{_mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps};

    /// [`super::tile_fwd`] with `W` vector accumulators of 16 lanes: each lane does the
    /// fused multiply-adds of [`super::avx2::tile_fwd`]'s lane in the same order, so the
    /// same bits with half the instructions.
    ///
    /// # Safety
    /// AVX-512F must be present; the bounds `super::tile_fwd` asserts must hold.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_fwd<const W: usize>(
        xp: &[f32],
        centre: usize,
        l: &Padded,
        cin: usize,
        wk: &[f32],
        out: &mut [f32],
        stride: usize,
        add: bool,
    ) {
        const { assert!(QB == 16, "a tile's positions are one 16-lane vector") };
        let taps = l.taps();
        let mut acc = [_mm512_setzero_ps(); W];
        if add {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(out.as_ptr().add(j * stride));
            }
        }
        let mut x = xp.as_ptr().add(centre);
        let mut w = wk.as_ptr();
        for _ in 0..cin {
            for (t, off) in taps.iter().enumerate() {
                let xv = _mm512_loadu_ps(x.offset(*off));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*w.add(t * W + j)), xv, *a);
                }
            }
            x = x.add(l.plane);
            w = w.add(9 * W);
        }
        let o = out.as_mut_ptr();
        for (j, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(o.add(j * stride), *a);
        }
    }
}

/// `dst` (NCHW, `outs` channels) = the convolution of the padded planes `xp`
/// (`cin` of them) with the packed kernel `wk`.
fn conv(xp: &[f32], cin: usize, wk: &[f32], outs: usize, l: &Padded, dst: &mut [MaybeUninit<f32>], fast: bool) {
    // Input channels per pass: a tile's weights for them (6 x 9 x 64 floats,
    // 14 KiB) stay in L1 while the tile runs over a span of positions.
    const CHANNELS: usize = 64;
    // Positions per span (16 tiles): the span's sums stay in L1 between passes.
    const SPAN: usize = 16 * QB;
    let hw = l.h * l.w;
    assert_eq!(dst.len(), l.n * outs * hw);
    // One task per image and tile of output channels, whose outputs are one
    // run of `dst`.
    let mut tasks = Vec::new();
    let mut rest = dst;
    for b in 0..l.n {
        for (o0, width) in groups(outs, OB) {
            let (out, tail) = rest.split_at_mut(width * hw);
            tasks.push((b, o0, width, out));
            rest = tail;
        }
    }
    tasks.into_par_iter().for_each(|(b, o0, width, out)| {
        let first = l.pos(b, 0);
        let len = l.h * l.wp;
        let mut sums = vec![0f32; OB * SPAN];
        for s0 in (0..len).step_by(SPAN) {
            let tiles = (len - s0).min(SPAN).div_ceil(QB);
            for c0 in (0..cin).step_by(CHANNELS) {
                let cs = CHANNELS.min(cin - c0);
                let xp = &xp[c0 * l.plane..];
                let wk = &wk[(o0 * cin + c0 * width) * 9..][..width * cs * 9];
                for t in 0..tiles {
                    let centre = l.origin + first + s0 + t * QB;
                    let sums = &mut sums[t * QB..];
                    let add = c0 > 0;
                    match width {
                        6 => tile_fwd::<6>(xp, centre, l, cs, wk, sums, SPAN, add, fast),
                        5 => tile_fwd::<5>(xp, centre, l, cs, wk, sums, SPAN, add, fast),
                        4 => tile_fwd::<4>(xp, centre, l, cs, wk, sums, SPAN, add, fast),
                        3 => tile_fwd::<3>(xp, centre, l, cs, wk, sums, SPAN, add, fast),
                        2 => tile_fwd::<2>(xp, centre, l, cs, wk, sums, SPAN, add, fast),
                        _ => tile_fwd::<1>(xp, centre, l, cs, wk, sums, SPAN, add, fast),
                    }
                }
            }
            // The span's pixels (not its border positions) into the output planes.
            let end = (s0 + tiles * QB).min(len);
            let mut q = s0;
            while q < end {
                let (y, x) = (q / l.wp, q % l.wp);
                let stop = end.min(y * l.wp + l.w);
                if x < l.w {
                    for j in 0..width {
                        write_all(&mut out[j * hw + y * l.w + x..][..stop - q], &sums[j * SPAN + q - s0..][..stop - q]);
                    }
                }
                q = (y + 1) * l.wp;
            }
        }
    });
}

/// The kernel gradient `(cout, cin, 3, 3)` from the padded input and output
/// gradient.
fn kernel_grad(xp: &[f32], cin: usize, dyp: &[f32], cout: usize, l: &Padded, fast: bool) -> Vec<f32> {
    /// Positions per pass: the output-gradient rows of a tile (12 KiB) stay
    /// in L1 while every channel and row of taps goes over them.
    const CHUNK: usize = 1024;
    /// Input channels per task.
    const CHANNELS: usize = 16;
    let tasks: Vec<(usize, usize, usize)> =
        groups(cout, DB).flat_map(|(o0, rows)| (0..cin).step_by(CHANNELS).map(move |c0| (o0, rows, c0))).collect();
    // Per task, [channel][ky][row][kx].
    let parts: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(o0, rows, c0)| {
            let cs = CHANNELS.min(cin - c0);
            let mut acc = vec![0f32; cs * 3 * rows * 3];
            let dy = &dyp[o0 * l.plane..];
            for q0 in (0..l.d).step_by(CHUNK) {
                let len = CHUNK.min(l.d - q0);
                let dy = &dy[l.origin + q0..];
                for (ci, acc) in acc.chunks_exact_mut(3 * rows * 3).enumerate() {
                    let x = &xp[(c0 + ci) * l.plane..][..l.plane];
                    for (ky, acc) in acc.chunks_exact_mut(rows * 3).enumerate() {
                        let x = &x[l.origin + q0 + ky * l.wp - l.wp - 1..];
                        match rows {
                            3 => tile_dw::<3>(dy, x, l.plane, len, acc, fast),
                            2 => tile_dw::<2>(dy, x, l.plane, len, acc, fast),
                            _ => tile_dw::<1>(dy, x, l.plane, len, acc, fast),
                        }
                    }
                }
            }
            acc
        })
        .collect();
    let mut dw = vec![0f32; cout * cin * 9];
    for (&(o0, rows, c0), acc) in tasks.iter().zip(&parts) {
        put_dw(&mut dw, acc, (o0, rows), c0, (cin, 3));
    }
    dw
}

/// A kernel-gradient tile's sums, `[channel][ky][row][kx]` for the output
/// channels `o0..o0 + rows` and the input channels from `c0` on, into `dw`
/// (`cout`, `cin`, `k`, `k`).
pub(super) fn put_dw(dw: &mut [f32], acc: &[f32], (o0, rows): (usize, usize), c0: usize, (cin, k): (usize, usize)) {
    for (i, taps) in acc.chunks_exact(rows * k).enumerate() {
        let (c, ky) = (c0 + i / k, i % k);
        for j in 0..rows {
            dw[((o0 + j) * cin + c) * k * k + ky * k..][..k].copy_from_slice(&taps[j * k..][..k]);
        }
    }
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
    let l = Padded::new(n, h, wd);
    let xp = pad(x, cin, &l);
    let wk = pack(w, cout, cin, false);
    // SAFETY: `conv` writes every pixel of every output plane.
    #[allow(unsafe_code)]
    let out = unsafe { written(n * cout * h * wd, |out| conv(&xp, cin, &wk, cout, &l, out, fast)) };
    out
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
    let l = Padded::new(n, h, wd);
    let dyp = pad(dy, cout, &l);
    let mut dw = Vec::new();
    if need_dw {
        let xp = pad(x, cin, &l);
        dw = kernel_grad(&xp, cin, &dyp, cout, &l, fast);
    }
    let mut dx = Vec::new();
    if need_dx {
        let wk = pack(w, cout, cin, true);
        // SAFETY: `conv` writes every pixel of every output plane.
        #[allow(unsafe_code)]
        let written = unsafe { written(n * cin * h * wd, |dx| conv(&dyp, cout, &wk, cin, &l, dx, fast)) };
        dx = written;
    }
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::layers::randn;
    use crate::train::rng::Rng;

    /// The 512-bit forward tile gives the 256-bit tile's bits (where this CPU has both).
    #[cfg(target_arch = "x86_64")]
    #[test]
    #[allow(unsafe_code)]
    fn the_avx512_tile_gives_the_bits_of_the_avx2_tile() {
        fn check<const W: usize>(rng: &mut Rng) {
            let l = Padded::new(2, 7, 9);
            let cin = 5;
            let xp = randn(rng, &[cin * l.plane]);
            let wk = randn(rng, &[cin * 9 * W]);
            let start = randn(rng, &[W * QB + 3]);
            for (add, centre) in [(false, l.origin), (true, l.origin + QB), (true, l.origin + l.d - QB)] {
                // The plain tile first: it asserts the bounds the SIMD tiles rely on.
                let mut c = start.clone();
                tile_fwd::<W>(&xp, centre, &l, cin, &wk, &mut c, QB, add, false);
                let (mut a, mut b) = (start.clone(), start.clone());
                // SAFETY: both instruction sets were detected; the bounds were asserted just above.
                unsafe {
                    avx2::tile_fwd::<W>(&xp, centre, &l, cin, &wk, &mut a, QB, add);
                    avx512::tile_fwd::<W>(&xp, centre, &l, cin, &wk, &mut b, QB, add);
                }
                assert!(a == b && a == c, "W {W} add {add} centre {centre}");
            }
        }
        if !(simd() && is_x86_feature_detected!("avx512f")) {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        let mut rng = Rng::new(3);
        check::<1>(&mut rng);
        check::<2>(&mut rng);
        check::<3>(&mut rng);
        check::<6>(&mut rng);
    }

    /// The definition, one output at a time.
    fn naive(x: &[f32], w: &[f32], (n, cin, h, wd): (usize, usize, usize, usize), cout: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * cout * h * wd];
        for b in 0..n {
            for o in 0..cout {
                for y in 0..h {
                    for xx in 0..wd {
                        let mut s = 0f64;
                        for c in 0..cin {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = ((y + ky).wrapping_sub(1), (xx + kx).wrapping_sub(1));
                                    if iy < h && ix < wd {
                                        s += f64::from(x[((b * cin + c) * h + iy) * wd + ix])
                                            * f64::from(w[((o * cin + c) * 3 + ky) * 3 + kx]);
                                    }
                                }
                            }
                        }
                        out[((b * cout + o) * h + y) * wd + xx] = s as f32;
                    }
                }
            }
        }
        out
    }

    /// The padded layout puts each pixel where the taps of its neighbours
    /// find it, and zeros everywhere else.
    #[test]
    fn the_padded_layout_surrounds_every_image_with_zeros() {
        let (n, c, h, w) = (2, 2, 3, 5);
        let x: Vec<f32> = (1..=n * c * h * w).map(|v| v as f32).collect();
        let l = Padded::new(n, h, w);
        assert_eq!(l.origin % 8, 0);
        let p = pad(&x, c, &l);
        assert_eq!(p.iter().filter(|v| **v != 0.0).count(), x.len());
        // Pixel (b=1, c=1, y=2, x=4), and its right and lower neighbours (border).
        let at = l.plane + l.origin + l.pos(1, 2) + 4;
        assert_eq!(p[at], x[((c + 1) * h + 2) * w + 4]);
        assert_eq!(p[at + 1], 0.0);
        assert_eq!(p[at + l.wp], 0.0);
        // Between the images: one zero row.
        assert!(p[l.origin + l.pos(0, 3)..][..l.wp].iter().all(|v| *v == 0.0));
    }

    /// Output, input gradient and kernel gradient against the definition
    /// (the gradients through the adjoint identities), with the SIMD tiles
    /// and the plain ones, for shapes with ragged channel counts and widths.
    #[test]
    fn direct_convolution_and_its_gradients_match_the_definition() {
        let mut rng = Rng::new(7);
        for (n, cin, cout, h, wd) in
            [(1, 3, 4, 8, 8), (2, 5, 3, 7, 7), (3, 2, 6, 1, 9), (2, 4, 11, 13, 3), (1, 7, 7, 5, 6), (1, 70, 5, 3, 4)]
        {
            let dims = (n, cin, h, wd);
            let x = randn(&mut rng, &[n, cin, h, wd]);
            let w = randn(&mut rng, &[cout, cin, 3, 3]);
            let dy = randn(&mut rng, &[n, cout, h, wd]);
            let want = naive(&x, &w, dims, cout);
            // <dy, conv(x, w)> is linear in x and in w: its gradients are dx
            // and dw, checked one coordinate at a time through the definition.
            let plain =
                (forward_with(&x, &w, dims, cout, false), backward_with(&x, &w, &dy, dims, cout, (true, true), false));
            for fast in [false, simd()] {
                let got = forward_with(&x, &w, dims, cout, fast);
                // The SIMD tiles do the plain tiles' arithmetic in the same order.
                assert!(got == plain.0 && backward_with(&x, &w, &dy, dims, cout, (true, true), fast) == plain.1);
                let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * (1.0 + b.abs());
                assert!(got.iter().zip(&want).all(|(a, b)| close(*a, *b)), "forward {dims:?} {cout} fast {fast}");
                let (dx, dw) = backward_with(&x, &w, &dy, dims, cout, (true, true), fast);
                let dot = |y: &[f32]| y.iter().zip(&dy).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>();
                for i in (0..x.len()).step_by(7) {
                    let mut e = vec![0f32; x.len()];
                    e[i] = 1.0;
                    let want = dot(&naive(&e, &w, dims, cout)) as f32;
                    assert!(close(dx[i], want), "dx[{i}] {dims:?} {cout} fast {fast}: {} vs {want}", dx[i]);
                }
                for i in (0..w.len()).step_by(1 + w.len() / 400) {
                    let mut e = vec![0f32; w.len()];
                    e[i] = 1.0;
                    let want = dot(&naive(&x, &e, dims, cout)) as f32;
                    assert!(close(dw[i], want), "dw[{i}] {dims:?} {cout} fast {fast}: {} vs {want}", dw[i]);
                }
                let (none, only_dw) = backward_with(&x, &w, &dy, dims, cout, (false, true), fast);
                assert!(none.is_empty() && only_dw == dw);
            }
        }
    }
}
