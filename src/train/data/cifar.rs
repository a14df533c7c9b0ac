//! CIFAR-10 and CIFAR-100 from the official releases.
//!
//! Both releases are read: the binary one (`cifar-10-batches-bin`:
//! `data_batch_1.bin` … `test_batch.bin`, records of a label byte and 3072
//! pixel bytes; `cifar-100-binary`: `train.bin`/`test.bin`, a coarse and a fine
//! label byte per record) and the python one that torchvision downloads
//! (`cifar-10-batches-py`, `cifar-100-python`: pickled dicts holding a uint8
//! array `data` of N x 3072 and a list of `labels`/`fine_labels`).
//!
//! Where: `dataset.path` may name the release folder itself or a folder that
//! holds it (torchvision's `root`); then the cache folder
//! (`$SWEEP_CACHE/datasets`, by default `~/.cache/sweep/datasets`) is searched.
//! When neither has it, the python archive is downloaded once into the cache
//! (`$SWEEP_DATA_URL`, by default the publisher's site), checked against the
//! published md5, and unpacked there; the archive is kept so the download
//! happens once. Unpacking goes to a temporary folder that is renamed into
//! place, so an interrupted unpack leaves nothing half-written behind.

use super::{pickle, DataError, Dataset, Split};
use crate::spec::DatasetName;
use std::path::{Path, PathBuf};

/// CIFAR-10's class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// CIFAR-100's fine class names, in label order.
pub const CIFAR100_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// One dataset's two releases and its download.
#[derive(Debug, Clone, Copy)]
pub struct Release {
    /// `cifar10` or `cifar100`.
    pub name: &'static str,
    /// Folder of the binary release.
    pub bin_dir: &'static str,
    /// Training files of the binary release.
    pub bin_train: &'static [&'static str],
    /// Test file of the binary release.
    pub bin_test: &'static str,
    /// Label bytes before the pixels in a binary record (the label used is the last).
    pub label_bytes: usize,
    /// Folder of the python release.
    pub py_dir: &'static str,
    /// Training files of the python release.
    pub py_train: &'static [&'static str],
    /// Test file of the python release.
    pub py_test: &'static str,
    /// Key of the labels in the python dicts.
    pub py_labels: &'static str,
    /// The python archive.
    pub archive: &'static str,
    /// Its published md5.
    pub md5: &'static str,
    /// Number of classes.
    pub classes: usize,
    /// Images in each training file and in the test file of the official release.
    pub records: (usize, usize),
}

/// CIFAR-10.
pub const CIFAR10: Release = Release {
    name: "cifar10",
    bin_dir: "cifar-10-batches-bin",
    bin_train: &["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"],
    bin_test: "test_batch.bin",
    label_bytes: 1,
    py_dir: "cifar-10-batches-py",
    py_train: &["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
    py_test: "test_batch",
    py_labels: "labels",
    archive: "cifar-10-python.tar.gz",
    md5: "c58f30108f718f92721af3b95e74349a",
    classes: 10,
    records: (10_000, 10_000),
};

/// CIFAR-100 (fine labels).
pub const CIFAR100: Release = Release {
    name: "cifar100",
    bin_dir: "cifar-100-binary",
    bin_train: &["train.bin"],
    bin_test: "test.bin",
    label_bytes: 2,
    py_dir: "cifar-100-python",
    py_train: &["train"],
    py_test: "test",
    py_labels: "fine_labels",
    archive: "cifar-100-python.tar.gz",
    md5: "eb9058c3a382ffc7106e4002c42a8d85",
    classes: 100,
    records: (50_000, 10_000),
};

/// Where downloaded datasets go and come from.
#[derive(Debug, Clone)]
pub struct Cache {
    /// The cache folder.
    pub dir: PathBuf,
    /// Base URL of the archives.
    pub base_url: String,
}

impl Cache {
    /// `$SWEEP_CACHE/datasets` (else `$XDG_CACHE_HOME/sweep/datasets`, else
    /// `~/.cache/sweep/datasets`) and `$SWEEP_DATA_URL`.
    pub fn from_env() -> Cache {
        Cache::with_default("https://www.cs.toronto.edu/~kriz")
    }
    /// The cache folder of [`Cache::from_env`], and `$SWEEP_DATA_URL` or else
    /// `default_url` (another dataset's mirror).
    pub fn with_default(default_url: &str) -> Cache {
        let dir = crate::env::cache_dir("datasets");
        let base_url = crate::env::DATA_URL.get().unwrap_or_else(|| default_url.to_owned());
        Cache { dir, base_url: base_url.trim_end_matches('/').to_owned() }
    }
}

enum Found {
    Bin(PathBuf),
    Py(PathBuf),
}

fn locate_found(r: &Release, path: Option<&Path>, cache: &Cache) -> Option<Found> {
    path.and_then(|p| find(r, p)).or_else(|| find(r, &cache.dir))
}

/// The folder of either release: in `path` (the release folder or one
/// holding it), else in the cache.
pub fn locate(r: &Release, path: Option<&Path>, cache: &Cache) -> Option<PathBuf> {
    locate_found(r, path, cache).map(|(Found::Bin(d) | Found::Py(d))| d)
}

fn find(r: &Release, dir: &Path) -> Option<Found> {
    for d in [dir.to_owned(), dir.join(r.bin_dir), dir.join(r.py_dir)] {
        if d.join(r.bin_train[0]).is_file() {
            return Some(Found::Bin(d));
        }
        if d.join(r.py_train[0]).is_file() {
            return Some(Found::Py(d));
        }
    }
    None
}

/// Loads CIFAR-10 or CIFAR-100 from `path`, the cache, or (when `download`) the network.
pub fn load(name: DatasetName, path: Option<&Path>, cache: &Cache, download: bool) -> Result<Dataset, DataError> {
    let r = if name == DatasetName::Cifar100 { CIFAR100 } else { CIFAR10 };
    load_release(&r, path, cache, download)
}

/// [`load`] for a given release description (tests serve their own archive).
pub fn load_release(r: &Release, path: Option<&Path>, cache: &Cache, download: bool) -> Result<Dataset, DataError> {
    let r = *r;
    let found = match locate_found(&r, path, cache) {
        Some(f) => f,
        None if download => fetch(&r, path, cache)?,
        None => return Err(not_found(&r, path, cache, "downloading is off")),
    };
    let classes: Vec<String> = if r.classes == 10 {
        CIFAR10_CLASSES.iter().map(std::string::ToString::to_string).collect()
    } else {
        CIFAR100_CLASSES.iter().map(std::string::ToString::to_string).collect()
    };
    let (files, test_file) = match &found {
        Found::Bin(d) => (r.bin_train.iter().map(|f| d.join(f)).collect::<Vec<_>>(), d.join(r.bin_test)),
        Found::Py(d) => (r.py_train.iter().map(|f| d.join(f)).collect(), d.join(r.py_test)),
    };
    let read = |files: &[PathBuf]| match found {
        Found::Bin(_) => read_bin(&r, files),
        Found::Py(_) => read_py(&r, files),
    };
    let (train, train_counts) = read(&files)?;
    let (test, test_counts) = read(std::slice::from_ref(&test_file))?;
    check_counts(&r, &files, &train_counts, &test_file, test_counts[0])?;
    Ok(Dataset { train, test, val: None, classes, skipped: Vec::new() })
}

/// A file cut on a record boundary reads without error: compare the record
/// counts. Once one file has its official count, this is the real release and
/// every file must have its own; otherwise (a hand-made subset) the training
/// files must at least agree with each other.
fn check_counts(
    r: &Release,
    files: &[PathBuf],
    counts: &[usize],
    test: &Path,
    test_count: usize,
) -> Result<(), DataError> {
    let official = counts.contains(&r.records.0) || test_count == r.records.1;
    let short = |path: &Path, n: usize, expected: usize| {
        DataError::new(path, format!("truncated: {n} images where the {} release has {expected} in this file", r.name))
    };
    if official {
        if let Some((path, &n)) = files.iter().zip(counts).find(|(_, &n)| n != r.records.0) {
            return Err(short(path, n, r.records.0));
        }
        if test_count != r.records.1 {
            return Err(short(test, test_count, r.records.1));
        }
    } else if let Some(&most) = counts.iter().max() {
        if let Some((path, &n)) = files.iter().zip(counts).find(|(_, &n)| n != most) {
            let msg = format!("truncated: {n} images where the other training files have {most}");
            return Err(DataError::new(path, msg));
        }
    }
    Ok(())
}

fn not_found(r: &Release, path: Option<&Path>, cache: &Cache, why: &str) -> DataError {
    let looked = match path {
        Some(p) => {
            format!("{} (or its {} / {} folder) nor in {}", p.display(), r.bin_dir, r.py_dir, cache.dir.display())
        }
        None => cache.dir.display().to_string(),
    };
    DataError::new(
        cache.dir.join(r.archive),
        format!(
            "{} is not in {looked}, and {why}.\n  Without network access, download {}/{} elsewhere and put it at {} \
             (it is unpacked on the next run), or unpack either release into the dataset's `path`",
            r.name,
            cache.base_url,
            r.archive,
            cache.dir.join(r.archive).display()
        ),
    )
}

fn fetch(r: &Release, path: Option<&Path>, cache: &Cache) -> Result<Found, DataError> {
    let archive = cache.dir.join(r.archive);
    let url = format!("{}/{}", cache.base_url, r.archive);
    super::archive_md5(&url, &archive, r.md5, r.name, |why| not_found(r, path, cache, why))?;
    unpack(&archive, &cache.dir, |_| true)?;
    find(r, &cache.dir)
        .ok_or_else(|| DataError::new(&archive, format!("the archive does not hold {}/{}", r.py_dir, r.py_train[0])))
}

/// Unpacks a `.tar.gz` into `dir` through a temporary folder renamed into
/// place: the members `wanted` says (by their path in the archive); each
/// top-level file or folder is moved into `dir` unless it is there already.
pub(crate) fn unpack(archive: &Path, dir: &Path, wanted: impl Fn(&Path) -> bool) -> Result<(), DataError> {
    let err = |e: std::io::Error| DataError::new(archive, format!("cannot unpack: {e}"));
    let tmp = dir.join(format!(".unpack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(err)?;
    let result = (|| {
        let file = std::fs::File::open(archive)?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
        for entry in tar.entries()? {
            let mut entry = entry?;
            if wanted(&entry.path()?) {
                // Within `tmp` only: a member named `../x` or `/x` is skipped.
                entry.unpack_in(&tmp)?;
            }
        }
        for entry in std::fs::read_dir(&tmp)? {
            let entry = entry?;
            let dest = dir.join(entry.file_name());
            if !dest.exists() {
                std::fs::rename(entry.path(), dest)?;
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result.map_err(err)
}

fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| DataError::new(path, format!("cannot read: {e}")))
}

/// The images of `files`, and how many each file held.
fn read_bin(r: &Release, files: &[PathBuf]) -> Result<(Split, Vec<usize>), DataError> {
    let record = r.label_bytes + 3072;
    let mut split = Split::uniform(Vec::new(), Vec::new(), 32, 32);
    let mut counts = Vec::new();
    for path in files {
        let bytes = read(path)?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(DataError::new(
                path,
                format!(
                    "truncated or not a {} binary batch: {} bytes is not a multiple of the {record}-byte record",
                    r.name,
                    bytes.len()
                ),
            ));
        }
        split.images.reserve(bytes.len() / record * 3072);
        counts.push(bytes.len() / record);
        for (i, rec) in bytes.chunks_exact(record).enumerate() {
            let label = rec[r.label_bytes - 1];
            if usize::from(label) >= r.classes {
                return Err(DataError::new(
                    path,
                    format!("record {i}: label {label} is not a {} class (0-{})", r.name, r.classes - 1),
                ));
            }
            split.labels.push(u32::from(label));
            split.images.extend_from_slice(&rec[r.label_bytes..]);
        }
    }
    Ok((split, counts))
}

/// The images of `files`, and how many each file held.
fn read_py(r: &Release, files: &[PathBuf]) -> Result<(Split, Vec<usize>), DataError> {
    let mut split = Split::uniform(Vec::new(), Vec::new(), 32, 32);
    let mut counts = Vec::new();
    for path in files {
        let bad = |detail: String| DataError::new(path, detail);
        let value = pickle::load(&read(path)?).map_err(|e| bad(format!("not a CIFAR python batch: {e}")))?;
        let data = value.get("data").ok_or_else(|| bad("no `data` entry".into()))?;
        let (shape, dtype, bytes) = data.as_array().ok_or_else(|| bad("`data` is not a C-order numpy array".into()))?;
        if dtype.trim_start_matches('|') != "u1" || shape.len() != 2 || shape[1] != 3072 {
            return Err(bad(format!("`data` is a {dtype} array of shape {shape:?}, expected uint8 N x 3072")));
        }
        if bytes.len() != shape[0] * 3072 {
            return Err(bad(format!("truncated: `data` holds {} bytes for {} images of 3072", bytes.len(), shape[0])));
        }
        let labels = value
            .get(r.py_labels)
            .and_then(pickle::Value::as_ints)
            .ok_or_else(|| bad(format!("no integer list `{}`", r.py_labels)))?;
        if labels.len() != shape[0] {
            return Err(bad(format!("{} labels for {} images", labels.len(), shape[0])));
        }
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l < 0 || l as usize >= r.classes) {
            return Err(bad(format!("image {i}: label {l} is not a {} class (0-{})", r.name, r.classes - 1)));
        }
        split.labels.extend(labels.iter().map(|&l| l as u32));
        split.images.extend_from_slice(&bytes);
        counts.push(shape[0]);
    }
    Ok((split, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline(dir: &Path) -> Cache {
        Cache { dir: dir.join("cache"), base_url: "http://127.0.0.1:9".into() }
    }

    #[test]
    fn record_counts_of_the_official_release_are_checked() {
        let files: Vec<PathBuf> = CIFAR10.bin_train.iter().map(PathBuf::from).collect();
        let test = Path::new("test_batch.bin");
        let full = [10_000; 5];
        assert!(check_counts(&CIFAR10, &files, &full, test, 10_000).is_ok());
        // Seven records of one batch survive a copy cut on a record boundary.
        let err = check_counts(&CIFAR10, &files, &[10_000, 10_000, 7, 10_000, 10_000], test, 10_000).unwrap_err();
        assert!(err.path.ends_with("data_batch_3.bin"), "{err}");
        assert!(err.to_string().contains("truncated: 7 images where the cifar10 release has 10000"), "{err}");
        let err = check_counts(&CIFAR10, &files, &full, test, 9_993).unwrap_err();
        assert!(err.path.ends_with("test_batch.bin"), "{err}");
        // A hand-made subset: files that agree are fine.
        assert!(check_counts(&CIFAR10, &files, &[3; 5], test, 1).is_ok());
    }

    #[test]
    fn binary_releases_read_and_reject_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&bin).unwrap();
        let mut rec = vec![0u8; 3073 * 3];
        for (i, r) in rec.chunks_exact_mut(3073).enumerate() {
            r[0] = i as u8 + 1;
            r[1] = 200 + i as u8;
        }
        for f in CIFAR10.bin_train {
            std::fs::write(bin.join(f), &rec).unwrap();
        }
        std::fs::write(bin.join("test_batch.bin"), &rec[..3073]).unwrap();
        // Found through the parent folder, as torchvision's `root`.
        let d = load(DatasetName::Cifar10, Some(dir.path()), &offline(dir.path()), false).unwrap();
        assert_eq!((d.train.len(), d.test.len()), (15, 1));
        assert_eq!(&d.train.labels[..4], &[1, 2, 3, 1]);
        assert_eq!(d.train.image(1)[0], 201);

        // Cut on a record boundary: the other batches have 3 images.
        std::fs::write(bin.join("data_batch_4.bin"), &rec[..3073 * 2]).unwrap();
        let err = load(DatasetName::Cifar10, Some(&bin), &offline(dir.path()), false).unwrap_err();
        assert!(err.path.ends_with("data_batch_4.bin"), "{err}");
        assert!(err.to_string().contains("truncated: 2 images where the other training files have 3"), "{err}");
        std::fs::write(bin.join("data_batch_4.bin"), &rec).unwrap();
        std::fs::write(bin.join("data_batch_2.bin"), &rec[..100]).unwrap();
        let err = load(DatasetName::Cifar10, Some(&bin), &offline(dir.path()), false).unwrap_err();
        assert!(err.path.ends_with("data_batch_2.bin"), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");

        // CIFAR-100: coarse and fine label bytes; the fine one is used.
        let b100 = dir.path().join("cifar-100-binary");
        std::fs::create_dir(&b100).unwrap();
        let mut rec = vec![0u8; 3074 * 2];
        rec[0] = 3;
        rec[1] = 97;
        rec[3074 + 1] = 100;
        std::fs::write(b100.join("train.bin"), &rec[..3074]).unwrap();
        std::fs::write(b100.join("test.bin"), &rec).unwrap();
        let d = load(DatasetName::Cifar100, Some(dir.path()), &offline(dir.path()), false);
        let err = d.unwrap_err();
        assert!(err.path.ends_with("test.bin") && err.to_string().contains("label 100"), "{err}");
        std::fs::write(b100.join("test.bin"), &rec[..3074]).unwrap();
        let d = load(DatasetName::Cifar100, Some(dir.path()), &offline(dir.path()), false).unwrap();
        assert_eq!((d.train.labels.clone(), d.classes.len(), d.classes[97].as_str()), (vec![97], 100, "wolf"));
    }

    #[test]
    fn missing_and_offline_says_what_to_fetch_and_where() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(DatasetName::Cifar10, Some(&dir.path().join("nope")), &offline(dir.path()), true).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cifar-10-python.tar.gz") && msg.contains("download"), "{msg}");
        assert!(msg.contains(&dir.path().join("cache").display().to_string()), "{msg}");
        assert!(!dir.path().join("cache/cifar-10-python.tar.gz").exists());
    }
}
