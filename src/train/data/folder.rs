//! torchvision's `ImageFolder` layout, from a folder or an archive.
//!
//! `root/train/<class>/*.jpg` and `root/test/<class>/*.png` give the two
//! splits (split folders are named as Hugging Face's `imagefolder` names them,
//! in any case: `train` or `training`; `test`, `testing`, `eval` or
//! `evaluation`; `val`, `valid`, `validation` or `dev`: beside a test folder the
//! validation split ([`Dataset::val`]), else the test split); a single tree `root/<class>/*` needs `test_split`, the share of
//! each class held out as test (seeded by `data_seed`). Class labels are the
//! class folder names in sorted order, as torchvision assigns them. `root` may
//! be a folder, a `.tar`, or a `.tar.gz`/`.tgz` of that layout (one enclosing
//! folder, as archives usually have, is skipped). The files of torchvision's
//! `IMG_EXTENSIONS` (JPEG, PNG, PPM, PGM, BMP, TIFF, WebP) are decoded (in
//! parallel) to RGB once, at load; other files and hidden files are ignored;
//! folders nested below a class folder count towards their class, as
//! `ImageFolder` walks them too. An image that cannot be read or decoded fails
//! the load, naming every such file at once, unless `skip_unreadable` leaves
//! them out (each named in [`Dataset::skipped`]). With `resize`, each image is
//! resized as it is decoded, so that a folder of large photos takes the memory
//! of the size it is trained at.

use super::{DataError, Dataset, Split};
use crate::train::rng::{stream, Rng};
use rayon::prelude::*;
use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The image extensions read (lower case): torchvision's `IMG_EXTENSIONS`.
pub const EXTENSIONS: [&str; 9] = ["jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp"];

/// How [`EXTENSIONS`] reads in a message.
const KINDS: &str = ".jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff or .webp";

/// How many unreadable images a message names before it says how many more.
const NAMED: usize = 10;

enum Bytes {
    File(PathBuf),
    Inline(Vec<u8>),
}

struct Entry {
    /// Path components relative to the root.
    parts: Vec<String>,
    bytes: Bytes,
}

fn is_image(name: &str) -> bool {
    !name.starts_with('.')
        && name.rsplit_once('.').is_some_and(|(_, ext)| EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

fn is_archive(path: &Path) -> bool {
    let n = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz")
}

/// How a folder is read: the dataset's settings for it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FolderOptions {
    /// A single tree: the share of each class held out as test.
    pub test_split: Option<f64>,
    /// The seed of that share (`data_seed`).
    pub seed: u64,
    /// Leave out the images that cannot be read or decoded (listed in
    /// [`Dataset::skipped`]) instead of failing the load.
    pub skip_unreadable: bool,
    /// Resize every image once, as it is decoded, so that its shorter side is
    /// this many pixels (torchvision's `Resize(N)` on a PIL image: antialiased,
    /// rounded to bytes).
    pub resize: Option<usize>,
}

/// Loads an image folder (or archive) at `root`.
///
/// The decoded images may take [`memory_budget`]: past it the load stops with
/// an error that says how much the whole folder would need.
pub fn load(root: &Path, options: &FolderOptions) -> Result<Dataset, DataError> {
    load_within(root, options, memory_budget())
}

/// The most memory a folder's decoded images may take: `SWEEP_DATA_MEMORY`,
/// else 3/4 of what this process may still use ([`crate::memory::available`]),
/// else no limit.
pub fn memory_budget() -> Option<u64> {
    crate::memory::size_from(crate::env::DATA_MEMORY).or_else(|| crate::memory::available().map(|b| b / 4 * 3))
}

/// [`load`] with the memory budget given (`None`: no limit).
pub fn load_within(root: &Path, options: &FolderOptions, budget: Option<u64>) -> Result<Dataset, DataError> {
    let (entries, dirs) = if root.is_file() && is_archive(root) {
        read_archive(root, budget)?
    } else if root.is_dir() {
        walk(root)?
    } else if root.exists() {
        return Err(DataError::new(root, "not a folder, .tar or .tar.gz of images"));
    } else {
        return Err(DataError::new(root, "no such folder or archive"));
    };
    match build(root, &entries, &dirs, options, Want::Data { budget })? {
        Built::Data(d) => Ok(*d),
        Built::Layout(_) => unreachable!("asked for the data"),
    }
}

fn walk(root: &Path) -> Result<(Vec<Entry>, BTreeSet<Vec<String>>), DataError> {
    let mut entries = Vec::new();
    let mut dirs = BTreeSet::new();
    // Each folder with the folders above it (by their canonical paths): symbolic links are
    // followed, as `ImageFolder` follows them, but one back to a folder above it is a loop.
    let canonical = |dir: &Path| dir.canonicalize().map_err(|e| DataError::new(dir, format!("cannot resolve: {e}")));
    let mut stack = vec![(root.to_owned(), Vec::<String>::new(), vec![canonical(root)?])];
    while let Some((dir, parts, above)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| DataError::new(&dir, format!("cannot list: {e}")))?;
        for item in rd {
            let item = item.map_err(|e| DataError::new(&dir, format!("cannot list: {e}")))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let mut p = parts.clone();
            p.push(name.clone());
            let path = item.path();
            if path.is_dir() {
                let real = canonical(&path)?;
                if above.contains(&real) {
                    return Err(DataError::new(
                        &path,
                        format!(
                            "a link back to {}, a folder that holds it: the folder would never end; remove the link",
                            real.display()
                        ),
                    ));
                }
                let mut chain = above.clone();
                chain.push(real);
                dirs.insert(p.clone());
                stack.push((path, p, chain));
            } else if is_image(&name) {
                entries.push(Entry { parts: p, bytes: Bytes::File(path) });
            }
        }
    }
    Ok((entries, dirs))
}

/// The largest image file an archive member or a folder's file may be: no
/// real JPEG or PNG of a training set comes near it, and a header that claims
/// more is corrupt or hostile (its size would otherwise be allocated before
/// anything is read), a file of that size something else named `.jpg`.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// A folder's image file, whole, unless it is larger than any image file.
fn read_image_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let size = file.metadata().map_err(|e| format!("cannot read: {e}"))?.len();
    if size > MAX_IMAGE_FILE_BYTES {
        return Err(format!(
            "{size} bytes, more than an image file can be ({MAX_IMAGE_FILE_BYTES} bytes): not an image"
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // At most one byte more than the limit, should the file grow while it is read.
    (&mut file).take(MAX_IMAGE_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(format!("more than an image file can be ({MAX_IMAGE_FILE_BYTES} bytes): not an image"));
    }
    Ok(bytes)
}

/// The end of an error about the data budget: how to raise it, what it is now
/// and where its default comes from.
fn raise_data_memory() -> String {
    format!(
        "raise {} (now {}; the default is 3/4 of the memory this process may still use: MemAvailable, or its \
         cgroup's limit)",
        crate::env::DATA_MEMORY.name,
        crate::env::DATA_MEMORY.get().unwrap_or_else(|| "unset".to_owned()),
    )
}

/// An archive's image members, read whole (a `.tar.gz` cannot be read from
/// the middle): their bytes count against the memory `budget` as they are read,
/// so that an archive larger than memory, or a small `.tar.gz` that unpacks to
/// far more, stops with an error instead of taking the machine's memory.
fn read_archive(root: &Path, budget: Option<u64>) -> Result<(Vec<Entry>, BTreeSet<Vec<String>>), DataError> {
    let err = |e: std::io::Error| DataError::new(root, format!("cannot read the archive: {e}"));
    let file = std::fs::File::open(root).map_err(err)?;
    let plain = root.to_string_lossy().to_ascii_lowercase().ends_with(".tar");
    let archive_bytes = file.metadata().map_err(err)?.len();
    let reader: Box<dyn Read> = if plain {
        Box::new(std::io::BufReader::new(file))
    } else {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    };
    let mut archive = tar::Archive::new(reader);
    let mut entries = Vec::new();
    let mut dirs = BTreeSet::new();
    let mut read = 0u64;
    for item in archive.entries().map_err(err)? {
        let mut item = item.map_err(err)?;
        let path = item.path().map_err(err)?.into_owned();
        let parts: Vec<String> = path
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        if parts.is_empty() || parts.iter().any(|p| p.starts_with('.')) {
            continue;
        }
        if item.header().entry_type().is_dir() {
            dirs.insert(parts);
            continue;
        }
        if !item.header().entry_type().is_file() || !is_image(parts.last().unwrap()) {
            continue;
        }
        for k in 1..parts.len() {
            dirs.insert(parts[..k].to_vec());
        }
        let size = item.size();
        let limit = if plain { archive_bytes.min(MAX_IMAGE_FILE_BYTES) } else { MAX_IMAGE_FILE_BYTES };
        if size > limit {
            let why = if plain && size > archive_bytes {
                format!("more than the whole archive ({archive_bytes} bytes)")
            } else {
                format!("more than an image file can be ({MAX_IMAGE_FILE_BYTES} bytes)")
            };
            let msg = format!(
                "{}: the archive says this member is {size} bytes, {why}: the archive is corrupt",
                path.display()
            );
            return Err(DataError::new(root, msg));
        }
        read += size;
        if let Some(budget) = budget.filter(|&b| read > b) {
            let unpacked = if plain { "" } else { " unpacked" };
            return Err(DataError::new(
                root,
                format!(
                    "the archive's images take more than {}{unpacked}, all the memory sweep may use for a dataset's \
                     images (it reads an archive whole before it decodes one): unpack it into a folder (`tar xf`), \
                     whose files are read one at a time, or {}",
                    crate::memory::describe(budget),
                    raise_data_memory(),
                ),
            ));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        item.read_to_end(&mut bytes)
            .map_err(|e| DataError::new(root, format!("{}: cannot read from the archive: {e}", path.display())))?;
        entries.push(Entry { parts, bytes: Bytes::Inline(bytes) });
    }
    Ok((entries, dirs))
}

/// Decodes an image file's bytes (any of [`EXTENSIONS`]) into RGB CHW.
pub fn decode(bytes: &[u8]) -> Result<(Vec<u8>, usize, usize), String> {
    decode_admitted(bytes, None, |_| Ok::<(), String>(()))
}

/// The most memory decoding an image holds at once, in bytes, from its header:
/// the decoder's buffer (`native` bytes, in the file's own pixel format) and
/// its RGB copy, the CHW copy beside the RGB one, and with `resize` the width
/// pass's rows and the resized image in f32 beside the CHW bytes.
fn need(native: u64, h: usize, w: usize, resize: Option<usize>) -> Need {
    use crate::train::augment::geometry;
    let chw = 3 * h as u64 * w as u64;
    let decoded = native + chw;
    let (peak, kept) = match resize.map(|side| geometry::resized_size(side, h, w)) {
        Some((oh, ow)) if (oh, ow) != (h, w) => {
            let out = 3 * oh as u64 * ow as u64;
            (chw + geometry::resize_u8_scratch(h, ow) as u64 + 5 * out, out)
        }
        _ => (0, chw),
    };
    Need { h, w, peak: decoded.max(2 * chw).max(peak), kept }
}

/// What decoding one image takes, known from its header.
struct Need {
    h: usize,
    w: usize,
    /// The most memory its decoding holds at once, in bytes.
    peak: u64,
    /// What it keeps once decoded (and resized).
    kept: u64,
}

/// Decodes an image file's bytes into RGB CHW, resized with `resize` (the
/// shorter side to that many pixels). `admit` hears what decoding it takes
/// ([`need`]), read from the file's header before anything is decoded, and may
/// refuse it: its error is returned and nothing is decoded.
fn decode_admitted<E: From<String>>(
    bytes: &[u8],
    resize: Option<usize>,
    admit: impl FnOnce(&Need) -> Result<(), E>,
) -> Result<(Vec<u8>, usize, usize), E> {
    use image::ImageDecoder;
    let why = |e: image::ImageError| format!("cannot decode the image: {e}");
    let reader =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| why(e.into()))?;
    let mut decoder = reader.into_decoder().map_err(why)?;
    // As `ImageReader::decode`: the decoder's buffer counts against the image crate's
    // allocation limit (512 MiB), and its own allocations against what is left of it.
    let native = decoder.total_bytes();
    let mut limits = image::Limits::default();
    limits.reserve(native).map_err(why)?;
    decoder.set_limits(limits).map_err(why)?;
    let (w, h) = decoder.dimensions();
    let (h, w) = (h as usize, w as usize);
    admit(&need(native, h, w, resize))?;
    // A copy even of RGB8 pixels: the CHW bytes kept then fill the decoder's buffer's place (moving
    // the buffer instead left a hole per image: 17% more memory for CIFAR-10's 60,000 JPEGs).
    let hwc = image::DynamicImage::from_decoder(decoder).map_err(why)?.to_rgb8().into_raw();
    let plane = h * w;
    let mut chw = vec![0u8; 3 * plane];
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        chw[i] = px[0];
        chw[plane + i] = px[1];
        chw[2 * plane + i] = px[2];
    }
    drop(hwc);
    Ok(match resize {
        Some(side) => resize_bytes(chw, h, w, side),
        None => (chw, h, w),
    })
}

#[allow(clippy::too_many_lines)]
fn build(
    root: &Path,
    entries: &[Entry],
    dirs: &BTreeSet<Vec<String>>,
    options: &FolderOptions,
    want: Want,
) -> Result<Built, DataError> {
    let FolderOptions { test_split, seed, skip_unreadable, resize } = *options;
    if entries.is_empty() {
        return Err(DataError::new(
            root,
            format!("holds no images ({KINDS}); expected train/<class>/*.jpg and test/<class>/*.jpg, or <class>/*.jpg"),
        ));
    }
    // Skip the folders every image shares (an archive's enclosing folder).
    let mut skip = 0;
    let first = &entries[0].parts;
    'outer: while skip + 1 < first.len() {
        let name = &first[skip];
        if split_role(name).is_some() {
            break;
        }
        for e in entries {
            if e.parts.len() <= skip + 2 || &e.parts[skip] != name {
                break 'outer;
            }
        }
        skip += 1;
    }
    let prefix = &first[..skip];
    let display = |e: &Entry| format!("{}/{}", root.display(), e.parts.join("/"));
    // The split folders, by Hugging Face's split keywords: train/ and test/, and a validation
    // folder (val/, valid/, validation/, dev/), which is the test split where there is no test/.
    let mut found: BTreeMap<Role, BTreeSet<&str>> = BTreeMap::new();
    for e in entries {
        if let Some(role) = e.parts.get(skip).filter(|_| e.parts.len() > skip + 1).and_then(|p| split_role(p)) {
            found.entry(role).or_default().insert(e.parts[skip].as_str());
        }
    }
    let split_layout = !found.is_empty();
    let at = |name: &str| root.join(prefix.join("/")).join(name);
    let one = |role: Role| -> Result<Option<&str>, DataError> {
        match found.get(&role).map(|n| n.iter().copied().collect::<Vec<_>>()).as_deref() {
            None | Some([]) => Ok(None),
            Some([name]) => Ok(Some(*name)),
            Some(names) => Err(DataError::new(
                root.join(prefix.join("/")),
                format!("has {} folders: which is the split? keep one", names.join("/ and ") + "/"),
            )),
        }
    };
    let (train_dir, test_dir, val_dir) = if split_layout {
        let train = one(Role::Train)?;
        // Without a test folder, the validation folder is the test split.
        let (test, val) = match one(Role::Test)? {
            Some(t) => (Some(t), one(Role::Val)?),
            None => (one(Role::Val)?, None),
        };
        let Some(train) = train else {
            return Err(DataError::new(root, "has no train/ images (train/<class>/*.jpg)"));
        };
        let Some(test) = test else {
            return Err(DataError::new(root, "has no test/ images (test/<class>/*.jpg, or a val/ folder to test on)"));
        };
        (train, test, val)
    } else {
        ("", "", None)
    };
    // (split, class) of every entry; split 0 = train, 1 = test, 2 = the one tree, 3 = validation.
    let mut keys = Vec::with_capacity(entries.len());
    for e in entries {
        let rel = &e.parts[skip..];
        let key = if split_layout {
            match (rel.first().map(String::as_str), rel.len()) {
                (Some(d), 3..) if d == train_dir => (0u8, rel[1].clone()),
                (Some(d), 3..) if d == test_dir => (1u8, rel[1].clone()),
                (Some(d), 3..) if Some(d) == val_dir => (3u8, rel[1].clone()),
                _ => {
                    return Err(DataError::new(
                        display(e),
                        format!("outside the {train_dir}/<class>/ and {test_dir}/<class>/ folders of this layout"),
                    ))
                }
            }
        } else if rel.len() >= 2 {
            (2u8, rel[0].clone())
        } else {
            return Err(DataError::new(display(e), "images must be inside class folders (<class>/image.jpg)"));
        };
        keys.push(key);
    }
    let class_dirs = |split: Option<&str>| -> BTreeSet<String> {
        let mut base = prefix.to_vec();
        base.extend(split.map(str::to_owned));
        dirs.iter()
            .filter(|d| d.len() == base.len() + 1 && d.starts_with(&base))
            .map(|d| d[base.len()].clone())
            .collect()
    };
    let (train_classes, test_classes) = if split_layout {
        (class_dirs(Some(train_dir)), class_dirs(Some(test_dir)))
    } else {
        (class_dirs(None), BTreeSet::new())
    };
    let val_classes = val_dir.map(|v| class_dirs(Some(v))).unwrap_or_default();
    let classes: Vec<String> = train_classes.iter().cloned().collect();
    let checks: &[(u8, &BTreeSet<String>)] = if split_layout {
        &[(0, &train_classes), (1, &test_classes), (3, &val_classes)]
    } else {
        &[(2, &train_classes)]
    };
    // A class folder without an image, among the entries `kept`.
    let empty_class = |kept: &dyn Fn(usize) -> bool, why: &str| -> Result<(), DataError> {
        for &(split, names) in checks {
            for name in names {
                if !keys.iter().enumerate().any(|(i, (s, c))| *s == split && c == name && kept(i)) {
                    let dir = match split {
                        0 => at(train_dir),
                        1 => at(test_dir),
                        3 => at(val_dir.unwrap_or_default()),
                        _ => at(""),
                    };
                    return Err(DataError::new(dir.join(name), why));
                }
            }
        }
        Ok(())
    };
    empty_class(&|_| true, &format!("empty class folder: it holds no image ({KINDS})"))?;
    if split_layout {
        for (dir, names) in [(test_dir, &test_classes), (val_dir.unwrap_or_default(), &val_classes)] {
            if let Some(c) = names.iter().find(|c| !train_classes.contains(*c)) {
                return Err(DataError::new(
                    at(dir).join(c),
                    format!("a {dir} class with no {train_dir} folder of the same name"),
                ));
            }
        }
        if test_split.is_some() {
            return Err(DataError::new(
                root,
                format!("has {train_dir}/ and {test_dir}/ folders; `test_split` is only for a single tree"),
            ));
        }
    } else if test_split.is_none() {
        return Err(DataError::new(
            root,
            "has no train/ and test/ folders: for a single <class>/ tree, set `test_split` (e.g. 0.2) to hold out \
             a seeded share of each class as the test split",
        ));
    }
    let class_of: BTreeMap<&str, u32> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u32)).collect();

    let share = test_split.unwrap_or(0.0);
    let share_ok = share > 0.0 && share < 1.0;
    if !split_layout && !share_ok {
        return Err(DataError::new(root, format!("test_split must be in (0, 1), found {share}")));
    }
    let budget = match want {
        Want::Data { budget } => budget,
        Want::Layout => {
            let count = |k: u8| keys.iter().filter(|(s, _)| *s == k).count();
            let (train, test) = if split_layout {
                (count(0), count(1))
            } else {
                let n_test: usize = class_of
                    .values()
                    .map(|&c| {
                        let n = keys.iter().filter(|(_, name)| class_of[name.as_str()] == c).count();
                        ((n as f64 * share).round() as usize).clamp(1, n.saturating_sub(1).max(1)).min(n)
                    })
                    .sum();
                (count(2) - n_test, n_test)
            };
            let dir = |d: &str| (!d.is_empty()).then(|| d.to_owned());
            return Ok(Built::Layout(Layout {
                train,
                test,
                val: val_dir.map(|_| count(3)),
                classes,
                folders: split_layout.then(|| (train_dir.to_owned(), test_dir.to_owned(), val_dir.and_then(dir))),
            }));
        }
    };

    // Decode everything in parallel, in the sorted order of the paths, while the decoded images
    // fit in `budget` (with an archive's bytes, already read). Each image's decoding reserves its
    // peak memory (from its header) before it starts and waits while other decodings hold the
    // room it needs, so that the budget bounds the load's memory at every moment, not only the
    // images kept: a folder of large photos on many cores, or a small file that claims to be
    // 13,000 pixels square, cannot take more.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| entries[a].parts.cmp(&entries[b].parts));
    let inline: u64 = entries.iter().map(|e| if let Bytes::Inline(b) = &e.bytes { b.len() as u64 } else { 0 }).sum();
    let images = order.len();
    let room = Room::new(budget, inline);
    let decoded: Vec<Decoded> = order
        .par_iter()
        .map(|&i| {
            if room.full() {
                return Err(Unread::OverBudget);
            }
            let e = &entries[i];
            let bytes = match &e.bytes {
                Bytes::Inline(b) => std::borrow::Cow::Borrowed(b),
                Bytes::File(p) => std::borrow::Cow::Owned(read_image_file(p).map_err(Unread::Unreadable)?),
            };
            let digest: [u8; 32] = sha2::Sha256::digest(&*bytes).into();
            let mut held = 0;
            let image = decode_admitted(&bytes, resize, |need| {
                room.take(need)?;
                held = need.peak;
                Ok::<(), Unread>(())
            });
            room.keep(held, image.as_ref().map_or(0, |(chw, _, _)| chw.len() as u64));
            let (chw, h, w) = image?;
            Ok((chw, h, w, digest))
        })
        .collect();
    let used = room.kept();
    if let Some(budget) = budget.filter(|_| room.full()) {
        let done = decoded.iter().filter(|d| d.is_ok()).count().max(1);
        let whole = (used - inline) as f64 * images as f64 / done as f64 + inline as f64;
        return Err(DataError::new(
            root,
            format!(
                "the decoded images do not fit in memory: sweep keeps a dataset decoded (3 bytes a pixel), and \
                 {done} of its {} images took {} of the {} it may use and the next did not fit (about {} for all of them); \
                 set `resize = 256` in the dataset (each image resized as it is decoded, as torchvision's \
                 Resize(256), where the augmentation makes them smaller anyway), or use fewer images, or {}",
                images,
                crate::memory::describe(used),
                crate::memory::describe(budget),
                crate::memory::describe(whole as u64),
                raise_data_memory(),
            ),
        ));
    }
    let unreadable: Vec<(usize, String)> = order
        .iter()
        .zip(&decoded)
        .filter_map(|(&i, d)| match d {
            Err(Unread::Unreadable(why)) => Some((i, why.trim_end().to_owned())),
            _ => None,
        })
        .collect();
    let skipped: Vec<String> =
        unreadable.iter().map(|(i, why)| format!("{}: {why}", entries[*i].parts[skip..].join("/"))).collect();
    if !unreadable.is_empty() {
        const FIX: &str = "remove or replace them, or set `skip_unreadable = true` in the dataset to leave out the \
                           images that cannot be read";
        if !skip_unreadable {
            return Err(match &unreadable[..] {
                [(i, why)] => DataError::new(display(&entries[*i]), format!("{why}; {}", FIX.replace("them", "it"))),
                _ => DataError::new(
                    root,
                    format!(
                        "{} of its {} images cannot be read: {}; {FIX}",
                        unreadable.len(),
                        images,
                        name_some(&skipped)
                    ),
                ),
            });
        }
        let bad: BTreeSet<usize> = unreadable.iter().map(|(i, _)| *i).collect();
        empty_class(&|i| !bad.contains(&i), "no image of this class folder can be read (`skip_unreadable`)")?;
    }

    // Each image's split: its folder's, or for one tree a seeded share of each class (from the
    // labels alone, so that no image is copied twice).
    let kept: Vec<usize> = order.iter().zip(&decoded).filter(|(_, d)| d.is_ok()).map(|(&i, _)| i).collect();
    let labels: Vec<u32> = kept.iter().map(|&i| class_of[keys[i].1.as_str()]).collect();
    let split_of: Vec<usize> = if split_layout {
        kept.iter().map(|&i| if keys[i].0 == 3 { 2 } else { usize::from(keys[i].0) }).collect()
    } else {
        let mut to = vec![0; kept.len()];
        for c in 0..classes.len() as u32 {
            let mut idx: Vec<usize> = (0..kept.len()).filter(|&k| labels[k] == c).collect();
            Rng::derive(&[stream::DATA, seed, 0x7e57, u64::from(c)]).shuffle(&mut idx);
            let n_test = ((idx.len() as f64 * share).round() as usize).clamp(1, idx.len().saturating_sub(1).max(1));
            for &k in &idx[..n_test.min(idx.len())] {
                to[k] = 1;
            }
        }
        to
    };
    let mut splits = [Split::default(), Split::default(), Split::default()];
    let mut sizes = [0usize; 3];
    for (d, &s) in decoded.iter().filter_map(|d| d.as_ref().ok()).zip(&split_of) {
        sizes[s] += d.0.len();
    }
    for (split, size) in splits.iter_mut().zip(sizes) {
        split.images.reserve_exact(size);
    }
    let ok = decoded.into_iter().filter_map(Result::ok);
    for (((chw, h, w, digest), &i), (&s, &label)) in ok.zip(&kept).zip(split_of.iter().zip(&labels)) {
        splits[s].push(&chw, h, w, label, Some((display(&entries[i]), digest)));
    }
    let [train, test, val] = splits;
    Ok(Built::Data(Box::new(Dataset { train, test, val: val_dir.map(|_| val), classes, skipped })))
}

/// What [`build`] is asked for.
#[derive(Clone, Copy)]
enum Want {
    /// The decoded images, within a memory budget.
    Data { budget: Option<u64> },
    /// The layout alone: nothing is read or decoded.
    Layout,
}

/// What [`build`] gives.
enum Built {
    Data(Box<Dataset>),
    Layout(Layout),
}

/// An image folder's layout, found without reading an image: what [`scan`]
/// says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Training images.
    pub train: usize,
    /// Test images (for a single tree, the share `test_split` holds out).
    pub test: usize,
    /// Validation images, where a validation folder sits beside the test folder.
    pub val: Option<usize>,
    /// The class names, in label order.
    pub classes: Vec<String>,
    /// The split folders' names (train, test, validation), or `None` for a single tree.
    pub folders: Option<(String, String, Option<String>)>,
}

/// The layout of the image folder at `root` (not an archive, which would have
/// to be read whole): the same checks as [`load`] makes before it decodes
/// (split and class folders, empty classes, `test_split`), so a bad layout is
/// found when a sweep is submitted rather than when its runs start. `Ok(None)`
/// for an archive.
pub fn scan(root: &Path, options: &FolderOptions) -> Result<Option<Layout>, DataError> {
    if !root.is_dir() {
        return Ok(None);
    }
    let (entries, dirs) = walk(root)?;
    match build(root, &entries, &dirs, options, Want::Layout)? {
        Built::Layout(l) => Ok(Some(l)),
        Built::Data(_) => unreachable!("asked for the layout"),
    }
}

/// torchvision's `Resize(side)` of a PIL image, on CHW bytes: the shorter side
/// becomes `side` (antialiased bilinear), the values rounded back to bytes.
fn resize_bytes(chw: Vec<u8>, h: usize, w: usize, side: usize) -> (Vec<u8>, usize, usize) {
    use crate::train::augment::geometry;
    let (oh, ow) = geometry::resized_size(side, h, w);
    if (oh, ow) == (h, w) {
        return (chw, h, w);
    }
    let out = geometry::resize_u8(&chw, h, w, oh, ow);
    drop(chw);
    (out.data.iter().map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8).collect(), oh, ow)
}

/// What a folder below the root holds: a split's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Train,
    Test,
    Val,
}

/// The split a top-level folder holds, by its name (any case): Hugging Face
/// `datasets`' split keywords.
fn split_role(name: &str) -> Option<Role> {
    match name.to_ascii_lowercase().as_str() {
        "train" | "training" => Some(Role::Train),
        "test" | "testing" | "eval" | "evaluation" => Some(Role::Test),
        "val" | "valid" | "validation" | "dev" => Some(Role::Val),
        _ => None,
    }
}

/// Whether `dir` holds split folders (`train/`, `Validation/`, ...): an image
/// folder rather than, say, a folder holding a CIFAR release.
pub fn has_split_folders(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| e.path().is_dir() && split_role(&e.file_name().to_string_lossy()).is_some())
    })
}

/// Why an image is not in the decoded dataset.
enum Unread {
    /// It cannot be read or decoded (the reason).
    Unreadable(String),
    /// The images decoded before it already filled the memory budget.
    OverBudget,
}

impl From<String> for Unread {
    fn from(why: String) -> Self {
        Unread::Unreadable(why)
    }
}

/// The memory budget of a folder's decoding, shared by the threads that decode:
/// what the images decoded so far keep, and what the decodings under way hold.
struct Room {
    budget: Option<u64>,
    /// Bytes kept, bytes held by decodings under way, and whether an image did
    /// not fit beside the kept ones (the load has failed).
    state: std::sync::Mutex<(u64, u64, bool)>,
    freed: std::sync::Condvar,
}

impl Room {
    fn new(budget: Option<u64>, kept: u64) -> Room {
        Room { budget, state: std::sync::Mutex::new((kept, 0, false)), freed: std::sync::Condvar::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, u64, bool)> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether an image did not fit: the load fails, and the images not yet
    /// decoded need not be.
    fn full(&self) -> bool {
        self.lock().2
    }

    /// What the images decoded so far keep.
    fn kept(&self) -> u64 {
        self.lock().0
    }

    /// Reserves what decoding an image holds at its peak, waiting while other
    /// decodings hold the room it needs; alone, a decoding may pass the budget
    /// while it runs, by what it does not keep. An image that needs more than
    /// the whole budget is unreadable here; one whose decoded bytes do not fit
    /// beside the images kept fills the budget (the load fails).
    fn take(&self, need: &Need) -> Result<(), Unread> {
        let mut state = self.lock();
        let Some(budget) = self.budget else {
            state.1 += need.peak;
            return Ok(());
        };
        if need.peak > budget {
            return Err(Unread::Unreadable(format!(
                "an image of {}x{} pixels: decoding it takes {}, more than the {} sweep may use for the dataset \
                 ({}; by default 3/4 of the memory this process may still use)",
                need.w,
                need.h,
                crate::memory::describe(need.peak),
                crate::memory::describe(budget),
                crate::env::DATA_MEMORY.name,
            )));
        }
        loop {
            let (kept, held, full) = *state;
            // What is kept only grows: an image that does not fit beside it never will.
            if full || kept + need.kept > budget {
                state.2 = true;
                return Err(Unread::OverBudget);
            }
            if held == 0 || kept + held + need.peak <= budget {
                state.1 += need.peak;
                return Ok(());
            }
            state = self.freed.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Ends a decoding that held `held` bytes and keeps `kept` of them.
    fn keep(&self, held: u64, kept: u64) {
        let mut state = self.lock();
        state.0 += kept;
        state.1 -= held;
        self.freed.notify_all();
    }
}

type Decoded = Result<(Vec<u8>, usize, usize, [u8; 32]), Unread>;

/// The first ten of `items`, `; `-separated, and how many more there are.
pub fn name_some(items: &[String]) -> String {
    let mut out = items.iter().take(NAMED).cloned().collect::<Vec<_>>().join("; ");
    if items.len() > NAMED {
        out = format!("{out} and {} more", items.len() - NAMED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn image(peak: u64, kept: u64) -> Need {
        Need { h: 10, w: 20, peak, kept }
    }

    /// A decoding waits while others hold the room its peak needs, runs alone
    /// even past the budget by what it does not keep, and fills the budget
    /// only when what it keeps does not fit beside the images kept.
    #[test]
    fn the_room_bounds_the_decodings_under_way_and_fills_with_what_is_kept() {
        let room = Room::new(Some(100), 10);
        room.take(&image(60, 20)).ok().unwrap();
        let second_ran = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                room.take(&image(50, 20)).ok().unwrap();
                second_ran.store(true, Ordering::SeqCst);
                room.keep(50, 20);
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert!(!second_ran.load(Ordering::SeqCst), "10 kept + 60 held + 50 is over 100: it waits");
            room.keep(60, 20);
        });
        assert!(second_ran.load(Ordering::SeqCst));
        assert_eq!(room.kept(), 50);
        // Alone, a decoding may pass the budget while it runs: it keeps 40 of its 80.
        room.take(&image(80, 40)).ok().unwrap();
        room.keep(80, 40);
        assert_eq!((room.kept(), room.full()), (90, false));
        // 90 kept and 20 more do not fit: the budget is full, for every later image too.
        assert!(matches!(room.take(&image(20, 20)), Err(Unread::OverBudget)));
        assert!(room.full());
        assert!(matches!(room.take(&image(1, 1)), Err(Unread::OverBudget)));
        // More than the whole budget at once: this image cannot be decoded here at all.
        let room = Room::new(Some(100), 0);
        match room.take(&image(101, 3)) {
            Err(Unread::Unreadable(why)) => {
                assert!(why.starts_with("an image of 20x10 pixels: decoding it takes"), "{why}");
            }
            _ => panic!("not unreadable"),
        }
        assert!(!room.full());
        // No budget: everything is taken.
        let room = Room::new(None, 0);
        room.take(&image(u64::MAX / 2, 1)).ok().unwrap();
        room.keep(u64::MAX / 2, 1);
        assert_eq!(room.kept(), 1);
    }

    /// A decoding's peak: the decoder's buffer with its RGB copy, the RGB and
    /// CHW copies side by side, or the CHW bytes beside the resized copy.
    #[test]
    fn what_decoding_takes_is_known_from_the_header() {
        let rgb = need(3 * 40 * 30, 30, 40, None);
        assert_eq!((rgb.peak, rgb.kept), (2 * 3600, 3600));
        // RGBA in 16 bits: 8 bytes a pixel, then the RGB copy.
        let rgba16 = need(8 * 1200, 30, 40, None);
        assert_eq!((rgba16.peak, rgba16.kept), (8 * 1200 + 3600, 3600));
        // The shorter side to 15: 15x20 kept; the peak holds the 30x40 bytes, the width pass's
        // 30 rows of 20 in f32 and the output in f32 and in bytes.
        let small = need(3600, 30, 40, Some(15));
        assert_eq!((small.peak, small.kept), (3600 + 3 * 30 * 20 * 4 + 5 * 900, 900));
        // A resize to its own size is none.
        assert_eq!(need(3600, 30, 40, Some(30)).kept, 3600);
    }
}
