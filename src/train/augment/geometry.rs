//! Geometric transforms on f32 CHW images: antialiased bilinear resize, crops
//! with padding, flips and nearest-neighbour affine warps, each written to
//! reproduce `torchvision.transforms.functional` on tensors.

use super::Image;
use crate::spec::PaddingMode;

/// The taps of one output pixel along one axis: first source index and weights.
pub type Taps = Vec<(usize, Vec<f32>)>;

/// PyTorch's antialiased bilinear weights (`_upsample_bilinear2d_aa`,
/// `align_corners=False`) for resizing an axis of `inp` pixels to `out`. When
/// upsampling they are exactly those of plain bilinear interpolation; when
/// downsampling the triangle filter is stretched by the scale, like PIL.
pub fn aa_taps(inp: usize, out: usize) -> Taps {
    let scale = inp as f64 / out as f64;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..out)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(inp as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|j| {
                    let x = ((j - xmin) as f64 + xmin as f64 - center + 0.5) * invscale;
                    (1.0 - x.abs()).max(0.0)
                })
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                for v in &mut w {
                    *v /= total;
                }
            }
            (xmin, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// The taps as a dense `out x inp` matrix (row-major), for resizing by matmul.
pub fn taps_matrix(taps: &Taps, inp: usize) -> Vec<f32> {
    let mut m = vec![0f32; taps.len() * inp];
    for (o, (start, w)) in taps.iter().enumerate() {
        for (k, &v) in w.iter().enumerate() {
            m[o * inp + start + k] = v;
        }
    }
    m
}

/// torchvision's `Resize(size)` output for an `h` x `w` image: the shorter
/// side becomes `size`, the longer one `int(size * long / short)`.
pub fn resized_size(size: usize, h: usize, w: usize) -> (usize, usize) {
    if w <= h {
        (size * h / w, size)
    } else {
        (size, size * w / h)
    }
}

/// Antialiased bilinear resize to `oh` x `ow` (width pass, then height pass).
pub fn resize(img: &Image, oh: usize, ow: usize) -> Image {
    if (oh, ow) == (img.h, img.w) {
        return img.clone();
    }
    resize_with(&img.data, img.c, img.h, img.w, oh, ow, |v| v)
}

/// [`resize`] of `Image::from_u8(chw, h, w)`, reading the bytes as the width
/// pass takes them: the same values, without the full-size image in f32 (12
/// bytes a pixel, where the bytes are 3).
pub fn resize_u8(chw: &[u8], h: usize, w: usize, oh: usize, ow: usize) -> Image {
    resize_with(chw, 3, h, w, oh, ow, |b| f32::from(b) / 255.0)
}

/// What [`resize_u8`] holds besides its input and output, in bytes: the width
/// pass's rows.
pub fn resize_u8_scratch(h: usize, ow: usize) -> usize {
    3 * h * ow * std::mem::size_of::<f32>()
}

fn resize_with<T: Copy>(data: &[T], c: usize, h: usize, w: usize, oh: usize, ow: usize, f: impl Fn(T) -> f32) -> Image {
    let xt = aa_taps(w, ow);
    let yt = aa_taps(h, oh);
    let mut tmp = vec![0f32; c * h * ow];
    for (src, dst) in data.chunks_exact(w).zip(tmp.chunks_exact_mut(ow)) {
        for (d, (start, wt)) in dst.iter_mut().zip(&xt) {
            *d = wt.iter().zip(&src[*start..]).map(|(a, &b)| a * f(b)).sum();
        }
    }
    let mut out = vec![0f32; c * oh * ow];
    for ch in 0..c {
        let plane = &tmp[ch * h * ow..(ch + 1) * h * ow];
        for (y, (start, wt)) in yt.iter().enumerate() {
            let row = &mut out[(ch * oh + y) * ow..(ch * oh + y + 1) * ow];
            for (k, &wk) in wt.iter().enumerate() {
                let src = &plane[(start + k) * ow..(start + k + 1) * ow];
                row.iter_mut().zip(src).for_each(|(d, s)| *d += wk * s);
            }
        }
    }
    Image { c, h: oh, w: ow, data: out }
}

pub(crate) fn reflect(i: isize, n: usize) -> usize {
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

/// The `h` x `w` window whose top-left corner is at (`top`, `left`) of the
/// image; positions outside it are `fill` or mirrored (`reflect`, without
/// repeating the edge, as `F.pad(mode="reflect")`).
#[allow(clippy::too_many_arguments)]
pub fn crop(img: &Image, top: isize, left: isize, h: usize, w: usize, mode: PaddingMode, fill: f32) -> Image {
    let mut data = Vec::with_capacity(img.c * h * w);
    for c in 0..img.c {
        for y in 0..h {
            let sy = top + y as isize;
            for x in 0..w {
                let sx = left + x as isize;
                let inside = sy >= 0 && sx >= 0 && (sy as usize) < img.h && (sx as usize) < img.w;
                data.push(match (inside, mode) {
                    (true, _) => img.at(c, sy as usize, sx as usize),
                    (false, PaddingMode::Constant) => fill,
                    (false, PaddingMode::Reflect) => img.at(c, reflect(sy, img.h), reflect(sx, img.w)),
                });
            }
        }
    }
    Image { c: img.c, h, w, data }
}

/// torchvision's `center_crop` corner: `int(round((h - size) / 2))` with
/// Python's round-half-to-even, or minus the zero padding when the image is smaller.
pub fn center_offset(len: usize, size: usize) -> isize {
    if size > len {
        -(((size - len) / 2) as isize)
    } else {
        ((len - size) as f64 / 2.0).round_ties_even() as isize
    }
}

/// Mirror left-right.
pub fn hflip(img: &Image) -> Image {
    let mut data = img.data.clone();
    for row in data.chunks_exact_mut(img.w) {
        row.reverse();
    }
    Image { data, ..*img }
}

/// torchvision's `_get_inverse_affine_matrix` with the centre at the origin
/// (the tensor convention): maps output to input coordinates, both relative
/// to the image centre. Angles in degrees, `shear` = (x, y).
pub fn inverse_affine(angle: f64, translate: [f64; 2], scale: f64, shear: [f64; 2]) -> [f64; 6] {
    let rot = angle.to_radians();
    let (sx, sy) = (shear[0].to_radians(), shear[1].to_radians());
    let a = (rot - sy).cos() / sy.cos();
    let b = -(rot - sy).cos() * sx.tan() / sy.cos() - rot.sin();
    let c = (rot - sy).sin() / sy.cos();
    let d = -(rot - sy).sin() * sx.tan() / sy.cos() + rot.cos();
    let mut m = [d, -b, 0.0, -c, a, 0.0].map(|v| v / scale);
    let [tx, ty] = translate;
    m[2] += m[0] * -tx + m[1] * -ty;
    m[5] += m[3] * -tx + m[4] * -ty;
    m
}

/// `F_t.affine`/`F_t.rotate` with nearest-neighbour sampling: each output pixel
/// takes the input pixel the inverse `matrix` maps it to (rounded half to
/// even, as `grid_sample(mode="nearest", align_corners=False)`), or `fill`
/// when that falls outside. Computed in f32 in torchvision's order of operations.
pub fn affine_nearest(img: &Image, matrix: &[f64; 6], fill: f32) -> Image {
    let (h, w) = (img.h, img.w);
    let (hw, hh) = (0.5 * w as f32, 0.5 * h as f32);
    let m = matrix.map(|v| v as f32);
    // theta^T rescaled by (0.5 w, 0.5 h), as in `_gen_affine_grid`.
    let (r00, r01, r02) = (m[0] / hw, m[1] / hw, m[2] / hw);
    let (r10, r11, r12) = (m[3] / hh, m[4] / hh, m[5] / hh);
    let mut src = vec![None; h * w];
    for (y, row) in src.chunks_exact_mut(w).enumerate() {
        let by = -(h as f32) * 0.5 + 0.5 + y as f32;
        for (x, s) in row.iter_mut().enumerate() {
            let bx = -(w as f32) * 0.5 + 0.5 + x as f32;
            let gx = bx * r00 + by * r01 + r02;
            let gy = bx * r10 + by * r11 + r12;
            let ix = (((gx + 1.0) * w as f32 - 1.0) / 2.0).round_ties_even();
            let iy = (((gy + 1.0) * h as f32 - 1.0) / 2.0).round_ties_even();
            if ix >= 0.0 && iy >= 0.0 && (ix as usize) < w && (iy as usize) < h {
                *s = Some(iy as usize * w + ix as usize);
            }
        }
    }
    let plane = h * w;
    let mut data = Vec::with_capacity(img.data.len());
    for ch in img.data.chunks_exact(plane) {
        data.extend(src.iter().map(|s| s.map_or(fill, |i| ch[i])));
    }
    Image { data, ..*img }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampling_taps_are_plain_bilinear() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4),
        //     mode="bilinear", align_corners=False)[0, 0, 0] == [0.0, 0.25, 0.75, 1.0]
        let img = Image { c: 1, h: 2, w: 2, data: vec![0.0, 1.0, 2.0, 3.0] };
        let out = resize(&img, 4, 4);
        assert_eq!(&out.data[..4], &[0.0, 0.25, 0.75, 1.0]);
        assert_eq!(&out.data[4..8], &[0.5, 0.75, 1.25, 1.5]);
    }

    #[test]
    fn resize_keeps_the_aspect_ratio_like_torchvision() {
        assert_eq!(resized_size(224, 32, 32), (224, 224));
        // torchvision.transforms.Resize(256) of a 375x500 (h x w) image -> 256x341
        assert_eq!(resized_size(256, 375, 500), (256, 341));
        assert_eq!(resized_size(256, 500, 375), (341, 256));
    }

    #[test]
    fn reflect_padding_mirrors_without_the_edge() {
        // F.pad(x, 2, padding_mode="reflect") of the row [0 1 2 3] -> [2 1 0 1 2 3 2 1]
        let img = Image { c: 1, h: 4, w: 4, data: [0.0, 1.0, 2.0, 3.0].repeat(4) };
        let out = crop(&img, 0, -2, 4, 4, PaddingMode::Reflect, 0.0);
        assert_eq!(&out.data[..4], &[2.0, 1.0, 0.0, 1.0]);
        let out = crop(&img, 0, 2, 4, 4, PaddingMode::Reflect, 0.0);
        assert_eq!(&out.data[..4], &[2.0, 3.0, 2.0, 1.0]);
    }

    #[test]
    fn center_offsets_round_half_to_even() {
        // torchvision: int(round((h - size) / 2.0)); round(0.5) == 0, round(1.5) == 2
        assert_eq!(center_offset(33, 32), 0);
        assert_eq!(center_offset(35, 32), 2);
        assert_eq!(center_offset(32, 35), -1);
    }

    #[test]
    fn a_quarter_turn_moves_corners() {
        let img = Image { c: 1, h: 3, w: 3, data: (0..9).map(|v| v as f32).collect() };
        // torchvision.transforms.functional.rotate(x, 90) of arange(9).view(1, 3, 3)
        // -> [[2, 5, 8], [1, 4, 7], [0, 3, 6]]
        let out = affine_nearest(&img, &inverse_affine(-90.0, [0.0; 2], 1.0, [0.0; 2]), -1.0);
        assert_eq!(out.data, vec![2.0, 5.0, 8.0, 1.0, 4.0, 7.0, 0.0, 3.0, 6.0]);
    }
}
