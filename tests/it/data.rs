//! Datasets, transforms and the loader: torchvision fixtures, every file
//! format on generated files, the download against a local server, and the
//! loader's determinism across thread counts.

use candle_core::{Device, Tensor};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use sweep::spec::{DatasetName, Transform};
use sweep::train::augment::{self, geometry, Image, Step};
use sweep::train::data::{self, cifar, folder, Split};
use sweep::train::loader::{self, Loader, Pipeline};
use sweep::train::rng::Rng;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A single tree's options: `test_split = share`, `data_seed = seed`.
fn tree(share: f64, seed: u64) -> folder::FolderOptions {
    folder::FolderOptions { test_split: Some(share), seed, ..Default::default() }
}

#[derive(Deserialize)]
struct Case {
    name: String,
    input: String,
    output_shape: Vec<usize>,
    #[serde(default)]
    steps: Vec<Step>,
    #[serde(default)]
    transforms: Vec<Transform>,
    affine: Option<AffineParams>,
}

#[derive(Deserialize)]
struct AffineParams {
    angle: f64,
    translate: [f64; 2],
    scale: f64,
    shear: [f64; 2],
}

fn image_of(t: &Tensor) -> Image {
    let (c, h, w) = t.dims3().unwrap();
    Image { c, h, w, data: t.flatten_all().unwrap().to_vec1::<f32>().unwrap() }
}

#[test]
fn every_transform_matches_torchvision_within_one_level() {
    let dir = fixtures().join("augment");
    #[derive(Deserialize)]
    struct File {
        cases: Vec<Case>,
    }
    let file: File = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("cases.safetensors"), &Device::Cpu).unwrap();
    assert!(file.cases.len() >= 25);
    for case in &file.cases {
        let input = image_of(&tensors[&case.input]);
        let expected = image_of(&tensors[&format!("{}.output", case.name)]);
        let mut img = input.clone();
        for step in &case.steps {
            img = augment::apply_step(step, img);
        }
        if !case.transforms.is_empty() {
            img = augment::apply(&case.transforms, img, &mut Rng::new(0));
        }
        assert_eq!(vec![img.c, img.h, img.w], case.output_shape, "{}: shape", case.name);
        let max = img.data.iter().zip(&expected.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // Normalised outputs are in units of std (about 1/4): scale the bound.
        let bound =
            if case.name.contains("normalize") || case.name.contains("heavy") { 4.0 / 255.0 } else { 1.0 / 255.0 };
        assert!(max <= bound, "{}: differs from torchvision by {max:e}", case.name);
        // Most cases agree to float rounding; a nearest-neighbour tie would show as a whole level.
        assert!(max < 1e-4, "{}: {max:e}", case.name);
        if let (Some(a), Some(Step::Affine { matrix, .. })) = (&case.affine, case.steps.first()) {
            let m = geometry::inverse_affine(a.angle, a.translate, a.scale, a.shear);
            for (x, y) in m.iter().zip(matrix) {
                assert!((x - y).abs() < 1e-12, "{}: matrix {m:?} vs {matrix:?}", case.name);
            }
        }
    }
}

fn uniform_split(n: usize, h: usize, w: usize) -> Split {
    let images: Vec<u8> = (0..n * 3 * h * w).map(|i| (i * 31 % 256) as u8).collect();
    Split::uniform(images, (0..n as u32).map(|i| i % 10).collect(), h, w)
}

fn heavy() -> Vec<Transform> {
    let text = r#"t = [
      { random_crop = { size = 32, padding = 4 } },
      { hflip = { p = 0.5 } },
      { rotation = { degrees = 10 } },
      { affine = { degrees = 0, shear = 10, scale = [0.8, 1.2] } },
      { color_jitter = { brightness = 0.2, contrast = 0.2, saturation = 0.2 } },
      { normalize = "cifar10" },
      { cutout = { size = 8 } },
    ]"#;
    #[derive(Deserialize)]
    struct T {
        t: Vec<Transform>,
    }
    toml::from_str::<T>(text).unwrap().t
}

fn tensors_of(pipe: &Pipeline, split: &Split, batches: &[&[usize]], threads: usize) -> Vec<Vec<f32>> {
    std::thread::scope(|s| {
        let mut l = Loader::start(s, pipe, split, batches.to_vec(), 7, 3, threads, 2);
        let mut out = Vec::new();
        while let Some(b) = l.next_batch() {
            let (x, _) = pipe.to_tensors(&b, &Device::Cpu).unwrap();
            out.push(x.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        out
    })
}

#[test]
fn batches_are_the_same_for_any_thread_count_and_vary_by_epoch() {
    let split = uniform_split(50, 32, 32);
    let order: Vec<usize> = (0..50).rev().collect();
    let pipe = Pipeline::host_only(&heavy());
    let batches = loader::batches(&order, 8, false);
    assert_eq!(batches.len(), 7);
    assert_eq!(loader::batches(&order, 8, true).len(), 6);
    let one = tensors_of(&pipe, &split, &batches, 1);
    assert_eq!(one.len(), 7);
    assert_eq!(one[6].len(), 2 * 3 * 32 * 32);
    assert_eq!(one, tensors_of(&pipe, &split, &batches, 3));
    assert_eq!(one, tensors_of(&pipe, &split, &batches, 8));
    // Another epoch draws other augmentations.
    let b = pipe.host_batch(&split, batches[0], 7, 4);
    let (x, _) = pipe.to_tensors(&b, &Device::Cpu).unwrap();
    assert_ne!(x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), one[0]);
    // A trainer that stops early leaves no thread behind (the scope would hang).
    std::thread::scope(|s| {
        let mut l = Loader::start(s, &pipe, &split, batches.clone(), 7, 3, 2, 1);
        l.next_batch().unwrap();
    });
}

#[test]
fn resize_and_normalize_as_tensor_ops_equal_the_host_pipeline() {
    let text = r#"t = [
      { random_crop = { size = 28, padding = 2, padding_mode = "reflect" } },
      { hflip = {} },
      { resize = { size = 64 } },
      { normalize = { mean = [0.4914, 0.4824, 0.4467], std = [0.2471, 0.2436, 0.2616] } },
    ]"#;
    #[derive(Deserialize)]
    struct T {
        t: Vec<Transform>,
    }
    let t = toml::from_str::<T>(text).unwrap().t;
    let split = uniform_split(12, 32, 32);
    let order: Vec<usize> = (0..12).collect();
    let batches = loader::batches(&order, 5, false);
    let host = Pipeline::host_only(&t);
    let tail = Pipeline::device_tail(&t, &split);
    assert!(tail.has_tail() && !host.has_tail());
    // The device path uploads bytes: crops and flips are exact on them.
    let b = tail.host_batch(&split, batches[0], 7, 3);
    assert!(matches!(b.pixels, loader::Pixels::U8(_)) && (b.h, b.w) == (28, 28));
    let a = tensors_of(&host, &split, &batches, 2);
    let d = tensors_of(&tail, &split, &batches, 2);
    for (x, y) in a.iter().zip(&d) {
        assert_eq!(x.len(), y.len());
        let max = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(max < 1e-5, "{max:e}");
    }
    // The upsampling of the term report (32 -> 224) too.
    let t224 = vec![Transform::Resize { size: 224 }];
    let (h, dv) = (Pipeline::host_only(&t224), Pipeline::device_tail(&t224, &split));
    let x = tensors_of(&h, &split, &batches[..1], 1);
    let y = tensors_of(&dv, &split, &batches[..1], 1);
    assert_eq!(x[0].len(), 5 * 3 * 224 * 224);
    let max = x[0].iter().zip(&y[0]).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    assert!(max < 1e-5, "{max:e}");
    // Images of several sizes keep everything on the host.
    let mut mixed = Split::default();
    mixed.push(&[0; 3 * 4 * 4], 4, 4, 0, None);
    mixed.push(&[0; 3 * 4 * 6], 4, 6, 1, None);
    assert!(!Pipeline::device_tail(&t224, &mixed).has_tail());
}

/// The split resident on the device, cropped and flipped by index maps there,
/// gives the host pipeline's tensors (here on the CPU device, the same code).
#[test]
fn a_resident_split_cropped_and_flipped_by_indexing_equals_the_host_pipeline() {
    #[derive(Deserialize)]
    struct T {
        t: Vec<Transform>,
    }
    let chains = [
        // The report's standard set, then resized as for a pretrained model.
        r#"t = [{ random_crop = { size = 32, padding = 4 } }, { hflip = {} }, { resize = { size = 48 } },
               { normalize = "cifar10" }]"#,
        r#"t = [{ random_crop = { size = 28, padding = 3, padding_mode = "reflect" } }, { hflip = { p = 0.7 } }]"#,
        r"t = [{ hflip = {} }, { random_crop = { size = 30, padding = 5, fill = 128 } }, { center_crop = { size = 26 } }]",
        r#"t = [{ center_crop = { size = 36 } }, { normalize = "imagenet" }]"#,
        r#"t = [{ normalize = "cifar10" }]"#,
        // The term report's ResNet18 recipe: no crop or flip (no maps), then the resize.
        r#"t = [{ resize = { size = 64 } }, { normalize = "cifar10" }]"#,
    ];
    let split = uniform_split(23, 32, 32);
    let order: Vec<usize> = (0..23).rev().collect();
    let batches = loader::batches(&order, 8, false);
    for text in chains {
        let t = toml::from_str::<T>(text).unwrap().t;
        let host = Pipeline::host_only(&t);
        let resident = Pipeline::resident(&t, &split, &Device::Cpu).unwrap().expect(text);
        let b = resident.host_batch(&split, batches[0], 7, 3);
        assert!(matches!(b.pixels, loader::Pixels::Indexed { .. }), "{text}");
        let a = tensors_of(&host, &split, &batches, 2);
        let d = tensors_of(&resident, &split, &batches, 3);
        assert_eq!(a.len(), d.len());
        for (x, y) in a.iter().zip(&d) {
            assert_eq!(x.len(), y.len(), "{text}");
            let max = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            assert!(max < 1e-5, "{text}: {max:e}");
        }
    }
    // Rotation has no index form: not resident; nor are images of several sizes.
    assert!(Pipeline::resident(&heavy(), &split, &Device::Cpu).unwrap().is_none());
    let mut mixed = Split::default();
    mixed.push(&[0; 3 * 4 * 4], 4, 4, 0, None);
    mixed.push(&[0; 3 * 4 * 6], 4, 6, 1, None);
    assert!(Pipeline::resident(&[Transform::Hflip { p: 0.5 }], &mixed, &Device::Cpu).unwrap().is_none());
}

fn copy_fixture(name: &str, dest: &Path) {
    std::fs::copy(fixtures().join("data").join(name), dest).unwrap();
}

fn offline(dir: &Path) -> cifar::Cache {
    cifar::Cache { dir: dir.join("cache"), base_url: "http://127.0.0.1:9".into() }
}

fn fixture_pixel(i: usize, k: usize) -> u8 {
    ((i * 7 + k) % 251) as u8
}

#[test]
fn cifar_python_release_reads_pickles_of_every_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let py = dir.path().join("cifar-10-batches-py");
    std::fs::create_dir(&py).unwrap();
    for (i, f) in cifar::CIFAR10.py_train.iter().enumerate() {
        copy_fixture(if i % 2 == 0 { "cifar10_p2.pkl" } else { "cifar10_p5.pkl" }, &py.join(f));
    }
    copy_fixture("cifar10_p5.pkl", &py.join("test_batch"));
    let d = cifar::load(DatasetName::Cifar10, Some(dir.path()), &offline(dir.path()), false).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (15, 3));
    assert_eq!(&d.train.labels[..6], &[3, 0, 9, 3, 0, 9]);
    for i in 0..3 {
        assert!(d.train.image(3 + i).iter().enumerate().all(|(k, &b)| b == fixture_pixel(i, k)), "image {i}");
    }
    assert_eq!(d.classes[3], "cat");

    let c100 = dir.path().join("cifar-100-python");
    std::fs::create_dir(&c100).unwrap();
    copy_fixture("cifar100_p4.pkl", &c100.join("train"));
    copy_fixture("cifar100_p4.pkl", &c100.join("test"));
    let d = cifar::load(DatasetName::Cifar100, Some(&c100), &offline(dir.path()), false).unwrap();
    assert_eq!(d.train.labels, vec![97, 0, 42]);
    assert_eq!(d.train.image(2)[5], fixture_pixel(2, 5));

    // A truncated pickle is refused, naming the file.
    let bytes = std::fs::read(py.join("data_batch_3")).unwrap();
    std::fs::write(py.join("data_batch_3"), &bytes[..bytes.len() / 2]).unwrap();
    let err = cifar::load(DatasetName::Cifar10, Some(dir.path()), &offline(dir.path()), false).unwrap_err();
    assert!(err.path.ends_with("data_batch_3") && err.to_string().contains("truncated"), "{err}");
}

pub fn targz(entries: &[(String, Vec<u8>)], gz: bool) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, bytes) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, bytes.as_slice()).unwrap();
    }
    let raw = tar.into_inner().unwrap();
    if !gz {
        return raw;
    }
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&raw).unwrap();
    e.finish().unwrap()
}

#[test]
fn cifar_is_downloaded_once_checked_and_unpacked_into_the_cache() {
    use md5::Digest;
    let batch = std::fs::read(fixtures().join("data/cifar10_p2.pkl")).unwrap();
    let mut entries: Vec<(String, Vec<u8>)> =
        cifar::CIFAR10.py_train.iter().map(|f| (format!("cifar-10-batches-py/{f}"), batch.clone())).collect();
    entries.push(("cifar-10-batches-py/test_batch".into(), batch.clone()));
    let archive = targz(&entries, true);
    let md5 = format!("{:x}", md5::Md5::digest(&archive));
    let server = crate::models::serve(HashMap::from([("cifar-10-python.tar.gz".to_owned(), archive.clone())]));
    let dir = tempfile::tempdir().unwrap();
    let cache = cifar::Cache { dir: dir.path().join("cache"), base_url: server.url.clone() };

    // The wrong checksum: refused, nothing kept.
    let wrong = cifar::Release { md5: "0123456789abcdef0123456789abcdef", ..cifar::CIFAR10 };
    let err = cifar::load_release(&wrong, None, &cache, true).unwrap_err().to_string();
    assert!(err.contains("md5") && err.contains("0123456789abcdef"), "{err}");
    assert!(!cache.dir.join("cifar-10-python.tar.gz").exists());
    assert!(!cache.dir.join("cifar-10-batches-py").exists());

    let release = cifar::Release { md5: Box::leak(md5.into_boxed_str()), ..cifar::CIFAR10 };
    let hits = server.hits.load(std::sync::atomic::Ordering::SeqCst);
    let d = cifar::load_release(&release, Some(&dir.path().join("elsewhere")), &cache, true).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (15, 3));
    assert!(cache.dir.join("cifar-10-batches-py/test_batch").is_file());
    assert!(std::fs::read_dir(&cache.dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')));
    // Second time: from the cache, no request.
    cifar::load_release(&release, None, &cache, true).unwrap();
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), hits + 1);

    // Offline, the archive put into the cache by hand is checked and unpacked...
    let by_hand = cifar::Cache { dir: dir.path().join("by-hand"), base_url: "http://127.0.0.1:9".into() };
    std::fs::create_dir_all(&by_hand.dir).unwrap();
    std::fs::write(by_hand.dir.join("cifar-10-python.tar.gz"), &archive).unwrap();
    assert_eq!(cifar::load_release(&release, None, &by_hand, true).unwrap().test.len(), 3);
    // ... and another file under that name is refused, named.
    let other = cifar::Cache { dir: dir.path().join("other"), base_url: "http://127.0.0.1:9".into() };
    std::fs::create_dir_all(&other.dir).unwrap();
    std::fs::write(other.dir.join("cifar-10-python.tar.gz"), &archive[..100]).unwrap();
    let err = cifar::load_release(&release, None, &other, true).unwrap_err();
    assert!(err.path.ends_with("cifar-10-python.tar.gz") && err.to_string().contains("not the official"), "{err}");
    assert!(!other.dir.join("cifar-10-batches-py").exists());
}

/// An IDX file of bytes with these dimensions, gzipped as MNIST's mirror serves it.
pub fn idx_gz(dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(body);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&b).unwrap();
    e.finish().unwrap()
}

#[test]
fn mnist_is_downloaded_file_by_file_checked_and_kept_in_the_cache() {
    use md5::Digest;
    use std::sync::atomic::Ordering::SeqCst;
    let pixels: Vec<u8> = (0..4 * 28 * 28).map(|i| (i % 256) as u8).collect();
    let bodies = [
        idx_gz(&[4, 28, 28], &pixels),
        idx_gz(&[4], &[5, 0, 4, 1]),
        idx_gz(&[2, 28, 28], &pixels[..2 * 784]),
        idx_gz(&[2], &[9, 2]),
    ];
    let names = data::mnist::MNIST.files.map(|(f, _)| f);
    let files = names.iter().zip(&bodies).map(|(n, b)| (format!("{n}.gz"), b.clone())).collect();
    let server = crate::models::serve(files);
    let md5 = |b: &[u8]| &*Box::leak(format!("{:x}", md5::Md5::digest(b)).into_boxed_str());
    let release =
        data::mnist::IdxRelease { files: [0, 1, 2, 3].map(|i| (names[i], md5(&bodies[i]))), ..data::mnist::MNIST };
    let dir = tempfile::tempdir().unwrap();
    let cache = cifar::Cache { dir: dir.path().join("cache"), base_url: server.url.clone() };
    let raw = cache.dir.join("MNIST/raw");

    // One file that is not what was published: refused by its md5, and not kept.
    let wrong = data::mnist::IdxRelease {
        files: [0, 1, 2, 3]
            .map(|i| (names[i], if i == 2 { "0123456789abcdef0123456789abcdef" } else { release.files[i].1 })),
        ..release
    };
    let err = data::mnist::load(&wrong, None, &cache, true).unwrap_err().to_string();
    assert!(err.contains("t10k-images-idx3-ubyte.gz") && err.contains("0123456789abcdef"), "{err}");
    assert!(!raw.join("t10k-images-idx3-ubyte.gz").exists());
    // The two files before it were complete and checked: they stay.
    assert!(raw.join("train-labels-idx1-ubyte.gz").is_file());

    let hits = server.hits.load(SeqCst);
    let d = data::mnist::load(&release, Some(&dir.path().join("elsewhere")), &cache, true).unwrap();
    assert_eq!((d.train.labels.clone(), d.test.labels.clone()), (vec![5, 0, 4, 1], vec![9, 2]));
    assert_eq!((d.train.height, d.train.width, d.classes[4].as_str()), (28, 28, "4 - four"));
    assert_eq!(d.test.image(1), [&pixels[784..1568], &pixels[784..1568], &pixels[784..1568]].concat().as_slice());
    // Only the two missing files were fetched; a second load reads the cache.
    assert_eq!(server.hits.load(SeqCst), hits + 2);
    data::mnist::load(&release, None, &cache, true).unwrap();
    assert_eq!(server.hits.load(SeqCst), hits + 2);
    assert!(std::fs::read_dir(&raw).unwrap().all(|e| e.unwrap().file_name().to_string_lossy().ends_with(".gz")));
}

/// MAT-files MATLAB wrote (SciPy's test data): every variable read as SciPy reads it.
#[test]
fn mat_files_written_by_matlab_read_as_scipy_reads_them() {
    let read = |f: &str| {
        let bytes = std::fs::read(fixtures().join("data/mat").join(f)).unwrap();
        data::mat::read(bytes.as_slice()).unwrap()
    };
    let one_to_24: Vec<f64> = (1..=24).map(f64::from).collect();
    for f in ["test3dmatrix_6.1_SOL2.mat", "test3dmatrix_7.4_GLNX86.mat"] {
        let v = read(f);
        assert_eq!(
            (v.len(), v[0].name.as_str(), v[0].class, v[0].dims.clone()),
            (1, "test3dmatrix", "double", vec![2, 3, 4]),
            "{f}"
        );
        assert_eq!(v[0].to_f64().unwrap(), one_to_24, "{f}");
    }
    let v = read("testmulti_7.4_GLNX86.mat");
    let names: Vec<_> = v.iter().map(|a| (a.name.as_str(), a.dims.clone())).collect();
    assert_eq!(names, vec![("a", vec![3, 5]), ("theta", vec![1, 9])]);
    let theta = v[1].to_f64().unwrap();
    assert!(
        theta.iter().enumerate().all(|(k, t)| (t - std::f64::consts::FRAC_PI_4 * k as f64).abs() < 1e-15),
        "{theta:?}"
    );
    // A double array of small integers, stored as bytes: column by column.
    assert!(v[0].as_u8().is_some() && v[1].as_u8().is_none());
    let a = [1., 2., 3., 2., 0., 0., 3., 0., 0., 4., 0., 0., 5., 0., 0.];
    assert_eq!(v[0].to_f64().unwrap(), a);
    for f in ["big_endian.mat", "little_endian.mat"] {
        let v = read(f);
        let floats = v.iter().find(|a| a.name == "floats").unwrap();
        assert_eq!((floats.class, floats.to_f64().unwrap()), ("single", vec![2., 3., 3., 4.]), "{f}");
        let strings = v.iter().find(|a| a.name == "strings").unwrap();
        assert!(strings.class == "cell" && !strings.is_numeric() && strings.to_f64().is_none(), "{f}");
    }
    assert_eq!(read("testminus_7.4_GLNX86.mat")[0].to_f64().unwrap(), vec![-1.0]);
    assert_eq!(read("testcell_7.4_GLNX86.mat")[0].class, "cell");
    assert_eq!(read("teststring_7.4_GLNX86.mat")[0].class, "char");
    // A file cut short: the byte where it ends is named.
    let bytes = std::fs::read(fixtures().join("data/mat/test3dmatrix_6.1_SOL2.mat")).unwrap();
    let err = data::mat::read(&bytes[..200]).unwrap_err();
    assert!(err.contains("truncated") && err.contains("byte 128"), "{err}");
    let err = data::mat::read(&read_compressed_cut()[..]).unwrap_err();
    assert!(err.contains("does not decompress"), "{err}");
    // A compressed element that says it unpacks to more than the process may use is refused
    // before it is unpacked (a few KiB of zlib can unpack to the format's 4 GiB).
    let bytes = std::fs::read(fixtures().join("data/mat/test3dmatrix_7.4_GLNX86.mat")).unwrap();
    assert_eq!(data::mat::read_within(bytes.as_slice(), Some(1 << 10)).unwrap()[0].dims, vec![2, 3, 4]);
    let err = data::mat::read_within(bytes.as_slice(), Some(64)).unwrap_err();
    assert!(err.contains("the compressed element at byte 128 says it unpacks to 96 bytes"), "{err}");
    assert!(err.contains("more than this process may use (0.1 KiB)"), "{err}");
}

fn read_compressed_cut() -> Vec<u8> {
    let bytes = std::fs::read(fixtures().join("data/mat/test3dmatrix_7.4_GLNX86.mat")).unwrap();
    let mut cut = bytes.clone();
    // The compressed stream's bytes changed, its length kept.
    for b in &mut cut[150..170] {
        *b ^= 0x5a;
    }
    cut
}

/// A variable of [`mat_file`]: name, class id, MATLAB dims, mi type, data.
pub type MatVar<'a> = (&'a str, u32, &'a [u32], u32, Vec<u8>);

/// A level 5 MAT-file of `vars` (name, class id, MATLAB dims, mi type, data), each
/// compressed or not, as MATLAB's `save -v7` / `-v6` write them.
pub fn mat_file(vars: &[MatVar], compress: bool) -> Vec<u8> {
    let pad = |v: &mut Vec<u8>| v.resize(v.len().next_multiple_of(8), 0);
    let mut out = b"MATLAB 5.0 MAT-file, written by sweep's tests".to_vec();
    out.resize(124, b' ');
    out.extend_from_slice(&[0, 1, b'I', b'M']);
    for (name, class, dims, mi, data) in vars {
        let mut m = Vec::new();
        let sub = |m: &mut Vec<u8>, mi: u32, bytes: &[u8]| {
            m.extend_from_slice(&mi.to_le_bytes());
            m.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            m.extend_from_slice(bytes);
            pad(m);
        };
        sub(&mut m, 6, &[*class as u8, 0, 0, 0, 0, 0, 0, 0]);
        sub(&mut m, 5, &dims.iter().flat_map(|d| (*d as i32).to_le_bytes()).collect::<Vec<_>>());
        sub(&mut m, 1, name.as_bytes());
        sub(&mut m, *mi, data);
        let mut el = 14u32.to_le_bytes().to_vec();
        el.extend_from_slice(&(m.len() as u32).to_le_bytes());
        el.extend_from_slice(&m);
        if compress {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(&el).unwrap();
            let z = z.finish().unwrap();
            out.extend_from_slice(&15u32.to_le_bytes());
            out.extend_from_slice(&(z.len() as u32).to_le_bytes());
            out.extend_from_slice(&z);
        } else {
            out.extend_from_slice(&el);
        }
    }
    out
}

/// An SVHN file of `n` images of 4x5: X(row, col, channel, image) = row + 10 col + 60 channel + image,
/// and the labels `y` (as doubles, 10 for the digit 0).
pub fn svhn_file(y: &[f64], compress: bool) -> Vec<u8> {
    let n = y.len();
    let mut x = Vec::new();
    for image in 0..n {
        for channel in 0..3 {
            for col in 0..5 {
                for row in 0..4 {
                    x.push((row + 10 * col + 60 * channel + image) as u8);
                }
            }
        }
    }
    let y: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
    mat_file(&[("X", 9, &[4, 5, 3, n as u32], 2, x), ("y", 6, &[n as u32, 1], 9, y)], compress)
}

#[test]
fn svhn_reads_matlabs_column_major_images_and_its_label_ten_as_zero() {
    use md5::Digest;
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("train_32x32.mat"), svhn_file(&[10., 3., 1.], true)).unwrap();
    std::fs::write(root.join("test_32x32.mat"), svhn_file(&[9.], false)).unwrap();
    let d = data::svhn::load(Some(&root), &offline(dir.path()), &data::svhn::FILES, false).unwrap();
    assert_eq!((d.train.labels.clone(), d.test.labels.clone()), (vec![0, 3, 1], vec![9]));
    assert_eq!((d.train.height, d.train.width, d.classes.len()), (4, 5, 10));
    // CHW: pixel (row, col) of channel c of image 2.
    let img = d.train.image(2);
    for (c, row, col) in [(0, 0, 0), (0, 3, 1), (1, 2, 4), (2, 3, 4)] {
        assert_eq!(img[c * 20 + row * 5 + col], (row + 10 * col + 60 * c + 2) as u8, "{c} {row} {col}");
    }

    // Labels outside 1-10, and a file that is not SVHN's, are named.
    std::fs::write(root.join("test_32x32.mat"), svhn_file(&[11.], false)).unwrap();
    let err = data::svhn::load(Some(&root), &offline(dir.path()), &data::svhn::FILES, false).unwrap_err();
    assert!(err.path.ends_with("test_32x32.mat") && err.to_string().contains("label 0 is 11"), "{err}");
    let other = mat_file(&[("images", 9, &[1, 1], 2, vec![0])], false);
    std::fs::write(root.join("test_32x32.mat"), other).unwrap();
    let err = data::svhn::load(Some(&root), &offline(dir.path()), &data::svhn::FILES, false).unwrap_err();
    assert!(err.to_string().contains("no variable `X` (it holds `images`)"), "{err}");
    // No images, or images without pixels: an error, not a panic.
    for (dims, n) in [([4u32, 5, 3, 0], 0), ([0, 5, 3, 2], 2), ([4, 0, 3, 1], 1)] {
        let y: Vec<u8> = (0..n).flat_map(|_| 1f64.to_le_bytes()).collect();
        let empty = mat_file(&[("X", 9, &dims, 2, Vec::new()), ("y", 6, &[n, 1], 9, y)], false);
        std::fs::write(root.join("test_32x32.mat"), empty).unwrap();
        let err = data::svhn::load(Some(&root), &offline(dir.path()), &data::svhn::FILES, false).unwrap_err();
        assert!(err.to_string().contains("no images"), "{dims:?}: {err}");
    }

    // Downloaded into the cache, each file checked against its md5.
    let (train, test) = (svhn_file(&[1., 2.], true), svhn_file(&[4.], true));
    let server = crate::models::serve(HashMap::from([
        ("train_32x32.mat".to_owned(), train.clone()),
        ("test_32x32.mat".to_owned(), test.clone()),
    ]));
    let md5 = |b: &[u8]| &*Box::leak(format!("{:x}", md5::Md5::digest(b)).into_boxed_str());
    let cache = cifar::Cache { dir: dir.path().join("cache"), base_url: server.url.clone() };
    let wrong = [("train_32x32.mat", md5(&train)), ("test_32x32.mat", "0123456789abcdef0123456789abcdef")];
    let err = data::svhn::load(None, &cache, &wrong, true).unwrap_err().to_string();
    assert!(err.contains("test_32x32.mat") && err.contains("0123456789abcdef"), "{err}");
    assert!(!cache.dir.join("svhn/test_32x32.mat").exists());
    let files = [("train_32x32.mat", md5(&train)), ("test_32x32.mat", md5(&test))];
    let hits = server.hits.load(SeqCst);
    let d = data::svhn::load(Some(&dir.path().join("elsewhere")), &cache, &files, true).unwrap();
    assert_eq!((d.train.labels.clone(), d.test.labels.clone()), (vec![1, 2], vec![4]));
    assert_eq!(server.hits.load(SeqCst), hits + 1, "only the missing file is fetched");
    data::svhn::load(None, &cache, &files, true).unwrap();
    assert_eq!(server.hits.load(SeqCst), hits + 1);
}

/// STL-10's images of `labels` as its binary release stores them: pixel (row, col) of channel c of
/// image i at i*27648 + c*9216 + col*96 + row, valued (row + 3 col + 50 c + i) mod 256.
fn stl10_x(n: usize) -> Vec<u8> {
    let mut x = vec![0u8; n * 3 * 96 * 96];
    for i in 0..n {
        for c in 0..3 {
            for col in 0..96 {
                for row in 0..96 {
                    x[i * 27648 + c * 9216 + col * 96 + row] = ((row + 3 * col + 50 * c + i) % 256) as u8;
                }
            }
        }
    }
    x
}

#[test]
fn stl10_is_read_with_its_planes_transposed_and_only_its_labelled_files_unpacked() {
    use md5::Digest;
    let entries: Vec<(String, Vec<u8>)> = vec![
        (
            "stl10_binary/class_names.txt".into(),
            b"airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n".to_vec(),
        ),
        ("stl10_binary/train_X.bin".into(), stl10_x(3)),
        ("stl10_binary/train_y.bin".into(), vec![1, 10, 4]),
        ("stl10_binary/test_X.bin".into(), stl10_x(1)),
        ("stl10_binary/test_y.bin".into(), vec![8]),
        ("stl10_binary/unlabeled_X.bin".into(), stl10_x(2)),
        ("stl10_binary/fold_indices.txt".into(), b"0 1\n".to_vec()),
    ];
    let archive = targz(&entries, true);
    let server = crate::models::serve(HashMap::from([("stl10_binary.tar.gz".to_owned(), archive.clone())]));
    let dir = tempfile::tempdir().unwrap();
    let cache = cifar::Cache { dir: dir.path().join("cache"), base_url: server.url.clone() };

    let err = data::stl10::load(None, &cache, ("stl10_binary.tar.gz", "0123456789abcdef0123456789abcdef"), true);
    let err = err.unwrap_err().to_string();
    assert!(err.contains("md5") && err.contains("0123456789abcdef"), "{err}");
    assert!(!cache.dir.join("stl10_binary.tar.gz").exists());

    let md5 = Box::leak(format!("{:x}", md5::Md5::digest(&archive)).into_boxed_str());
    let d = data::stl10::load(Some(&dir.path().join("elsewhere")), &cache, ("stl10_binary.tar.gz", md5), true).unwrap();
    assert_eq!((d.train.labels.clone(), d.test.labels.clone()), (vec![0, 9, 3], vec![7]));
    assert_eq!((d.train.height, d.classes[7].as_str()), (96, "monkey"));
    let img = d.train.image(2);
    for (c, row, col) in [(0, 0, 1), (0, 1, 0), (1, 95, 2), (2, 7, 90)] {
        assert_eq!(img[c * 9216 + row * 96 + col], ((row + 3 * col + 50 * c + 2) % 256) as u8, "{c} {row} {col}");
    }
    let mut unpacked: Vec<String> = std::fs::read_dir(cache.dir.join("stl10_binary"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    unpacked.sort();
    assert_eq!(unpacked, ["class_names.txt", "test_X.bin", "test_y.bin", "train_X.bin", "train_y.bin"]);

    // From torchvision's root, with a label out of range named.
    let root = dir.path().join("root/stl10_binary");
    std::fs::create_dir_all(&root).unwrap();
    for (name, bytes) in &entries[1..5] {
        std::fs::write(root.join(name.trim_start_matches("stl10_binary/")), bytes).unwrap();
    }
    std::fs::write(root.join("test_y.bin"), [11]).unwrap();
    let offline = offline(dir.path());
    let err = data::stl10::load(Some(&dir.path().join("root")), &offline, data::stl10::ARCHIVE, false).unwrap_err();
    assert!(err.path.ends_with("test_y.bin") && err.to_string().contains("label 0 is 11"), "{err}");
    std::fs::write(root.join("test_y.bin"), [2]).unwrap();
    std::fs::write(root.join("train_X.bin"), &stl10_x(3)[..1000]).unwrap();
    let err = data::stl10::load(Some(&dir.path().join("root")), &offline, data::stl10::ARCHIVE, false).unwrap_err();
    assert!(err.path.ends_with("train_X.bin") && err.to_string().contains("truncated"), "{err}");
}

pub fn png(h: u32, w: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([seed.wrapping_mul(40), (x * 20) as u8, (y * 20) as u8 ^ seed])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A folder `pics` (in a temporary folder) of `train/` and `test/`, each with class folders `a`
/// and `b`, holding the files `files(split, class)` gives (name, bytes).
fn split_folder(files: impl Fn(&str, &str) -> Vec<(String, Vec<u8>)>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pics");
    for split in ["train", "test"] {
        for class in ["a", "b"] {
            std::fs::create_dir_all(root.join(split).join(class)).unwrap();
            for (name, bytes) in files(split, class) {
                std::fs::write(root.join(split).join(class).join(name), bytes).unwrap();
            }
        }
    }
    (dir, root)
}

fn jpeg(h: u32, w: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |_, _| image::Rgb([seed.wrapping_mul(60), 128, 200]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn image_tree() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for (split, n) in [("train", 3u8), ("test", 2)] {
        for (c, class) in ["zebra", "apple", "mango"].iter().enumerate() {
            for i in 0..n {
                let seed = c as u8 * 10 + i;
                let (name, bytes) = if i % 2 == 0 {
                    (format!("{i}.png"), png(8, 8, seed))
                } else {
                    (format!("{i}.JPG"), jpeg(8, 8, seed))
                };
                files.push((format!("imgs/{split}/{class}/{name}"), bytes));
            }
        }
    }
    files.push(("imgs/README.txt".into(), b"not an image".to_vec()));
    files
}

#[test]
fn image_folders_read_from_a_folder_a_tar_and_a_tar_gz_alike() {
    let dir = tempfile::tempdir().unwrap();
    let files = image_tree();
    for (name, bytes) in &files {
        let p = dir.path().join("tree").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    std::fs::write(dir.path().join("imgs.tar"), targz(&files, false)).unwrap();
    std::fs::write(dir.path().join("imgs.tar.gz"), targz(&files, true)).unwrap();
    let a = folder::load(&dir.path().join("tree/imgs"), &folder::FolderOptions::default()).unwrap();
    let b = folder::load(&dir.path().join("imgs.tar"), &folder::FolderOptions::default()).unwrap();
    let c = folder::load(&dir.path().join("imgs.tar.gz"), &folder::FolderOptions::default()).unwrap();
    // Classes sorted as torchvision assigns them.
    assert_eq!(a.classes, vec!["apple", "mango", "zebra"]);
    assert_eq!((a.train.len(), a.test.len()), (9, 6));
    for other in [&b, &c] {
        assert_eq!(other.classes, a.classes);
        assert_eq!(other.train.images, a.train.images);
        assert_eq!(other.train.labels, a.train.labels);
        assert_eq!(other.test.images, a.test.images);
    }
    // PNG decodes exactly: channel 0 of mango/0.png is 20 * 40 (mod 256).
    let i = (0..a.train.len()).find(|&i| a.train.source(i).ends_with("train/mango/0.png")).unwrap();
    assert_eq!(a.train.labels[i], 1);
    assert_eq!(a.train.image(i)[0], 20u8.wrapping_mul(40));
    assert_eq!(a.train.image(i)[64 + 8 + 1], 20); // green = x * 20 at (1, 1)
                                                  // JPEG: close to the flat colour it encodes.
    let j = (0..a.train.len()).find(|&i| a.train.source(i).ends_with("apple/1.JPG")).unwrap();
    assert!(a.train.image(j)[64..128].iter().all(|&v| v.abs_diff(128) <= 3));
}

/// Every lossless format of torchvision's `IMG_EXTENSIONS` besides PNG (BMP in RGB and with a
/// palette, PPM, PGM, TIFF plain, LZW-compressed, grey and with alpha, WebP lossless with and
/// without alpha) decodes to the pixels torchvision's loader gives (`PIL.Image.convert("RGB")`,
/// `scripts/image_fixtures.py`), extensions in any case.
#[test]
fn every_torchvision_image_format_decodes_to_pils_pixels() {
    #[derive(Deserialize)]
    struct Want {
        height: usize,
        width: usize,
        hwc: String,
    }
    let root = fixtures().join("data/formats");
    let want: HashMap<String, Want> =
        serde_json::from_str(&std::fs::read_to_string(root.join("expected.json")).unwrap()).unwrap();
    let d = folder::load(&root, &folder::FolderOptions::default()).unwrap();
    assert_eq!(d.classes, vec!["cat", "dog"]);
    assert_eq!((d.train.len(), d.test.len()), (6, 4));
    let mut seen = 0;
    for split in [&d.train, &d.test] {
        for i in 0..split.len() {
            let file = split.source(i);
            let rel = file.strip_prefix(&format!("{}/", root.display())).unwrap();
            let w = &want[rel];
            assert_eq!(split.size(i), (w.height, w.width), "{rel}");
            let plane = w.height * w.width;
            let img = split.image(i);
            let hwc: Vec<u8> = (0..plane).flat_map(|p| (0..3).map(move |c| img[c * plane + p])).collect();
            let want: Vec<u8> =
                (0..w.hwc.len()).step_by(2).map(|k| u8::from_str_radix(&w.hwc[k..k + 2], 16).unwrap()).collect();
            assert_eq!(hwc, want, "{rel}");
            seen += 1;
        }
    }
    assert_eq!(seen, want.len());
}

/// Unreadable images are named all at once (so one pass fixes them), and `skip_unreadable`
/// leaves them out, listed in `Dataset::skipped`; a class left without any image is an error
/// even then.
#[test]
fn unreadable_images_are_named_together_or_left_out_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pics");
    for split in ["train", "test"] {
        for (c, class) in ["cat", "dog"].iter().enumerate() {
            std::fs::create_dir_all(root.join(split).join(class)).unwrap();
            for i in 0..3u8 {
                std::fs::write(root.join(format!("{split}/{class}/{i}.png")), png(6, 6, c as u8 * 10 + i)).unwrap();
            }
        }
    }
    let good = folder::load(&root, &folder::FolderOptions::default()).unwrap();
    let skip = folder::FolderOptions { skip_unreadable: true, ..Default::default() };
    std::fs::write(root.join("train/cat/empty.jpg"), b"").unwrap();
    std::fs::write(root.join("test/dog/cut.png"), &png(6, 6, 1)[..40]).unwrap();
    std::fs::write(root.join("train/dog/x.webp"), b"RIFF\x10\0\0\0WEBPVP8 broken").unwrap();
    let err = folder::load(&root, &folder::FolderOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.path, root, "{msg}");
    for part in ["3 of its 15 images cannot be read", "test/dog/cut.png", "train/cat/empty.jpg", "train/dog/x.webp"] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    assert!(msg.contains("skip_unreadable = true") && !msg.contains('\n'), "{msg}");

    let d = folder::load(&root, &skip).unwrap();
    assert_eq!(d.skipped.len(), 3, "{:?}", d.skipped);
    assert!(d.skipped[0].starts_with("test/dog/cut.png: "), "{:?}", d.skipped);
    assert_eq!((&d.train.images, &d.test.images), (&good.train.images, &good.test.images));
    assert_eq!(d.fingerprint(), good.fingerprint(), "the images left out are not part of the data");

    // One image: its own path, and the way out.
    for f in ["train/cat/empty.jpg", "train/dog/x.webp"] {
        std::fs::remove_file(root.join(f)).unwrap();
    }
    let err = folder::load(&root, &folder::FolderOptions::default()).unwrap_err();
    assert!(err.path.ends_with("test/dog/cut.png") && err.to_string().contains("skip_unreadable"), "{err}");

    // A class folder whose every image is unreadable.
    for i in 0..3 {
        std::fs::write(root.join(format!("test/cat/{i}.png")), b"nope").unwrap();
    }
    let err = folder::load(&root, &skip).unwrap_err();
    assert!(err.path.ends_with("test/cat") && err.to_string().contains("can be read"), "{err}");
}

/// The images a single tree holds out as test, for data seed 0: what every earlier version
/// chose (a run resumed across versions must see the same split), from the per-class seeded
/// shuffle alone.
#[test]
fn a_single_trees_split_is_the_one_earlier_versions_chose() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    for (c, class) in ["cat", "dog", "emu"].iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..(7 + c as u32) {
            std::fs::write(root.join(class).join(format!("{i}.png")), png(4, 4, c as u8)).unwrap();
        }
    }
    let d = folder::load(&root, &tree(0.3, 0)).unwrap();
    let names = |s: &Split| -> Vec<String> {
        (0..s.len()).map(|i| s.source(i).rsplit('/').take(2).collect::<Vec<_>>().join("<")).collect()
    };
    let want = ["0.png<cat", "6.png<cat", "2.png<dog", "3.png<dog", "3.png<emu", "5.png<emu", "7.png<emu"];
    assert_eq!(names(&d.test), want);
    assert_eq!((d.train.len(), d.test.len()), (17, 7));
    // The layout, counted without reading an image, says the same.
    let l = folder::scan(&root, &tree(0.3, 0)).unwrap().unwrap();
    assert_eq!((l.train, l.test, l.val, &l.classes[..], &l.folders), (17, 7, None, &d.classes[..], &None));
    assert_eq!(d.train.labels.iter().filter(|&&l| l == 2).count(), 6);
}

/// A folder whose decoded images pass the memory budget stops decoding and fails naming what
/// all of it would take, instead of being killed for memory; within the budget it loads.
#[test]
fn a_folder_too_big_for_the_memory_budget_is_refused_with_what_it_would_need() {
    let (_dir, root) = split_folder(|_, _| (0..50u8).map(|i| (format!("{i}.png"), png(32, 32, i))).collect());
    // 200 images of 3 KiB each: 600 KiB decoded.
    let skip = folder::FolderOptions { skip_unreadable: true, ..Default::default() };
    let all = folder::load_within(&root, &folder::FolderOptions::default(), Some(600 << 10)).unwrap();
    assert_eq!(all.train.len() + all.test.len(), 200);
    let err = folder::load_within(&root, &folder::FolderOptions::default(), Some(100 << 10)).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.path, root);
    for part in ["do not fit in memory", "of the 100.0 KiB it may use", "about 600.0 KiB for all", "SWEEP_DATA_MEMORY"]
    {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    assert!(folder::load_within(&root, &skip, Some(100 << 10)).is_err(), "not an unreadable image");
}

/// A small file whose header claims an image too large to decode within the memory budget is
/// refused from its header, naming its size, before anything is allocated; `skip_unreadable`
/// leaves it out like any unreadable image.
#[test]
fn an_image_whose_header_claims_more_than_the_budget_is_refused_before_decoding() {
    let (_dir, root) = split_folder(|_, _| vec![("ok.png".to_owned(), png(8, 8, 1))]);
    // A 1x1 PNG whose IHDR says 12000x12000 (432 MB of RGB, within the image crate's 512 MiB).
    let mut bomb = png(1, 1, 3);
    bomb[16..24].copy_from_slice(&[0, 0, 0x2e, 0xe0, 0, 0, 0x2e, 0xe0]);
    let mut crc = flate2::Crc::new();
    crc.update(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    std::fs::write(root.join("train/b/huge.png"), &bomb).unwrap();
    let err = folder::load_within(&root, &folder::FolderOptions::default(), Some(64 << 20)).unwrap_err();
    let msg = err.to_string();
    assert!(err.path.ends_with("train/b/huge.png"), "{}", err.path.display());
    for part in ["an image of 12000x12000 pixels: decoding it takes 824.0 MiB", "64.0 MiB", "SWEEP_DATA_MEMORY"] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    let skip = folder::FolderOptions { skip_unreadable: true, ..Default::default() };
    let d = folder::load_within(&root, &skip, Some(64 << 20)).unwrap();
    assert_eq!((d.train.len(), d.test.len(), d.skipped.len()), (2, 2, 1));
    assert!(d.skipped[0].starts_with("train/b/huge.png: an image of 12000x12000"), "{:?}", d.skipped);
}

/// An archive is read whole before its images are decoded: its members' bytes count against the
/// memory budget as they are read, so a small `.tar.gz` that unpacks to far more (here under 256 KiB
/// that unpack to 16 MiB) is refused, naming the archive and what to do, before it takes the memory.
#[test]
fn an_archive_that_unpacks_past_the_memory_budget_is_refused_while_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut members: Vec<(String, Vec<u8>)> = ["train/a/0.png", "train/b/0.png", "test/a/0.png", "test/b/0.png"]
        .map(|n| (n.to_owned(), png(8, 8, 1)))
        .to_vec();
    let fits = dir.path().join("fits.tar.gz");
    std::fs::write(&fits, targz(&members, true)).unwrap();
    members.extend((0..4).map(|i| (format!("train/a/zeros{i}.png"), vec![0u8; 4 << 20])));
    let bomb = dir.path().join("bomb.tar.gz");
    std::fs::write(&bomb, targz(&members, true)).unwrap();
    let size = std::fs::metadata(&bomb).unwrap().len();
    assert!(size < 256 << 10, "{size}");
    let d = folder::load_within(&fits, &folder::FolderOptions::default(), Some(8 << 20)).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (2, 2));
    let skip = folder::FolderOptions { skip_unreadable: true, ..Default::default() };
    let err = folder::load_within(&bomb, &skip, Some(8 << 20)).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.path, bomb);
    for part in [
        "more than 8.0 MiB unpacked, all the memory sweep may use for a dataset's images",
        "tar xf",
        "SWEEP_DATA_MEMORY",
    ] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    // Within a budget that holds it, the zeros are unreadable images like any other.
    let d = folder::load_within(&bomb, &skip, Some(64 << 20)).unwrap();
    assert_eq!((d.train.len(), d.skipped.len()), (2, 4));
}

/// A symbolic link back to a folder above it would make the walk endless (two such links double it
/// at every level): it is an error naming the link, at the layout check too; a link to a sibling
/// folder is followed, as `ImageFolder` follows it. A file far larger than any image (something else
/// named `.jpg`) is not read: it is unreadable, and `skip_unreadable` leaves it out.
#[cfg(unix)]
#[test]
fn a_folder_link_loop_and_a_huge_file_are_errors_not_hangs() {
    let (_dir, root) = split_folder(|_, _| vec![("ok.png".to_owned(), png(8, 8, 1))]);
    std::os::unix::fs::symlink(root.join("train/a"), root.join("train/b/same-as-a")).unwrap();
    let d = folder::load(&root, &folder::FolderOptions::default()).unwrap();
    assert_eq!(d.train.len(), 3, "the linked folder's image counts in b as well");
    std::os::unix::fs::symlink(root.join("train"), root.join("train/a/up")).unwrap();
    for err in [
        folder::load(&root, &folder::FolderOptions::default()).unwrap_err(),
        folder::scan(&root, &folder::FolderOptions::default()).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(err.path.ends_with("train/a/up") || err.path.ends_with("same-as-a/up"), "{}", err.path.display());
        assert!(msg.contains("a link back to") && msg.contains("a folder that holds it"), "{msg}");
    }
    std::fs::remove_file(root.join("train/a/up")).unwrap();

    // 300 MB of nothing (a sparse file: no disk used, and not read).
    let huge = std::fs::File::create(root.join("test/b/movie.jpg")).unwrap();
    huge.set_len(300 << 20).unwrap();
    let err = folder::load(&root, &folder::FolderOptions::default()).unwrap_err();
    assert!(err.path.ends_with("test/b/movie.jpg"), "{}", err.path.display());
    assert!(err.to_string().contains("314572800 bytes, more than an image file can be"), "{err}");
    let skip = folder::FolderOptions { skip_unreadable: true, ..Default::default() };
    let d = folder::load(&root, &skip).unwrap();
    assert_eq!((d.test.len(), d.skipped.len()), (2, 1));
}

/// `resize` at load: each image's shorter side becomes N as it is decoded (the augmentation's own
/// antialiased resize, rounded to bytes as a PIL image is), so the folder takes the memory of
/// the smaller images; the fingerprint tells the two loads apart.
#[test]
fn a_folder_resized_at_load_holds_the_smaller_images() {
    let (_dir, root) =
        split_folder(|_, _| vec![("wide.png".to_owned(), png(30, 40, 7)), ("tall.png".to_owned(), png(36, 12, 9))]);
    let full = folder::load(&root, &folder::FolderOptions::default()).unwrap();
    let small = folder::load(&root, &folder::FolderOptions { resize: Some(12), ..Default::default() }).unwrap();
    assert_eq!(small.train.len(), full.train.len());
    for i in 0..full.train.len() {
        let (h, w) = full.train.size(i);
        let (oh, ow) = geometry::resized_size(12, h, w);
        assert_eq!(small.train.size(i), (oh, ow));
        let want: Vec<u8> = geometry::resize(&Image::from_u8(full.train.image(i), h, w), oh, ow)
            .data
            .iter()
            .map(|&v| (v * 255.0).round() as u8)
            .collect();
        assert_eq!(small.train.image(i), &want[..], "{}", full.train.source(i));
    }
    // tall.png (36x12) sorts first and keeps its size; wide.png (30x40) becomes 12x16.
    assert_eq!((small.train.size(0), small.train.size(1)), ((36, 12), (12, 16)));
    assert!(small.train.images.len() * 2 < full.train.images.len());
    assert_ne!(small.fingerprint(), full.fingerprint());
}

/// Split folders are found by Hugging Face's split keywords in any case: a validation folder is
/// the test split where there is no test folder, and beside one the validation split.
#[test]
fn a_val_folder_is_the_test_split_without_a_test_folder_and_the_validation_split_beside_one() {
    let dir = tempfile::tempdir().unwrap();
    let make = |root: &Path, splits: &[&str]| {
        for (k, split) in splits.iter().enumerate() {
            for (c, class) in ["a", "b"].iter().enumerate() {
                std::fs::create_dir_all(root.join(split).join(class)).unwrap();
                for i in 0..2u8 {
                    let seed = (k as u8).min(1) * 100 + c as u8 * 10 + i;
                    std::fs::write(root.join(format!("{split}/{class}/{i}.png")), png(4, 4, seed)).unwrap();
                }
            }
        }
    };
    let reference = dir.path().join("reference");
    make(&reference, &["train", "test"]);
    let want = folder::load(&reference, &folder::FolderOptions::default()).unwrap();
    for (name, splits) in
        [("val", &["train", "val"][..]), ("caps", &["Training", "Validation"]), ("dev", &["train", "dev"])]
    {
        let root = dir.path().join(name);
        make(&root, splits);
        let d = folder::load(&root, &folder::FolderOptions::default()).unwrap();
        assert_eq!(
            (&d.train.images, &d.test.images, &d.test.labels),
            (&want.train.images, &want.test.images, &want.test.labels),
            "{name}"
        );
        assert!(d.test.source(0).contains(&format!("/{}/a/", splits[1])), "{name}");
        assert!(folder::has_split_folders(&root) && !folder::has_split_folders(&root.join(splits[0])), "{name}");
    }
    // Beside a test folder, val/ is the validation split; without one, there is none.
    assert!(want.val.is_none());
    let root = dir.path().join("three");
    make(&root, &["train", "test", "val"]);
    let d = folder::load(&root, &folder::FolderOptions::default()).unwrap();
    assert_eq!((&d.train.images, &d.test.images), (&want.train.images, &want.test.images));
    let val = d.val.as_ref().unwrap();
    assert_eq!((val.len(), &val.labels[..]), (4, &[0, 0, 1, 1][..]));
    let l = folder::scan(&root, &folder::FolderOptions::default()).unwrap().unwrap();
    assert_eq!((l.train, l.test, l.val), (4, 4, Some(4)));
    assert_eq!(l.folders, Some(("train".into(), "test".into(), Some("val".into()))));
    assert_eq!(folder::scan(&dir.path().join("three.tar"), &folder::FolderOptions::default()).unwrap(), None);
    assert!(val.source(0).contains("/val/a/"));
    assert_ne!(d.fingerprint(), want.fingerprint());
    std::fs::create_dir_all(root.join("val/zebra")).unwrap();
    std::fs::write(root.join("val/zebra/0.png"), png(4, 4, 0)).unwrap();
    let err = folder::load(&root, &folder::FolderOptions::default()).unwrap_err().to_string();
    assert!(err.contains("val/zebra") && err.contains("no train folder"), "{err}");
    // Two folders for one split: which one is meant is not guessed.
    let root = dir.path().join("two");
    make(&root, &["train", "training", "test"]);
    let err = folder::load(&root, &folder::FolderOptions::default()).unwrap_err().to_string();
    assert!(err.contains("train/ and training/"), "{err}");
    // No train folder.
    let root = dir.path().join("none");
    make(&root, &["val", "test"]);
    let err = folder::load(&root, &folder::FolderOptions::default()).unwrap_err().to_string();
    assert!(err.contains("has no train/ images"), "{err}");
}

#[test]
fn a_single_tree_is_split_by_seed_and_bad_folders_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    for (c, class) in ["cat", "dog"].iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..10u32 {
            std::fs::write(root.join(class).join(format!("{i}.png")), png(6 + i % 2, 6, c as u8)).unwrap();
        }
    }
    let err = folder::load(&root, &folder::FolderOptions::default()).unwrap_err().to_string();
    assert!(err.contains("test_split"), "{err}");
    let a = folder::load(&root, &tree(0.2, 0)).unwrap();
    assert_eq!((a.train.len(), a.test.len()), (16, 4));
    assert_eq!(a.test.labels.iter().filter(|&&l| l == 0).count(), 2, "stratified");
    let b = folder::load(&root, &tree(0.2, 1)).unwrap();
    assert_ne!(a.test.files, b.test.files, "another data_seed holds out other images");
    assert_eq!(folder::load(&root, &tree(0.2, 0)).unwrap().test.files, a.test.files);
    // Mixed sizes without a resize: named.
    assert!(!a.train.is_uniform());
    let err = augment::split_output_size(&[], &a.train).unwrap_err();
    assert!(err.contains("cat/") && err.contains("7x6") && err.contains("resize"), "{err}");
    let t = [Transform::Resize { size: 8 }, Transform::CenterCrop { size: 8 }];
    assert_eq!(augment::split_output_size(&t, &a.train), Ok((8, 8)));

    // An unreadable image.
    std::fs::write(root.join("dog/broken.png"), b"\x89PNG not really").unwrap();
    let err = folder::load(&root, &tree(0.2, 0)).unwrap_err();
    assert!(err.path.ends_with("dog/broken.png"), "{err}");
    std::fs::remove_file(root.join("dog/broken.png")).unwrap();
    // An empty class folder.
    std::fs::create_dir_all(root.join("emu")).unwrap();
    let err = folder::load(&root, &tree(0.2, 0)).unwrap_err();
    assert!(err.path.ends_with("emu") && err.to_string().contains("empty class folder"), "{err}");
    // Nothing at all.
    let err = folder::load(&dir.path().join("missing.tar.gz"), &folder::FolderOptions::default()).unwrap_err();
    assert!(err.to_string().contains("no such"), "{err}");
}

#[test]
fn dataset_sizes_cut_every_format() {
    let spec = sweep::spec::DatasetSpec {
        train_size: Some(7),
        test_size: Some(3),
        ..sweep::spec::DatasetSpec::named(DatasetName::Synthetic)
    };
    let d = data::load(&spec).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (7, 3));
}

#[test]
fn a_folder_subset_is_a_seeded_sample_of_every_class_not_the_first_folders() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for split in ["train", "test"] {
        for (c, class) in ["a", "b", "c", "d"].iter().enumerate() {
            for i in 0..10u8 {
                files.push((format!("{split}/{class}/{i}.png"), png(4, 4, c as u8 * 10 + i)));
            }
        }
    }
    let path = dir.path().join("four.tar");
    std::fs::write(&path, targz(&files, false)).unwrap();
    let mut spec = sweep::spec::DatasetSpec::named(DatasetName::Folder);
    spec.path = Some(path.display().to_string());
    spec.train_size = Some(20);
    spec.test_size = Some(8);
    let d = data::load(&spec).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (20, 8));
    let classes: std::collections::BTreeSet<u32> = d.train.labels.iter().copied().collect();
    assert_eq!(classes.len(), 4, "{:?}", d.train.labels);
    assert_eq!(data::load(&spec).unwrap().train.files, d.train.files);
    spec.data_seed = Some(5);
    assert_ne!(data::load(&spec).unwrap().train.files, d.train.files);
}

/// A `.tar` whose header claims a 32 TiB member is an error naming the archive
/// and the member, not an allocation that aborts the worker.
#[test]
fn an_archive_member_larger_than_the_archive_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.tar");
    let mut header = tar::Header::new_gnu();
    header.set_path("train/cat/a.png").unwrap();
    header.set_size(32 << 40);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 1024]);
    std::fs::write(&path, &bytes).unwrap();
    let err = folder::load(&path, &folder::FolderOptions::default()).unwrap_err();
    assert!(err.path.ends_with("hostile.tar"), "{err}");
    let text = err.to_string();
    assert!(text.contains("train/cat/a.png") && text.contains("35184372088832 bytes"), "{text}");
    assert!(text.contains("more than the whole archive"), "{text}");
}
