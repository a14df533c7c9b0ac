//! The embedded default: generated coloured shapes, offline and reproducible.

use super::{Dataset, Split};
use crate::train::rng::{stream, Rng};

/// Default number of generated training images.
pub const SYNTHETIC_TRAIN: usize = 2000;
/// Default number of generated test images.
pub const SYNTHETIC_TEST: usize = 500;

/// Class names of the generated dataset.
pub const SYNTHETIC_CLASSES: [&str; 10] =
    ["disk", "square", "triangle", "plus", "ring", "hstripes", "vstripes", "cross", "checker", "frame"];

/// Generates the synthetic dataset.
pub fn synthetic(train: usize, test: usize, seed: u64) -> Dataset {
    let split = |n: usize, which: u64| {
        let (h, w) = (32, 32);
        let mut images = vec![0u8; n * 3 * h * w];
        let mut labels = Vec::with_capacity(n);
        for (i, img) in images.chunks_exact_mut(3 * h * w).enumerate() {
            let label = (i % 10) as u32;
            draw_shape(img, h, w, label as u8, &mut Rng::derive(&[stream::DATA, seed, which, i as u64]));
            labels.push(label);
        }
        Split::uniform(images, labels, h, w)
    };
    Dataset {
        train: split(train, 0),
        test: split(test, 1),
        val: None,
        classes: SYNTHETIC_CLASSES.iter().map(std::string::ToString::to_string).collect(),
        skipped: Vec::new(),
    }
}

fn draw_shape(img: &mut [u8], h: usize, w: usize, label: u8, rng: &mut Rng) {
    let bg: [f64; 3] = std::array::from_fn(|_| rng.uniform(0.0, 110.0));
    let fg: [f64; 3] = std::array::from_fn(|_| rng.uniform(140.0, 255.0));
    let r = rng.uniform(7.0, 12.0);
    let cx = rng.uniform(r * 0.8, w as f64 - r * 0.8);
    let cy = rng.uniform(r * 0.8, h as f64 - r * 0.8);
    let period = rng.uniform(2.5, 4.0);
    for y in 0..h {
        for x in 0..w {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            let (dx, dy) = (px - cx, py - cy);
            let dist = (dx * dx + dy * dy).sqrt();
            let in_box = dx.abs() <= r * 0.8 && dy.abs() <= r * 0.8;
            let on = match label {
                0 => dist <= r,
                1 => in_box,
                2 => dy.abs() <= r * 0.8 && dx.abs() <= (dy + r * 0.8) * 0.6,
                3 => (dx.abs() <= r * 0.25 && dy.abs() <= r) || (dy.abs() <= r * 0.25 && dx.abs() <= r),
                4 => dist <= r && dist >= r * 0.55,
                5 => in_box && ((dy + r) / period).floor() as i64 % 2 == 0,
                6 => in_box && ((dx + r) / period).floor() as i64 % 2 == 0,
                7 => dx.abs() <= r * 0.9 && (dx.abs() - dy.abs()).abs() <= 1.3,
                8 => in_box && (((dx + r) / period).floor() as i64 + ((dy + r) / period).floor() as i64) % 2 == 0,
                _ => in_box && !(dx.abs() <= r * 0.45 && dy.abs() <= r * 0.45),
            };
            for c in 0..3 {
                let base = if on { fg[c] } else { bg[c] };
                let v = base + rng.uniform(-25.0, 25.0);
                img[c * h * w + y * w + x] = v.clamp(0.0, 255.0) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_is_deterministic_balanced_and_varied() {
        let a = synthetic(40, 20, 3);
        let b = synthetic(40, 20, 3);
        assert_eq!(a.train.images, b.train.images);
        assert_ne!(a.train.images, synthetic(40, 20, 4).train.images);
        assert_ne!(a.train.images[..3072], a.test.images[..3072]);
        for c in 0..10u32 {
            assert_eq!(a.train.labels.iter().filter(|&&l| l == c).count(), 4);
        }
        // Shapes differ between two images of the same class.
        assert_ne!(a.train.image(0), a.train.image(10));
    }
}
