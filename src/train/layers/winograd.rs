//! 3x3 convolutions with stride 1 and padding 1 on the CPU by Winograd's
//! minimal filtering F(2x2, 3x3) (Lavin and Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016).
//!
//! Each 2x2 block of output pixels (a tile) is computed from the 4x4 input
//! patch around it: the patch is transformed (`V = Bᵀ d B`), the kernel once
//! per pass (`U = G g Gᵀ`), the two multiplied point by point in the 4x4
//! transform domain and summed over input channels, and transformed back
//! (`Y = Aᵀ M A`). Summed over channels, each of the 16 points is one matrix
//! product (C_out x C) · (C x tiles), so a convolution is 16 products with
//! 16·C_out·C multiply-adds per tile where im2col or a direct convolution
//! do 36: 2.25 times fewer. The transforms only add and halve.
//!
//! The backward pass is the adjoint of the same maps, so it needs no other
//! algorithm: the output gradient goes into the transform domain
//! (`dM = A dY Aᵀ`), the input gradient is 16 products with `Uᵀ` carried back
//! by `B dV Bᵀ` onto the (overlapping) patches, and the kernel gradient is 16
//! products `dM · Vᵀ` summed over tiles and carried back by `Gᵀ dU G`.
//!
//! The tiles are processed in chunks of a few MiB of transformed patches
//! and products, the 16 products of a chunk side by side on rayon's threads
//! (larger chunks pack the kernels fewer times, smaller ones stay in the
//! cache: 8 MiB measured best). The kernels are transformed along the input
//! channels, and the forward pass can keep them for the input gradient. Planes with an odd side are padded to whole tiles (ResNet's 7x7
//! planes compute 8x8, still 1.7x fewer multiply-adds).
//!
//! Layouts: `U` (C_out, 16, C); patches `V` and output-gradient transforms
//! `dM` (channel, 16, tile); products `M`, `dV` and `dU` (16, rows, columns).

use super::conv::Scratch;
use super::gemm::{gemm_serial, View};
use rayon::prelude::*;

/// Points of the 4x4 transform domain.
const XI: usize = 16;

/// Floats of transformed patches and products a chunk of tiles may hold.
const CHUNK_FLOATS: usize = 1 << 21;

/// Sizes of one convolution and its tiles.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tiles {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) cout: usize,
    /// Output pixels along a tile's side: 2 for F(2x2, 3x3), 4 for F(4x4, 3x3).
    pub(super) m: usize,
    pub(super) th: usize,
    pub(super) tw: usize,
    /// Floats of transformed patches and products a chunk may hold.
    pub(super) budget: usize,
}

impl Tiles {
    /// Tiles of `m` x `m` output pixels of an N x C x H x W input convolved
    /// into C_out channels.
    pub(super) fn new((n, c, h, w): (usize, usize, usize, usize), cout: usize, m: usize) -> Tiles {
        Tiles { n, c, h, w, cout, m, th: h.div_ceil(m), tw: w.div_ceil(m), budget: CHUNK_FLOATS }
    }
    /// Points of the transform domain: (m + 2)².
    pub(super) fn points(&self) -> usize {
        (self.m + 2) * (self.m + 2)
    }
    fn per_image(&self) -> usize {
        self.th * self.tw
    }
    pub(super) fn total(&self) -> usize {
        self.n * self.per_image()
    }
    /// Image, tile row and tile column of tile `t`.
    fn at(&self, t: usize) -> (usize, usize, usize) {
        let (b, r) = (t / self.per_image(), t % self.per_image());
        (b, r / self.tw, r % self.tw)
    }
    /// Tiles per chunk.
    pub(super) fn chunk(&self) -> usize {
        (self.budget / (self.points() * (self.c + self.cout))).max(1).min(self.total().max(1))
    }
    /// The chunks: first tile and number of tiles.
    pub(super) fn chunks(&self) -> impl Iterator<Item = (usize, usize)> {
        let (total, chunk) = (self.total(), self.chunk());
        (0..total).step_by(chunk).map(move |t0| (t0, chunk.min(total - t0)))
    }
    /// The chunk's tiles as runs along tile rows.
    pub(super) fn runs(&self, t0: usize, nt: usize) -> impl Iterator<Item = Run> + '_ {
        self.runs_within(t0, t0..t0 + nt)
    }
    /// The runs of the chunk starting at tile `t0` over its tiles `range`.
    fn runs_within(&self, t0: usize, range: std::ops::Range<usize>) -> impl Iterator<Item = Run> + '_ {
        let mut t = range.start;
        std::iter::from_fn(move || {
            if t >= range.end {
                return None;
            }
            let (b, i, j) = self.at(t);
            let len = (self.tw - j).min(range.end - t);
            let run = Run { b, i, j0: j, j1: j + len, tb: t - t0 };
            t += len;
            Some(run)
        })
    }
    /// The runs of image `b` inside the chunk `t0..t0 + nt`.
    pub(super) fn runs_of(&self, b: usize, t0: usize, nt: usize) -> impl Iterator<Item = Run> + '_ {
        let per = self.per_image();
        self.runs_within(t0, (b * per).max(t0)..((b + 1) * per).min(t0 + nt))
    }
    /// The images a chunk touches.
    pub(super) fn images(&self, t0: usize, nt: usize) -> std::ops::Range<usize> {
        t0 / self.per_image()..(t0 + nt - 1) / self.per_image() + 1
    }
}

/// Tiles (b, i, j) for j in `j0..j1`, one tile row of one image, at
/// positions `tb..` of their chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub(super) b: usize,
    pub(super) i: usize,
    pub(super) j0: usize,
    pub(super) j1: usize,
    pub(super) tb: usize,
}

/// `Bᵀ r` along one axis of a patch: the input transform.
#[inline]
fn bt(r: [f32; 4]) -> [f32; 4] {
    [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]]
}

/// `B r`, the adjoint of [`bt`].
#[inline]
fn b(r: [f32; 4]) -> [f32; 4] {
    [r[0], r[1] - r[2] + r[3], r[2] + r[1] - r[0], -r[3]]
}

/// `Aᵀ r`: the output transform, four points to two pixels.
#[inline]
fn at(r: [f32; 4]) -> [f32; 2] {
    [r[0] + r[1] + r[2], r[1] - r[2] - r[3]]
}

/// `A r`, the adjoint of [`at`].
#[inline]
fn a(r: [f32; 2]) -> [f32; 4] {
    [r[0], r[0] + r[1], r[0] - r[1], -r[1]]
}

/// `G r`: the kernel transform, three taps to four points.
#[inline]
fn g(r: [f32; 3]) -> [f32; 4] {
    [r[0], 0.5 * (r[0] + r[1] + r[2]), 0.5 * (r[0] - r[1] + r[2]), r[2]]
}

/// `Gᵀ r`, the adjoint of [`g`].
#[inline]
fn gt(r: [f32; 4]) -> [f32; 3] {
    [r[0] + 0.5 * (r[1] + r[2]), 0.5 * (r[1] - r[2]), 0.5 * (r[1] + r[2]) + r[3]]
}

/// `U`, (C_out, 16, C): every kernel in the transform domain, `G g Gᵀ`
/// computed along the input channels (long unit-stride loops).
fn kernels(w: &[f32], s: &Tiles) -> Vec<f32> {
    let c = s.c;
    let mut u = vec![0f32; s.cout * XI * c];
    u.par_chunks_mut(XI * c).enumerate().for_each(|(co, u)| {
        // The kernel tap-major, (9, C); then G down its columns, (4, 3, C).
        let mut taps = vec![0f32; 9 * c];
        for (ci, k) in w[co * c * 9..][..c * 9].chunks_exact(9).enumerate() {
            for (t, v) in k.iter().enumerate() {
                taps[t * c + ci] = *v;
            }
        }
        let mut rows = vec![0f32; 12 * c];
        for kx in 0..3 {
            let src: [&[f32]; 3] = std::array::from_fn(|ky| &taps[(ky * 3 + kx) * c..][..c]);
            let mut dst = four_strided(&mut rows, kx * c, 3 * c, c);
            for i in 0..c {
                let t = g([src[0][i], src[1][i], src[2][i]]);
                for (d, v) in dst.iter_mut().zip(t) {
                    d[i] = v;
                }
            }
        }
        // G along the rows: point (y, x) = u[(4y + x)·C..].
        for (y, u) in u.chunks_exact_mut(4 * c).enumerate() {
            let src: [&[f32]; 3] = std::array::from_fn(|kx| &rows[(y * 3 + kx) * c..][..c]);
            let mut dst = four(u);
            for i in 0..c {
                let t = g([src[0][i], src[1][i], src[2][i]]);
                for (d, v) in dst.iter_mut().zip(t) {
                    d[i] = v;
                }
            }
        }
    });
    u
}

/// Four `len`-float rows of `buf` starting at `start`, `stride` apart.
fn four_strided(buf: &mut [f32], start: usize, stride: usize, len: usize) -> [&mut [f32]; 4] {
    let mut rows = buf[start..].chunks_mut(stride).map(|r| &mut r[..len]);
    std::array::from_fn(|_| rows.next().expect("four rows"))
}

/// The kernel gradient (C_out, C, 3, 3) from `dU` (16, C_out, C): `Gᵀ dU G`,
/// along the input channels.
fn kernel_gradients(du: &[f32], s: &Tiles) -> Vec<f32> {
    let c = s.c;
    let mut dw = vec![0f32; s.cout * c * 9];
    dw.par_chunks_mut(c * 9).enumerate().for_each(|(co, dw)| {
        let point = |xi: usize| &du[(xi * s.cout + co) * c..][..c];
        // Gᵀ along the rows: (4, 3, C); then down the columns: (3, 3, C).
        let mut rows = vec![0f32; 12 * c];
        for (y, dst) in rows.chunks_exact_mut(3 * c).enumerate() {
            let src: [&[f32]; 4] = std::array::from_fn(|x| point(4 * y + x));
            let (d0, rest) = dst.split_at_mut(c);
            let (d1, d2) = rest.split_at_mut(c);
            for i in 0..c {
                [d0[i], d1[i], d2[i]] = gt([src[0][i], src[1][i], src[2][i], src[3][i]]);
            }
        }
        let mut taps = vec![0f32; 9 * c];
        for kx in 0..3 {
            let src: [&[f32]; 4] = std::array::from_fn(|y| &rows[(y * 3 + kx) * c..][..c]);
            for i in 0..c {
                let t = gt([src[0][i], src[1][i], src[2][i], src[3][i]]);
                for (ky, v) in t.into_iter().enumerate() {
                    taps[(ky * 3 + kx) * c + i] = v;
                }
            }
        }
        for (ci, k) in dw.chunks_exact_mut(9).enumerate() {
            for (t, v) in k.iter_mut().enumerate() {
                *v = taps[t * c + ci];
            }
        }
    });
    dw
}

/// One plane row split by column parity, as the patches of a tile row read
/// it: `even[q]` is column 2q - 1 and `odd[q]` column 2q (zeros outside the
/// row), so tile j reads `even[j]`, `odd[j]`, `even[j + 1]` and `odd[j + 1]`.
fn split_row(row: Option<&[f32]>, even: &mut [f32], odd: &mut [f32]) {
    let Some(row) = row else {
        even.fill(0.0);
        odd.fill(0.0);
        return;
    };
    even[0] = 0.0;
    for (m, p) in row.chunks_exact(2).enumerate() {
        odd[m] = p[0];
        even[m + 1] = p[1];
    }
    let pairs = row.len() / 2;
    if row.len() % 2 == 1 {
        odd[pairs] = row[row.len() - 1];
        odd[pairs + 1..].fill(0.0);
    } else {
        odd[pairs..].fill(0.0);
    }
    even[pairs + 1..].fill(0.0);
}

/// Four equal rows of `buf`, mutable.
fn four(buf: &mut [f32]) -> [&mut [f32]; 4] {
    let n = buf.len() / 4;
    let (r0, rest) = buf.split_at_mut(n);
    let (r1, rest) = rest.split_at_mut(n);
    let (r2, r3) = rest.split_at_mut(n);
    [r0, r1, r2, r3]
}

/// `V` (C, 16, nt) of the chunk's tiles: each patch in the transform domain,
/// a tile row at a time (the column transform on whole rows, the row
/// transform on the parity-split rows: unit-stride loops over tiles).
fn patches(x: &[f32], s: &Tiles, t0: usize, nt: usize, v: &mut [f32]) {
    let (plane, half) = (s.h * s.w, s.tw + 1);
    v.par_chunks_mut(XI * nt).enumerate().for_each(|(ci, v)| {
        let mut buf = vec![0f32; 8 * half];
        for r in s.runs(t0, nt) {
            let img = &x[(r.b * s.c + ci) * plane..][..plane];
            let (ev, od) = buf.split_at_mut(4 * half);
            for (y, (e, o)) in ev.chunks_exact_mut(half).zip(od.chunks_exact_mut(half)).enumerate() {
                let yy = (2 * r.i + y).wrapping_sub(1);
                split_row((yy < s.h).then(|| &img[yy * s.w..][..s.w]), e, o);
            }
            for rows in [ev, od] {
                let [d0, d1, d2, d3] = four(rows);
                for (((a, b), c), d) in d0.iter_mut().zip(d1.iter_mut()).zip(d2.iter_mut()).zip(d3.iter_mut()) {
                    [*a, *b, *c, *d] = bt([*a, *b, *c, *d]);
                }
            }
            let (ev, od) = buf.split_at(4 * half);
            let n = r.j1 - r.j0;
            for k in 0..4 {
                let (e, o) = (&ev[k * half..][..half], &od[k * half..][..half]);
                let (e0, e1) = (&e[r.j0..r.j1], &e[r.j0 + 1..=r.j1]);
                let (o0, o1) = (&o[r.j0..r.j1], &o[r.j0 + 1..=r.j1]);
                let [v0, v1, v2, v3] = four(&mut v[4 * k * nt..(4 * k + 4) * nt]);
                let (v0, v1, v2, v3) =
                    (&mut v0[r.tb..][..n], &mut v1[r.tb..][..n], &mut v2[r.tb..][..n], &mut v3[r.tb..][..n]);
                for j in 0..n {
                    [v0[j], v1[j], v2[j], v3[j]] = bt([e0[j], o0[j], e1[j], o1[j]]);
                }
            }
        }
    });
}

/// The `points` products of a chunk, `dst[ξ] = lhs(ξ) · rhs(ξ)` (or `+=`), side by side.
pub(super) fn products<'a>(
    dst: &mut [f32],
    points: usize,
    accumulate: bool,
    lhs: impl Fn(usize) -> View<'a> + Sync,
    rhs: impl Fn(usize) -> View<'a> + Sync,
) {
    let per = dst.len() / points;
    dst.par_chunks_mut(per).enumerate().for_each(|(xi, d)| gemm_serial(d, accumulate, lhs(xi), rhs(xi)));
}

/// Point `ξ` of a (rows, points, cols) layout as a rows x cols matrix.
pub(super) fn point(data: &[f32], points: usize, rows: usize, cols: usize, xi: usize) -> View<'_> {
    View::strided(&data[xi * cols..], rows, cols, points * cols)
}

/// Writes the chunk's tiles of the output `y` (NCHW) from the products `M`
/// (16, C_out, nt): `Aᵀ M A` per tile, a tile row at a time.
fn outputs(m: &[f32], s: &Tiles, t0: usize, nt: usize, y: &mut [f32]) {
    let (plane, imgs) = (s.h * s.w, s.images(t0, nt));
    let out = &mut y[imgs.start * s.cout * plane..imgs.end * s.cout * plane];
    out.par_chunks_mut(plane).enumerate().for_each_init(
        || vec![0f32; 8 * s.tw],
        |cols, (k, out)| {
            let (b, co) = (imgs.start + k / s.cout, k % s.cout);
            for r in s.runs_of(b, t0, nt) {
                let n = r.j1 - r.j0;
                let m = |xi: usize| &m[(xi * s.cout + co) * nt + r.tb..][..n];
                // Aᵀ down the columns: two rows of four points per tile.
                for x in 0..4 {
                    let (m0, m1, m2, m3) = (m(x), m(4 + x), m(8 + x), m(12 + x));
                    let (top, bottom) = cols.split_at_mut(4 * s.tw);
                    let (top, bottom) = (&mut top[x * s.tw..][..n], &mut bottom[x * s.tw..][..n]);
                    for j in 0..n {
                        [top[j], bottom[j]] = at([m0[j], m1[j], m2[j], m3[j]]);
                    }
                }
                // Aᵀ along the rows: two pixels per tile and row.
                for (dy, c) in cols.chunks_exact(4 * s.tw).enumerate() {
                    let yy = 2 * r.i + dy;
                    if yy >= s.h {
                        continue;
                    }
                    let (c0, c1, c2, c3) = (&c[..n], &c[s.tw..][..n], &c[2 * s.tw..][..n], &c[3 * s.tw..][..n]);
                    let row = &mut out[yy * s.w..][..s.w];
                    for (j, px) in row[2 * r.j0..].chunks_mut(2).take(n).enumerate() {
                        let [p0, p1] = at([c0[j], c1[j], c2[j], c3[j]]);
                        px[0] = p0;
                        if let Some(p) = px.get_mut(1) {
                            *p = p1;
                        }
                    }
                }
            }
        },
    );
}

/// `dM` (C_out, 16, nt) of the chunk's tiles: each 2x2 block of the output
/// gradient in the transform domain (zeros past an odd plane's edge).
fn output_gradients(dy: &[f32], s: &Tiles, t0: usize, nt: usize, dm: &mut [f32]) {
    let plane = s.h * s.w;
    dm.par_chunks_mut(XI * nt).enumerate().for_each(|(co, dm)| {
        // Rows 2i and 2i + 1 split by parity: column 2j and 2j + 1 of tile j.
        let mut px = vec![0f32; 4 * s.tw];
        let mut cols = vec![0f32; 8 * s.tw];
        for r in s.runs(t0, nt) {
            let src = &dy[(r.b * s.cout + co) * plane..][..plane];
            for (y, p) in px.chunks_exact_mut(2 * s.tw).enumerate() {
                let (e, o) = p.split_at_mut(s.tw);
                let yy = 2 * r.i + y;
                if yy >= s.h {
                    e.fill(0.0);
                    o.fill(0.0);
                    continue;
                }
                for (j, pair) in src[yy * s.w..][..s.w].chunks(2).enumerate() {
                    e[j] = pair[0];
                    o[j] = pair.get(1).copied().unwrap_or(0.0);
                }
            }
            let n = r.j1 - r.j0;
            let (top, bottom) = px.split_at(2 * s.tw);
            // A down the columns: four rows of (even, odd) per tile.
            for (parity, (t, b)) in
                [(&top[..s.tw], &bottom[..s.tw]), (&top[s.tw..], &bottom[s.tw..])].into_iter().enumerate()
            {
                let [c0, c1, c2, c3] = four(&mut cols[parity * 4 * s.tw..][..4 * s.tw]);
                for j in r.j0..r.j1 {
                    [c0[j], c1[j], c2[j], c3[j]] = a([t[j], b[j]]);
                }
            }
            // A along the rows: the 16 points.
            let (ev, od) = cols.split_at(4 * s.tw);
            for k in 0..4 {
                let (e, o) = (&ev[k * s.tw + r.j0..][..n], &od[k * s.tw + r.j0..][..n]);
                let [d0, d1, d2, d3] = four(&mut dm[4 * k * nt..(4 * k + 4) * nt]);
                let (d0, d1, d2, d3) =
                    (&mut d0[r.tb..][..n], &mut d1[r.tb..][..n], &mut d2[r.tb..][..n], &mut d3[r.tb..][..n]);
                for j in 0..n {
                    [d0[j], d1[j], d2[j], d3[j]] = a([e[j], o[j]]);
                }
            }
        }
    });
}

/// Adds onto the input gradient `dx` (NCHW) the chunk's patch gradients
/// `B dV Bᵀ`, from `dV` (16, C, nt).
fn input_gradients(dv: &[f32], s: &Tiles, t0: usize, nt: usize, dx: &mut [f32]) {
    let (plane, half, imgs) = (s.h * s.w, s.tw + 1, s.images(t0, nt));
    let dst = &mut dx[imgs.start * s.c * plane..imgs.end * s.c * plane];
    dst.par_chunks_mut(plane).enumerate().for_each_init(
        || vec![0f32; 8 * half],
        |acc, (k, dst)| {
            let (b, ci) = (imgs.start + k / s.c, k % s.c);
            for r in s.runs_of(b, t0, nt) {
                let n = r.j1 - r.j0;
                let dv = |xi: usize| &dv[(xi * s.c + ci) * nt + r.tb..][..n];
                acc.fill(0.0);
                // B along the rows: each patch row onto the parity-split columns.
                let (ev, od) = acc.split_at_mut(4 * half);
                for (y, (e, o)) in ev.chunks_exact_mut(half).zip(od.chunks_exact_mut(half)).enumerate() {
                    let (r0, r1, r2, r3) = (dv(4 * y), dv(4 * y + 1), dv(4 * y + 2), dv(4 * y + 3));
                    for j in 0..n {
                        let [c0, c1, c2, c3] = self::b([r0[j], r1[j], r2[j], r3[j]]);
                        e[r.j0 + j] += c0;
                        o[r.j0 + j] += c1;
                        e[r.j0 + j + 1] += c2;
                        o[r.j0 + j + 1] += c3;
                    }
                }
                // B down the columns, then onto rows 2i - 1 .. 2i + 2.
                for rows in [&mut *ev, &mut *od] {
                    let [d0, d1, d2, d3] = four(rows);
                    for (((a, b), c), d) in d0.iter_mut().zip(d1.iter_mut()).zip(d2.iter_mut()).zip(d3.iter_mut()) {
                        [*a, *b, *c, *d] = self::b([*a, *b, *c, *d]);
                    }
                }
                for (y, (e, o)) in ev.chunks_exact(half).zip(od.chunks_exact(half)).enumerate() {
                    let yy = (2 * r.i + y).wrapping_sub(1);
                    if yy >= s.h {
                        continue;
                    }
                    let row = &mut dst[yy * s.w..][..s.w];
                    let pairs = s.w / 2;
                    for (m, p) in row.chunks_exact_mut(2).enumerate() {
                        p[0] += o[m];
                        p[1] += e[m + 1];
                    }
                    if s.w % 2 == 1 {
                        row[s.w - 1] += o[pairs];
                    }
                }
            }
        },
    );
}

/// One tile size of minimal filtering: the transforms that [`forward`] and
/// [`backward`] drive between their matrix products.
pub(super) trait Minimal {
    /// `U` (C_out, points, C): the kernels in the transform domain.
    fn kernels(w: &[f32], s: &Tiles) -> Vec<f32>;
    /// The kernel gradient (C_out, C, 3, 3) from `dU` (points, C_out, C).
    fn kernel_gradients(du: &[f32], s: &Tiles) -> Vec<f32>;
    /// `V` (C, points, nt): the chunk's patches in the transform domain.
    fn patches(x: &[f32], s: &Tiles, t0: usize, nt: usize, v: &mut [f32]);
    /// Writes the chunk's output tiles from the products `M` (points, C_out, nt).
    fn outputs(m: &[f32], s: &Tiles, t0: usize, nt: usize, y: &mut [f32]);
    /// `dM` (C_out, points, nt): the chunk's output gradient in the transform domain.
    fn output_gradients(dy: &[f32], s: &Tiles, t0: usize, nt: usize, dm: &mut [f32]);
    /// Adds the chunk's patch gradients from `dV` (points, C, nt) onto `dx`.
    fn input_gradients(dv: &[f32], s: &Tiles, t0: usize, nt: usize, dx: &mut [f32]);
}

/// F(2x2, 3x3): this module's transforms.
struct F2;

impl Minimal for F2 {
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

/// The output of a 3x3 convolution with stride 1 and padding 1 (NCHW) and,
/// with `keep`, the transformed kernels for [`backward`]: by F(2x2, 3x3) or
/// F(4x4, 3x3) (`winograd4.rs`), as `s.m` says.
pub(super) fn forward(x: &[f32], w: &[f32], s: &Tiles, keep: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    match s.m {
        4 => forward_by::<super::winograd4::F4>(x, w, s, keep),
        _ => forward_by::<F2>(x, w, s, keep),
    }
}

fn forward_by<T: Minimal>(x: &[f32], w: &[f32], s: &Tiles, keep: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    let (plane, xi) = (s.h * s.w, s.points());
    let mut y = vec![0f32; s.n * s.cout * plane];
    if y.is_empty() || s.c == 0 {
        return (y, None);
    }
    let u = T::kernels(w, s);
    let chunk = s.chunk();
    let mut v = Scratch::take(s.c * xi * chunk);
    let mut m = Scratch::take(xi * s.cout * chunk);
    for (t0, nt) in s.chunks() {
        let (v, m) = (&mut v[..s.c * xi * nt], &mut m[..xi * s.cout * nt]);
        T::patches(x, s, t0, nt, v);
        let v = &*v;
        products(m, xi, false, |p| point(&u, xi, s.cout, s.c, p), |p| point(v, xi, s.c, nt, p));
        T::outputs(m, s, t0, nt, &mut y);
    }
    (y, keep.then_some(u))
}

/// The input gradient (when `need_dx`) and the kernel gradient (when
/// `need_dw`) of [`forward`], from the output gradient `dy`; `kept` is the
/// forward pass's transformed kernels, if it kept them.
pub(super) fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    s: &Tiles,
    need: (bool, bool),
    kept: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    match s.m {
        4 => backward_by::<super::winograd4::F4>(x, w, dy, s, need, kept),
        _ => backward_by::<F2>(x, w, dy, s, need, kept),
    }
}

fn backward_by<T: Minimal>(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    s: &Tiles,
    (need_dx, need_dw): (bool, bool),
    kept: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let (plane, xi) = (s.h * s.w, s.points());
    let mut dx = if need_dx { vec![0f32; s.n * s.c * plane] } else { Vec::new() };
    if s.total() == 0 || s.c == 0 || s.cout == 0 || !(need_dx || need_dw) {
        return (dx, if need_dw { vec![0f32; s.cout * s.c * 9] } else { Vec::new() });
    }
    let computed;
    let u = match kept {
        Some(u) if u.len() == s.cout * xi * s.c => u,
        _ if need_dx => {
            computed = T::kernels(w, s);
            &computed[..]
        }
        _ => &[],
    };
    let chunk = s.chunk();
    let mut dm = Scratch::take(s.cout * xi * chunk);
    let mut v = Scratch::take(if need_dw { s.c * xi * chunk } else { 0 });
    let mut dv = Scratch::take(if need_dx { xi * s.c * chunk } else { 0 });
    let mut du = Scratch::take(if need_dw { xi * s.cout * s.c } else { 0 });
    for (k, (t0, nt)) in s.chunks().enumerate() {
        let dm = &mut dm[..s.cout * xi * nt];
        T::output_gradients(dy, s, t0, nt, dm);
        let dm = &*dm;
        if need_dw {
            let v = &mut v[..s.c * xi * nt];
            T::patches(x, s, t0, nt, v);
            let v = &*v;
            products(&mut du, xi, k > 0, |p| point(dm, xi, s.cout, nt, p), |p| point(v, xi, s.c, nt, p).t());
        }
        if need_dx {
            let dv = &mut dv[..xi * s.c * nt];
            products(dv, xi, false, |p| point(u, xi, s.cout, s.c, p).t(), |p| point(dm, xi, s.cout, nt, p));
            T::input_gradients(dv, s, t0, nt, &mut dx);
        }
    }
    let dw = if need_dw { T::kernel_gradients(&du, s) } else { Vec::new() };
    (dx, dw)
}

/// Checks [`forward`] and [`backward`] on each (N, C, H, W, C_out, chunk
/// budget) case with tiles of `m` against candle's own convolution, within
/// `tol` of the largest value: the output and both gradients, with and
/// without the kept kernels, and each gradient also alone.
#[cfg(test)]
pub(super) fn check_against_candle(
    m: usize,
    tol: f32,
    seed: u64,
    cases: &[(usize, usize, usize, usize, usize, usize)],
) {
    use crate::train::layers::randn;
    use crate::train::rng::Rng;
    use candle_core::{Device, Tensor, Var};
    let mut rng = Rng::new(seed);
    let close = |a: &[f32], b: &[f32], tol: f32, what: &str| {
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(a.len() == b.len() && worst <= tol * scale, "{what}: off by {worst} (scale {scale})");
    };
    for &(n, c, h, w, cout, budget) in cases {
        let case = format!("{n}x{c}x{h}x{w} -> {cout}, budget {budget}");
        let s = Tiles { budget, ..Tiles::new((n, c, h, w), cout, m) };
        let (xs, ws) = (randn(&mut rng, &[n, c, h, w]), randn(&mut rng, &[cout, c, 3, 3]));
        let dys = randn(&mut rng, &[n, cout, h, w]);
        let x = Var::from_vec(xs.clone(), (n, c, h, w), &Device::Cpu).unwrap();
        let k = Var::from_vec(ws.clone(), (cout, c, 3, 3), &Device::Cpu).unwrap();
        let y = x.as_tensor().conv2d(k.as_tensor(), 1, 1, 1, 1).unwrap();
        let dy = Tensor::from_vec(dys.clone(), y.dims(), &Device::Cpu).unwrap();
        let grads = y.mul(&dy).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (out, kept) = forward(&xs, &ws, &s, true);
        close(&out, &flat(&y), tol, &format!("output, {case}"));
        assert_eq!(forward(&xs, &ws, &s, false), (out, None), "{case}");
        let (dx, dw) = backward(&xs, &ws, &dys, &s, (true, true), None);
        assert_eq!(backward(&xs, &ws, &dys, &s, (true, true), kept.as_deref()), (dx.clone(), dw.clone()), "{case}");
        close(&dx, &flat(grads.get(&x).unwrap()), tol, &format!("input gradient, {case}"));
        close(&dw, &flat(grads.get(&k).unwrap()), tol, &format!("kernel gradient, {case}"));
        assert_eq!(backward(&xs, &ws, &dys, &s, (true, false), None), (dx, Vec::new()), "{case}");
        assert_eq!(backward(&xs, &ws, &dys, &s, (false, true), None), (Vec::new(), dw), "{case}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transforms' adjoints are adjoint: ⟨f(r), s⟩ = ⟨r, f*(s)⟩.
    #[test]
    fn each_transform_and_its_adjoint_agree() {
        let r4 = [0.3f32, -1.2, 2.5, 0.7];
        let s4 = [1.1f32, 0.4, -0.9, 2.0];
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        assert!((dot(&bt(r4), &s4) - dot(&r4, &b(s4))).abs() < 1e-5);
        let s2 = [0.6f32, -1.5];
        assert!((dot(&at(r4), &s2) - dot(&r4, &a(s2))).abs() < 1e-5);
        let r3 = [0.2f32, -0.8, 1.9];
        assert!((dot(&g(r3), &s4) - dot(&r3, &gt(s4))).abs() < 1e-5);
    }

    /// One axis of F(2, 3) is a correlation: y_o = Σ_k g_k d_(o+k).
    #[test]
    fn one_axis_is_a_correlation() {
        let (d, k) = ([0.5f32, -1.0, 2.0, 3.0], [0.25f32, -0.5, 1.5]);
        let (u, v) = (g(k), bt(d));
        let y = at(std::array::from_fn(|i| u[i] * v[i]));
        for (o, y) in y.iter().enumerate() {
            let want: f32 = (0..3).map(|t| k[t] * d[o + t]).sum();
            assert!((y - want).abs() < 1e-6, "{y} vs {want}");
        }
    }

    /// Output and both gradients against candle's own convolution, on odd
    /// and uneven planes and with chunks that split images (and a chunk of
    /// one tile), each gradient also alone.
    #[test]
    fn matches_candles_convolution_forward_and_backward() {
        check_against_candle(
            2,
            1e-6,
            5,
            &[
                (1, 1, 1, 1, 1, CHUNK_FLOATS),
                (2, 3, 8, 8, 4, CHUNK_FLOATS),
                (2, 3, 7, 5, 4, 16 * 7 * 5),
                (3, 5, 4, 4, 6, 16 * 11),
                (2, 4, 3, 6, 3, 1),
                (1, 2, 9, 2, 2, 16 * 4 * 3),
            ],
        );
    }

    #[test]
    fn tiles_chunks_and_images() {
        let s = Tiles::new((3, 2048, 7, 7), 2048, 2);
        assert_eq!((s.th, s.tw, s.per_image(), s.total()), (4, 4, 16, 48));
        assert_eq!(s.at(21), (1, 1, 1));
        let chunks: Vec<_> = s.chunks().collect();
        assert_eq!(chunks.iter().map(|c| c.1).sum::<usize>(), 48);
        assert!(chunks.len() > 1, "{chunks:?}");
        let (t0, nt) = chunks[1];
        assert_eq!(s.images(t0, nt), t0 / 16..(t0 + nt - 1) / 16 + 1);
        let runs: Vec<_> = s.runs_of(1, 10, 20).collect();
        let tiles = |r: Run| (r.j0..r.j1).map(move |j| (r.b, r.i, j, r.tb + j - r.j0));
        let want: Vec<_> = (16..30).map(|t| (s.at(t).0, s.at(t).1, s.at(t).2, t - 10)).collect();
        assert_eq!(runs.iter().copied().flat_map(tiles).collect::<Vec<_>>(), want);
        assert_eq!(runs.len(), 4, "{runs:?}");
    }
}
