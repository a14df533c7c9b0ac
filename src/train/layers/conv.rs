//! 2-D convolution on the CPU: im2col in channel-major order and one matrix
//! product each way, straight from and into NCHW.
//!
//! The columns of a chunk of images form a (C·K·K, images·OH·OW) matrix whose
//! row (c, ky, kx) is one channel plane shifted by the tap, so each row is
//! filled with contiguous copies, and the kernel in PyTorch's (C_out, C, K, K)
//! layout is already the (C_out, C·K·K) matrix on its left: no permute of the
//! input, the kernel or the output, in either pass. A 1x1 stride-1 convolution
//! of one image multiplies the image itself. The backward pass recomputes the
//! columns (memory) and skips the input gradient when the input needs none
//! (the stem) and the weight gradient for a frozen kernel.
//!
//! The smallest planes (no more pixels than kernel taps: 2x2 and 1x1 under a
//! 3x3 kernel, ResNet's layers 3 and 4 at 32x32) skip im2col: the
//! convolution is one dense linear map from an image's C·H·W values to its
//! C_out·OH·OW outputs (see `dense`), three matrix products straight on NCHW.
//!
//! 3x3 stride-1 convolutions take one of the other paths where each measured
//! faster: Winograd's F(4x4, 3x3) (`winograd4.rs`, 4 times fewer
//! multiply-adds) on the larger planes with enough channels, F(2x2, 3x3)
//! (`winograd.rs`, 2.25 times fewer) on others, the batch across the SIMD
//! lanes (`conv_lanes.rs`) and the direct convolution (`conv3x3.rs`, no
//! column matrix) on the others they suit; `SWEEP_CPU_CONV` forces one.

use super::gemm::{gemm, View};
use super::{cpu_f32, with_cpu_f32};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Geometry of a 2-D convolution (square kernels, symmetric padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvParams {
    /// Zero padding on every side.
    pub padding: usize,
    /// Stride.
    pub stride: usize,
}

/// The convolution op. When the whole batch is one column matrix and the
/// kernel will want a gradient, the forward pass keeps that matrix for the
/// backward pass instead of building it again (at most 16 MiB; the small
/// layers, where building it is a large share of the work). On the Winograd
/// path, when the input will want a gradient, it keeps the transformed
/// kernels instead (which that gradient multiplies by).
struct Conv2dOp {
    p: ConvParams,
    keep_columns: bool,
    keep_kernels: bool,
    kept: std::sync::Mutex<Option<Vec<f32>>>,
}

impl Conv2dOp {
    /// The op for `x` and `w`: it keeps for the backward pass what the
    /// gradients they track will need.
    fn new(x: &Tensor, w: &Tensor, p: ConvParams) -> Self {
        Conv2dOp { p, keep_columns: w.track_op(), keep_kernels: x.track_op(), kept: std::sync::Mutex::new(None) }
    }
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    cout: usize,
    oh: usize,
    ow: usize,
    p: ConvParams,
}

impl Geom {
    fn new(x: &Shape, w: &Shape, p: ConvParams) -> Result<Geom> {
        let (n, c, h, wd) = x.dims4()?;
        let (cout, cin, k, k2) = w.dims4()?;
        if cin != c || k2 != k {
            candle_core::bail!("conv2d: kernel {:?} does not fit input {:?}", w.dims(), x.dims());
        }
        if h + 2 * p.padding < k || wd + 2 * p.padding < k {
            candle_core::bail!("conv2d: input {h}x{wd} with padding {} is smaller than the kernel {k}", p.padding);
        }
        let (oh, ow) = ((h + 2 * p.padding - k) / p.stride + 1, (wd + 2 * p.padding - k) / p.stride + 1);
        Ok(Geom { n, c, h, w: wd, k, cout, oh, ow, p })
    }
    /// Output pixels per image.
    fn l(&self) -> usize {
        self.oh * self.ow
    }
    /// Rows of the column matrix: (channel, ky, kx), kx fastest.
    fn rows(&self) -> usize {
        self.c * self.k * self.k
    }
    /// A 1x1 stride-1 convolution: an image is its own column matrix.
    fn direct(&self) -> bool {
        self.k == 1 && self.p.stride == 1 && self.p.padding == 0
    }
    /// A 3x3 kernel with stride 1 and padding 1 (the output plane is the
    /// input's): the convolutions `SWEEP_CPU_CONV` chooses a path for.
    fn same_3x3(&self) -> bool {
        self.k == 3 && self.p.stride == 1 && self.p.padding == 1
    }
    /// A 3x3 convolution with stride 1 and padding 1 computed directly
    /// (`conv3x3.rs`, no column matrix), as `SWEEP_CPU_CONV` says; `auto`
    /// where that was measured as fast or faster than im2col and the matrix
    /// product (BENCHMARKS.md): planes of 14x14 and more, and smaller ones
    /// (down to 6x6) when the kernel is small (DenseNet's 128 → 32 growth
    /// layers at 7x7). On the smallest planes most of its padded domain is
    /// border, and a large kernel is read once per image.
    fn direct3x3(&self) -> bool {
        if !self.same_3x3() {
            return false;
        }
        match cpu_conv() {
            CpuConv::Direct => true,
            CpuConv::Im2col | CpuConv::Winograd | CpuConv::Winograd4 | CpuConv::Lanes => false,
            CpuConv::Auto => {
                let hw = self.h * self.w;
                self.h.min(self.w) >= 6 && (hw >= 196 || self.c * self.cout <= 128 * 128)
            }
        }
    }
    /// A 3x3 convolution with stride 1 and padding 1 by Winograd's F(2x2,
    /// 3x3) (`winograd.rs`), as `SWEEP_CPU_CONV` says; `auto` where that was
    /// measured faster than the direct path and im2col (BENCHMARKS.md): at
    /// least 2^25 multiply-adds per tap on planes of 14x14 and more (ResNet's
    /// and VGG's 3x3 layers at 224, DenseNet's at 56x56) or of 7x7 with
    /// 512 x 512 channels (ResNet's last stage). On smaller planes and
    /// kernels the tiles' transforms cost more than the products they save
    /// (and a 7x7 plane is computed as 8x8).
    fn winograd(&self) -> bool {
        if !self.same_3x3() {
            return false;
        }
        match cpu_conv() {
            CpuConv::Winograd => true,
            CpuConv::Direct | CpuConv::Im2col | CpuConv::Lanes | CpuConv::Winograd4 => false,
            CpuConv::Auto => {
                let hw = self.h * self.w;
                let enough_work = self.n * hw * self.c * self.cout >= 1 << 25;
                enough_work && (hw >= 196 || self.h.min(self.w) >= 7 && self.c * self.cout >= 1 << 18)
            }
        }
    }
    /// A convolution with the batch across the SIMD lanes
    /// (`conv_lanes.rs`: 3x3 kernels and 7x7 ones), as `SWEEP_CPU_CONV` says;
    /// `auto` where that was measured faster than the other paths
    /// (BENCHMARKS.md), with at least 16 images (a block of lanes): 3x3
    /// stride-1 layers on planes of 8x8 and less, except the smallest
    /// planes, which [`Geom::dense`] multiplies as one matrix, and the 7x7
    /// planes Winograd takes (as fast); and ResNet's 7x7/2 stem on inputs of
    /// 32x32 and less. It skips the taps that read the padding, 16% of an
    /// 8x8 plane's 3x3 taps and 31% of a 4x4 plane's. (The 3x3/2 layers were
    /// as fast as im2col: the forward pass faster, the backward slower.)
    fn lanes(&self) -> bool {
        if !super::conv_lanes::supports(self.k) {
            return false;
        }
        match cpu_conv() {
            CpuConv::Lanes => true,
            CpuConv::Direct | CpuConv::Im2col | CpuConv::Winograd | CpuConv::Winograd4 => false,
            CpuConv::Auto => {
                let stem = self.k == 7 && self.p.stride == 2 && self.p.padding == 3 && self.h * self.w <= 1024;
                let small = self.same_3x3() && self.h * self.w <= 64 && !self.dense() && !self.winograd();
                self.n >= 16 && (small || stem)
            }
        }
    }
    fn lanes_geom(&self) -> super::conv_lanes::Lanes {
        super::conv_lanes::Lanes::new(
            self.n,
            (self.h, self.w),
            (self.k, self.p.stride, self.p.padding),
            (self.oh, self.ow),
        )
    }
    /// A 3x3 convolution with stride 1 and padding 1 by Winograd's F(4x4,
    /// 3x3) (`winograd4.rs`), as `SWEEP_CPU_CONV` says; `auto` where that was
    /// measured faster than every other path (BENCHMARKS.md): at least 2^25
    /// multiply-adds per tap, and kernels large against their transforms
    /// (C·C_out / (C + C_out), a tile's multiply-adds per transformed value):
    /// at least 32 on planes of 14x14 and more (ResNet's and VGG's 3x3 layers
    /// at 224, not DenseNet's 128 → 32), at least 128 on planes down to 4x4
    /// (ResNet's last stages with the CIFAR stem). It goes before F(2x2,
    /// 3x3), which keeps the rest of its layers.
    fn winograd4(&self) -> bool {
        if !self.same_3x3() {
            return false;
        }
        match cpu_conv() {
            CpuConv::Winograd4 => true,
            CpuConv::Direct | CpuConv::Im2col | CpuConv::Lanes | CpuConv::Winograd => false,
            CpuConv::Auto => {
                let (hw, cc) = (self.h * self.w, self.c * self.cout);
                let ratio = cc / (self.c + self.cout).max(1);
                let enough_work = self.n * hw * cc >= 1 << 25;
                enough_work && (hw >= 196 && ratio >= 32 || self.h.min(self.w) >= 4 && ratio >= 128)
            }
        }
    }
    /// Winograd's tiles where this convolution takes that path: of 4x4
    /// pixels where [`Geom::winograd4`] says, else of 2x2 where
    /// [`Geom::winograd`] does.
    fn winograd_tiles(&self) -> Option<super::winograd::Tiles> {
        let m = if self.winograd4() {
            4
        } else if self.winograd() {
            2
        } else {
            return None;
        };
        Some(super::winograd::Tiles::new((self.n, self.c, self.h, self.w), self.cout, m))
    }
    /// The outputs `lo..hi` along an axis (of `outs` outputs over `len` inputs)
    /// whose tap `t` falls inside the input; output `o` reads input `o * stride + t - padding`.
    fn span(&self, outs: usize, len: usize, t: usize) -> (usize, usize) {
        let (s, p) = (self.p.stride, self.p.padding);
        let lo = if t >= p { 0 } else { (p - t).div_ceil(s) };
        let hi = if len + p > t { ((len - 1 + p - t) / s + 1).min(outs) } else { 0 };
        (lo.min(hi), hi)
    }
    /// The smallest planes (at most as many input pixels as kernel taps: 2x2
    /// and 1x1 under a 3x3 kernel) as one dense linear map, see [`dense`].
    /// Its matrix has every pair of input and output pixel, so it does no more
    /// multiply-adds than im2col, which on such planes mostly multiplies the
    /// padding (a 3x3 convolution of a 2x2 plane reads 4 of its 9 taps).
    fn dense(&self) -> bool {
        const MAX_FLOATS: usize = 4 << 20;
        let (p, q) = (self.h * self.w, self.l());
        p <= self.k * self.k && self.cout * q * self.c * p <= MAX_FLOATS
    }
    /// Images per column matrix. One when an image alone has enough output
    /// pixels and multiply-adds for an efficient product (no shuffle of the output or the
    /// gradient, and a 1x1 convolution reads the image in place); otherwise as
    /// many as keep the column matrix under 16 MiB (it is written and read back
    /// at once; VGG's first layers at 224x224 would otherwise need about 1 GB
    /// for a batch of 8).
    fn images_per_chunk(&self) -> usize {
        const MAX_FLOATS: usize = 4 << 20;
        const ENOUGH_PIXELS: usize = 784;
        const ENOUGH_WORK: usize = 1 << 24;
        if self.l() >= ENOUGH_PIXELS && self.cout * self.rows() * self.l() >= ENOUGH_WORK {
            return 1;
        }
        (MAX_FLOATS / (self.l() * self.rows()).max(1)).clamp(1, self.n.max(1))
    }
}

/// The choice `SWEEP_CPU_CONV` makes for 3x3 stride-1 convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CpuConv {
    /// Direct where measured faster.
    Auto,
    /// Always direct.
    Direct,
    /// Always Winograd's F(2x2, 3x3) (`winograd.rs`).
    Winograd,
    /// Always Winograd's F(4x4, 3x3) (`winograd4.rs`).
    Winograd4,
    /// Always im2col and a matrix product.
    Im2col,
    /// Always the batch across the SIMD lanes where `conv_lanes.rs` takes
    /// the kernel (3x3, 7x7).
    Lanes,
}

impl std::str::FromStr for CpuConv {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<CpuConv, ()> {
        match s {
            "auto" => Ok(CpuConv::Auto),
            "direct" => Ok(CpuConv::Direct),
            "winograd" => Ok(CpuConv::Winograd),
            "winograd4" => Ok(CpuConv::Winograd4),
            "im2col" => Ok(CpuConv::Im2col),
            "lanes" => Ok(CpuConv::Lanes),
            _ => Err(()),
        }
    }
}

/// `SWEEP_CPU_CONV`, read once (an invalid value is logged and `auto` used).
fn cpu_conv() -> CpuConv {
    static CHOICE: std::sync::OnceLock<CpuConv> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| crate::env::CPU_CONV.parse().unwrap_or(CpuConv::Auto))
}

/// Fills `cols` ((C·K·K, nb·L)) with the patches of the `nb` NCHW images in `x`
/// (zeros where the kernel overhangs the padded border).
fn im2col(x: &[f32], g: &Geom, nb: usize, cols: &mut [f32]) {
    if g.ow < NARROW {
        return im2col_narrow(x, g, nb, cols);
    }
    if g.p.stride > 1 {
        return im2col_strided(x, g, nb, cols);
    }
    // Stride 1 from here: each tap's valid run is a contiguous copy.
    let (l, kk, plane, p) = (g.l(), g.k * g.k, g.h * g.w, g.p.padding);
    cols.par_chunks_mut(nb * l).enumerate().for_each(|(r, row)| {
        let (c, ky, kx) = (r / kk, (r % kk) / g.k, r % g.k);
        let (ylo, yhi) = g.span(g.oh, g.h, ky);
        let (xlo, xhi) = g.span(g.ow, g.w, kx);
        for b in 0..nb {
            let img = &x[(b * g.c + c) * plane..][..plane];
            for (oy, out) in row[b * l..(b + 1) * l].chunks_exact_mut(g.ow).enumerate() {
                if oy < ylo || oy >= yhi {
                    out.fill(0.0);
                    continue;
                }
                let src = &img[(oy + ky - p) * g.w..][..g.w];
                out[..xlo].fill(0.0);
                out[xhi..].fill(0.0);
                out[xlo..xhi].copy_from_slice(&src[xlo + kx - p..xhi + kx - p]);
            }
        }
    });
}

/// [`im2col`] for strides above one: each source row is split once into its
/// `stride` phases (phase q holds columns q, q + stride, ...), from which
/// every tap of the kernel's row copies a contiguous run. Gathering every
/// stride-th value per tap took 20% of the ResNet stem's (7x7/2 on 224x224)
/// forward and backward time.
fn im2col_strided(x: &[f32], g: &Geom, nb: usize, cols: &mut [f32]) {
    let (l, k, plane, s, p) = (g.l(), g.k, g.h * g.w, g.p.stride, g.p.padding);
    let phase_len = g.w.div_ceil(s);
    // (phase, first index in it) of each kx's tap, and its valid outputs.
    let taps: Vec<(usize, usize, usize, usize)> = (0..k)
        .map(|kx| {
            let (lo, hi) = g.span(g.ow, g.w, kx);
            if lo == hi {
                return (0, 0, lo, hi);
            }
            // Output `lo` reads input lo·s + kx - p (inside the row).
            let first = lo * s + kx - p;
            (first % s, first / s, lo, hi)
        })
        .collect();
    let group = k * nb * l;
    cols.par_chunks_mut(group).enumerate().for_each_init(
        || vec![0f32; s * phase_len],
        |phases, (r, rows)| {
            let (c, ky) = (r / k, r % k);
            let (ylo, yhi) = g.span(g.oh, g.h, ky);
            for b in 0..nb {
                let img = &x[(b * g.c + c) * plane..][..plane];
                for oy in 0..g.oh {
                    let at = b * l + oy * g.ow;
                    if oy < ylo || oy >= yhi {
                        for tap in rows.chunks_exact_mut(nb * l) {
                            tap[at..at + g.ow].fill(0.0);
                        }
                        continue;
                    }
                    let src = &img[(oy * s + ky - p) * g.w..][..g.w];
                    for (q, phase) in phases.chunks_exact_mut(phase_len).enumerate() {
                        for (d, v) in phase.iter_mut().zip(src.iter().skip(q).step_by(s)) {
                            *d = *v;
                        }
                    }
                    for (tap, &(q, first, lo, hi)) in rows.chunks_exact_mut(nb * l).zip(&taps) {
                        let out = &mut tap[at..at + g.ow];
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        out[lo..hi].copy_from_slice(&phases[q * phase_len + first..][..hi - lo]);
                    }
                }
            }
        },
    );
}

/// The adjoint of [`im2col`]: adds onto `dx` (nb NCHW images, zeroed by the
/// caller) the column gradients `dcols`, each onto the pixel its tap read.
fn col2im(dcols: &[f32], g: &Geom, nb: usize, dx: &mut [f32]) {
    if g.ow < NARROW {
        return col2im_narrow(dcols, g, nb, dx);
    }
    let (l, plane) = (g.l(), g.h * g.w);
    let (s, p) = (g.p.stride, g.p.padding);
    dx.par_chunks_mut(plane).enumerate().for_each(|(i, img)| {
        let (b, c) = (i / g.c, i % g.c);
        for ky in 0..g.k {
            let (ylo, yhi) = g.span(g.oh, g.h, ky);
            for kx in 0..g.k {
                let (xlo, xhi) = g.span(g.ow, g.w, kx);
                let src = &dcols[((c * g.k + ky) * g.k + kx) * nb * l + b * l..][..l];
                for oy in ylo..yhi {
                    let dst = &mut img[(oy * s + ky - p) * g.w..][..g.w];
                    let src = &src[oy * g.ow..][..g.ow];
                    if s == 1 {
                        for (d, v) in dst[xlo + kx - p..xhi + kx - p].iter_mut().zip(&src[xlo..xhi]) {
                            *d += v;
                        }
                    } else {
                        for (ox, v) in src.iter().enumerate().take(xhi).skip(xlo) {
                            dst[ox * s + kx - p] += v;
                        }
                    }
                }
            }
        }
    });
}

/// Output rows narrower than this go through [`tap_sources`]: with rows of
/// a few pixels, the row-by-row copies of [`im2col`] and [`col2im`] spent
/// more on their bounds and slices than on moving floats (a 4x4 plane's
/// column matrix was a few thousand copies of at most 4 floats per row).
const NARROW: usize = 8;

/// For each tap (ky·K + kx) and output pixel, the input pixel it reads
/// (`u32::MAX` on the padding).
fn tap_sources(g: &Geom) -> Vec<u32> {
    let (s, p) = (g.p.stride, g.p.padding);
    let mut t = Vec::with_capacity(g.k * g.k * g.l());
    for ky in 0..g.k {
        for kx in 0..g.k {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let (iy, ix) = ((oy * s + ky).wrapping_sub(p), (ox * s + kx).wrapping_sub(p));
                    t.push(if iy < g.h && ix < g.w { (iy * g.w + ix) as u32 } else { u32::MAX });
                }
            }
        }
    }
    t
}

/// [`im2col`] by [`tap_sources`].
fn im2col_narrow(x: &[f32], g: &Geom, nb: usize, cols: &mut [f32]) {
    let (l, kk, plane) = (g.l(), g.k * g.k, g.h * g.w);
    let sources = tap_sources(g);
    cols.par_chunks_mut(nb * l).enumerate().for_each(|(r, row)| {
        let (c, from) = (r / kk, &sources[(r % kk) * l..][..l]);
        for (b, out) in row.chunks_exact_mut(l).enumerate() {
            let img = &x[(b * g.c + c) * plane..][..plane];
            for (o, &i) in out.iter_mut().zip(from) {
                *o = if i == u32::MAX { 0.0 } else { img[i as usize] };
            }
        }
    });
}

/// [`col2im`] by [`tap_sources`].
fn col2im_narrow(dcols: &[f32], g: &Geom, nb: usize, dx: &mut [f32]) {
    let (l, kk, plane) = (g.l(), g.k * g.k, g.h * g.w);
    let sources = tap_sources(g);
    dx.par_chunks_mut(plane).enumerate().for_each(|(i, img)| {
        let (b, c) = (i / g.c, i % g.c);
        for (t, from) in sources.chunks_exact(l).enumerate() {
            let src = &dcols[(c * kk + t) * nb * l + b * l..][..l];
            for (&j, v) in from.iter().zip(src) {
                if j != u32::MAX {
                    img[j as usize] += v;
                }
            }
        }
    });
}

/// (nb, C, L) -> (C, nb·L).
fn to_channel_major(src: &[f32], nb: usize, c: usize, l: usize, dst: &mut [f32]) {
    dst.par_chunks_mut(nb * l).enumerate().for_each(|(ch, row)| {
        for (b, d) in row.chunks_exact_mut(l).enumerate() {
            d.copy_from_slice(&src[(b * c + ch) * l..][..l]);
        }
    });
}

/// A convolution of tiny planes as the dense linear map it is: with `P` input
/// and `Q` output pixels per channel, the matrix `M` of (C_out·Q) x (C·P)
/// whose block (q, p) is the kernel's tap that output pixel q reads input
/// pixel p with (zero when none). NCHW images are rows of (C·P) and outputs
/// rows of (C_out·Q) already, so `y = x · Mᵀ`, `dx = dy · M` and
/// `dM = dyᵀ · x` are three plain matrix products without im2col or any
/// reordering, and the kernel's gradient is the sum of `dM`'s blocks per tap.
mod dense {
    use super::{gemm, tap_sources, Geom, View};
    use rayon::prelude::*;

    /// For each output pixel q and input pixel p, the tap (`ky * k + kx`) q
    /// reads p with: [`tap_sources`] turned around.
    fn taps(g: &Geom) -> Vec<Option<usize>> {
        let (p, q) = (g.h * g.w, g.l());
        let mut t = vec![None; q * p];
        for (tap, from) in tap_sources(g).chunks_exact(q).enumerate() {
            for (qi, &pi) in from.iter().enumerate().filter(|(_, &pi)| pi != u32::MAX) {
                t[qi * p + pi as usize] = Some(tap);
            }
        }
        t
    }

    /// `M` from the (C_out, C, K, K) kernel.
    fn matrix(w: &[f32], g: &Geom, taps: &[Option<usize>]) -> Vec<f32> {
        let (p, q, kk) = (g.h * g.w, g.l(), g.k * g.k);
        let mut m = vec![0f32; g.cout * q * g.c * p];
        m.par_chunks_mut(g.c * p).enumerate().for_each(|(row, out)| {
            let (o, qi) = (row / q, row % q);
            let taps = &taps[qi * p..][..p];
            for (c, dst) in out.chunks_exact_mut(p).enumerate() {
                let kernel = &w[(o * g.c + c) * kk..][..kk];
                for (d, t) in dst.iter_mut().zip(taps) {
                    *d = t.map_or(0.0, |t| kernel[t]);
                }
            }
        });
        m
    }

    pub(super) fn forward(x: &[f32], w: &[f32], g: &Geom) -> Vec<f32> {
        let (p, q) = (g.h * g.w, g.l());
        let m = matrix(w, g, &taps(g));
        let mut y = vec![0f32; g.n * g.cout * q];
        gemm(&mut y, false, View::new(x, g.n, g.c * p), View::new(&m, g.cout * q, g.c * p).t());
        y
    }

    pub(super) fn backward(
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        g: &Geom,
        (need_dx, need_dw): (bool, bool),
    ) -> (Vec<f32>, Vec<f32>) {
        let (p, q, kk) = (g.h * g.w, g.l(), g.k * g.k);
        let taps = taps(g);
        let dy_rows = View::new(dy, g.n, g.cout * q);
        let mut dx = Vec::new();
        if need_dx {
            let m = matrix(w, g, &taps);
            dx = vec![0f32; g.n * g.c * p];
            gemm(&mut dx, false, dy_rows, View::new(&m, g.cout * q, g.c * p));
        }
        let mut dw = Vec::new();
        if need_dw {
            let mut dm = vec![0f32; g.cout * q * g.c * p];
            gemm(&mut dm, false, dy_rows.t(), View::new(x, g.n, g.c * p));
            dw = vec![0f32; g.cout * g.c * kk];
            dw.par_chunks_mut(g.c * kk).enumerate().for_each(|(o, out)| {
                for qi in 0..q {
                    let row = &dm[(o * q + qi) * g.c * p..][..g.c * p];
                    let taps = &taps[qi * p..][..p];
                    for (kernel, src) in out.chunks_exact_mut(kk).zip(row.chunks_exact(p)) {
                        for (v, t) in src.iter().zip(taps) {
                            if let Some(t) = t {
                                kernel[*t] += v;
                            }
                        }
                    }
                }
            });
        }
        (dx, dw)
    }
}

/// `src` (rows, cols) -> `dst` (cols, rows), in blocks of 16 x 16 so that
/// both sides stay in L1 (an element-by-element loop with a stride of `rows`
/// on one side missed the cache at every element: a third of a small
/// ResNet18 step went to the kernel gradients' transpose).
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [MaybeUninit<f32>]) {
    const B: usize = 16;
    debug_assert!(src.len() == rows * cols && dst.len() == rows * cols);
    if rows == 0 || cols == 0 {
        return;
    }
    dst.par_chunks_mut(B * rows).enumerate().for_each(|(block, out)| {
        let (c0, cb) = (block * B, out.len() / rows);
        for r0 in (0..rows).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for (k, v) in src[r * cols + c0..][..cb].iter().enumerate() {
                    out[k * rows + r].write(*v);
                }
            }
        }
    });
}

/// [`transpose`] into a new vector.
fn transposed(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    // SAFETY: `transpose` writes each of the `rows · cols` elements (every
    // row of every block of columns).
    #[allow(unsafe_code)]
    unsafe {
        super::written(rows * cols, |dst| transpose(src, rows, cols, dst))
    }
}

/// (C, nb·L) -> (nb, C, L).
fn from_channel_major(src: &[f32], nb: usize, c: usize, l: usize, dst: &mut [f32]) {
    dst.par_chunks_mut(l).enumerate().for_each(|(i, d)| {
        let (b, ch) = (i / c, i % c);
        d.copy_from_slice(&src[(ch * nb + b) * l..][..l]);
    });
}

thread_local! {
    /// Work buffers reused from op to op (their old contents are always overwritten).
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A work buffer of `len` floats from this thread's pool; back to the pool on drop.
///
/// It must be dropped on the thread that took it: dropped elsewhere it would
/// join that other thread's pool, and the thread that took it would take a
/// new one next time (memory growing every training step); debug builds
/// check this.
pub(super) struct Scratch {
    buf: Vec<f32>,
    len: usize,
    #[cfg(debug_assertions)]
    taken_on: std::thread::ThreadId,
}

impl Scratch {
    pub(super) fn take(len: usize) -> Scratch {
        let mut buf = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        Scratch {
            buf,
            len,
            #[cfg(debug_assertions)]
            taken_on: std::thread::current().id(),
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        debug_assert_eq!(self.taken_on, std::thread::current().id(), "a Scratch buffer dropped on another thread");
        let v = std::mem::take(&mut self.buf);
        POOL.with(|p| p.borrow_mut().push(v));
    }
}

/// The images `start..start + nb` of an NCHW buffer with `per` floats per image.
fn images(data: &[f32], per: usize, start: usize, nb: usize) -> &[f32] {
    &data[start * per..(start + nb) * per]
}

fn images_mut(data: &mut [f32], per: usize, start: usize, nb: usize) -> &mut [f32] {
    &mut data[start * per..(start + nb) * per]
}

/// The column matrix of `nb` images: the images themselves for one image of a
/// direct convolution, otherwise filled into `buf`.
fn columns<'a>(x: &'a [f32], g: &Geom, nb: usize, buf: &'a mut Option<Scratch>) -> &'a [f32] {
    if g.direct() && nb == 1 {
        return x;
    }
    let cols = buf.insert(Scratch::take(g.rows() * nb * g.l()));
    im2col(x, g, nb, cols);
    cols
}

/// Whether the column matrix of the whole batch is built once, as one chunk
/// (and is not the input itself).
fn one_built_matrix(g: &Geom) -> bool {
    g.images_per_chunk() >= g.n && !(g.direct() && g.n == 1)
}

/// The output; with `keep`, the column matrix when [`one_built_matrix`].
fn forward(x: &[f32], w: &[f32], g: &Geom, keep: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    if let Some(groups) = image_groups(g) {
        return (per_image::forward(x, w, g, groups), None);
    }
    let (l, per_in, per_out) = (g.l(), g.c * g.h * g.w, g.cout * g.l());
    let mut out = vec![0f32; g.n * per_out];
    let kernel = View::new(w, g.cout, g.rows());
    let chunk = g.images_per_chunk();
    let mut kept = None;
    for start in (0..g.n).step_by(chunk) {
        let nb = chunk.min(g.n - start);
        let mut buf = None;
        let cols = if keep && one_built_matrix(g) {
            let cols = kept.insert(vec![0f32; g.rows() * nb * l]);
            im2col(x, g, nb, cols);
            &cols[..]
        } else {
            columns(images(x, per_in, start, nb), g, nb, &mut buf)
        };
        let cols = View::new(cols, g.rows(), nb * l);
        let dst = images_mut(&mut out, per_out, start, nb);
        if nb == 1 {
            gemm(dst, false, kernel, cols);
        } else {
            let mut tmp = Scratch::take(g.cout * nb * l);
            gemm(&mut tmp, false, kernel, cols);
            from_channel_major(&tmp, nb, g.cout, l, dst);
        }
    }
    (out, kept)
}

/// The input gradient (when `need_dx`) and the kernel gradient (when
/// `need_dw`); `kept` is the forward pass's column matrix, if it kept one.
fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &Geom,
    (need_dx, need_dw): (bool, bool),
    kept: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    if let Some(groups) = image_groups(g) {
        return per_image::backward(x, w, dy, g, (need_dx, need_dw), groups);
    }
    let (l, per_in, per_out) = (g.l(), g.c * g.h * g.w, g.cout * g.l());
    let mut dx = if need_dx { vec![0f32; g.n * per_in] } else { Vec::new() };
    // The kernel gradient is accumulated transposed, (C·K·K, C_out) = cols ·
    // dyᵀ: the same product as dy · colsᵀ, but the form the gemm crate runs
    // 1.2-2.8x faster at these shapes (a long inner dimension, a small output).
    let mut dwt = if need_dw { Scratch::take(g.rows() * g.cout) } else { Scratch::take(0) };
    let kernel = View::new(w, g.cout, g.rows());
    let chunk = g.images_per_chunk();
    for (i, start) in (0..g.n).step_by(chunk).enumerate() {
        let nb = chunk.min(g.n - start);
        let dy = images(dy, per_out, start, nb);
        let mut shuffled = None;
        let dy = if nb == 1 {
            dy
        } else {
            let buf = shuffled.insert(Scratch::take(g.cout * nb * l));
            to_channel_major(dy, nb, g.cout, l, buf);
            buf
        };
        let dy = View::new(dy, g.cout, nb * l);
        if need_dw {
            let mut buf = None;
            let cols = match kept.filter(|k| nb == g.n && k.len() == g.rows() * nb * l) {
                Some(cols) => cols,
                None => columns(images(x, per_in, start, nb), g, nb, &mut buf),
            };
            gemm(&mut dwt, i > 0, View::new(cols, g.rows(), nb * l), dy.t());
        }
        if need_dx {
            let dst = images_mut(&mut dx, per_in, start, nb);
            if g.direct() && nb == 1 {
                gemm(dst, false, kernel.t(), dy);
            } else {
                let mut dcols = Scratch::take(g.rows() * nb * l);
                gemm(&mut dcols, false, kernel.t(), dy);
                col2im(&dcols, g, nb, dst);
            }
        }
    }
    let mut dw = Vec::new();
    if need_dw {
        dw = transposed(&dwt, g.rows(), g.cout);
    }
    (dx, dw)
}

/// Into how many groups of images the batch is split, one per rayon thread,
/// when each image is its own column matrix (`images_per_chunk` is one) and
/// there are at least as many images as threads; `None` otherwise.
///
/// Each thread then runs its images' products serially (`per_image`)
/// instead of all threads sharing each image's product: with these products'
/// shapes (an image's few hundred to few thousand pixels by one or two hundred
/// output channels) the shared products waited on each other (DenseNet121's
/// 1x1 layers at 28x28 and 56x56 took 20-30% longer, BENCHMARKS.md).
fn image_groups(g: &Geom) -> Option<usize> {
    let threads = rayon::current_num_threads();
    // Each group adds up its own kernel gradient: bound those copies.
    const MAX_PARTIAL_FLOATS: usize = 8 << 20;
    (threads > 1 && g.n >= threads && g.images_per_chunk() == 1 && g.rows() * g.cout * threads <= MAX_PARTIAL_FLOATS)
        .then_some(threads)
}

/// The products of [`forward`] and [`backward`] image by image, the images
/// split into `groups` runs of consecutive images, one per rayon task.
mod per_image {
    use super::super::gemm::{gemm_serial, gemm_serial_into, View};
    use super::{col2im, columns, images, transposed, Geom, Scratch};
    use rayon::prelude::*;
    use std::mem::MaybeUninit;
    use std::ops::Range;

    /// Group `gi`'s images and its part of `data` (`per` floats an image;
    /// empty parts when `data` is empty).
    fn split<T>(data: &mut [T], per: usize, n: usize, groups: usize) -> Vec<(Range<usize>, &mut [T])> {
        let per = if data.is_empty() { 0 } else { per };
        let mut rest = data;
        (0..groups)
            .map(|gi| {
                let range = gi * n / groups..(gi + 1) * n / groups;
                let (part, tail) = std::mem::take(&mut rest).split_at_mut(range.len() * per);
                rest = tail;
                (range, part)
            })
            .collect()
    }

    pub(super) fn forward(x: &[f32], w: &[f32], g: &Geom, groups: usize) -> Vec<f32> {
        let (l, per_in, per_out) = (g.l(), g.c * g.h * g.w, g.cout * g.l());
        let kernel = View::new(w, g.cout, g.rows());
        let fill = |out: &mut [MaybeUninit<f32>]| {
            split(out, per_out, g.n, groups).into_par_iter().for_each(|(range, dst)| {
                for (img, dst) in range.zip(dst.chunks_exact_mut(per_out)) {
                    let mut buf = None;
                    let cols = columns(images(x, per_in, img, 1), g, 1, &mut buf);
                    gemm_serial_into(dst, kernel, View::new(cols, g.rows(), l));
                }
            });
        };
        // SAFETY: the groups take every image, and each image's product
        // writes all of its `per_out` floats.
        #[allow(unsafe_code)]
        unsafe {
            super::super::written(g.n * per_out, fill)
        }
    }

    pub(super) fn backward(
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        g: &Geom,
        (need_dx, need_dw): (bool, bool),
        groups: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let (l, per_in, per_out) = (g.l(), g.c * g.h * g.w, g.cout * g.l());
        let mut dx = if need_dx { vec![0f32; g.n * per_in] } else { Vec::new() };
        let kernel = View::new(w, g.cout, g.rows());
        // Each group's kernel gradient, transposed as in `backward`: plain
        // vectors, not `Scratch`, which would return to this thread's pool
        // and not to the pool of the thread that took it (which would take
        // a new one every step).
        let mut partials: Vec<Vec<f32>> = split(&mut dx, per_in, g.n, groups)
            .into_par_iter()
            .map(|(range, dx)| {
                let mut dwt = vec![0f32; if need_dw { g.rows() * g.cout } else { 0 }];
                for (j, img) in range.enumerate() {
                    let dy = View::new(images(dy, per_out, img, 1), g.cout, l);
                    if need_dw {
                        let mut buf = None;
                        let cols = columns(images(x, per_in, img, 1), g, 1, &mut buf);
                        gemm_serial(&mut dwt, j > 0, View::new(cols, g.rows(), l), dy.t());
                    }
                    if need_dx {
                        let dst = &mut dx[j * per_in..][..per_in];
                        if g.direct() {
                            gemm_serial(dst, false, kernel.t(), dy);
                        } else {
                            let mut dcols = Scratch::take(g.rows() * l);
                            gemm_serial(&mut dcols, false, kernel.t(), dy);
                            col2im(&dcols, g, 1, dst);
                        }
                    }
                }
                dwt
            })
            .collect();
        let mut dw = Vec::new();
        if need_dw {
            let (sum, rest) = partials.split_first_mut().expect("at least one group");
            let rest = &*rest;
            sum.par_chunks_mut(1 << 14).enumerate().for_each(|(i, out)| {
                for p in rest {
                    out.iter_mut().zip(&p[i << 14..]).for_each(|(a, b)| *a += b);
                }
            });
            dw = transposed(sum, g.rows(), g.cout);
        }
        (dx, dw)
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "sweep-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.shape(), l2.shape(), self.p)?;
        if let Some(tiles) = g.winograd_tiles() {
            let (x, w) = (cpu_f32(s1, l1, "conv2d")?, cpu_f32(s2, l2, "conv2d")?);
            let (y, kept) = super::winograd::forward(x, w, &tiles, self.keep_kernels);
            *self.kept.lock().expect("conv lock") = kept;
            return Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.oh, g.ow))));
        }
        if g.lanes() {
            let y = super::conv_lanes::forward(
                cpu_f32(s1, l1, "conv2d")?,
                cpu_f32(s2, l2, "conv2d")?,
                &g.lanes_geom(),
                g.c,
                g.cout,
            );
            return Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.oh, g.ow))));
        }
        if g.direct3x3() {
            let y = super::conv3x3::forward(
                cpu_f32(s1, l1, "conv2d")?,
                cpu_f32(s2, l2, "conv2d")?,
                (g.n, g.c, g.h, g.w),
                g.cout,
            );
            return Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.oh, g.ow))));
        }
        let (x, w) = (cpu_f32(s1, l1, "conv2d")?, cpu_f32(s2, l2, "conv2d")?);
        if g.dense() {
            let y = dense::forward(x, w, &g);
            return Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.oh, g.ow))));
        }
        let (y, kept) = forward(x, w, &g, self.keep_columns);
        *self.kept.lock().expect("conv lock") = kept;
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.oh, g.ow))))
    }

    /// Both gradients from one (kept or recomputed) column matrix per chunk
    /// and two matrix products; each only when something upstream needs it.
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.shape(), w.shape(), self.p)?;
        let (need_dx, need_dw) = (x.track_op(), w.track_op());
        let kept = self.kept.lock().expect("conv lock").take();
        let (dx, dw) = with_cpu_f32(&x.detach(), |xs| {
            with_cpu_f32(&w.detach(), |ws| {
                with_cpu_f32(&grad.detach(), |dy| {
                    if let Some(tiles) = g.winograd_tiles() {
                        super::winograd::backward(xs, ws, dy, &tiles, (need_dx, need_dw), kept.as_deref())
                    } else if g.lanes() {
                        super::conv_lanes::backward(xs, ws, dy, &g.lanes_geom(), g.c, g.cout, (need_dx, need_dw))
                    } else if g.direct3x3() {
                        super::conv3x3::backward(xs, ws, dy, (g.n, g.c, g.h, g.w), g.cout, (need_dx, need_dw))
                    } else if g.dense() {
                        dense::backward(xs, ws, dy, &g, (need_dx, need_dw))
                    } else {
                        backward(xs, ws, dy, &g, (need_dx, need_dw), kept.as_deref())
                    }
                })
            })
        })???;
        let dev = x.device();
        Ok((
            need_dx.then(|| Tensor::from_vec(dx, x.shape(), dev)).transpose()?,
            need_dw.then(|| Tensor::from_vec(dw, w.shape(), dev)).transpose()?,
        ))
    }
}

/// `relu(conv2d(x, w) + bias)` (a VGG convolution) as one op on the CPU: the
/// bias and the ReLU are applied to the convolution's output in place, so
/// candle's graph keeps no tensor of the convolution's own output for the
/// backward pass (as the input of a separate `bias_relu` op it did: a tensor
/// of each layer's output size). The backward pass masks the gradient once,
/// sums it for the bias and takes the convolution's backward of it: the bits
/// of the two ops.
struct Conv2dBiasReluOp {
    conv: Conv2dOp,
}

impl CustomOp3 for Conv2dBiasReluOp {
    fn name(&self) -> &'static str {
        "sweep-conv2d-bias-relu"
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
        let (y, shape) = self.conv.cpu_fwd(s1, l1, s2, l2)?;
        let (CpuStorage::F32(mut y), &[_, c, h, w]) = (y, shape.dims()) else {
            candle_core::bail!("conv2d_bias_relu: f32 NCHW output expected")
        };
        let bias = cpu_f32(s3, l3, "conv2d_bias_relu")?;
        if bias.len() != c {
            candle_core::bail!("conv2d_bias_relu: {} biases for {c} output channels", bias.len());
        }
        super::bias_relu::apply(&mut y, None, bias, h * w);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dy, dbias) = super::bias_relu::gradients(res, grad, bias.track_op())?;
        let (dx, dw) = self.conv.bwd(x, w, res, &dy)?;
        Ok((dx, dw, dbias))
    }
}

/// `relu(conv2d(x, w) + bias)` as one op where the convolution is sweep's
/// CPU op (f32 on the CPU) and a gradient is tracked; `None` elsewhere (the
/// caller convolves, then adds the bias and the ReLU: in place where
/// nothing is tracked).
pub(crate) fn conv2d_bias_relu(x: &Tensor, w: &Tensor, bias: &Tensor, p: ConvParams) -> Result<Option<Tensor>> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    let tracked = [x, w, bias].iter().any(|t| t.track_op());
    if !(tracked && f32_cpu(x) && f32_cpu(w) && f32_cpu(bias)) {
        return Ok(None);
    }
    let conv = Conv2dOp::new(x, w, p);
    x.contiguous()?.apply_op3(&w.contiguous()?, &bias.contiguous()?, Conv2dBiasReluOp { conv }).map(Some)
}

/// 2-D convolution without bias, groups 1, dilation 1.
///
/// On CPU with f32 this is the op described in the module doc; on CUDA with
/// `SWEEP_GPU_KERNELS=cudnn`, cuDNN's three convolutions (`conv_cudnn.rs`);
/// elsewhere candle's conv2d.
pub fn conv2d(x: &Tensor, w: &Tensor, p: ConvParams) -> Result<Tensor> {
    #[cfg(feature = "cudnn")]
    if super::kernels::use_cudnn(x.device())
        && x.dtype() == w.dtype()
        && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::BF16)
    {
        return super::conv_cudnn::conv2d(x, w, p);
    }
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && w.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op2(&w.contiguous()?, Conv2dOp::new(x, w, p))
    } else {
        x.conv2d(w, p.padding, p.stride, 1, 1)
    }
}

/// A convolution layer's pass with its f32 weight `w`, computed in
/// `compute`, when the `cudnn-nhwc` kernels take it (the weight's cast and
/// KRSC layout in one kernel, `krsc_cuda.rs`); `None` elsewhere, where the
/// caller casts and calls [`conv2d`].
///
/// # Errors
/// cuDNN's or candle's.
#[cfg_attr(not(feature = "cudnn"), allow(unused_variables, clippy::unnecessary_wraps))]
pub(crate) fn conv2d_layer(
    x: &Tensor,
    w: &Tensor,
    p: ConvParams,
    compute: candle_core::DType,
) -> Result<Option<Tensor>> {
    #[cfg(feature = "cudnn")]
    if super::kernels::channels_last(x.device())
        && matches!(compute, candle_core::DType::F32 | candle_core::DType::BF16)
    {
        return super::conv_cudnn::conv2d_channels_last(x, w, p, compute).map(Some);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::layers::randn;
    use crate::train::rng::Rng;
    use candle_core::{Device, Var};

    fn diff(a: &Tensor, b: &Tensor) -> f32 {
        a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// sweep's conv2d against candle's on `x` and `w`: the output's largest
    /// difference and both gradients' (of the sum of squares), relative to
    /// the largest gradient.
    fn against_native(x: &Tensor, w: &Tensor, p: ConvParams) -> (f32, f32, f32) {
        let (x, w) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
        let (x2, w2) = (Var::from_tensor(x.as_tensor()).unwrap(), Var::from_tensor(w.as_tensor()).unwrap());
        let ours = conv2d(x.as_tensor(), w.as_tensor(), p).unwrap();
        let native = x2.as_tensor().conv2d(w2.as_tensor(), p.padding, p.stride, 1, 1).unwrap();
        let g1 = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = native.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let scaled = |a: &Tensor, b: &Tensor| {
            let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            diff(a, b) / scale
        };
        (
            diff(&ours, &native),
            scaled(g1.get(&x).unwrap(), g2.get(&x2).unwrap()),
            scaled(g1.get(&w).unwrap(), g2.get(&w2).unwrap()),
        )
    }

    #[test]
    fn the_blocked_transpose_moves_every_element() {
        for (rows, cols) in [(1, 1), (1, 5), (5, 1), (16, 16), (37, 23), (33, 70), (576, 64)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let dst = transposed(&src, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(dst[c * rows + r], src[r * cols + c], "{rows}x{cols} at ({r}, {c})");
                }
            }
        }
    }

    /// Gradients of our conv equal those of candle's native conv2d (whose
    /// backward is a direct transcription of the definition), for one image
    /// (the direct 1x1 path) and several (the shuffled path).
    #[test]
    fn conv_gradients_match_candles_native_conv() {
        let mut rng = Rng::new(11);
        for (cin, cout, hw, k, padding, stride) in [
            (3, 4, 8, 3, 1, 1),
            (4, 5, 9, 3, 1, 2),
            (4, 5, 10, 3, 1, 2),
            (4, 6, 8, 1, 0, 2),
            (4, 6, 8, 1, 0, 1),
            (2, 3, 10, 7, 3, 2),
            (2, 3, 11, 7, 3, 2),
            (3, 2, 7, 3, 0, 1),
            (2, 2, 5, 5, 2, 3),
            // Strided rows of 8 and more outputs (`im2col_strided`): the stem's
            // 7x7/2 on even and odd widths, 3x3/2 with and without padding,
            // 1x1/2, stride 3.
            (2, 3, 20, 7, 3, 2),
            (2, 3, 23, 7, 3, 2),
            (3, 4, 17, 3, 1, 2),
            (3, 4, 19, 3, 0, 2),
            (4, 6, 17, 1, 0, 2),
            (2, 2, 26, 5, 2, 3),
            // Dense linear maps (`Geom::dense`).
            (4, 5, 1, 3, 1, 1),
            (4, 5, 2, 3, 1, 2),
            (3, 4, 2, 7, 3, 2),
            (2, 3, 1, 7, 3, 1),
            (2, 3, 2, 3, 1, 1),
            (3, 2, 3, 3, 1, 3),
            (3, 2, 3, 3, 0, 1),
            (2, 3, 2, 1, 0, 1),
            (24, 6, 1, 1, 0, 1),
            (16, 8, 2, 3, 1, 1),
        ] {
            for n in [1, 2] {
                let xs = randn(&mut rng, &[n, cin, hw, hw]);
                let ws = randn(&mut rng, &[cout, cin, k, k]);
                let x = Var::from_vec(xs.clone(), (n, cin, hw, hw), &Device::Cpu).unwrap();
                let w = Var::from_vec(ws.clone(), (cout, cin, k, k), &Device::Cpu).unwrap();
                let x2 = Var::from_vec(xs, (n, cin, hw, hw), &Device::Cpu).unwrap();
                let w2 = Var::from_vec(ws, (cout, cin, k, k), &Device::Cpu).unwrap();
                let ours = conv2d(x.as_tensor(), w.as_tensor(), ConvParams { padding, stride }).unwrap();
                let native = x2.as_tensor().conv2d(w2.as_tensor(), padding, stride, 1, 1).unwrap();
                let weights = Tensor::from_vec(randn(&mut rng, ours.dims()), ours.dims(), &Device::Cpu).unwrap();
                let case = format!("n {n} cin {cin} cout {cout} hw {hw} k {k} pad {padding} stride {stride}");
                assert!(diff(&ours, &native) < 1e-4, "output, {case}");
                let g1 = ours.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
                let g2 = native.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
                assert!(diff(g1.get(&x).unwrap(), g2.get(&x2).unwrap()) < 1e-4, "input grad, {case}");
                assert!(diff(g1.get(&w).unwrap(), g2.get(&w2).unwrap()) < 1e-3, "weight grad, {case}");
            }
        }
    }

    /// `relu(conv2d(x, w) + bias)` as one op gives the bits of the
    /// convolution then `bias_relu`: the output and the gradients of x, w and
    /// the bias, on each of the CPU convolution's paths (direct 3x3,
    /// Winograd, the batch across the lanes, dense, im2col); a bias that
    /// tracks nothing gets none, and with nothing tracked there is no op.
    #[test]
    fn conv_bias_relu_gives_the_bits_of_conv_then_bias_relu() {
        let dev = Device::Cpu;
        let mut rng = Rng::new(17);
        let p3 = ConvParams { padding: 1, stride: 1 };
        for ((n, c, h, w), (cout, k), p) in [
            ((2, 3, 9, 9), (4, 3), p3),
            ((2, 16, 28, 28), (16, 3), p3),
            ((16, 8, 8, 8), (8, 3), p3),
            ((2, 6, 1, 1), (5, 1), ConvParams { padding: 0, stride: 1 }),
            ((2, 3, 20, 20), (4, 7), ConvParams { padding: 3, stride: 2 }),
        ] {
            let xs = randn(&mut rng, &[n, c, h, w]);
            let ws = randn(&mut rng, &[cout, c, k, k]);
            let bs = randn(&mut rng, &[cout]);
            for bias_tracks in [true, false] {
                let run = |fused: bool| {
                    let x = Var::from_vec(xs.clone(), (n, c, h, w), &dev).unwrap();
                    let wt = Var::from_vec(ws.clone(), (cout, c, k, k), &dev).unwrap();
                    let b = Var::from_vec(bs.clone(), cout, &dev).unwrap();
                    let bt = if bias_tracks { b.as_tensor().clone() } else { b.as_tensor().detach() };
                    let y = if fused {
                        conv2d_bias_relu(x.as_tensor(), wt.as_tensor(), &bt, p).unwrap().unwrap()
                    } else {
                        crate::train::layers::bias_relu(conv2d(x.as_tensor(), wt.as_tensor(), p).unwrap(), &bt).unwrap()
                    };
                    let k = Tensor::arange(0f32, y.elem_count() as f32, &dev).unwrap().reshape(y.shape()).unwrap();
                    let g = y.mul(&k.sin().unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    (flat(&y), flat(g.get(&x).unwrap()), flat(g.get(&wt).unwrap()), g.get(b.as_tensor()).map(flat))
                };
                let (fused, reference) = (run(true), run(false));
                let case = format!("{n}x{c}x{h}x{w}, {cout} {k}x{k}, bias tracks {bias_tracks}");
                assert!(fused == reference, "{case}");
                assert!(fused.0.contains(&0.0) && fused.0.iter().any(|v| *v > 0.0), "{case}");
                assert_eq!(fused.3.is_some(), bias_tracks, "{case}");
            }
        }
        let untracked = Tensor::zeros((1, 1, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let w1 = Tensor::ones((1, 1, 1, 1), candle_core::DType::F32, &dev).unwrap();
        let b1 = Tensor::ones(1, candle_core::DType::F32, &dev).unwrap();
        assert!(conv2d_bias_relu(&untracked, &w1, &b1, ConvParams { padding: 0, stride: 1 }).unwrap().is_none());
    }

    /// Which convolutions run as one dense linear map.
    #[test]
    fn the_smallest_planes_are_dense_maps() {
        let dense = |hw: usize, k: usize, padding: usize, stride: usize| {
            Geom::new(&Shape::from((2, 4, hw, hw)), &Shape::from((8, 4, k, k)), ConvParams { padding, stride })
                .unwrap()
                .dense()
        };
        assert!(dense(1, 3, 1, 1), "ResNet's layer4 at 32x32");
        assert!(dense(2, 3, 1, 1) && dense(2, 3, 1, 2), "its layer3, and layer4's first block");
        assert!(dense(2, 7, 3, 2) && dense(3, 3, 1, 3));
        assert!(!dense(4, 3, 1, 1) && !dense(4, 3, 1, 2) && !dense(3, 1, 0, 1) && !dense(8, 7, 3, 2));
        let huge = Geom::new(
            &Shape::from((2, 4096, 1, 1)),
            &Shape::from((4096, 4096, 3, 3)),
            ConvParams { padding: 1, stride: 1 },
        );
        assert!(!huge.unwrap().dense(), "a matrix over 16 MiB goes through im2col");
    }

    /// An input that needs no gradient (the stem's images) gets none, and a
    /// frozen kernel none either; the other gradient is unchanged.
    #[test]
    fn only_the_gradients_needed_are_computed() {
        let mut rng = Rng::new(3);
        let xs = randn(&mut rng, &[2, 3, 6, 6]);
        let ws = randn(&mut rng, &[4, 3, 3, 3]);
        let p = ConvParams { padding: 1, stride: 1 };
        let x = Tensor::from_vec(xs.clone(), (2, 3, 6, 6), &Device::Cpu).unwrap();
        let w = Var::from_vec(ws.clone(), (4, 3, 3, 3), &Device::Cpu).unwrap();
        let grads = conv2d(&x, w.as_tensor(), p).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        let x2 = Var::from_vec(xs, (2, 3, 6, 6), &Device::Cpu).unwrap();
        let w2 = Var::from_vec(ws.clone(), (4, 3, 3, 3), &Device::Cpu).unwrap();
        let native = x2.as_tensor().conv2d(w2.as_tensor(), 1, 1, 1, 1).unwrap();
        let g2 = native.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(diff(grads.get(&w).unwrap(), g2.get(&w2).unwrap()) < 1e-3);
        let frozen = Tensor::from_vec(ws, (4, 3, 3, 3), &Device::Cpu).unwrap();
        let grads = conv2d(x2.as_tensor(), &frozen, p).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&frozen).is_none());
        assert!(diff(grads.get(&x2).unwrap(), g2.get(&x2).unwrap()) < 1e-4);
    }

    /// `SWEEP_CPU_CONV=auto` computes directly (or across the lanes) the 3x3
    /// stride-1 layers where that measured as fast or faster (BENCHMARKS.md),
    /// and only those.
    #[test]
    fn the_direct_and_winograd_paths_take_the_layers_where_they_were_faster() {
        let geom = |n, c, hw, cout, padding| {
            let p = ConvParams { padding, stride: 1 };
            Geom::new(&Shape::from((n, c, hw, hw)), &Shape::from((cout, c, 3, 3)), p).unwrap()
        };
        if std::env::var_os(crate::env::CPU_CONV.name).is_some() {
            return; // a forced choice
        }
        for (n, c, hw, cout) in
            [(8, 128, 56, 32), (8, 128, 7, 32), (64, 16, 16, 32), (128, 64, 8, 64), (8, 256, 14, 256)]
        {
            assert!(geom(n, c, hw, cout, 1).direct3x3(), "{n}x{c}x{hw}x{hw} -> {cout}");
        }
        for (n, c, hw, cout) in [(8, 512, 7, 512), (128, 128, 4, 128), (128, 256, 2, 256)] {
            assert!(!geom(n, c, hw, cout, 1).direct3x3(), "{n}x{c}x{hw}x{hw} -> {cout}");
        }
        assert!(!geom(8, 128, 56, 32, 0).direct3x3());
        // The batch across the lanes, which goes before the direct path, on
        // small planes with a block of images.
        for (n, c, hw, cout) in [(128, 64, 8, 64), (128, 128, 4, 128), (16, 128, 7, 32), (64, 32, 8, 64)] {
            assert!(geom(n, c, hw, cout, 1).lanes(), "{n}x{c}x{hw}x{hw} -> {cout}");
        }
        for (n, c, hw, cout) in [(8, 64, 8, 64), (128, 64, 16, 64), (128, 256, 2, 256), (32, 512, 7, 512)] {
            assert!(!geom(n, c, hw, cout, 1).lanes(), "{n}x{c}x{hw}x{hw} -> {cout}");
        }
        assert!(!geom(128, 64, 8, 64, 0).lanes());
        // ResNet's stem on CIFAR-10's 32x32, not at 224 or with few images;
        // never the 3x3/2 layers.
        let strided = |n, c, hw, cout, k, stride, padding| {
            let p = ConvParams { padding, stride };
            Geom::new(&Shape::from((n, c, hw, hw)), &Shape::from((cout, c, k, k)), p).unwrap()
        };
        assert!(strided(128, 3, 32, 64, 7, 2, 3).lanes());
        assert!(!strided(128, 3, 224, 64, 7, 2, 3).lanes());
        assert!(!strided(8, 3, 32, 64, 7, 2, 3).lanes());
        assert!(!strided(128, 64, 8, 128, 3, 2, 1).lanes());
        // Winograd, which goes first, where it measured faster than both.
        for (n, c, hw, cout) in [
            (8, 64, 56, 64),
            (8, 128, 28, 128),
            (8, 256, 14, 256),
            (8, 128, 56, 32),
            (2, 64, 224, 64),
            (8, 512, 7, 512),
        ] {
            assert!(geom(n, c, hw, cout, 1).winograd(), "{n}x{c}x{hw}x{hw} -> {cout}");
        }
        for (n, c, hw, cout) in
            [(8, 128, 14, 32), (2, 512, 7, 512), (128, 64, 8, 64), (128, 128, 4, 128), (128, 256, 2, 256)]
        {
            assert!(!geom(n, c, hw, cout, 1).winograd(), "{n}x{c}x{hw}x{hw} -> {cout}");
        }
        assert!(!geom(8, 128, 56, 32, 0).winograd());
        // F(4x4, 3x3), which goes before them all, where it measured faster
        // still: ResNet's and VGG's layers at 224, the CIFAR stem's.
        for (n, c, hw, cout) in [
            (8, 64, 56, 64),
            (8, 128, 28, 128),
            (8, 256, 14, 256),
            (2, 64, 224, 64),
            (8, 512, 7, 512),
            (128, 64, 32, 64),
            (128, 256, 8, 256),
            (128, 512, 4, 512),
        ] {
            assert!(geom(n, c, hw, cout, 1).winograd4(), "{n}x{c}x{hw}x{hw} -> {cout}");
        }
        for (n, c, hw, cout) in [
            (8, 128, 56, 32),
            (8, 128, 14, 32),
            (2, 512, 7, 512),
            (128, 64, 8, 64),
            (128, 128, 4, 128),
            (128, 256, 2, 256),
        ] {
            assert!(!geom(n, c, hw, cout, 1).winograd4(), "{n}x{c}x{hw}x{hw} -> {cout}");
        }
        assert!(!geom(8, 64, 56, 64, 0).winograd4());
    }

    /// A batch whose column matrix is split into chunks of several images gives
    /// the same output and gradients as candle's conv2d.
    #[test]
    fn images_split_among_threads_match_candles_native_conv() {
        // Three images on two threads (groups of one and two), each image
        // its own column matrix: a 1x1 convolution (the image multiplied in
        // place) and a padded 3x3/2 one (im2col and col2im per image).
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            let mut rng = Rng::new(11);
            for (cin, cout, hw, k, p) in [
                (192, 128, 28, 1, ConvParams { padding: 0, stride: 1 }),
                (48, 64, 58, 3, ConvParams { padding: 1, stride: 2 }),
            ] {
                let n = 3;
                let x = Tensor::from_vec(randn(&mut rng, &[n, cin, hw, hw]), (n, cin, hw, hw), &Device::Cpu).unwrap();
                let w = Tensor::from_vec(randn(&mut rng, &[cout, cin, k, k]), (cout, cin, k, k), &Device::Cpu).unwrap();
                let g = Geom::new(x.shape(), w.shape(), p).unwrap();
                assert_eq!(image_groups(&g), Some(2), "{cin}->{cout} at {hw}x{hw} must take the per-image path");
                let (y, dx, dw) = against_native(&x, &w, p);
                assert!(y < 1e-3 && dx < 1e-4 && dw < 1e-4);
            }
        });
    }

    /// The op takes the lanes path for a small plane and for a stem, with a
    /// batch of more than one block (the last one ragged), forward and both
    /// gradients.
    #[test]
    fn lanes_path_matches_candles_native_conv() {
        if std::env::var_os(crate::env::CPU_CONV.name).is_some() {
            return; // a forced choice
        }
        let mut rng = Rng::new(13);
        for (n, cin, cout, hw, k, p) in [
            (19, 5, 7, 4, 3, ConvParams { padding: 1, stride: 1 }),
            (17, 3, 8, 14, 7, ConvParams { padding: 3, stride: 2 }),
        ] {
            let x = Tensor::from_vec(randn(&mut rng, &[n, cin, hw, hw]), (n, cin, hw, hw), &Device::Cpu).unwrap();
            let w = Tensor::from_vec(randn(&mut rng, &[cout, cin, k, k]), (cout, cin, k, k), &Device::Cpu).unwrap();
            assert!(Geom::new(x.shape(), w.shape(), p).unwrap().lanes());
            let (y, dx, dw) = against_native(&x, &w, p);
            assert!(y < 1e-3 && dx < 1e-5 && dw < 1e-5, "{k}x{k} at {hw}x{hw}: {y} {dx} {dw}");
        }
    }

    #[test]
    fn chunked_conv_matches_candles_native_conv() {
        let mut rng = Rng::new(5);
        // Padding 0: a 3x3 convolution that is never computed directly.
        let (n, cin, cout, hw) = (9, 256, 3, 18);
        let p = ConvParams { padding: 0, stride: 1 };
        let g = Geom { n, c: cin, h: hw, w: hw, k: 3, cout, oh: hw - 2, ow: hw - 2, p };
        assert!(!g.direct3x3());
        let per = g.images_per_chunk();
        assert!(per > 1 && per < n && n % per > 1, "the test must split the batch unevenly: {per}");
        let xs = randn(&mut rng, &[n, cin, hw, hw]);
        let ws = randn(&mut rng, &[cout, cin, 3, 3]);
        let x = Var::from_vec(xs.clone(), (n, cin, hw, hw), &Device::Cpu).unwrap();
        let w = Var::from_vec(ws.clone(), (cout, cin, 3, 3), &Device::Cpu).unwrap();
        let x2 = Var::from_vec(xs, (n, cin, hw, hw), &Device::Cpu).unwrap();
        let w2 = Var::from_vec(ws, (cout, cin, 3, 3), &Device::Cpu).unwrap();
        let ours = conv2d(x.as_tensor(), w.as_tensor(), p).unwrap();
        let native = x2.as_tensor().conv2d(w2.as_tensor(), 0, 1, 1, 1).unwrap();
        assert!(diff(&ours, &native) < 1e-3);
        let g1 = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = native.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(diff(g1.get(&x).unwrap(), g2.get(&x2).unwrap()) < 1e-2);
        let (a, b) = (g1.get(&w).unwrap(), g2.get(&w2).unwrap());
        let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff(a, b) / scale < 1e-4);
    }
}
