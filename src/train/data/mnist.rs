//! MNIST and Fashion-MNIST from their IDX files, as torchvision downloads them.
//!
//! Each is four files: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each either as
//! published (`.gz`) or unpacked (torchvision keeps both in `MNIST/raw`,
//! `FashionMNIST/raw`). An IDX file is a big-endian header (a magic number
//! giving the element type and the number of dimensions, then each dimension)
//! and the elements: here 60,000 (10,000) greyscale images of 28x28 bytes, and
//! as many label bytes.
//!
//! Where: `dataset.path` may name the folder holding the files, or a folder
//! that holds `MNIST/raw` (torchvision's `root`); then the cache
//! (`$SWEEP_CACHE/datasets/MNIST/raw`). When neither has them, the missing
//! `.gz` files are downloaded there from torchvision's mirror (or
//! `$SWEEP_DATA_URL`), each checked against its published md5 and renamed
//! into place only when complete.
//!
//! The images become RGB with the grey value in every channel, as PIL's
//! `convert("RGB")` does (and torchvision's `Grayscale(3)`), so every model
//! and augmentation takes them unchanged.

use super::cifar::Cache;
use super::{DataError, Dataset, Split};
use std::io::Read;
use std::path::{Path, PathBuf};

/// One IDX dataset: its files, checksums, mirror and classes.
#[derive(Debug, Clone, Copy)]
pub struct IdxRelease {
    /// `mnist` or `fashion-mnist`: the name in the sweep file.
    pub name: &'static str,
    /// torchvision's folder under its `root` (`MNIST`, `FashionMNIST`).
    pub folder: &'static str,
    /// Training images, training labels, test images, test labels: each
    /// file's name without `.gz`, and the published md5 of the `.gz`.
    pub files: [(&'static str, &'static str); 4],
    /// The mirror the `.gz` files are downloaded from.
    pub url: &'static str,
    /// Class names, in label order.
    pub classes: [&'static str; 10],
}

const IDX_FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// MNIST, torchvision's mirror and class names.
pub const MNIST: IdxRelease = IdxRelease {
    name: "mnist",
    folder: "MNIST",
    files: [
        (IDX_FILES[0], "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        (IDX_FILES[1], "d53e105ee54ea40749a09fcbcd1e9432"),
        (IDX_FILES[2], "9fb629c4189551a2d022fa330f9573f3"),
        (IDX_FILES[3], "ec29112dd5afa0611ce80d1b7f02629c"),
    ],
    url: "https://ossci-datasets.s3.amazonaws.com/mnist",
    classes: [
        "0 - zero",
        "1 - one",
        "2 - two",
        "3 - three",
        "4 - four",
        "5 - five",
        "6 - six",
        "7 - seven",
        "8 - eight",
        "9 - nine",
    ],
};

/// Fashion-MNIST (Zalando Research), torchvision's mirror and class names.
pub const FASHION_MNIST: IdxRelease = IdxRelease {
    name: "fashion-mnist",
    folder: "FashionMNIST",
    files: [
        (IDX_FILES[0], "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        (IDX_FILES[1], "25c81989df183df01b3e8a0aad5dffbe"),
        (IDX_FILES[2], "bef4ecab320f06d8554ea6380940ec79"),
        (IDX_FILES[3], "bb300cfdad3c16e7a12a480ee83cd310"),
    ],
    url: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    classes: ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
};

/// The largest image side an IDX file may declare (the sweep file's limit on
/// image sides): a larger one is a damaged header.
const MAX_SIDE: usize = crate::spec::limits::MAX_IMAGE_SIDE;

/// The folder that holds the dataset: among `path`'s candidates the first
/// with the training images (plain or `.gz`; a missing file is then an
/// error), else the cache's if it has all four (a download cut short is
/// completed).
pub fn locate(r: &IdxRelease, path: Option<&Path>, cache: &Cache) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = path {
        candidates.extend([p.to_owned(), p.join("raw"), p.join(r.folder).join("raw"), p.join(r.folder)]);
    }
    let given = candidates.into_iter().find(|d| present(d, r.files[0].0).is_some());
    let raw = cache.dir.join(r.folder).join("raw");
    given.or_else(|| r.files.iter().all(|(f, _)| present(&raw, f).is_some()).then_some(raw))
}

/// `dir/name` if it is a file, else `dir/name.gz` if that is.
fn present(dir: &Path, name: &str) -> Option<PathBuf> {
    let plain = dir.join(name);
    if plain.is_file() {
        return Some(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    gz.is_file().then_some(gz)
}

/// Loads MNIST or Fashion-MNIST from `path`, the cache, or (when `download`)
/// `cache`'s mirror ([`Cache::with_default`] of the release's `url`).
pub fn load(r: &IdxRelease, path: Option<&Path>, cache: &Cache, download: bool) -> Result<Dataset, DataError> {
    let dir = match locate(r, path, cache) {
        Some(d) => d,
        None if download => fetch(r, path, cache)?,
        None => return Err(not_found(r, path, cache, "downloading is off")),
    };
    let file = |i: usize| {
        present(&dir, r.files[i].0).ok_or_else(|| {
            DataError::new(
                dir.join(r.files[i].0),
                format!(
                    "missing: {} keeps its four files together, and this folder has {} but not this one (plain or .gz)",
                    r.name, r.files[0].0
                ),
            )
        })
    };
    let train = split(r, &file(0)?, &file(1)?)?;
    let test = split(r, &file(2)?, &file(3)?)?;
    if (test.height, test.width) != (train.height, train.width) {
        return Err(DataError::new(
            file(2)?,
            format!(
                "its images are {}x{}, the training images {}x{}: not one dataset",
                test.height, test.width, train.height, train.width
            ),
        ));
    }
    let classes = r.classes.iter().map(|c| (*c).to_owned()).collect();
    Ok(Dataset { train, test, val: None, classes, skipped: Vec::new() })
}

/// One split: its images (grey replicated into RGB, CHW) and labels.
fn split(r: &IdxRelease, images: &Path, labels: &Path) -> Result<Split, DataError> {
    let (dims, pixels) = idx(images, 3)?;
    let (label_dims, label_bytes) = idx(labels, 1)?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    if h == 0 || w == 0 || h > MAX_SIDE || w > MAX_SIDE {
        return Err(DataError::new(images, format!("the header says {h}x{w} images: not an image file of {}", r.name)));
    }
    if label_dims[0] != n {
        return Err(DataError::new(
            labels,
            format!("{} labels for the {n} images of {}", label_dims[0], images.display()),
        ));
    }
    if let Some((i, l)) = label_bytes.iter().enumerate().find(|(_, &l)| usize::from(l) >= r.classes.len()) {
        return Err(DataError::new(labels, format!("label {i} is {l}, not a {} class (0-9)", r.name)));
    }
    let plane = h * w;
    let mut rgb = Vec::new();
    rgb.try_reserve_exact(n * 3 * plane)
        .map_err(|_| DataError::new(images, format!("{n} images of {h}x{w} do not fit in memory")))?;
    for grey in pixels.chunks_exact(plane) {
        for _ in 0..3 {
            rgb.extend_from_slice(grey);
        }
    }
    Ok(Split::uniform(rgb, label_bytes.into_iter().map(u32::from).collect(), h, w))
}

/// The dimensions and bytes of an IDX file of unsigned bytes with `rank`
/// dimensions (`.gz` decompressed). The header is read first and the body only
/// as far as the header says (and one byte more, to tell a damaged file), so a
/// small `.gz` that unpacks to far more than an IDX file holds is an error, not
/// a machine's memory; a header that claims more than this process may use is
/// refused before its body is read.
fn idx(path: &Path, rank: usize) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bad = |detail: String| DataError::new(path, detail);
    let cannot = |e: std::io::Error| bad(format!("cannot read: {e} (a damaged download? delete it to fetch it again)"));
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let header = 4 + 4 * rank;
    let mut head = Vec::with_capacity(header);
    (&mut reader).take(header as u64).read_to_end(&mut head).map_err(cannot)?;
    let kind = if rank == 1 { "label" } else { "image" };
    if head.len() < header || head[..2] != [0, 0] || head[2] != 0x08 || usize::from(head[3]) != rank {
        let magic: String = head
            .iter()
            .take(4)
            .flat_map(|b| [b >> 4, b & 15])
            .map(|d| char::from_digit(u32::from(d), 16).unwrap_or('?'))
            .collect();
        return Err(bad(format!(
            "not an IDX {kind} file: it starts {magic}, where an IDX file of unsigned bytes in {rank} dimension{} \
             starts 000008{rank:02x}",
            if rank == 1 { "" } else { "s" }
        )));
    }
    let dims: Vec<usize> =
        head[4..].chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    let shape = dims.iter().map(ToString::to_string).collect::<Vec<_>>().join("x");
    let expected = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
    let free = crate::memory::available();
    let Some(expected) = expected.filter(|&e| free.is_none_or(|f| e <= f)) else {
        let free = free.map_or_else(|| "what it may use".to_owned(), crate::memory::describe);
        return Err(bad(format!(
            "damaged: the header says {shape} bytes, more than this process may use ({free}) and than any IDX file holds"
        )));
    };
    let mut bytes = Vec::new();
    reader.take(expected + 1).read_to_end(&mut bytes).map_err(cannot)?;
    let body = bytes.len() as u64;
    if body != expected {
        let (why, holds) = if body < expected {
            ("truncated", format!("the file holds {body}"))
        } else {
            ("damaged", "the file holds more".to_owned())
        };
        return Err(bad(format!("{why}: the header says {shape} bytes, {holds} after it")));
    }
    Ok((dims, bytes))
}

fn not_found(r: &IdxRelease, path: Option<&Path>, cache: &Cache, why: &str) -> DataError {
    let raw = cache.dir.join(r.folder).join("raw");
    let looked = match path {
        Some(p) => format!("{} (or its raw/, {}/raw/ folder) nor in {}", p.display(), r.folder, raw.display()),
        None => raw.display().to_string(),
    };
    let names = r.files.iter().map(|(f, _)| format!("{f}.gz")).collect::<Vec<_>>().join(", ");
    DataError::new(
        &raw,
        format!(
            "{} is not in {looked}, and {why}.\n  Without network access, download {names} from {} elsewhere and put \
             them in {}, or in the dataset's `path`",
            r.name,
            cache.base_url,
            raw.display()
        ),
    )
}

/// Downloads the files the cache lacks into `MNIST/raw`, each checked against
/// its md5 before it is renamed into place.
fn fetch(r: &IdxRelease, path: Option<&Path>, cache: &Cache) -> Result<PathBuf, DataError> {
    let raw = cache.dir.join(r.folder).join("raw");
    for &(name, md5) in &r.files {
        if present(&raw, name).is_some() {
            continue;
        }
        let url = format!("{}/{name}.gz", cache.base_url);
        tracing::info!("{} not found locally: downloading {url}", r.name);
        super::download_md5(&url, &raw.join(format!("{name}.gz")), md5, |why| not_found(r, path, cache, why))?;
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IDX file of bytes with these dimensions.
    pub(crate) fn idx_bytes(dims: &[u32], body: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(body);
        b
    }

    fn offline(dir: &Path) -> Cache {
        Cache { dir: dir.join("cache"), base_url: "http://127.0.0.1:9".into() }
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn idx_files_read_plain_or_gzipped_grey_into_rgb() {
        let dir = tempfile::tempdir().unwrap();
        // torchvision's root: MNIST/raw under it; the training files gzipped, the test files plain.
        let raw = dir.path().join("MNIST/raw");
        let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| i as u8 * 4).collect();
        write(&raw, "train-images-idx3-ubyte.gz", &gz(&idx_bytes(&[3, 4, 5], &pixels)));
        write(&raw, "train-labels-idx1-ubyte.gz", &gz(&idx_bytes(&[3], &[7, 0, 9])));
        write(&raw, "t10k-images-idx3-ubyte", &idx_bytes(&[1, 4, 5], &pixels[20..40]));
        write(&raw, "t10k-labels-idx1-ubyte", &idx_bytes(&[1], &[2]));
        let d = load(&MNIST, Some(dir.path()), &offline(dir.path()), false).unwrap();
        assert_eq!((d.train.len(), d.test.len(), d.train.height, d.train.width), (3, 1, 4, 5));
        assert_eq!((d.train.labels.clone(), d.test.labels.clone()), (vec![7, 0, 9], vec![2]));
        // Image 1: its 20 grey bytes in each of the three channels.
        let grey = &pixels[20..40];
        assert_eq!(d.train.image(1), [grey, grey, grey].concat().as_slice());
        assert_eq!(d.test.image(0), d.train.image(1));
        assert_eq!((d.classes.len(), d.classes[7].as_str()), (10, "7 - seven"));
        // The same folder named directly.
        assert_eq!(load(&MNIST, Some(&raw), &offline(dir.path()), false).unwrap().train.labels, vec![7, 0, 9]);
    }

    #[test]
    fn damaged_idx_files_are_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        let ok = |raw: &Path| {
            write(raw, "train-images-idx3-ubyte", &idx_bytes(&[2, 2, 2], &[1; 8]));
            write(raw, "train-labels-idx1-ubyte", &idx_bytes(&[2], &[1, 2]));
            write(raw, "t10k-images-idx3-ubyte", &idx_bytes(&[1, 2, 2], &[1; 4]));
            write(raw, "t10k-labels-idx1-ubyte", &idx_bytes(&[1], &[3]));
        };
        let err = || {
            let e = load(&FASHION_MNIST, Some(dir.path()), &offline(dir.path()), false).unwrap_err();
            (e.path.file_name().unwrap().to_string_lossy().into_owned(), e.to_string())
        };
        ok(&raw);
        assert!(load(&FASHION_MNIST, Some(dir.path()), &offline(dir.path()), false).is_ok());

        write(&raw, "train-images-idx3-ubyte", &idx_bytes(&[2, 2, 2], &[1; 7]));
        let (file, msg) = err();
        assert_eq!(file, "train-images-idx3-ubyte");
        assert!(msg.contains("truncated: the header says 2x2x2 bytes, the file holds 7"), "{msg}");

        ok(&raw);
        write(&raw, "train-labels-idx1-ubyte", &idx_bytes(&[2], &[1, 10]));
        let (file, msg) = err();
        assert!(file == "train-labels-idx1-ubyte" && msg.contains("label 1 is 10, not a fashion-mnist class"), "{msg}");

        ok(&raw);
        write(&raw, "t10k-labels-idx1-ubyte", &idx_bytes(&[2], &[1, 2]));
        let (file, msg) = err();
        assert!(file == "t10k-labels-idx1-ubyte" && msg.contains("2 labels for the 1 images"), "{msg}");

        ok(&raw);
        write(&raw, "t10k-images-idx3-ubyte", b"<html>Access denied</html>");
        let (file, msg) = err();
        assert!(file == "t10k-images-idx3-ubyte" && msg.contains("not an IDX image file: it starts 3c68746d"), "{msg}");

        ok(&raw);
        write(&raw, "t10k-images-idx3-ubyte", &idx_bytes(&[1, 1, 4], &[1; 4]));
        let (file, msg) = err();
        assert!(file == "t10k-images-idx3-ubyte" && msg.contains("1x4, the training images 2x2"), "{msg}");

        ok(&raw);
        std::fs::remove_file(raw.join("t10k-labels-idx1-ubyte")).unwrap();
        let (file, msg) = err();
        assert!(file == "t10k-labels-idx1-ubyte" && msg.contains("missing"), "{msg}");

        ok(&raw);
        write(&raw, "train-images-idx3-ubyte.gz", b"not gzip");
        std::fs::remove_file(raw.join("train-images-idx3-ubyte")).unwrap();
        let (file, msg) = err();
        assert!(file == "train-images-idx3-ubyte.gz" && msg.contains("cannot read"), "{msg}");

        // A small .gz that unpacks to far more than its header says is read no further than that.
        let mut bomb = idx_bytes(&[2, 2, 2], &[1; 8]);
        bomb.resize(bomb.len() + (16 << 20), 0);
        let bomb = gz(&bomb);
        assert!(bomb.len() < 1 << 20);
        write(&raw, "train-images-idx3-ubyte.gz", &bomb);
        let (file, msg) = err();
        assert!(file == "train-images-idx3-ubyte.gz", "{file}");
        assert!(msg.contains("damaged: the header says 2x2x2 bytes, the file holds more after it"), "{msg}");

        // A header that claims more than this process may use is refused before the body is read.
        std::fs::remove_file(raw.join("train-images-idx3-ubyte.gz")).unwrap();
        write(&raw, "train-images-idx3-ubyte", &idx_bytes(&[u32::MAX, 4096, 4096], &[1; 8]));
        let (file, msg) = err();
        assert_eq!(file, "train-images-idx3-ubyte");
        let said = if crate::memory::available().is_some() {
            "damaged: the header says 4294967295x4096x4096 bytes, more than this process may use"
        } else {
            "truncated: the header says 4294967295x4096x4096 bytes, the file holds 8"
        };
        assert!(msg.contains(said), "{msg}");
    }

    #[test]
    fn missing_and_offline_says_what_to_fetch_and_where() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&MNIST, Some(&dir.path().join("nope")), &offline(dir.path()), true).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("t10k-labels-idx1-ubyte.gz") && msg.contains("download"), "{msg}");
        assert!(msg.contains(&dir.path().join("cache/MNIST/raw").display().to_string()), "{msg}");
        assert!(!dir.path().join("cache/MNIST/raw/train-images-idx3-ubyte.gz").exists());
    }
}
