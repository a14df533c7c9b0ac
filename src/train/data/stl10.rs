//! STL-10's labelled images, as torchvision reads them: `stl10_binary/`
//! holding `train_X.bin` (5,000 images) and `test_X.bin` (8,000), 96x96 RGB
//! bytes, each channel stored column by column (torchvision transposes each
//! plane), `train_y.bin`/`test_y.bin` with a label byte 1-10 per image, and
//! `class_names.txt`. The 100,000 unlabelled images are not used.
//!
//! Where: `dataset.path` (the `stl10_binary` folder or torchvision's `root`
//! holding it), then the cache; else the publisher's archive
//! (`stl10_binary.tar.gz`, 2.6 GB) is downloaded into the cache once, checked
//! against its published md5, and only the labelled files are unpacked,
//! through a temporary folder renamed into place.

use super::cifar::Cache;
use super::{DataError, Dataset, Split};
use std::path::{Path, PathBuf};

/// The publisher's site.
pub const URL: &str = "http://ai.stanford.edu/~acoates/stl10";

/// The archive and its published md5.
pub const ARCHIVE: (&str, &str) = ("stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb");

/// The folder the archive holds.
const FOLDER: &str = "stl10_binary";

/// The files read (all but `class_names.txt` are needed).
const FILES: [&str; 5] = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"];

/// The class names when `class_names.txt` is absent.
const CLASSES: [&str; 10] = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"];

const SIDE: usize = 96;

/// Loads STL-10 from `path`, the cache, or (when `download`) `cache`'s
/// mirror; `archive` is the archive's name and md5 ([`ARCHIVE`]; tests serve
/// their own).
pub fn load(path: Option<&Path>, cache: &Cache, archive: (&str, &str), download: bool) -> Result<Dataset, DataError> {
    let dir = match locate(path, cache) {
        Some(d) => d,
        None if download => fetch(path, cache, archive)?,
        None => return Err(not_found(path, cache, archive, "downloading is off")),
    };
    let file = |name: &str| {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(DataError::new(&p, format!("missing: the folder has {} but not this file", FILES[0])))
        }
    };
    let classes = match std::fs::read_to_string(dir.join(FILES[4])) {
        Ok(text) => {
            let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
            if names.len() != 10 {
                let why = format!("{} class names, where STL-10 has 10", names.len());
                return Err(DataError::new(dir.join(FILES[4]), why));
            }
            names
        }
        Err(_) => CLASSES.iter().map(|c| (*c).to_owned()).collect(),
    };
    let train = split(&file(FILES[0])?, &file(FILES[1])?)?;
    let test = split(&file(FILES[2])?, &file(FILES[3])?)?;
    Ok(Dataset { train, test, val: None, classes, skipped: Vec::new() })
}

/// The `stl10_binary` folder: `path` itself or its `stl10_binary`, else the cache's.
pub fn locate(path: Option<&Path>, cache: &Cache) -> Option<PathBuf> {
    let has = |d: &Path| d.join(FILES[0]).is_file();
    path.into_iter().flat_map(|p| [p.to_owned(), p.join(FOLDER)]).chain([cache.dir.join(FOLDER)]).find(|d| has(d))
}

/// One split: images (CHW, each plane transposed from the file's column
/// order) and labels (the file's 1-10 as 0-9).
fn split(images: &Path, labels: &Path) -> Result<Split, DataError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| DataError::new(p, format!("cannot read: {e}")));
    let (x, y) = (read(images)?, read(labels)?);
    let size = 3 * SIDE * SIDE;
    if x.is_empty() || x.len() % size != 0 {
        let why = format!("truncated: {} bytes is not a whole number of 96x96 RGB images ({size} bytes each)", x.len());
        return Err(DataError::new(images, why));
    }
    let n = x.len() / size;
    if y.len() != n {
        return Err(DataError::new(labels, format!("{} labels for the {n} images of {}", y.len(), images.display())));
    }
    if let Some((i, l)) = y.iter().enumerate().find(|(_, &l)| !(1..=10).contains(&l)) {
        return Err(DataError::new(labels, format!("label {i} is {l}, where STL-10's are 1-10")));
    }
    let plane = SIDE * SIDE;
    let mut chw = Vec::new();
    chw.try_reserve_exact(x.len()).map_err(|_| DataError::new(images, format!("{n} images do not fit in memory")))?;
    for p in x.chunks_exact(plane) {
        for row in 0..SIDE {
            chw.extend((0..SIDE).map(|col| p[col * SIDE + row]));
        }
    }
    Ok(Split::uniform(chw, y.iter().map(|&l| u32::from(l) - 1).collect(), SIDE, SIDE))
}

fn not_found(path: Option<&Path>, cache: &Cache, archive: (&str, &str), why: &str) -> DataError {
    let looked = match path {
        Some(p) => format!("{} (or its {FOLDER} folder) nor in {}", p.display(), cache.dir.display()),
        None => cache.dir.display().to_string(),
    };
    let dest = cache.dir.join(archive.0);
    DataError::new(
        &dest,
        format!(
            "stl10 is not in {looked}, and {why}.\n  Without network access, download {}/{} elsewhere and put it at {} \
             (it is unpacked on the next run), or unpack it into the dataset's `path`",
            cache.base_url,
            archive.0,
            dest.display()
        ),
    )
}

/// Downloads the archive (unless it is in the cache, where it is checked)
/// and unpacks its labelled files into the cache.
fn fetch(path: Option<&Path>, cache: &Cache, archive: (&str, &str)) -> Result<PathBuf, DataError> {
    let dest = cache.dir.join(archive.0);
    let url = format!("{}/{}", cache.base_url, archive.0);
    super::archive_md5(&url, &dest, archive.1, "stl10", |why| not_found(path, cache, archive, why))?;
    // The labelled files only (not the 2.7 GB of unlabelled images).
    let wanted = |m: &Path| {
        m.parent().is_some_and(|p| p.ends_with(FOLDER)) && m.file_name().is_some_and(|f| FILES.iter().any(|w| f == *w))
    };
    super::cifar::unpack(&dest, &cache.dir, wanted)?;
    let dir = cache.dir.join(FOLDER);
    if !dir.join(FILES[0]).is_file() {
        return Err(DataError::new(&dest, format!("the archive holds no {FOLDER}/{}", FILES[0])));
    }
    Ok(dir)
}
