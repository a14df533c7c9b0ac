//! Datasets: decoded once into memory as uint8 CHW images with labels.
//!
//! * [`synthetic`]: ten classes of coloured shapes and patterns at 32x32 on noisy
//!   backgrounds, each image a pure function of (data seed, split, index), so the
//!   quickstart needs no download and every machine sees the same pixels.
//! * [`cifar`]: CIFAR-10 and CIFAR-100, from either official release (binary or
//!   python) found in the given folder or the cache, else downloaded once and
//!   checked against the published md5.
//! * [`mnist`]: MNIST and Fashion-MNIST from their IDX files (plain or
//!   gzipped, torchvision's `MNIST/raw`), found or downloaded as CIFAR is, the
//!   grey images as RGB.
//! * [`svhn`]: SVHN's cropped digits from its MATLAB files (read by [`mat`]).
//! * [`stl10`]: STL-10's labelled 96x96 images from its binary release.
//! * [`folder`]: torchvision's `ImageFolder` layout (`train/<class>/*.jpg`,
//!   `test/<class>/*.png`, or one tree and a seeded test share), from a folder,
//!   a `.tar` or a `.tar.gz`; JPEG, PNG, PPM, PGM, BMP, TIFF and WebP of any size
//!   (torchvision's extensions).
//!
//! Every image is decoded once, when the dataset is loaded; the worker keeps
//! loaded datasets for the whole sweep, so no epoch decodes anything. Errors
//! name the file at fault. [`Dataset::fingerprint`] says whether two loads
//! gave the same data (a run resumed after its folder changed is not).

pub mod cifar;
mod fingerprint;
pub mod folder;
pub mod mat;
pub mod mnist;
pub mod pickle;
pub mod stl10;
pub mod svhn;
mod synthetic;

pub use synthetic::{synthetic, SYNTHETIC_CLASSES, SYNTHETIC_TEST, SYNTHETIC_TRAIN};

use crate::spec::{DatasetName, DatasetSpec};
use std::path::PathBuf;

/// A dataset problem, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct DataError {
    /// The file or folder at fault.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub detail: String,
}

impl DataError {
    pub(crate) fn new(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        DataError { path: path.into(), detail: detail.into() }
    }
}

/// The images of one split: uint8, channel-major (CHW), RGB.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// The images' bytes, one after the other.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u32>,
    /// Height of every image, or 0 when the sizes vary (see `sizes`).
    pub height: usize,
    /// Width of every image, or 0 when the sizes vary.
    pub width: usize,
    /// Per-image (height, width) and byte offset, only when the sizes vary.
    pub sizes: Vec<(u32, u32, usize)>,
    /// Where each image came from (folders and archives; empty otherwise).
    pub files: Vec<String>,
    /// The SHA-256 of each image's file (folders and archives; empty
    /// otherwise, where the pixels are the source): what the dataset's
    /// fingerprint is made of, since a decoder need not give the same pixels
    /// on every CPU.
    pub digests: Vec<[u8; 32]>,
}

impl Split {
    /// A split of images that all have the same size.
    pub fn uniform(images: Vec<u8>, labels: Vec<u32>, height: usize, width: usize) -> Split {
        Split { images, labels, height, width, sizes: Vec::new(), files: Vec::new(), digests: Vec::new() }
    }
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether the split has no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Whether every image has the same size.
    pub fn is_uniform(&self) -> bool {
        self.sizes.is_empty()
    }
    /// (height, width) of image `i`.
    pub fn size(&self, i: usize) -> (usize, usize) {
        match self.sizes.get(i) {
            Some(&(h, w, _)) => (h as usize, w as usize),
            _ => (self.height, self.width),
        }
    }
    /// The bytes of image `i` (CHW).
    pub fn image(&self, i: usize) -> &[u8] {
        if self.sizes.is_empty() {
            let n = 3 * self.height * self.width;
            &self.images[i * n..(i + 1) * n]
        } else {
            let (h, w, off) = self.sizes[i];
            &self.images[off..off + 3 * h as usize * w as usize]
        }
    }
    /// A name for image `i` in messages: its file, or its index.
    pub fn source(&self, i: usize) -> String {
        self.files.get(i).cloned().unwrap_or_else(|| format!("image {i}"))
    }
    /// Each distinct image size with the first image that has it.
    pub fn distinct_sizes(&self) -> Vec<(usize, (usize, usize))> {
        if self.sizes.is_empty() {
            return if self.is_empty() { Vec::new() } else { vec![(0, (self.height, self.width))] };
        }
        let mut seen = std::collections::HashMap::new();
        let mut out = Vec::new();
        for i in 0..self.len() {
            let s = self.size(i);
            if seen.insert(s, i).is_none() {
                out.push((i, s));
            }
        }
        out
    }
    /// The first `n` images.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len() {
            return;
        }
        let end = if self.sizes.is_empty() { n * 3 * self.height * self.width } else { self.sizes[n].2 };
        self.images.truncate(end);
        self.labels.truncate(n);
        self.sizes.truncate(n);
        self.files.truncate(n);
        self.digests.truncate(n);
    }
    /// The images `indices`, in that order.
    #[must_use]
    pub fn select(&self, indices: &[usize]) -> Split {
        let mut out = Split { height: self.height, width: self.width, ..Split::default() };
        for &i in indices {
            if !self.sizes.is_empty() {
                let (h, w) = self.size(i);
                out.sizes.push((h as u32, w as u32, out.images.len()));
            }
            out.images.extend_from_slice(self.image(i));
            out.labels.push(self.labels[i]);
            if let Some(f) = self.files.get(i) {
                out.files.push(f.clone());
            }
            if let Some(d) = self.digests.get(i) {
                out.digests.push(*d);
            }
        }
        out
    }
    /// Appends one image, with its file and that file's SHA-256 if it has one.
    pub fn push(&mut self, chw: &[u8], h: usize, w: usize, label: u32, file: Option<(String, [u8; 32])>) {
        if self.is_empty() && self.sizes.is_empty() {
            (self.height, self.width) = (h, w);
        }
        if self.sizes.is_empty() && (h, w) != (self.height, self.width) {
            // The first image of another size: switch to per-image sizes.
            let (h0, w0) = (self.height, self.width);
            self.sizes = (0..self.len()).map(|i| (h0 as u32, w0 as u32, i * 3 * h0 * w0)).collect();
            (self.height, self.width) = (0, 0);
        }
        if !self.sizes.is_empty() {
            self.sizes.push((h as u32, w as u32, self.images.len()));
        }
        self.images.extend_from_slice(chw);
        self.labels.push(label);
        if let Some((f, digest)) = file {
            self.files.push(f);
            self.digests.push(digest);
        }
    }
}

/// A loaded dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Training split.
    pub train: Split,
    /// Test split.
    pub test: Split,
    /// A validation split of its own (an image folder's `val/` beside its
    /// `test/`); else a run's `val_split` holds out a share of `train`.
    pub val: Option<Split>,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// The images left out because they cannot be read or decoded, as
    /// `path: why` relative to the folder (`skip_unreadable`; else empty).
    pub skipped: Vec<String>,
}

/// Downloads `url` to `dest` (unless it is there), checked against its
/// published `md5` before it is renamed into place; `offline(why)` is the
/// error when the server cannot be reached.
pub(crate) fn download_md5(
    url: &str,
    dest: &std::path::Path,
    md5: &str,
    offline: impl FnOnce(&str) -> DataError,
) -> Result<(), DataError> {
    let verify = |d: &crate::fetch::Digests| {
        if d.md5 == md5 {
            Ok(())
        } else {
            Err(format!("its md5 is {}, not the published {md5}", d.md5))
        }
    };
    crate::fetch::download(url, dest, &verify, true).map_err(|e| match e {
        crate::fetch::FetchError::Unreachable { detail, .. } => {
            offline(&format!("downloading {url} failed ({detail})"))
        }
        other => DataError::new(dest, other.to_string()),
    })
}

/// Where a dataset that sweep downloads is on this machine, or what its
/// first run would download (`sweep plan` says, so that a node without
/// network access is found out before a sweep is queued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whereabouts {
    /// The folder it is read from.
    Found(PathBuf),
    /// Not here: the first run downloads `url` (about `size`) into `into`.
    Download {
        /// What is fetched first (the archive, or the first of the files).
        url: String,
        /// Roughly how much is fetched in all.
        size: &'static str,
        /// The cache folder it goes to.
        into: PathBuf,
    },
}

/// [`Whereabouts`] of `spec`'s dataset; `None` for the generated one and image folders.
pub fn whereabouts(spec: &DatasetSpec) -> Option<Whereabouts> {
    let path = spec.path.as_deref().map(std::path::Path::new);
    let (found, cache, file, size) = match spec.name {
        DatasetName::Synthetic | DatasetName::Folder => return None,
        DatasetName::Cifar10 | DatasetName::Cifar100 => {
            let r = if spec.name == DatasetName::Cifar100 { cifar::CIFAR100 } else { cifar::CIFAR10 };
            let cache = cifar::Cache::from_env();
            (cifar::locate(&r, path, &cache), cache, r.archive.to_owned(), "170 MB")
        }
        DatasetName::Mnist | DatasetName::FashionMnist => {
            let (r, size) =
                if spec.name == DatasetName::Mnist { (mnist::MNIST, "12 MB") } else { (mnist::FASHION_MNIST, "30 MB") };
            let cache = cifar::Cache::with_default(r.url);
            (mnist::locate(&r, path, &cache), cache, format!("{}.gz", r.files[0].0), size)
        }
        DatasetName::Svhn => {
            let cache = cifar::Cache::with_default(svhn::URL);
            (svhn::locate(path, &cache, &svhn::FILES), cache, svhn::FILES[0].0.to_owned(), "250 MB")
        }
        DatasetName::Stl10 => {
            let cache = cifar::Cache::with_default(stl10::URL);
            (stl10::locate(path, &cache), cache, stl10::ARCHIVE.0.to_owned(), "2.6 GB")
        }
    };
    Some(match found {
        Some(dir) => Whereabouts::Found(dir),
        None => Whereabouts::Download { url: format!("{}/{file}", cache.base_url), size, into: cache.dir },
    })
}

/// The archive `dest` of dataset `name`: checked against its published `md5`
/// when it is there already (put by hand, or kept from an earlier run killed
/// while unpacking), else downloaded from `url` by [`download_md5`].
pub(crate) fn archive_md5(
    url: &str,
    dest: &std::path::Path,
    md5: &str,
    name: &str,
    offline: impl FnOnce(&str) -> DataError,
) -> Result<(), DataError> {
    if dest.exists() {
        let actual = crate::fetch::md5_file(dest).map_err(|e| DataError::new(dest, format!("cannot read: {e}")))?;
        if actual != md5 {
            let why =
                format!("its md5 is {actual}, not the published {md5}: not the official {name} archive; delete it");
            return Err(DataError::new(dest, why));
        }
        return Ok(());
    }
    tracing::info!("{name} not found locally: downloading {url}");
    download_md5(url, dest, md5, offline)
}

/// How a folder dataset's settings read it.
pub fn folder_options(spec: &DatasetSpec) -> folder::FolderOptions {
    folder::FolderOptions {
        test_split: spec.test_split,
        seed: spec.data_seed.unwrap_or(0),
        skip_unreadable: spec.skip_unreadable,
        resize: spec.resize,
    }
}

/// Loads (or generates) a dataset.
pub fn load(spec: &DatasetSpec) -> Result<Dataset, DataError> {
    let mut ds = match spec.name {
        DatasetName::Synthetic => {
            return Ok(synthetic(
                spec.train_size.unwrap_or(SYNTHETIC_TRAIN),
                spec.test_size.unwrap_or(SYNTHETIC_TEST),
                spec.data_seed.unwrap_or(0),
            ))
        }
        DatasetName::Cifar10 | DatasetName::Cifar100 => {
            cifar::load(spec.name, spec.path.as_deref().map(std::path::Path::new), &cifar::Cache::from_env(), true)?
        }
        DatasetName::Mnist | DatasetName::FashionMnist => {
            let r = if spec.name == DatasetName::Mnist { mnist::MNIST } else { mnist::FASHION_MNIST };
            let path = spec.path.as_deref().map(std::path::Path::new);
            mnist::load(&r, path, &cifar::Cache::with_default(r.url), true)?
        }
        DatasetName::Svhn => {
            let path = spec.path.as_deref().map(std::path::Path::new);
            svhn::load(path, &cifar::Cache::with_default(svhn::URL), &svhn::FILES, true)?
        }
        DatasetName::Stl10 => {
            let path = spec.path.as_deref().map(std::path::Path::new);
            stl10::load(path, &cifar::Cache::with_default(stl10::URL), stl10::ARCHIVE, true)?
        }
        DatasetName::Folder => {
            let path = spec.path.as_deref().unwrap_or_default();
            folder::load(std::path::Path::new(path), &folder_options(spec))?
        }
    };
    // CIFAR's, MNIST's, SVHN's and STL-10's files are in random order, so their first N images are a fair
    // sample; an image folder is sorted by class, so it gets a seeded random one.
    let folder = spec.name == DatasetName::Folder;
    let seed = spec.data_seed.unwrap_or(0);
    for (split, n, which) in [(&mut ds.train, spec.train_size, 0u64), (&mut ds.test, spec.test_size, 1)] {
        match n {
            Some(n) if folder && n < split.len() => {
                let mut idx: Vec<usize> = (0..split.len()).collect();
                crate::train::rng::Rng::derive(&[crate::train::rng::stream::DATA, seed, 0x5_1ce, which])
                    .shuffle(&mut idx);
                idx.truncate(n);
                idx.sort_unstable();
                *split = split.select(&idx);
            }
            Some(n) => split.truncate(n),
            None => {}
        }
    }
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_sizes_switch_to_per_image_offsets() {
        let mut s = Split::default();
        s.push(&[1; 12], 2, 2, 0, Some(("a.png".into(), [1; 32])));
        s.push(&[2; 12], 2, 2, 1, Some(("b.png".into(), [2; 32])));
        assert!(s.is_uniform());
        s.push(&[3; 18], 2, 3, 2, Some(("c.png".into(), [3; 32])));
        assert!(!s.is_uniform());
        assert_eq!((s.size(1), s.size(2)), ((2, 2), (2, 3)));
        assert_eq!(s.image(1), &[2; 12]);
        assert_eq!(s.image(2), &[3; 18]);
        assert_eq!(s.distinct_sizes(), vec![(0, (2, 2)), (2, (2, 3))]);
        let picked = s.select(&[2, 0]);
        assert_eq!(
            (picked.image(0), picked.image(1), picked.source(0).as_str()),
            (&[3u8; 18][..], &[1u8; 12][..], "c.png")
        );
        s.truncate(2);
        assert_eq!((s.len(), s.images.len()), (2, 24));
    }
}
