//! Convolutions of small planes on the CPU with the batch in the SIMD lanes:
//! 3x3 and 7x7 kernels, any stride and padding (`conv.rs` takes it for the
//! 3x3 stride-1 layers on planes of 8x8 and less and ResNet's 7x7/2 stem on
//! 32x32 inputs).
//!
//! On an 8x8 plane a fifth of the direct path's domain (`conv3x3.rs`) is
//! border, and every output pixel multiplies all nine taps, zeros included;
//! im2col multiplies the zeros too (16% of an 8x8 plane's 3x3 taps, 31% of a
//! 4x4 plane's). Here the images go across the lanes instead: blocks of [`L`]
//! images stored as `[block][channel][y][x][lane]` ([`Lanes`]), so that all
//! lanes of a tile share one pixel and with it one set of live taps.
//!
//! * Forward: a tile of 6 output channels x 16 lanes at one output pixel sums
//!   its live taps (each a (tap, position) pair of [`Plan`]) over the input
//!   channels, read from the input with a zero border of `padding` pixels.
//! * Input gradient: the same tile at one input pixel, summing the output
//!   gradient at the output pixels whose taps read it (the transposed
//!   convolution as a gather; no border).
//! * Kernel gradient: `dw[o][c][ky][kx] = Σ_{b,y,x,lane} dy[o][y][x] · x[c][y·s + ky][x·s + kx]`
//!   (padded coordinates), tiles of 3 output channels x a 3-tap kernel row
//!   or one x a 7-tap row,
//!   over the output rows whose tap row reads a pixel row (the border's
//!   columns are zeros), summed in a fixed order whatever the threads.
//!
//! The tiles use AVX2 and FMA where the CPU has them and the same arithmetic
//! in plain Rust elsewhere; where it has AVX-512F too, 512-bit tiles: a
//! block's 16 lanes in one register, four blocks at a time in the forward
//! and input-gradient tiles (the same bits as the 256-bit ones), 16 partial
//! sums per kernel-gradient tap (their own bits, which their plain twin
//! reproduces). Lanes past the batch are zeros.

use super::conv3x3::{groups, put_dw, OB};
use super::simd::{avx512, simd};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Images per block: the lanes of two 8-float vectors.
const L: usize = 16;

/// The geometry of a convolution on blocks of [`L`] images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lanes {
    n: usize,
    blocks: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    oh: usize,
    ow: usize,
}

impl Lanes {
    /// `n` images of `h` x `w`, a `k` x `k` kernel with stride `s` and
    /// padding `p` (`oh` x `ow` outputs).
    pub(super) fn new(
        n: usize,
        (h, w): (usize, usize),
        (k, s, p): (usize, usize, usize),
        (oh, ow): (usize, usize),
    ) -> Lanes {
        Lanes { n, blocks: n.div_ceil(L), h, w, k, s, p, oh, ow }
    }
    /// Floats per input channel plane of a block, with its border.
    fn plane_in(&self) -> usize {
        (self.h + 2 * self.p) * (self.w + 2 * self.p) * L
    }
    /// Floats per output channel plane of a block (no border).
    fn plane_out(&self) -> usize {
        self.oh * self.ow * L
    }
    /// Index in a padded input plane of padded pixel (y, x).
    fn at_in(&self, y: usize, x: usize) -> usize {
        (y * (self.w + 2 * self.p) + x) * L
    }
    /// Index in an output plane of pixel (y, x).
    fn at_out(&self, y: usize, x: usize) -> usize {
        (y * self.ow + x) * L
    }
    /// The taps (ky or kx) along one axis with which output `o` reads a
    /// pixel of an axis of `len` pixels, not the padding.
    fn live(&self, o: usize, len: usize) -> std::ops::Range<usize> {
        let first = o * self.s;
        // Padded input first + t is pixel first + t - p: inside when p <= first + t < p + len.
        let lo = self.p.saturating_sub(first);
        let hi = (self.p + len).saturating_sub(first).min(self.k);
        lo.min(hi)..hi
    }
}

/// For each pixel of the planes a tile runs over, its live (tap, offset)
/// pairs: `taps[starts[i]..starts[i + 1]]` for pixel i.
struct Plan {
    starts: Vec<usize>,
    taps: Vec<(usize, usize)>,
}

impl Plan {
    /// The forward pass: for each output pixel, its taps that read a pixel,
    /// each with its position in the padded input plane.
    fn forward(l: &Lanes) -> Plan {
        let mut plan = Plan { starts: vec![0], taps: Vec::new() };
        for y in 0..l.oh {
            for x in 0..l.ow {
                for ky in l.live(y, l.h) {
                    for kx in l.live(x, l.w) {
                        plan.taps.push((ky * l.k + kx, l.at_in(y * l.s + ky, x * l.s + kx)));
                    }
                }
                plan.starts.push(plan.taps.len());
            }
        }
        plan
    }
    /// The input gradient: for each input pixel, the (tap, output pixel)
    /// pairs that read it, with the output pixel's position in an output plane.
    fn input_grad(l: &Lanes) -> Plan {
        let mut plan = Plan { starts: vec![0], taps: Vec::new() };
        for iy in 0..l.h {
            for ix in 0..l.w {
                for ky in 0..l.k {
                    for kx in 0..l.k {
                        // Output (oy, ox) reads input (oy·s + ky - p, ox·s + kx - p).
                        let (ty, tx) = (iy + l.p, ix + l.p);
                        if ty < ky || tx < kx || (ty - ky) % l.s != 0 || (tx - kx) % l.s != 0 {
                            continue;
                        }
                        let (oy, ox) = ((ty - ky) / l.s, (tx - kx) / l.s);
                        if oy < l.oh && ox < l.ow {
                            plan.taps.push((ky * l.k + kx, l.at_out(oy, ox)));
                        }
                    }
                }
                plan.starts.push(plan.taps.len());
            }
        }
        plan
    }
    fn pixel(&self, i: usize) -> &[(usize, usize)] {
        &self.taps[self.starts[i]..self.starts[i + 1]]
    }
}

/// Zeroed floats whose first lies on a 64-byte boundary, so that every
/// block's pixel (`L` floats, 64 bytes, at a multiple of `L` floats) is one
/// cache line: a 512-bit load of a pixel that straddles two lines costs two
/// (the allocator's large blocks start 16 bytes past a page).
struct Aligned {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        let buf = vec![0f32; len + L - 1];
        let start = buf.as_ptr().align_offset(64).min(L - 1);
        Aligned { buf, start, len }
    }

    /// `len` floats written by `fill`, without zeroing the memory first.
    ///
    /// # Safety
    /// `fill` must write every element of the slice it is given.
    #[allow(unsafe_code)]
    unsafe fn written(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Aligned {
        let mut start = 0;
        // SAFETY: every element is written: the floats before and after the
        // aligned run here, the run by `fill` (the caller's promise).
        let buf = unsafe {
            super::written(len + L - 1, |all| {
                start = all.as_ptr().align_offset(64).min(L - 1);
                let (head, rest) = all.split_at_mut(start);
                let (run, tail) = rest.split_at_mut(len);
                super::write_each(head, 0.0);
                super::write_each(tail, 0.0);
                fill(run);
            })
        };
        Aligned { buf, start, len }
    }
}

impl std::ops::Deref for Aligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..][..self.len]
    }
}

impl std::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..][..self.len]
    }
}

/// `c` channels of the NCHW images `x` (`h` x `w`) in blocks with a zero
/// border of `p` pixels (zeros also in lanes past the batch).
fn to_lanes(x: &[f32], c: usize, n: usize, (h, w): (usize, usize), p: usize) -> Aligned {
    let (hw, wp) = (h * w, w + 2 * p);
    let plane = (h + 2 * p) * wp * L;
    assert_eq!(x.len(), n * c * hw);
    let fill = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(plane).enumerate().for_each(|(i, dst)| {
            let (b, ch) = (i / c, i % c);
            let lanes = L.min(n - b * L);
            // The plane zeroed (its border and the lanes past the batch stay
            // so) while it is in cache, then its pixels row by row, so that
            // the row's lanes (w·L floats) stay in L1 while each image writes
            // its lane (image by image over the whole plane, every write was a miss).
            super::write_each(dst, 0.0);
            for y in 0..h {
                let row = &mut dst[((y + p) * wp + p) * L..][..w * L];
                for lane in 0..lanes {
                    let src = &x[((b * L + lane) * c + ch) * hw + y * w..][..w];
                    for (d, v) in row.chunks_exact_mut(L).zip(src) {
                        d[lane].write(*v);
                    }
                }
            }
        });
    };
    // SAFETY: `fill` writes every float of every plane (all as zeros first).
    #[allow(unsafe_code)]
    unsafe {
        Aligned::written(n.div_ceil(L) * c * plane, fill)
    }
}

/// A kernel `(cout, cin, k, k)` as the tiles read it: the tile of `outs`
/// `o0..o0 + width` from `o0 · ins · kk` on, as `[in][tap][o - o0]`. With
/// `transposed` the input gradient's (`outs` the kernel's input channels,
/// `ins` its output channels; taps as they are).
fn pack(w: &[f32], (cout, cin, kk): (usize, usize, usize), transposed: bool) -> Vec<f32> {
    assert_eq!(w.len(), cout * cin * kk);
    let (outs, ins) = if transposed { (cin, cout) } else { (cout, cin) };
    let mut packed = vec![0f32; outs * ins * kk];
    for (o0, width) in groups(outs, OB) {
        let tile = &mut packed[o0 * ins * kk..][..width * ins * kk];
        for j in 0..width {
            let o = o0 + j;
            for c in 0..ins {
                for t in 0..kk {
                    let v = if transposed { w[(c * cin + o) * kk + t] } else { w[(o * cin + c) * kk + t] };
                    tile[(c * kk + t) * width + j] = v;
                }
            }
        }
    }
    packed
}

/// One tile of `W` output channels at one pixel of one block:
/// `out[j·L + i] (+)= Σ_c Σ_(t, off) wk[c][t][j] · src[c·plane + off + i]`
/// (added to `out` with `add`).
#[allow(clippy::too_many_arguments)]
fn tile<const W: usize>(
    src: &[f32],
    plane: usize,
    taps: &[(usize, usize)],
    (cin, kk): (usize, usize),
    wk: &[f32],
    out: &mut [f32],
    add: bool,
    fast: bool,
) {
    // Every read lies inside `src` and every weight inside `wk`: checked here
    // once for the tile, so the SIMD version may read unchecked.
    assert!(src.len() >= cin * plane && wk.len() == cin * kk * W && out.len() >= W * L);
    assert!(taps.iter().all(|&(t, off)| t < kk && off + L <= plane));
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` is only set when `simd()` found AVX2 and FMA; the
        // bounds were asserted above.
        #[allow(unsafe_code)]
        unsafe {
            return avx2::tile::<W>(src, plane, taps, (cin, kk), wk, out, add);
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
            let xs = &src[c * plane + off..][..L];
            for (j, a) in acc.iter_mut().enumerate() {
                let wv = wk[(c * kk + t) * W + j];
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

/// Blocks a forward or input-gradient tile takes at once where the 512-bit
/// tiles run: one 16-lane vector per block, so each weight broadcast feeds
/// four multiply-adds (one block: a load per multiply-add, and the loads,
/// not the multiplies, set the pace).
const GROUP_512: usize = 4;

/// [`tile`] for `blocks` blocks: block `g`'s input `bstride` floats after
/// block `g - 1`'s in `src`, its sums `OB · L` after `g - 1`'s in `out`.
/// With `fast` and `wide` (the caller's `avx512()`) the 512-bit tiles, else
/// [`tile`] block by block; each block's sums are [`tile`]'s bits either way.
#[allow(clippy::too_many_arguments)]
fn tile_blocks<const W: usize>(
    (src, bstride, blocks): (&[f32], usize, usize),
    plane: usize,
    taps: &[(usize, usize)],
    (cin, kk): (usize, usize),
    wk: &[f32],
    out: &mut [f32],
    add: bool,
    (fast, wide): (bool, bool),
) {
    assert!(W <= OB && blocks > 0);
    #[cfg(target_arch = "x86_64")]
    if fast && wide {
        // The bounds of every block's reads and writes, as `tile` asserts them.
        assert!(src.len() >= (blocks - 1) * bstride + cin * plane && wk.len() == cin * kk * W);
        assert!(out.len() >= blocks * OB * L && taps.iter().all(|&(t, off)| t < kk && off + L <= plane));
        let (mut g, o) = (0, OB * L);
        while g < blocks {
            let (x, y) = (src[g * bstride..].as_ptr(), out[g * o..].as_mut_ptr());
            let left = blocks - g;
            // SAFETY: `fast` is only set where `simd()` found AVX2 and FMA, and
            // `wide` where `avx512()` found AVX-512F; every block's bounds were asserted above.
            #[allow(unsafe_code)]
            unsafe {
                g += if left >= 4 {
                    avx512::tile::<W, 4>(x, bstride, plane, taps, (cin, kk), wk.as_ptr(), y, add);
                    4
                } else if left >= 2 {
                    avx512::tile::<W, 2>(x, bstride, plane, taps, (cin, kk), wk.as_ptr(), y, add);
                    2
                } else {
                    avx512::tile::<W, 1>(x, bstride, plane, taps, (cin, kk), wk.as_ptr(), y, add);
                    1
                };
            }
        }
        return;
    }
    for g in 0..blocks {
        let src = &src[g * bstride..];
        tile::<W>(src, plane, taps, (cin, kk), wk, &mut out[g * OB * L..], add, fast);
    }
}

/// One kernel-gradient tile of `R` output channels and the `K` taps of
/// kernel row `ky`, over the output rows `rows` of one block:
/// `acc[j·K + kx] += Σ_{y, x, lane} dy[j·plane_out + at_out(y, x) + lane] · xb[at_in(y·s + ky, x·s + kx) + lane]`.
///
/// Each sum is kept in as many partial sums as the SIMD path has lanes: 8
/// (AVX2, a block's two halves one after the other) or, where the 512-bit
/// tiles run (`wide`), 16, the upper eight then added to the lower before
/// the eight are added up. The plain code does the same arithmetic for
/// either, so every path gives the bits of its plain twin.
#[allow(clippy::too_many_arguments)]
fn tile_dw<const R: usize, const K: usize>(
    dy: &[f32],
    xb: &[f32],
    (blocks, dy_next, x_next): (usize, usize, usize),
    l: &Lanes,
    ky: usize,
    rows: std::ops::Range<usize>,
    acc: &mut [f32],
    (fast, wide): (bool, bool),
) {
    assert!(K == l.k && ky < K && acc.len() == R * K && rows.end <= l.oh && blocks > 0);
    assert!((blocks - 1) * dy_next + R * l.plane_out() <= dy.len());
    assert!((blocks - 1) * x_next + l.plane_in() <= xb.len());
    // The last row's last read stays inside the padded plane.
    assert!(rows.is_empty() || l.at_in((rows.end - 1) * l.s + ky, (l.ow - 1) * l.s + K - 1) + L <= l.plane_in());
    let span = (blocks, dy_next, x_next);
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: as in `tile`: AVX2 and FMA present (and AVX-512F where
        // `wide`: `fast` and `wide` are only both set where `avx512()`
        // found it), bounds asserted above.
        #[allow(unsafe_code)]
        unsafe {
            if wide {
                return avx512::tile_dw::<R, K>(dy, xb, span, l, ky, rows, acc);
            }
            return avx2::tile_dw::<R, K>(dy, xb, span, l, ky, rows, acc);
        }
    }
    let _ = fast;
    if wide {
        tile_dw_plain::<R, K, 16>(dy, xb, span, l, ky, rows, acc);
    } else {
        tile_dw_plain::<R, K, 8>(dy, xb, span, l, ky, rows, acc);
    }
}

/// [`tile_dw`] in plain Rust with `V` (8 or 16) partial sums per tap.
fn tile_dw_plain<const R: usize, const K: usize, const V: usize>(
    dy: &[f32],
    xb: &[f32],
    (blocks, dy_next, x_next): (usize, usize, usize),
    l: &Lanes,
    ky: usize,
    rows: std::ops::Range<usize>,
    acc: &mut [f32],
) {
    const { assert!(V == 8 || V == 16) };
    let mut lanes = [[[0f32; V]; K]; R];
    for b in 0..blocks {
        let (xb, dy) = (&xb[b * x_next..], &dy[b * dy_next..]);
        for y in rows.clone() {
            for x in 0..l.ow {
                for part in 0..L / V {
                    let xs = &xb[l.at_in(y * l.s + ky, x * l.s) + part * V..];
                    for (j, lanes) in lanes.iter_mut().enumerate() {
                        let d = &dy[j * l.plane_out() + l.at_out(y, x) + part * V..][..V];
                        for (kx, lanes) in lanes.iter_mut().enumerate() {
                            for (i, lane) in lanes.iter_mut().enumerate() {
                                *lane = d[i].mul_add(xs[kx * L + i], *lane);
                            }
                        }
                    }
                }
            }
        }
    }
    for (j, lanes) in lanes.iter().enumerate() {
        for (kx, lanes) in lanes.iter().enumerate() {
            let eight: [f32; 8] = std::array::from_fn(|i| if V == 16 { lanes[i] + lanes[i + 8] } else { lanes[i] });
            acc[j * K + kx] += super::conv3x3::hsum(&eight);
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

    /// [`super::tile`] with `2 W` vector accumulators.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; the bounds `super::tile` asserts must hold.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const W: usize>(
        src: &[f32],
        plane: usize,
        taps: &[(usize, usize)],
        (cin, kk): (usize, usize),
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
        let mut x = src.as_ptr();
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
            w = w.add(kk * W);
        }
        let o = out.as_mut_ptr();
        for (j, a) in acc.iter().enumerate() {
            for (v, a) in a.iter().enumerate() {
                _mm256_storeu_ps(o.add(j * L + v * 8), *a);
            }
        }
    }

    /// [`super::tile_dw`] with `R K` vector accumulators.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; the bounds `super::tile_dw` asserts must hold.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_dw<const R: usize, const K: usize>(
        dy: &[f32],
        xb: &[f32],
        (blocks, dy_next, x_next): (usize, usize, usize),
        l: &Lanes,
        ky: usize,
        rows: std::ops::Range<usize>,
        acc: &mut [f32],
    ) {
        let mut a = [[_mm256_setzero_ps(); K]; R];
        let (d, xp, plane) = (dy.as_ptr(), xb.as_ptr(), l.plane_out());
        let step = l.s * L;
        for b in 0..blocks {
            for y in rows.clone() {
                // Pointers stepped along the row (the index arithmetic per
                // position cost a quarter of the tile).
                let mut p = xp.add(b * x_next + l.at_in(y * l.s + ky, 0));
                let mut q = d.add(b * dy_next + l.at_out(y, 0));
                for _ in 0..l.ow {
                    for half in 0..L / 8 {
                        let mut xs = [_mm256_setzero_ps(); K];
                        for (kx, v) in xs.iter_mut().enumerate() {
                            *v = _mm256_loadu_ps(p.add(kx * L + half * 8));
                        }
                        for (j, a) in a.iter_mut().enumerate() {
                            let dv = _mm256_loadu_ps(q.add(j * plane + half * 8));
                            for (a, xv) in a.iter_mut().zip(xs) {
                                *a = _mm256_fmadd_ps(dv, xv, *a);
                            }
                        }
                    }
                    p = p.add(step);
                    q = q.add(L);
                }
            }
        }
        for (j, a) in a.iter().enumerate() {
            for (kx, v) in a.iter().enumerate() {
                acc[j * K + kx] += super::super::conv3x3::avx2::hsum(*v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use super::{Lanes, L, OB};
    use std::arch::x86_64::{
        __m512, _mm256_add_ps, _mm256_castpd_ps, _mm512_castps512_ps256, _mm512_castps_pd, _mm512_extractf64x4_pd,
        _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };

    /// [`super::tile`] for `G` blocks at once (`bstride` floats apart from
    /// `src`, their sums `OB · L` apart from `out`), `W · G` vector
    /// accumulators of 16 lanes: each lane does the fused multiply-adds of
    /// [`super::avx2::tile`]'s lane in the same order, so the same bits.
    ///
    /// # Safety
    /// AVX-512F must be present; the bounds `super::tile_blocks` asserts must
    /// hold for the `G` blocks.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile<const W: usize, const G: usize>(
        src: *const f32,
        bstride: usize,
        plane: usize,
        taps: &[(usize, usize)],
        (cin, kk): (usize, usize),
        wk: *const f32,
        out: *mut f32,
        add: bool,
    ) {
        const { assert!(L == 16, "a block's lanes are one 16-lane vector") };
        let mut acc = [[_mm512_setzero_ps(); G]; W];
        if add {
            for (j, a) in acc.iter_mut().enumerate() {
                for (g, a) in a.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(out.add(g * OB * L + j * L));
                }
            }
        }
        let (mut x, mut w) = (src, wk);
        for _ in 0..cin {
            for &(t, off) in taps {
                let mut xs = [_mm512_setzero_ps(); G];
                for (g, v) in xs.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(x.add(g * bstride + off));
                }
                for (j, a) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*w.add(t * W + j));
                    for (a, xv) in a.iter_mut().zip(xs) {
                        *a = _mm512_fmadd_ps(wv, xv, *a);
                    }
                }
            }
            x = x.add(plane);
            w = w.add(kk * W);
        }
        for (j, a) in acc.iter().enumerate() {
            for (g, a) in a.iter().enumerate() {
                _mm512_storeu_ps(out.add(g * OB * L + j * L), *a);
            }
        }
    }

    /// The sum of a vector's 16 lanes: the upper eight onto the lower, then
    /// the eight as [`super::super::conv3x3::avx2::hsum`] adds them.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn hsum16(v: __m512) -> f32 {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        super::super::conv3x3::avx2::hsum(_mm256_add_ps(_mm512_castps512_ps256(v), hi))
    }

    /// [`super::tile_dw`] with `R K` vector accumulators of 16 partial sums.
    ///
    /// # Safety
    /// AVX-512F (with AVX2 and FMA) must be present; the bounds `super::tile_dw` asserts must hold.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn tile_dw<const R: usize, const K: usize>(
        dy: &[f32],
        xb: &[f32],
        (blocks, dy_next, x_next): (usize, usize, usize),
        l: &Lanes,
        ky: usize,
        rows: std::ops::Range<usize>,
        acc: &mut [f32],
    ) {
        let mut a = [[_mm512_setzero_ps(); K]; R];
        let (d, xp, plane) = (dy.as_ptr(), xb.as_ptr(), l.plane_out());
        let step = l.s * L;
        for b in 0..blocks {
            for y in rows.clone() {
                let mut p = xp.add(b * x_next + l.at_in(y * l.s + ky, 0));
                let mut q = d.add(b * dy_next + l.at_out(y, 0));
                for _ in 0..l.ow {
                    let mut xs = [_mm512_setzero_ps(); K];
                    for (kx, v) in xs.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(p.add(kx * L));
                    }
                    for (j, a) in a.iter_mut().enumerate() {
                        let dv = _mm512_loadu_ps(q.add(j * plane));
                        for (a, xv) in a.iter_mut().zip(xs) {
                            *a = _mm512_fmadd_ps(dv, xv, *a);
                        }
                    }
                    p = p.add(step);
                    q = q.add(L);
                }
            }
        }
        for (j, a) in a.iter().enumerate() {
            for (kx, v) in a.iter().enumerate() {
                acc[j * K + kx] += hsum16(*v);
            }
        }
    }
}

/// Runs [`tile`] for every pixel of `plan` over the blocks of `src` (`ins`
/// channels, `plane` floats each): `outs` NCHW channels of `pixels` pixels.
#[allow(clippy::too_many_arguments)]
fn gather(
    src: &[f32],
    (ins, plane): (usize, usize),
    plan: &Plan,
    wk: &[f32],
    (outs, kk): (usize, usize),
    n: usize,
    pixels: usize,
    fast: bool,
) -> Vec<f32> {
    // Input channels per pass: their planes of a block stay in L2 and a
    // tile's weights for them in L1 (6 x 9 x 64 floats for a 3x3 kernel).
    let channels = (576 / kk).max(1);
    // Blocks per task: more than one where the 512-bit tiles take several at once.
    let wide = fast && avx512();
    let per_task = if wide { GROUP_512 } else { 1 };
    let bstride = ins * plane;
    // Every output float is written (each image's channels by the tiles of
    // output channels, all its pixels), so its memory is not zeroed first.
    let fill = |out: &mut [MaybeUninit<f32>]| {
        // One task per group of blocks and tile of output channels, which owns
        // those channels of the group's images.
        let mut tasks = Vec::new();
        for (b, block) in out.chunks_mut(per_task * L * outs * pixels).enumerate() {
            let mut images: Vec<&mut [MaybeUninit<f32>]> = block.chunks_exact_mut(outs * pixels).collect();
            for (o0, width) in groups(outs, OB) {
                let parts: Vec<&mut [MaybeUninit<f32>]> = images
                    .iter_mut()
                    .map(|img| {
                        let (part, rest) = std::mem::take(img).split_at_mut(width * pixels);
                        *img = rest;
                        part
                    })
                    .collect();
                tasks.push((b, o0, width, parts));
            }
        }
        tasks.into_par_iter().for_each(|(b, o0, width, mut parts)| {
            let blocks = parts.len().div_ceil(L);
            let block_sums = OB * L * blocks;
            // Each pixel's tile, [pixel][block][j][lane], summed over the passes.
            let mut sums = Aligned::zeroed(pixels * block_sums);
            for c0 in (0..ins).step_by(channels) {
                let cs = channels.min(ins - c0);
                let src =
                    (&src[(b * per_task * ins + c0) * plane..][..(blocks - 1) * bstride + cs * plane], bstride, blocks);
                let wk = &wk[(o0 * ins + c0 * width) * kk..][..width * cs * kk];
                let add = c0 > 0;
                for (i, sums) in sums.chunks_exact_mut(block_sums).enumerate() {
                    let (taps, dims) = (plan.pixel(i), (cs, kk));
                    match width {
                        6 => tile_blocks::<6>(src, plane, taps, dims, wk, sums, add, (fast, wide)),
                        5 => tile_blocks::<5>(src, plane, taps, dims, wk, sums, add, (fast, wide)),
                        4 => tile_blocks::<4>(src, plane, taps, dims, wk, sums, add, (fast, wide)),
                        3 => tile_blocks::<3>(src, plane, taps, dims, wk, sums, add, (fast, wide)),
                        2 => tile_blocks::<2>(src, plane, taps, dims, wk, sums, add, (fast, wide)),
                        _ => tile_blocks::<1>(src, plane, taps, dims, wk, sums, add, (fast, wide)),
                    }
                }
            }
            // Into the images a line (16 pixels) at a time: one pixel at a time,
            // the 6 x 16 lines written at once are 4 KiB apart in big planes
            // (one L1 set) and evicted each other.
            for i0 in (0..pixels).step_by(16) {
                let m = 16.min(pixels - i0);
                for (image, img) in parts.iter_mut().enumerate() {
                    let at = (image / L) * OB * L + image % L;
                    for j in 0..width {
                        for (t, d) in img[j * pixels + i0..][..m].iter_mut().enumerate() {
                            d.write(sums[(i0 + t) * block_sums + at + j * L]);
                        }
                    }
                }
            }
        });
    };
    // SAFETY: `fill` writes every float, as said above.
    #[allow(unsafe_code)]
    unsafe {
        super::written(n * outs * pixels, fill)
    }
}

/// Output channels per kernel-gradient tile for a kernel of `k` taps a row:
/// `R K` sums, the `K` inputs and a gradient in the 16 vector registers (two
/// rows of a 7x7 kernel spilled the sums to the stack, 2x slower). With the
/// 512-bit tiles (`wide`; 32 registers) four for a 3x3 kernel and three for
/// a 7x7 one: each gradient vector loaded feeds more multiply-adds (4x4
/// planes: 3.95 -> 3.45 ms for 128 images of 128 channels, against 5.3 for
/// the 256-bit tiles; a tile of all nine taps at once spilled its sums).
fn dw_rows(k: usize, wide: bool) -> usize {
    match (k <= 3, wide) {
        (true, false) => 3,
        (true, true) => 4,
        (false, false) => 1,
        (false, true) => 2,
    }
}

/// The kernel gradient `(cout, cin, k, k)` from the input (padded blocks)
/// and the output gradient (blocks).
fn kernel_grad(xb: &[f32], cin: usize, dyb: &[f32], cout: usize, l: &Lanes, fast: bool) -> Vec<f32> {
    kernel_grad_within(xb, (cin, cout), dyb, l, fast, 4 << 20)
}

/// [`kernel_grad`] holding at most about `max_floats` partial sums at a time.
fn kernel_grad_within(
    xb: &[f32],
    (cin, cout): (usize, usize),
    dyb: &[f32],
    l: &Lanes,
    fast: bool,
    max_floats: usize,
) -> Vec<f32> {
    /// Input channels per task: their planes of a block stay in L2 while
    /// every tile of output channels goes over them.
    const CHANNELS: usize = 16;
    /// Blocks per task, which each tile runs through before adding up its
    /// lanes (a 4x4 plane's tile has 32 pixel-lanes a block).
    const GROUP: usize = 4;
    // The 512-bit tiles' sums (or their plain twin's: the same bits) where the CPU has them.
    let wide = avx512();
    let (k, kk, db) = (l.k, l.k * l.k, dw_rows(l.k, wide));
    let groups_of_blocks = l.blocks.div_ceil(GROUP);
    let runs: Vec<usize> = (0..cin).step_by(CHANNELS).collect();
    // For each kernel row, the output rows whose tap row reads a pixel row.
    let live_rows: Vec<std::ops::Range<usize>> = (0..k)
        .map(|ky| {
            let ys = (0..l.oh).filter(|&y| l.live(y, l.h).contains(&ky));
            ys.clone().min().unwrap_or(0)..ys.max().map_or(0, |y| y + 1)
        })
        .collect();
    // One task's sums (blocks GROUP·g.. of it) for the tiles of output
    // channels (o0, rows) `tiles`, from the first tile's o0 · cs · kk on,
    // [channel][ky][row][kx].
    let (dy_next, x_next) = (cout * l.plane_out(), cin * l.plane_in());
    let task = |g: usize, c0: usize, tiles: &[(usize, usize)], acc: &mut [f32]| {
        let (b, nb) = (g * GROUP, GROUP.min(l.blocks - g * GROUP));
        let cs = CHANNELS.min(cin - c0);
        let first = tiles.first().map_or(0, |t| t.0);
        for &(o0, rows) in tiles {
            let dy = &dyb[(b * cout + o0) * l.plane_out()..][..(nb - 1) * dy_next + rows * l.plane_out()];
            let acc = &mut acc[(o0 - first) * cs * kk..][..rows * cs * kk];
            for (ci, acc) in acc.chunks_exact_mut(k * rows * k).enumerate() {
                let x = &xb[(b * cin + c0 + ci) * l.plane_in()..][..(nb - 1) * x_next + l.plane_in()];
                let span = (nb, dy_next, x_next);
                for (ky, acc) in acc.chunks_exact_mut(rows * k).enumerate() {
                    let ys = live_rows[ky].clone();
                    match (rows, k) {
                        (4, 3) => tile_dw::<4, 3>(dy, x, span, l, ky, ys, acc, (fast, wide)),
                        (3, 3) => tile_dw::<3, 3>(dy, x, span, l, ky, ys, acc, (fast, wide)),
                        (2, 3) => tile_dw::<2, 3>(dy, x, span, l, ky, ys, acc, (fast, wide)),
                        (1, 3) => tile_dw::<1, 3>(dy, x, span, l, ky, ys, acc, (fast, wide)),
                        (2, 7) => tile_dw::<2, 7>(dy, x, span, l, ky, ys, acc, (fast, wide)),
                        (1, 7) => tile_dw::<1, 7>(dy, x, span, l, ky, ys, acc, (fast, wide)),
                        _ => unreachable!("kernel {k}: not a lanes convolution"),
                    }
                }
            }
        }
    };
    let tiles: Vec<(usize, usize)> = groups(cout, db).collect();
    // One task per group of blocks and run of input channels, consecutive
    // tasks on the same blocks (whose output gradient then stays in L2), as
    // many groups at a time as keep their sums under `max_floats` (128 images
    // of 512 channels one task a block would hold 75 MB); each run's sums
    // added up in group order, so the result is the same for any number of
    // threads or groups at a time. Where that makes fewer than two tasks a
    // thread (ResNet's stem, three input channels, for 64 images: one task),
    // each task's tiles of output channels are split among more (each sum
    // still computed by one of them, in the same order).
    let per_group = cout * cin * kk;
    let at_once = (max_floats / per_group.max(1)).clamp(1, groups_of_blocks);
    let mut sums: Vec<Vec<f32>> = Vec::new();
    for first in (0..groups_of_blocks).step_by(at_once) {
        let group = first..(first + at_once).min(groups_of_blocks);
        let tasks: Vec<(usize, usize)> = group.flat_map(|g| runs.iter().map(move |&c0| (g, c0))).collect();
        let split = (2 * rayon::current_num_threads()).div_ceil(tasks.len()).clamp(1, tiles.len());
        let per_part = tiles.len().div_ceil(split);
        let parts: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(g, c0)| {
                let cs = CHANNELS.min(cin - c0);
                let mut acc = vec![0f32; cout * cs * kk];
                // Every tile but the last has `db` output channels.
                acc.par_chunks_mut(per_part * db * cs * kk)
                    .zip(tiles.par_chunks(per_part))
                    .for_each(|(piece, part)| task(g, c0, part, piece));
                acc
            })
            .collect();
        for (i, part) in parts.into_iter().enumerate() {
            let r = i % runs.len();
            match sums.get_mut(r) {
                Some(sum) => sum.iter_mut().zip(&part).for_each(|(s, v)| *s += v),
                None => sums.push(part),
            }
        }
    }
    // Into (cout, cin, k, k).
    let mut dw = vec![0f32; cout * cin * kk];
    for (&c0, sum) in runs.iter().zip(&sums) {
        let cs = CHANNELS.min(cin - c0);
        for &(o0, rows) in &tiles {
            put_dw(&mut dw, &sum[o0 * cs * kk..][..rows * cs * kk], (o0, rows), c0, (cin, k));
        }
    }
    dw
}

/// Whether these kernels take a `k` x `k` kernel (3x3, and 7x7 as the stem's).
pub(super) fn supports(k: usize) -> bool {
    k == 3 || k == 7
}

/// The convolution of NCHW `x` (`n` x `cin` x `h` x `w`) with `w` (`cout` x
/// `cin` x `k` x `k`), as `l` says.
pub(super) fn forward(x: &[f32], w: &[f32], l: &Lanes, cin: usize, cout: usize) -> Vec<f32> {
    forward_with(x, w, l, (cin, cout), simd())
}

fn forward_with(x: &[f32], w: &[f32], l: &Lanes, (cin, cout): (usize, usize), fast: bool) -> Vec<f32> {
    assert!(supports(l.k));
    let kk = l.k * l.k;
    let xb = to_lanes(x, cin, l.n, (l.h, l.w), l.p);
    let wk = pack(w, (cout, cin, kk), false);
    gather(&xb, (cin, l.plane_in()), &Plan::forward(l), &wk, (cout, kk), l.n, l.oh * l.ow, fast)
}

/// The input gradient (when `need_dx`, else empty) and the kernel gradient
/// (when `need_dw`, else empty) of [`forward`].
pub(super) fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    l: &Lanes,
    cin: usize,
    cout: usize,
    need: (bool, bool),
) -> (Vec<f32>, Vec<f32>) {
    backward_with(x, w, dy, l, (cin, cout), need, simd())
}

fn backward_with(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    l: &Lanes,
    (cin, cout): (usize, usize),
    (need_dx, need_dw): (bool, bool),
    fast: bool,
) -> (Vec<f32>, Vec<f32>) {
    assert!(supports(l.k));
    let kk = l.k * l.k;
    let dyb = to_lanes(dy, cout, l.n, (l.oh, l.ow), 0);
    let mut dw = Vec::new();
    if need_dw {
        dw = kernel_grad(&to_lanes(x, cin, l.n, (l.h, l.w), l.p), cin, &dyb, cout, l, fast);
    }
    let mut dx = Vec::new();
    if need_dx {
        let wk = pack(w, (cout, cin, kk), true);
        dx = gather(&dyb, (cout, l.plane_out()), &Plan::input_grad(l), &wk, (cin, kk), l.n, l.h * l.w, fast);
    }
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::layers::randn;
    use crate::train::rng::Rng;

    /// The definition in double: the output, and for an output gradient
    /// `dy` the input and kernel gradients, one product at a time.
    fn naive(x: &[f32], w: &[f32], dy: &[f32], l: &Lanes, (cin, cout): (usize, usize)) -> [Vec<f64>; 3] {
        let (k, s, p) = (l.k, l.s, l.p);
        let mut y = vec![0f64; l.n * cout * l.oh * l.ow];
        let mut dx = vec![0f64; x.len()];
        let mut dw = vec![0f64; w.len()];
        for b in 0..l.n {
            for o in 0..cout {
                for oy in 0..l.oh {
                    for ox in 0..l.ow {
                        let yi = ((b * cout + o) * l.oh + oy) * l.ow + ox;
                        for c in 0..cin {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = ((oy * s + ky).wrapping_sub(p), (ox * s + kx).wrapping_sub(p));
                                    if iy < l.h && ix < l.w {
                                        let xi = ((b * cin + c) * l.h + iy) * l.w + ix;
                                        let wi = ((o * cin + c) * k + ky) * k + kx;
                                        y[yi] += f64::from(x[xi]) * f64::from(w[wi]);
                                        dx[xi] += f64::from(dy[yi]) * f64::from(w[wi]);
                                        dw[wi] += f64::from(dy[yi]) * f64::from(x[xi]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw]
    }

    /// The 512-bit tiles give the bits of their plain twins and the forward
    /// ones the 256-bit tiles' bits too (where this CPU has both).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_512_bit_tiles_give_the_bits_of_the_256_bit_and_plain_ones() {
        if !(simd() && avx512()) {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        let mut rng = Rng::new(5);
        // 7 blocks: a group of four, one of two and one alone.
        let (n, cin, h) = (100, 5, 6);
        let l = Lanes::new(n, (h, h), (3, 1, 1), (h, h));
        let xb = to_lanes(&randn(&mut rng, &[n, cin, h, h]), cin, n, (h, h), 1);
        let plan = Plan::forward(&l);
        let (bstride, plane) = (cin * l.plane_in(), l.plane_in());
        for i in [0, 7, 14, 35] {
            let wk = randn(&mut rng, &[cin * 9 * 4]);
            let start = randn(&mut rng, &[7 * OB * L]);
            for add in [false, true] {
                let run = |fast| {
                    let mut out = start.clone();
                    tile_blocks::<4>(
                        (&xb, bstride, 7),
                        plane,
                        plan.pixel(i),
                        (cin, 9),
                        &wk,
                        &mut out,
                        add,
                        (fast, true),
                    );
                    out
                };
                let (plain, wide) = (run(false), run(true));
                let mut narrow = start.clone();
                for g in 0..7 {
                    let out = &mut narrow[g * OB * L..];
                    tile::<4>(&xb[g * bstride..], plane, plan.pixel(i), (cin, 9), &wk, out, add, true);
                }
                assert!(wide == plain && narrow == plain, "pixel {i} add {add}");
            }
        }
        let dyb = to_lanes(&randn(&mut rng, &[n, 4, h, h]), 4, n, (h, h), 0);
        let span = (7, 4 * l.plane_out(), bstride);
        for ky in 0..3 {
            for wide in [false, true] {
                let run = |fast| {
                    let mut acc = vec![0.5f32; 12];
                    tile_dw::<4, 3>(&dyb, &xb, span, &l, ky, 0..h, &mut acc, (fast, wide));
                    acc
                };
                assert!(run(true) == run(false), "ky {ky} wide {wide}");
            }
        }
    }

    /// The layout puts each pixel in its image's lane, inside a zero border.
    #[test]
    fn the_lanes_layout_puts_the_batch_across_the_lanes() {
        let (n, c, h, w) = (18, 2, 3, 5);
        let x: Vec<f32> = (1..=n * c * h * w).map(|v| v as f32).collect();
        let l = Lanes::new(n, (h, w), (3, 1, 1), (h, w));
        assert_eq!(l.blocks, 2);
        let xb = to_lanes(&x, c, n, (h, w), 1);
        assert_eq!(xb.iter().filter(|v| **v != 0.0).count(), x.len());
        // Image 17 (block 1, lane 1), channel 1, pixel (2, 4).
        let at = (c + 1) * l.plane_in() + l.at_in(3, 5) + 1;
        assert_eq!(xb[at], x[((17 * c + 1) * h + 2) * w + 4]);
        // Its right neighbour is border.
        assert_eq!(xb[at + L], 0.0);
    }

    /// Output and both gradients against the definition, with the SIMD
    /// tiles and the plain ones, for 3x3 kernels with stride 1 and 2 and
    /// 7x7/2 ones, batches that fill no whole block and more than one group
    /// of blocks, ragged channel counts, planes from 1x1 to 12x12 and more
    /// input channels than a pass.
    #[test]
    fn lanes_convolution_and_its_gradients_match_the_definition() {
        let mut rng = Rng::new(11);
        for (n, cin, cout, (h, w), (k, s, p)) in [
            (1, 3, 4, (8, 8), (3, 1, 1)),
            (17, 5, 7, (4, 4), (3, 1, 1)),
            (16, 2, 6, (1, 1), (3, 1, 1)),
            (20, 4, 3, (3, 5), (3, 1, 1)),
            (2, 70, 5, (1, 3), (3, 1, 1)),
            (17, 5, 7, (8, 8), (3, 2, 1)),
            (3, 4, 13, (5, 7), (3, 2, 1)),
            (18, 3, 8, (12, 12), (7, 2, 3)),
            (2, 2, 3, (9, 6), (7, 2, 3)),
            (70, 3, 4, (4, 4), (3, 1, 1)),
        ] {
            let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let l = Lanes::new(n, (h, w), (k, s, p), (oh, ow));
            let x = randn(&mut rng, &[n, cin, h, w]);
            let wt = randn(&mut rng, &[cout, cin, k, k]);
            let dy = randn(&mut rng, &[n, cout, oh, ow]);
            let want = naive(&x, &wt, &dy, &l, (cin, cout));
            let run = |fast| {
                let y = forward_with(&x, &wt, &l, (cin, cout), fast);
                let (dx, dw) = backward_with(&x, &wt, &dy, &l, (cin, cout), (true, true), fast);
                [y, dx, dw]
            };
            let plain = run(false);
            for fast in [false, simd()] {
                let got = run(fast);
                // The SIMD tiles do the plain tiles' arithmetic in the same order.
                assert!(got == plain, "{l:?}: SIMD and plain tiles differ");
                for (what, (got, want)) in ["forward", "dx", "dw"].iter().zip(got.iter().zip(&want)) {
                    assert_eq!(got.len(), want.len());
                    for (a, b) in got.iter().zip(want) {
                        assert!((f64::from(*a) - b).abs() <= 1e-4 * (1.0 + b.abs()), "{what} {l:?}: {a} vs {b}");
                    }
                }
                let (none, only_dw) = backward_with(&x, &wt, &dy, &l, (cin, cout), (false, true), fast);
                assert!(none.is_empty() && only_dw == got[2]);
                // The groups of blocks one at a time (sums bounded) add up
                // the same (five blocks: two groups).
                let (xb, dyb) = (to_lanes(&x, cin, n, (h, w), p), to_lanes(&dy, cout, n, (oh, ow), 0));
                assert!(kernel_grad_within(&xb, (cin, cout), &dyb, &l, fast, 1) == got[2]);
                // So do the tiles of output channels split among more tasks
                // (more for more threads).
                for threads in [1, 5] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    assert!(pool.install(|| kernel_grad_within(&xb, (cin, cout), &dyb, &l, fast, 4 << 20)) == got[2]);
                }
            }
        }
    }
}
