//! Datasets: decoded once into memory as uint8 CHW images with labels.
//!
//! * `synthetic`: ten classes of coloured shapes and patterns at 32x32 on noisy
//!   backgrounds, each image a pure function of (data seed, split, index), so the
//!   quickstart needs no download and every machine sees the same pixels.
//! * `cifar10`: the binary release (`data_batch_1.bin` … `data_batch_5.bin`,
//!   `test_batch.bin`; records of 1 label byte + 3072 bytes, channel-major).

use super::rng::{stream, Rng};
use crate::spec::{DatasetName, DatasetSpec};
use std::path::{Path, PathBuf};

/// Default number of generated training images.
pub const SYNTHETIC_TRAIN: usize = 2000;
/// Default number of generated test images.
pub const SYNTHETIC_TEST: usize = 500;

/// Class names of the generated dataset.
pub const SYNTHETIC_CLASSES: [&str; 10] =
    ["disk", "square", "triangle", "plus", "ring", "hstripes", "vstripes", "cross", "checker", "frame"];
/// CIFAR-10's class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// A dataset problem, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct DataError {
    /// The file or folder at fault.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub detail: String,
}

/// Images of one split, all of the same size.
#[derive(Debug, Clone)]
pub struct Split {
    /// `len * 3 * height * width` bytes, image-major, channel-major (CHW).
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether the split has no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Bytes of one image.
    pub fn image_len(&self) -> usize {
        3 * self.height * self.width
    }
    /// The bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }
}

/// A loaded dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Training split.
    pub train: Split,
    /// Test split.
    pub test: Split,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
}

/// Loads (or generates) a dataset.
pub fn load(spec: &DatasetSpec) -> Result<Dataset, DataError> {
    match spec.name {
        DatasetName::Synthetic => Ok(synthetic(
            spec.train_size.unwrap_or(SYNTHETIC_TRAIN),
            spec.test_size.unwrap_or(SYNTHETIC_TEST),
            spec.data_seed.unwrap_or(0),
        )),
        DatasetName::Cifar10 => {
            let dir = PathBuf::from(spec.path.as_deref().unwrap_or("data/cifar-10-batches-bin"));
            cifar10_bin(&dir, spec.train_size, spec.test_size)
        }
    }
}

/// Generates the synthetic dataset.
pub fn synthetic(train: usize, test: usize, seed: u64) -> Dataset {
    let split = |n: usize, which: u64| {
        let (h, w) = (32, 32);
        let mut images = vec![0u8; n * 3 * h * w];
        let mut labels = Vec::with_capacity(n);
        for (i, img) in images.chunks_exact_mut(3 * h * w).enumerate() {
            let label = (i % 10) as u8;
            draw_shape(img, h, w, label, &mut Rng::derive(&[stream::DATA, seed, which, i as u64]));
            labels.push(label);
        }
        Split { images, labels, height: h, width: w }
    };
    Dataset {
        train: split(train, 0),
        test: split(test, 1),
        classes: SYNTHETIC_CLASSES.iter().map(|s| s.to_string()).collect(),
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

const CIFAR_RECORD: usize = 1 + 3072;

/// Reads CIFAR-10's binary release from `dir`, keeping at most `train`/`test` images.
pub fn cifar10_bin(dir: &Path, train: Option<usize>, test: Option<usize>) -> Result<Dataset, DataError> {
    if !dir.is_dir() {
        return Err(DataError {
            path: dir.to_owned(),
            detail: "no such folder: point `dataset.path` at the extracted cifar-10-batches-bin folder \
                     (data_batch_1.bin … data_batch_5.bin, test_batch.bin)"
                .into(),
        });
    }
    let train_files: Vec<PathBuf> = (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect();
    let test_files = vec![dir.join("test_batch.bin")];
    Ok(Dataset {
        train: read_cifar_files(&train_files, train)?,
        test: read_cifar_files(&test_files, test)?,
        classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    })
}

fn read_cifar_files(files: &[PathBuf], limit: Option<usize>) -> Result<Split, DataError> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let limit = limit.unwrap_or(usize::MAX);
    for path in files {
        if labels.len() >= limit {
            break;
        }
        let bytes =
            std::fs::read(path).map_err(|e| DataError { path: path.clone(), detail: format!("cannot read: {e}") })?;
        if bytes.is_empty() || bytes.len() % CIFAR_RECORD != 0 {
            return Err(DataError {
                path: path.clone(),
                detail: format!(
                    "truncated or not a CIFAR-10 binary batch: {} bytes is not a multiple of the {CIFAR_RECORD}-byte record",
                    bytes.len()
                ),
            });
        }
        for (i, rec) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
            if labels.len() >= limit {
                break;
            }
            if rec[0] > 9 {
                return Err(DataError {
                    path: path.clone(),
                    detail: format!("record {i}: label {} is not a CIFAR-10 class (0-9)", rec[0]),
                });
            }
            labels.push(rec[0]);
            images.extend_from_slice(&rec[1..]);
        }
    }
    Ok(Split { images, labels, height: 32, width: 32 })
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
        for c in 0..10u8 {
            assert_eq!(a.train.labels.iter().filter(|&&l| l == c).count(), 4);
        }
        // Shapes differ between two images of the same class.
        assert_ne!(a.train.image(0), a.train.image(10));
    }

    #[test]
    fn cifar_binary_reads_and_rejects_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = vec![0u8; CIFAR_RECORD * 3];
        for (i, r) in rec.chunks_exact_mut(CIFAR_RECORD).enumerate() {
            r[0] = i as u8 + 1;
            r[1] = 200 + i as u8;
        }
        for i in 1..=5 {
            std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), &rec).unwrap();
        }
        std::fs::write(dir.path().join("test_batch.bin"), &rec[..CIFAR_RECORD]).unwrap();
        let d = cifar10_bin(dir.path(), Some(7), None).unwrap();
        assert_eq!(d.train.len(), 7);
        assert_eq!(d.test.len(), 1);
        assert_eq!(&d.train.labels[..4], &[1, 2, 3, 1]);
        assert_eq!(d.train.image(1)[0], 201);

        std::fs::write(dir.path().join("data_batch_2.bin"), &rec[..100]).unwrap();
        let err = cifar10_bin(dir.path(), None, None).unwrap_err();
        assert!(err.path.ends_with("data_batch_2.bin"), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");

        let missing = cifar10_bin(&dir.path().join("nope"), None, None).unwrap_err();
        assert!(missing.to_string().contains("cifar-10-batches-bin"), "{missing}");
    }
}
