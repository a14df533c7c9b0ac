//! SVHN (Street View House Numbers), the cropped-digits release torchvision
//! reads: `train_32x32.mat` (73,257 images) and `test_32x32.mat` (26,032),
//! MATLAB files holding `X`, uint8 32x32x3xN in MATLAB's column-major order,
//! and `y`, the labels 1-10 where 10 is the digit 0 (torchvision's labels are
//! the digits, as here).
//!
//! Where: `dataset.path` (torchvision's `root`: the folder holding the two
//! files), then the cache (`$SWEEP_CACHE/datasets/svhn`); else the missing
//! files are downloaded there from the publisher (or `$SWEEP_DATA_URL`), each
//! checked against its published md5.

use super::cifar::Cache;
use super::{mat, DataError, Dataset, Split};
use std::path::{Path, PathBuf};

/// The publisher's site.
pub const URL: &str = "http://ufldl.stanford.edu/housenumbers";

/// The training and test files and their published md5s.
pub const FILES: [(&str, &str); 2] =
    [("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"), ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3")];

/// The folder under the cache.
const CACHE_FOLDER: &str = "svhn";

/// Loads SVHN from `path`, the cache, or (when `download`) `cache`'s mirror;
/// `files` are the names and md5s ([`FILES`]; tests serve their own).
pub fn load(
    path: Option<&Path>,
    cache: &Cache,
    files: &[(&str, &str); 2],
    download: bool,
) -> Result<Dataset, DataError> {
    let dir = match locate(path, cache, files) {
        Some(d) => d,
        None if download => fetch(path, cache, files)?,
        None => return Err(not_found(path, cache, files, "downloading is off")),
    };
    let file = |i: usize| {
        let p = dir.join(files[i].0);
        if p.is_file() {
            Ok(p)
        } else {
            Err(DataError::new(&p, format!("missing: the folder has {} but not this file", files[0].0)))
        }
    };
    let train = split(&file(0)?)?;
    let test = split(&file(1)?)?;
    let classes = (0..10).map(|d| d.to_string()).collect();
    Ok(Dataset { train, test, val: None, classes, skipped: Vec::new() })
}

/// The folder holding the files: `path` if it has the training file (a
/// missing test file is then an error), else the cache if it has both.
pub fn locate(path: Option<&Path>, cache: &Cache, files: &[(&str, &str); 2]) -> Option<PathBuf> {
    let cached = cache.dir.join(CACHE_FOLDER);
    match path.filter(|p| p.join(files[0].0).is_file()) {
        Some(p) => Some(p.to_owned()),
        None => files.iter().all(|(f, _)| cached.join(f).is_file()).then_some(cached),
    }
}

/// One file's images (CHW, RGB) and labels (the digits 0-9).
fn split(path: &Path) -> Result<Split, DataError> {
    let bad = |detail: String| DataError::new(path, detail);
    let f = std::fs::File::open(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let vars =
        mat::read(std::io::BufReader::new(f)).map_err(|e| bad(format!("{e} (a damaged download? delete it)")))?;
    let get = |name: &str| {
        vars.iter().find(|a| a.name == name).ok_or_else(|| {
            let names = vars.iter().map(|a| format!("`{}`", a.name)).collect::<Vec<_>>().join(", ");
            bad(format!("no variable `{name}` (it holds {names}): not an SVHN file"))
        })
    };
    let (x, y) = (get("X")?, get("y")?);
    let [h, w, 3, n] = x.dims[..] else {
        let shape = x.dims.iter().map(ToString::to_string).collect::<Vec<_>>().join("x");
        return Err(bad(format!("`X` is {} {shape}, where SVHN's is uint8 height x width x 3 x images", x.class)));
    };
    if h == 0 || w == 0 || n == 0 {
        return Err(bad(format!("no images: `X` is {h}x{w}x3x{n}")));
    }
    let pixels = x
        .as_u8()
        .filter(|_| x.class == "uint8")
        .ok_or_else(|| bad(format!("`X` is a {} array stored as other than bytes, where SVHN's is uint8", x.class)))?;
    let labels = y.to_f64().ok_or_else(|| bad(format!("`y` is a {} array, not numbers", y.class)))?;
    if labels.len() != n {
        return Err(bad(format!("{} labels in `y` for the {n} images of `X`", labels.len())));
    }
    let mut out = Vec::with_capacity(n);
    for (i, &l) in labels.iter().enumerate() {
        if l.fract() != 0.0 || !(0.0..=10.0).contains(&l) {
            return Err(bad(format!("label {i} is {l}, where SVHN's are 1-10 (10 for the digit 0)")));
        }
        out.push(l as u32 % 10);
    }
    // MATLAB's X(row, col, channel, image) is at row + h*(col + w*(channel + 3*image)).
    let plane = h * w;
    let mut chw = Vec::new();
    chw.try_reserve_exact(n * 3 * plane).map_err(|_| bad(format!("{n} images of {h}x{w} do not fit in memory")))?;
    for img in pixels.chunks_exact(3 * plane) {
        for channel in img.chunks_exact(plane) {
            for row in 0..h {
                chw.extend((0..w).map(|col| channel[row + h * col]));
            }
        }
    }
    Ok(Split::uniform(chw, out, h, w))
}

fn not_found(path: Option<&Path>, cache: &Cache, files: &[(&str, &str); 2], why: &str) -> DataError {
    let dir = cache.dir.join(CACHE_FOLDER);
    let looked = match path {
        Some(p) => format!("{} nor in {}", p.display(), dir.display()),
        None => dir.display().to_string(),
    };
    DataError::new(
        &dir,
        format!(
            "svhn is not in {looked}, and {why}.\n  Without network access, download {} and {} from {} elsewhere and \
             put them in {}, or in the dataset's `path`",
            files[0].0,
            files[1].0,
            cache.base_url,
            dir.display()
        ),
    )
}

/// Downloads the files the cache lacks, each checked against its md5 before
/// it is renamed into place.
fn fetch(path: Option<&Path>, cache: &Cache, files: &[(&str, &str); 2]) -> Result<PathBuf, DataError> {
    let dir = cache.dir.join(CACHE_FOLDER);
    for &(name, md5) in files {
        let dest = dir.join(name);
        if dest.is_file() {
            continue;
        }
        let url = format!("{}/{name}", cache.base_url);
        tracing::info!("svhn not found locally: downloading {url}");
        super::download_md5(&url, &dest, md5, |why| not_found(path, cache, files, why))?;
    }
    Ok(dir)
}
