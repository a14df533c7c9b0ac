//! `ColorJitter`'s four adjustments on f32 RGB images in [0, 1], as
//! `torchvision.transforms.functional` computes them on tensors.

use super::Image;

fn blend(a: f32, b: f32, ratio: f32) -> f32 {
    (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)
}

fn gray(r: f32, g: f32, b: f32) -> f32 {
    0.2989 * r + 0.587 * g + 0.114 * b
}

/// `adjust_brightness`: blend with black.
pub fn brightness(img: &mut Image, f: f32) {
    img.data.iter_mut().for_each(|v| *v = blend(*v, 0.0, f));
}

/// `adjust_contrast`: blend with the mean grey level of the whole image.
pub fn contrast(img: &mut Image, f: f32) {
    let plane = img.h * img.w;
    let (r, rest) = img.data.split_at(plane);
    let (g, b) = rest.split_at(plane);
    let sum: f64 = r.iter().zip(g).zip(b).map(|((&r, &g), &b)| f64::from(gray(r, g, b))).sum();
    let mean = (sum / plane as f64) as f32;
    img.data.iter_mut().for_each(|v| *v = blend(*v, mean, f));
}

/// `adjust_saturation`: blend each pixel with its grey level.
pub fn saturation(img: &mut Image, f: f32) {
    let plane = img.h * img.w;
    let (r, rest) = img.data.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let l = gray(*r, *g, *b);
        (*r, *g, *b) = (blend(*r, l, f), blend(*g, l, f), blend(*b, l, f));
    }
}

/// `adjust_hue`: rotate the hue by `f` turns in HSV (`_rgb2hsv`/`_hsv2rgb`).
pub fn hue(img: &mut Image, f: f32) {
    let plane = img.h * img.w;
    let (r, rest) = img.data.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let (h, s, v) = rgb2hsv(*r, *g, *b);
        let h = (h + f).rem_euclid(1.0);
        (*r, *g, *b) = hsv2rgb(h, s, v);
    }
}

fn rgb2hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let cr = maxc - minc;
    let s = cr / if eqc { 1.0 } else { maxc };
    let div = if eqc { 1.0 } else { cr };
    let (rc, gc, bc) = ((maxc - r) / div, (maxc - g) / div, (maxc - b) / div);
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    // torch.fmod((h / 6 + 1), 1): h / 6 + 1 is positive.
    let h = (h / 6.0 + 1.0) % 1.0;
    (h, s, maxc)
}

fn hsv2rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let i = (i as i32).rem_euclid(6);
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match i {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_round_trip_and_hue_turns() {
        for &(r, g, b) in &[(0.2f32, 0.5, 0.9), (0.9, 0.1, 0.1), (0.3, 0.3, 0.3), (0.0, 1.0, 0.5)] {
            let (h, s, v) = rgb2hsv(r, g, b);
            let (r2, g2, b2) = hsv2rgb(h, s, v);
            assert!((r - r2).abs() < 1e-6 && (g - g2).abs() < 1e-6 && (b - b2).abs() < 1e-6, "{r} {g} {b}");
        }
        // A third of a turn maps pure red to pure green.
        let mut img = Image { c: 3, h: 1, w: 1, data: vec![1.0, 0.0, 0.0] };
        hue(&mut img, 1.0 / 3.0);
        assert!(img.data[1] > 0.999 && img.data[0] < 1e-5, "{:?}", img.data);
    }
}
