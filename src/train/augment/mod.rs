//! Per-image transforms with torchvision's semantics.
//!
//! An image is turned into f32 CHW in [0, 1] (torchvision's `ToTensor`) and the
//! run's transforms are applied in order, as `torchvision.transforms` applies
//! them to a tensor image. Each random transform is split in two: [`draw`]
//! takes its random parameters (the [`Step`]) from an `Rng` derived from
//! (seed, epoch, image index), and [`apply_step`] applies them. So a batch is
//! the same whatever the thread count and whether or not the run was resumed,
//! and the fixtures of `tests/fixtures/augment` (written by torchvision for
//! fixed parameters) test [`apply_step`] directly.
//!
//! The random draws follow torchvision's `get_params` (ranges, rounding, the
//! order of `ColorJitter`'s adjustments, `RandomErasing`'s ten tries), but
//! from sweep's own generator, so the same seed does not give torch's numbers.

mod color;
pub mod geometry;

use super::rng::Rng;
use crate::spec::{PaddingMode, Transform};
use serde::{Deserialize, Serialize};

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

/// One transform with its random parameters drawn: what torchvision's
/// functional API receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Leave the image as it is (a flip or erasure that was not drawn).
    Identity,
    /// `F.resize(img, [h, w], antialias=True)`.
    Resize {
        /// Output height.
        h: usize,
        /// Output width.
        w: usize,
    },
    /// `F.crop` of the padded image: the window's top-left corner in the
    /// coordinates of the unpadded image (negative inside the padding).
    Crop {
        /// Row of the top-left corner.
        top: isize,
        /// Column of the top-left corner.
        left: isize,
        /// Output height.
        h: usize,
        /// Output width.
        w: usize,
        /// How positions outside the image are filled.
        mode: PaddingMode,
        /// Fill value for constant padding.
        fill: f32,
    },
    /// `F.hflip`.
    Hflip,
    /// `F.affine`/`F.rotate` (nearest): the inverse matrix around the centre.
    Affine {
        /// Output-to-input map, as `_get_inverse_affine_matrix` returns it.
        matrix: [f64; 6],
        /// Fill value outside the image.
        fill: f32,
    },
    /// `ColorJitter` with its factors drawn: adjustments in `order`
    /// (0 brightness, 1 contrast, 2 saturation, 3 hue); `None` skips one.
    Jitter {
        /// The order of the four adjustments.
        order: [usize; 4],
        /// Brightness, contrast, saturation and hue factors.
        factors: [Option<f64>; 4],
    },
    /// `F.normalize`.
    Normalize {
        /// Channel means.
        mean: [f32; 3],
        /// Channel standard deviations.
        std: [f32; 3],
    },
    /// `F.erase`: the rectangle set to `value`.
    Erase {
        /// First row.
        top: usize,
        /// First column.
        left: usize,
        /// Rows.
        h: usize,
        /// Columns.
        w: usize,
        /// The value written.
        value: f32,
    },
}

/// Draws the parameters of `t` for an `h` x `w` image.
pub fn draw(t: &Transform, h: usize, w: usize, rng: &mut Rng) -> Step {
    match *t {
        Transform::Resize { size } => {
            let (h, w) = geometry::resized_size(size, h, w);
            Step::Resize { h, w }
        }
        Transform::RandomCrop { size, padding, padding_mode, fill } => {
            let top = rng.below(h + 2 * padding - size + 1) as isize - padding as isize;
            let left = rng.below(w + 2 * padding - size + 1) as isize - padding as isize;
            Step::Crop { top, left, h: size, w: size, mode: padding_mode, fill: f32::from(fill) / 255.0 }
        }
        Transform::CenterCrop { size } => Step::Crop {
            top: geometry::center_offset(h, size),
            left: geometry::center_offset(w, size),
            h: size,
            w: size,
            mode: PaddingMode::Constant,
            fill: 0.0,
        },
        Transform::Hflip { p } => {
            if rng.next_f64() < p {
                Step::Hflip
            } else {
                Step::Identity
            }
        }
        Transform::Rotation { degrees, fill } => {
            let angle = rng.uniform(-degrees, degrees);
            // F.rotate(img, angle) inverts the rotation by -angle.
            let matrix = geometry::inverse_affine(-angle, [0.0; 2], 1.0, [0.0; 2]);
            Step::Affine { matrix, fill: f32::from(fill) / 255.0 }
        }
        Transform::Affine { degrees, translate, scale, shear, fill } => {
            let angle = rng.uniform(-degrees, degrees);
            let t = translate.map_or([0.0; 2], |[fx, fy]| {
                let (mx, my) = (fx * w as f64, fy * h as f64);
                [rng.uniform(-mx, mx).round_ties_even(), rng.uniform(-my, my).round_ties_even()]
            });
            let s = scale.map_or(1.0, |[lo, hi]| rng.uniform(lo, hi));
            let sh = shear.map_or(0.0, |s| rng.uniform(-s, s));
            let matrix = geometry::inverse_affine(angle, t, s, [sh, 0.0]);
            Step::Affine { matrix, fill: f32::from(fill) / 255.0 }
        }
        Transform::ColorJitter { brightness, contrast, saturation, hue } => {
            let mut order = [0, 1, 2, 3];
            rng.shuffle(&mut order);
            let mut factor =
                |v: f64, centre: f64, min: f64| (v > 0.0).then(|| rng.uniform((centre - v).max(min), centre + v));
            let factors = [
                factor(brightness, 1.0, 0.0),
                factor(contrast, 1.0, 0.0),
                factor(saturation, 1.0, 0.0),
                factor(hue, 0.0, -0.5),
            ];
            Step::Jitter { order, factors }
        }
        Transform::Normalize(ref n) => Step::Normalize { mean: n.mean.map(|v| v as f32), std: n.std.map(|v| v as f32) },
        Transform::Cutout { size, p } => {
            if rng.next_f64() >= p {
                return Step::Identity;
            }
            let (cy, cx) = (rng.below(h), rng.below(w));
            let (y0, y1) = (cy.saturating_sub(size / 2), (cy + size / 2).min(h));
            let (x0, x1) = (cx.saturating_sub(size / 2), (cx + size / 2).min(w));
            Step::Erase { top: y0, left: x0, h: y1 - y0, w: x1 - x0, value: 0.0 }
        }
        Transform::RandomErasing { p, scale, ratio, value } => {
            if rng.next_f64() >= p {
                return Step::Identity;
            }
            let area = (h * w) as f64;
            let (lr0, lr1) = (ratio[0].ln(), ratio[1].ln());
            for _ in 0..10 {
                let erase = area * rng.uniform(scale[0], scale[1]);
                let aspect = rng.uniform(lr0, lr1).exp();
                let eh = (erase * aspect).sqrt().round_ties_even() as usize;
                let ew = (erase / aspect).sqrt().round_ties_even() as usize;
                if !(eh < h && ew < w) {
                    continue;
                }
                let top = rng.below(h - eh + 1);
                let left = rng.below(w - ew + 1);
                return Step::Erase { top, left, h: eh, w: ew, value: value as f32 };
            }
            Step::Identity
        }
    }
}

/// Applies one step with its parameters.
pub fn apply_step(step: &Step, mut img: Image) -> Image {
    match *step {
        Step::Identity => img,
        Step::Resize { h, w } => geometry::resize(&img, h, w),
        Step::Crop { top, left, h, w, mode, fill } => geometry::crop(&img, top, left, h, w, mode, fill),
        Step::Hflip => geometry::hflip(&img),
        Step::Affine { ref matrix, fill } => geometry::affine_nearest(&img, matrix, fill),
        Step::Jitter { order, factors } => {
            for i in order {
                let Some(f) = factors[i] else { continue };
                let f = f as f32;
                match i {
                    0 => color::brightness(&mut img, f),
                    1 => color::contrast(&mut img, f),
                    2 => color::saturation(&mut img, f),
                    _ => color::hue(&mut img, f),
                }
            }
            img
        }
        Step::Normalize { mean, std } => {
            let plane = img.h * img.w;
            for (c, chunk) in img.data.chunks_exact_mut(plane).enumerate() {
                let (m, s) = (mean[c], std[c]);
                for v in chunk.iter_mut() {
                    *v = (*v - m) / s;
                }
            }
            img
        }
        Step::Erase { top, left, h, w, value } => {
            for c in 0..img.c {
                for y in top..top + h {
                    let row = (c * img.h + y) * img.w;
                    img.data[row + left..row + left + w].fill(value);
                }
            }
            img
        }
    }
}

/// Applies `transforms` in order, drawing each one's parameters from `rng`.
pub fn apply(transforms: &[Transform], mut img: Image, rng: &mut Rng) -> Image {
    for t in transforms {
        let step = draw(t, img.h, img.w, rng);
        img = apply_step(&step, img);
    }
    img
}

/// The (height, width) the transforms produce from an `h` x `w` image, or why
/// they cannot apply.
pub fn output_size(transforms: &[Transform], mut h: usize, mut w: usize) -> Result<(usize, usize), String> {
    let non_negative = |v: f64| v >= 0.0; // false for NaN too
    let prob = |name: &str, p: f64| {
        if (0.0..=1.0).contains(&p) {
            Ok(())
        } else {
            Err(format!("{name}: p must be in [0, 1], found {p}"))
        }
    };
    for t in transforms {
        match *t {
            Transform::Resize { size } => {
                if size == 0 {
                    return Err("resize: size must be at least 1".into());
                }
                (h, w) = geometry::resized_size(size, h, w);
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
                if size == 0 {
                    return Err("center_crop: size must be at least 1".into());
                }
                (h, w) = (size, size);
            }
            Transform::Normalize(ref n) => {
                if n.std.iter().any(|s| *s <= 0.0) {
                    return Err(format!("normalize: std must be positive, found {:?}", n.std));
                }
            }
            Transform::Hflip { p } => prob("hflip", p)?,
            Transform::Rotation { degrees, .. } => {
                if !non_negative(degrees) {
                    return Err(format!("rotation: degrees must be non-negative, found {degrees}"));
                }
            }
            Transform::Affine { degrees, translate, scale, shear, .. } => {
                if !non_negative(degrees) || shear.is_some_and(|s| !non_negative(s)) {
                    return Err("affine: degrees and shear must be non-negative".into());
                }
                if translate.is_some_and(|t| t.iter().any(|v| !(0.0..=1.0).contains(v))) {
                    return Err("affine: translate fractions must be in [0, 1]".into());
                }
                if scale.is_some_and(|[lo, hi]| !(lo > 0.0 && lo <= hi)) {
                    return Err("affine: scale must be a range [min, max] of positive numbers".into());
                }
            }
            Transform::ColorJitter { brightness, contrast, saturation, hue } => {
                if [brightness, contrast, saturation, hue].iter().any(|v| !non_negative(*v)) {
                    return Err("color_jitter: every factor must be non-negative".into());
                }
                if hue > 0.5 {
                    return Err(format!("color_jitter: hue must be at most 0.5, found {hue}"));
                }
            }
            Transform::Cutout { size, p } => {
                prob("cutout", p)?;
                if size == 0 {
                    return Err("cutout: size must be at least 1".into());
                }
            }
            Transform::RandomErasing { p, scale, ratio, .. } => {
                prob("random_erasing", p)?;
                if !(scale[0] > 0.0 && scale[0] <= scale[1] && scale[1] <= 1.0) {
                    return Err("random_erasing: scale must be a range within (0, 1]".into());
                }
                if !(ratio[0] > 0.0 && ratio[0] <= ratio[1]) {
                    return Err("random_erasing: ratio must be a range of positive numbers".into());
                }
            }
        }
    }
    Ok((h, w))
}

/// The one size `transforms` give every image of `split`, or why not (naming
/// two images whose outputs differ).
pub fn split_output_size(transforms: &[Transform], split: &super::data::Split) -> Result<(usize, usize), String> {
    let mut first: Option<((usize, usize), usize)> = None;
    for (i, size) in split.distinct_sizes() {
        let out = output_size(transforms, size.0, size.1)?;
        match first {
            None => first = Some((out, i)),
            Some((o, j)) if o != out => {
                return Err(format!(
                    "images of different sizes stay different: {} ({}x{}) becomes {}x{} but {} ({}x{}) becomes {}x{}; \
                     add a `resize` and a `center_crop` (or a `random_crop`) to the augmentation set",
                    split.source(j),
                    split.size(j).0,
                    split.size(j).1,
                    o.0,
                    o.1,
                    split.source(i),
                    size.0,
                    size.1,
                    out.0,
                    out.1
                ))
            }
            Some(_) => {}
        }
    }
    first.map(|(o, _)| o).ok_or_else(|| "the split has no images".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Normalize;

    fn ramp(h: usize, w: usize) -> Image {
        Image { c: 3, h, w, data: (0..3 * h * w).map(|i| i as f32).collect() }
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
    fn normalize_and_center_crop() {
        let img = Image { c: 3, h: 4, w: 4, data: vec![0.5; 48] };
        let t = [
            Transform::CenterCrop { size: 2 },
            Transform::Normalize(Normalize { mean: [0.5, 0.25, 0.0], std: [1.0, 0.5, 0.25] }),
        ];
        let out = apply(&t, img, &mut Rng::new(0));
        assert_eq!(out.data, [vec![0.0; 4], vec![0.5; 4], vec![2.0; 4]].concat());
        assert_eq!(output_size(&[Transform::CenterCrop { size: 40 }], 32, 32), Ok((40, 40)));
        assert_eq!(output_size(&[Transform::Resize { size: 224 }], 32, 32), Ok((224, 224)));
        assert!(output_size(&[Transform::Hflip { p: 2.0 }], 32, 32).is_err());
    }

    #[test]
    fn random_draws_stay_in_torchvisions_ranges() {
        let jitter = Transform::ColorJitter { brightness: 0.2, contrast: 0.0, saturation: 0.3, hue: 0.1 };
        let erase = Transform::RandomErasing { p: 1.0, scale: [0.02, 0.33], ratio: [0.3, 3.3], value: 0.0 };
        let mut orders = std::collections::HashSet::new();
        for s in 0..200 {
            let mut rng = Rng::new(s);
            let Step::Jitter { order, factors } = draw(&jitter, 32, 32, &mut rng) else { panic!() };
            orders.insert(order);
            assert!(factors[1].is_none());
            assert!((0.8..=1.2).contains(&factors[0].unwrap()));
            assert!((0.7..=1.3).contains(&factors[2].unwrap()));
            assert!((-0.1..=0.1).contains(&factors[3].unwrap()));
            match draw(&erase, 32, 32, &mut rng) {
                Step::Erase { top, left, h, w, .. } => {
                    assert!(top + h <= 32 && left + w <= 32 && h < 32 && w < 32);
                    let share = (h * w) as f64 / 1024.0;
                    assert!(share > 0.005 && share < 0.45, "{share}");
                }
                Step::Identity => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(orders.len() > 12, "{}", orders.len());
    }
}
