//! Per-image transforms with torchvision's semantics, and batch assembly.
//!
//! An image is turned into f32 CHW in [0, 1] (torchvision's `ToTensor`) and the
//! run's transforms are applied in order. Each random draw comes from
//! `Rng::derive(seed, epoch, image index)`, so a batch is the same whatever the
//! thread count and whether or not the run was resumed.
//!
//! Implemented: `resize` (bilinear, `align_corners=False`; matches torchvision for
//! upsampling, downsampling has no antialias yet), `random_crop` (constant or
//! reflect padding), `center_crop`, `hflip`, `normalize`. `rotation`, `affine` and
//! `color_jitter` parse but are refused by [`unsupported`] until the data issue
//! implements them.

use super::data::Split;
use super::rng::{stream, Rng};
use crate::spec::{PaddingMode, Transform};

/// One image, f32, channel-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// `c * h * w` values.
    pub data: Vec<f32>,
}

impl Image {
    /// `ToTensor`: bytes to [0, 1].
    pub fn from_u8(bytes: &[u8], h: usize, w: usize) -> Image {
        Image { c: 3, h, w, data: bytes.iter().map(|&b| f32::from(b) / 255.0).collect() }
    }
    fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.h + y) * self.w + x]
    }
}

/// The first transform this build cannot apply yet, if any.
pub fn unsupported(transforms: &[Transform]) -> Option<&'static str> {
    transforms
        .iter()
        .find(|t| matches!(t, Transform::Rotation { .. } | Transform::Affine { .. } | Transform::ColorJitter { .. }))
        .map(Transform::name)
}

/// The (height, width) the transforms produce from an `h` x `w` image, or why
/// they cannot apply.
pub fn output_size(transforms: &[Transform], mut h: usize, mut w: usize) -> Result<(usize, usize), String> {
    for t in transforms {
        match *t {
            Transform::Resize { size } => {
                if size == 0 {
                    return Err("resize: size must be at least 1".into());
                }
                (h, w) = (size, size);
            }
            Transform::RandomCrop { size, padding, padding_mode, .. } => {
                if size == 0 || size > h + 2 * padding || size > w + 2 * padding {
                    return Err(format!("random_crop: size {size} does not fit a {h}x{w} image padded by {padding}"));
                }
                if padding_mode == PaddingMode::Reflect && (padding >= h || padding >= w) {
                    return Err(format!("random_crop: reflect padding {padding} needs an image larger than {h}x{w}"));
                }
                (h, w) = (size, size);
            }
            Transform::CenterCrop { size } => {
                if size == 0 || size > h || size > w {
                    return Err(format!("center_crop: size {size} does not fit a {h}x{w} image"));
                }
                (h, w) = (size, size);
            }
            Transform::Normalize { std, .. } => {
                if std.iter().any(|s| *s <= 0.0) {
                    return Err(format!("normalize: std must be positive, found {std:?}"));
                }
            }
            Transform::Hflip { p } => {
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("hflip: p must be in [0, 1], found {p}"));
                }
            }
            Transform::Rotation { .. } | Transform::Affine { .. } | Transform::ColorJitter { .. } => {}
        }
    }
    Ok((h, w))
}

/// Applies `transforms` in order.
pub fn apply(transforms: &[Transform], mut img: Image, rng: &mut Rng) -> Image {
    for t in transforms {
        img = match *t {
            Transform::Resize { size } => resize_bilinear(&img, size, size),
            Transform::RandomCrop { size, padding, padding_mode, fill } => {
                let (ph, pw) = (img.h + 2 * padding, img.w + 2 * padding);
                let top = rng.below(ph - size + 1);
                let left = rng.below(pw - size + 1);
                crop_padded(&img, padding, padding_mode, f32::from(fill) / 255.0, top, left, size)
            }
            Transform::CenterCrop { size } => {
                let top = ((img.h - size) as f64 / 2.0).round() as usize;
                let left = ((img.w - size) as f64 / 2.0).round() as usize;
                crop_padded(&img, 0, PaddingMode::Constant, 0.0, top, left, size)
            }
            Transform::Hflip { p } => {
                if rng.next_f64() < p {
                    hflip(&img)
                } else {
                    img
                }
            }
            Transform::Normalize { mean, std } => {
                let plane = img.h * img.w;
                for (c, chunk) in img.data.chunks_exact_mut(plane).enumerate() {
                    let (m, s) = (mean[c] as f32, std[c] as f32);
                    chunk.iter_mut().for_each(|v| *v = (*v - m) / s);
                }
                img
            }
            Transform::Rotation { .. } | Transform::Affine { .. } | Transform::ColorJitter { .. } => {
                unreachable!("refused by augment::unsupported before training starts")
            }
        };
    }
    img
}

fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let mut i = i;
    if i < 0 {
        i = -i;
    }
    if i >= n {
        i = 2 * (n - 1) - i;
    }
    i as usize
}

#[allow(clippy::too_many_arguments)]
fn crop_padded(img: &Image, pad: usize, mode: PaddingMode, fill: f32, top: usize, left: usize, size: usize) -> Image {
    let mut data = Vec::with_capacity(img.c * size * size);
    for c in 0..img.c {
        for y in 0..size {
            let sy = (top + y) as isize - pad as isize;
            for x in 0..size {
                let sx = (left + x) as isize - pad as isize;
                let inside = sy >= 0 && sx >= 0 && (sy as usize) < img.h && (sx as usize) < img.w;
                let v = match (inside, mode) {
                    (true, _) => img.at(c, sy as usize, sx as usize),
                    (false, PaddingMode::Constant) => fill,
                    (false, PaddingMode::Reflect) => img.at(c, reflect(sy, img.h), reflect(sx, img.w)),
                };
                data.push(v);
            }
        }
    }
    Image { c: img.c, h: size, w: size, data }
}

fn hflip(img: &Image) -> Image {
    let mut data = img.data.clone();
    for row in data.chunks_exact_mut(img.w) {
        row.reverse();
    }
    Image { data, ..*img }
}

/// PyTorch's `interpolate(mode="bilinear", align_corners=False)` without antialias.
pub fn resize_bilinear(img: &Image, oh: usize, ow: usize) -> Image {
    let axis = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
        let scale = inp as f64 / out as f64;
        (0..out)
            .map(|o| {
                let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(inp - 1);
                let i1 = (i0 + 1).min(inp - 1);
                (i0, i1, (src - i0 as f64) as f32)
            })
            .collect()
    };
    let ys = axis(oh, img.h);
    let xs = axis(ow, img.w);
    let mut data = Vec::with_capacity(img.c * oh * ow);
    for c in 0..img.c {
        for &(y0, y1, ly) in &ys {
            for &(x0, x1, lx) in &xs {
                let top = img.at(c, y0, x0) * (1.0 - lx) + img.at(c, y0, x1) * lx;
                let bottom = img.at(c, y1, x0) * (1.0 - lx) + img.at(c, y1, x1) * lx;
                data.push(top * (1.0 - ly) + bottom * ly);
            }
        }
    }
    Image { c: img.c, h: oh, w: ow, data }
}

/// A batch ready to become tensors.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `n * 3 * h * w` values.
    pub images: Vec<f32>,
    /// Labels.
    pub labels: Vec<u32>,
    /// Output height.
    pub h: usize,
    /// Output width.
    pub w: usize,
}

/// Assembles the images `indices` of `split` with `transforms` applied.
pub fn assemble(split: &Split, indices: &[usize], transforms: &[Transform], seed: u64, epoch: u64) -> Batch {
    let mut images = Vec::new();
    let mut labels = Vec::with_capacity(indices.len());
    let (mut h, mut w) = (0, 0);
    for &i in indices {
        let img = Image::from_u8(split.image(i), split.height, split.width);
        let mut rng = Rng::derive(&[stream::AUGMENT, seed, epoch, i as u64]);
        let out = apply(transforms, img, &mut rng);
        (h, w) = (out.h, out.w);
        images.extend_from_slice(&out.data);
        labels.push(u32::from(split.labels[i]));
    }
    Batch { images, labels, h, w }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(h: usize, w: usize) -> Image {
        Image { c: 3, h, w, data: (0..3 * h * w).map(|i| i as f32).collect() }
    }

    #[test]
    fn reflect_padding_mirrors_without_the_edge() {
        // torchvision: F.pad(x, 2, padding_mode="reflect") of [0 1 2 3] row -> [2 1 0 1 2 3 2 1]
        let img = Image { c: 1, h: 1, w: 4, data: vec![0.0, 1.0, 2.0, 3.0] };
        let img = Image { c: 1, h: 4, w: 4, data: img.data.repeat(4) };
        let out = crop_padded(&img, 2, PaddingMode::Reflect, 0.0, 2, 0, 4);
        assert_eq!(&out.data[..4], &[2.0, 1.0, 0.0, 1.0]);
        let out = crop_padded(&img, 2, PaddingMode::Reflect, 0.0, 2, 4, 4);
        assert_eq!(&out.data[..4], &[2.0, 3.0, 2.0, 1.0]);
    }

    #[test]
    fn random_crop_with_padding_keeps_size_and_fills() {
        let img = ramp(8, 8);
        let t = [Transform::RandomCrop { size: 8, padding: 4, padding_mode: PaddingMode::Constant, fill: 255 }];
        let mut seen_fill = false;
        for s in 0..20 {
            let out = apply(&t, img.clone(), &mut Rng::new(s));
            assert_eq!((out.h, out.w, out.data.len()), (8, 8, 192));
            seen_fill |= out.data.contains(&1.0);
        }
        assert!(seen_fill);
    }

    #[test]
    fn hflip_probability_extremes() {
        let img = ramp(2, 3);
        let flipped = apply(&[Transform::Hflip { p: 1.0 }], img.clone(), &mut Rng::new(0));
        assert_eq!(&flipped.data[..3], &[2.0, 1.0, 0.0]);
        assert_eq!(apply(&[Transform::Hflip { p: 0.0 }], img.clone(), &mut Rng::new(0)), img);
    }

    #[test]
    fn bilinear_upsampling_matches_pytorch() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4),
        //     mode="bilinear", align_corners=False)[0, 0, 0] == [0.0, 0.25, 0.75, 1.0]
        let img = Image { c: 1, h: 2, w: 2, data: vec![0.0, 1.0, 2.0, 3.0] };
        let out = resize_bilinear(&img, 4, 4);
        assert_eq!(&out.data[..4], &[0.0, 0.25, 0.75, 1.0]);
        assert_eq!(&out.data[4..8], &[0.5, 0.75, 1.25, 1.5]);
    }

    #[test]
    fn normalize_and_center_crop() {
        let img = Image { c: 3, h: 4, w: 4, data: vec![0.5; 48] };
        let t =
            [Transform::CenterCrop { size: 2 }, Transform::Normalize { mean: [0.5, 0.25, 0.0], std: [1.0, 0.5, 0.25] }];
        let out = apply(&t, img, &mut Rng::new(0));
        assert_eq!(out.data, [vec![0.0; 4], vec![0.5; 4], vec![2.0; 4]].concat());
        assert!(output_size(&[Transform::CenterCrop { size: 40 }], 32, 32).is_err());
        assert_eq!(output_size(&[Transform::Resize { size: 224 }], 32, 32), Ok((224, 224)));
    }
}
