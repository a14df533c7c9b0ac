//! Batches: shuffled indices in, tensors out, built on several threads ahead
//! of the trainer.
//!
//! A [`Pipeline`] splits a run's transforms into a host part, applied per image
//! on loader threads, and a device tail: the trailing `resize`/`normalize`
//! steps, which are the same for every image and can run as tensor ops on a
//! whole uint8 batch where the model runs (on a GPU that saves the host from
//! producing 224x224 float images). [`Pipeline::host_only`] keeps everything
//! on the host; the two give the same tensors (tested), and the worker picks
//! the device tail only on CUDA, since on the CPU the loader threads overlap
//! the host work with training while tensor ops would not.
//!
//! [`Pipeline::resident`] goes further where the host part is only crops
//! (with padding) and flips and every image has one size: the split is
//! uploaded to the device once as uint8, and the host part only draws each
//! image's crop window and flip and turns them into a row map and a column
//! map (source row and column of every output pixel, or the fill value); on
//! the device one `index_select` picks the batch and two `gather`s apply the
//! maps, followed by the tail (without crops and flips, no maps: the picked
//! images go straight to the tail). Same random draws, same pixels (tested
//! against the host path on the CPU device). The tail's constants (the
//! resize's matrices, the normalisation's mean and std) are uploaded once.
//!
//! [`Loader`] assembles the batches of one epoch on `threads` scoped threads:
//! thread `k` builds batches `k`, `k + threads`, … and hands them over through
//! its own bounded channel, so batches arrive in order, at most `prefetch`
//! per thread ahead of the trainer. Every random draw depends on (seed, epoch,
//! image index) only, so the batches are the same for any thread count.

use super::augment::{self, geometry, Image};
use super::data::Split;
use super::rng::{stream, Rng};
use crate::spec::Transform;
use candle_core::{DType, Device, Tensor};
use std::sync::mpsc::{sync_channel, Receiver};

/// A batch's pixels as the host part leaves them.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    /// Untouched or exactly representable bytes (crops, flips, nearest warps).
    U8(Vec<u8>),
    /// Float values (after a colour change, a resize or a normalisation).
    F32(Vec<f32>),
    /// Images of a split resident on the device, cropped and flipped by index
    /// maps (see [`Pipeline::resident`]).
    Indexed {
        /// The images, by index in the split.
        images: Vec<u32>,
        /// Per image, the source row of each output row (the image height: fill);
        /// empty when the pipeline neither crops nor flips.
        rows: Vec<u32>,
        /// Per image, the source column of each output column (the width: fill);
        /// empty when the pipeline neither crops nor flips.
        cols: Vec<u32>,
    },
}

/// A batch out of the host part.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `n * 3 * h * w` values, CHW per image.
    pub pixels: Pixels,
    /// Labels.
    pub labels: Vec<u32>,
    /// Height after the host part.
    pub h: usize,
    /// Width after the host part.
    pub w: usize,
}

/// A run's transforms, split between the loader threads and the device.
#[derive(Debug, Clone)]
pub struct Pipeline {
    host: Vec<Transform>,
    tail: Vec<Transform>,
    host_u8: bool,
    resident: Option<Resident>,
    /// The tail's constant tensors (the resize's interpolation matrices, the
    /// normalisation's mean and std), uploaded once per device and size
    /// instead of once per batch.
    consts: std::sync::Arc<std::sync::Mutex<Vec<(String, Tensor)>>>,
}

/// A split uploaded to the device, for [`Pipeline::resident`].
#[derive(Debug, Clone)]
struct Resident {
    /// (N, 3, H, W) uint8.
    images: Tensor,
    /// The constant padding value of the crops (0-255).
    fill: u8,
}

/// The largest split [`Pipeline::resident`] uploads (CIFAR-10's training set is 150 MiB).
pub const RESIDENT_MAX_BYTES: usize = 4 << 30;

/// Whether `t` maps byte-valued images to byte-valued images exactly.
fn exact_on_bytes(t: &Transform) -> bool {
    matches!(
        t,
        Transform::RandomCrop { .. }
            | Transform::CenterCrop { .. }
            | Transform::Hflip { .. }
            | Transform::Rotation { .. }
            | Transform::Affine { .. }
            | Transform::Cutout { .. }
    )
}

impl Pipeline {
    /// Everything on the host, as f32 (or bytes when nothing changes values).
    pub fn host_only(transforms: &[Transform]) -> Pipeline {
        Pipeline::with_tail(transforms, 0)
    }

    /// The trailing `resize`/`normalize` steps on the device when every image
    /// of `split` leaves the host part with the same size; else [`Pipeline::host_only`].
    pub fn device_tail(transforms: &[Transform], split: &Split) -> Pipeline {
        let tail = transforms
            .iter()
            .rev()
            .take_while(|t| matches!(t, Transform::Resize { .. } | Transform::Normalize(_)))
            .count();
        let p = Pipeline::with_tail(transforms, tail);
        let sizes: std::collections::HashSet<_> = split
            .distinct_sizes()
            .into_iter()
            .filter_map(|(_, (h, w))| augment::output_size(&p.host, h, w).ok())
            .collect();
        if sizes.len() == 1 {
            p
        } else {
            Pipeline::host_only(transforms)
        }
    }

    /// The split resident on `device`, the leading crops and flips done by
    /// indexing there and the trailing `resize`/`normalize` as tensor ops: when
    /// every image has one size, the split fits in [`RESIDENT_MAX_BYTES`], and
    /// the steps before the tail are only `random_crop`, `center_crop` and
    /// `hflip` (with one constant fill value). Else `None`.
    pub fn resident(transforms: &[Transform], split: &Split, device: &Device) -> candle_core::Result<Option<Pipeline>> {
        let p = Pipeline::device_tail(transforms, split);
        let mut fills = p.host.iter().enumerate().filter_map(|(k, t)| match t {
            Transform::RandomCrop { fill, padding_mode: crate::spec::PaddingMode::Constant, .. } => Some(*fill),
            // A centre crop larger than the image pads with zeros.
            Transform::CenterCrop { size } => {
                let (h, w) = augment::output_size(&p.host[..k], split.height, split.width).unwrap_or((0, 0));
                (*size > h || *size > w).then_some(0)
            }
            _ => None,
        });
        let fill = fills.next().unwrap_or(0);
        let only_index = p.host.iter().all(|t| {
            matches!(t, Transform::RandomCrop { .. } | Transform::CenterCrop { .. } | Transform::Hflip { .. })
        });
        if !only_index
            || fills.any(|f| f != fill)
            || !split.sizes.is_empty()
            || split.is_empty()
            || split.images.len() > RESIDENT_MAX_BYTES
        {
            return Ok(None);
        }
        let images = Tensor::from_slice(&split.images, (split.len(), 3, split.height, split.width), device)?;
        Ok(Some(Pipeline { resident: Some(Resident { images, fill }), ..p }))
    }

    /// Whether the split is resident on the device.
    pub fn is_resident(&self) -> bool {
        self.resident.is_some()
    }

    fn with_tail(transforms: &[Transform], tail: usize) -> Pipeline {
        let (host, tail) = transforms.split_at(transforms.len() - tail);
        Pipeline {
            host: host.to_vec(),
            tail: tail.to_vec(),
            host_u8: host.iter().all(exact_on_bytes),
            resident: None,
            consts: std::sync::Arc::default(),
        }
    }

    /// The row and column maps of the host part for image `i` (see [`Pixels::Indexed`]).
    fn index_maps(
        &self,
        split: &Split,
        i: usize,
        seed: u64,
        epoch: u64,
        rows: &mut Vec<u32>,
        cols: &mut Vec<u32>,
    ) -> (usize, usize) {
        let (h0, w0) = split.size(i);
        let mut r: Vec<Option<usize>> = (0..h0).map(Some).collect();
        let mut c: Vec<Option<usize>> = (0..w0).map(Some).collect();
        let mut rng = Rng::derive(&[stream::AUGMENT, seed, epoch, i as u64]);
        for t in &self.host {
            match augment::draw(t, r.len(), c.len(), &mut rng) {
                augment::Step::Crop { top, left, h, w, mode, .. } => {
                    let axis = |map: &[Option<usize>], start: isize, len: usize| -> Vec<Option<usize>> {
                        (0..len)
                            .map(|k| {
                                let j = start + k as isize;
                                if j >= 0 && (j as usize) < map.len() {
                                    map[j as usize]
                                } else {
                                    match mode {
                                        crate::spec::PaddingMode::Constant => None,
                                        crate::spec::PaddingMode::Reflect => map[geometry::reflect(j, map.len())],
                                    }
                                }
                            })
                            .collect()
                    };
                    r = axis(&r, top, h);
                    c = axis(&c, left, w);
                }
                augment::Step::Hflip => c.reverse(),
                augment::Step::Identity => {}
                other => unreachable!("a resident pipeline only crops and flips, not {other:?}"),
            }
        }
        rows.extend(r.iter().map(|v| v.map_or(h0 as u32, |v| v as u32)));
        cols.extend(c.iter().map(|v| v.map_or(w0 as u32, |v| v as u32)));
        (r.len(), c.len())
    }

    /// Whether some steps run as tensor ops.
    pub fn has_tail(&self) -> bool {
        !self.tail.is_empty()
    }

    /// Builds the host part of the batch of images `indices`.
    pub fn host_batch(&self, split: &Split, indices: &[usize], seed: u64, epoch: u64) -> Batch {
        let mut labels = Vec::with_capacity(indices.len());
        if self.resident.is_some() {
            let (mut rows, mut cols) = (Vec::new(), Vec::new());
            let (mut h, mut w) = (0, 0);
            for &i in indices {
                labels.push(split.labels[i]);
                // Without crops and flips the maps are the identity: none are drawn.
                (h, w) = if self.host.is_empty() {
                    split.size(i)
                } else {
                    self.index_maps(split, i, seed, epoch, &mut rows, &mut cols)
                };
            }
            let images = indices.iter().map(|&i| i as u32).collect();
            return Batch { pixels: Pixels::Indexed { images, rows, cols }, labels, h, w };
        }
        let (mut h, mut w) = (0, 0);
        let mut bytes = Vec::new();
        let mut floats = Vec::new();
        for &i in indices {
            let (ih, iw) = split.size(i);
            labels.push(split.labels[i]);
            if self.host.is_empty() {
                (h, w) = (ih, iw);
                bytes.extend_from_slice(split.image(i));
                continue;
            }
            let img = Image::from_u8(split.image(i), ih, iw);
            let mut rng = Rng::derive(&[stream::AUGMENT, seed, epoch, i as u64]);
            let out = augment::apply(&self.host, img, &mut rng);
            (h, w) = (out.h, out.w);
            if self.host_u8 {
                bytes.extend(out.data.iter().map(|v| (v * 255.0).round() as u8));
            } else {
                floats.extend_from_slice(&out.data);
            }
        }
        let pixels = if self.host.is_empty() || self.host_u8 { Pixels::U8(bytes) } else { Pixels::F32(floats) };
        Batch { pixels, labels, h, w }
    }

    /// The batch as (images, labels) tensors on `device`, with the tail applied.
    pub fn to_tensors(&self, batch: &Batch, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let n = batch.labels.len();
        let shape = (n, 3, batch.h, batch.w);
        let mut x = match &batch.pixels {
            Pixels::U8(b) => (Tensor::from_slice(b, shape, device)?.to_dtype(DType::F32)? / 255.0)?,
            Pixels::F32(f) => Tensor::from_slice(f, shape, device)?,
            Pixels::Indexed { images, rows, cols } => {
                let r = self.resident.as_ref().expect("indexed batches come from a resident pipeline");
                #[cfg(feature = "cudnn")]
                if crate::train::layers::use_cudnn(device) {
                    if let Some(tail) = self.kernel_tail(batch.h, batch.w, device)? {
                        // one upload: the picks, the maps, the labels
                        let mut plan = Vec::with_capacity(images.len() + rows.len() + cols.len() + n);
                        for part in [images, rows, cols, &batch.labels] {
                            plan.extend_from_slice(part);
                        }
                        let plan = Tensor::from_vec(plan, n + rows.len() + cols.len() + n, device)?;
                        let maps = !self.host.is_empty();
                        let hw = (batch.h, batch.w);
                        let x =
                            crate::train::layers::resident_batch(&r.images, &plan, images, hw, maps, r.fill, &tail)?;
                        let y = plan.narrow(0, n + rows.len() + cols.len(), n)?;
                        return Ok((x, y));
                    }
                }
                let (_, _, h0, w0) = r.images.dims4()?;
                let (h, w) = (batch.h, batch.w);
                let picked = r.images.index_select(&Tensor::from_slice(images, n, device)?, 0)?;
                let x = (picked.to_dtype(DType::F32)? / 255.0)?;
                if self.host.is_empty() {
                    // No crop or flip: the images as they are (no maps were drawn).
                    x
                } else {
                    Self::mapped(&x, (rows, cols), (h0, w0), (h, w), r.fill, device)?
                }
            }
        };
        for t in &self.tail {
            x = match t {
                Transform::Resize { size } => {
                    let (_, _, h, w) = x.dims4()?;
                    let (oh, ow) = geometry::resized_size(*size, h, w);
                    if (oh, ow) == (h, w) {
                        x
                    } else {
                        let rx = self.constant(device, &format!("resize {w} {ow}"), || taps_t(w, ow, device))?;
                        let ry = self.constant(device, &format!("resize {h} {oh}"), || taps_t(h, oh, device))?;
                        resize_with(&x, &rx, &ry)?
                    }
                }
                Transform::Normalize(nz) => {
                    let key = format!("normalize {:?} {:?}", nz.mean, nz.std);
                    let mean = self.constant(device, &format!("{key} mean"), || {
                        Tensor::from_slice(&nz.mean.map(|v| v as f32), (1, 3, 1, 1), device)
                    })?;
                    let std = self.constant(device, &format!("{key} std"), || {
                        Tensor::from_slice(&nz.std.map(|v| v as f32), (1, 3, 1, 1), device)
                    })?;
                    x.broadcast_sub(&mean)?.broadcast_div(&std)?
                }
                _ => unreachable!("only resize and normalize run as tensor ops"),
            };
        }
        let y = Tensor::from_slice(&batch.labels, n, device)?;
        Ok((x, y))
    }

    /// The tail as the resident batch kernel does it (`layers/pixels_cuda.rs`),
    /// for batches of `h` x `w` after the maps: a resize and a normalisation,
    /// each at most once and in that order; `None` for any other tail.
    #[cfg(feature = "cudnn")]
    fn kernel_tail(
        &self,
        h: usize,
        w: usize,
        device: &Device,
    ) -> candle_core::Result<Option<crate::train::layers::Tail>> {
        let mut tail = crate::train::layers::Tail { resize: None, normalize: None };
        let mut resized = false;
        for t in &self.tail {
            match t {
                Transform::Resize { size } if !resized && tail.normalize.is_none() => {
                    resized = true;
                    let (oh, ow) = geometry::resized_size(*size, h, w);
                    if (oh, ow) != (h, w) {
                        let taps = |inp: usize, out: usize| -> candle_core::Result<crate::train::layers::AxisTaps> {
                            let start = self.constant(device, &format!("taps start {inp} {out}"), || {
                                Ok(crate::train::layers::axis_taps(inp, out, device)?.start)
                            })?;
                            let weights = self.constant(device, &format!("taps weights {inp} {out}"), || {
                                Ok(crate::train::layers::axis_taps(inp, out, device)?.weights)
                            })?;
                            Ok(crate::train::layers::AxisTaps { start, weights })
                        };
                        tail.resize = Some((taps(h, oh)?, taps(w, ow)?));
                    }
                }
                Transform::Normalize(nz) if tail.normalize.is_none() => {
                    tail.normalize = Some((nz.mean.map(|v| v as f32), nz.std.map(|v| v as f32)));
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(tail))
    }

    /// The tail's constant `name` on `device`, made by `make` the first time.
    fn constant(
        &self,
        device: &Device,
        name: &str,
        make: impl FnOnce() -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let key = format!("{:?} {name}", device.location());
        let mut consts = self.consts.lock().expect("pipeline constants lock");
        if let Some((_, t)) = consts.iter().find(|(k, _)| *k == key) {
            return Ok(t.clone());
        }
        let t = make()?;
        consts.push((key, t.clone()));
        Ok(t)
    }

    /// `x` (N, 3, h0, w0) through each image's row and column maps (see
    /// [`Pixels::Indexed`]) into (N, 3, h, w).
    fn mapped(
        x: &Tensor,
        (rows, cols): (&[u32], &[u32]),
        (h0, w0): (usize, usize),
        (h, w): (usize, usize),
        fill: u8,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        // One more row and column holding the fill value: index h0 (w0) in the maps.
        let fill = f64::from(fill) / 255.0;
        let x = Tensor::cat(&[x.clone(), (Tensor::ones((n, 3, 1, w0), DType::F32, device)? * fill)?], 2)?;
        let x = Tensor::cat(&[x, (Tensor::ones((n, 3, h0 + 1, 1), DType::F32, device)? * fill)?], 3)?;
        let ri = Tensor::from_slice(rows, (n, 1, h, 1), device)?.broadcast_as((n, 3, h, w0 + 1))?.contiguous()?;
        let x = x.contiguous()?.gather(&ri, 2)?;
        let ci = Tensor::from_slice(cols, (n, 1, 1, w), device)?.broadcast_as((n, 3, h, w))?.contiguous()?;
        x.contiguous()?.gather(&ci, 3)
    }
}

/// The antialiased bilinear resize of a (N, C, H, W) tensor as two matmuls
/// with the interpolation matrices (exactly the host resize's weights).
pub fn resize_tensor(x: &Tensor, oh: usize, ow: usize) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (oh, ow) == (h, w) {
        return Ok(x.clone());
    }
    resize_with(x, &taps_t(w, ow, x.device())?, &taps_t(h, oh, x.device())?)
}

/// The (inp, out) matrix whose columns are the antialiased bilinear weights
/// of each output position (the transposed interpolation matrix).
fn taps_t(inp: usize, out: usize, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_vec(geometry::taps_matrix(&geometry::aa_taps(inp, out), inp), (out, inp), device)?.t()
}

/// [`resize_tensor`] with the transposed interpolation matrices given: `rx_t`
/// (W, OW) and `ry_t` (H, OH).
fn resize_with(x: &Tensor, rx_t: &Tensor, ry_t: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (ow, oh) = (rx_t.dim(1)?, ry_t.dim(1)?);
    // Rows: (N C H, W) x (W, OW); then columns: (N C OW, H) x (H, OH).
    let x = x.contiguous()?.reshape((n * c * h, w))?.matmul(rx_t)?;
    let x = x.reshape((n * c, h, ow))?.transpose(1, 2)?.contiguous()?.reshape((n * c * ow, h))?;
    let x = x.matmul(ry_t)?.reshape((n * c, ow, oh))?.transpose(1, 2)?.contiguous()?;
    x.reshape((n, c, oh, ow))
}

/// The batches of one pass, built ahead on scoped threads.
pub struct Loader {
    receivers: Vec<Receiver<Batch>>,
    next: usize,
}

/// Loader threads: `$SWEEP_LOADER_THREADS`, else the available cores (at most 8).
pub fn default_threads() -> usize {
    crate::env::LOADER_THREADS
        .parse::<usize>()
        .filter(|&n| n >= 1)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(8))
}

impl Loader {
    /// Starts building `batches` (the image indices of each) in order.
    #[allow(clippy::too_many_arguments)]
    pub fn start<'scope, 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        pipeline: &'env Pipeline,
        split: &'env Split,
        batches: Vec<&'env [usize]>,
        seed: u64,
        epoch: u64,
        threads: usize,
        prefetch: usize,
    ) -> Loader {
        let threads = threads.clamp(1, batches.len().max(1));
        let batches = std::sync::Arc::new(batches);
        let mut receivers = Vec::with_capacity(threads);
        for k in 0..threads {
            let (tx, rx) = sync_channel(prefetch.max(1));
            let batches = batches.clone();
            std::thread::Builder::new()
                .name(format!("loader-{k}"))
                .spawn_scoped(scope, move || {
                    for idx in batches.iter().skip(k).step_by(threads) {
                        if tx.send(pipeline.host_batch(split, idx, seed, epoch)).is_err() {
                            return; // the trainer stopped early
                        }
                    }
                })
                .expect("spawn a loader thread");
            receivers.push(rx);
        }
        Loader { receivers, next: 0 }
    }

    /// The next batch, in order; `None` after the last one.
    pub fn next_batch(&mut self) -> Option<Batch> {
        let k = self.next % self.receivers.len();
        let b = self.receivers[k].recv().ok()?;
        self.next += 1;
        Some(b)
    }
}

/// The batches of an epoch: `order` cut into `batch_size` pieces, the last
/// one dropped when short and `drop_last` is set.
pub fn batches(order: &[usize], batch_size: usize, drop_last: bool) -> Vec<&[usize]> {
    order.chunks(batch_size.max(1)).filter(|c| !drop_last || c.len() == batch_size).collect()
}

#[cfg(all(test, feature = "cudnn"))]
mod tests {
    use super::*;

    /// Which tails the resident batch kernel takes (a resize, then a
    /// normalisation, each at most once) and what it is given for them.
    #[test]
    fn the_batch_kernel_takes_one_resize_then_one_normalisation() {
        #[derive(serde::Deserialize)]
        struct T {
            t: Vec<Transform>,
        }
        let split = Split::uniform(vec![7; 4 * 3 * 32 * 32], vec![0, 1, 2, 3], 32, 32);
        let tail_of = |text: &str| {
            let t = toml::from_str::<T>(text).unwrap().t;
            let p = Pipeline::resident(&t, &split, &Device::Cpu).unwrap().expect(text);
            p.kernel_tail(32, 32, &Device::Cpu).unwrap()
        };
        let t = tail_of(r#"t = [{ hflip = {} }, { resize = { size = 224 } }, { normalize = "cifar10" }]"#).unwrap();
        let (ry, rx) = t.resize.expect("a resize");
        assert_eq!((ry.weights.dims2().unwrap().0, rx.start.dims1().unwrap()), (224, 224));
        let (mean, std) = t.normalize.expect("a normalisation");
        assert!((mean[0] - 0.4914).abs() < 1e-6 && (std[2] - 0.2616).abs() < 1e-6, "{mean:?} {std:?}");
        // a resize to the batch's own size is none; a normalisation alone
        let t = tail_of(r#"t = [{ resize = { size = 32 } }, { normalize = "imagenet" }]"#).unwrap();
        assert!(t.resize.is_none() && t.normalize.is_some());
        let t = tail_of(r"t = [{ hflip = {} }]").unwrap();
        assert!(t.resize.is_none() && t.normalize.is_none());
        // other orders and repeats keep candle's tensor ops
        assert!(tail_of(r#"t = [{ normalize = "cifar10" }, { resize = { size = 64 } }]"#).is_none());
        assert!(tail_of(r"t = [{ resize = { size = 64 } }, { resize = { size = 48 } }]").is_none());
        assert!(tail_of(r#"t = [{ normalize = "cifar10" }, { normalize = "cifar10" }]"#).is_none());
    }
}
