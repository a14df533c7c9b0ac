//! A batch of a split resident on the GPU (`loader.rs`, `Pipeline::resident`)
//! as one kernel: each output pixel picks its image, follows the image's row
//! and column maps (crops with padding, flips), interpolates with the
//! antialiased bilinear taps of the resize, and is normalised, straight from
//! the split's bytes to the f32 (N, 3, H, W) batch.
//!
//! candle's ops do the same in nine launches without crops (a pick, a cast,
//! a scale, two matrix products and two transposes, a subtraction and a
//! division) and about twenty with them, passing 30 MB f32 intermediates at
//! 224x224 batch 50, with an upload each for the picks, the maps and the
//! labels; here one upload holds the picks, the maps and the labels.
//!
//! The arithmetic is the host pipeline's (`augment`): a byte `b` is `b / 255`
//! (`ToTensor`), a position outside the image the fill value over 255, the
//! resize `Σ_y wy (Σ_x wx p)` over the taps of `geometry::aa_taps`, then
//! `(v - mean) / std`.

use super::cuda::{address, elementwise_config, function, launch, view};
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc;
use candle_core::cuda::CudaStorage;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use cudarc::driver::{CudaSlice, PushKernelArg};

/// The kernel's source (see the module doc).
pub(super) const SOURCE: &str = r#"
// The byte of image `img`, channel `ch`, at crop position (r, col), or the fill.
__device__ __forceinline__ float pixel(const unsigned char* images, u32 h0, u32 w0, const u32* plan, u32 batch,
                                       u32 h, u32 w, int maps, float fill, u32 b, u32 img, u32 ch, u32 r, u32 col) {
    u32 sr = maps ? plan[batch + b * h + r] : r;
    u32 sc = maps ? plan[batch + batch * h + b * w + col] : col;
    if (sr >= h0 || sc >= w0) return fill;
    return (float)images[(((u64)img * 3 + ch) * h0 + sr) * w0 + sc] / 255.0f;
}

// out (batch, 3, oh, ow) f32; plan = [image of each row of the batch, its row maps (h each),
// its column maps (w each), ...]; taps (resize != 0): per output row (column) the first crop
// row (column) and ky (kx) weights, zero-padded.
extern "C" __global__ void resident_batch(
    u64 images_at, u32 h0, u32 w0, const u32* plan, u32 batch, u32 h, u32 w, int maps, float fill,
    int resize, u64 ystart_at, u64 yw_at, u32 ky, u64 xstart_at, u64 xw_at, u32 kx, u32 oh, u32 ow,
    int normalize, float m0, float m1, float m2, float s0, float s1, float s2, float* out, u64 n) {
    const unsigned char* images = (const unsigned char*)images_at;
    const u32* ystart = (const u32*)ystart_at;
    const u32* xstart = (const u32*)xstart_at;
    const float* yw = (const float*)yw_at;
    const float* xw = (const float*)xw_at;
    EACH {
        u32 ox = (u32)(i % ow);
        u32 oy = (u32)((i / ow) % oh);
        u32 ch = (u32)((i / ((u64)ow * oh)) % 3);
        u32 b = (u32)(i / ((u64)ow * oh * 3));
        u32 img = plan[b];
        float v;
        if (resize) {
            v = 0.0f;
            for (u32 ty = 0; ty < ky; ty++) {
                float wy = yw[(u64)oy * ky + ty];
                u32 r = ystart[oy] + ty;
                if (wy == 0.0f || r >= h) continue;
                float row = 0.0f;
                for (u32 tx = 0; tx < kx; tx++) {
                    float wx = xw[(u64)ox * kx + tx];
                    u32 col = xstart[ox] + tx;
                    if (wx == 0.0f || col >= w) continue;
                    row += wx * pixel(images, h0, w0, plan, batch, h, w, maps, fill, b, img, ch, r, col);
                }
                v += wy * row;
            }
        } else {
            v = pixel(images, h0, w0, plan, batch, h, w, maps, fill, b, img, ch, oy, ox);
        }
        if (normalize) {
            float m = ch == 0 ? m0 : (ch == 1 ? m1 : m2);
            float s = ch == 0 ? s0 : (ch == 1 ? s1 : s2);
            v = (v - m) / s;
        }
        out[i] = v;
    }
}
"#;

/// The module name of [`SOURCE`].
pub(super) const MODULE: &str = "sweep_pixels";

/// The antialiased resize of one axis as the kernel takes it: per output
/// position the first input position (u32) and `k` weights (f32, zero-padded).
#[derive(Debug, Clone)]
pub(crate) struct AxisTaps {
    /// (out) u32.
    pub(crate) start: Tensor,
    /// (out, k) f32.
    pub(crate) weights: Tensor,
}

/// What the batch kernel does after the maps.
#[derive(Debug, Clone)]
pub(crate) struct Tail {
    /// Rows then columns, when the batch is resized.
    pub(crate) resize: Option<(AxisTaps, AxisTaps)>,
    /// Channel means and standard deviations, when it is normalised.
    pub(crate) normalize: Option<([f32; 3], [f32; 3])>,
}

/// The resize's taps by address, and the output size.
#[derive(Debug, Clone, Copy)]
struct ResizeAt {
    ystart: u64,
    yw: u64,
    ky: u32,
    xstart: u64,
    xw: u64,
    kx: u32,
    oh: u32,
    ow: u32,
}

/// The kernel over `plan` (the op's one tensor input); the other buffers by
/// address, read-locked by [`resident_batch`] while the op runs.
struct ResidentBatch {
    images: u64,
    /// (h0, w0) of the split's images.
    size0: (u32, u32),
    batch: u32,
    /// (h, w) after the maps.
    size: (u32, u32),
    maps: bool,
    fill: f32,
    resize: Option<ResizeAt>,
    normalize: Option<([f32; 3], [f32; 3])>,
}

impl CustomOp1 for ResidentBatch {
    fn name(&self) -> &'static str {
        "sweep-cuda-resident-batch"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("{}: a CUDA op on the CPU", self.name())
    }

    #[allow(unsafe_code)] // an uninitialised output and a launch: see the SAFETY comments
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let plan = view::<u32>(s, l, self.name())?;
        let (h, w) = self.size;
        let (oh, ow) = self.resize.map_or((h, w), |r| (r.oh, r.ow));
        let len = self.batch as usize * 3 * oh as usize * ow as usize;
        let maps_len = if self.maps { self.batch as usize * (h + w) as usize } else { 0 };
        if plan.len() < self.batch as usize + maps_len {
            bail!("{}: a plan of {} values for {} images", self.name(), plan.len(), self.batch);
        }
        let dev = s.device().clone();
        // SAFETY: the kernel writes every one of the len elements (EACH over i < n).
        let mut out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(len) }?;
        let func = function(&dev, MODULE, SOURCE, "resident_batch")?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        let (h0, w0) = self.size0;
        let (maps, resize, normalize) =
            (i32::from(self.maps), i32::from(self.resize.is_some()), i32::from(self.normalize.is_some()));
        let r = self.resize.unwrap_or(ResizeAt { ystart: 0, yw: 0, ky: 0, xstart: 0, xw: 0, kx: 0, oh, ow });
        let ([m0, m1, m2], [s0, s1, s2]) = self.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
        let n = len as u64;
        b.arg(&self.images).arg(&h0).arg(&w0).arg(&plan).arg(&self.batch).arg(&h).arg(&w).arg(&maps).arg(&self.fill);
        b.arg(&resize).arg(&r.ystart).arg(&r.yw).arg(&r.ky).arg(&r.xstart).arg(&r.xw).arg(&r.kx).arg(&oh).arg(&ow);
        b.arg(&normalize).arg(&m0).arg(&m1).arg(&m2).arg(&s0).arg(&s1).arg(&s2).arg(&mut out).arg(&n);
        // SAFETY: the arguments are the kernel's, in its order and types; the
        // addresses are those of live buffers read-locked by the caller
        // (`resident_batch`): the images (N0, 3, h0, w0) u8 (every image index
        // of the plan below N0, checked there), the taps (oh and ow starts, oh * ky
        // and ow * kx weights, each start + tap below h or w or skipped); the plan
        // holds the picks and, with maps, batch * (h + w) map values (checked above),
        // each below h0 (w0) or equal to it (the fill).
        unsafe { launch(b, elementwise_config(len)) }?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((self.batch as usize, 3, oh as usize, ow as usize))))
    }
}

/// The (batch, 3, oh, ow) f32 batch of `images` ((N0, 3, h0, w0) u8 on a GPU)
/// picked, mapped, resized and normalised by `plan` (u32 on the same GPU:
/// the `batch` images, then with `maps` each image's `h` row and `w` column
/// maps, anything after them ignored) and `tail`; positions mapped to h0 (w0)
/// hold `fill` (a byte value).
///
/// # Errors
/// Dtypes or sizes other than these, an image index not in `images`, or a
/// CUDA error.
#[allow(clippy::too_many_arguments)]
pub(crate) fn resident_batch(
    images: &Tensor,
    plan: &Tensor,
    picks: &[u32],
    (h, w): (usize, usize),
    maps: bool,
    fill: u8,
    tail: &Tail,
) -> Result<Tensor> {
    let (count, c, h0, w0) = images.dims4()?;
    if images.dtype() != DType::U8 || c != 3 || plan.dtype() != DType::U32 {
        bail!("resident batch: images (N, 3, H, W) u8 and a u32 plan, not {:?} {:?}", images.dtype(), images.dims());
    }
    if picks.iter().any(|&i| i as usize >= count) {
        bail!("resident batch: an image index past the split's {count} images");
    }
    if !maps && (h, w) != (h0, w0) {
        bail!("resident batch: without maps the batch is the images' size");
    }
    let u = |v: usize| u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("resident batch: {v} too large")));
    let (_img_guard, images_at) = address::<u8>(images)?;
    let held = match &tail.resize {
        Some((ry, rx)) => {
            let (oh, ky) = ry.weights.dims2()?;
            let (ow, kx) = rx.weights.dims2()?;
            if ry.start.dims() != [oh] || rx.start.dims() != [ow] {
                bail!(
                    "resize taps: starts {:?} {:?} for weights {:?} {:?}",
                    ry.start.dims(),
                    rx.start.dims(),
                    (oh, ky),
                    (ow, kx)
                );
            }
            let ys = address::<u32>(&ry.start)?;
            let yw = address::<f32>(&ry.weights)?;
            let xs = address::<u32>(&rx.start)?;
            let xw = address::<f32>(&rx.weights)?;
            let at = ResizeAt {
                ystart: ys.1,
                yw: yw.1,
                ky: u(ky)?,
                xstart: xs.1,
                xw: xw.1,
                kx: u(kx)?,
                oh: u(oh)?,
                ow: u(ow)?,
            };
            Some(((ys.0, yw.0, xs.0, xw.0), at))
        }
        None => None,
    };
    let op = ResidentBatch {
        images: images_at,
        size0: (u(h0)?, u(w0)?),
        batch: u(picks.len())?,
        size: (u(h)?, u(w)?),
        maps,
        fill: f32::from(fill) / 255.0,
        resize: held.as_ref().map(|(_, at)| *at),
        normalize: tail.normalize,
    };
    let plan = plan.contiguous()?;
    // the read locks (`held`, `_img_guard`) live until the op has been queued
    let out = plan.apply_op1_no_bwd(&op);
    drop(held);
    out
}

/// The taps of `geometry::aa_taps(inp, out)` as [`AxisTaps`] on `device`.
///
/// # Errors
/// An allocation or upload error.
pub(crate) fn axis_taps(inp: usize, out: usize, device: &candle_core::Device) -> Result<AxisTaps> {
    let taps = crate::train::augment::geometry::aa_taps(inp, out);
    let k = taps.iter().map(|(_, w)| w.len()).max().unwrap_or(1).max(1);
    let mut start = Vec::with_capacity(out);
    let mut weights = vec![0f32; out * k];
    for (o, (s, w)) in taps.iter().enumerate() {
        start.push(u32::try_from(*s).map_err(|_| candle_core::Error::Msg(format!("resize: {s} too large")))?);
        weights[o * k..o * k + w.len()].copy_from_slice(w);
    }
    Ok(AxisTaps { start: Tensor::from_vec(start, out, device)?, weights: Tensor::from_vec(weights, (out, k), device)? })
}

#[cfg(test)]
mod tests {
    /// NVRTC compiles the kernels.
    #[test]
    fn the_kernels_compile() {
        super::super::cuda::assert_compiles(super::SOURCE, &["resident_batch"]);
    }

    /// The taps as the kernel reads them: every output's weights sum to one,
    /// start where `aa_taps` starts, and are zero past its count.
    #[test]
    fn axis_taps_pad_aa_taps() {
        let d = candle_core::Device::Cpu;
        for (inp, out) in [(32, 224), (224, 32), (7, 7), (10, 3)] {
            let t = super::axis_taps(inp, out, &d).unwrap();
            let aa = crate::train::augment::geometry::aa_taps(inp, out);
            let (o, k) = t.weights.dims2().unwrap();
            assert_eq!(o, out);
            let w = t.weights.to_vec2::<f32>().unwrap();
            let s = t.start.to_vec1::<u32>().unwrap();
            for (i, (start, taps)) in aa.iter().enumerate() {
                assert_eq!(s[i] as usize, *start);
                assert_eq!(&w[i][..taps.len()], &taps[..]);
                assert!(w[i][taps.len()..].iter().all(|&v| v == 0.0) && taps.len() <= k);
                assert!((w[i].iter().sum::<f32>() - 1.0).abs() < 1e-5, "{inp} -> {out}: {:?}", w[i]);
            }
        }
    }
}
